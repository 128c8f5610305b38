"""``expert.seed`` and ``clone.seed``: the spec fields reach the stages (through the suite's
``ensure_clone`` too), a variant setting them gets its own stage folders, the same seed gives
the same stage and another seed another; stored configs from before the fields pass the check."""

import json

import pytest
import torch
import yaml
from test_control_pipeline import TINY_CLONE, TINY_EXPERT

from sppo_bench.cli import main
from sppo_bench.control.cloning import clone_expert
from sppo_bench.control.expert import check_stage_config, stage_config_difference, train_expert
from sppo_bench.control.pipeline import ensure_clone
from sppo_bench.control.spec import load_spec
from sppo_bench.control.variants import Variant, stage_folder
from sppo_bench.errors import UserError
from sppo_bench.io import read_torch_file

TINY = [*TINY_EXPERT, "expert.total_timesteps=64", *TINY_CLONE]


def _weights(folder) -> dict[str, torch.Tensor]:
    """The stage's network weights: the SB3 expert module's or the clone's state dict."""
    blob = read_torch_file(folder / "policy.pt", "policy")
    return blob["policy"].state_dict() if "policy" in blob else blob["state_dict"]


def _same(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _stored(folder) -> dict:
    return yaml.safe_load((folder / "config.yaml").read_text())


@pytest.fixture(scope="module")
def seed0(tmp_path_factory):
    """The plain stages (seed 0 each), built by the suite's ``ensure_clone``."""
    root = tmp_path_factory.mktemp("seed0")
    ensure_clone("cartpole", root, TINY)
    return root / "control" / "cartpole"


def test_a_variant_setting_a_seed_owns_its_stages():
    expert_seed, clone_seed = Variant("e1", ("expert.seed=1",)), Variant("c1", ("clone.seed=1",))
    assert [stage_folder(s, expert_seed) for s in ("expert", "clone")] == ["expert@e1", "clone@e1"]
    assert [stage_folder(s, clone_seed) for s in ("expert", "clone")] == ["expert", "clone@c1"]


def test_expert_seed_reaches_the_expert_through_the_suite(seed0, tmp_path):
    variant = Variant("e1", ("expert.seed=1",))
    ensure_clone("cartpole", tmp_path / "a", TINY, variant=variant)
    ours = tmp_path / "a" / "control" / "cartpole"
    assert _stored(ours / "expert@e1")["expert"]["seed"] == 1
    assert not _same(ours / "expert@e1", seed0 / "expert")  # another seed, another expert
    direct = train_expert("cartpole", tmp_path / "b", TINY, seed=1, progress=False)
    assert _same(ours / "expert@e1", direct)  # the same seed, the same expert
    again = train_expert("cartpole", tmp_path / "c", TINY, progress=False)
    assert _same(again, seed0 / "expert")


def test_clone_seed_reaches_the_clone(seed0, tmp_path):
    runs = tmp_path / "runs"
    (runs / "control").mkdir(parents=True)
    (runs / "control" / "cartpole").symlink_to(seed0)  # the seed-0 expert, not retrained
    one = clone_expert(
        "cartpole", runs, TINY, progress=False, variant=Variant("c1", ("clone.seed=1",))
    )
    assert one.name == "clone@c1" and _stored(one)["clone"]["seed"] == 1
    assert not _same(one, seed0 / "clone")
    zero = clone_expert(
        "cartpole", runs, TINY, progress=False, variant=Variant("c0", ("clone.seed=0",))
    )
    assert _same(zero, seed0 / "clone")


def test_cli_seed_and_set_seed_are_one_field(tmp_path, capsys):
    sets = [x for s in TINY_EXPERT for x in ("--set", s)]
    base = ["control", "expert", "--task", "cartpole", "--timesteps", "64", "--no-progress", *sets]
    assert main([*base, "--runs-dir", str(tmp_path / "a"), "--set", "expert.seed=2"]) == 0
    assert main([*base, "--runs-dir", str(tmp_path / "b"), "--seed", "2"]) == 0
    folders = [tmp_path / r / "control" / "cartpole" / "expert" for r in ("a", "b")]
    assert [_stored(f)["expert"]["seed"] for f in folders] == [2, 2]
    assert _same(*folders)


def test_stored_configs_without_the_seed_fields_still_pass(seed0, tmp_path):
    old = tmp_path / "clone"
    old.mkdir()
    config = _stored(seed0 / "clone")
    del config["expert"]["seed"], config["clone"]["seed"]  # as written before the fields
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    asked = [*TINY, "expert.seed=0", "clone.seed=0"]
    spec = load_spec("cartpole", asked)
    assert stage_config_difference(old, spec, ["expert", "policy", "clone"]) is None
    check_stage_config(old, spec, ["expert", "policy", "clone"], asked)
    other = load_spec("cartpole", [*TINY, "clone.seed=4"])
    assert stage_config_difference(old, other, ["clone"]) == "clone.seed: 0 != 4"
    with pytest.raises(UserError, match="built with other clone settings"):
        check_stage_config(old, other, ["expert", "policy", "clone"], ["clone.seed=4"])


def test_seed_bounds_are_one_line_errors():
    with pytest.raises(UserError, match="expert.seed"):
        load_spec("cartpole", ["expert.seed=-1"])


def test_robustness_profile_repeats_the_weak_clone_cells_over_expert_seeds():
    """study-robustness: study-hopper-lunarlander's weak-clone settings and budgets, expert seeds
    1 and 2 (Hopper also 3, its seed 2 expert failing), arms SPPO / PPO-GAE lambda 0.95 /
    lambda 1, 10 seeds, each expert seed its own stage folders."""
    from sppo_bench.control.runs import requested_config
    from sppo_bench.core import get_estimator
    from sppo_bench.orchestration.plan import plan_runs
    from sppo_bench.orchestration.profile import load_profile

    robust, existing = load_profile("study-robustness"), load_profile("study-hopper-lunarlander")
    assert robust.tasks == existing.tasks and robust.seeds == 10
    noise = {"hopper": 0.05, "lunarlander": 0.75}
    cells = {}
    for spec in plan_runs(robust, seeds=1):
        _, cfg, _ = requested_config(spec.task, spec.algo, 0, None, spec.overrides, spec.variant)
        assert cfg.clone.demo_noise == noise[spec.task]
        assert spec.stage_key[1:] == (f"expert@{spec.variant.name}", f"clone@{spec.variant.name}")
        lam = get_estimator(spec.algo).configured_params(cfg.rl.estimator_params).get("lam")
        cells.setdefault((spec.task, cfg.expert.seed), set()).add((spec.algo, lam))
    arms = {("sppo", None), ("ppo-gae", 0.95), ("ppo-gae", 1.0)}
    expected = {("hopper", s): arms for s in (1, 2, 3)} | {("lunarlander", s): arms for s in (1, 2)}
    assert cells == expected


def test_a_resumed_expert_says_where_its_last_process_started(seed0, tmp_path):
    """summary.json's resumed_from_timesteps: 0 for an expert trained in one go; the checkpoint's
    timestep for one resumed from it (here: a finished training whose last files were lost)."""
    fresh = json.loads((seed0 / "expert" / "summary.json").read_text())
    assert fresh["resumed_from_timesteps"] == 0 and fresh["timesteps"] == 64
    out = train_expert("cartpole", tmp_path, TINY, progress=False)
    for name in ("done", "summary.json", "policy.pt"):
        (out / name).unlink()
    again = train_expert("cartpole", tmp_path, TINY, progress=False)
    assert json.loads((again / "summary.json").read_text())["resumed_from_timesteps"] == 64
    assert _same(again, seed0 / "expert")  # nothing left to train: the same weights
