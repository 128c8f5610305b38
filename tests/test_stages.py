"""``suite run --stages-from DIR``: a second runs folder takes its expert and clone from DIR (a
finished runs folder built with the real pipeline, tiny settings) instead of training them; its
runs reproduce the first folder's; a folder DIR lacks, one built with other settings, or a
different finished stage already in the runs folder is refused before anything is written. The
shipped MountainCar stages pass the check for the profiles they serve."""

import json
from pathlib import Path

import pytest
from test_control_pipeline import TINY_CLONE, TINY_EXPERT, TINY_RL, VOLATILE

from sppo_bench.cli import main
from sppo_bench.control import cloning, expert
from sppo_bench.control.variants import Variant
from sppo_bench.errors import UserError
from sppo_bench.orchestration.plan import RunSpec, plan_runs
from sppo_bench.orchestration.profile import load_profile
from sppo_bench.orchestration.stages import COPY, SAME, plan_stage_imports
from sppo_bench.orchestration.suite import run_suite

SETTINGS = (*TINY_EXPERT, "expert.total_timesteps=64", *TINY_CLONE, *TINY_RL)
NOISY = Variant("noisy", ("clone.demo_noise=0.5",))  # owns its clone: clone@noisy
SPECS = [
    RunSpec("cartpole", "sppo", 0, 8, SETTINGS),
    RunSpec("cartpole", "sppo", 0, 8, SETTINGS, NOISY),
]
STAGES = ("expert", "clone", "clone@noisy")
SHIPPED_STAGES = Path(__file__).resolve().parents[1] / "results/control/study/stages"
SHIPPED = SHIPPED_STAGES / "mountaincar"
SHIPPED_HOPPER_0 = SHIPPED_STAGES / "hopper-p0.05-expert0"
SHIPPED_LUNAR_0 = SHIPPED_STAGES / "lunarlander"
# (profile, task) of every published cell, and of study-lunarlander-budget: all the profile's
# arms on that task start from the shipped folders of results/control/study/stages/<task>
# (study-hopper-lunarlander's Hopper warm-up arms ran from hopper-p0.05-expert0, tested below)
PUBLISHED_CELLS = [
    *(
        ("standard", task)
        for task in ("cartpole", "mountaincar", "pendulum", "lunarlander", "hopper")
    ),
    *(("ablation-lambda", task) for task in ("cartpole", "mountaincar", "pendulum")),
    ("study-cartpole", "cartpole"),
    ("study-decisive", "mountaincar"),
    ("study-landscape", "mountaincar"),
    ("study-critic-lr", "mountaincar"),
    ("study-paper-budget", "mountaincar"),
    ("study-hopper-lunarlander", "lunarlander"),
    ("study-lunarlander-budget", "lunarlander"),
    ("study-hopper-lunarlander", "hopper"),
]
WARM_UP_ARMS = {"p0.05-warm25", "p0.05-lam0.95-warm25"}


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A runs folder whose expert, clone and clone@noisy the real suite trained."""
    root = tmp_path_factory.mktemp("origin")
    result = run_suite(SPECS, root, workers=1)
    assert not result.failed and len(result.finished) == 2
    return root


def _no_training(monkeypatch):
    """Training an expert or fitting a clone from here on fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a stage was trained")

    monkeypatch.setattr(expert, "_make_model", refuse)
    monkeypatch.setattr(cloning, "fit", refuse)


def test_second_folder_takes_the_stages_and_reproduces_the_runs(origin, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    stray = runs / "control" / "cartpole" / "expert" / "checkpoint.zip"  # an unfinished expert
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"interrupted")
    _no_training(monkeypatch)
    calls = []

    def counting_clone(task, runs_dir, overrides=(), variant=None):
        from sppo_bench.control.pipeline import ensure_clone

        calls.append(variant)
        return ensure_clone(task, runs_dir, overrides, variant=variant)

    result = run_suite(SPECS, runs, workers=1, clone_fn=counting_clone, stages_from=origin)
    assert not result.failed and len(result.finished) == 2 and len(calls) == 2
    for stage in STAGES:  # the exact files, the unfinished expert's replaced
        folder = Path("control") / "cartpole" / stage
        assert _files(runs / folder) == _files(origin / folder)
    assert not [p for p in (runs / "control" / "cartpole").iterdir() if ".new-" in p.name]
    for spec in SPECS:  # the same runs (the same computation: equal up to float rounding)
        rows, first = _rows(spec.run_dir(runs)), _rows(spec.run_dir(origin))
        assert len(rows) == len(first) > 1
        for row, other in zip(rows, first, strict=True):
            assert row == pytest.approx(other, rel=1e-6, abs=1e-9)
    again = plan_stage_imports(SPECS, runs, origin)  # a rerun finds them, the same as DIR's
    assert {item.action for item in again.values()} == {SAME}


def _snapshot(root: Path) -> dict[str, bytes] | None:
    return _files(root) if root.exists() else None


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "has no finished control/cartpole/clone@other (finished cartpole stage "
         "folders there: clone, clone@noisy, expert)"),
        ("mismatch", "was built with other settings than this suite asks for: clone.lr: "
         "0.001 != 0.5"),
        ("expert-seed", "expert.seed: 0 != 3"),
        ("different", "holds another expert than"),
        ("not-a-runs-folder", "is not a runs folder"),
    ],
)  # fmt: skip
def test_refusals_are_one_line_and_leave_nothing_behind(origin, tmp_path, case, message, capsys):
    runs, source = tmp_path / "runs", origin
    specs = SPECS
    if case == "missing":
        specs = [RunSpec("cartpole", "sppo", 0, 8, SETTINGS, Variant("other", NOISY.overrides))]
    elif case == "mismatch":
        specs = [RunSpec("cartpole", "sppo", 0, 8, (*SETTINGS, "clone.lr=0.5"))]
    elif case == "expert-seed":
        specs = [RunSpec("cartpole", "sppo", 0, 8, (*SETTINGS, "expert.seed=3"))]
    elif case == "different":  # a finished expert of its own (other bytes) in the runs folder
        own = runs / "control" / "cartpole" / "expert"
        own.mkdir(parents=True)
        for name, data in _files(origin / "control" / "cartpole" / "expert").items():
            (own / name).write_bytes(data + (b"x" if name == "policy.pt" else b""))
    else:
        source = tmp_path / "empty"
        source.mkdir()
    before = _snapshot(runs)
    with pytest.raises(UserError) as error:
        run_suite(specs, runs, workers=1, stages_from=source)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert _snapshot(runs) == before  # None: the runs folder was not even made


def test_cli_dry_run_names_the_stages_from_dir(origin, tmp_path, capsys):
    profile = tmp_path / "tiny.yaml"
    sets = [s for s in SETTINGS if not s.startswith("rl.eval_every")]
    profile.write_text(
        json.dumps(
            {
                "algos": ["sppo"],
                "seeds": 1,
                "variants": {"noisy": list(NOISY.overrides)},
                "tasks": {"cartpole": {"episodes": 8, "eval_every": 1, "overrides": sets}},
            }
        )
    )
    runs = tmp_path / "runs"
    args = ["suite", "run", "--profile", str(profile), "--runs-dir", str(runs)]
    assert main([*args, "--stages-from", str(origin), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for stage in STAGES:
        assert f"stage   cartpole/{stage}: from {origin} (stored config matches)" in lines
    assert not runs.exists()
    assert main([*args, "--stages-from", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "is not a runs folder" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("profile", ["study-landscape", "study-paper-budget"])
def test_shipped_mountaincar_stages_pass_the_check(profile, tmp_path):
    """The published p = 0.99 cells' expert and clones match these profiles' settings (their
    stored configs predate the seed fields: read as seed 0); nothing is trained or copied."""
    variants = ["p0.99", "p0.99-lam0.99", "p0.99-lam0.95"]
    specs = plan_runs(load_profile(profile), seeds=1, variants=variants)
    imports = plan_stage_imports(specs, tmp_path / "runs", SHIPPED)
    folders = {"expert", *(f"clone@{v}" for v in variants)}
    assert {folder for _, folder in imports} == folders
    assert {item.action for item in imports.values()} == {COPY}
    assert not (tmp_path / "runs").exists()
    for folder in folders:
        summary = json.loads(
            (SHIPPED / "control/mountaincar" / folder / "summary.json").read_text()
        )
        key = "success_rate" if folder == "expert" else "success_stochastic"
        assert summary[key] == (1.0 if folder == "expert" else 0.0)


# study-robustness's shipped stages per task: folder, variants, and by expert seed the expert's
# success and the clone's start (stochastic, deterministic) that the README reports
ROBUST_STAGES = {
    "hopper": (
        "hopper-p0.05-experts",
        ["e1-p0.05", "e1-p0.05-lam0.95", "e3-p0.05", "e3-p0.05-lam0.95"],
        {"e1": (1.0, (0.62, 0.84)), "e3": (1.0, (0.94, 1.0))},
    ),
    "lunarlander": (
        "lunarlander-p0.75-experts",
        ["e1-p0.75", "e1-p0.75-lam0.95", "e2-p0.75", "e2-p0.75-lam0.95"],
        {"e1": (0.76, (0.0, 0.0)), "e2": (0.88, (0.02, 0.21))},
    ),
}


@pytest.mark.parametrize("task", sorted(ROBUST_STAGES))
def test_shipped_robustness_stages_pass_the_check(task, tmp_path):
    """study-robustness's cells from the other expert seeds take every stage folder they need
    from the shipped ones (settings match, nothing trained); the experts and clones start where
    the README says."""
    folder, variants, start = ROBUST_STAGES[task]
    shipped = SHIPPED_STAGES / folder
    specs = plan_runs(load_profile("study-robustness"), [task], seeds=1, variants=variants)
    imports = plan_stage_imports(specs, tmp_path / "runs", shipped)
    folders = {f"{stage}@{v}" for stage in ("expert", "clone") for v in variants}
    assert {folder for _, folder in imports} == folders
    assert {item.action for item in imports.values()} == {COPY}
    assert not (tmp_path / "runs").exists()
    for v in variants:
        stage = shipped / "control" / task
        expert = json.loads((stage / f"expert@{v}" / "summary.json").read_text())
        clone = json.loads((stage / f"clone@{v}" / "summary.json").read_text())
        assert expert["success_rate"] == start[v[:2]][0]
        got = (clone["success_stochastic"], clone["success_deterministic"])
        assert got == pytest.approx(start[v[:2]][1], abs=0.01)


def test_shipped_hopper_expert0_stages_pass_the_check(tmp_path):
    """study-hopper-lunarlander's Hopper p = 0.05 cells (the task files' expert, seed 0, trained
    again) take the expert and their four clone folders from the shipped ones; the expert is the
    weak one the README reports (0.44) and its clones start near zero (0.03 / 0.00)."""
    variants = ["p0.05", "p0.05-warm25", "p0.05-lam0.95", "p0.05-lam0.95-warm25"]
    specs = plan_runs(load_profile("study-hopper-lunarlander"), seeds=1, variants=variants)
    imports = plan_stage_imports(specs, tmp_path / "runs", SHIPPED_HOPPER_0)
    folders = {"expert", *(f"clone@{v}" for v in variants)}
    assert {folder for _, folder in imports} == folders
    assert {item.action for item in imports.values()} == {COPY}
    assert not (tmp_path / "runs").exists()
    stage = SHIPPED_HOPPER_0 / "control/hopper"
    assert json.loads((stage / "expert" / "summary.json").read_text())["success_rate"] == 0.44
    for v in variants:
        clone = json.loads((stage / f"clone@{v}" / "summary.json").read_text())
        got = (clone["success_stochastic"], clone["success_deterministic"])
        assert got == pytest.approx((0.03, 0.0), abs=0.01)


def test_shipped_lunarlander_expert0_stages_pass_the_check(tmp_path):
    """study-hopper-lunarlander's LunarLander cells (the task files' expert, seed 0, trained
    again: it reproduced the published cells' start) take the expert and their clone folders
    from the shipped ones: every LunarLander arm of the profile, base and variants alike; the
    clones start where the README says (task files' 0.79 / 0.47, p = 0.75 0.03 / 0.84)."""
    specs = plan_runs(load_profile("study-hopper-lunarlander"), tasks=["lunarlander"], seeds=1)
    imports = plan_stage_imports(specs, tmp_path / "runs", SHIPPED_LUNAR_0)
    folders = {"expert", "clone", "clone@p0.75", "clone@p0.75-lam0.95"}
    assert {folder for _, folder in imports} == folders
    assert {item.action for item in imports.values()} == {COPY}
    assert not (tmp_path / "runs").exists()
    stage = SHIPPED_LUNAR_0 / "control/lunarlander"
    assert json.loads((stage / "expert" / "summary.json").read_text())["success_rate"] == 0.97
    start = {
        "clone": (0.79, 0.47),
        "clone@p0.75": (0.03, 0.84),
        "clone@p0.75-lam0.95": (0.03, 0.84),
    }
    for folder, want in start.items():
        clone = json.loads((stage / folder / "summary.json").read_text())
        got = (clone["success_stochastic"], clone["success_deterministic"])
        assert got == pytest.approx(want, abs=0.01)


@pytest.mark.parametrize(("profile", "task"), PUBLISHED_CELLS)
def test_every_published_cell_takes_all_its_stages_from_the_shipped_ones(profile, task, tmp_path):
    """Every arm of the profile on the task finds its expert and clone folders shipped, built
    with the profile's settings (else plan_stage_imports raises naming the folder); nothing is
    trained or copied by planning."""
    specs = plan_runs(load_profile(profile), tasks=[task], seeds=1)
    if task == "hopper":
        specs = [s for s in specs if s.variant is None or s.variant.name not in WARM_UP_ARMS]
    imports = plan_stage_imports(specs, tmp_path / "runs", SHIPPED_STAGES / task)
    assert {folder for _, folder in imports} == {f for s in specs for f in s.stage_key[1:]}
    assert {item.action for item in imports.values()} == {COPY}
    assert not (tmp_path / "runs").exists()
