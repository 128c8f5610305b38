"""Suite profiles (``envs/profiles/<name>.yaml``): the algorithms, the number of seeds and, per
task, the training-episode budget and the evaluation interval; optionally named settings variants,
each crossed with the profile's tasks x algorithms x seeds::

    variants:
      lr1e-4: [rl.critic_lr=1e-4]                                   # every algorithm
      lam0.95: {set: [rl.estimator_params.gae.lam=0.95], algos: [ppo-gae]}
      weak: {set: [clone.demo_noise=0.75], tasks: [lunarlander]}   # only these tasks
    base: [sppo]     # algorithms that also run without a variant (default: all; false: none)

A variant's runs live in ``<algo>@<variant>/`` (``sppo_bench.control.variants``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sppo_bench.config import read_yaml
from sppo_bench.control.variants import Variant, check_name
from sppo_bench.core import algorithm_names, get_estimator
from sppo_bench.errors import UserError

PROFILES_DIR = Path(__file__).resolve().parents[1] / "specs" / "profiles"  # envs/profiles

EVAL_EVERY_KEY = "rl.eval_every"  # the trainer-config key the profile's eval interval overrides


@dataclass(frozen=True)
class TaskBudget:
    episodes: int
    eval_every: int
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A loaded profile. ``variants``: declared variants by name; ``base``: the algorithms that
    also run without a variant."""

    name: str
    description: str
    algos: tuple[str, ...]
    seeds: int
    tasks: dict[str, TaskBudget] = field(hash=False)
    variants: dict[str, Variant] = field(default_factory=dict, hash=False)
    base: tuple[str, ...] | None = None  # None: every algorithm


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"profile key {key!r} must be a positive integer, got {value!r}")
    return value


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``quick``, ``standard``, ``paper``) or by YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"unknown profile {name_or_path!r}; valid: {', '.join(available_profiles())} "
                "or a path to a .yaml file"
            )
    data = read_yaml(path)
    allowed = {"description", "algos", "seeds", "tasks", "variants", "base"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]!r} in profile {str(path)!r}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    if isinstance(data.get("algos"), str):  # `algos: sppo` is a string, not a list
        raise UserError(f"profile key 'algos' must be a list, e.g. algos: [{data['algos']}]")
    algos = tuple(validate_algos(tuple(data.get("algos") or ())))
    tasks_data = data.get("tasks")
    if not isinstance(tasks_data, dict) or not tasks_data:
        raise UserError(f"profile {str(path)!r} needs a non-empty 'tasks' mapping")
    tasks = {}
    for task, spec in tasks_data.items():
        if not isinstance(spec, dict) or set(spec) - {"episodes", "eval_every", "overrides"}:
            raise UserError(
                f"profile task {task!r} must map to keys episodes, eval_every[, overrides]"
            )
        tasks[task] = TaskBudget(
            episodes=_positive_int(spec.get("episodes"), f"tasks.{task}.episodes"),
            eval_every=_positive_int(spec.get("eval_every"), f"tasks.{task}.eval_every"),
            overrides=tuple(str(o) for o in spec.get("overrides") or ()),
        )
    base = data.get("base", True)
    if base is True:
        base_algos = None
    elif base is False:
        base_algos = ()
    elif isinstance(base, list):
        base_algos = tuple(get_estimator(str(a)).run_name for a in base)
    else:
        raise UserError(f"profile key 'base' must be true, false or a list of algos, got {base!r}")
    variants = _load_variants(data.get("variants") or {}, str(path))
    for variant in variants.values():
        stray = [t for t in variant.tasks or () if t not in tasks]
        if stray:
            raise UserError(
                f"profile variant {variant.name!r}: task {stray[0]!r} is not one of the "
                f"profile's tasks ({', '.join(tasks)})"
            )
    return Profile(
        name=path.stem,
        description=str(data.get("description", "")),
        algos=algos,
        seeds=_positive_int(data.get("seeds"), "seeds"),
        tasks=tasks,
        variants=variants,
        base=base_algos,
    )


def _load_variants(data: Any, where: str) -> dict[str, Variant]:
    """``variants:`` of a profile: ``name: [KEY=VALUE, ...]`` or ``name: {set: [...], algos:
    [...], tasks: [...]}``; one-line errors for anything else."""
    if not isinstance(data, dict):
        raise UserError(f"profile {where!r}: 'variants' must map names to lists of KEY=VALUE")
    variants = {}
    for name, body in data.items():
        name = check_name(str(name))
        algos = tasks = None
        if isinstance(body, dict):
            unknown = sorted(set(body) - {"set", "algos", "tasks"})
            if unknown:
                raise UserError(
                    f"profile variant {name!r}: unknown key {unknown[0]!r}; "
                    "valid: algos, set, tasks"
                )
            if isinstance(body.get("algos"), str):
                raise UserError(f"profile variant {name!r}: 'algos' must be a list of names")
            algos = (
                tuple(validate_algos(list(body.get("algos") or ()))) if "algos" in body else None
            )
            if "tasks" in body:
                tasks = body["tasks"]
                if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
                    raise UserError(f"profile variant {name!r}: 'tasks' must be a list of names")
                tasks = tuple(tasks)
            body = body.get("set") or []
        if not isinstance(body, list) or not all(isinstance(o, str) for o in body):
            raise UserError(f"profile variant {name!r} must be a list of KEY=VALUE strings")
        variants[name] = Variant(name, tuple(body), algos, tasks)
    return variants


def validate_algos(algos: Sequence[str]) -> list[str]:
    """The run names of ``algos`` (names or aliases of registered estimators)."""
    if not algos:
        raise UserError(f"no algorithms given; valid: {', '.join(algorithm_names())}")
    return [get_estimator(a).run_name for a in algos]
