"""Loading control run directories, final success, compact CSV export."""

import json

import numpy as np
import pandas as pd
import pytest
from synthetic_runs import write_run

from sppo_bench.analysis.runs import (
    COMPACT_COLUMNS,
    discover_runs,
    export_compact_csv,
    metric_key,
    runs_table,
)
from sppo_bench.errors import UserError


def test_discover_filters_and_skips_stage_folders(synthetic_runs_dir):
    runs = discover_runs(synthetic_runs_dir)
    assert len(runs) == 21  # 2 tasks x 2 algos x 5 seeds + one unfinished
    assert {r.algo for r in runs} == {"sppo", "ppo-gae"}  # expert/ and clone/ are not runs
    finished = discover_runs(synthetic_runs_dir, finished_only=True)
    assert len(finished) == 20 and all(r.done for r in finished)
    only = discover_runs(synthetic_runs_dir, tasks=["mountaincar"], algos=["sppo"])
    assert [(r.task, r.algo, r.seed) for r in only] == [
        ("mountaincar", "sppo", s) for s in range(5)
    ]


def test_final_success_is_mean_of_last_eval_points(synthetic_runs_dir):
    run = discover_runs(synthetic_runs_dir, tasks=["cartpole"], algos=["sppo"])[0]
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/success_stochastic"] for r in rows if "eval/success_stochastic" in r]
    assert run.final_success() == pytest.approx(np.mean(evals[-3:]))
    assert run.final_success(last=1) == pytest.approx(evals[-1])
    det = [r["eval/success_deterministic"] for r in rows if "eval/success_deterministic" in r]
    assert run.final_success("deterministic", 2) == pytest.approx(np.mean(det[-2:]))
    curve = run.eval_curve()
    assert curve["episodes"].iloc[0] == 0 and len(curve) == len(evals)
    with pytest.raises(UserError, match="valid: stochastic, deterministic"):
        metric_key("greedy")


def test_runs_table_and_null_losses(synthetic_runs_dir):
    table = runs_table(discover_runs(synthetic_runs_dir, finished_only=True), threshold=0.8)
    assert len(table) == 20 and table["done"].all()
    sppo = table[table.algo == "sppo"]["final_success"].mean()
    gae = table[table.algo == "ppo-gae"]["final_success"].mean()
    assert sppo > gae
    # a run that never reaches the threshold has NaN episodes-to-threshold
    assert (
        table[(table.task == "mountaincar") & (table.algo == "ppo-gae")]["episodes_to_threshold"]
        .isna()
        .all()
    )


def test_torn_last_line_and_compact_csv(tmp_path):
    run_dir = write_run(tmp_path, "cartpole", "sppo", 0, 640)
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"update": 99, "epis')  # a process killed mid-write
    (run,) = discover_runs(tmp_path)
    assert run.metrics["update"].max() == 10
    out = export_compact_csv(run, tmp_path / "out" / "seed0.csv")
    frame = pd.read_csv(out)
    assert list(frame.columns) == list(COMPACT_COLUMNS)
    assert len(frame) == 11
    np.testing.assert_allclose(frame["episodes"], run.metrics["episodes"])


def test_missing_runs_folder_is_one_line_error(tmp_path):
    with pytest.raises(UserError, match="no control runs under") as info:
        discover_runs(tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    (tmp_path / "control").mkdir()
    with pytest.raises(UserError, match="no runs found"):
        discover_runs(tmp_path)
