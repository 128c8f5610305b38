"""The critics a registered estimator may need, as strategies the trainers call.

A trainer's critic network turns states into one raw output per row (sequence critic) or per
step / token (step critic); everything that depends on which critic it is lives here:

===============  ===========================  ==================================  ==================
                 ``SEQUENCE`` (SPPO)          ``STEP`` (PPO-GAE)                  ``STEP_BCE``
                                                                                  (PPO-BCE)
===============  ===========================  ==================================  ==================
reads            s_0 / the prompt             every state s_t / token             every s_t
output           logit v ``[B]``              V(s_t) ``[B, T]``                   logit v_t [B, T]
V                sigmoid(v)                   the output                          sigmoid(v_t)
advantage input  ``value_logits``             ``values``                          ``step_logits``
loss             BCE(v, R), mean over rows    0.5 max((V - G)^2, (V_c - G)^2)     BCE(v_t, R) per
                                                                                  step, aggregated
===============  ===========================  ==================================  ==================

``objective`` ("mse" or "bce") picks the loss and the value transform: a BCE critic's output is a
logit and V = sigmoid(output); an MSE critic's output is V itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sppo_bench.core.losses import (
    aggregate,
    bce_value_loss,
    clipped_value_loss,
    explained_variance,
)

VALUE_METRICS = ("value/mean", "value/explained_variance")
BRIER_METRIC = "value/brier"  # mean_b (V(s_0)_b - R_b)^2, the critic's calibration on the batch
# Names that rows of older LLM runs used for the same quantities (``canonical_row``).
LEGACY_METRIC_NAMES = {"value_mean": "value/mean", "critic_brier": BRIER_METRIC}


def canonical_row(row: dict) -> dict:
    """A metrics row with the names of older versions as today's (an older name yields to a
    today's one present in the same row)."""
    out = {LEGACY_METRIC_NAMES.get(k, k): v for k, v in row.items()}
    out.update({k: v for k, v in row.items() if k in LEGACY_METRIC_NAMES.values()})
    return out


@dataclass(frozen=True)
class CriticStrategy:
    """What differs between the critics (see the module table).

    per_step: the output has one value per step ``[B, T]`` (else one per row ``[B]``).
    advantage_field: the ``AdvantageInput`` field that the old outputs fill.
    objective: "bce" (the output is a logit, V = sigmoid, BCE against the outcome R) or "mse"
    (the output is V, squared error against the estimator's returns).
    """

    name: str
    per_step: bool
    advantage_field: str
    objective: Literal["mse", "bce"] = "mse"

    def states(self, states: Tensor) -> Tensor:
        """The states the critic reads from ``[B, T, ...]``: all of them, or ``[B, ...]`` s_0."""
        return states if self.per_step else states[:, 0]

    def values(self, output: Tensor) -> Tensor:
        """V from the raw output (same shape): sigmoid of a BCE critic's logits, else as it is."""
        return torch.sigmoid(output) if self.objective == "bce" else output

    def start_values(self, output: Tensor) -> Tensor:
        """V(s_0) ``[B]``: the value of the row, or of each row's first step."""
        values = self.values(output)
        return values[:, 0] if self.per_step else values

    def output_shape(self, rows: int, steps: int) -> tuple[int, ...]:
        """``(B, T)`` or ``(B,)``: the shape of the outputs on ``rows`` sequences of ``steps``."""
        return (rows, steps) if self.per_step else (rows,)

    def take(self, x: Tensor | None, rows: Tensor, steps: int) -> Tensor | None:
        """Rows ``rows`` of a whole-batch tensor shaped like the outputs (first ``steps`` steps)."""
        if x is None:
            return None
        return x[rows, :steps] if self.per_step else x[rows]

    def put(self, out: Tensor, rows: Tensor, output: Tensor, mask: Tensor) -> None:
        """Write one micro-batch's ``output`` into the whole batch's ``out`` at ``rows``; step
        outputs ``[b, t]`` are masked by ``mask`` ``[b, t]`` (0 on padding)."""
        if self.per_step:
            out[rows, : output.shape[1]] = output * mask
        else:
            out[rows] = output

    def advantage_inputs(self, output: Tensor | None) -> dict[str, Tensor | None]:
        """``AdvantageInput`` keyword arguments that carry the old outputs."""
        return {self.advantage_field: output}

    def loss(
        self,
        output: Tensor,
        old_output: Tensor | None,
        targets: Tensor,
        mask: Tensor,
        clip: float | None = None,
        aggregation: str = "token-mean",
        global_tokens: float | None = None,
        global_seqs: float | None = None,
        row_share: float = 1.0,
    ) -> Tensor:
        """The critic's loss on one (micro-)batch.

        Sequence: BCE(v ``[B]``, R ``[B]``) times ``row_share``, this batch's share of the rows
        of the mini-batch whose gradient accumulates. Step, MSE: ``clipped_value_loss`` of V
        ``[B, T]`` against the returns ``[B, T]`` with the mini-batch's global counts. Step, BCE:
        l_bt = BCE(v_bt, R_b) on every masked step, reduced by ``aggregate`` with the global
        counts (token-mean: sum_bt m_bt l_bt / N_tokens of the mini-batch), so micro-batches add
        up to the mini-batch's loss; no value clip (``clip`` is ignored, as for SPPO).
        """
        if not self.per_step:
            return bce_value_loss(output, targets) * row_share
        if self.objective == "bce":
            per_step = F.binary_cross_entropy_with_logits(
                output, targets.to(output.dtype), reduction="none"
            )
            return aggregate(per_step, mask, aggregation, global_tokens, global_seqs)
        return clipped_value_loss(
            output, old_output, targets, mask, clip, aggregation, global_tokens, global_seqs
        )

    def diagnostics(self, output: Tensor, targets: Tensor, mask: Tensor) -> dict[str, float | None]:
        """Mean V and explained variance of the (old) outputs against the targets; masked steps
        for the step critic. ``None`` where the variance of the targets is 0."""
        values = self.values(output)
        if self.per_step:
            mean = float((values * mask).sum() / mask.sum())
            ev = explained_variance(values, targets, mask)
        else:
            mean = float(values.mean())
            ev = explained_variance(values, targets)
        return dict(zip(VALUE_METRICS, (mean, None if math.isnan(ev) else ev), strict=True))

    def brier(self, output: Tensor, reward: Tensor) -> dict[str, float]:
        """``{BRIER_METRIC: mean_b (V(s_0)_b - R_b)^2}`` of the outputs ``[B]`` / ``[B, T]``
        against the outcomes R ``[B]``."""
        return {BRIER_METRIC: float(((self.start_values(output) - reward) ** 2).mean())}


SEQUENCE = CriticStrategy("sequence", False, "value_logits", objective="bce")
STEP = CriticStrategy("step", per_step=True, advantage_field="values")
STEP_BCE = CriticStrategy("step-bce", True, "step_logits", objective="bce")
CRITICS: dict[str, CriticStrategy] = {c.name: c for c in (SEQUENCE, STEP, STEP_BCE)}
