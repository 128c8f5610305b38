"""The ablation study's table and phase diagram, on hand-made run folders whose numbers are
known: runs are placed by their stored config (lambda, clone strength), not by folder names."""

import json

import numpy as np
import pytest
import yaml

from sppo_bench.analysis.study import phase_table, study_runs
from sppo_bench.cli import main

BUDGET = 160


def _run(
    root, algo, variant, seed, noise, curve, lam=None, critic_lr=1e-3, expert=None, warmup=None
):
    """A finished MountainCar run: evaluation success ``curve`` at episodes 0, 40, 80, ...
    (``expert``: the config's expert.seed, ``warmup``: rl.critic_warmup_updates; None: a config
    from before the field)."""
    folder = root / "control" / "mountaincar" / f"{algo}@{variant}" / f"seed{seed}"
    folder.mkdir(parents=True)
    params = {} if lam is None else {"ppo-gae": {"lam": lam}}
    config = {
        "algo": algo,
        "seed": seed,
        "variant": variant,
        "task": "mountaincar",
        "clone": {"demo_noise": noise},
        "rl": {"episodes": BUDGET, "critic_lr": critic_lr, "estimator_params": params},
    }
    if expert is not None:
        config["expert"] = {"seed": expert}
    if warmup is not None:
        config["rl"]["critic_warmup_updates"] = warmup
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [
        {"update": u, "episodes": 40 * u, "wall_time": u, "eval/success_stochastic": s}
        for u, s in enumerate(curve)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "done").write_text("{}")


@pytest.fixture()
def study(tmp_path):
    solved, stuck = [0.0, 0.9, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]
    late = [0.0, 0.0, 0.0, 0.0, 0.9]
    for seed in range(3):
        _run(tmp_path, "sppo", "p0.99", seed, 0.99, solved)
        _run(tmp_path, "ppo-gae", "p0.99", seed, 0.99, solved)  # lambda: the default, 1.0
        _run(tmp_path, "ppo-gae", "p0.99-lam0.95", seed, 0.99, [stuck, stuck, late][seed], 0.95)
        _run(tmp_path, "sppo", "p0", seed, 0.0, solved)
    _run(tmp_path, "ppo-gae", "p0-lam0.95", 0, 0.0, solved, 0.95)
    _run(tmp_path, "sppo", "p0.99-clr1e-5", 0, 0.99, stuck, critic_lr=1e-5)  # its own cells
    return tmp_path


def test_cells_compare_each_lambda_with_sppo_at_the_same_clone_strength(study):
    runs = study_runs(study, "mountaincar", threshold=0.8, final_evals=1)
    assert sorted(runs["lam"].dropna().unique()) == [0.95, 1.0]
    table = phase_table(runs).set_index(["algo", "lam", "clone"])
    assert len(table) == 3  # (0.95, 0.99), (1.0, 0.99), (0.95, 0.0)
    hard = table.loc[("ppo-gae", 0.95, 0.99)]
    assert (hard["n"], hard["n_base"]) == (3, 3)
    assert hard["final_diff"] == pytest.approx(0.9 / 3 - 1.0)  # finals 0, 0, 0.9 vs 1, 1, 1
    assert hard["final_diff_lo"] <= hard["final_diff"] <= hard["final_diff_hi"] < 0
    # episodes to 0.8: never (counted at the budget 160), never, 160 -> median 160; SPPO 40
    assert hard["episodes_diff"] == pytest.approx(160 - 40)
    assert (hard["reached"], hard["reached_base"]) == (1, 3)
    same = table.loc[("ppo-gae", 1.0, 0.99)]
    assert same["final_diff"] == 0 and same["final_diff_lo"] == same["final_diff_hi"] == 0
    easy = table.loc[("ppo-gae", 0.95, 0.0)]
    assert (easy["n"], easy["n_base"]) == (1, 3) and easy["final_diff"] == 0


def test_critic_warm_up_arms_are_cells_of_their_own_against_sppo_with_the_same_warm_up(study):
    """PPO-GAE lambda 0.95 with 25 warm-up updates is compared with SPPO warmed up alike, never
    pooled with the arms without warm-up (which keep their own numbers)."""
    solved, stuck = [0.0, 0.9, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]
    for seed in range(3):
        _run(study, "sppo", "p0.99-warm25", seed, 0.99, [stuck, stuck, solved][seed], warmup=25)
        _run(study, "ppo-gae", "p0.99-lam0.95-warm25", seed, 0.99, solved, 0.95, warmup=25)
    _run(study, "ppo-gae", "p0.99-warm0", 3, 0.99, solved, warmup=0)  # 0 written out: no warm-up
    runs = study_runs(study, "mountaincar", threshold=0.8, final_evals=1)
    table = phase_table(runs).set_index(["algo", "lam", "clone", "warmup"])
    warm = table.loc[("ppo-gae", 0.95, 0.99, 25)]
    assert (warm["n"], warm["n_base"]) == (3, 3)
    assert warm["final_diff"] == pytest.approx(1.0 - 1 / 3)  # 1, 1, 1 against 0, 0, 1
    assert (warm["reached"], warm["reached_base"]) == (3, 1)
    cold = table.loc[("ppo-gae", 0.95, 0.99, 0)]
    assert (cold["n"], cold["n_base"]) == (3, 3)
    assert cold["final_diff"] == pytest.approx(0.9 / 3 - 1.0)  # as without the warm-up arms
    assert table.loc[("ppo-gae", 1.0, 0.99, 0), "n"] == 4
    assert len(table) == 4


def test_plot_phase_writes_the_tables_and_the_figure(study, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    args = ["plot", "phase", "--runs-dir", str(study), "--tasks", "mountaincar", "--out", str(out)]
    assert main(args) == 0
    assert (out / "phase_mountaincar.png").stat().st_size > 20_000
    cells = np.loadtxt(out / "phase_mountaincar.csv", delimiter=",", skiprows=1, usecols=2)
    assert sorted(cells) == [0.95, 0.95, 1.0]
    assert (out / "study_runs_mountaincar.csv").read_text().count("\n") == 1 + 14


def test_cells_from_other_experts_are_compared_apart_and_their_spread_reported(study, tmp_path):
    """Expert seed 0 (the fixture: configs without the field), 1 and 3: each cell compares
    PPO-GAE with SPPO of the same expert; the spread row holds one difference per expert, the
    SD between the experts' means beside the SD between seeds, and the verdict."""
    from sppo_bench.analysis.study import stage_spread

    solved, stuck = [0.0, 0.9, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0]
    for seed in range(3):
        _run(study, "sppo", "e1-p0.99", seed, 0.99, solved, expert=1)
        _run(study, "ppo-gae", "e1-p0.99-lam0.95", seed, 0.99, stuck, 0.95, expert=1)
        _run(study, "sppo", "e3-p0.99", seed, 0.99, [stuck, solved, solved][seed], expert=3)
        _run(study, "ppo-gae", "e3-p0.99-lam0.95", seed, 0.99, stuck, 0.95, expert=3)
    runs = study_runs(study, "mountaincar", threshold=0.8, final_evals=1)
    table = phase_table(runs)
    hard = table[(table["lam"] == 0.95) & (table["clone"] == 0.99)].set_index("expert_seed")
    assert sorted(hard.index) == [0, 1, 3] and (hard["n"] == 3).all()
    assert hard.loc[1, "final_diff"] == pytest.approx(-1.0)  # 0, 0, 0 against 1, 1, 1
    assert hard.loc[3, "final_diff"] == pytest.approx(-2 / 3)
    spread = stage_spread(runs, table).set_index(["algo", "lam", "clone"])
    assert len(spread) == 1  # the only cell run from several experts
    row = spread.loc[("ppo-gae", 0.95, 0.99)]
    assert row["stages"] == "expert 0; expert 1; expert 3"
    assert row["finals"] == "0.30; 0.00; 0.00" and row["finals_base"] == "1.00; 1.00; 0.67"
    assert row["between_sd_base"] == pytest.approx(np.std([1, 1, 2 / 3], ddof=1))
    # PPO-GAE's seeds: 0, 0, 0.9 at expert 0 (variance 0.27), all 0 at experts 1 and 3
    assert row["within_sd"] == pytest.approx(np.sqrt(0.27 / 3))
    assert row["min_diff"] == pytest.approx(-1.0) and row["max_diff"] == pytest.approx(-2 / 3)
    # expert 3's interval: SPPO 0 / 1 / 1 resampled can give 0, so it holds 0
    assert row["verdict"] == "differs between stages"
    out = tmp_path / "out"
    assert main(["plot", "phase", "--runs-dir", str(study), "--out", str(out)]) == 0
    assert (out / "spread_mountaincar.csv").read_text().count("\n") == 2


def test_learning_curves_share_one_time_unit_per_axis(tmp_path, monkeypatch):
    """A 40 s arm beside a 200 s arm: both drawn in minutes (the axis's unit), not 40 "min"."""
    import matplotlib.figure

    from sppo_bench.analysis.figures import plot_learning_curves
    from sppo_bench.analysis.runs import discover_runs

    for algo, seconds_per_eval in (("sppo", 50.0), ("ppo-gae", 10.0)):
        folder = tmp_path / "control" / "mountaincar" / algo / "seed0"
        folder.mkdir(parents=True)
        rows = [
            {
                "update": u,
                "episodes": 40 * u,
                "wall_time": seconds_per_eval * u,
                "eval/success_stochastic": u / 4,
            }
            for u in range(5)
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "done").write_text("{}")
    figures, save = [], matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k),
    )
    plot_learning_curves(discover_runs(tmp_path), tmp_path / "curves.png")
    wall_axis = figures[0].axes[1]
    ends = sorted(
        max(line.get_xdata()) for line in wall_axis.get_lines() if len(line.get_xdata()) > 2
    )
    assert ends == pytest.approx([40 / 60, 200 / 60]) and "min" in wall_axis.get_xlabel()
