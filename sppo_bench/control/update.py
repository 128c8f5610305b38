"""One RL update on a batch of whole episodes, for any estimator registered in the core.

The batch is padded ``[B, T]`` with a mask. The reward is binary and terminal and gamma = 1.
Both termination and reaching the horizon H end the *task* (the success test is made there and
nothing follows the terminal reward), so every row is passed to the estimator as
``terminated=True``: a per-step critic bootstraps from 0 after the last step, never from V(s_H).

Per estimator, the trainer only consults ``EstimatorSpec``:

- ``critic_strategy`` (:mod:`sppo_bench.core.critics`): which states the critic reads (s_0 for
  SPPO's sequence critic, every s_t for PPO-GAE's step critic), the advantage input its old
  outputs fill, and its loss (BCE(v, R); 0.5 (V - G_t)^2 with the estimator's returns G_t, no
  clipping here);
- ``needs_groups`` / ``needs_greedy_baseline``: ``group_ids`` / ``baseline_rewards`` are filled
  by the caller's rollout.

The policy loss is the clipped surrogate of :mod:`sppo_bench.core.losses` over all masked steps,
``spec.rl.epochs`` epochs over ``spec.rl.minibatches`` mini-batches of whole episodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sppo_bench.control.collector import EpisodeBatch
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import RLConfig
from sppo_bench.core import (
    AdvantageInput,
    CriticStrategy,
    EstimatorSpec,
    aggregate,
    clipped_policy_loss,
    compute_advantages,
)


@dataclass
class BatchTensors:
    """An ``EpisodeBatch`` as tensors: obs ``[B, T, d]``, actions ``[B, T(, a)]``,
    rewards / mask ``[B, T]``."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @classmethod
    def from_batch(cls, batch: EpisodeBatch, discrete: bool) -> BatchTensors:
        actions = torch.as_tensor(batch.actions)
        return cls(
            torch.as_tensor(batch.obs, dtype=torch.float32),
            actions.long() if discrete else actions.float(),
            torch.as_tensor(batch.rewards, dtype=torch.float32),
            torch.as_tensor(batch.mask, dtype=torch.float32),
        )


def critic_values(
    critic: ValueNet | None, strategy: CriticStrategy | None, obs: Tensor
) -> Tensor | None:
    """The critic's raw output on ``obs [B, T, d]``: ``[B]`` on s_0 or ``[B, T]`` (strategy)."""
    if critic is None or strategy is None:
        return None
    return critic(strategy.states(obs))


def ppo_update(
    policy: Policy,
    critic: ValueNet | None,
    policy_opt: torch.optim.Optimizer,
    critic_opt: torch.optim.Optimizer | None,
    estimator: EstimatorSpec,
    cfg: RLConfig,
    data: BatchTensors,
    group_ids: Tensor | None,
    baseline_rewards: Tensor | None,
    generator: torch.Generator,
) -> dict[str, float | None]:
    """Advantages through the core estimator, then clipped-PPO epochs; returns the loss and
    critic diagnostics (``None`` where there is no critic)."""
    bsz = data.obs.shape[0]
    strategy = estimator.critic_strategy
    with torch.no_grad():
        old_log_probs, _ = policy.log_prob_entropy(data.obs, data.actions)
        old_critic = critic_values(critic, strategy, data.obs)
    inputs = AdvantageInput(
        rewards=data.rewards,
        mask=data.mask,
        terminated=torch.ones(bsz, dtype=torch.bool),
        group_ids=group_ids,
        baseline_rewards=baseline_rewards,
        **(strategy.advantage_inputs(old_critic) if strategy else {}),
    )
    params = estimator.configured_params(cfg.estimator_params)
    out = compute_advantages(estimator.name, inputs, **params)
    advantages = out.advantages.detach()
    stats: dict[str, list[float]] = {k: [] for k in ("policy", "value", "entropy", "kl", "clip")}
    for _ in range(cfg.epochs):
        perm = torch.randperm(bsz, generator=generator)
        for idx in perm.chunk(min(cfg.minibatches, bsz)):
            mask = data.mask[idx]
            log_probs, entropy = policy.log_prob_entropy(data.obs[idx], data.actions[idx])
            pl = clipped_policy_loss(
                log_probs,
                old_log_probs[idx],
                advantages[idx],
                mask,
                clip_eps=cfg.clip_eps,
                dual_clip=cfg.dual_clip,
                aggregation=cfg.aggregation,
            )
            entropy_mean = aggregate(entropy, mask, cfg.aggregation)
            loss = pl.loss - cfg.ent_coef * entropy_mean
            policy_opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            policy_opt.step()
            stats["policy"].append(pl.loss.detach().item())
            stats["entropy"].append(entropy_mean.detach().item())
            stats["kl"].append(float(pl.approx_kl))
            stats["clip"].append(float(pl.clip_fraction))
            if critic is not None and critic_opt is not None and strategy is not None:
                pred = critic_values(critic, strategy, data.obs[idx])
                value_loss = strategy.loss(
                    pred, old_critic[idx], out.value_targets[idx], mask, None, cfg.aggregation
                )
                critic_opt.zero_grad()
                value_loss.backward()
                torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
                critic_opt.step()
                stats["value"].append(value_loss.detach().item())
    result: dict[str, float | None] = {
        "losses/policy": float(np.mean(stats["policy"])),
        "losses/value": float(np.mean(stats["value"])) if stats["value"] else None,
        "losses/entropy": float(np.mean(stats["entropy"])),
        "losses/approx_kl": float(np.mean(stats["kl"])),
        "losses/clipfrac": float(np.mean(stats["clip"])),
        "value/mean": None,
        "value/explained_variance": None,
    }
    if old_critic is not None and strategy is not None:
        result.update(strategy.diagnostics(old_critic, out.value_targets, data.mask))
    return result
