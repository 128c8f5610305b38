"""End-to-end: expert -> clone -> RL from the CLI for every task and estimator (tiny budgets);
resume after an interruption; same seed, same metrics; the run-directory contract."""

import json

import numpy as np
import pytest
import yaml

from sppo_bench.cli import main
from sppo_bench.control.tasks import TASKS
from sppo_bench.control.trainer import Trainer, train_run
from sppo_bench.core import algorithm_names
from sppo_bench.errors import UserError

TINY_EXPERT = [
    "expert.n_envs=1",
    "expert.n_steps=64",
    "expert.batch_size=64",
    "expert.n_epochs=1",
    "expert.eval_episodes=2",
]
TINY_CLONE = [
    "clone.episodes=2",
    "clone.max_rollouts=2",
    "clone.only_successful=false",
    "clone.epochs=1",
    "clone.eval_episodes=2",
]
TINY_RL = ["rl.trajectories_per_update=4", "rl.group_size=2", "rl.n_eval=2", "rl.eval_every=1"]
VOLATILE = {"wall_time", "charts/SPS"}


def _cli(*args):
    assert main(["control", *args, "--no-progress"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A runs folder with a tiny expert and clone for every task (exercises both stages)."""
    root = tmp_path_factory.mktemp("runs")
    for task in TASKS:
        sets = [x for s in TINY_EXPERT for x in ("--set", s)]
        _cli("expert", "--task", task, "--timesteps", "64", "--runs-dir", str(root), *sets)
        sets = [x for s in TINY_CLONE for x in ("--set", s)]
        _cli("clone", "--task", task, "--runs-dir", str(root), *sets)
    return root


@pytest.mark.parametrize("task", list(TASKS))
def test_stages_cached_and_summarised(runs, task):
    for stage in ("expert", "clone"):
        folder = runs / "control" / task / stage
        assert (folder / "policy.pt").is_file() and (folder / "done").is_file()
        summary = json.loads((folder / "summary.json").read_text())
        assert set(summary) >= ({"success_rate"} if stage == "expert" else {"success_stochastic"})
    mtime = (runs / "control" / task / "clone" / "done").stat().st_mtime
    _cli("clone", "--task", task, "--runs-dir", str(runs))  # cached: nothing redone
    assert (runs / "control" / task / "clone" / "done").stat().st_mtime == mtime


@pytest.mark.parametrize("task", list(TASKS))
def test_rl_smoke_every_task(runs, task):
    algo = "sppo" if task != "pendulum" else "ppo-gae"
    sets = [x for s in TINY_RL for x in ("--set", s)]
    _cli("train", "--task", task, "--algo", algo, "--episodes", "8", "--runs-dir", str(runs), *sets)
    run = runs / "control" / task / algo / "seed0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [0, 1, 2]
    assert [r["episodes"] for r in rows] == [0, 4, 8]
    assert all("eval/success_stochastic" in r for r in rows)
    assert rows[-1]["losses/value"] is not None and rows[0]["losses/policy"] is None
    values = np.load(run / "values" / "update_000002.npz")
    assert values["v0"].shape == values["success"].shape == values["lengths"].shape == (2,)
    # the critic's file holds the stochastic evaluation episodes of that update
    assert values["success"].mean() == rows[-1]["eval/success_stochastic"]
    assert ((values["lengths"] >= 1) & (values["lengths"] <= TASKS[task].horizon)).all()
    if algo == "ppo-gae":
        steps = values["values"]
        assert steps.shape == (2, TASKS[task].horizon)
        real = np.arange(steps.shape[1]) < values["lengths"][:, None]
        assert np.isfinite(steps[real]).all() and np.isnan(steps[~real]).all()
        assert np.array_equal(values["v0"], steps[:, 0])
    else:
        assert ((values["v0"] > 0) & (values["v0"] < 1)).all()  # V(s_0) = sigmoid(v)
    assert json.loads((run / "done").read_text())["episodes"] == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["algo"] == algo


@pytest.mark.parametrize("algo", algorithm_names())
def test_every_estimator_runs(runs, algo):
    out = train_run(
        "cartpole",
        algo,
        1,
        runs,
        episodes=8,
        overrides=TINY_RL + ["rl.eval_every=5"],
        progress=False,
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["update"] == 2 and "eval/success_deterministic" in rows[-1]
    has_critic = algo in ("sppo", "ppo-gae", "ppo-bce")
    assert (rows[-1]["losses/value"] is not None) == has_critic
    assert [r["episodes"] for r in rows] == [0, 4, 8]
    assert all(0 <= r["train/success_rate"] <= 1 for r in rows[1:])
    assert all(r["losses/approx_kl"] >= 0 and 0 <= r["losses/clipfrac"] <= 1 for r in rows[1:])
    assert (out / "values").is_dir() == has_critic
    sampled_steps = sum(4 * r["train/episode_length"] for r in rows[1:])
    greedy_steps = rows[-1]["env_steps"] - sampled_steps
    assert (greedy_steps > 0) == (algo == "remax") and greedy_steps >= 0
    if algo == "ppo-bce":  # the stored per-step values are V = sigmoid(v_t), not logits
        with np.load(sorted((out / "values").iterdir())[-1]) as values:
            v = values["values"][~np.isnan(values["values"])]
            assert v.size and ((v > 0) & (v < 1)).all()


def test_group_start_states_repeat(runs):
    from sppo_bench.control.spec import load_spec

    spec = load_spec("cartpole", TINY_RL)
    trainer = Trainer(spec, "grpo", 0, runs / "scratch", runs / "control/cartpole/clone/policy.pt")
    seeds, groups = trainer.start_states(1)
    assert seeds.shape == groups.shape == (1, 4)  # [seeds, episodes]
    assert seeds[0, 0] == seeds[0, 1] != seeds[0, 2]
    assert groups.tolist() == [[0, 0, 1, 1]]


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def test_resume_after_interruption_and_determinism(runs, monkeypatch, tmp_path):
    overrides = TINY_RL + ["rl.eval_every=2", "rl.checkpoint_every=2"]
    kwargs = dict(episodes=24, overrides=overrides, progress=False)
    reference = train_run("cartpole", "sppo", 3, runs, **kwargs)
    # same seed, another folder: identical metrics
    other = tmp_path / "other"
    (other / "control" / "cartpole").mkdir(parents=True)
    (other / "control" / "cartpole" / "clone").symlink_to(runs / "control/cartpole/clone")
    assert _rows(train_run("cartpole", "sppo", 3, other, **kwargs)) == _rows(reference)
    # interrupted at update 6 (after the update-4 checkpoint and update 5's row)
    broken = tmp_path / "broken"
    (broken / "control" / "cartpole").mkdir(parents=True)
    (broken / "control" / "cartpole" / "clone").symlink_to(runs / "control/cartpole/clone")
    original = Trainer.step

    def interrupted(self, update):
        if update == 6:
            raise KeyboardInterrupt
        return original(self, update)

    monkeypatch.setattr(Trainer, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_run("cartpole", "sppo", 3, broken, **kwargs)
    run = broken / "control/cartpole/sppo/seed3"
    assert not (run / "done").exists() and [r["update"] for r in _rows(run)][-1] == 5
    monkeypatch.setattr(Trainer, "step", original)
    calls = []
    monkeypatch.setattr(Trainer, "step", lambda self, u: calls.append(u) or original(self, u))
    train_run("cartpole", "sppo", 3, broken, **kwargs)
    assert calls == [5, 6]  # resumed from the update-4 checkpoint
    assert _rows(run) == _rows(reference)
    train_run("cartpole", "sppo", 3, broken, **kwargs)  # done: skipped
    assert calls == [5, 6]


def test_calibration_and_evaluate(runs, capsys):
    train_run("cartpole", "sppo", 0, runs, episodes=8, overrides=TINY_RL, progress=False)
    _cli(
        "evaluate",
        "--task",
        "cartpole",
        "--algo",
        "sppo",
        "--runs-dir",
        str(runs),
        "--calibration",
        "3",
        "2",
    )
    data = np.load(runs / "control/cartpole/sppo/seed0/calibration.npz")
    assert data["v0"].shape == data["success_rate"].shape == (3,)
    assert ((data["v0"] > 0) & (data["v0"] < 1)).all()
    capsys.readouterr()
    _cli("evaluate", "--task", "cartpole", "--runs-dir", str(runs), "--n-eval", "4")
    result = json.loads(capsys.readouterr().out)
    assert result["policy"] == "clone" and 0 <= result["success_stochastic"] <= 1


def test_changed_config_is_refused(runs):
    train_run("cartpole", "sppo", 0, runs, episodes=8, overrides=TINY_RL, progress=False)
    with pytest.raises(
        UserError, match=r"other settings \(stored vs requested rl.lr: 0.0003 != 0.1"
    ):
        train_run(
            "cartpole",
            "sppo",
            0,
            runs,
            episodes=8,
            overrides=TINY_RL + ["rl.lr=0.1"],
            progress=False,
        )


def test_cached_stage_with_other_settings_is_refused(runs, capsys):
    """Asking for clone settings the cached clone was not built with is a one-line error."""
    assert main(["control", "clone", "--task", "cartpole", "--runs-dir", str(runs),
                 "--set", "clone.lr=0.5", "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "built with other clone settings" in err and err.count("\n") == 1
    same = [x for s in TINY_CLONE for x in ("--set", s)]
    _cli("clone", "--task", "cartpole", "--runs-dir", str(runs), *same)  # the same: reused


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--task", "acrobot", "--algo", "sppo"], "unknown task 'acrobot'; valid: "),
        (["train", "--task", "cartpole", "--algo", "ppo2"], "unknown algorithm 'ppo2'; valid: "),
        (["train", "--task", "cartpole", "--algo", "sppo", "--set", "rl.lrr=1"], "'lrr'"),
    ],
)
def test_cli_one_line_errors(argv, message, capsys, tmp_path):
    assert main(["control", *argv, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
