"""Named settings variants of control runs, and the folders they live in.

A variant is a name plus ``key=value`` overrides of the task spec (``rl.critic_lr=1e-4``,
``rl.estimator_params.ppo-gae.lam=0.95``, ``clone.demo_noise=0.5``). Its runs live beside the
plain ones, keyed by the name::

    runs/control/<task>/<algo>/seed<k>/              no variant (the layout of every older run)
    runs/control/<task>/<algo>@<variant>/seed<k>/    a variant's run

A stage (``expert``, ``clone``) is shared by every variant of a task unless the variant's own
overrides touch a section the stage is built from (``STAGE_SECTIONS``); then it lives in
``<stage>@<variant>/``, so a clone made with other settings is never reused (and the stored-config
check of ``expert.check_stage_config`` refuses a folder built with other values).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sppo_bench.errors import UserError
from sppo_bench.rundir import stage_dir

SEPARATOR = "@"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
NAME_RULE = "1-64 characters from letters, digits, '.', '_', '+', '-', starting with a letter/digit"
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "expert": ("expert",),
    "clone": ("expert", "policy", "clone"),
}


def check_name(name: str) -> str:
    """``name`` if it is a valid variant name (filesystem-safe, no ``@`` or ``/``), else a
    one-line ``UserError``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"variant name {name!r} is not valid; use {NAME_RULE}")
    return name


def sections(overrides: Sequence[str]) -> set[str]:
    """The top-level spec sections that ``key=value`` overrides touch."""
    return {o.split("=", 1)[0].split(".", 1)[0].strip() for o in overrides}


@dataclass(frozen=True)
class Variant:
    """A named set of spec overrides; ``algos`` / ``tasks``: the run names and tasks it applies
    to (None = all)."""

    name: str
    overrides: tuple[str, ...] = ()
    algos: tuple[str, ...] | None = None
    tasks: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        bad = [o for o in self.overrides if "=" not in o or not o.split("=", 1)[0].strip()]
        if bad:
            raise UserError(f"variant {self.name!r}: override {bad[0]!r} is not KEY=VALUE")

    def applies_to(self, algo: str, task: str | None = None) -> bool:
        """True where the variant runs for ``algo`` (and ``task``, where given)."""
        if task is not None and self.tasks is not None and task not in self.tasks:
            return False
        return self.algos is None or algo in self.algos

    def owns_stage(self, stage: str) -> bool:
        """True where this variant's overrides change what ``stage`` is built from."""
        return bool(sections(self.overrides) & set(STAGE_SECTIONS[stage]))


def folder_name(name: str, variant: Variant | str | None) -> str:
    """``name`` (an algorithm's run name or a stage) with the variant suffix ``@<variant>``, or
    ``name`` alone without a variant."""
    if variant is None:
        return name
    label = variant.name if isinstance(variant, Variant) else check_name(variant)
    return f"{name}{SEPARATOR}{label}"


def stage_folder(stage: str, variant: Variant | None) -> str:
    """``stage`` or ``stage@<variant>`` where the variant owns the stage (see module doc)."""
    return folder_name(stage, variant if variant and variant.owns_stage(stage) else None)


def split_folder(folder: str) -> tuple[str, str | None]:
    """``"ppo-gae@lam0.95"`` -> ``("ppo-gae", "lam0.95")``; ``"sppo"`` -> ``("sppo", None)``."""
    base, sep, variant = folder.partition(SEPARATOR)
    return base, (variant if sep else None)


def all_overrides(overrides: Sequence[str], variant: Variant | None) -> list[str]:
    """The shared overrides, then the variant's (the variant's win)."""
    return [*overrides, *(variant.overrides if variant else ())]


def variant_stage_dir(runs_dir: Path, task: str, stage: str, variant: Variant | None) -> Path:
    """The folder of ``stage`` (``expert``, ``clone``) that runs of ``variant`` use:
    ``<stage>@<variant>`` where the variant's overrides change the stage, else the shared one."""
    return stage_dir(runs_dir, task, stage_folder(stage, variant))
