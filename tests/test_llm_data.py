"""Math prompt datasets: the field mappings on the real evaluation files, Parquet, one-line errors
for broken rows, the offline Hub path, and prompt building with and without a chat template."""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from sppo_bench.errors import UserError
from sppo_bench.llm.answers import last_boxed
from sppo_bench.llm.data import (
    DATASET_NAMES,
    EVAL_SETS,
    HUB_SETS,
    INSTRUCTION,
    build_prompt,
    infer_dataset,
    load_problems,
)

MATH_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math"

# file -> (dataset inferred from its name, rows, first problem's gold answer)
SHARED_FILES = {
    "gsm8k_test.jsonl": ("gsm8k", 1319, "18"),
    "math500.jsonl": ("math500", 500, r"\left( 3, \frac{\pi}{2} \right)"),
    "aime24.jsonl": ("aime24", 30, "204"),
    "aime25.jsonl": ("aime25", 30, "70"),
    "amc23.jsonl": ("amc23", 40, "27"),
    "minerva_math.jsonl": ("minerva", 272, "1.6"),
}


def _shared(name: str) -> Path:
    path = MATH_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (the shared evaluation data sits beside the repository)")
    return path


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_loaders_on_the_shared_files(name):
    dataset, rows, first_answer = SHARED_FILES[name]
    path = _shared(name)
    problems = load_problems(str(path))
    assert len(problems) == rows
    assert problems[0].answer == first_answer
    assert all(p.question.strip() and p.answer.strip() for p in problems)
    assert len({p.id for p in problems}) == rows
    assert all(p.id.startswith(f"{dataset}/") for p in problems)
    assert load_problems(str(path), dataset=dataset, limit=3) == problems[:3]
    if dataset in ("gsm8k", "aime24", "aime25", "amc23"):  # integer answers, no "," or ".0"
        assert all(re.fullmatch(r"-?\d+", p.answer) for p in problems)


def test_every_shared_file_has_a_mapping():
    if not MATH_DIR.is_dir():
        pytest.skip(f"{MATH_DIR} is absent (the shared evaluation data sits beside the repository)")
    files = sorted(p.name for p in MATH_DIR.glob("*.jsonl"))
    assert files and set(files) <= set(SHARED_FILES), files


def test_gsm8k_and_minerva_golds_come_from_the_solution_text():
    gsm = load_problems(str(_shared("gsm8k_test.jsonl")))
    raw = [json.loads(line) for line in _shared("gsm8k_test.jsonl").open()]
    with_commas = [i for i, r in enumerate(raw) if "," in r["answer"].rsplit("####", 1)[1]]
    assert with_commas, "GSM8K has answers like 1,000"
    for i in with_commas:
        assert gsm[i].answer == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert re.fullmatch(r"-?\d+", gsm[i].answer)
    minerva = load_problems(str(_shared("minerva_math.jsonl")))
    raw = [json.loads(line) for line in _shared("minerva_math.jsonl").open()]
    for p, r in zip(minerva, raw, strict=True):  # the answer is the text of the LAST box
        assert r["solution"].rindex(p.answer) > r["solution"].rindex("\\boxed")


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_and_parquet_give_the_same_problems(tmp_path):
    rows = [
        {"id": 7, "problem": "What is $2+3$?", "answer": 5.0},
        {"id": 8, "problem": "Half of 5?", "answer": 2.5},
    ]
    jsonl = _write_jsonl(tmp_path / "amc23.jsonl", rows)
    parquet = tmp_path / "amc23.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    from_jsonl = load_problems(str(jsonl))
    assert [(p.id, p.answer) for p in from_jsonl] == [("amc23/7", "5"), ("amc23/8", "2.5")]
    assert load_problems(str(parquet)) == from_jsonl


@pytest.mark.parametrize(
    "dataset, rows, message",
    [
        (
            "math500",
            ['{"problem": "a", "answer": "1"}', '{"problem": "b", '],
            r":2: not valid JSON",
        ),
        (
            "math500",
            [{"problem": "a", "answer": "1"}, {"problem": "b"}],
            r":2: missing field 'answer'",
        ),
        ("math500", [{"problem": "a", "answer": "  "}], r":1: empty gold answer in field 'answer'"),
        ("math500", [{"problem": "", "answer": "3"}], r":1: field 'problem' is empty"),
        ("math500", ["[1, 2]"], r":1: a row must be a JSON object"),
        ("gsm8k", [{"question": "q", "answer": "it is 5"}], r":1: .*no '#### <answer>'"),
        ("gsm8k", [{"question": "q", "answer": "so\n#### "}], r":1: empty gold answer"),
        ("minerva", [{"problem": "q", "solution": "it is 5"}], r":1: .*no closed \\boxed"),
        ("amc23", [{"problem": "q", "answer": None}], r":1: missing field 'answer'"),
    ],
)
def test_broken_rows_are_one_line_errors(tmp_path, dataset, rows, message):
    path = _write_jsonl(tmp_path / "broken.jsonl", rows)
    with pytest.raises(UserError, match=message) as info:
        load_problems(str(path), dataset=dataset)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_sources_and_names(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_problems(str(tmp_path / "math500.jsonl"))
    other = tmp_path / "math500.csv"
    other.write_text("problem,answer\n")
    with pytest.raises(UserError, match=r"not \.jsonl or \.parquet"):
        load_problems(str(other))
    corrupt = tmp_path / "math500.parquet"
    corrupt.write_bytes(b"not parquet")
    with pytest.raises(UserError, match="not a readable Parquet file") as info:
        load_problems(str(corrupt))
    assert "\n" not in str(info.value)
    path = _write_jsonl(tmp_path / "mystery.jsonl", [{"problem": "q", "answer": "1"}])
    with pytest.raises(UserError, match="cannot tell which dataset.*valid: gsm8k, math500"):
        load_problems(str(path))
    with pytest.raises(UserError, match="unknown dataset 'math'; valid: "):
        load_problems(str(path), dataset="math")
    with pytest.raises(UserError, match="limit is 0"):
        load_problems(str(path), dataset="math500", limit=0)
    assert [p.id for p in load_problems(str(path), dataset="math500")] == ["math500/0"]
    empty = _write_jsonl(tmp_path / "aime24.jsonl", [])
    with pytest.raises(UserError, match="no problems"):
        load_problems(str(empty))
    assert set(DATASET_NAMES) == {
        "gsm8k", "math500", "aime24", "aime25", "amc23", "minerva", "dapo17k"
    }  # fmt: skip


def test_a_hub_id_without_the_datasets_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails: nothing is downloaded
    with pytest.raises(UserError, match="needs the 'datasets' package") as info:
        load_problems("HuggingFaceH4/MATH-500", split="test")
    assert "\n" not in str(info.value)


def test_a_hub_id_is_read_through_datasets(monkeypatch):
    class FakeDatasets:
        @staticmethod
        def load_dataset(source, split):
            if source != "openai/gsm8k" or split != "test":
                raise ConnectionError("offline\nsecond line")
            return [{"question": "1+1?", "answer": "1+1=2\n#### 2"}]

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    assert load_problems("openai/gsm8k")[0].answer == "2"
    with pytest.raises(UserError, match="could not load Hub dataset.*ConnectionError: offline$"):
        load_problems("openai/gsm8k", split="train")


def hub_rows() -> dict[tuple[str, str], list[dict]]:
    """(Hub id, split) -> rows shaped as that Hub set's dataset card lists its fields, made from
    the shared evaluation files (the same problems)."""
    raw = {n: [json.loads(x) for x in _shared(n).open()] for n in SHARED_FILES}
    return {
        ("HuggingFaceH4/MATH-500", "test"): raw["math500.jsonl"],
        ("HuggingFaceH4/aime_2024", "train"): [{**r, "year": "2024"} for r in raw["aime24.jsonl"]],
        ("MathArena/aime_2025", "train"): [
            {"problem_idx": i + 1, "problem": r["problem"], "answer": int(r["answer"])}
            for i, r in enumerate(raw["aime25.jsonl"])
        ],
        ("FlippyDora/amc23", "train"): [
            {**r, "question": r["problem"]} for r in raw["amc23.jsonl"]
        ],
        ("guanning/minervamath", "test"): [
            {"problem": r["problem"], "answer": last_boxed(r["solution"]), "datasource": "minerva"}
            for r in raw["minerva_math.jsonl"]
        ],
    }


class FakeHub:
    """A stand-in for the ``datasets`` package: ``load_dataset(id, split)`` serves ``rows`` and
    refuses any other (id, split), as the Hub would."""

    def __init__(self, rows: dict[tuple[str, str], list[dict]]) -> None:
        self.rows = rows

    def load_dataset(self, source: str, split: str) -> list[dict]:
        if (source, split) not in self.rows:
            raise ValueError(f"no split {split!r} in {source}")
        return self.rows[(source, split)]


@pytest.mark.parametrize("hub_id", EVAL_SETS)
def test_hub_eval_sets_map_to_the_same_problems_as_the_local_copies(hub_id, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", FakeHub(hub_rows()))
    name = {"minerva": "minerva_math", "math500": "math500"}.get(HUB_SETS[hub_id].dataset)
    local = load_problems(str(_shared(f"{name or HUB_SETS[hub_id].dataset}.jsonl")))
    from_hub = load_problems(hub_id)  # the set's own split and field mapping
    assert [(p.question, p.answer) for p in from_hub] == [(p.question, p.answer) for p in local]
    assert infer_dataset(hub_id) == HUB_SETS[hub_id].dataset
    assert len({p.id for p in from_hub}) == len(from_hub)
    with pytest.raises(UserError, match=f"could not load Hub dataset '{hub_id}' split 'nope'"):
        load_problems(hub_id, split="nope")


def test_every_paper_set_has_one_hub_id():
    assert sorted(HUB_SETS[i].dataset for i in EVAL_SETS) == sorted(
        ["aime24", "aime25", "amc23", "math500", "minerva"]
    )


def test_plain_prompt_without_a_chat_template():
    prompt = build_prompt(None, "What is 2+3?")
    assert prompt == f"Question: What is 2+3?\n{INSTRUCTION}\nAnswer:"

    class NoTemplate:
        chat_template = None

    assert build_prompt(NoTemplate(), "What is 2+3?") == prompt
    assert "\\boxed{}" in INSTRUCTION


def test_chat_template_prompt():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    prompt = build_prompt(tok, "What is 2+3?")
    assert prompt == f"<|user|>What is 2+3?\n{INSTRUCTION}<|end|><|assistant|>"
