"""The LLM trainer's wiring, pinned on one real step of the tiny random-weight model.

The engine is the real HF engine; the test keeps the batch it generated. At the first step the
PPO ratio is 1, so with plain SGD the policy moves by exactly -lr * grad of the policy-gradient
loss -sum_{b,t} A_b log pi(y_bt) / N_tokens, whose gradient the test takes on a copy of the
starting policy. Advantages and critic values are recomputed here from their closed forms.
"""

import copy

import pytest
import torch
from tiny_llm import tiny_config

from sppo_bench.llm.data import build_prompt
from sppo_bench.llm.models import response_log_probs
from sppo_bench.llm.tiny import tiny_tokenizer
from sppo_bench.llm.trainer import LLMTrainer


def _trainer(algo: str, *extra: str, reward_fn=None) -> tuple[LLMTrainer, list]:
    cfg = tiny_config(
        algo,
        "rollout.max_new_tokens=6",
        "train.batch_size=2",
        "algo.mini_batch_size=2",
        "train.micro_batch_size=3",
        "algo.max_grad_norm=1e9",
        "algo.critic_lr=1e-3",
        *extra,
    )
    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    prompts = [build_prompt(tok, "1+2=?"), build_prompt(tok, "2+2=?")]
    trainer = LLMTrainer(cfg, None, reward_fn, prompts=prompts, golds=["3", "4"])
    batches = []
    generate = trainer.engine.generate
    trainer.engine.generate = lambda *a, **k: batches.append(generate(*a, **k)) or batches[-1]
    return trainer, batches


def _alternating(first: float):
    """Rewards first, 1 - first, first, ... by row: every group has successes and failures."""
    return lambda texts, golds: [first if i % 2 == 0 else 1.0 - first for i in range(len(texts))]


def _grpo_advantage(
    reward: torch.Tensor, groups: torch.Tensor, normalize_std: bool, eps: float = 1e-6
):
    out = torch.zeros_like(reward)
    for g in groups.unique():
        r = reward[groups == g]
        a = r - r.mean()
        out[groups == g] = a / (r.std(unbiased=False) + eps) if normalize_std else a
    return out


@pytest.mark.parametrize("normalize_std", [True, False])
@pytest.mark.parametrize("first, lr", [(1.0, 0.05), (0.0, 0.05), (1.0, 0.2)])
def test_sgd_policy_step_is_the_policy_gradient(first, lr, normalize_std):
    trainer, batches = _trainer(
        "grpo",
        "algo.n_samples=4",
        f"algo.estimator_params.grpo.normalize_std={normalize_std}",
        f"algo.lr={lr}",
        reward_fn=_alternating(first),
    )
    trainer.actor_opt = torch.optim.SGD(trainer.policy.parameters(), lr=lr)
    start = copy.deepcopy(trainer.policy)
    trainer.train_step(0)
    batch = batches[0]
    reward = torch.tensor(_alternating(first)(batch.texts, None))
    adv = _grpo_advantage(reward, batch.prompt_index, normalize_std)
    mask = batch.response_mask.float()
    start.train()
    lp, _ = response_log_probs(
        start,
        batch.input_ids(),
        batch.attention_mask(),
        mask.shape[1],
        trainer.cfg.rollout.temperature,
    )
    (-(adv.unsqueeze(-1) * lp * mask).sum() / mask.sum()).backward()
    moved = 0.0
    for new, old in zip(trainer.policy.parameters(), start.parameters(), strict=True):
        expected = old.detach() - lr * old.grad
        assert torch.allclose(new.detach(), expected, atol=1e-6, rtol=1e-4)
        moved = max(moved, float((new.detach() - old.detach()).abs().max()))
    assert moved > 1e-4
    trainer.close()


def _gae(reward, values, mask, gamma, lam):
    """Explicit sums: A_t = sum_l (gamma lam)^l delta_{t+l}, reward R on the last token."""
    out = torch.zeros_like(values)
    for b in range(values.shape[0]):
        n = int(mask[b].sum())
        v = values[b, :n].tolist() + [0.0]
        r = [0.0] * (n - 1) + [float(reward[b])]
        delta = [r[t] + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            out[b, t] = sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, n))
    return out


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.5), (1.0, 1.0)])
def test_gae_parameters_reach_the_estimator_and_the_critic_learns(gamma, lam):
    trainer, batches = _trainer(
        "ppo-gae",
        f"algo.estimator_params.ppo-gae.gamma={gamma}",
        f"algo.lam={lam}",  # the old key still reads into estimator_params
        reward_fn=_alternating(1.0),
    )
    critic = copy.deepcopy(trainer.critic).eval()
    with torch.no_grad():  # a non-zero head, so that V enters the GAE sums
        trainer.critic.head.bias.fill_(0.3)
        critic.head.bias.fill_(0.3)
    row = trainer.train_step(0)
    batch = batches[0]
    mask = batch.response_mask.float()
    with torch.no_grad():
        values = critic(batch.input_ids(), batch.attention_mask(), mask.shape[1]) * mask
    reward = torch.tensor(_alternating(1.0)(batch.texts, None))
    adv = _gae(reward, values, mask, gamma, lam)
    assert row["advantage_mean"] == pytest.approx(float((adv * mask).sum() / mask.sum()), abs=1e-5)
    other = _gae(reward, values, mask, 0.5, 0.2)
    assert abs(float(((adv - other) * mask).sum() / mask.sum())) > 1e-3

    returns = (adv + values) * mask

    def loss(model) -> float:
        with torch.no_grad():
            v = model.eval()(batch.input_ids(), batch.attention_mask(), mask.shape[1])
            return float(0.5 * (((v - returns) ** 2) * mask).sum() / mask.sum())

    assert loss(trainer.critic) < loss(critic)
    trainer.close()


def test_sequence_critic_step_lowers_its_bce():
    trainer, batches = _trainer("sppo", reward_fn=_alternating(1.0))
    critic = copy.deepcopy(trainer.critic)
    trainer.train_step(0)
    batch = batches[0]
    reward = torch.tensor(_alternating(1.0)(batch.texts, None))

    def bce(model) -> float:
        with torch.no_grad():
            v = model.eval()(batch.prompt_ids, batch.prompt_mask)
            return float(torch.nn.functional.binary_cross_entropy_with_logits(v, reward))

    assert bce(trainer.critic) < bce(critic)
    trainer.close()


def test_token_bce_critic_step_lowers_its_bce():
    """PPO-BCE in the LLM trainer: the token critic's logits v_t move towards the outcome R on
    every response token (token-mean BCE), through the same EstimatorSpec wiring."""
    trainer, batches = _trainer("ppo-bce", reward_fn=_alternating(1.0))
    critic = copy.deepcopy(trainer.critic)
    row = trainer.train_step(0)
    batch = batches[0]
    mask = batch.response_mask.float()
    reward = torch.tensor(_alternating(1.0)(batch.texts, None)).float()
    targets = reward.unsqueeze(-1).expand_as(mask)

    def bce(model) -> float:
        with torch.no_grad():
            v = model.eval()(batch.input_ids(), batch.attention_mask(), mask.shape[1])
            per_token = torch.nn.functional.binary_cross_entropy_with_logits(
                v, targets, reduction="none"
            )
            return float((per_token * mask).sum() / mask.sum())

    assert row["losses/value"] == pytest.approx(bce(critic), rel=1e-4)
    assert bce(trainer.critic) < bce(critic)
    trainer.close()
