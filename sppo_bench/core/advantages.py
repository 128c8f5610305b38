"""Advantage estimators over padded ``[B, T]`` batches.

Every estimator is a pure function ``fn(batch: AdvantageInput, **params) -> AdvantageOutput``
registered by name, so that the control and LLM trainers pick one from a config string and never
special-case it. Row ``b`` of a batch is one sequence: an episode of a control task or an LLM
response; ``mask[b, t] = 1`` on its real steps (tokens) and 0 on padding.

The sequence reward is ``R_b = sum_t rewards[b, t] * mask[b, t]`` (gamma = 1, as in the paper);
with a binary terminal reward this is exactly the success indicator.

Estimators and what they need from the caller (``EstimatorSpec``):

==========  ========================  ==========================================================
name        needs                     advantage (broadcast to every masked step unless per-step)
==========  ========================  ==========================================================
sppo        ``value_logits`` [B]       A = R - sigmoid(v)                    (critic: sequence)
gae         ``values`` [B, T]          GAE(gamma, lambda), per step          (critic: step)
ppo-bce     ``step_logits`` [B, T]     GAE(gamma, lambda) over sigmoid(v_t)  (critic: step-bce)
grpo        ``group_ids`` [B]          A = (R - mean_g R) [/ std_g R]
rloo        ``group_ids`` [B]          A = R - mean_{j != i in g} R_j
remax       ``baseline_rewards`` [B]   A = R - R_greedy
reinforce   nothing                    A = R - mean_batch R   (or A = R)
==========  ========================  ==========================================================
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from sppo_bench.core.critics import CRITICS, CriticStrategy
from sppo_bench.errors import UserError

__all__ = [
    "AdvantageInput",
    "AdvantageOutput",
    "EstimatorSpec",
    "ESTIMATORS",
    "algorithm_names",
    "compute_advantages",
    "get_estimator",
    "sequence_rewards",
    "sppo_advantage",
    "gae_advantage",
    "bce_gae_advantage",
    "grpo_advantage",
    "rloo_advantage",
    "remax_advantage",
    "reinforce_advantage",
]


@dataclass
class AdvantageInput:
    """What the caller knows about a batch of ``B`` sequences padded to length ``T``.

    rewards: ``[B, T]`` per-step rewards (for binary tasks: 0 everywhere, R on the last step).
    mask: ``[B, T]`` 1.0 on real steps, 0.0 on padding; each row's real steps come first.
    values: ``[B, T]`` per-step critic values V(s_t) (GAE only).
    last_values: ``[B]`` V of the state after the last real step, used to bootstrap rows that were
        truncated rather than terminated (GAE only; default 0).
    terminated: ``[B]`` bool, True where the sequence ended in a terminal state (GAE only;
        default: all terminated, which is the case for LLM responses).
    value_logits: ``[B]`` the sequence critic's logit v for V(s_0) = sigmoid(v) (SPPO only).
    step_logits: ``[B, T]`` a per-step BCE critic's logits v_t, V(s_t) = sigmoid(v_t) (PPO-BCE).
    group_ids: ``[B]`` int, rows sharing an id share a prompt / start state (GRPO, RLOO).
    baseline_rewards: ``[B]`` reward of the greedy rollout from the same prompt (ReMax).
    """

    rewards: Tensor
    mask: Tensor
    values: Tensor | None = None
    last_values: Tensor | None = None
    terminated: Tensor | None = None
    value_logits: Tensor | None = None
    step_logits: Tensor | None = None
    group_ids: Tensor | None = None
    baseline_rewards: Tensor | None = None


@dataclass
class AdvantageOutput:
    """advantages: ``[B, T]`` (zero on padding).

    value_targets: the critic's target, ``[B, T]`` returns for GAE, ``[B]`` rewards R for SPPO,
    ``[B, T]`` R on every masked step for PPO-BCE, ``None`` for critic-free estimators.
    """

    advantages: Tensor
    value_targets: Tensor | None = None


CriticKind = Literal["none", "sequence", "step", "step-bce"]


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: the one list of algorithms, and what a trainer provides for it.

    run_name: the algorithm's display name, also its run-folder name in both tracks.
    critic: which critic the trainer trains ("sequence": V(s_0) with BCE; "step": V(s_t) with
        squared error; "step-bce": V(s_t) = sigmoid(v_t) with BCE), a key of ``core.CRITICS``.
    needs_groups: rollouts come in groups of ``group_size`` from one prompt / start state.
    needs_greedy_baseline: the trainer also rolls out the greedy policy per prompt (ReMax).
    group_size: default samples per prompt / start state (the paper's settings).
    params: the estimator's keyword parameters and their defaults (from ``fn``'s signature).
    bounds: the valid values of ``params``: ``(low, high)`` (inclusive) for a number, the
    choices for a string; booleans need none.
    batch_wide: rows outside one group share a baseline (REINFORCE's batch mean), so batches of
    independent runs must not be concatenated; otherwise a row's advantage depends only on its
    own row and group, and a trainer may pass several runs' rows (distinct group ids) at once.
    """

    name: str
    fn: Callable[..., AdvantageOutput]
    critic: CriticKind
    needs_groups: bool
    needs_greedy_baseline: bool
    group_size: int
    aliases: tuple[str, ...]
    run_name: str
    params: dict[str, object] = field(hash=False)
    batch_wide: bool = False
    bounds: dict[str, tuple] = field(default_factory=dict, hash=False)

    @property
    def critic_strategy(self) -> CriticStrategy | None:
        """The critic this estimator trains (``sppo_bench.core.critics``), or None."""
        return CRITICS.get(self.critic)

    def configured_params(self, table: Mapping[str, Mapping[str, object]]) -> dict[str, object]:
        """``params`` updated by ``table[name or alias]`` of a config's per-estimator table
        (e.g. ``{"ppo-gae": {"lam": 0.95}}``); an unknown estimator or parameter is a one-line
        ``UserError``."""
        for key in table:
            get_estimator(key)
        given: dict[str, object] = {}
        for key in (self.name, *self.aliases):
            given.update(table.get(key) or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise UserError(
                f"unknown parameter {unknown[0]!r} for estimator {self.run_name!r}; valid: {valid}"
            )
        return {**self.params, **{k: self.checked(k, v) for k, v in given.items()}}

    def checked(self, key: str, value: object) -> object:
        """``value`` of parameter ``key`` if it has the default's type and lies in ``bounds``
        (an int for a float becomes a float); otherwise a one-line ``UserError``."""
        default, bound = self.params[key], self.bounds.get(key, (-math.inf, math.inf))
        if isinstance(default, bool):
            ok, valid = isinstance(value, bool), "true or false"
        elif isinstance(default, int | float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and bound[0] <= value <= bound[1]  # type: ignore
            valid = f"a number in [{bound[0]:g}, {bound[1]:g}]"
            value = float(value) if ok and isinstance(default, float) else value  # type: ignore
        else:
            ok, valid = value in bound, ", ".join(map(str, bound))
        if not ok:
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise UserError(
                f"estimator parameter {self.run_name}.{key}={shown} is out of range; valid: {valid}"
            )
        return value


ESTIMATORS: dict[str, EstimatorSpec] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    critic: CriticKind = "none",
    needs_groups: bool = False,
    needs_greedy_baseline: bool = False,
    group_size: int = 1,
    aliases: tuple[str, ...] = (),
    run_name: str | None = None,
    batch_wide: bool = False,
    bounds: Mapping[str, tuple] | None = None,
) -> Callable[[Callable[..., AdvantageOutput]], Callable[..., AdvantageOutput]]:
    """Register ``fn`` under ``name`` (and ``aliases``, and ``run_name``) in ``ESTIMATORS``;
    ``bounds``: the valid values of its parameters (``EstimatorSpec.bounds``)."""

    def decorate(fn: Callable[..., AdvantageOutput]) -> Callable[..., AdvantageOutput]:
        signature = inspect.signature(fn).parameters.values()
        params = {p.name: p.default for p in signature if p.default is not p.empty}
        display = run_name or name
        names = tuple(a for a in dict.fromkeys((display, *aliases)) if a != name)
        needs = (critic, needs_groups, needs_greedy_baseline, group_size)
        ESTIMATORS[name] = EstimatorSpec(
            name, fn, *needs, names, display, params, batch_wide, dict(bounds or {})
        )
        for alias in (name, *names):
            _ALIASES[alias] = name
        return fn

    return decorate


def algorithm_names() -> tuple[str, ...]:
    """The run names of the registered estimators, in registration order."""
    return tuple(spec.run_name for spec in ESTIMATORS.values())


def valid_estimator_names() -> list[str]:
    """Canonical names and aliases, sorted."""
    return sorted(_ALIASES)


def get_estimator(name: str) -> EstimatorSpec:
    """Look up an estimator by name or alias; a one-line ``UserError`` lists the valid names."""
    try:
        return ESTIMATORS[_ALIASES[name]]
    except KeyError:
        raise UserError(
            f"unknown algorithm {name!r}; valid: {', '.join(valid_estimator_names())}"
        ) from None


def compute_advantages(name: str, batch: AdvantageInput, **params: object) -> AdvantageOutput:
    """Run the estimator registered as ``name`` on ``batch``."""
    return get_estimator(name).fn(batch, **params)


def sequence_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """R_b = sum_t rewards[b, t] * mask[b, t]; ``[B, T] -> [B]``."""
    return (rewards * mask).sum(dim=-1)


def _require(value: Tensor | None, field: str, estimator: str) -> Tensor:
    if value is None:
        raise UserError(f"estimator {estimator!r} needs AdvantageInput.{field}")
    return value


def _broadcast(per_sequence: Tensor, mask: Tensor) -> Tensor:
    """``[B] -> [B, T]``: the same scalar on every masked step, zero on padding."""
    return per_sequence.unsqueeze(-1) * mask


@register("sppo", critic="sequence")
def sppo_advantage(batch: AdvantageInput) -> AdvantageOutput:
    """SPPO: A = R - V(s_0), V(s_0) = sigmoid(v), broadcast to every step.

    No standard-deviation division and no whitening (the paper's exact form). The critic's
    target is R itself (binary cross-entropy on the logit v).
    """
    logits = _require(batch.value_logits, "value_logits", "sppo")
    reward = sequence_rewards(batch.rewards, batch.mask)
    value = torch.sigmoid(logits.detach().to(reward.dtype))
    return AdvantageOutput(_broadcast(reward - value, batch.mask), value_targets=reward)


@register(
    "gae",
    critic="step",
    aliases=("ppo",),
    run_name="ppo-gae",
    bounds={"gamma": (0.0, 1.0), "lam": (0.0, 1.0)},
)
def gae_advantage(batch: AdvantageInput, gamma: float = 1.0, lam: float = 1.0) -> AdvantageOutput:
    """Generalised advantage estimation, per step.

    delta_t = r_t + gamma * V_{t+1} - V_t, where V_{t+1} is the next real step's value, or, after
    the last real step, ``last_values`` if the row was truncated and 0 if it terminated.
    A_t = sum_{l>=0} (gamma * lam)^l * delta_{t+l} within the row; returns = A + V.
    """
    values = _require(batch.values, "values", "gae").detach()
    return _gae(batch, values, gamma, lam)


def _gae(batch: AdvantageInput, values: Tensor, gamma: float, lam: float) -> AdvantageOutput:
    """GAE over per-step values ``[B, T]`` (see ``gae_advantage``); returns = A + V."""
    rewards, mask = batch.rewards, batch.mask.to(values.dtype)
    bsz, horizon = rewards.shape
    last = batch.last_values if batch.last_values is not None else values.new_zeros(bsz)
    terminated = (
        batch.terminated.to(torch.bool)
        if batch.terminated is not None
        else torch.ones(bsz, dtype=torch.bool, device=values.device)
    )
    bootstrap = torch.where(terminated, torch.zeros_like(last), last.detach().to(values.dtype))
    advantages = torch.zeros_like(values)
    running = values.new_zeros(bsz)
    for t in reversed(range(horizon)):
        next_real = mask[:, t + 1] if t + 1 < horizon else values.new_zeros(bsz)
        next_value = values[:, t + 1] if t + 1 < horizon else values.new_zeros(bsz)
        next_value = next_real * next_value + (1.0 - next_real) * bootstrap
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * next_real * running
        running = running * mask[:, t]
        advantages[:, t] = running
    return AdvantageOutput(advantages, value_targets=(advantages + values) * mask)


@register(
    "ppo-bce", critic="step-bce", aliases=("bce",), bounds={"gamma": (0.0, 1.0), "lam": (0.0, 1.0)}
)
def bce_gae_advantage(
    batch: AdvantageInput, gamma: float = 1.0, lam: float = 1.0
) -> AdvantageOutput:
    """PPO with a token-level critic trained by BCE (the paper's "PPO + BCE" ablation).

    V(s_t) = sigmoid(v_t) from the per-step logits; advantages are ``gae_advantage``'s over these
    values (same gamma, lam; defaults 1, 1). The critic's target is the outcome R_b at every
    masked step (``[B, T]``, 0 on padding): BCE(v_t, R), not the GAE returns.
    """
    logits = _require(batch.step_logits, "step_logits", "ppo-bce").detach()
    values = torch.sigmoid(logits.to(batch.rewards.dtype))
    out = _gae(batch, values, gamma, lam)
    reward = sequence_rewards(batch.rewards, batch.mask)
    return AdvantageOutput(out.advantages, value_targets=_broadcast(reward, batch.mask))


def _group_index(group_ids: Tensor, estimator: str) -> tuple[Tensor, Tensor]:
    """Map arbitrary ids ``[B]`` to dense indices ``[B]`` and group sizes ``[G]``.

    A group with one member cannot form a baseline: that is an error, never a silent fall-back.
    """
    _, dense = torch.unique(group_ids, return_inverse=True)
    sizes = torch.bincount(dense)
    if (sizes < 2).any():
        lone = group_ids[(sizes[dense] < 2)][0].item()
        raise UserError(
            f"{estimator} needs at least 2 samples per group, but group {lone} has 1; "
            "set the group size (samples per prompt / start state) to 2 or more"
        )
    return dense, sizes


def _group_mean(values: Tensor, dense: Tensor, sizes: Tensor) -> Tensor:
    sums = torch.zeros(len(sizes), dtype=values.dtype, device=values.device)
    sums.index_add_(0, dense, values)
    return sums / sizes.to(values.dtype)


@register("grpo", needs_groups=True, group_size=8, bounds={"eps": (1e-12, 1.0)})
def grpo_advantage(
    batch: AdvantageInput, normalize_std: bool = True, eps: float = 1e-6
) -> AdvantageOutput:
    """GRPO: A_i = (R_i - mean_g R) / (std_g R + eps), or without the division.

    std is the population standard deviation of the group, so that for binary rewards with
    group success rate p it equals sqrt(p (1 - p)) and A is the standardised Bernoulli residual
    (R - p) / sqrt(p (1 - p)) (the paper's Appendix A). A group with p in {0, 1} gets A = 0.
    """
    group_ids = _require(batch.group_ids, "group_ids", "grpo")
    reward = sequence_rewards(batch.rewards, batch.mask)
    dense, sizes = _group_index(group_ids, "grpo")
    mean = _group_mean(reward, dense, sizes)[dense]
    advantage = reward - mean
    if normalize_std:
        var = _group_mean((reward - mean) ** 2, dense, sizes)[dense]
        advantage = advantage / (var.sqrt() + eps)
    return AdvantageOutput(_broadcast(advantage, batch.mask))


@register("rloo", needs_groups=True, group_size=5)
def rloo_advantage(batch: AdvantageInput) -> AdvantageOutput:
    """RLOO: A_i = R_i - (sum_{j in g} R_j - R_i) / (n_g - 1), the leave-one-out baseline."""
    group_ids = _require(batch.group_ids, "group_ids", "rloo")
    reward = sequence_rewards(batch.rewards, batch.mask)
    dense, sizes = _group_index(group_ids, "rloo")
    n = sizes.to(reward.dtype)[dense]
    total = _group_mean(reward, dense, sizes)[dense] * n
    advantage = reward - (total - reward) / (n - 1)
    return AdvantageOutput(_broadcast(advantage, batch.mask))


@register("remax", needs_greedy_baseline=True)
def remax_advantage(batch: AdvantageInput) -> AdvantageOutput:
    """ReMax: A = R - R_greedy, the reward of a greedy rollout from the same prompt/start."""
    baseline = _require(batch.baseline_rewards, "baseline_rewards", "remax")
    reward = sequence_rewards(batch.rewards, batch.mask)
    return AdvantageOutput(_broadcast(reward - baseline.to(reward.dtype), batch.mask))


@register("reinforce", batch_wide=True, bounds={"baseline": ("mean", "none")})
def reinforce_advantage(
    batch: AdvantageInput, baseline: Literal["mean", "none"] = "mean"
) -> AdvantageOutput:
    """REINFORCE: A = R - mean_batch R (``baseline="mean"``) or A = R (``"none"``)."""
    reward = sequence_rewards(batch.rewards, batch.mask)
    if baseline == "mean":
        reward = reward - reward.mean()
    elif baseline != "none":
        raise UserError(f"unknown reinforce baseline {baseline!r}; valid: mean, none")
    return AdvantageOutput(_broadcast(reward, batch.mask))
