"""Settings variants: run folders, stage ownership, profiles, the suite, reports, and the
estimator-parameter aliases they are written with."""

import json
from pathlib import Path

import pytest
import yaml
from synthetic_runs import write_run

from sppo_bench.analysis.report import build_report
from sppo_bench.cli import main
from sppo_bench.control.runs import requested_config, run_dir_for
from sppo_bench.control.spec import load_spec
from sppo_bench.control.variants import Variant, split_folder, stage_folder
from sppo_bench.errors import UserError
from sppo_bench.orchestration.plan import plan_runs
from sppo_bench.orchestration.profile import load_profile
from sppo_bench.orchestration.suite import run_suite

LAM = Variant("lam0.95", ("rl.estimator_params.ppo-gae.lam=0.95",), ("ppo-gae",))
NOISY = Variant("noisy", ("clone.demo_noise=0.5",))


def test_a_variant_restricted_to_tasks_runs_only_there(tmp_path):
    text = PROFILE.replace("algos: [ppo-gae]}", "algos: [ppo-gae], tasks: [mountaincar]}").replace(
        "cartpole: {episodes: 128, eval_every: 1}",
        "cartpole: {episodes: 128, eval_every: 1}\n  mountaincar: {episodes: 16, eval_every: 1}",
    )
    runs = {str(s).rsplit("/", 1)[0] for s in plan_runs(_profile(tmp_path, text))}
    assert "mountaincar/ppo-gae@lam0.9" in runs
    assert "cartpole/ppo-gae@lam0.9" not in runs
    assert {"cartpole/sppo@noisy", "mountaincar/sppo@noisy", "cartpole/ppo-gae"} <= runs


def test_run_folders_carry_the_variant_and_plain_runs_keep_their_path(tmp_path):
    assert (
        run_dir_for(tmp_path, "cartpole", "gae", 3) == tmp_path / "control/cartpole/ppo-gae/seed3"
    )
    got = run_dir_for(tmp_path, "cartpole", "gae", 3, LAM)
    assert got == tmp_path / "control/cartpole/ppo-gae@lam0.95/seed3"
    assert split_folder("ppo-gae@lam0.95") == ("ppo-gae", "lam0.95")
    assert split_folder("sppo") == ("sppo", None)
    for bad in ("a/b", "x@y", "", "-lead", "a b"):
        with pytest.raises(UserError, match="is not valid; use") as err:
            Variant(bad)
        assert "\n" not in str(err.value)


def test_stages_are_shared_unless_the_variant_changes_them():
    assert stage_folder("clone", None) == "clone"
    assert (stage_folder("expert", LAM), stage_folder("clone", LAM)) == ("expert", "clone")
    assert (stage_folder("expert", NOISY), stage_folder("clone", NOISY)) == (
        "expert",
        "clone@noisy",
    )
    wide = Variant("wide", ("policy.hidden=[32]",))
    assert stage_folder("clone", wide) == "clone@wide"
    slow = Variant("slow", ("expert.learning_rate=1e-4",))
    assert (stage_folder("expert", slow), stage_folder("clone", slow)) == (
        "expert@slow",
        "clone@slow",
    )


def test_estimator_parameter_aliases_set_one_entry():
    by_name = load_spec("mountaincar", ["rl.estimator_params.ppo-gae.lam=0.95"])
    by_alias = load_spec("mountaincar", ["rl.estimator_params.gae.lam=0.95"])
    assert by_name == by_alias
    assert by_name.rl.estimator_params == {"gae": {"gamma": 1.0, "lam": 0.95}}
    _, _, config = requested_config("mountaincar", "ppo-gae", 0, None, [], LAM)
    assert config["variant"] == "lam0.95"
    assert config["rl"]["estimator_params"] == {"gae": {"gamma": 1.0, "lam": 0.95}}
    _, _, plain = requested_config("mountaincar", "ppo-gae", 0, None, [])
    assert "variant" not in plain  # older runs' stored configs stay valid
    with pytest.raises(UserError, match="unknown algorithm 'gea'; valid: .*gae") as err:
        load_spec("mountaincar", ["rl.estimator_params.gea.lam=0.9"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown parameter 'lamda' .*valid: gamma, lam"):
        requested_config("mountaincar", "ppo-gae", 0, None, ["rl.estimator_params.gae.lamda=1"])


PROFILE = """
description: test
algos: [sppo, ppo-gae]
seeds: 2
base: [sppo, ppo-gae]
variants:
  lam0.9: {set: [rl.estimator_params.gae.lam=0.9], algos: [ppo-gae]}
  noisy: [clone.demo_noise=0.5]
tasks:
  cartpole: {episodes: 128, eval_every: 1}
"""


def _profile(tmp_path, text=PROFILE):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return load_profile(str(path))


def test_profile_variants_cross_with_algos_and_seeds(tmp_path):
    profile = _profile(tmp_path)
    labels = sorted({s.label for s in plan_runs(profile)})
    assert labels == ["ppo-gae", "ppo-gae@lam0.9", "ppo-gae@noisy", "sppo", "sppo@noisy"]
    assert len(plan_runs(profile)) == 5 * 2
    only = plan_runs(profile, variants=["lam0.9"])
    assert {str(s) for s in only} == {
        "cartpole/ppo-gae@lam0.9/seed0",
        "cartpole/ppo-gae@lam0.9/seed1",
    }
    adhoc = plan_runs(profile, algos=["sppo"], variants=["lr"], variant_overrides=["rl.lr=1e-4"])
    assert [s.variant.overrides for s in adhoc] == [("rl.lr=1e-4",)] * 2
    no_base = _profile(tmp_path, PROFILE.replace("base: [sppo, ppo-gae]", "base: false"))
    assert "sppo" not in {s.label for s in plan_runs(no_base)}
    errors = [
        (lambda: plan_runs(profile, variants=["nope"]), "unknown variant 'nope' .*valid: lam0.9"),
        (lambda: plan_runs(profile, variant_overrides=["rl.lr=1"]), "--set needs --variant"),
        (
            lambda: plan_runs(profile, variants=["noisy"], variant_overrides=["rl.lr=1"]),
            "is declared by profile",
        ),
        (lambda: _profile(tmp_path, PROFILE.replace("noisy:", "x@y:")), "variant name 'x@y'"),
        (lambda: _profile(tmp_path, PROFILE.replace("algos: [ppo-gae]}", "als: [a]}")), "'als'"),
        (
            lambda: _profile(tmp_path, PROFILE.replace("algos: [ppo-gae]}", "tasks: [hopper]}")),
            "variant 'lam0.9': task 'hopper' is not one of the profile's tasks",
        ),
    ]
    for call, message in errors:
        with pytest.raises(UserError, match=message) as err:
            call()
        assert "\n" not in str(err.value)


def test_suite_builds_a_variants_own_clone_and_passes_the_variant(tmp_path):
    calls = []

    def clone(task, runs_dir, overrides=(), variant=None):
        calls.append(("clone", variant.name if variant else None))
        folder = Path(runs_dir) / "control" / task / stage_folder("clone", variant)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def train(task, algo, seed, runs_dir, episodes, overrides, progress, variant=None):
        clone_dir = Path(runs_dir) / "control" / task / stage_folder("clone", variant)
        assert clone_dir.is_dir(), "RL run before its clone stage"
        calls.append(("run", algo, variant.name if variant else None))
        return write_run(
            runs_dir,
            task,
            run_dir_for(runs_dir, task, algo, seed, variant).parent.name,
            seed,
            episodes,
        )

    specs = plan_runs(_profile(tmp_path), seeds=1)
    result = run_suite(specs, tmp_path / "runs", workers=1, run_fn=train, clone_fn=clone)
    assert not result.failed and len(result.finished) == 5
    # lam0.9 changes only rl.*: it shares the plain clone; noisy gets clone@noisy
    assert [c[1] for c in calls if c[0] == "clone"] == [None, "noisy"]
    assert ("run", "ppo-gae", "lam0.9") in calls

    report = build_report(tmp_path / "runs", include_unfinished=True)
    assert set(report.summary.label) == {
        "sppo",
        "ppo-gae",
        "ppo-gae@lam0.9",
        "ppo-gae@noisy",
        "sppo@noisy",
    }
    row = report.summary[
        (report.summary.label == "ppo-gae@lam0.9") & (report.summary.task == "cartpole")
    ]
    assert (row.algo.item(), row.variant.item()) == ("ppo-gae", "lam0.9")
    assert "PPO-GAE @ lam0.9" in report.markdown and "SPPO @ noisy" in report.markdown
    assert report.improvement is not None  # plain sppo vs plain ppo-gae
    assert "P(SPPO > PPO-GAE)" in report.markdown
    noisy = build_report(tmp_path / "runs", algos=["sppo@noisy", "ppo-gae@noisy"])
    assert set(noisy.summary.label) == {"sppo@noisy", "ppo-gae@noisy"}
    assert noisy.improvement is not None  # no plain runs: the variant both have
    assert "P(SPPO @ noisy > PPO-GAE @ noisy)" in noisy.markdown


def test_cli_dry_run_lists_variant_runs(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE)
    runs = str(tmp_path / "runs")
    assert main(["suite", "run", "--profile", str(path), "--runs-dir", runs, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cartpole/ppo-gae@lam0.9/seed1" in out and "rl.estimator_params.gae.lam=0.9" in out
    args = ["--variant", "lr", "--set", "rl.critic_lr=1e-4", "--algos", "sppo"]
    assert (
        main(["suite", "run", "--profile", str(path), "--runs-dir", runs, "--dry-run", *args]) == 0
    )
    out = capsys.readouterr().out
    assert out.count("cartpole/sppo@lr/seed") == 2 and "ppo-gae" not in out


def test_a_variant_never_reuses_a_clone_made_with_other_settings(tmp_path):
    """The real stages: a variant that changes clone.* needs its own clone (no fallback to the
    plain one), and a variant folder built with other values is refused."""
    from sppo_bench.control.cloning import clone_expert
    from sppo_bench.control.expert import train_expert
    from sppo_bench.control.trainer import train_run

    tiny = ["expert.n_envs=1", "expert.n_steps=64", "expert.batch_size=64", "expert.n_epochs=1"]
    tiny += ["expert.eval_episodes=2", "clone.episodes=2", "clone.max_rollouts=2"]
    tiny += ["clone.only_successful=false", "clone.epochs=1", "clone.eval_episodes=2"]
    rl = ["rl.trajectories_per_update=4", "rl.n_eval=2", "rl.eval_every=1"]
    train_expert("cartpole", tmp_path, tiny, timesteps=64, progress=False)
    clone_expert("cartpole", tmp_path, tiny, progress=False)
    noisy = Variant("noisy", ("clone.demo_noise=0.5",))
    with pytest.raises(UserError, match="no cloned policy at .*clone@noisy"):
        train_run("cartpole", "sppo", 0, tmp_path, 4, [*tiny, *rl], False, variant=noisy)
    out = clone_expert("cartpole", tmp_path, tiny, progress=False, variant=noisy)
    assert out.name == "clone@noisy"
    assert yaml.safe_load((out / "config.yaml").read_text())["clone"]["demo_noise"] == 0.5
    run = train_run("cartpole", "sppo", 0, tmp_path, 4, [*tiny, *rl], False, variant=noisy)
    assert run == tmp_path / "control/cartpole/sppo@noisy/seed0" and (run / "done").is_file()
    assert json.loads((run / "done").read_text())["variant"] == "noisy"
    assert yaml.safe_load((run / "config.yaml").read_text())["variant"] == "noisy"
    other = Variant("noisy", ("clone.demo_noise=0.9",))
    with pytest.raises(UserError, match="clone@noisy' was built with other clone settings"):
        clone_expert("cartpole", tmp_path, tiny, progress=False, variant=other)
    with pytest.raises(UserError, match="holds a run with other settings"):
        train_run("cartpole", "sppo", 0, tmp_path, 4, [*tiny, *rl], False, variant=other)


def test_runs_and_clones_stored_before_demo_noise_stay_valid(tmp_path):
    """A config.yaml written before clone.demo_noise existed reads as demo_noise = 0."""
    from sppo_bench.control.expert import check_stage_config
    from sppo_bench.control.runs import RUNS_DIR_REMEDY
    from sppo_bench.control.spec import upgrade_stored_spec
    from sppo_bench.rundir import RunDir

    _, spec, config = requested_config("cartpole", "sppo", 0, None, [])
    old = yaml.safe_load(yaml.safe_dump(config))
    del old["clone"]["demo_noise"]
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_path.write_text(yaml.safe_dump(old))
    run.check_config(config, upgrade_stored_spec, remedy=RUNS_DIR_REMEDY)
    # a run made with --set rl.estimator_params.ppo-gae.lam=0.95 before aliases were merged
    _, _, lam = requested_config("cartpole", "ppo-gae", 0, None, [LAM.overrides[0]])
    old["rl"]["estimator_params"] = {"gae": {"gamma": 1.0, "lam": 1.0}, "ppo-gae": {"lam": 0.95}}
    run.config_path.write_text(yaml.safe_dump({**old, "algo": "ppo-gae"}))
    run.check_config(lam, upgrade_stored_spec, remedy=RUNS_DIR_REMEDY)
    (tmp_path / "clone").mkdir()
    (tmp_path / "clone" / "config.yaml").write_text(yaml.safe_dump(old))
    check_stage_config(tmp_path / "clone", spec, ["clone"], ["clone.demo_noise=0.0"])
    noisy = load_spec("cartpole", ["clone.demo_noise=0.5"])
    with pytest.raises(UserError, match="other clone settings"):
        check_stage_config(tmp_path / "clone", noisy, ["clone"], ["clone.demo_noise=0.5"])
