"""Data preparation and reward for the verl launch scripts (no verl needed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from sppo_bench.errors import UserError
from sppo_bench.llm.data import INSTRUCTION
from sppo_bench.llm.verl_data import dapo_question, load_train, main

REPO = Path(__file__).resolve().parents[1]
SHARED_MATH = REPO.parent / "shared" / "data" / "math"

DAPO_HEAD = (
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
)
DAPO_TAIL = '\n\nRemember to put your answer on its own line after "Answer:".'


def dapo_row(question: str, answer: str) -> dict:
    return {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": f"{DAPO_HEAD}\n\n{question}{DAPO_TAIL}"}],
        "ability": "MATH",
        "reward_model": {"ground_truth": answer, "style": "rule-lighteval/MATH_v2"},
        "extra_info": {"index": "x"},
    }


def test_dapo_question_takes_off_the_wrapper():
    assert dapo_question(f"{DAPO_HEAD}\n\nFind $x$.\n\nIf $x+1=2$.{DAPO_TAIL}") == (
        "Find $x$.\n\nIf $x+1=2$."
    )
    assert dapo_question("  What is 2+2?  ") == "What is 2+2?"


def test_dapo17k_parquet_is_read_deduplicated(tmp_path):
    rows = [dapo_row("What is 1+1?", "2"), dapo_row("What is 2+3?", "5")]
    path = tmp_path / "dapo-math-17k.parquet"
    pd.DataFrame(rows + rows[:1]).to_parquet(path)  # Parquet hands lists back as arrays
    problems = load_train(str(path), "dapo17k")
    assert [(p.question, p.answer) for p in problems] == [
        ("What is 1+1?", "2"),
        ("What is 2+3?", "5"),
    ]


def test_dapo17k_row_without_ground_truth_is_a_one_line_error(tmp_path):
    row = dapo_row("What is 1+1?", "2")
    row["reward_model"] = {"style": "rule"}
    path = tmp_path / "dapo.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=r"dapo.jsonl:1: missing field 'reward_model.ground_truth'"):
        load_train(str(path), "dapo17k")


def test_prepare_writes_verl_schema(tmp_path):
    if not SHARED_MATH.is_dir():
        pytest.skip(f"the shared evaluation data is not at {SHARED_MATH}")
    train = tmp_path / "deepscaler.jsonl"
    train.write_text(
        "\n".join(
            json.dumps({"problem": q, "answer": a, "solution": "..."})
            for q, a in [("What is 1+1?", "2"), ("Compute $3^2$.", "9")]
        )
        + "\n"
    )
    out = tmp_path / "out"
    main(
        ["--train", str(train), "--format", "deepscaler"]
        + ["--eval-dir", str(SHARED_MATH), "--out", str(out)]
    )
    frame = pd.read_parquet(out / "train.parquet")
    assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    first = frame.iloc[0]
    assert first["data_source"] == "deepscaler"
    assert list(first["prompt"]) == [{"role": "user", "content": f"What is 1+1?\n{INSTRUCTION}"}]
    assert first["reward_model"]["ground_truth"] == "2"
    val = pd.read_parquet(out / "val.parquet")
    counts = val["data_source"].value_counts().to_dict()
    assert counts == {"math500": 500, "minerva": 272, "amc23": 40, "aime24": 30, "aime25": 30}
    assert (val["extra_info"].map(lambda e: e["split"]) == "test").all()


def test_reward_function_grades_the_last_box():
    spec = importlib.util.spec_from_file_location("verl_reward", REPO / "llm/verl/reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    good = "<think>2+2 is 4</think> So the answer is $\\boxed{4}$."
    assert module.compute_score("aime24", good, "4", extra_info={}) == 1.0
    assert module.compute_score("aime24", "It is \\boxed{5}.", "4") == 0.0
    assert module.compute_score("aime24", "no box here", 4) == 0.0
