r"""Math prompts -> verl's Parquet schema (for the launch scripts in ``llm/verl/``).

One row per problem, the columns verl's ``RLHFDataset`` and reward loop read::

    data_source   str    "deepscaler" | "dapo17k" | an eval set name (aime24, math500, ...)
    prompt        list   [{"role": "user", "content": "<question>\n<INSTRUCTION>"}]
    ability       str    "math"
    reward_model  dict   {"style": "rule", "ground_truth": "<gold answer>"}
    extra_info    dict   {"split": "train" | "test", "index": <row>, "id": "<problem id>"}

The user turn is the one :func:`sppo_bench.llm.data.build_prompt` renders (the question, then
"Please reason step by step, and put your final answer within \boxed{}."); verl applies the
policy's chat template to it. ``llm/verl/reward.py`` grades the last ``\boxed{}`` of a response
against ``ground_truth`` with the project's verifier.

Sources: DeepScaleR (``problem`` / ``answer``, the ``math500`` field mapping), DAPO-Math-17k
(its prompt is chat messages wrapping the question in an "Answer: $Answer" instruction, which
is taken off and replaced by the instruction above; its gold is ``reward_model.ground_truth``;
repeated questions are kept once), and the evaluation sets that
:func:`sppo_bench.llm.data.load_problems` reads. Each source is a ``.jsonl`` / ``.parquet`` file
or a Hugging Face Hub dataset id.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sppo_bench.errors import UserError
from sppo_bench.llm.data import (
    INSTRUCTION,
    Problem,
    _hub_rows,
    _jsonl_rows,
    _number_text,
    _parquet_rows,
    infer_dataset,
    load_problems,
)

__all__ = ["EVAL_FILES", "TRAIN_FORMATS", "dapo_question", "load_train", "main", "verl_rows"]

TRAIN_FORMATS = ("deepscaler", "dapo17k")
# the paper's evaluation sets, as the files under the shared data folder are named
EVAL_FILES = ("aime24.jsonl", "aime25.jsonl", "amc23.jsonl", "math500.jsonl", "minerva_math.jsonl")

_DAPO_HEAD = "Solve the following math problem step by step."
_DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:"'


def dapo_question(content: str) -> str:
    """The bare question inside a DAPO-Math-17k user turn.

    DAPO wraps it as ``"Solve the following math problem step by step. The last line ... of
    the form Answer: $Answer ...\n\n<question>\n\nRemember to put your answer on its own line
    after \"Answer:\"."``; text without that wrapper is returned stripped, as it is.
    """
    text = content.strip()
    if text.startswith(_DAPO_HEAD) and "\n\n" in text:
        text = text.split("\n\n", 1)[1]
    return text.split(_DAPO_TAIL, 1)[0].strip()


def _raw_rows(source: str, split: str) -> Iterable[tuple[str, Any]]:
    path = Path(source).expanduser()
    if path.suffix.lower() == ".jsonl":
        return _jsonl_rows(path)
    if path.suffix.lower() == ".parquet":
        return _parquet_rows(path)
    return _hub_rows(source, split)


def _dapo_problem(row: Any, where: str, position: int) -> Problem:
    if not isinstance(row, Mapping):
        raise UserError(f"{where}: a row must be an object, got {type(row).__name__}")
    prompt, reward = row.get("prompt"), row.get("reward_model")
    turns = [] if isinstance(prompt, str) or not isinstance(prompt, Iterable) else list(prompt)
    users = [t.get("content") for t in turns if isinstance(t, Mapping) and t.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise UserError(f"{where}: field 'prompt' is not chat messages with a user turn")
    if not isinstance(reward, Mapping) or reward.get("ground_truth") in (None, ""):
        raise UserError(f"{where}: missing field 'reward_model.ground_truth'")
    question = dapo_question(users[-1])
    if not question:
        raise UserError(f"{where}: empty question")
    return Problem(f"dapo17k/{position}", question, _number_text(reward["ground_truth"]))


def load_train(source: str, fmt: str, split: str = "train") -> list[Problem]:
    """Training problems from DeepScaleR (``fmt="deepscaler"``) or DAPO-Math-17k (``"dapo17k"``).

    DAPO-Math-17k questions that repeat (same text after the wrapper is taken off) are kept once,
    the first occurrence.
    """
    if fmt == "deepscaler":
        problems = load_problems(source, dataset="math500", split=split)
        return [Problem(f"deepscaler/{i}", p.question, p.answer) for i, p in enumerate(problems)]
    if fmt != "dapo17k":
        raise UserError(f"unknown training format {fmt!r}; valid: {', '.join(TRAIN_FORMATS)}")
    seen: set[str] = set()
    problems = []
    for position, (where, row) in enumerate(_raw_rows(source, split)):
        problem = _dapo_problem(row, where, position)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    if not problems:
        raise UserError(f"{source}: no problems")
    return problems


def verl_rows(problems: Sequence[Problem], data_source: str, split: str) -> list[dict[str, Any]]:
    """``problems`` as rows of verl's schema (module docstring)."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"split": split, "index": i, "id": p.id},
        }
        for i, p in enumerate(problems)
    ]


def _write(rows: list[dict[str, Any]], path: Path) -> None:
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


def main(argv: Sequence[str] | None = None) -> None:
    """``--train SOURCE --format deepscaler|dapo17k --eval-dir DIR --out DIR``: writes
    ``OUT/train.parquet`` and ``OUT/val.parquet`` (every eval set; ``data_source`` tells them
    apart, so verl reports each set's accuracy separately)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="file (.jsonl/.parquet) or Hub dataset id")
    parser.add_argument("--format", required=True, choices=TRAIN_FORMATS)
    parser.add_argument("--split", default="train", help="Hub split of --train (default: train)")
    parser.add_argument(
        "--eval-dir", required=True, help=f"folder with {', '.join(EVAL_FILES)} (any present)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser()
    train = load_train(args.train, args.format, args.split)
    _write(verl_rows(train, args.format, "train"), out / "train.parquet")
    print(f"{out / 'train.parquet'}: {len(train)} {args.format} problems")
    rows: list[dict[str, Any]] = []
    for name in EVAL_FILES:
        path = Path(args.eval_dir).expanduser() / name
        if not path.is_file():
            print(f"{path}: not there, left out")
            continue
        dataset = infer_dataset(name)
        problems = load_problems(str(path), dataset=dataset)
        rows += verl_rows(problems, dataset, "test")
        print(f"{path}: {len(problems)} problems")
    if not rows:
        raise UserError(f"no evaluation set found in {args.eval_dir}")
    _write(rows, out / "val.parquet")
    print(f"{out / 'val.parquet'}: {len(rows)} problems")


if __name__ == "__main__":
    main()
