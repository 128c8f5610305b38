"""Suite report and figures from synthetic run directories, through the CLI."""

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_runs import write_run, write_suite

from sppo_bench.analysis.report import build_report
from sppo_bench.analysis.stats import iqm
from sppo_bench.cli import main


def test_report_numbers(synthetic_runs_dir):
    report = build_report(synthetic_runs_dir, threshold=0.8)
    s = report.summary
    for task in ("cartpole", "mountaincar"):
        sppo = s[(s.task == task) & (s.algo == "sppo")].iloc[0]
        gae = s[(s.task == task) & (s.algo == "ppo-gae")].iloc[0]
        assert sppo.n_runs == 5  # the unfinished seed is left out
        scores = report.runs[(report.runs.task == task) & (report.runs.algo == "sppo")]
        assert sppo.iqm == pytest.approx(iqm(scores["final_success"].to_numpy()))
        assert sppo.ci_lo <= sppo.iqm <= sppo.ci_hi
        assert sppo.iqm > gae.iqm
        assert np.isinf(gae.episodes_to_threshold_median) and gae.reached_threshold == 0
        # 0 of 5 reached: the exact 95% interval is [0, 1 - 0.025^(1/5)]
        assert (gae.reached_lo, gae.reached_hi) == pytest.approx((0.0, 1 - 0.025**0.2))
    assert report.improvement.point > 0.9
    assert report.improvement_tasks == ["cartpole", "mountaincar"]
    agg = s[s.task == "aggregate"].set_index("algo")
    assert agg.loc["sppo", "n_runs"] == 10 and agg.loc["sppo", "iqm"] > agg.loc["ppo-gae", "iqm"]
    with_partial = build_report(synthetic_runs_dir, include_unfinished=True)
    assert with_partial.runs.shape[0] == 21


def test_cloned_policy_column_is_per_arm_where_arms_start_from_different_clones(tmp_path):
    """The start column averages update-0 success only over arms of one clone; a clone-strength
    variant (its own clone settings in config.yaml) gets its start in its own cell."""

    def write(algo: str, noise: float) -> None:
        for seed in range(2):
            run = write_run(tmp_path, "cartpole", algo, seed, budget=256)
            config = yaml.safe_load((run / "config.yaml").read_text())
            config.update(policy={"hidden": [64, 64]}, clone={"epochs": 4, "demo_noise": noise})
            (run / "config.yaml").write_text(yaml.safe_dump(config))

    write("sppo", 0.0)
    write("ppo-gae", 0.0)
    one_clone = build_report(tmp_path)
    row = next(line for line in one_clone.markdown.splitlines() if line.startswith("| Precision"))
    starts = one_clone.summary[one_clone.summary.task == "cartpole"]["initial_success"]
    assert row.split(" | ")[1] == f"{starts.mean():.2f}" and "; start" not in row
    write("sppo@weak", 0.9)
    mixed = build_report(tmp_path)
    row = next(line for line in mixed.markdown.splitlines() if line.startswith("| Precision"))
    assert row.split(" | ")[1] == "per arm"
    weak = mixed.summary[(mixed.summary.label == "sppo@weak")].iloc[0]
    assert f"start {weak.initial_success:.2f})" in row
    assert row.count("; start ") == 3


def test_suite_report_cli_writes_tables(synthetic_runs_dir, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["suite", "report", "--runs-dir", str(synthetic_runs_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Precision CartPole |" in printed and "P(SPPO > PPO-GAE)" in printed
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.task) == {"cartpole", "mountaincar", "aggregate"}
    assert (out / "summary.md").read_text().startswith("## Control suite")
    assert len(pd.read_csv(out / "runs.csv")) == 20
    assert len(list((out / "runs").rglob("seed*.csv"))) == 20


@pytest.mark.parametrize(
    "figure, files",
    [
        ("curves", ["learning_curves.png"]),
        ("tail-effect", ["tail_effect_cartpole.png", "tail_effect_mountaincar.png"]),
        ("calibration", ["calibration.png"]),
    ],
)
def test_plot_cli_draws_figures(synthetic_runs_dir, tmp_path, figure, files):
    out = tmp_path / "figs"
    assert main(["plot", figure, "--runs-dir", str(synthetic_runs_dir), "--out", str(out)]) == 0
    for name in files:
        assert (out / name).stat().st_size > 30_000


def test_calibration_falls_back_to_evaluation_episodes(synthetic_runs_dir, tmp_path):
    from sppo_bench.analysis import figures
    from sppo_bench.analysis.runs import discover_runs

    runs = discover_runs(synthetic_runs_dir, ["mountaincar"], ["sppo"], finished_only=True)
    v0, rate, source = figures._calibration_points(runs)
    assert v0.size == 5 * 64 and "start states" in source
    for run in runs:  # pretend no calibration.npz was written
        run.calibration = lambda: None
    v0, rate, source = figures._calibration_points(runs)
    assert set(np.unique(rate)) <= {0.0, 1.0} and "binary" in source
    assert figures.plot_calibration(runs, tmp_path / "c.png").stat().st_size > 30_000


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", "curves", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sppo-bench: error: no control runs under") and err.count("\n") == 1


def test_aggregate_over_fewer_tasks_is_marked(tmp_path):
    """An estimator run on only some tasks gets its aggregate flagged, not silently compared."""
    root = write_suite(tmp_path / "suite", seeds=3)
    for seed in range(3):
        write_run(root, "cartpole", "grpo", seed, 1280)
    report = build_report(root)
    agg = report.summary[report.summary.task == "aggregate"].set_index("algo")
    assert agg.loc["grpo", "n_tasks"] == 1 and agg.loc["sppo", "n_tasks"] == 2
    row = next(line for line in report.markdown.splitlines() if "aggregate IQM" in line)
    assert row.count("(1 of 2 tasks)") == 1
    mountaincar = next(line for line in report.markdown.splitlines() if "| MountainCar |" in line)
    assert mountaincar.rstrip(" |").endswith("-")  # the GRPO column has no MountainCar runs


def test_seed_blocks_count_what_each_10_seed_rerun_would_have_seen(tmp_path):
    """Cells with two or more full blocks of 10 seeds get one reached-count per block, and the
    counts add up to the cell's total; cells with fewer seeds get no such row."""
    write_suite(tmp_path, tasks=("mountaincar",), algos=("sppo",), seeds=20)
    write_suite(tmp_path, tasks=("cartpole",), algos=("sppo",), seeds=5)
    report = build_report(tmp_path, threshold=0.8)
    section = report.markdown.split("per block of 10 seeds")[1]
    rows = [line for line in section.splitlines() if line.startswith("| MountainCar")]
    assert len(rows) == 1 and "CartPole" not in section
    counts = [int(part.split(": ")[1].split("/")[0]) for part in rows[0].split("|")[3].split(";")]
    total = report.summary.query("task == 'mountaincar' and algo == 'sppo'").iloc[0]
    assert len(counts) == 2 and sum(counts) == total.reached_threshold
