"""The two critics a registered estimator may need, as strategies the trainers call.

A trainer's critic network turns states into one raw output per row (sequence critic) or per
step / token (step critic); everything that depends on which critic it is lives here:

=================  ==========================================  ==================================
                   ``SequenceCritic`` (SPPO)                   ``StepCritic`` (PPO-GAE)
=================  ==========================================  ==================================
reads              s_0 / the prompt: ``states[:, 0]``          every state s_t / token
output             logit v ``[B]``; V(s_0) = sigmoid(v)        V(s_t) ``[B, T]``
advantage input    ``AdvantageInput.value_logits``             ``AdvantageInput.values``
loss               BCE(v, R), mean over rows                   0.5 max((V - G)^2, (V_clip - G)^2)
=================  ==========================================  ==================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sppo_bench.core.losses import bce_value_loss, clipped_value_loss, explained_variance

VALUE_METRICS = ("value/mean", "value/explained_variance")


@dataclass(frozen=True)
class CriticStrategy:
    """What differs between the sequence and the step critic (see the module table).

    per_step: the output has one value per step ``[B, T]`` (else one per row ``[B]``).
    advantage_field: the ``AdvantageInput`` field that the old outputs fill.
    """

    name: str
    per_step: bool
    advantage_field: str

    def states(self, states: Tensor) -> Tensor:
        """The states the critic reads from ``[B, T, ...]``: all of them, or ``[B, ...]`` s_0."""
        return states if self.per_step else states[:, 0]

    def values(self, output: Tensor) -> Tensor:
        """V from the raw output: sigmoid(v) ``[B]`` or V(s_t) ``[B, T]`` as it is."""
        return output if self.per_step else torch.sigmoid(output)

    def start_values(self, output: Tensor) -> Tensor:
        """V(s_0) ``[B]``: sigmoid(v), or the first step's value."""
        return output[:, 0] if self.per_step else torch.sigmoid(output)

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
        of the mini-batch whose gradient accumulates. Step: ``clipped_value_loss`` of V
        ``[B, T]`` against the returns ``[B, T]`` with the mini-batch's global counts.
        """
        if not self.per_step:
            return bce_value_loss(output, targets) * row_share
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


SEQUENCE = CriticStrategy("sequence", per_step=False, advantage_field="value_logits")
STEP = CriticStrategy("step", per_step=True, advantage_field="values")
CRITICS: dict[str, CriticStrategy] = {"sequence": SEQUENCE, "step": STEP}
