"""Policy and value losses, entropy, KL estimators and PPO diagnostics over ``[B, T]`` tensors.

All functions are pure. Per-step losses are reduced by ``aggregate`` with an explicit mode:

- ``token-mean``:          sum_{b,t} m_bt l_bt / N_tokens
- ``seq-mean-token-sum``:  sum_b (sum_t m_bt l_bt) / N_seqs
- ``seq-mean-token-mean``: sum_b (sum_t m_bt l_bt / n_b) / N_seqs

``N_tokens`` and ``N_seqs`` default to the counts in the tensor given. A trainer that splits a
mini-batch into micro-batches passes the mini-batch's global counts; the per-micro-batch losses
then add up to exactly the mini-batch's loss, so gradient accumulation does not change the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sppo_bench.errors import UserError

AGGREGATIONS: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: str = "token-mean",
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> Tensor:
    """Reduce a per-step loss ``[B, T]`` under ``mask`` ``[B, T]`` to a scalar (see module doc).

    A row whose mask is all zero counts as no sequence.
    """
    loss = torch.where(mask.to(torch.bool), loss, torch.zeros_like(loss))
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        denom = global_tokens if global_tokens is not None else mask.sum().clamp_min(1.0)
        return (loss * mask).sum() / denom
    lengths = mask.sum(dim=-1)
    n_seqs = global_seqs if global_seqs is not None else (lengths > 0).sum().clamp_min(1)
    per_seq = (loss * mask).sum(dim=-1)
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / n_seqs
    if mode == "seq-mean-token-mean":
        return (per_seq / lengths.clamp_min(1.0)).sum() / n_seqs
    raise UserError(f"unknown loss aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


@dataclass
class PolicyLossOutput:
    """loss: scalar to minimise. approx_kl, clip_fraction: detached scalars (token means)."""

    loss: Tensor
    approx_kl: Tensor
    clip_fraction: Tensor


def clipped_policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    dual_clip: float | None = None,
    aggregation: str = "token-mean",
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate, per step, then aggregated.

    ratio r = exp(log_probs - old_log_probs);
    l = max(-A r, -A clip(r, 1 - eps, 1 + eps));
    with dual clip c > 1, where A < 0: l = min(l, -A c) (bounds the loss of a very large ratio).
    All tensors ``[B, T]``.
    """
    # padding may hold anything; zero it before exp so that inf * 0 cannot make a NaN
    log_ratio = torch.where(mask.to(torch.bool), log_probs - old_log_probs, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    per_step = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise UserError(f"dual_clip must be > 1.0, got {dual_clip}")
        per_step = torch.where(
            advantages < 0, torch.minimum(per_step, -advantages * dual_clip), per_step
        )
    loss = aggregate(per_step, mask, aggregation, global_tokens, global_seqs)
    with torch.no_grad():
        m = mask.to(log_ratio.dtype)
        n = m.sum().clamp_min(1.0)
        approx_kl = (((ratio - 1.0) - log_ratio) * m).sum() / n
        clip_fraction = (((ratio - 1.0).abs() > clip_eps).to(m.dtype) * m).sum() / n
    return PolicyLossOutput(loss, approx_kl, clip_fraction)


def bce_value_loss(value_logits: Tensor, targets: Tensor) -> Tensor:
    """SPPO critic loss: mean BCE(sigmoid(v), R) over ``[B]`` logits and binary targets."""
    return F.binary_cross_entropy_with_logits(value_logits, targets.to(value_logits.dtype))


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip: float | None = None,
    aggregation: str = "token-mean",
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> Tensor:
    """PPO-GAE critic loss: 0.5 * max((V - G)^2, (V_clip - G)^2), ``[B, T]`` in, scalar out.

    V_clip = old_V + clamp(V - old_V, -clip, clip); with ``clip=None`` the plain squared error.
    """
    error = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        error = torch.maximum(error, (clipped - returns) ** 2)
    return 0.5 * aggregate(error, mask, aggregation, global_tokens, global_seqs)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Categorical entropy H = logsumexp(z) - sum softmax(z) z, ``[..., V] -> [...]``."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


EV_REL_TOL = 1e-6  # relative std below which a target counts as constant


def explained_variance(predicted: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """1 - Var[target - predicted] / Var[target] over masked entries.

    Undefined (nan) when the target does not vary: when its standard deviation is at most
    ``EV_REL_TOL`` times the scale of the numbers involved, max(RMS(target), RMS(predicted)).
    The tolerance is relative, so targets that are constant up to float32 rounding count as
    constant on every machine, including returns that are 0 only up to the rounding of
    ``A + V`` (std ~ 1e-9 against values ~ 1e-2), instead of producing a huge,
    rounding-dependent ratio.
    """
    if mask is not None:
        keep = mask.to(torch.bool)
        predicted, target = predicted[keep], target[keep]
    predicted, target = predicted.detach().double(), target.detach().double()
    if target.numel() == 0:
        return float("nan")
    var = target.var(unbiased=False)
    scale = torch.maximum(target.square().mean(), predicted.square().mean())
    if var <= (EV_REL_TOL**2) * scale:
        return float("nan")
    return float(1.0 - (target - predicted).var(unbiased=False) / var)
