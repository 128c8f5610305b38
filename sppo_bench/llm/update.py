"""This track's forward passes over a ``RolloutBatch``, in micro-batches: recomputed log-probs,
critic predictions, and the policy / critic forward functions that the core's PPO loop
(``sppo_bench.core.ppo``: mini-batches, micro-batches with global counts, clipping) steps on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from sppo_bench.core import CriticStrategy
from sppo_bench.core.ppo import PPOSettings, critic_phase, policy_phase
from sppo_bench.llm.models import response_log_probs
from sppo_bench.llm.rollout import RolloutBatch

AutocastFactory = Callable[[], AbstractContextManager]


def no_autocast() -> AbstractContextManager:
    return nullcontext()


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def chunks(rows: Tensor, size: int) -> list[Tensor]:
    """Split a ``[n]`` row-index tensor into consecutive pieces of at most ``size``."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


@torch.no_grad()
def policy_log_probs(
    model: nn.Module,
    batch: RolloutBatch,
    micro_batch_size: int,
    temperature: float,
    autocast: AutocastFactory = no_autocast,
) -> Tensor:
    """``[B, T]`` log-probs of the batch's responses under ``model`` (0 on padding), on the
    batch's device; each micro-batch is run on the model's device."""
    was_training = model.training
    model.eval()
    device = _device(model)
    out = torch.zeros_like(batch.log_probs)
    for rows in chunks(torch.arange(len(batch)), micro_batch_size):
        sub = batch.select(rows).to(device)
        t = sub.response_ids.shape[1]
        with autocast():
            lp, _ = response_log_probs(model, sub.input_ids(), sub.attention_mask(), t, temperature)
        out[rows.to(out.device), :t] = (lp.float() * sub.response_mask).to(out.device)
    model.train(was_training)
    return out


@torch.no_grad()
def critic_predictions(
    critic: nn.Module,
    strategy: CriticStrategy,
    batch: RolloutBatch,
    micro_batch_size: int,
    autocast: AutocastFactory = no_autocast,
) -> Tensor:
    """Sequence critic: ``[B]`` logits v. Step critic: ``[B, T]`` values (0 on padding); on the
    batch's device, each micro-batch run on the critic's device."""
    critic.eval()
    device = _device(critic)
    shape = strategy.output_shape(len(batch), batch.log_probs.shape[1])
    out = torch.zeros(shape, device=batch.log_probs.device)
    for rows in chunks(torch.arange(len(batch)), micro_batch_size):
        sub = batch.select(rows)
        with autocast():
            output = critic.predict(sub.to(device)).float().to(out.device)
        strategy.put(out, rows.to(out.device), output, sub.response_mask)
    return out


def policy_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    old_log_probs: Tensor,
    advantages: Tensor,
    schedule: Sequence[Tensor],
    settings: PPOSettings,
    temperature: float,
    autocast: AutocastFactory = no_autocast,
) -> dict[str, float]:
    """The core's clipped-surrogate phase (``sppo_bench.core.ppo.policy_phase``) over the
    ``schedule``'s mini-batches of rows, with this track's forward pass."""
    model.train()

    def forward(rows: Tensor) -> tuple[Tensor, Tensor]:
        sub = batch.select(rows)
        with autocast():
            return response_log_probs(
                model,
                sub.input_ids(),
                sub.attention_mask(),
                sub.response_ids.shape[1],
                temperature,
                True,
            )

    mask = batch.response_mask
    params = list(model.parameters())
    return policy_phase(
        forward, params, optimizer, schedule, old_log_probs, advantages, mask, settings
    )


def critic_update(
    critic: nn.Module,
    strategy: CriticStrategy,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    targets: Tensor,
    old_values: Tensor | None,
    schedule: Sequence[Tensor],
    settings: PPOSettings,
    autocast: AutocastFactory = no_autocast,
) -> dict[str, float]:
    """The core's critic phase (``sppo_bench.core.ppo.critic_phase``): BCE(v, R) with
    ``targets`` ``[B]`` (sequence critic), or the clipped squared error against the returns
    ``targets`` ``[B, T]`` with ``old_values`` ``[B, T]`` for the clip (step critic)."""
    critic.train()

    def forward(rows: Tensor) -> Tensor:
        with autocast():
            return critic.predict(batch.select(rows)).float()

    params = list(critic.parameters())
    mask = batch.response_mask
    return critic_phase(
        forward, strategy, params, optimizer, schedule, targets, old_values, mask, settings
    )


def rollout_stats(batch: RolloutBatch, reward, advantages, old_lp) -> dict[str, float]:
    """A step's rollout numbers: reward, response lengths, truncation, mean advantage and the
    engine's log-prob gap to the policy (``[B]`` rewards, ``[B, T]`` the rest)."""
    mask = batch.response_mask.float()
    lengths = mask.sum(dim=1)
    return {
        "reward_mean": float(reward.mean()),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "truncated_fraction": float(batch.truncated.float().mean()),
        "advantage_mean": float((advantages * mask).sum() / mask.sum().clamp_min(1)),
        "rollout_log_prob_gap": float(
            ((batch.log_probs - old_lp).abs() * mask).sum() / mask.sum().clamp_min(1)
        ),
    }
