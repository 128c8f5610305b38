"""Critic warm-up (``rl.critic_warmup_updates = N``): the first N updates of a run collect fresh
rollouts of the clone and fit the critic alone, with its normal loss, epochs and mini-batches;
the policy and its optimiser state do not move. Those updates count in the episode budget,
evaluations keep their schedule, the rows mark them (``warmup``), a seed stack equals its single
runs, and a run killed during the warm-up resumes where it stopped. N = 0 leaves runs, rows and
stored configs as before the setting existed; critic-free estimators record it as 0."""

import json

import pytest
import torch
import yaml
from test_seed_stack import TINY, _assert_rows_match, _clone, _rows

from sppo_bench.control.runs import requested_config
from sppo_bench.control.spec import load_spec
from sppo_bench.control.trainer import Trainer, train_run, train_seeds
from sppo_bench.core import ESTIMATORS, algorithm_names
from sppo_bench.errors import UserError
from sppo_bench.orchestration.plan import plan_runs
from sppo_bench.orchestration.profile import load_profile

WARM = "rl.critic_warmup_updates"
CRITIC_ALGOS = ("sppo", "ppo-gae", "ppo-bce")  # the registry's estimators with a critic


def _trainer(tmp_path, algo: str, seeds: list[int], warmup: int) -> Trainer:
    _clone(tmp_path, "cartpole")
    spec = load_spec("cartpole", [*TINY, f"{WARM}={warmup}"])
    dirs = [tmp_path / f"{algo}-{warmup}" / f"seed{s}" for s in seeds]
    clone = tmp_path / "control" / "cartpole" / "clone" / "policy.pt"
    return Trainer(spec, algo, seeds, dirs, clone)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _moved(before: dict[str, torch.Tensor], module: torch.nn.Module, seed: int) -> bool:
    """Whether any of seed ``seed``'s slices of ``module``'s (seed-stacked) tensors changed."""
    now = module.state_dict()
    return any(not torch.equal(before[k][seed], now[k][seed]) for k in before)


@pytest.mark.parametrize("seeds", [[0], [0, 1]], ids=["single", "stacked"])
@pytest.mark.parametrize("algo", CRITIC_ALGOS)
def test_warmup_updates_fit_the_critic_alone(tmp_path, algo, seeds):
    trainer = _trainer(tmp_path, algo, seeds, warmup=2)
    policy, critic = _snapshot(trainer.policy), _snapshot(trainer.critic)
    rows = [trainer.step(1), trainer.step(2)]
    assert all(torch.equal(v, trainer.policy.state_dict()[k]) for k, v in policy.items())
    assert not trainer.policy_opt.state_dict()["state"]  # Adam never stepped: no moments
    for k in range(len(seeds)):
        assert _moved(critic, trainer.critic, k)
        for row in (r[k] for r in rows):
            assert row["warmup"] == 1 and row["losses/policy"] is None
            assert row["losses/grad_norm"] is None and row["losses/value"] > 0
    after_warmup = trainer.step(3)
    for k in range(len(seeds)):
        assert _moved(policy, trainer.policy, k)
        assert after_warmup[k]["warmup"] == 0 and after_warmup[k]["losses/policy"] is not None


@pytest.mark.parametrize("algo", CRITIC_ALGOS)
def test_a_warmup_update_is_the_normal_critic_phase(tmp_path, algo):
    """Update 1 sees the same rollouts and shuffles with or without a warm-up, and the critic
    phase comes first: the critic after a warm-up update is the critic after a normal one."""
    warm, plain = _trainer(tmp_path, algo, [0], 1), _trainer(tmp_path, algo, [0], 0)
    warm_row, plain_row = warm.step(1)[0], plain.step(1)[0]
    assert "warmup" not in plain_row  # a run without a warm-up logs as before
    assert warm_row["losses/value"] == pytest.approx(plain_row["losses/value"], rel=1e-6)
    for name, value in plain.critic.state_dict().items():
        assert torch.allclose(warm.critic.state_dict()[name], value, atol=1e-6), name


def test_warmup_episodes_count_in_the_budget(tmp_path):
    _clone(tmp_path, "cartpole")
    run = train_run(
        "cartpole",
        "ppo-gae",
        0,
        tmp_path,
        episodes=16,
        overrides=[*TINY, f"{WARM}=2"],
        progress=False,
    )
    rows = _rows(run)
    assert [r["update"] for r in rows] == [0, 1, 2, 3, 4]  # 16 episodes / 4 per update
    assert [r["episodes"] for r in rows] == [0, 4, 8, 12, 16]
    assert [r.get("warmup") for r in rows] == [None, 1, 1, 0, 0]
    evaluated = [r["update"] for r in rows if "eval/success_stochastic" in r]
    assert evaluated == [0, 2, 4]  # rl.eval_every=2, warm-up or not
    assert json.loads((run / "done").read_text())["episodes"] == 16
    assert yaml.safe_load((run / "config.yaml").read_text())["rl"]["critic_warmup_updates"] == 2


@pytest.mark.parametrize("algo", CRITIC_ALGOS)
def test_k_seed_stack_equals_single_runs_with_warmup(tmp_path, algo):
    kwargs = dict(episodes=12, overrides=[*TINY, f"{WARM}=2"], progress=False)
    for root in ("stacked", "alone"):
        _clone(tmp_path / root, "cartpole")
    stacked = train_seeds("cartpole", algo, [0, 1, 2], tmp_path / "stacked", **kwargs)
    for seed, run in enumerate(stacked):
        alone = train_run("cartpole", algo, seed, tmp_path / "alone", **kwargs)
        rows = _rows(run)
        assert [r.get("warmup") for r in rows] == [None, 1, 1, 0]
        _assert_rows_match(rows, _rows(alone))


def test_a_run_killed_in_the_warmup_resumes_there(tmp_path, monkeypatch):
    """Killed at update 3 of a 3-update warm-up (checkpoint at 2): the resumed run's rows equal
    an uninterrupted run's, the rest of the warm-up included."""
    kwargs = dict(
        episodes=20, overrides=[*TINY, f"{WARM}=3", "rl.checkpoint_every=1"], progress=False
    )
    for root in ("a", "b"):
        _clone(tmp_path / root, "cartpole")
    original = Trainer.step

    def killed(self, update):
        if update == 3:
            raise KeyboardInterrupt
        return original(self, update)

    monkeypatch.setattr(Trainer, "step", killed)
    with pytest.raises(KeyboardInterrupt):
        train_run("cartpole", "ppo-gae", 0, tmp_path / "a", **kwargs)
    monkeypatch.setattr(Trainer, "step", original)
    run = tmp_path / "a/control/cartpole/ppo-gae/seed0"
    assert torch.load(run / "checkpoints/latest.pt", weights_only=False)["step"] == 2
    resumed = _rows(train_run("cartpole", "ppo-gae", 0, tmp_path / "a", **kwargs))
    assert [r.get("warmup") for r in resumed] == [None, 1, 1, 1, 0, 0]
    assert [r["losses/policy"] is None for r in resumed[1:]] == [True] * 3 + [False] * 2
    _assert_rows_match(
        resumed, _rows(train_run("cartpole", "ppo-gae", 0, tmp_path / "b", **kwargs))
    )


@pytest.mark.parametrize("value", ["-1", "2.5", "true", "ten"])
def test_a_bad_warmup_is_a_one_line_error(tmp_path, value):
    _clone(tmp_path, "cartpole")
    with pytest.raises(UserError, match=rf"{WARM}.* an integer") as err:  # the type, or >= 0
        load_spec("cartpole", [f"{WARM}={value}"])
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=WARM):
        train_run("cartpole", "sppo", 0, tmp_path, overrides=[*TINY, f"{WARM}={value}"])
    assert not (tmp_path / "control/cartpole/sppo").exists()


def test_the_critic_estimators_are_the_registrys():
    assert {e.run_name for e in ESTIMATORS.values() if e.critic_strategy} == set(CRITIC_ALGOS)


def test_stored_configs_hold_it_only_where_it_acts():
    """N = 0 is not stored (runs made before the setting existed keep their configs and their
    checkpoints' identity); a critic-free estimator records a profile-wide N as 0, so the same
    variant can name every algorithm of a profile (as the LLM track ignores its
    critic.warmup_steps there)."""
    task, seed = "cartpole", 0
    for algo in algorithm_names():
        plain = requested_config(task, algo, seed, None, [])[2]
        assert "critic_warmup_updates" not in plain["rl"]
        _, spec, warm = requested_config(task, algo, seed, None, [f"{WARM}=5"])
        if algo in CRITIC_ALGOS:
            assert warm["rl"]["critic_warmup_updates"] == spec.rl.critic_warmup_updates == 5
        else:
            assert warm == plain and spec.rl.critic_warmup_updates == 0


def test_an_ad_hoc_warmup_variant_plans_for_every_algorithm_of_a_profile():
    profile, algos = load_profile("paper"), algorithm_names()
    runs = plan_runs(profile, algos=algos, variants=["w5"], variant_overrides=[f"{WARM}=5"])
    assert {r.algo for r in runs} == set(algos)
    for r in runs:
        spec = requested_config(r.task, r.algo, r.seed, r.episodes, r.overrides, r.variant)[1]
        assert spec.rl.critic_warmup_updates == (5 if r.algo in CRITIC_ALGOS else 0)


def test_the_study_profile_declares_the_warmup_arms():
    profile = load_profile("study-hopper-lunarlander")
    runs = plan_runs(profile, seeds=1)
    warm = {(r.task, r.label): r for r in runs if "warm" in r.label}
    assert set(warm) == {
        ("lunarlander", "ppo-gae@lam0.95-warm25"),
        ("lunarlander", "sppo@warm25"),
        ("hopper", "sppo@p0.05-warm25"),
        ("hopper", "ppo-gae@p0.05-lam0.95-warm25"),
    }
    for (_, label), r in warm.items():
        spec = requested_config(r.task, r.algo, r.seed, r.episodes, r.overrides, r.variant)[1]
        assert spec.rl.critic_warmup_updates == 25
        assert spec.clone.demo_noise == (0.05 if "p0.05" in label else 0.0)
        if r.algo == "ppo-gae":
            assert spec.rl.estimator_params["gae"]["lam"] == 0.95
