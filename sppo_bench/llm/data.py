r"""Math prompt datasets: JSONL, Parquet or a Hugging Face Hub dataset id -> ``Problem`` rows.

Each dataset name selects a field mapping from a raw row to ``(question, gold answer)``:

| name      | question   | gold answer                                              |
|-----------|------------|----------------------------------------------------------|
| gsm8k     | `question` | `answer` after its `#### `, thousands commas removed     |
| math500   | `problem`  | `answer`                                                 |
| aime24    | `problem`  | `answer`                                                 |
| aime25    | `problem`  | `answer`                                                 |
| amc23     | `problem`  | `answer` (a float in the public file: 70.0 -> "70")      |
| minerva   | `problem`  | the last `\boxed{}` of `solution`                        |

``build_prompt`` and ``Problem`` live in :mod:`sppo_bench.llm.prompts` (shared with the toy task)
and are re-exported here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sppo_bench.errors import UserError
from sppo_bench.llm.answers import last_boxed
from sppo_bench.llm.prompts import INSTRUCTION as INSTRUCTION
from sppo_bench.llm.prompts import Problem as Problem
from sppo_bench.llm.prompts import build_prompt as build_prompt

if TYPE_CHECKING:
    from sppo_bench.llm.recipe import LLMConfig


@dataclass(frozen=True)
class _Mapping:
    question: str
    answer: str
    extract: str  # "field" | "gsm8k" | "boxed"
    ids: tuple[str, ...]  # native id fields, first present wins


_MAPPINGS: dict[str, _Mapping] = {
    "gsm8k": _Mapping("question", "answer", "gsm8k", ()),
    "math500": _Mapping("problem", "answer", "field", ("unique_id", "id")),
    "aime24": _Mapping("problem", "answer", "field", ("id",)),
    "aime25": _Mapping("problem", "answer", "field", ("id",)),
    "amc23": _Mapping("problem", "answer", "field", ("id",)),
    "minerva": _Mapping("problem", "solution", "boxed", ("idx", "id")),
}
DATASET_NAMES: tuple[str, ...] = tuple(_MAPPINGS)

# Name fragments (lower case, "-" / "_" / " " removed) that identify a dataset in a path or id.
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("gsm8k", "gsm8k"),
    ("math500", "math500"),
    ("aime24", "aime24"),
    ("aime2024", "aime24"),
    ("aime25", "aime25"),
    ("aime2025", "aime25"),
    ("amc23", "amc23"),
    ("amc2023", "amc23"),
    ("minerva", "minerva"),
)


def infer_dataset(source: str) -> str:
    """The dataset name a file name or Hub id points to (``"…/gsm8k_test.jsonl"`` -> gsm8k)."""
    key = re.sub(r"[-_ .]", "", source.lower())
    hits = {name for hint, name in _NAME_HINTS if hint in key}
    if len(hits) != 1:
        raise UserError(
            f"cannot tell which dataset {source!r} is from its name; pass the dataset "
            f"explicitly (valid: {', '.join(DATASET_NAMES)})"
        )
    return hits.pop()


def load_problems(
    source: str,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
) -> list[Problem]:
    """Load problems from a ``.jsonl`` / ``.parquet`` file or a Hugging Face Hub dataset id.

    ``dataset`` picks the field mapping (one of ``DATASET_NAMES``; ``None`` infers it from the
    file name or id); ``split`` is used for Hub datasets only; ``limit`` keeps the first rows.
    Any broken row (bad JSON, missing field, empty gold) is a one-line ``UserError`` naming the
    file, the line (or row) and what is wrong.
    """
    source = str(source)
    if source.startswith("toy:"):  # the synthetic CPU task, generated in process
        from sppo_bench.llm.toy.task import load_toy_problems

        return load_toy_problems(source, split, limit)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit is {limit!r}; valid: a positive integer or None")
    path = Path(source).expanduser()
    is_file = path.suffix.lower() in (".jsonl", ".parquet") or path.exists()
    if is_file and not path.is_file():
        raise UserError(f"dataset file {source} does not exist")
    if is_file and path.suffix.lower() not in (".jsonl", ".parquet"):
        raise UserError(f"dataset file {source} is not .jsonl or .parquet")
    name = infer_dataset(path.name if is_file else source) if dataset is None else dataset
    if name not in _MAPPINGS:
        raise UserError(f"unknown dataset {name!r}; valid: {', '.join(DATASET_NAMES)}")
    if is_file:
        rows = _jsonl_rows(path) if path.suffix.lower() == ".jsonl" else _parquet_rows(path)
        origin = str(path)
    else:
        rows = _hub_rows(source, split)
        origin = f"{source} (split {split})"
    problems: list[Problem] = []
    for position, (where, row) in enumerate(rows):
        problems.append(_to_problem(row, _MAPPINGS[name], name, where, position))
        if limit is not None and len(problems) >= limit:
            break
    if not problems:
        raise UserError(f"{origin}: no problems (the file or split is empty)")
    if len({p.id for p in problems}) != len(problems):  # native ids not unique: use positions
        problems = [Problem(f"{name}/{i}", p.question, p.answer) for i, p in enumerate(problems)]
    return problems


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}:{number}: not UTF-8 text (byte {exc.start})") from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(
                    f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            yield f"{path}:{number}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except ImportError as exc:
        raise UserError(f"reading {path} needs pyarrow (pip install pyarrow): {exc}") from None
    except Exception as exc:  # pyarrow's errors for a corrupt or non-Parquet file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a readable Parquet file ({first})") from None
    for number, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield f"{path} row {number}", row


def _hub_rows(source: str, split: str) -> Iterator[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{source!r} is not a local file, and loading it from the Hugging Face Hub needs the "
            "'datasets' package (pip install 'sppo-bench[hub]'); or pass a .jsonl/.parquet path"
        ) from None
    try:
        data = datasets.load_dataset(source, split=split)
    except Exception as exc:  # offline, unknown id, unknown split, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not load Hub dataset {source!r} split {split!r} "
            f"(offline, or a wrong id or split?): {type(exc).__name__}: {first}"
        ) from None
    for number, row in enumerate(data, start=1):
        yield f"{source} (split {split}) row {number}", row


def _to_problem(row: Any, mapping: _Mapping, name: str, where: str, position: int) -> Problem:
    """One raw row -> ``Problem``; ``where`` locates the row in errors (``file:line``)."""
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    row = _case_insensitive(row, (mapping.question, mapping.answer, *mapping.ids))
    for key in (mapping.question, mapping.answer):
        if key not in row or row[key] is None:
            raise UserError(
                f"{where}: missing field {key!r} (the {name} mapping reads "
                f"{mapping.question!r} and {mapping.answer!r}; the row has: "
                f"{', '.join(map(str, row)) or 'no fields'})"
            )
    question = row[mapping.question]
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: field {mapping.question!r} is empty or not text")
    answer = _gold(row[mapping.answer], mapping, where)
    native = next((row[k] for k in mapping.ids if row.get(k) not in (None, "")), None)
    return Problem(f"{name}/{native if native is not None else position}", question.strip(), answer)


def _case_insensitive(row: Mapping, keys: tuple[str, ...]) -> dict:
    """``row`` with each of ``keys`` also reachable when the source spells it in another case
    (some Hub copies use ``Problem`` / ``Answer``)."""
    out = dict(row)
    lower = {str(k).lower(): k for k in row}
    for key in keys:
        if key not in out and key.lower() in lower:
            out[key] = row[lower[key.lower()]]
    return out


def _gold(value: Any, mapping: _Mapping, where: str) -> str:
    """The gold answer text of one row (see the module table)."""
    field = mapping.answer
    if mapping.extract == "gsm8k":
        text = value if isinstance(value, str) else ""
        if "####" not in text:
            raise UserError(f"{where}: field {field!r} has no '#### <answer>' line")
        gold = text.rsplit("####", 1)[1].strip().replace(",", "")
    elif mapping.extract == "boxed":
        box = last_boxed(value) if isinstance(value, str) else None
        if box is None:
            raise UserError(f"{where}: field {field!r} has no closed \\boxed{{}} answer")
        gold = box
    else:
        gold = _number_text(value)
    if not gold:
        raise UserError(f"{where}: empty gold answer in field {field!r}")
    return gold


def _number_text(value: Any) -> str:
    """Text of a gold value: strings stripped, integral floats without ``.0`` (70.0 -> "70")."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalars from Parquet
        return _number_text(value.item())
    return str(value).strip()


def load_prompts(cfg: LLMConfig, tokenizer) -> tuple[list[str], list[str]]:
    """(chat-formatted prompts, gold answers) of the training set, over-long prompts dropped."""
    problems = load_problems(cfg.data.train, cfg.data.dataset, cfg.data.split, cfg.data.limit)
    prompts = [build_prompt(tokenizer, p.question) for p in problems]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    keep = [i for i, n in enumerate(lengths) if n <= cfg.data.max_prompt_tokens]
    if not keep:
        limit = cfg.data.max_prompt_tokens
        raise UserError(f"no training prompt fits in data.max_prompt_tokens={limit}")
    return [prompts[i] for i in keep], [problems[i].answer for i in keep]
