"""Runs never publish NaN, never lose rows to a corrupt line, and keep their last finite state.

Unit tests of ``sppo_bench.io`` (metric rows, checkpoints, file modes) and end-to-end runs that
diverge on purpose (``rl.lr=.inf``, ``actor.lr=.inf``) through the real CLI."""

import json
import os

import pytest
import torch

from sppo_bench.cli import main
from sppo_bench.errors import DivergedError, UserError
from sppo_bench.io import MetricsWriter, atomic_torch_save, atomic_write_text

TINY_EXPERT = ["expert.n_envs=1", "expert.n_steps=64", "expert.batch_size=64", "expert.n_epochs=1"]
TINY_EXPERT += ["expert.eval_episodes=2"]
TINY_CLONE = ["clone.episodes=2", "clone.max_rollouts=2", "clone.only_successful=false"]
TINY_CLONE += ["clone.epochs=1", "clone.eval_episodes=2"]
TINY_RL = ["rl.trajectories_per_update=4", "rl.n_eval=2", "rl.eval_every=1"]


def _sets(values):
    return [x for v in values for x in ("--set", v)]


def test_a_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 0}\n{"update": 1, "x": \n{"update": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON row") as err:
        MetricsWriter(path).rows()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="metrics.jsonl:2"):
        MetricsWriter(path).truncate_after("update", 5)  # resume must not drop rows 2..
    assert path.read_text().count("\n") == 3  # untouched


def test_only_a_torn_last_line_is_skipped_and_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"update": 0}\n{"update": 1}\n{"upd')
    writer = MetricsWriter(path)
    assert [r["update"] for r in writer.rows()] == [0, 1]
    writer.truncate_after("update", 1)
    assert path.read_text() == '{"update": 0}\n{"update": 1}\n'


def test_non_utf8_and_nan_rows(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"update": 0}\n\xff\xfe\n')
    with pytest.raises(UserError, match="not UTF-8"):
        MetricsWriter(path).rows()
    path.write_text('{"update": 0, "loss": NaN}\n{"update": 1}\n')
    with pytest.raises(UserError, match="metrics.jsonl:1"):
        MetricsWriter(path).rows()
    clean = MetricsWriter(tmp_path / "clean.jsonl")
    clean.append({"update": 0, "loss": 1.0})
    with pytest.raises(DivergedError, match=r"non-finite loss=nan at \{'update': 1\}"):
        clean.append({"update": 1, "loss": float("nan")})
    assert [json.loads(x) for x in clean.path.read_text().splitlines()] == [
        {"update": 0, "loss": 1.0}
    ]


def test_a_non_finite_checkpoint_is_refused_and_the_last_good_one_kept(tmp_path):
    path = tmp_path / "latest.pt"
    atomic_torch_save(path, {"policy": {"w": torch.ones(3)}, "step": 1})
    with pytest.raises(DivergedError, match=r"policy\.w"):
        atomic_torch_save(path, {"policy": {"w": torch.tensor([1.0, float("inf")])}, "step": 2})
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_torch_save(tmp_path / "b.pt", {"x": torch.zeros(1)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o664
    assert (tmp_path / "b.pt").stat().st_mode & 0o777 == 0o664


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = ["--task", "mountaincar", "--runs-dir", str(root), "--no-progress"]
    assert main(["control", "expert", "--timesteps", "64", *base, *_sets(TINY_EXPERT)]) == 0
    assert main(["control", "clone", *base, *_sets(TINY_CLONE)]) == 0
    return root


def _blow_up_after(monkeypatch, optimizer: type, steps: int) -> None:
    """Numerical blow-up, injected: from the optimiser's ``steps``-th step on, the parameters it
    updates turn to NaN (what an exploding update does)."""
    real_step = optimizer.step
    count = {"n": 0}

    def step(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        count["n"] += 1
        if count["n"] >= steps:
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))
        return out

    monkeypatch.setattr(optimizer, "step", step)


def test_a_diverging_control_run_stops_keeps_its_state_and_is_reported(runs, capsys, monkeypatch):
    args = ["control", "train", "--task", "mountaincar", "--algo", "sppo", "--seed", "0"]
    args += ["--episodes", "12", "--runs-dir", str(runs), "--no-progress"]
    with monkeypatch.context() as patch:
        _blow_up_after(patch, torch.optim.Adam, steps=12)  # in update 2 (8 steps each)
        assert main([*args, *_sets(TINY_RL)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "diverged" in err
    run = runs / "control/mountaincar/sppo/seed0"
    assert not (run / "done").exists()
    assert "non-finite" in (run / "diverged").read_text()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(v is None or not isinstance(v, float) or v == v for r in rows for v in r.values())
    state = torch.load(run / "checkpoints/latest.pt", weights_only=False)
    assert state["state"]["update"] == rows[-1]["update"] >= 1  # the last finite update
    assert all(torch.isfinite(p).all() for p in state["policy"].values())
    good = [*args[:5], "ppo-gae", *args[6:]]  # a finished run for the report to use
    assert main([*good, *_sets(TINY_RL)]) == 0
    capsys.readouterr()
    assert main(["suite", "report", "--runs-dir", str(runs), "--out", str(runs / "report")]) == 0
    out = capsys.readouterr().out
    assert "not in the report: mountaincar/sppo/seed0: diverged: non-finite" in out


def test_a_diverging_llm_run_stops_before_its_checkpoint_is_overwritten(tmp_path, monkeypatch):
    from test_llm_trainer import _config, _train

    with pytest.raises(DivergedError, match="non-finite"):
        _blow_up_after(monkeypatch, torch.optim.AdamW, steps=5)
        _train(_config("sppo", 4), tmp_path / "x")
    assert not (tmp_path / "x" / "done").exists()
    assert "non-finite" in (tmp_path / "x" / "diverged").read_text()
    rows = (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()
    assert all("NaN" not in r and "Infinity" not in r for r in rows)
    state = torch.load(tmp_path / "x" / "checkpoints" / "latest.pt", weights_only=False)
    assert state["step"] == len(rows) >= 1  # the last finite step, saved before the blow-up
    assert all(torch.isfinite(p).all() for p in state["policy"].values())


LOCK_HOLDER = """
import sys, time
from sppo_bench.io import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_run_folder_is_locked_while_written_and_a_dead_holder_is_stale(tmp_path):
    import subprocess
    import sys

    from sppo_bench.io import RunLock

    run = tmp_path / "seed0"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"another process \(PID {holder.pid}\)") as err:
            RunLock(run).__enter__()
        assert "\n" not in str(err.value)
    finally:
        holder.kill()
        holder.wait()
    with RunLock(run):  # the holder was killed: its lock is stale
        assert (run / ".lock").read_text().strip() == str(os.getpid())


def test_two_trainers_on_one_folder_the_second_is_refused(runs, capsys):
    from sppo_bench.io import RunLock

    run = runs / "control/mountaincar/reinforce/seed3"
    args = ["control", "train", "--task", "mountaincar", "--algo", "reinforce", "--seed", "3"]
    args += ["--episodes", "8", "--runs-dir", str(runs), "--no-progress", *_sets(TINY_RL)]
    with RunLock(run):  # another trainer is writing this folder
        assert main(args) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert not (run / "metrics.jsonl").exists()
    assert main(args) == 0
    rows = [json.loads(x)["update"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == sorted(set(rows))  # no duplicated rows


SLEEPY_RUNS = """
import os, time
from pathlib import Path

def clone(task, runs_dir, overrides):
    return Path(runs_dir)

def run(task, algo, seed, runs_dir, episodes, overrides, progress):
    (Path(runs_dir) / f"worker-{seed}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return Path(runs_dir)
"""

SUITE_MAIN = """
import sys
from pathlib import Path
import sleepy
from sppo_bench.orchestration.suite import RunSpec, run_suite
specs = [RunSpec("mountaincar", "sppo", s, 8, ()) for s in range(2)]
run_suite(specs, Path(sys.argv[1]), workers=2, run_fn=sleepy.run, clone_fn=sleepy.clone)
"""


def _sleepy_suite(tmp_path, **popen) -> tuple:
    """Start SUITE_MAIN (two pool workers that sleep in their runs) and wait until both workers
    have written their PIDs; returns (the suite's Popen, worker PIDs)."""
    import subprocess
    import sys
    import time

    (tmp_path / "sleepy.py").write_text(SLEEPY_RUNS)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    runs_dir = tmp_path / "runs"
    suite = subprocess.Popen([sys.executable, "-c", SUITE_MAIN, str(runs_dir)], env=env, **popen)
    deadline = time.monotonic() + 120
    pids: list[int] = []
    while time.monotonic() < deadline and len(pids) < 2:
        pids = [int(p.read_text()) for p in runs_dir.glob("worker-*.pid") if p.read_text()]
        time.sleep(0.2)
    assert len(pids) == 2, "the workers did not start"
    return suite, pids


def test_killing_the_suite_kills_its_pool_workers(tmp_path):
    import signal
    import subprocess
    import time

    suite, pids = _sleepy_suite(tmp_path, stderr=subprocess.DEVNULL)
    suite.send_signal(signal.SIGKILL)
    suite.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if _alive(p)]
        time.sleep(0.1)
    assert not alive, f"workers {alive} outlived the suite"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = open(f"/proc/{pid}/stat").read().split()[2] if os.path.exists(f"/proc/{pid}") else "X"
    return status != "Z"


def _profile(path, episodes: int) -> str:
    sets = ["expert.total_timesteps=64", *TINY_EXPERT, *TINY_CLONE, *TINY_RL]
    path.write_text(
        "algos: [sppo]\nseeds: 1\ntasks:\n"
        f"  mountaincar: {{episodes: {episodes}, eval_every: 1, overrides: {sets}}}\n"
    )
    return str(path)


def test_a_suite_refuses_finished_runs_made_with_other_settings(tmp_path, capsys):
    runs = tmp_path / "runs"
    small = _profile(tmp_path / "small.yaml", 8)
    args = ["suite", "run", "--runs-dir", str(runs), "--workers", "1"]
    assert main([*args, "--profile", small]) == 0
    assert (runs / "control/mountaincar/sppo/seed0/done").is_file()
    capsys.readouterr()
    bigger = _profile(tmp_path / "bigger.yaml", 16)
    for extra in (["--dry-run"], []):
        assert main([*args, "--profile", bigger, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0
        assert "rl.episodes: 8 != 16" in err and "another --runs-dir" in err
    assert main([*args, "--profile", small]) == 0  # the same settings: skipped as done


def test_reports_and_figures_go_beside_their_runs_and_never_mix(tmp_path, monkeypatch, capsys):
    from synthetic_runs import write_run

    monkeypatch.chdir(tmp_path)  # a default under the working folder would land here
    first, second = tmp_path / "first", tmp_path / "second"
    for seed in range(3):
        write_run(first, "mountaincar", "sppo", seed, 400)
    write_run(second, "mountaincar", "sppo", 7, 400)
    assert main(["suite", "report", "--runs-dir", str(first)]) == 0
    assert main(["plot", "curves", "--runs-dir", str(first)]) == 0
    assert (first / "report/summary.md").is_file()
    assert (first / "report/figures/learning_curves.png").is_file()
    assert not (tmp_path / "results").exists()
    shared = tmp_path / "shared-report"
    assert main(["suite", "report", "--runs-dir", str(first), "--out", str(shared)]) == 0
    assert main(["suite", "report", "--runs-dir", str(second), "--out", str(shared)]) == 0
    per_run = sorted(p.name for p in (shared / "runs").rglob("*.csv"))
    assert per_run == ["seed7.csv"]  # no CSV of the first runs left beside the new report
    assert not [p for p in shared.iterdir() if p.name.startswith(".")]  # no temp folders
    demo = tmp_path / "demo"
    write_run(demo / "runs", "mountaincar", "sppo", 0, 400)
    capsys.readouterr()  # --out whose runs/ is the runs dir itself: refused, nothing replaced
    assert main(["suite", "report", "--runs-dir", str(demo / "runs"), "--out", str(demo)]) == 2
    assert "holds runs" in capsys.readouterr().err
    assert (demo / "runs/control/mountaincar/sppo/seed0/metrics.jsonl").is_file()


BIG = "1" + "0" * 5000
TRAIN = ["control", "train", "--task", "mountaincar", "--algo", "sppo", "--no-progress"]
TRAIN += ["--episodes", "8", "--set", "rl.trajectories_per_update=4", "--set", "rl.n_eval=2"]
LLM = ["llm", "train", "--recipe", "llm/tiny-cpu.yaml"]
LLM_EVAL = ["llm", "evaluate", "--recipe", "llm/tiny-cpu.yaml"]
BAD_INPUTS = {
    "seed -1": [*TRAIN, "--seed", "-1"],
    "rl.eval_every=0": [*TRAIN, "--set", "rl.eval_every=0"],
    "rl.lr=-1": [*TRAIN, "--set", "rl.lr=-1"],
    "grpo rl.group_size=0": [*TRAIN, "--algo", "grpo", "--set", "rl.group_size=0"],
    "rl.minibatches=0": [*TRAIN, "--set", "rl.minibatches=0"],
    "rl.checkpoint_every=0": [*TRAIN, "--set", "rl.checkpoint_every=0"],
    "evaluate --n-eval 0": ["control", "evaluate", "--task", "mountaincar", "--n-eval", "0"],
    "evaluate --n-eval -3": ["control", "evaluate", "--task", "mountaincar", "--n-eval", "-3"],
    "eval.k=0": [*LLM_EVAL, "--set", "eval.k=0"],
    "non-UTF-8 profile": ["suite", "run", "--profile", "latin1.yaml", "--dry-run"],
    "non-UTF-8 JSONL": [*LLM, "--set", "data.train=latin1.jsonl"],
    "garbage clone file": [*TRAIN, "--runs-dir", "garbage"],
    "empty LLM checkpoint": [*LLM_EVAL, "--checkpoint", "empty.pt"],
    "YAML as LLM checkpoint": [*LLM_EVAL, "--checkpoint", "latin1.yaml"],
    "truncated LLM checkpoint": [*LLM_EVAL, "--checkpoint", "truncated.pt"],
    "control checkpoint as LLM's": [*LLM_EVAL, "--checkpoint", "other.pt"],
    "train.device=cuda without CUDA": [*LLM, "--set", "train.device=cuda"],
    "--threads 0": [*LLM, "--threads", "0"],
    "300-character path": [*TRAIN, "--runs-dir", "d" * 300],
    "5,000-digit seed": [*TRAIN, "--seed", BIG],
    "5,000-digit override": [*TRAIN, "--set", f"rl.eval_every={BIG}"],
    "--runs-dir is a file": [*TRAIN, "--runs-dir", "afile"],
    "--episodes 0": [*TRAIN, "--episodes", "0"],
    "--episodes -5": [*TRAIN, "--episodes", "-5"],
    "train.steps=-3": [*LLM, "--set", "train.steps=-3"],
    "expert --timesteps 0": ["control", "expert", "--task", "cartpole", "--timesteps", "0"],
    "suite --workers 0": ["suite", "run", "--tasks", "mountaincar", "--workers", "0"],
    "unknown --executor": ["suite", "run", "--tasks", "mountaincar", "--executor", "bogus"],
    "plot --threshold 7": ["plot", "curves", "--threshold", "7"],
    "rollout.temperature=-1": [*LLM, "--set", "rollout.temperature=-1"],
}


@pytest.fixture(scope="module")
def bad_input_base(runs, tmp_path_factory):
    """A working folder: the tiny runs, the LLM recipes, and broken files of every kind."""
    import shutil
    from pathlib import Path

    base = tmp_path_factory.mktemp("base")
    shutil.copytree(runs / "control", base / "runs" / "control")
    shutil.copytree(Path(__file__).resolve().parents[1] / "llm", base / "llm")
    (base / "afile").write_text("")
    (base / "empty.pt").write_bytes(b"")
    (base / "latin1.yaml").write_bytes(b"algos: [sppo]\n\xe9t\xe9: 1\n")
    (base / "latin1.jsonl").write_bytes(b'{"question": "caf\xe9", "answer": "1"}\n')
    good = runs / "control/mountaincar/clone/policy.pt"
    (base / "truncated.pt").write_bytes(good.read_bytes()[:200])
    shutil.copy(good, base / "other.pt")
    garbage = base / "garbage/control/mountaincar"
    shutil.copytree(runs / "control/mountaincar", garbage)
    (garbage / "clone/policy.pt").write_text("garbage\n")
    return base


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(name, bad_input_base, tmp_path, capsys):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(bad_input_base, work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        try:
            code = main(BAD_INPUTS[name])
        except SystemExit as exit_:  # argparse's error path
            code = exit_.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("sppo-bench: error: ") and "\n" not in err, err
    assert len(err) < 400
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before


def test_ctrl_c_stops_the_suite_and_its_workers_within_seconds(tmp_path):
    import signal
    import subprocess
    import time

    suite, pids = _sleepy_suite(
        tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    start = time.monotonic()
    os.killpg(suite.pid, signal.SIGINT)  # what Ctrl-C sends
    suite.wait(timeout=30)
    assert time.monotonic() - start < 5
    deadline = time.monotonic() + 5
    while [p for p in pids if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]
    assert "mountaincar: expert and clone ready" in suite.stdout.read()  # progress lines


def test_kill_9_of_a_real_suite_then_a_rerun_gives_each_row_once(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    profile = _profile(tmp_path / "p.yaml", 96)  # 24 updates: still running when killed
    profile_text = (tmp_path / "p.yaml").read_text().replace("seeds: 1", "seeds: 2")
    (tmp_path / "p.yaml").write_text(profile_text)
    cmd = [sys.executable, "-m", "sppo_bench.cli", "suite", "run", "--profile", profile]
    cmd += ["--runs-dir", str(runs), "--workers", "2"]
    suite = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = [runs / f"control/mountaincar/sppo/seed{s}/metrics.jsonl" for s in (0, 1)]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if all(m.is_file() and m.read_text().count("\n") >= 2 for m in metrics):
            break
        time.sleep(0.2)
    suite.send_signal(signal.SIGKILL)
    suite.wait()
    assert not any((m.parent / "done").exists() for m in metrics)  # killed mid-run
    time.sleep(1.0)  # the orphaned workers, if any, would go on writing now
    sizes = [m.stat().st_size for m in metrics]
    time.sleep(1.0)
    assert [m.stat().st_size for m in metrics] == sizes, "workers outlived the suite"
    assert (
        main(["suite", "run", "--profile", profile, "--runs-dir", str(runs), "--workers", "2"]) == 0
    )
    for m in metrics:
        updates = [json.loads(x)["update"] for x in m.read_text().splitlines()]
        assert updates == list(range(25))  # every update once, in order


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = reader.EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_the_metrics_rows_in_both_tracks(runs, tmp_path):
    from test_llm_trainer import _config, _problems

    from sppo_bench.llm.trainer import LLMTrainer

    board = tmp_path / "tb-control"
    args = ["control", "train", "--task", "mountaincar", "--algo", "ppo-gae", "--seed", "5"]
    args += [
        "--episodes",
        "8",
        "--runs-dir",
        str(runs),
        "--no-progress",
        "--tensorboard",
        str(board),
    ]
    assert main([*args, *_sets(TINY_RL)]) == 0
    rows = [
        json.loads(x)
        for x in (runs / "control/mountaincar/ppo-gae/seed5/metrics.jsonl").read_text().splitlines()
    ]
    scalars = _scalars(board)
    for key in ("eval/success_stochastic", "losses/policy", "charts/SPS"):
        want = [(r["update"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        assert [(s, pytest.approx(v)) for s, v in scalars[key]] == want, key
    prompts, golds = _problems()
    trainer = LLMTrainer(
        _config("sppo", 2),
        tmp_path / "llm",
        prompts=prompts,
        golds=golds,
        tensorboard=tmp_path / "tb",
    )
    try:
        llm_rows = trainer.train(progress=False)
    finally:
        trainer.close()
    llm = _scalars(tmp_path / "tb")
    assert [s for s, _ in llm["reward_mean"]] == [1, 2]
    assert [v for _, v in llm["losses/value"]] == pytest.approx(
        [r["losses/value"] for r in llm_rows]
    )


@pytest.fixture
def read_only_runs(runs, tmp_path):
    """A copy of the tiny runs on a read-only file system (a tmpfs remounted read-only; the
    permission bits of a folder do not stop root, so this is how the case is made here)."""
    import shutil
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(runs / "control", mnt / "runs" / "control")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt / "runs"
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_read_only_runs_folder_is_one_line(read_only_runs, capsys):
    args = ["control", "train", "--task", "mountaincar", "--algo", "sppo", "--episodes", "8"]
    args += ["--seed", "9"]  # a run that does not exist yet
    assert main([*args, "--runs-dir", str(read_only_runs), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sppo-bench: error: Read-only file system") and "\n" not in err
