"""Every PPO setting reaches the update, in both tracks: one update with plain SGD equals an
independent reference (``ppo_reference``) at the configured value, and the reference at the
default differs, so a setting that is ignored, replaced by a constant or sign-flipped fails here.
(The learning rates, GAE's gamma and lambda, PPO-BCE and GRPO's std normalisation are pinned in
``test_control_update.py`` and ``test_llm_update_wiring.py``.)"""

import copy
import dataclasses

import pytest
import torch
from ppo_reference import CASES, Knobs, sgd_phase
from test_control_update import _batch, _cfg, _linear_policy, _run_update
from test_llm_update_wiring import _alternating, _grpo_advantage, _trainer

from sppo_bench.control.update import BatchTensors
from sppo_bench.core.ppo import minibatch_schedule, step_generator
from sppo_bench.llm.models import response_log_probs

CONTROL_LR, LLM_LR = 0.5, 1.0


def _differs(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)) > 1e-4


# --------------------------------------------------------------------------- control track
def _shared_batch() -> BatchTensors:
    """Successes of 3 steps and failures of 1 step in one state with one action: the update
    raises that action's probability, so the failures' ratio r > 1 with A < 0, where the dual
    clip acts."""
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
    rewards = torch.zeros(4, 3)
    rewards[0, 2] = rewards[2, 2] = 1.0
    obs = torch.tensor([0.3, -0.7]).expand(4, 3, 2).clone()
    return BatchTensors(obs, torch.ones(4, 3, dtype=torch.long), rewards, mask)


def _data(name: str) -> BatchTensors:
    return _shared_batch() if name == "dual_clip" else _batch()


def _control_reference(knobs: Knobs, data: BatchTensors) -> list[torch.Tensor]:
    policy = _linear_policy()
    w = policy.net[0].weight.detach().double().clone().requires_grad_()
    b = policy.net[0].bias.detach().double().clone().requires_grad_()

    def forward(rows):
        logp = torch.log_softmax(data.obs[rows].double() @ w.T + b, dim=-1)
        lp = logp.gather(-1, data.actions[rows].unsqueeze(-1)).squeeze(-1)
        return lp, -(logp.exp() * logp).sum(-1)

    with torch.no_grad():
        old_lp = forward(torch.arange(len(data.mask)))[0]
    gen = torch.Generator().manual_seed(0)  # the update's shuffle stream in ``_run_update``
    schedule = minibatch_schedule(len(data.mask), knobs.epochs, knobs.mini_batch_size, gen)
    adv, mask = _reinforce(data), data.mask.double()
    sgd_phase([w, b], forward, old_lp, adv, mask, schedule, knobs, CONTROL_LR)
    return [w.detach(), b.detach()]


def _reinforce(data: BatchTensors, baseline: str = "mean") -> torch.Tensor:
    r = data.rewards.double().sum(-1)
    r = r - r.mean() if baseline == "mean" else r
    return r.unsqueeze(-1) * data.mask.double()


@pytest.mark.parametrize("name, value, default", CASES)
def test_control_setting_reaches_the_update(name, value, default):
    knobs = dataclasses.replace(Knobs(), **{name: value})
    policy = _linear_policy()
    cfg = _cfg(**{k: getattr(knobs, k) for k in knobs.__dataclass_fields__})
    _run_update(policy, cfg, "reinforce", _data(name), CONTROL_LR)
    got = [policy.net[0].weight.detach().double(), policy.net[0].bias.detach().double()]
    expected = _control_reference(knobs, _data(name))
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected, strict=True))
    other = _control_reference(dataclasses.replace(knobs, **{name: default}), _data(name))
    assert _differs(expected, other), f"{name}={value} is no test: the default moves alike"


@pytest.mark.parametrize("baseline", ["none", "mean"])
def test_control_reinforce_baseline_reaches_the_estimator(baseline):
    success = [1.0, 1.0, 1.0, 0.0]
    policy = _linear_policy()
    cfg = _cfg(epochs=2, mini_batch_size=2, estimator_params={"reinforce": {"baseline": baseline}})
    _run_update(policy, cfg, "reinforce", _batch(success=success), CONTROL_LR)
    got = [policy.net[0].weight.detach().double(), policy.net[0].bias.detach().double()]
    expected = _control_reference_on(success, baseline)
    assert all(torch.allclose(g, e, atol=1e-5) for g, e in zip(got, expected, strict=True))
    other = "mean" if baseline == "none" else "none"
    assert _differs(expected, _control_reference_on(success, other))


def _control_reference_on(success, baseline):
    knobs = Knobs()
    data, policy = _batch(success=success), _linear_policy()
    w = policy.net[0].weight.detach().double().clone().requires_grad_()
    b = policy.net[0].bias.detach().double().clone().requires_grad_()

    def forward(rows):
        logp = torch.log_softmax(data.obs[rows].double() @ w.T + b, dim=-1)
        return logp.gather(-1, data.actions[rows].unsqueeze(-1)).squeeze(-1), None

    with torch.no_grad():
        old_lp = forward(torch.arange(len(data.mask)))[0]
    schedule = minibatch_schedule(len(data.mask), 2, 2, torch.Generator().manual_seed(0))
    adv = _reinforce(data, baseline)
    sgd_phase([w, b], forward, old_lp, adv, data.mask.double(), schedule, knobs, CONTROL_LR)
    return [w.detach(), b.detach()]


# --------------------------------------------------------------------------- LLM track
LLM_BASE = ("algo.n_samples=4", "algo.epochs=2", "algo.mini_batch_size=1", "algo.dual_clip=null")


def _llm_setting(name: str, value) -> str:
    return f"algo.{name}={'null' if value is None else value}"


def _llm_reference(start, batch, trainer, knobs: Knobs, eps: float = 1e-6) -> list[torch.Tensor]:
    model = copy.deepcopy(start).train()
    params = list(model.parameters())
    mask = batch.response_mask.float()
    temperature = trainer.cfg.rollout.temperature

    def forward(rows):
        sub = batch.select(rows)
        lp, entropy = response_log_probs(
            model,
            sub.input_ids(),
            sub.attention_mask(),
            sub.response_ids.shape[1],
            temperature,
            True,
        )
        width = mask.shape[1]
        pad = (0, width - lp.shape[1])
        return torch.nn.functional.pad(lp, pad), torch.nn.functional.pad(entropy, pad)

    with torch.no_grad():
        old_lp = forward(torch.arange(len(batch)))[0]
    reward = torch.tensor(_alternating(1.0)(batch.texts, None))
    adv = _grpo_advantage(reward, batch.prompt_index, True, eps).unsqueeze(-1) * mask
    n = trainer.cfg.algo.n_samples
    gen = step_generator(trainer.cfg.train.seed, 0, 0)
    schedule = minibatch_schedule(len(batch), knobs.epochs, knobs.mini_batch_size * n, gen)
    sgd_phase(params, forward, old_lp, adv, mask, schedule, knobs, LLM_LR)
    return [p.detach() for p in params]


# The tiny model's responses all run to max_new_tokens, where seq-mean-token-mean equals
# token-mean; the aggregation field is pinned by seq-mean-token-sum (L times token-mean).
LLM_CASES = [c for c in CASES if c[1] != "seq-mean-token-mean"]


@pytest.mark.parametrize("name, value, default", LLM_CASES)
def test_llm_setting_reaches_the_update(name, value, default):
    knobs = dataclasses.replace(Knobs(epochs=2, mini_batch_size=1), **{name: value})
    sets = [_llm_setting(k, getattr(knobs, k)) for k in knobs.__dataclass_fields__]
    trainer, batches = _trainer(
        "grpo", *LLM_BASE, *sets, f"algo.lr={LLM_LR}", reward_fn=_alternating(1.0)
    )
    trainer.actor_opt = torch.optim.SGD(trainer.policy.parameters(), lr=LLM_LR)
    start = copy.deepcopy(trainer.policy)
    trainer.train_step(0)
    got = [p.detach() for p in trainer.policy.parameters()]
    expected = _llm_reference(start, batches[0], trainer, knobs)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)
    other = _llm_reference(
        start, batches[0], trainer, dataclasses.replace(knobs, **{name: default})
    )
    assert _differs(expected, other), f"{name}={value} is no test: the default moves alike"
    trainer.close()


def test_llm_grpo_eps_reaches_the_estimator():
    knobs = Knobs(epochs=2, mini_batch_size=1)
    trainer, batches = _trainer(
        "grpo",
        *LLM_BASE,
        "algo.estimator_params.grpo.eps=0.5",
        f"algo.lr={LLM_LR}",
        reward_fn=_alternating(1.0),
    )
    trainer.actor_opt = torch.optim.SGD(trainer.policy.parameters(), lr=LLM_LR)
    start = copy.deepcopy(trainer.policy)
    trainer.train_step(0)
    got = [p.detach() for p in trainer.policy.parameters()]
    expected = _llm_reference(start, batches[0], trainer, knobs, eps=0.5)
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-5, rtol=1e-4)
    assert _differs(expected, _llm_reference(start, batches[0], trainer, knobs))
    trainer.close()


def _critic_after_one_step(*sets: str) -> list[torch.Tensor]:
    trainer, _ = _trainer("ppo-gae", "critic.warmup_steps=0", *sets, reward_fn=_alternating(1.0))
    trainer.train_step(0)
    params = [p.detach().clone() for p in trainer.critic.parameters()]
    trainer.close()
    return params


def test_llm_value_clip_reaches_the_critic_update():
    """The same step with value_clip 1e-3, 0.5 (the default) and none: three different critics
    (a clip that is ignored, fixed, or of the other sign gives one of the others)."""
    small = _critic_after_one_step("algo.value_clip=0.001", "algo.epochs=2", "algo.critic_lr=0.05")
    again = _critic_after_one_step("algo.value_clip=0.001", "algo.epochs=2", "algo.critic_lr=0.05")
    default = _critic_after_one_step("algo.value_clip=0.5", "algo.epochs=2", "algo.critic_lr=0.05")
    off = _critic_after_one_step("algo.value_clip=null", "algo.epochs=2", "algo.critic_lr=0.05")
    assert not _differs(small, again)
    assert _differs(small, default) and _differs(small, off)


@pytest.mark.parametrize("critic_lr", [0.003, 0.02])
def test_llm_critic_lr_reaches_the_critic_optimiser(critic_lr):
    trainer, _ = _trainer("ppo-gae", f"algo.critic_lr={critic_lr}", "algo.lr=0.001")
    assert [g["lr"] for g in trainer.critic_opt.param_groups] == [critic_lr]
    assert [g["lr"] for g in trainer.actor_opt.param_groups] == [0.001]
    trainer.close()
