"""SPPO on verl 0.9.1, without a fork: a plugin that ``import verl`` loads in every process.

The package declares this module under the ``verl.plugins`` entry-point group; verl's
``__init__`` imports every such module, so the driver, the Ray task runner and every worker
hold the three pieces below as soon as they import verl. Select SPPO with
``algorithm.adv_estimator=sppo critic.enable=True`` (``trainer.use_v1=True``, the default
``trainer.v1.trainer_mode=sync``).

1. The advantage estimator ``"sppo"`` (``register_adv_est``). For a batch of ``B`` responses
   padded to ``T`` tokens, with the critic's logit ``v_b`` at the last prompt token::

       R_b = sum_t token_level_rewards[b, t] * response_mask[b, t]
       A[b, t] = (R_b - sigmoid(v_b)) * response_mask[b, t]      (no whitening, no std division)
       returns[b, t] = R_b * response_mask[b, t]

   computed by :func:`sppo_bench.core.compute_advantages` (the same estimator the project's own
   trainers use). verl shifts the critic's per-token output left by one token
   (``response_from_nested`` / ``no_padding_2_padding``), so ``values[:, 0]`` is ``v_b``.
2. The critic loss, BCE with logits of ``v_b`` against ``R_b``
   (:func:`sppo_bench.core.bce_value_loss`), installed with the critic worker group's
   ``set_loss_fn`` after ``PPOTrainer.init`` (which installs verl's MSE ``value_loss``).
3. A trainer registered for verl's ``"sync"`` mode. With ``adv_estimator=sppo`` it checks the
   config, installs the loss, and hands the critic's values to the estimator (verl's generic
   ``compute_advantage`` passes a registered estimator no ``values``); with any other estimator
   it is verl's ``PPOTrainerSync`` unchanged. Each SPPO step it logs the critic's
   V_b = sigmoid(v_b) at the read position, the values the advantages used (before the critic's
   update): ``value/mean`` = mean_b V_b (the control track's name) and ``value/brier`` =
   mean_b (V_b - R_b)^2 (verl's ``critic/values/*`` average per-token logits, which SPPO does
   not use).

verl's critic runs over prompt + response, as for its token-level critic; the paper's fork ran a
prompt-only forward. The value is the same (in a causal model the output at the last prompt
token depends on the prompt alone); the prompt-only forward only saves compute, which needs more
than these hooks. This module imports neither Gymnasium nor the control track.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from torch import Tensor
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.core_algos import register_adv_est
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from sppo_bench.core.advantages import AdvantageInput, compute_advantages
from sppo_bench.core.critics import VALUE_METRICS
from sppo_bench.core.losses import bce_value_loss
from sppo_bench.errors import UserError

__all__ = [
    "ESTIMATOR",
    "SPPOTrainerSync",
    "check_config",
    "critic_values",
    "is_sppo",
    "sppo_advantage_return",
    "sppo_critic_loss",
    "value_metrics",
]

ESTIMATOR = "sppo"

VALUE_MEAN, VALUE_BRIER = VALUE_METRICS[0], "value/brier"

# The critic's padded values ``[B, T]`` for the batch whose advantage is being computed, and the
# dict the estimator writes its value metrics into; set by SPPOTrainerSync._compute_advantage
# around verl's own advantage step (same thread, same call).
_CRITIC_VALUES: ContextVar[tuple[Tensor, dict[str, float]] | None] = ContextVar(
    "sppo_critic_values", default=None
)


@contextmanager
def critic_values(values: Tensor, metrics: dict[str, float] | None = None) -> Iterator[None]:
    """Make ``values`` ``[B, T]`` the critic output that the ``"sppo"`` estimator reads; the
    estimator adds :func:`value_metrics` of the values it used to ``metrics``."""
    token = _CRITIC_VALUES.set((values, metrics if metrics is not None else {}))
    try:
        yield
    finally:
        _CRITIC_VALUES.reset(token)


def value_metrics(logits: Tensor, outcomes: Tensor) -> dict[str, float]:
    """The critic's V = sigmoid(v) at the read position against the outcome R, both ``[B]``:
    ``value/mean`` = mean_b V_b, ``value/brier`` = mean_b (V_b - R_b)^2."""
    v = torch.sigmoid(logits.detach().float())
    return {
        VALUE_MEAN: v.mean().item(),
        VALUE_BRIER: (v - outcomes.detach().float()).square().mean().item(),
    }


@register_adv_est(ESTIMATOR)
def sppo_advantage_return(
    token_level_rewards: Tensor,
    response_mask: Tensor,
    values: Tensor | None = None,
    config: Any = None,
    **_: Any,
) -> tuple[Tensor, Tensor]:
    """verl estimator ``"sppo"``: ``(advantages, returns)``, both ``[B, T]``.

    token_level_rewards: ``[B, T]`` (the verifier's reward on the last response token).
    response_mask: ``[B, T]``, 1 on response tokens.
    values: ``[B, T]`` critic logits after verl's shift (``values[:, 0]`` = logit ``v`` at the
        last prompt token); when omitted, the values set by :func:`critic_values`.
    config, index, reward_baselines, ...: what verl passes every estimator; unused.

    A = (R - sigmoid(v)) * response_mask, returns = R * response_mask (the BCE target). Inside
    :func:`critic_values`, :func:`value_metrics` of v and R go to its metrics dict.
    """
    context = _CRITIC_VALUES.get()
    if values is None and context is not None:
        values = context[0]
    if values is None:
        raise UserError(
            "algorithm.adv_estimator=sppo got no critic values: set critic.enable=True and run "
            "verl's v1 sync trainer (trainer.use_v1=True, trainer.v1.trainer_mode=sync)"
        )
    if values.shape[0] != token_level_rewards.shape[0]:
        raise ValueError(
            f"sppo: values has {values.shape[0]} rows, rewards {token_level_rewards.shape[0]}"
        )
    out = compute_advantages(
        ESTIMATOR,
        AdvantageInput(rewards=token_level_rewards, mask=response_mask, value_logits=values[:, 0]),
    )
    assert out.value_targets is not None
    if context is not None:
        context[1].update(value_metrics(values[:, 0], out.value_targets))
    returns = out.value_targets.unsqueeze(-1) * response_mask
    return out.advantages, returns.to(out.advantages.dtype)


def sppo_critic_loss(
    model_output: dict[str, Tensor], data: TensorDict, dp_group: Any = None
) -> tuple[Tensor, dict[str, Any]]:
    """Critic loss for verl's ``TrainingWorker.set_loss_fn``: BCE with logits at the prompt's end.

    model_output["values"]: the value head's output over prompt + response, a nested tensor
        ``[B, (prompt + response)_b]`` (or its packed values ``[total_tokens]``).
    data: the micro-batch TensorDict: nested "prompts", "responses", "returns" (``[B, T_b]``,
        R on every response token), "response_mask"; non-tensor "global_batch_size" (sequences
        in the global mini-batch) and "dp_size" when the loss is normalised globally.

    With v = values[:, 0] after verl's shift (the last prompt token) and R = returns[:, 0]:
    loss = sum_b BCE(sigmoid(v_b), R_b) * dp_size / global_batch_size, so the micro-batches and
    data-parallel ranks of a mini-batch add up to its mean BCE; without "global_batch_size" the
    micro-batch mean (as verl's seq-mean aggregation does).
    """
    logits = no_padding_2_padding(model_output["values"], data)[:, 0]  # [B]
    targets = data.select("returns").to_padded_tensor()["returns"][:, 0]  # [B]
    dp_size = tu.get_non_tensor_data(data, "dp_size", 1)
    global_batch_size = tu.get_non_tensor_data(data, "global_batch_size", None)
    loss = bce_value_loss(logits, targets)
    if global_batch_size is not None:
        loss = loss * logits.shape[0] * dp_size / global_batch_size
    elif dp_size > 1:
        raise ValueError("sppo critic loss: global_batch_size is required when dp_size > 1")
    aggregation = AggregationType.SUM if global_batch_size is not None else AggregationType.MEAN
    metrics = {
        "critic/vf_loss": Metric(value=loss, aggregation=aggregation),
        "critic/sppo_value_mean": torch.sigmoid(logits.detach().float()).mean().item(),
        "critic/sppo_target_mean": targets.detach().float().mean().item(),
    }
    return loss, metrics


def is_sppo(config: DictConfig) -> bool:
    """Whether the run's ``algorithm.adv_estimator`` is ``sppo``."""
    return str(config.algorithm.adv_estimator) == ESTIMATOR


def check_config(config: DictConfig) -> None:
    """One-line ``UserError`` for settings SPPO cannot run with."""
    enable = config.critic.get("enable")
    if is_sppo(config) and enable is not True:
        raise UserError(
            f"algorithm.adv_estimator=sppo needs critic.enable=True (got critic.enable={enable})"
        )


class SPPOTrainerSync(PPOTrainerSync):
    """verl's sync trainer; with ``adv_estimator=sppo`` it trains the critic with BCE and hands
    the critic's values to the estimator. Any other estimator: ``PPOTrainerSync`` as is."""

    def init(self) -> None:
        """Upstream ``init``; for SPPO, check the config first and replace the critic loss."""
        if not is_sppo(self.config):
            return super().init()
        check_config(self.config)
        super().init()
        self.critic_wg.set_loss_fn(sppo_critic_loss)

    def _compute_advantage(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """Upstream ``_compute_advantage``; for SPPO, with the critic's values in reach.

        The values ``[B, T]`` are read from TransferQueue as verl's ``_compute_values`` wrote
        them (response-aligned, nested) and padded exactly as upstream pads its batch. The
        estimator's ``value/mean`` and ``value/brier`` join the step's ``metrics``.
        """
        if not is_sppo(self.config):
            return super()._compute_advantage(batch, metrics)
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["values"]
        )
        found: dict[str, float] = {}
        with critic_values(data.to_padded_tensor()["values"], found):
            out = super()._compute_advantage(batch, metrics)
        metrics.update(found)
        return out


def _register_trainer() -> None:
    """Make :class:`SPPOTrainerSync` verl's ``"sync"`` trainer (in place of ``PPOTrainerSync``)."""
    current = TRAINER_REGISTRY.get("sync")
    if current is SPPOTrainerSync:
        return
    if current not in (None, PPOTrainerSync):
        raise RuntimeError(f"verl's 'sync' trainer is already replaced by {current!r}")
    TRAINER_REGISTRY.pop("sync", None)
    register_trainer("sync")(SPPOTrainerSync)


_register_trainer()
