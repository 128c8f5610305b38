"""The suite runner: profiles, skip/resume, clone-before-RL ordering, executors, errors."""

import json
import sys
import time
from pathlib import Path

import pytest
from synthetic_runs import write_run

from sppo_bench.cli import main
from sppo_bench.errors import UserError
from sppo_bench.orchestration import suite
from sppo_bench.orchestration.executors import make_executor
from sppo_bench.orchestration.plan import plan_runs, run_state
from sppo_bench.orchestration.profile import load_profile
from sppo_bench.orchestration.suite import run_suite

TASKS = ["cartpole", "mountaincar", "hopper", "lunarlander", "pendulum"]


def _log(runs_dir: Path, **event) -> None:
    with (Path(runs_dir) / "calls.jsonl").open("a") as handle:
        handle.write(json.dumps({**event, "t": time.time()}) + "\n")


def _events(runs_dir: Path) -> list[dict]:
    path = Path(runs_dir) / "calls.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def fake_clone(task, runs_dir, overrides=()):
    """Stands in for the expert + cloning stages: writes the clone summary."""
    _log(runs_dir, kind="clone", task=task, overrides=list(overrides))
    out = Path(runs_dir) / "control" / task / "clone"
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text('{"success_rate": 0.3}')
    return out


def fake_train(task, algo, seed, runs_dir, episodes, overrides, progress):
    """Stands in for train_run: needs the clone, writes a finished synthetic run."""
    if not (Path(runs_dir) / "control" / task / "clone" / "summary.json").is_file():
        raise RuntimeError("RL run started before the clone stage")
    run = Path(runs_dir) / "control" / task / algo / f"seed{seed}"
    _log(
        runs_dir,
        kind="run",
        task=task,
        algo=algo,
        seed=seed,
        resumed=run.is_dir(),
        overrides=list(overrides),
        episodes=episodes,
    )
    if algo == "ppo-gae" and seed == 1:
        raise ValueError("diverged\nsecond line")
    return write_run(runs_dir, task, algo, seed, episodes)


def failing_clone(task, runs_dir, overrides=()):
    raise RuntimeError(f"no expert for {task}")


def test_profiles_are_ordered_and_paper_matches_paper_budgets():
    quick, standard, paper = (load_profile(n) for n in ("quick", "standard", "paper"))
    for p in (quick, standard, paper):
        assert list(p.tasks) == TASKS and {"sppo", "ppo-gae"} <= set(p.algos)
    for task in TASKS:
        assert quick.tasks[task].episodes < standard.tasks[task].episodes
        assert standard.tasks[task].episodes < paper.tasks[task].episodes
    budgets = {t: b.episodes for t, b in paper.tasks.items()}
    assert budgets == {
        "cartpole": 40000,
        "mountaincar": 10000,
        "hopper": 20000,
        "lunarlander": 30000,
        "pendulum": 20000,
    }
    assert standard.seeds >= 10 and len(paper.algos) == 6


def test_plan_runs_and_profile_errors(tmp_path):
    profile = load_profile("quick")
    specs = plan_runs(profile, ["mountaincar"], ["sppo"], 2)
    assert [str(s) for s in specs] == ["mountaincar/sppo/seed0", "mountaincar/sppo/seed1"]
    assert specs[0].episodes == 400 and specs[0].overrides == ("rl.eval_every=5",)
    # an alias resolves to the algorithm's run name (its folder)
    assert {s.algo for s in plan_runs(profile, ["mountaincar"], ["gae", "ppo"], 1)} == {"ppo-gae"}
    cases = [
        (lambda: load_profile("fast"), "unknown profile 'fast'; valid: ablation-bce, .*, standard"),
        (lambda: plan_runs(profile, ["acrobot"]), "unknown task 'acrobot' for profile 'quick'"),
        (
            lambda: plan_runs(profile, None, ["ppo2"]),
            "unknown algorithm 'ppo2'; valid: bce, gae, grpo, ppo, ppo-bce, ppo-gae, reinforce",
        ),
        (lambda: plan_runs(profile, None, None, 0), "--seeds must be at least 1"),
        (lambda: make_executor("dask", 2), "unknown executor 'dask'; valid: local, ray"),
        (lambda: make_executor("local", 0), "--workers must be at least 1"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "seeds: 3\nalgos: [sppo]\ntasks:\n  mountaincar: {episodes: -5, eval_every: 1}\n"
    )
    cases.append(
        (lambda: load_profile(str(bad)), "'tasks.mountaincar.episodes' must be a positive")
    )
    for call, message in cases:
        with pytest.raises(UserError, match=message.replace("(", r"\(")) as info:
            call()
        assert "\n" not in str(info.value)


def test_cli_errors_are_one_line(tmp_path, capsys):
    for argv in (
        ["suite", "run", "--profile", "fast"],
        ["suite", "run", "--tasks", "acrobot"],
        ["suite", "run", "--algos", "ppo2"],
        ["suite", "report", "--runs-dir", str(tmp_path / "none")],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("sppo-bench: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_skip_resume_and_clone_first(tmp_path, workers):
    specs = plan_runs(load_profile("quick"), ["cartpole", "mountaincar"], None, 2)
    write_run(tmp_path, "cartpole", "sppo", 0, 1280)  # finished earlier
    write_run(tmp_path, "mountaincar", "sppo", 1, 400, finished=False)  # interrupted earlier
    assert run_state(specs[0], tmp_path) == "done"
    assert run_state(specs[5], tmp_path) == "resume" and run_state(specs[1], tmp_path) == "new"
    result = run_suite(specs, tmp_path, workers=workers, run_fn=fake_train, clone_fn=fake_clone)
    assert [str(s) for s in result.skipped] == ["cartpole/sppo/seed0"]
    failed = {str(s): why for s, why in result.failed}
    assert set(failed) == {"cartpole/ppo-gae/seed1", "mountaincar/ppo-gae/seed1"}
    assert all(why == "ValueError: diverged" for why in failed.values())
    assert len(result.finished) == 8 - 1 - 2
    events = _events(tmp_path)
    clones = [e for e in events if e["kind"] == "clone"]
    runs = [e for e in events if e["kind"] == "run"]
    assert sorted(e["task"] for e in clones) == ["cartpole", "mountaincar"]
    assert len(runs) == 7  # the finished run was not started again
    resumed = [(e["task"], e["algo"], e["seed"]) for e in runs if e["resumed"]]
    assert resumed == [("mountaincar", "sppo", 1)]
    assert all(e["overrides"][0].startswith("rl.eval_every=") for e in runs)
    # second invocation: only the two failed runs are attempted again
    again = run_suite(specs, tmp_path, workers=workers, run_fn=fake_train, clone_fn=fake_clone)
    assert len(again.skipped) == 6 and len(again.failed) == 2 and not again.finished


def test_profile_overrides_reach_the_clone_stage(tmp_path):
    profile = tmp_path / "weak.yaml"
    profile.write_text(
        "algos: [sppo]\nseeds: 1\ntasks:\n"
        "  mountaincar: {episodes: 80, eval_every: 5, overrides: [clone.lr=0.0001]}\n"
    )
    specs = plan_runs(load_profile(str(profile)), None, None, None)
    run_suite(specs, tmp_path, workers=1, run_fn=fake_train, clone_fn=fake_clone)
    events = _events(tmp_path)
    assert [e["overrides"] for e in events if e["kind"] == "clone"] == [["clone.lr=0.0001"]]
    run = next(e for e in events if e["kind"] == "run")
    assert run["overrides"] == ["rl.eval_every=5", "clone.lr=0.0001"]


def test_failed_clone_fails_that_tasks_runs(tmp_path):
    specs = plan_runs(load_profile("quick"), ["mountaincar"], ["sppo"], 2)
    result = run_suite(specs, tmp_path, workers=1, run_fn=fake_train, clone_fn=failing_clone)
    assert len(result.failed) == 2 and not result.finished
    assert all(
        "clone stage failed: RuntimeError: no expert for mountaincar" == w for _, w in result.failed
    )
    assert not (tmp_path / "calls.jsonl").exists()


def test_missing_ray_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    specs = plan_runs(load_profile("quick"), ["mountaincar"], ["sppo"], 1)
    with pytest.raises(UserError, match=r"--executor ray needs Ray: pip install") as info:
        run_suite(specs, tmp_path, executor="ray", run_fn=fake_train, clone_fn=fake_clone)
    assert "\n" not in str(info.value)


def test_demo_runs_report_and_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite, "default_run_fn", fake_train)
    monkeypatch.setattr(suite, "default_seeds_fn", fake_train_seeds)
    monkeypatch.setattr(suite, "default_clone_fn", fake_clone)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--workers", "1", "--seeds", "3"]) == 1  # 2 fail
    printed = capsys.readouterr().out
    assert "2 failed" in printed and "summary table:" in printed
    assert (out / "report" / "summary.md").is_file() and (out / "runs" / "control").is_dir()
    for name in ("learning_curves.png", "calibration.png", "tail_effect_mountaincar.png"):
        assert (out / "report" / "figures" / name).stat().st_size > 30_000


def test_ray_executor_on_a_local_instance(tmp_path):
    ray = pytest.importorskip("ray")
    specs = plan_runs(load_profile("quick"), ["mountaincar"], ["sppo", "ppo-gae"], 2)
    write_run(tmp_path, "mountaincar", "sppo", 0, 400)  # finished earlier: skipped
    try:
        result = run_suite(
            specs, tmp_path, executor="ray", workers=2, run_fn=fake_train, clone_fn=fake_clone
        )
    finally:
        ray.shutdown()
    assert [str(s) for s in result.skipped] == ["mountaincar/sppo/seed0"]
    assert [(str(s), why) for s, why in result.failed] == [
        ("mountaincar/ppo-gae/seed1", "ValueError: diverged")
    ]
    assert len(result.finished) == 2
    events = _events(tmp_path)
    assert [e["kind"] for e in events].count("clone") == 1
    assert (tmp_path / "control" / "mountaincar" / "ppo-gae" / "seed0" / "done").is_file()


def fake_train_seeds(task, algo, seeds, runs_dir, episodes, overrides, progress):
    """Stands in for train_seeds: one job, several seeds; seed 1 of ppo-gae diverges after the
    others finished (as train_seeds reports it)."""
    _log(runs_dir, kind="stack", task=task, algo=algo, seeds=list(seeds))
    paths = [
        write_run(runs_dir, task, algo, s, episodes) for s in seeds if (algo, s) != ("ppo-gae", 1)
    ]
    if algo == "ppo-gae" and 1 in seeds:
        raise ValueError("seed(s) [1] diverged")
    return paths


@pytest.mark.parametrize("workers", [1, 2])
def test_stacked_jobs_group_seeds_of_one_task_and_algorithm(tmp_path, workers):
    specs = plan_runs(load_profile("quick"), ["cartpole", "mountaincar"], None, 5)
    write_run(tmp_path, "cartpole", "sppo", 0, 1280)  # finished earlier: not in any job
    result = run_suite(
        specs,
        tmp_path,
        workers=workers,
        run_fn=fake_train,
        clone_fn=fake_clone,
        stack=3,
        seeds_fn=fake_train_seeds,
    )
    stacks = sorted(
        (e["task"], e["algo"], e["seeds"]) for e in _events(tmp_path) if e["kind"] == "stack"
    )
    assert stacks == [
        ("cartpole", "ppo-gae", [0, 1, 2]),
        ("cartpole", "ppo-gae", [3, 4]),
        ("cartpole", "sppo", [1, 2, 3]),
        ("mountaincar", "ppo-gae", [0, 1, 2]),
        ("mountaincar", "ppo-gae", [3, 4]),
        ("mountaincar", "sppo", [0, 1, 2]),
        ("mountaincar", "sppo", [3, 4]),
    ]
    runs = [e for e in _events(tmp_path) if e["kind"] == "run"]
    assert [(e["task"], e["algo"], e["seed"]) for e in runs] == [("cartpole", "sppo", 4)]
    failed = {str(s): why for s, why in result.failed}
    assert set(failed) == {"cartpole/ppo-gae/seed1", "mountaincar/ppo-gae/seed1"}
    assert len(result.finished) == 20 - 1 - 2 and len(result.skipped) == 1
    with pytest.raises(UserError, match="stack must be at least 1"):
        run_suite(specs, tmp_path, run_fn=fake_train, clone_fn=fake_clone, stack=0)


def test_ray_executor_ships_stacked_jobs(tmp_path):
    ray = pytest.importorskip("ray")
    specs = plan_runs(load_profile("quick"), ["mountaincar"], ["sppo", "ppo-gae"], 2)
    write_run(tmp_path, "mountaincar", "sppo", 0, 400)  # finished earlier: skipped
    try:
        result = run_suite(
            specs,
            tmp_path,
            executor="ray",
            workers=2,
            run_fn=fake_train,
            clone_fn=fake_clone,
            stack=2,
            seeds_fn=fake_train_seeds,
        )
    finally:
        ray.shutdown()
    stacks = [e["seeds"] for e in _events(tmp_path) if e["kind"] == "stack"]
    assert stacks == [[0, 1]]  # ppo-gae's two seeds in one Ray task
    assert [str(s) for s, _ in result.failed] == ["mountaincar/ppo-gae/seed1"]
    assert len(result.finished) == 2


def test_tail_effect_figures_select_runs_by_critic_kind(tmp_path, capsys):
    """PPO-BCE (a per-step critic) gets its own tail-effect figure beside SPPO's runs."""
    import shutil

    for algo in ("sppo", "ppo-gae", "grpo"):
        write_run(tmp_path, "cartpole", algo, 0, 1280)
    base = tmp_path / "control" / "cartpole"
    shutil.copytree(base / "ppo-gae", base / "ppo-bce")
    config = base / "ppo-bce" / "seed0" / "config.yaml"
    config.write_text(config.read_text().replace("ppo-gae", "ppo-bce"))
    out = tmp_path / "figs"
    args = ["plot", "tail-effect", "--runs-dir", str(tmp_path), "--out", str(out)]
    assert main(args) == 0
    names = sorted(p.name for p in out.glob("tail_effect_*.png"))
    assert names == ["tail_effect_cartpole.png", "tail_effect_cartpole_ppo-bce.png"]
