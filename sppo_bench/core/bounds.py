"""Value bounds of settings, declared beside the settings they bound (``core.ppo.ppo_bounds``,
the estimator registry's ``EstimatorSpec.bounds``, a task spec's or a recipe's table) and checked
by the config layer where a setting is read: ``check_bounds(config, {"rl.lr": LEARNING_RATE})``.

A ``Bound`` is ``(accepts(value) -> bool, "what is valid")``.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Any

from sppo_bench.errors import UserError

Bound = tuple[typing.Callable[[Any], bool], str]  # (accepts value, what is valid)


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def at_least(n: int, most: int | None = None) -> Bound:
    """An integer >= ``n`` (and <= ``most``: counts whose memory or time grows with them)."""
    high = math.inf if most is None else most
    valid = f"an integer >= {n}" if most is None else f"an integer from {n} to {most:,}"
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and n <= v <= high), valid


FINITE: Bound = _finite, "a finite number"
POSITIVE: Bound = (lambda v: _finite(v) and v > 0), "a finite number > 0"
NON_NEGATIVE: Bound = (lambda v: _finite(v) and v >= 0), "a finite number >= 0"
UNIT: Bound = (lambda v: _finite(v) and 0 < v <= 1), "a number in (0, 1]"
PROBABILITY: Bound = (lambda v: _finite(v) and 0 <= v <= 1), "a number in [0, 1]"
ABOVE_ONE: Bound = (lambda v: _finite(v) and v > 1), "a number > 1"
LEARNING_RATE: Bound = (lambda v: _finite(v) and 0 < v <= 10), "a number in (0, 10]"


BOOLEAN: Bound = (lambda v: isinstance(v, bool)), "true or false"


def one_of(*values: Any) -> Bound:
    """Exactly one of ``values`` (strings, say)."""
    return (lambda v: isinstance(v, str | int | float) and v in values), "one of " + ", ".join(
        map(str, values)
    )


def optional(bound: Bound) -> Bound:
    """``bound``, or null."""
    accepts, valid = bound
    return (lambda v: v is None or accepts(v)), f"null or {valid}"


def check_bounds(config: Any, bounds: Mapping[str, Bound]) -> None:
    """A one-line ``UserError`` for the first dotted key of ``bounds`` whose value in the
    (nested dataclass) ``config`` is out of range, naming the value and what is valid."""
    for key, (accepts, valid) in bounds.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if not accepts(value):
            shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
            raise UserError(f"{key}={shown} is out of range; valid: {valid}")
