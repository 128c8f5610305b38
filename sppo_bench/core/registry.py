"""The estimator registry: the one list of algorithms and what each needs and declares.

An estimator is a pure function ``fn(batch: AdvantageInput, **params) -> AdvantageOutput``
(``sppo_bench.core.advantages``) registered by name with ``register``; its ``EstimatorSpec`` says
what a trainer provides for it (critic kind, groups, a greedy baseline), its display label, the
paper's per-algorithm LLM settings (``PaperDefaults``) and its parameters' defaults and bounds.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from sppo_bench.core.bounds import Bound
from sppo_bench.core.critics import CRITICS, CriticStrategy
from sppo_bench.errors import UserError


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
class PaperDefaults:
    """The paper's LLM settings of one algorithm (PAPER.md, "LLM experiments"): the in-reward
    KL coefficient, the critic's learning rate and its critic-only warm-up steps (critic
    methods; the others' critic lr is unused)."""

    kl_coef: float = 0.0
    critic_lr: float = 5e-6
    critic_warmup_steps: int = 0


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: the one list of algorithms, and what a trainer provides for it.

    run_name: the algorithm's display name, also its run-folder name in both tracks.
    critic: which critic the trainer trains ("sequence": V(s_0) with BCE; "step": V(s_t) with
        squared error; "step-bce": V(s_t) = sigmoid(v_t) with BCE), a key of ``core.CRITICS``.
    needs_groups: rollouts come in groups of ``group_size`` from one prompt / start state.
    needs_greedy_baseline: the trainer also rolls out the greedy policy per prompt (ReMax).
    group_size: default samples per prompt / start state (the paper's settings).
    params: the estimator's keyword parameters and their defaults (from ``fn``'s signature);
    bounds: each parameter's valid values (``core.bounds``), checked by ``configured_params``.
    batch_wide: rows outside one group share a baseline (REINFORCE's batch mean), so batches of
    independent runs must not be concatenated; otherwise a row's advantage depends only on its
    own row and group, and a trainer may pass several runs' rows (distinct group ids) at once.
    label: the display name in tables and figures (``SPPO``, ``PPO-GAE``, ``ReMax``).
    paper: the paper's per-algorithm LLM settings (``PaperDefaults``).
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
    label: str = ""
    paper: PaperDefaults = field(default_factory=lambda: PaperDefaults())
    bounds: dict[str, Bound] = field(default_factory=dict, hash=False)

    @property
    def critic_strategy(self) -> CriticStrategy | None:
        """The critic this estimator trains (``sppo_bench.core.critics``), or None."""
        return CRITICS.get(self.critic)

    def configured_params(self, table: Mapping[str, Mapping[str, object]]) -> dict[str, object]:
        """``params`` updated by ``table[name or alias]`` of a config's per-estimator table
        (e.g. ``{"ppo-gae": {"lam": 0.95}}``); an unknown estimator or parameter is a one-line
        ``UserError``, as is a value outside the parameter's ``bounds``."""
        unknown_names = [key for key in table if key not in _ALIASES]
        if unknown_names:  # the table's names are checked, not resolved
            get_estimator(unknown_names[0])
        given: dict[str, object] = {}
        for key in (self.name, *self.aliases):
            part = table.get(key) or {}
            if not isinstance(part, Mapping):
                raise UserError(f"estimator_params.{key} must be a mapping, got {part!r}")
            given.update(part)
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            valid = ", ".join(self.params) or "none"
            raise UserError(
                f"unknown parameter {unknown[0]!r} for estimator {self.run_name!r}; valid: {valid}"
            )
        return {**self.params, **{k: self.checked(k, v) for k, v in given.items()}}

    def checked(self, key: str, value: object) -> object:
        """``value`` of parameter ``key`` if it lies in ``bounds[key]`` (an int for a float
        parameter becomes a float); otherwise a one-line ``UserError``."""
        accepts, valid = self.bounds[key]
        if not accepts(value):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise UserError(
                f"estimator_params.{self.run_name}.{key}={shown} is out of range; valid: {valid}"
            )
        default = self.params[key]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
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
    label: str | None = None,
    paper: PaperDefaults | None = None,
    bounds: Mapping[str, Bound] | None = None,
) -> Callable[[Callable[..., AdvantageOutput]], Callable[..., AdvantageOutput]]:
    """Register ``fn`` under ``name`` (and ``aliases``, and ``run_name``) in ``ESTIMATORS``."""

    def decorate(fn: Callable[..., AdvantageOutput]) -> Callable[..., AdvantageOutput]:
        signature = inspect.signature(fn).parameters.values()
        params = {p.name: p.default for p in signature if p.default is not p.empty}
        if set(bounds or {}) != set(params):
            raise ValueError(
                f"estimator {name!r}: bounds {sorted(bounds or {})} != {sorted(params)}"
            )
        display = run_name or name
        names = tuple(a for a in dict.fromkeys((display, *aliases)) if a != name)
        needs = (critic, needs_groups, needs_greedy_baseline, group_size)
        ESTIMATORS[name] = EstimatorSpec(
            name,
            fn,
            *needs,
            names,
            display,
            params,
            batch_wide,
            label or display.upper(),
            paper or PaperDefaults(),
            dict(bounds or {}),
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


def critic_kind(name: str) -> CriticKind | None:
    """The critic kind (``EstimatorSpec.critic``) of the algorithm ``name``, None for a name that
    is not registered (a run folder of another version): what analysis selects runs by."""
    key = _ALIASES.get(name)
    return None if key is None else ESTIMATORS[key].critic


def label(name: str) -> str:
    """The display label of the algorithm ``name`` (``PPO-GAE``); an unregistered name as is."""
    key = _ALIASES.get(name)
    return name if key is None else ESTIMATORS[key].label
