"""The PPO optimisation loop of both tracks: epochs x shuffled mini-batches x micro-batches.

A track supplies only its forward passes, as functions of a ``[b]`` tensor of batch-row indices:

- policy: ``rows -> (log_probs, entropy)``, both ``[b, t]`` for the first ``t`` steps (tokens);
- critic: ``rows -> output``, ``[b]`` (sequence critic) or ``[b, t]`` (step critic).

``minibatch_schedule`` draws, per epoch, one permutation of the batch's rows and cuts it into
mini-batches; the critic and the policy phase walk the same schedule. A mini-batch is one
optimiser step; it is split into micro-batches whose gradients accumulate, and every loss uses the
mini-batch's global token / sequence counts, so accumulation does not change the step. Gradients
are clipped to ``max_grad_norm`` before each step. Metrics (``POLICY_METRICS``,
``CRITIC_METRICS``) are means over the optimiser steps of each mini-batch's value; approx_kl and
clipfrac are token means within a mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from sppo_bench.config import (
    ABOVE_ONE,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    Bound,
    at_least,
    optional,
)
from sppo_bench.core.critics import CriticStrategy
from sppo_bench.core.losses import aggregate, clipped_policy_loss

LOSS_METRICS = (
    "losses/policy",
    "losses/value",
    "losses/entropy",
    "losses/approx_kl",
    "losses/clipfrac",
)
GRAD_METRICS = ("losses/grad_norm", "losses/value_grad_norm")
POLICY_METRICS = (LOSS_METRICS[0], *LOSS_METRICS[2:], GRAD_METRICS[0])
CRITIC_METRICS = (LOSS_METRICS[1], GRAD_METRICS[1])

PolicyForward = Callable[[Tensor], tuple[Tensor, Tensor]]
CriticForward = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class PPOSettings:
    """The knobs of one optimisation phase (see the module doc)."""

    clip_eps: float = 0.2
    dual_clip: float | None = 3.0
    entropy_coef: float = 0.0
    aggregation: str = "token-mean"
    max_grad_norm: float = 1.0
    value_clip: float | None = None
    micro_batch_rows: int | None = None  # None: one micro-batch per mini-batch


@dataclass
class PPOConfig:
    """The PPO settings both tracks share, under the same names (``rl.*`` of a control task spec,
    ``algo.*`` of an LLM recipe).

    lr, critic_lr: learning rates of the policy's and the critic's optimiser. clip_eps: the ratio
    clip; dual_clip: c > 1 bounds the loss of A < 0 at -A c (None = off). entropy_coef: weight of
    the entropy bonus. max_grad_norm: gradient-norm clip of either network. epochs: passes over a
    batch. mini_batch_size: batch units per optimiser step, in the unit of the track's batch
    (control: episodes; LLM: prompts, each with its N samples). aggregation: ``core.losses``.
    """

    lr: float = 3e-4
    critic_lr: float | None = 1e-3
    clip_eps: float = 0.2
    dual_clip: float | None = 3.0
    entropy_coef: float = 0.0
    max_grad_norm: float = 1.0
    epochs: int = 4
    mini_batch_size: int = 4
    aggregation: str = "token-mean"

    def settings(
        self, value_clip: float | None = None, micro_batch_rows: int | None = None
    ) -> PPOSettings:
        """The loop's settings (``policy_phase`` / ``critic_phase``)."""
        return PPOSettings(
            clip_eps=self.clip_eps,
            dual_clip=self.dual_clip,
            entropy_coef=self.entropy_coef,
            aggregation=self.aggregation,
            max_grad_norm=self.max_grad_norm,
            value_clip=value_clip,
            micro_batch_rows=micro_batch_rows,
        )


def ppo_bounds(prefix: str) -> dict[str, Bound]:
    """Valid ranges of the ``PPOConfig`` fields, keyed ``<prefix>.<field>`` (``rl`` in a task
    spec, ``algo`` in an LLM recipe), for ``sppo_bench.config.check_bounds``."""
    bounds: dict[str, Bound] = {
        "lr": LEARNING_RATE,
        "critic_lr": optional(LEARNING_RATE),
        "clip_eps": POSITIVE,
        "dual_clip": optional(ABOVE_ONE),
        "entropy_coef": NON_NEGATIVE,
        "max_grad_norm": POSITIVE,
        "epochs": at_least(1),
        "mini_batch_size": at_least(1),
    }
    return {f"{prefix}.{k}": b for k, b in bounds.items()}


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, step, stream)``: the same numbers on a resume."""
    key = np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key))


def minibatch_schedule(
    n_rows: int, epochs: int, rows_per_minibatch: int, generator: torch.Generator
) -> list[Tensor]:
    """``epochs`` times: a fresh permutation of ``range(n_rows)`` cut into consecutive pieces of
    ``rows_per_minibatch`` rows (the last may be shorter). Returns the ``[m]`` row indices of
    every optimiser step, in order."""
    steps: list[Tensor] = []
    for _ in range(epochs):
        steps += list(torch.randperm(n_rows, generator=generator).split(rows_per_minibatch))
    return steps


def _micro_batches(mini: Tensor, size: int | None) -> Sequence[Tensor]:
    return [mini] if size is None else mini.split(size)


def _counts(mask: Tensor) -> tuple[float, float]:
    """(tokens, non-empty sequences) of a ``[b, T]`` mask."""
    return float(mask.sum()), float((mask.sum(dim=1) > 0).sum())


def _step(params: list[nn.Parameter], optimizer: torch.optim.Optimizer, max_norm: float) -> float:
    norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def policy_phase(
    forward: PolicyForward,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Sequence[Tensor],
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PPOSettings,
) -> dict[str, float]:
    """Clipped-surrogate steps (minus ``entropy_coef`` times the aggregated entropy) over the
    ``schedule``; ``old_log_probs``, ``advantages``, ``mask``: ``[B, T]``."""
    stats: dict[str, list[float]] = {k: [] for k in POLICY_METRICS}
    optimizer.zero_grad(set_to_none=True)
    for mini in schedule:
        tokens, seqs = _counts(mask[mini])
        loss_sum = entropy_sum = kl_sum = clip_sum = 0.0
        for rows in _micro_batches(mini, cfg.micro_batch_rows):
            log_probs, entropy = forward(rows)
            t = log_probs.shape[1]
            m = mask[rows, :t].to(old_log_probs.dtype)
            out = clipped_policy_loss(
                log_probs.float(),
                old_log_probs[rows, :t],
                advantages[rows, :t],
                m,
                clip_eps=cfg.clip_eps,
                dual_clip=cfg.dual_clip,
                aggregation=cfg.aggregation,
                global_tokens=tokens,
                global_seqs=seqs,
            )
            entropy_term = aggregate(entropy, m, cfg.aggregation, tokens, seqs)
            loss = out.loss - cfg.entropy_coef * entropy_term if cfg.entropy_coef else out.loss
            loss.backward()
            n = float(m.sum())
            loss_sum += out.loss.detach().item()
            entropy_sum += entropy_term.detach().item()
            kl_sum += float(out.approx_kl) * n
            clip_sum += float(out.clip_fraction) * n
        stats["losses/grad_norm"].append(_step(params, optimizer, cfg.max_grad_norm))
        stats["losses/policy"].append(loss_sum)
        stats["losses/entropy"].append(entropy_sum)
        stats["losses/approx_kl"].append(kl_sum / max(tokens, 1.0))
        stats["losses/clipfrac"].append(clip_sum / max(tokens, 1.0))
    return {k: float(np.mean(v)) for k, v in stats.items()}


def critic_phase(
    forward: CriticForward,
    strategy: CriticStrategy,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Sequence[Tensor],
    targets: Tensor,
    old_outputs: Tensor,
    mask: Tensor,
    cfg: PPOSettings,
) -> dict[str, float]:
    """``strategy.loss`` steps over the ``schedule``: targets ``[B]`` (sequence critic) or
    ``[B, T]`` returns with ``old_outputs`` ``[B, T]`` for the value clip (step critic)."""
    stats: dict[str, list[float]] = {k: [] for k in CRITIC_METRICS}
    optimizer.zero_grad(set_to_none=True)
    for mini in schedule:
        tokens, seqs = _counts(mask[mini])
        loss_sum = 0.0
        for rows in _micro_batches(mini, cfg.micro_batch_rows):
            output = forward(rows)
            t = output.shape[1] if strategy.per_step else mask.shape[1]
            loss = strategy.loss(
                output,
                strategy.take(old_outputs, rows, t),
                strategy.take(targets, rows, t),
                mask[rows, :t],
                clip=cfg.value_clip,
                aggregation=cfg.aggregation,
                global_tokens=tokens,
                global_seqs=seqs,
                row_share=len(rows) / len(mini),
            )
            loss.backward()
            loss_sum += loss.detach().item()
        stats["losses/value_grad_norm"].append(_step(params, optimizer, cfg.max_grad_norm))
        stats["losses/value"].append(loss_sum)
    return {k: float(np.mean(v)) for k, v in stats.items()}
