"""The one run session of both tracks (``sppo_bench.rundir.RunSession``): run folders stored in
the layout of before still resume to the numbers the code of then wrote (``tests/fixtures``);
a checkpoint names what made it and a resume refuses another run's; a resume refuses a metrics
history with a gap or a repeat."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from sppo_bench.control.trainer import train_run
from sppo_bench.errors import UserError
from sppo_bench.rundir import Checkpoint, RunDir, RunIdentity, RunSession

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_run_fixtures import CONTROL_EPISODES, CONTROL_RL  # noqa: E402

RESUMED = json.loads((FIXTURES / "resumed_v1.json").read_text())
VOLATILE = {"wall_time", "charts/SPS", "tokens_per_s"}


def _rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k not in VOLATILE and not k.startswith("time_")}
        for r in rows
    ]


@pytest.fixture()
def control_runs(tmp_path):
    shutil.copytree(FIXTURES / "control_v1", tmp_path / "runs")
    return tmp_path / "runs"


def _train(runs, algo, seed=0):
    torch.set_num_threads(1)
    return train_run("cartpole", algo, seed, runs, CONTROL_EPISODES, CONTROL_RL, False)


def _without_rounding_artifacts(row: dict) -> dict:
    """The stored rows were written before ``explained_variance`` treated returns that are
    constant up to rounding as constant: there it logged ratios like -1.8e17, now None."""
    ev = row.get("value/explained_variance")
    if ev is not None and abs(ev) > 1e6:
        row = {**row, "value/explained_variance": None}
    return row


@pytest.mark.parametrize("algo", ["sppo", "ppo-gae"])
def test_a_stored_control_run_resumes_to_the_rows_of_then(control_runs, algo):
    run = control_runs / "control" / "cartpole" / algo / "seed0"
    old = Checkpoint.from_blob(torch.load(run / "checkpoints/latest.pt", weights_only=False), run)
    assert old.step == 2 and old.identity is None and old.counters["episodes"] == 8
    rows, then = _rows(_train(control_runs, algo) / "metrics.jsonl"), RESUMED[f"control/{algo}"]
    assert len(rows) == len(then)
    for row, old_row in zip(rows, then, strict=True):
        # rows before the checkpoint are the stored history, rows after it are recomputed
        row, old_row = _without_rounding_artifacts(row), _without_rounding_artifacts(old_row)
        # abs 1e-7: approx_kl and clipfrac are means of float32 log-prob differences near 0,
        # where the hand-written and the autograd passes round differently (~1e-9 here)
        assert row == pytest.approx(old_row, rel=1e-6, abs=1e-7)
    new = RunDir(run).read_checkpoint()
    assert new.step == 4 and new.identity.algo == algo and new.identity.task == "cartpole"


def test_a_checkpoint_of_another_run_is_refused_with_one_line(control_runs):
    gae = _train(control_runs, "ppo-gae")
    sppo = control_runs / "control" / "cartpole" / "sppo" / "seed0"
    for run in (gae, sppo):  # both unfinished again, at their last checkpoint
        (run / "done").unlink(missing_ok=True)
    _train(control_runs, "sppo")
    (sppo / "done").unlink()
    shutil.copy(sppo / "checkpoints/latest.pt", control_runs / "sppo0.pt")
    shutil.copy(gae / "checkpoints/latest.pt", sppo / "checkpoints/latest.pt")
    with pytest.raises(
        UserError,
        match=r"was made by cartpole/ppo-gae .*not by this run's "
        r"cartpole/sppo",
    ) as err:
        _train(control_runs, "sppo")
    assert "\n" not in str(err.value)
    seed1 = _train(control_runs, "sppo", seed=1)
    (seed1 / "done").unlink()
    shutil.copy(control_runs / "sppo0.pt", seed1 / "checkpoints/latest.pt")
    with pytest.raises(UserError, match=r"cartpole/sppo \(config \w+\), not by"):  # seed 0's
        _train(control_runs, "sppo", seed=1)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda rows: [], "does not hold rows update 0..2"),
        (lambda rows: rows[:2] + rows[1:], "in order once each"),
        (lambda rows: rows[:1] + rows[2:], "in order once each"),
        (lambda rows: rows[:2], r"\(the checkpoint is at 2\)"),
    ],
    ids=["deleted", "repeated", "gap", "short"],
)
def test_a_resume_refuses_a_history_with_gaps_or_repeats(control_runs, damage, message):
    run = control_runs / "control" / "cartpole" / "sppo" / "seed0"
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(damage(lines)))
    with pytest.raises(UserError, match=message) as err:
        _train(control_runs, "sppo")
    assert "metrics.jsonl" in str(err.value) and not (run / "done").exists()


def test_rows_after_the_checkpoint_are_dropped_not_refused(tmp_path):
    ident = RunIdentity("t", "sppo", None, "h")
    with RunSession(tmp_path, ident, "step", 1) as session:
        for step in (1, 2, 3):
            session.append({"step": step})
        net = {"policy": {"w": torch.ones(1)}, "critic": None}
        session.save(Checkpoint(2, net, {"policy": {}, "critic": None}))
        assert session.resume().step == 2
        assert [r["step"] for r in session.metrics.rows()] == [1, 2]
    other = RunSession(tmp_path, RunIdentity("t", "sppo", "v", "h"), "step", 1)
    with pytest.raises(UserError, match=r"made by t/sppo \(config h\), not by this run's t/sppo@v"):
        other.resume()


def test_a_stored_llm_run_resumes_to_the_rows_of_then_under_todays_names(tmp_path):
    from test_llm_trainer import _config, _train

    from sppo_bench.core.critics import canonical_row

    shutil.copytree(FIXTURES / "llm_v1", tmp_path / "run")
    rows, _, _ = _train(_config("sppo", 2), tmp_path / "run")
    stored = [canonical_row(r) for r in _rows(tmp_path / "run" / "metrics.jsonl")]
    then = [canonical_row(r) for r in RESUMED["llm/sppo"]]
    assert stored[0] == then[0]  # the stored row, read under today's names
    assert "value/brier" in stored[1] and "critic_brier" not in stored[1]
    for key, value in then[1].items():  # the resumed step: every number the code of then wrote
        assert stored[1][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    ckpt = RunDir(tmp_path / "run").read_checkpoint()
    assert ckpt.step == 2 and ckpt.identity.algo == "sppo" and ckpt.rng is not None


def test_an_llm_resume_refuses_another_algorithms_checkpoint(tmp_path):
    from test_llm_trainer import _config, _train

    _train(_config("ppo-gae", 1), tmp_path / "gae")
    _train(_config("sppo", 1), tmp_path / "sppo")
    shutil.copy(tmp_path / "gae/checkpoints/latest.pt", tmp_path / "sppo/checkpoints/latest.pt")
    with pytest.raises(UserError, match=r"made by .*/ppo-gae \(config \w+\), not by .*/sppo"):
        _train(_config("sppo", 2), tmp_path / "sppo")


def test_one_control_train_resolves_the_task_and_the_algorithm_once(control_runs, capsys):
    """A trace of ``control train``: the task name is resolved (``get_task`` on a string) once,
    and the algorithm's name (``get_estimator``) once, apart from the keys of the spec's
    per-estimator parameter table (``canonical_params``); each update calls the resolved
    estimator's function, not ``compute_advantages`` by name."""
    from sppo_bench.cli import main
    from sppo_bench.control.spec import canonical_params
    from sppo_bench.control.tasks import get_task
    from sppo_bench.core import get_estimator

    calls = {"task": 0, "algo": 0}
    others = (canonical_params.__code__,)

    def profile(frame, event, arg):
        if event != "call":
            return
        if frame.f_code is get_task.__code__ and isinstance(frame.f_locals["name"], str):
            calls["task"] += 1
        elif frame.f_code is get_estimator.__code__ and frame.f_back.f_code not in others:
            calls["algo"] += 1

    args = ["control", "train", "--task", "PrecisionCartPole-v0", "--algo", "ppo", "--seed", "5"]
    args += ["--episodes", "8", "--runs-dir", str(control_runs), "--no-progress"]
    args += [x for s in CONTROL_RL for x in ("--set", s)]
    sys.setprofile(profile)
    try:
        assert main(args) == 0
    finally:
        sys.setprofile(None)
    assert calls == {"task": 1, "algo": 1}
    assert (control_runs / "control/cartpole/ppo-gae/seed5/done").is_file()
