"""Forward passes and optimiser steps over a ``RolloutBatch``, in mini- and micro-batches.

A mini-batch is one optimiser step; it is split into micro-batches whose gradients accumulate.
Token-mean losses use the mini-batch's global token count (``aggregate(..., global_tokens)``) and
the BCE loss is weighted by the micro-batch's share of rows, so that the accumulated gradient is
exactly the gradient of the whole mini-batch's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from sppo_bench.core import CriticStrategy, aggregate, clipped_policy_loss
from sppo_bench.llm.models import response_log_probs
from sppo_bench.llm.rollout import RolloutBatch

AutocastFactory = Callable[[], AbstractContextManager]


def no_autocast() -> AbstractContextManager:
    return nullcontext()


def chunks(rows: Tensor, size: int) -> list[Tensor]:
    """Split a ``[n]`` row-index tensor into consecutive pieces of at most ``size``."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def _counts(mask: Tensor) -> tuple[float, float]:
    """(tokens, non-empty sequences) of a ``[B, T]`` mask."""
    return float(mask.sum()), float((mask.sum(dim=1) > 0).sum())


@torch.no_grad()
def policy_log_probs(
    model: nn.Module,
    batch: RolloutBatch,
    micro_batch_size: int,
    temperature: float,
    autocast: AutocastFactory = no_autocast,
) -> Tensor:
    """``[B, T]`` log-probs of the batch's responses under ``model`` (0 on padding)."""
    was_training = model.training
    model.eval()
    out = torch.zeros_like(batch.log_probs)
    for rows in chunks(torch.arange(len(batch)), micro_batch_size):
        sub = batch.select(rows)
        t = sub.response_ids.shape[1]
        with autocast():
            lp, _ = response_log_probs(model, sub.input_ids(), sub.attention_mask(), t, temperature)
        out[rows.to(out.device), :t] = lp.float() * sub.response_mask
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
    """Sequence critic: ``[B]`` logits v. Step critic: ``[B, T]`` values (0 on padding)."""
    critic.eval()
    shape = strategy.output_shape(len(batch), batch.log_probs.shape[1])
    out = torch.zeros(shape, device=batch.log_probs.device)
    for rows in chunks(torch.arange(len(batch)), micro_batch_size):
        sub = batch.select(rows)
        with autocast():
            strategy.put(out, rows.to(out.device), critic.predict(sub).float(), sub.response_mask)
    return out


def policy_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    old_log_probs: Tensor,
    advantages: Tensor,
    mini_batch_rows: int,
    micro_batch_size: int,
    temperature: float,
    clip_eps: float = 0.2,
    dual_clip: float | None = 3.0,
    entropy_coef: float = 0.0,
    aggregation: str = "token-mean",
    grad_clip: float = 1.0,
    epochs: int = 1,
    autocast: AutocastFactory = no_autocast,
) -> dict[str, float]:
    """PPO clipped-surrogate steps over the batch; returns token-weighted mean diagnostics."""
    model.train()
    mask_all = batch.response_mask.to(old_log_probs.dtype)
    stats = {"policy_loss": 0.0, "approx_kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
    norms: list[float] = []
    total_tokens = float(mask_all.sum()) * epochs
    for _ in range(epochs):
        for mini in chunks(torch.arange(len(batch)), mini_batch_rows):
            tokens, seqs = _counts(mask_all[mini])
            for rows in chunks(mini, micro_batch_size):
                sub = batch.select(rows)
                t = sub.response_ids.shape[1]
                mask = sub.response_mask.to(old_log_probs.dtype)
                with autocast():
                    lp, entropy = response_log_probs(
                        model, sub.input_ids(), sub.attention_mask(), t, temperature, True
                    )
                out = clipped_policy_loss(
                    lp.float(),
                    old_log_probs[rows, :t],
                    advantages[rows, :t],
                    mask,
                    clip_eps=clip_eps,
                    dual_clip=dual_clip,
                    aggregation=aggregation,
                    global_tokens=tokens,
                    global_seqs=seqs,
                )
                loss = out.loss
                if entropy_coef:
                    ent = aggregate(entropy, mask, aggregation, tokens, seqs)
                    loss = loss - entropy_coef * ent
                loss.backward()
                n = float(mask.sum())
                stats["policy_loss"] += float(out.loss.detach()) * tokens / max(total_tokens, 1.0)
                stats["approx_kl"] += float(out.approx_kl) * n / max(total_tokens, 1.0)
                stats["clip_fraction"] += float(out.clip_fraction) * n / max(total_tokens, 1.0)
                stats["entropy"] += float((entropy.detach() * mask).sum()) / max(total_tokens, 1.0)
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    stats["grad_norm"] = sum(norms) / len(norms) if norms else 0.0
    return stats


def critic_update(
    critic: nn.Module,
    strategy: CriticStrategy,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    targets: Tensor,
    old_values: Tensor | None,
    mini_batch_rows: int,
    micro_batch_size: int,
    value_clip: float | None = None,
    aggregation: str = "token-mean",
    grad_clip: float = 1.0,
    epochs: int = 1,
    autocast: AutocastFactory = no_autocast,
) -> dict[str, float]:
    """``strategy.loss`` steps: BCE(v, R) with ``targets`` ``[B]`` (sequence critic), or the
    clipped squared error against the returns ``targets`` ``[B, T]`` with ``old_values``
    ``[B, T]`` for the clip (step critic)."""
    critic.train()
    losses, norms = [], []
    for _ in range(epochs):
        for mini in chunks(torch.arange(len(batch)), mini_batch_rows):
            tokens, seqs = _counts(batch.response_mask[mini])
            mini_loss = 0.0
            for rows in chunks(mini, micro_batch_size):
                sub = batch.select(rows)
                t = sub.response_ids.shape[1]
                with autocast():
                    loss = strategy.loss(
                        critic.predict(sub).float(),
                        strategy.take(old_values, rows, t),
                        strategy.take(targets, rows, t),
                        sub.response_mask,
                        clip=value_clip,
                        aggregation=aggregation,
                        global_tokens=tokens,
                        global_seqs=seqs,
                        row_share=len(rows) / len(mini),
                    )
                loss.backward()
                mini_loss += float(loss.detach())
            losses.append(mini_loss)
            norms.append(float(torch.nn.utils.clip_grad_norm_(critic.parameters(), grad_clip)))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {
        "critic_loss": sum(losses) / len(losses),
        "critic_grad_norm": sum(norms) / len(norms),
    }
