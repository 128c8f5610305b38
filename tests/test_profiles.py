"""Every shipped profile loads and plans (dry run); the ablation profiles vary what they say."""

import pytest

from sppo_bench.cli import main
from sppo_bench.control.runs import requested_config
from sppo_bench.core import get_estimator
from sppo_bench.orchestration.plan import plan_runs
from sppo_bench.orchestration.profile import available_profiles, load_profile

ABLATIONS = (
    "ablation-lambda",
    "ablation-critic-lr",
    "ablation-clone",
    "ablation-bce",
    "paper-core",
)


def test_the_study_profiles_are_shipped():
    assert set(ABLATIONS) <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_profile_loads_and_plans(name, tmp_path, capsys):
    profile = load_profile(name)
    specs = plan_runs(profile)
    assert specs and len({(s.task, s.label, s.seed) for s in specs}) == len(specs)
    for spec in specs[:: max(1, len(specs) // 25)]:  # every variant's settings resolve
        requested_config(
            spec.task, spec.algo, spec.seed, spec.episodes, spec.overrides, spec.variant
        )
    args = ["suite", "run", "--profile", name, "--runs-dir", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    assert capsys.readouterr().out.count("new ") == len(specs)


def _params(spec) -> dict:
    _, cfg, _ = requested_config(spec.task, spec.algo, 0, None, spec.overrides, spec.variant)
    return cfg


def test_ablation_profiles_vary_their_knob():
    lam = plan_runs(load_profile("ablation-lambda"), tasks=["mountaincar"], seeds=1)
    got = {
        s.label: get_estimator(s.algo).configured_params(_params(s).rl.estimator_params).get("lam")
        for s in lam
    }
    assert got == {
        "sppo": None,
        "ppo-gae@lam0.9": 0.9,
        "ppo-gae@lam0.95": 0.95,
        "ppo-gae@lam0.99": 0.99,
        "ppo-gae@lam1.0": 1.0,
    }
    lr = plan_runs(load_profile("ablation-critic-lr"), tasks=["cartpole"], seeds=1)
    assert sorted({_params(s).rl.critic_lr for s in lr}) == [1e-5, 1e-4, 1e-3]
    assert {s.algo for s in lr} == {"sppo", "ppo-gae"}
    clone = plan_runs(load_profile("ablation-clone"), tasks=["mountaincar"], seeds=1)
    noise = sorted({_params(s).clone.demo_noise for s in clone})
    assert noise[0] == 0.0 and noise[-1] >= 0.9 and len(noise) >= 4
    assert all(s.stage_key[2].startswith("clone@") for s in clone)  # never the plain clone
    assert {s.algo for s in plan_runs(load_profile("ablation-bce"))} == {
        "sppo",
        "ppo-gae",
        "ppo-bce",
    }
    core = load_profile("paper-core")
    budgets = {t: b.episodes for t, b in core.tasks.items()}
    assert budgets == {"cartpole": 40000, "mountaincar": 10000, "pendulum": 20000}
    assert set(core.algos) == {"sppo", "ppo-gae"}
