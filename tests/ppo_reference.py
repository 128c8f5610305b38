"""An independent reference of one PPO policy phase with plain SGD, for the settings tests.

Written from the equations, not from ``sppo_bench.core``: per step l = max(-A r, -A clip(r, 1 -
eps, 1 + eps)), with dual clip c where A < 0: min(l, -A c); the loss is the aggregated l minus
``entropy_coef`` times the aggregated entropy; gradients are clipped to a total 2-norm of
``max_grad_norm``, then p <- p - lr g, once per mini-batch of the schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Knobs:
    """The PPO settings under test, at the values the reference uses."""

    epochs: int = 2
    mini_batch_size: int = 2
    clip_eps: float = 0.2
    dual_clip: float | None = None
    entropy_coef: float = 0.0
    max_grad_norm: float = 1e9
    aggregation: str = "token-mean"


def aggregate(x: Tensor, mask: Tensor, mode: str) -> Tensor:
    """token-mean: sum m x / N_tokens; seq-mean-token-sum: sum m x / N_seqs; seq-mean-token-mean:
    sum_b (sum_t m x / n_b) / N_seqs."""
    per_row = (x * mask).sum(dim=-1)
    if mode == "token-mean":
        return per_row.sum() / mask.sum()
    if mode == "seq-mean-token-sum":
        return per_row.sum() / len(per_row)
    return (per_row / mask.sum(dim=-1)).sum() / len(per_row)


def surrogate(lp, old_lp, adv, mask, knobs: Knobs, entropy=None) -> Tensor:
    ratio = torch.exp(lp - old_lp)
    eps = knobs.clip_eps
    per_step = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps))
    if knobs.dual_clip is not None:
        per_step = torch.where(adv < 0, torch.minimum(per_step, -adv * knobs.dual_clip), per_step)
    loss = aggregate(per_step, mask, knobs.aggregation)
    if knobs.entropy_coef:
        loss = loss - knobs.entropy_coef * aggregate(entropy, mask, knobs.aggregation)
    return loss


def sgd_phase(
    params: Sequence[Tensor],
    forward: Callable[[Tensor], tuple[Tensor, Tensor]],
    old_lp: Tensor,
    adv: Tensor,
    mask: Tensor,
    schedule: Sequence[Tensor],
    knobs: Knobs,
    lr: float,
) -> None:
    """SGD on ``params`` (leaf tensors with ``requires_grad``) in place; ``forward(rows)`` gives
    (log-probs, entropy) ``[b, T]`` of those rows."""
    for rows in schedule:
        lp, entropy = forward(rows)
        loss = surrogate(lp, old_lp[rows], adv[rows], mask[rows], knobs, entropy)
        grads = torch.autograd.grad(loss, list(params), allow_unused=True)
        grads = [
            torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)
        ]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        scale = min(1.0, knobs.max_grad_norm / (float(norm) + 1e-6))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * scale * g


# Each setting at a value away from its default, and the default it must differ from.
CASES = [
    ("clip_eps", 0.05, 0.2),
    ("dual_clip", 1.05, None),
    ("entropy_coef", 0.5, 0.0),  # a sign flip moves the other way: reference(-0.5) differs
    ("max_grad_norm", 0.05, 1e9),
    ("aggregation", "seq-mean-token-sum", "token-mean"),
    ("aggregation", "seq-mean-token-mean", "token-mean"),
    ("epochs", 3, 2),
    ("mini_batch_size", 1, 2),
]
