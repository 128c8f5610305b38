"""The losses of one SPPO mini-batch on an SB3 actor-critic policy (the core's functions)."""

from __future__ import annotations

from dataclasses import dataclass

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from sppo_bench.core import aggregate, bce_value_loss, clipped_policy_loss
from sppo_bench.core.losses import PolicyLossOutput
from sppo_bench.sb3.episodes import EpisodeBatch


@dataclass
class SPPOLosses:
    """policy: the core's ``PolicyLossOutput`` (loss, approx_kl, clip_fraction);
    entropy_loss: -aggregate(H); value_loss: BCE(v(s_0), R). Scalars."""

    policy: PolicyLossOutput
    entropy_loss: th.Tensor
    value_loss: th.Tensor


def minibatch_losses(
    policy: ActorCriticPolicy,
    batch: EpisodeBatch,
    rows: th.Tensor,
    advantages: th.Tensor,
    targets: th.Tensor,
    clip_range: float,
    dual_clip: float | None,
    aggregation: str,
) -> SPPOLosses:
    """The losses of the mini-batch ``rows`` ``[b]`` of ``batch``: the core's clipped
    surrogate and entropy under ``aggregation`` over ``[b, T]``, and the core's BCE of
    v(s_0) ``[b]`` against R ``[b]``."""
    mask = batch.mask[rows]
    real = mask.bool()
    actions = batch.actions[rows][real]
    if isinstance(policy.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    dist = policy.get_distribution(batch.observations[rows][real])
    log_prob_flat = dist.log_prob(actions)
    entropy_flat = dist.entropy()
    if entropy_flat is None:  # no closed form: -log pi as the estimate, as SB3's PPO does
        entropy_flat = -log_prob_flat
    log_probs = th.zeros_like(mask).index_put((real,), log_prob_flat)
    entropy = th.zeros_like(mask).index_put((real,), entropy_flat)
    surrogate = clipped_policy_loss(
        log_probs,
        batch.old_log_probs[rows],
        advantages[rows],
        mask,
        clip_eps=clip_range,
        dual_clip=dual_clip,
        aggregation=aggregation,
    )
    entropy_loss = -aggregate(entropy, mask, aggregation)
    value_logits = policy.predict_values(batch.first_observations[rows]).flatten()
    return SPPOLosses(surrogate, entropy_loss, bce_value_loss(value_logits, targets[rows]))
