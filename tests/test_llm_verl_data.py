"""Data preparation and reward for the verl launch scripts (no verl needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
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


def test_prepare_data_script_reads_the_public_hub_sets_by_default(tmp_path):
    """``llm/verl/prepare_data.sh`` as a user runs it, with no local data: every set comes from
    its Hub id (a ``datasets`` stand-in on the path serves Hub-shaped copies of the shared files
    and refuses any other id or split)."""
    from test_llm_data import hub_rows

    if not SHARED_MATH.is_dir():
        pytest.skip(f"the shared evaluation data is not at {SHARED_MATH}")
    rows = {f"{k[0]}|{k[1]}": v for k, v in hub_rows().items()}
    rows["agentica-org/DeepScaleR-Preview-Dataset|train"] = [
        {"problem": "What is 1+1?", "answer": "2", "solution": "..."}
    ]
    rows["BytedTsinghua-SIA/DAPO-Math-17k|train"] = [dapo_row("What is 2+3?", "5")] * 3
    fake = tmp_path / "fake" / "datasets"
    fake.mkdir(parents=True)
    (fake / "rows.json").write_text(json.dumps(rows))
    (fake / "__init__.py").write_text(
        "import json, pathlib\n"
        "ROWS = json.loads((pathlib.Path(__file__).parent / 'rows.json').read_text())\n"
        "def load_dataset(source, split):\n"
        "    return ROWS[f'{source}|{split}']\n"
    )
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "EVAL_DIR"}
    env.update(OUT=str(out), PYTHON=sys.executable, PYTHONPATH=f"{fake.parent}:{REPO}")
    done = subprocess.run(
        ["bash", str(REPO / "llm/verl/prepare_data.sh")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shared" not in done.stdout
    for name, train in (("deepscaler", ["What is 1+1?"]), ("dapo17k", ["What is 2+3?"])):
        frame = pd.read_parquet(out / name / "train.parquet")
        assert [p[0]["content"].split("\n")[0] for p in frame["prompt"]] == train
        val = pd.read_parquet(out / name / "val.parquet")
        counts = val["data_source"].value_counts().to_dict()
        assert counts == {"math500": 500, "minerva": 272, "amc23": 40, "aime24": 30, "aime25": 30}


def test_eval_dir_overrides_the_hub_and_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "aime24.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"problem": "2+2?", "answer": "4"}) + "\n")
    out = tmp_path / "out"
    main(["--format", "deepscaler", "--train", str(train), "--eval-dir", str(tmp_path)]
         + ["--out", str(out)])  # fmt: skip
    assert pd.read_parquet(out / "val.parquet")["data_source"].tolist() == ["aime24"]
    assert "aime25.jsonl: not there, left out" in capsys.readouterr().out
    with pytest.raises(UserError, match="no evaluation set found in .* \\(looked for aime24"):
        main(["--format", "deepscaler", "--train", str(train)]
             + ["--eval-dir", str(tmp_path / "none"), "--out", str(out)])  # fmt: skip
