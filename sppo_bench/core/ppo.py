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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sppo_bench.core.bounds import (
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
StackedPolicyForward = Callable[[Tensor], tuple[Tensor, ...]]  # rows [S, b] -> [S, b, t] each
StackedCriticForward = Callable[[Tensor], Tensor]  # rows [S, b] -> [S, b] or [S, b, t]


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
    spec, ``algo`` in an LLM recipe), for ``sppo_bench.core.bounds.check_bounds``."""
    bounds: dict[str, Bound] = {
        "lr": LEARNING_RATE,
        "critic_lr": optional(LEARNING_RATE),
        "clip_eps": POSITIVE,
        "dual_clip": optional(ABOVE_ONE),
        "entropy_coef": NON_NEGATIVE,
        "max_grad_norm": POSITIVE,
        "epochs": at_least(1, 100_000),
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


def _counts(mask: Tensor, mini: Tensor) -> Tensor:
    """``[S, 2]``: per seed s, (tokens, non-empty sequences) of ``mask[s, mini[s]]``; ``mask``
    ``[S, B, T]``, ``mini`` ``[S, m]``."""
    rows = mask[torch.arange(mask.shape[0], device=mask.device)[:, None], mini]  # [S, m, T]
    per_row = rows.sum(dim=-1)
    return torch.stack([per_row.sum(dim=-1), (per_row > 0).sum(dim=-1).to(per_row.dtype)], dim=1)


@dataclass(frozen=True)
class Micro:
    """One micro-batch of a mini-batch: ``rows`` ``[S, b]`` of each seed, the mini-batch's
    ``counts`` ``[S, 2]`` (tokens, non-empty sequences; every loss divides by these) and
    ``row_share`` = b / m, its share of the mini-batch's rows."""

    rows: Tensor
    counts: Tensor
    row_share: float


# A phase's work on one micro-batch: add every seed's loss gradient to the parameters' ``.grad``,
# return the seeds' metric sums (policy ``[4, S]``: loss, entropy term, approx_kl x tokens,
# clipfrac x tokens; critic ``[S]``: loss). ``autograd_*_step`` build it from a forward pass; the
# control track has its own (hand-written passes, ``sppo_bench.control.fastmlp``).
MicroStep = Callable[[Micro], Tensor]


def clip_grad_norm_per_seed(params: list[nn.Parameter], max_norm: float, seeds: int) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each seed of seed-stacked parameters (leading axis
    ``S``): seed s's gradients are scaled by min(1, max_norm / (||g_s|| + 1e-6)), where ||g_s|| is
    the 2-norm of the per-tensor norms of its slices. Returns the norms ``[S]`` before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(seeds)
    per_tensor = torch.stack([torch.linalg.vector_norm(g.reshape(seeds, -1), dim=1) for g in grads])
    norms = torch.linalg.vector_norm(per_tensor, dim=0)
    coef = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.view(seeds, *([1] * (g.dim() - 1))))
    return norms


def _step(
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    max_norm: float,
    stacked: int | None,
) -> list[float]:
    """Clip (per seed where the parameters are ``stacked`` over that many seeds), step, zero;
    returns the gradient norm of every seed before clipping."""
    if stacked is None:
        norms = [float(torch.nn.utils.clip_grad_norm_(params, max_norm))]
    else:
        norms = clip_grad_norm_per_seed(params, max_norm, stacked).tolist()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norms


def _sum(losses: list[Tensor]) -> Tensor:
    return losses[0] if len(losses) == 1 else torch.stack(losses).sum()


def _per_seed_means(stats: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    return {k: [float(np.mean(v)) for v in per_seed] for k, per_seed in stats.items()}


def _one_seed(schedule: Sequence[Tensor], *tensors: Tensor | None) -> tuple[Any, ...]:
    """One run's schedule and tensors with a seed axis of 1 (None stays None)."""
    return ([m.unsqueeze(0) for m in schedule], *(t if t is None else t[None] for t in tensors))


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
    ``schedule``; ``old_log_probs``, ``advantages``, ``mask``: ``[B, T]``. One run: the
    seed-stacked phase with one seed."""
    schedule1, old1, adv1, mask1 = _one_seed(schedule, old_log_probs, advantages, mask)
    step = autograd_policy_step(
        lambda rows: tuple(x.unsqueeze(0) for x in forward(rows[0])), old1, adv1, mask1, cfg
    )
    stats = stacked_policy_phase(step, params, optimizer, schedule1, mask1, cfg, stacked=None)
    return {k: v[0] for k, v in stats.items()}


def critic_phase(
    forward: CriticForward,
    strategy: CriticStrategy,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Sequence[Tensor],
    targets: Tensor,
    old_outputs: Tensor | None,
    mask: Tensor,
    cfg: PPOSettings,
) -> dict[str, float]:
    """``strategy.loss`` steps over the ``schedule``: targets ``[B]`` (sequence critic) or
    ``[B, T]`` returns with ``old_outputs`` ``[B, T]`` for the value clip (step critic). One run:
    the seed-stacked phase with one seed."""
    schedule1, targets1, old1, mask1 = _one_seed(schedule, targets, old_outputs, mask)
    step = autograd_critic_step(
        lambda rows: forward(rows[0]).unsqueeze(0), strategy, targets1, old1, mask1, cfg
    )
    stats = stacked_critic_phase(step, params, optimizer, schedule1, mask1, cfg, stacked=None)
    return {k: v[0] for k, v in stats.items()}


def autograd_policy_step(
    forward: StackedPolicyForward,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PPOSettings,
) -> MicroStep:
    """The policy phase's ``MicroStep`` by autograd: ``forward(rows [S, b]) -> (log_probs,
    entropy)`` ``[S, b, t]``, each seed's ``clipped_policy_loss`` minus ``entropy_coef`` times its
    aggregated entropy (``old_log_probs``, ``advantages``, ``mask``: ``[S, B, T]``), backward."""

    def step(micro: Micro) -> Tensor:
        rows = micro.rows
        log_probs, entropy = forward(rows)
        t = log_probs.shape[-1]
        losses, metrics = [], []
        for s, (tokens, seqs) in enumerate(micro.counts.tolist()):
            m = mask[s, rows[s], :t].to(old_log_probs.dtype)
            out = clipped_policy_loss(
                log_probs[s].float(),
                old_log_probs[s, rows[s], :t],
                advantages[s, rows[s], :t],
                m,
                clip_eps=cfg.clip_eps,
                dual_clip=cfg.dual_clip,
                aggregation=cfg.aggregation,
                global_tokens=tokens,
                global_seqs=seqs,
            )
            entropy_term = aggregate(entropy[s], m, cfg.aggregation, tokens, seqs)
            loss = out.loss - cfg.entropy_coef * entropy_term if cfg.entropy_coef else out.loss
            losses.append(loss)
            n = m.sum()
            parts = (out.loss, entropy_term, out.approx_kl * n, out.clip_fraction * n)
            metrics.append(torch.stack([x.detach().float() for x in parts]))
        _sum(losses).backward()
        return torch.stack(metrics, dim=1)

    return step


def autograd_critic_step(
    forward: StackedCriticForward,
    strategy: CriticStrategy,
    targets: Tensor,
    old_outputs: Tensor | None,
    mask: Tensor,
    cfg: PPOSettings,
) -> MicroStep:
    """The critic phase's ``MicroStep`` by autograd: ``forward(rows [S, b]) -> [S, b(, t)]``,
    each seed's ``strategy.loss`` (``targets`` / ``old_outputs`` ``[S, B(, T)]``), backward."""

    def step(micro: Micro) -> Tensor:
        rows = micro.rows
        output = forward(rows)
        t = output.shape[-1] if strategy.per_step else mask.shape[-1]
        losses = []
        for s, (tokens, seqs) in enumerate(micro.counts.tolist()):
            loss = strategy.loss(
                output[s],
                strategy.take(None if old_outputs is None else old_outputs[s], rows[s], t),
                strategy.take(targets[s], rows[s], t),
                mask[s, rows[s], :t],
                clip=cfg.value_clip,
                aggregation=cfg.aggregation,
                global_tokens=tokens,
                global_seqs=seqs,
                row_share=micro.row_share,
            )
            losses.append(loss)
        _sum(losses).backward()
        return torch.stack(losses).detach()

    return step


def _phase(
    step: MicroStep, schedule: Sequence[Tensor], mask: Tensor, cfg: PPOSettings
) -> Iterator[tuple[Tensor, np.ndarray]]:
    """For each mini-batch of the ``schedule``: its counts ``[S, 2]`` and the sums of ``step``'s
    metrics over its micro-batches (one host sync per micro-batch). The caller steps after each."""
    for mini in schedule:
        counts = _counts(mask, mini)
        sums: np.ndarray | float = 0.0
        size = cfg.micro_batch_rows
        for rows in [mini] if size is None else mini.split(size, dim=1):  # [S, b] each
            micro = Micro(rows, counts, rows.shape[1] / mini.shape[1])
            sums = sums + step(micro).double().cpu().numpy()
        yield counts, np.asarray(sums)


def stacked_policy_phase(
    step: MicroStep,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Sequence[Tensor],
    mask: Tensor,
    cfg: PPOSettings,
    stacked: int | None,
) -> dict[str, list[float]]:
    """``policy_phase`` for ``S`` independent runs at once (one per seed).

    ``mask``: ``[S, B, T]``; ``schedule``: ``[S, m]`` rows of each seed's mini-batch; ``step``:
    the loss and gradient of a micro-batch (``autograd_policy_step`` or a track's own). Each
    seed's loss is its own run's loss (its own token / sequence counts); the sum over seeds is
    minimised, so seed s's gradient is exactly its own loss's. ``stacked = S``: every parameter
    carries a leading seed axis and gradients are clipped per seed; ``None``: ordinary parameters
    (S must be 1). Returns every metric per seed ``[S]``.
    """
    seeds = range(mask.shape[0])
    stats = {k: [[] for _ in seeds] for k in POLICY_METRICS}
    optimizer.zero_grad(set_to_none=True)
    for counts, sums in _phase(step, schedule, mask, cfg):
        norms = _step(params, optimizer, cfg.max_grad_norm, stacked)
        for s, (tokens, _) in enumerate(counts.tolist()):
            tokens = max(tokens, 1.0)
            stats["losses/grad_norm"][s].append(norms[s])
            stats["losses/policy"][s].append(sums[0, s])
            stats["losses/entropy"][s].append(sums[1, s])
            stats["losses/approx_kl"][s].append(sums[2, s] / tokens)
            stats["losses/clipfrac"][s].append(sums[3, s] / tokens)
    return _per_seed_means(stats)


def stacked_critic_phase(
    step: MicroStep,
    params: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    schedule: Sequence[Tensor],
    mask: Tensor,
    cfg: PPOSettings,
    stacked: int | None,
) -> dict[str, list[float]]:
    """``critic_phase`` for ``S`` runs at once: ``mask`` ``[S, B, T]``, ``step`` the loss and
    gradient of a micro-batch (``autograd_critic_step`` or a track's own); each seed's loss is its
    own run's (see ``stacked_policy_phase``). Returns every metric per seed."""
    seeds = range(mask.shape[0])
    stats = {k: [[] for _ in seeds] for k in CRITIC_METRICS}
    optimizer.zero_grad(set_to_none=True)
    for _, sums in _phase(step, schedule, mask, cfg):
        norms = _step(params, optimizer, cfg.max_grad_norm, stacked)
        for s in seeds:
            stats["losses/value_grad_norm"][s].append(norms[s])
            stats["losses/value"][s].append(sums[s])
    return _per_seed_means(stats)
