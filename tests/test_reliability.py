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
    (base / "empty.yaml").write_text("")
    (base / "nomodel.yaml").write_text("train: {steps: 1}\n")
    (base / "stringalgos.yaml").write_text("algos: sppo\nseeds: 1\ntasks: {mountaincar: {}}\n")
    return base


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(name, bad_input_base, tmp_path, capsys):
    _bad_input(BAD_INPUTS[name], bad_input_base, tmp_path, capsys)


def _bad_input(args, bad_input_base, tmp_path, capsys) -> str:
    """``args`` exit 2 with one ``sppo-bench: error:`` line and leave the folder as it was."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(bad_input_base, work)
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse's error path
            code = exit_.code
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("sppo-bench: error: ") and "\n" not in err, err
    assert len(err) < 400
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
    return err


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
        # a terminal's job has Ctrl-C's default disposition; a background job of a
        # non-interactive shell (CI launched with `&`) inherits SIGINT ignored, which Python
        # then keeps ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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


# ================================================================ newcomer and fault audit
# Each case below is one the audit listed; the rules they pin are general (see each test).

GAE = [*TRAIN, "--algo", "ppo-gae"]
AUDIT_BAD_INPUTS = {  # name -> (command, words the one-line error must contain)
    # rule 1: every value a user can set is range-checked where it is read
    "lam=-1": ([*GAE, "--set", "rl.estimator_params.gae.lam=-1"], "ppo-gae.lam=-1"),
    "lam=2": ([*GAE, "--set", "rl.estimator_params.ppo-gae.lam=2"], "ppo-gae.lam=2"),
    "gamma=nan": ([*GAE, "--set", "rl.estimator_params.gae.gamma=nan"], "gamma"),
    "gamma=.nan": ([*GAE, "--set", "rl.estimator_params.gae.gamma=.nan"], "gamma=nan"),
    "gamma=abc": ([*GAE, "--set", "rl.estimator_params.gae.gamma=abc"], "gamma='abc'"),
    "lam=[1,2]": ([*GAE, "--set", "rl.estimator_params.gae.lam=[1,2]"], "[0, 1]"),
    "grpo eps=0": ([*TRAIN, "--set", "rl.estimator_params.grpo.eps=0"], "grpo.eps"),
    "reinforce baseline": (
        [*TRAIN, "--set", "rl.estimator_params.reinforce.baseline=median"],
        "mean, none",
    ),
    "estimator_params.gae=3": ([*GAE, "--set", "rl.estimator_params.gae=3"], "mapping"),
    "rl.n_eval=1e11": ([*TRAIN, "--set", "rl.n_eval=100000000000"], "rl.n_eval"),
    "rl.epochs=1e24": ([*TRAIN, "--set", f"rl.epochs={10**24}"], "rl.epochs"),
    "expert.gamma=2": ([*TRAIN, "--set", "expert.gamma=2"], "expert.gamma"),
    "policy.hidden=[0]": ([*TRAIN, "--set", "policy.hidden=[0]"], "layer widths"),
    "clone.log_std=.inf": ([*TRAIN, "--set", "clone.log_std=.inf"], "finite"),
    "eval.k=1e12": ([*LLM, "--set", f"eval.k={10**12}"], "eval.k"),
    "suite --seeds 1e8 --dry-run": (
        ["suite", "run", "--tasks", "mountaincar", "--seeds", "100000000", "--dry-run"],
        "--seeds",
    ),
    # rule 2: a setting that is stored is a setting that acts
    "--set env_id=...": ([*TRAIN, "--set", "env_id=CartPole-v1"], "env_id"),
    "--set horizon=5": ([*TRAIN, "--set", "horizon=5"], "horizon"),
    # rule 6: failed stages leave nothing behind
    "clone without expert": (["control", "clone", "--task", "cartpole", "--demos", "5"], "expert"),
    "--tensorboard at a file": ([*TRAIN, "--tensorboard", "afile"], "afile"),
    # rule 8: messages that point at the real cause
    "empty recipe": (["llm", "train", "--recipe", "empty.yaml"], "model.policy"),
    "recipe without model:": (["llm", "train", "--recipe", "nomodel.yaml"], "model.policy"),
    "profile algos: sppo": (
        ["suite", "run", "--profile", "stringalgos.yaml", "--dry-run"],
        "algos: [sppo]",
    ),
}


@pytest.mark.parametrize("name", list(AUDIT_BAD_INPUTS))
def test_audit_bad_input_is_one_line_exit_2_and_leaves_nothing(
    name, bad_input_base, tmp_path, capsys
):
    args, words = AUDIT_BAD_INPUTS[name]
    assert words in _bad_input(args, bad_input_base, tmp_path, capsys)


def test_a_failed_clone_does_not_block_a_correct_one(runs, tmp_path, capsys):
    """Rule 6: a clone that fails (no expert yet) stores no settings that would refuse the
    correct clone made once the expert exists."""
    import shutil

    work = tmp_path / "runs"
    args = ["control", "clone", "--task", "mountaincar", "--runs-dir", str(work), "--no-progress"]
    assert main([*args, "--demos", "7"]) == 2
    assert not (work / "control/mountaincar/clone").exists()
    shutil.copytree(runs / "control/mountaincar/expert", work / "control/mountaincar/expert")
    assert main([*args, *_sets(TINY_CLONE)]) == 0
    assert (work / "control/mountaincar/clone/done").is_file()


def test_tensorboard_without_tensorboard_is_one_line_before_any_work(runs, monkeypatch, capsys):
    """Rule 6: --tensorboard without TensorBoard installed fails before the run folder exists."""
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    args = [*TRAIN, "--seed", "11", "--runs-dir", str(runs), "--tensorboard", str(runs / "tb")]
    with pytest.raises(SystemExit) as exit_:  # a command-line error: argparse's exit
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "pip install tensorboard" in err and "\n" not in err
    assert not (runs / "control/mountaincar/sppo/seed11").exists()


def test_config_yaml_stores_the_episodes_that_ran(runs, tmp_path):
    """Rule 2: --episodes 3 at 4 episodes per update trains one update of 4 episodes; the
    stored config says 4, as do the metrics."""
    import shutil

    import yaml

    work = tmp_path / "runs"
    for stage in ("expert", "clone"):
        shutil.copytree(
            runs / f"control/mountaincar/{stage}", work / f"control/mountaincar/{stage}"
        )
    args = ["control", "train", "--task", "mountaincar", "--algo", "sppo", "--episodes", "3"]
    args += ["--runs-dir", str(work), "--no-progress", *_sets(TINY_RL)]
    assert main(args) == 0
    run = work / "control/mountaincar/sppo/seed0"
    config = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert config["rl"]["episodes"] == rows[-1]["episodes"] == 4
    assert main(args) == 0  # a rerun finds the run done, not "built with other settings"


def test_estimator_bounds_sit_beside_their_defaults_in_the_registry():
    """Rule 1: every numeric or string estimator parameter has bounds in its registry entry,
    and the defaults lie inside them."""
    from sppo_bench.core import ESTIMATORS

    for spec in ESTIMATORS.values():
        for key, default in spec.params.items():
            if isinstance(default, bool):
                continue
            assert key in spec.bounds, (spec.name, key)
            assert spec.checked(key, default) == default


# ---------------------------------------------------------------- rule 5: the report validates
def _runs_for_report(tmp_path, n: int = 3):
    from synthetic_runs import write_run

    return [write_run(tmp_path, "mountaincar", "sppo", seed, 400) for seed in range(n)]


def _edit_rows(run, edit) -> None:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    ("case", "edit", "words"),
    [
        ("success 1.29", lambda rows: rows[-1].update({"eval/success_stochastic": 1.29}), "1.29"),
        ("success -0.1", lambda rows: rows[2].update({"eval/success_deterministic": -0.1}), "-0.1"),
        (
            "a value missing",
            lambda rows: rows[-1].pop("eval/success_stochastic"),
            "without eval/success_stochastic",
        ),
        (
            "final evaluation missing",
            lambda rows: [rows[-1].pop(k) for k in list(rows[-1]) if k.startswith("eval/")],
            "the last row",
        ),
        ("update five", lambda rows: rows[3].update({"update": "five"}), "'five'"),
        ("episodes null", lambda rows: rows[3].update({"episodes": None}), "'episodes' is None"),
    ],
)
def test_the_report_leaves_out_and_names_invalid_runs(case, edit, words, tmp_path, capsys):
    """A run with a value outside [0, 1], a missing final evaluation, or a non-numeric field
    is left out of its cell and named (in the output and in summary.md), never averaged."""
    from sppo_bench.analysis.report import build_report

    runs = _runs_for_report(tmp_path)
    _edit_rows(runs[1], edit)
    report = build_report(tmp_path)
    assert list(report.runs["seed"]) == [0, 2]
    assert report.excluded and report.excluded[0][0] == "mountaincar/sppo/seed1"
    assert words in report.excluded[0][1]
    assert "mountaincar/sppo/seed1" in report.markdown
    assert main(["suite", "report", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("not in the report"))
    assert "seed1" in line and words in line


def test_a_run_copied_under_another_seed_or_task_is_left_out(tmp_path):
    import shutil

    from sppo_bench.analysis.report import build_report

    runs = _runs_for_report(tmp_path)
    shutil.copytree(runs[0], runs[0].parent / "seed7")
    shutil.copytree(runs[0], tmp_path / "control/cartpole/sppo/seed0")
    report = build_report(tmp_path)
    assert sorted(report.runs["seed"]) == [0, 1, 2] and set(report.runs["task"]) == {"mountaincar"}
    reasons = dict(report.excluded)
    assert "seed 0" in reasons["mountaincar/sppo/seed7"]
    assert "task 'mountaincar'" in reasons["cartpole/sppo/seed0"]


def test_a_cell_of_mixed_budgets_is_refused_in_one_line(tmp_path, capsys):
    import yaml

    runs = _runs_for_report(tmp_path)
    config = yaml.safe_load((runs[2] / "config.yaml").read_text())
    (runs[2] / "config.yaml").write_text(yaml.safe_dump({**config, "rl": {"episodes": 800}}))
    assert main(["suite", "report", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "mountaincar/sppo mixes runs" in err and "rl" in err and "\n" not in err


def test_a_truncated_values_file_is_one_line(tmp_path, capsys):
    from synthetic_runs import write_run

    run = write_run(tmp_path, "mountaincar", "ppo-gae", 0, 400)
    last = sorted((run / "values").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:100])
    assert main(["plot", "tail-effect", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert last.name in err and "npz" in err and "\n" not in err


# ---------------------------------------------------------------- figures show every value
def test_figure_limits_text_and_reasons():
    import numpy as np

    from sppo_bench.analysis.figures import value_limits
    from sppo_bench.analysis.stats import auroc_text, correlation_text

    low, high = value_limits([np.array([-0.07, 0.5]), np.array([1.3, np.nan, np.inf])])
    assert low < -0.07 and high > 1.3
    assert value_limits([np.array([0.2, 0.4])]) == (-0.05, 1.05)
    assert auroc_text(np.array([0.9]), np.array([])) == "n/a (no failures)"
    assert auroc_text(np.array([]), np.array([0.1])) == "n/a (no successes)"
    assert auroc_text(np.array([0.9]), np.array([0.1])) == "1.00"
    assert "undefined (1 point)" in correlation_text(np.array([0.5]), np.array([0.4]))
    assert "V(s_0) is 0.50 everywhere" in correlation_text(np.full(3, 0.5), np.arange(3.0))
    assert "Spearman 1.00" in correlation_text(np.arange(3.0), np.arange(3.0))


def test_a_tail_effect_panel_shows_values_outside_zero_one(tmp_path, monkeypatch):
    """A PPO-GAE critic's early V of -0.07 and late V of 1.3 lie inside the panels' limits."""
    import numpy as np
    from synthetic_runs import write_run

    from sppo_bench.analysis import figures
    from sppo_bench.analysis.runs import discover_runs

    run = write_run(tmp_path, "mountaincar", "ppo-gae", 0, 400)
    files = sorted((run / "values").iterdir())
    for path, shift in ((files[0], -0.5), (files[-1], 0.5)):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["values"] = arrays["values"] + shift
        np.savez(path, **arrays)
    seen = []
    original = figures.value_limits

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(figures, "value_limits", spy)
    figures.plot_tail_effect(discover_runs(tmp_path), "mountaincar", tmp_path / "t.png")
    assert seen[0][0] < -0.3 and seen[2][1] > 1.3  # early and late PPO-GAE panels


# ---------------------------------------------------------------- rule 7: SB3 SPPO inputs
def _sb3_env(step_info: dict, done: bool = True):
    import gymnasium as gym
    import numpy as np

    class Env(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            return np.zeros(1, np.float32), {}

        def step(self, action):
            return np.zeros(1, np.float32), 0.0, done, False, dict(step_info)

    return Env


@pytest.mark.parametrize("value", ["no", None, 0.5, [1]])
def test_sb3_outcome_must_be_a_bool_or_zero_one(value):
    from sppo_bench.sb3 import SPPO

    model = SPPO("MlpPolicy", _sb3_env({"success": value})(), n_episodes=2)
    with pytest.raises(UserError, match=r'info\["success"\] must be a bool') as err:
        model.learn(4)
    assert "\n" not in str(err.value)


def test_sb3_numeric_and_numpy_outcomes_are_accepted():
    import numpy as np

    from sppo_bench.sb3 import episode_outcome

    for value, expected in ((True, 1.0), (np.bool_(False), 0.0), (1, 1.0), (np.float32(0), 0.0)):
        assert episode_outcome({"success": value}, 0.0, None) == expected


def test_sb3_episodes_that_never_end_cannot_run_forever():
    """The timesteps budget counts unfinished steps: learn(100) returns after about 100 steps,
    with a warning that no update was made."""
    from stable_baselines3.common.env_util import make_vec_env

    from sppo_bench.sb3 import SPPO

    model = SPPO("MlpPolicy", make_vec_env(_sb3_env({}, done=False), n_envs=3), n_episodes=2)
    with pytest.warns(UserWarning, match="no episode ended"):
        model.learn(100)
    assert 100 <= model.num_timesteps < 103


def test_sb3_multi_input_policy_and_missing_tensorboard_are_one_line(monkeypatch):
    import sys

    from sppo_bench.sb3 import SPPO

    env = _sb3_env({"success": True})()
    with pytest.raises(UserError, match="Dict observation spaces are not"):
        SPPO("MultiInputPolicy", env)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match="pip install tensorboard"):
        SPPO("MlpPolicy", env, tensorboard_log="tb/")


def test_sb3_progress_bar_stops_at_its_total(monkeypatch):
    """3 envs and a budget of 100: the last step reaches 102, the bar 100 of 100."""
    from stable_baselines3.common.env_util import make_vec_env

    from sppo_bench.sb3 import SPPO, callbacks

    seen = []
    monkeypatch.setattr(
        callbacks.BoundedProgressBar,
        "_on_training_end",
        lambda self: seen.append((self.pbar.n, self.pbar.total)) or self.pbar.close(),
    )
    env = make_vec_env(_sb3_env({"success": True}), n_envs=3)
    model = SPPO("MlpPolicy", env, n_episodes=6)
    model.learn(100, progress_bar=True)
    assert model.num_timesteps == 102 and seen == [(100, 100)]


def test_clone_state_dict_of_another_task_names_the_input_size(runs):
    """Rule 8: a MountainCar clone (2 observations) on a CartPole policy (4) names the
    observation size, not the hidden sizes."""
    import gymnasium as gym

    import sppo_bench.control  # noqa: F401
    from sppo_bench.sb3 import SPPO, clone_state_dict

    model = SPPO("MlpPolicy", gym.make("sppo_bench/PrecisionCartPole-v0"))
    with pytest.raises(UserError, match="reads 2 observation values .* gives 4"):
        clone_state_dict(runs / "control/mountaincar/clone/policy.pt", model.policy)


# ---------------------------------------------------------------- the user's door
def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: sppo-bench" in capsys.readouterr().err


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from sppo_bench.cli import build_parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    missing = []
    for parser in parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if not text or (action.option_strings and "default" not in text):
                missing.append(f"{parser.prog} {action.option_strings or action.dest}")
    assert not missing, missing


def test_the_readme_sb3_example_runs_after_a_plain_install(tmp_path):
    """The README's SB3 example (budget cut to 1,000 steps) runs without TensorBoard, from a
    folder without the demo's clone, and writes only under runs/ (ignored by git)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text()
    start = text.index("```python\nfrom pathlib import Path")
    code = text[start + len("```python\n") : text.index("```", start + 10)]
    assert "tensorboard" not in code and "50_000" in code
    code = code.replace("50_000", "1_000").replace("n_eval_episodes=32", "n_eval_episodes=2")
    block = (
        "import sys; sys.modules['tensorboard'] = sys.modules['torch.utils.tensorboard'] = None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-c", block + code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"runs"}
    assert (tmp_path / "runs/sppo_mountaincar.zip").is_file()
    ignored = (repo / ".gitignore").read_text().splitlines()
    assert "/runs/" in ignored


def test_the_tiny_recipe_works_from_outside_the_repository(tmp_path, monkeypatch):
    """Recipe data paths resolve against the recipe file's folder, not the working folder."""
    from pathlib import Path

    from sppo_bench.llm.recipe import load_recipe

    recipe = Path(__file__).resolve().parents[1] / "llm/tiny-cpu.yaml"
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(recipe)
    assert Path(cfg.data.train).is_file()
    assert cfg.eval.sets and all(Path(s).is_file() for s in cfg.eval.sets)
    assert load_recipe(recipe, ["data.train=org/hub-id"]).data.train == "org/hub-id"


def test_the_suite_says_whether_stages_are_reused_or_trained(runs, tmp_path):
    """The demo's stage line says what happens: training on a fresh folder, reuse where the
    expert and clone are finished (no hard-coded "cached")."""
    from sppo_bench.orchestration.suite import stage_state

    key = ("mountaincar", "expert", "clone")
    assert stage_state(tmp_path, key).startswith("training the expert")
    assert stage_state(runs, key) == "expert and clone found finished (reused)"


def test_ray_is_in_the_extra_ci_installs():
    """Rule 9: the Ray executor's tests must run in CI, which installs the dev extra."""
    import tomllib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(dep.startswith("ray") for dep in extras["dev"])
    assert '".[dev]"' in (repo / ".ci/run").read_text()
