"""A suite's runs: one ``RunSpec`` per (task, algorithm, variant, seed) of a profile, their state
on disk, and how they are cut into jobs (seeds of one task and algorithm, seed-stacked).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppo_bench.control.variants import Variant, check_name, folder_name, stage_folder
from sppo_bench.errors import UserError
from sppo_bench.orchestration.profile import EVAL_EVERY_KEY, Profile, validate_algos
from sppo_bench.rundir import RunDir

MAX_SEEDS = 10_000  # seeds of one suite: a larger plan is a typo, and would fill memory


@dataclass(frozen=True)
class RunSpec:
    """One RL run: what ``train_run`` is called with (``variant`` only where not None)."""

    task: str
    algo: str
    seed: int
    episodes: int
    overrides: tuple[str, ...]
    variant: Variant | None = None

    def run_dir(self, runs_dir: Path) -> Path:
        from sppo_bench.control.runs import run_dir_for

        return run_dir_for(Path(runs_dir), self.task, self.algo, self.seed, self.variant)

    @property
    def label(self) -> str:
        """``<algo>`` or ``<algo>@<variant>``: the run's folder under its task."""
        return folder_name(self.algo, self.variant)

    @property
    def stage_key(self) -> tuple[str, str, str]:
        """(task, expert folder, clone folder): runs with one key share their stages."""
        return (
            self.task,
            stage_folder("expert", self.variant),
            stage_folder("clone", self.variant),
        )

    def __str__(self) -> str:
        return f"{self.task}/{self.label}/seed{self.seed}"


def select_variants(
    profile: Profile, names: Sequence[str] | None, overrides: Sequence[str] = ()
) -> tuple[bool, list[Variant]]:
    """(run the no-variant runs?, variants to run) for ``suite run --variant NAME [--set ...]``.

    No names: the base runs and every declared variant. Names without overrides: those declared
    variants only. One name with overrides: an ad-hoc variant of that name (not a declared one).
    """
    if not names:
        if overrides:
            raise UserError("--set needs --variant NAME (the name of the variant it defines)")
        return True, list(profile.variants.values())
    if overrides:
        if len(names) != 1:
            raise UserError("--set defines one variant: give exactly one --variant NAME")
        if names[0] in profile.variants:
            raise UserError(
                f"variant {names[0]!r} is declared by profile {profile.name!r}; "
                "pick another name for an ad-hoc variant or drop --set"
            )
        return False, [Variant(check_name(names[0]), tuple(overrides))]
    unknown = [n for n in names if n not in profile.variants]
    if unknown:
        valid = ", ".join(profile.variants) or "none declared"
        raise UserError(
            f"unknown variant {unknown[0]!r} for profile {profile.name!r}; valid: {valid} "
            "(or define one with --set)"
        )
    return False, [profile.variants[n] for n in names]


def plan_runs(
    profile: Profile,
    tasks: Sequence[str] | None = None,
    algos: Sequence[str] | None = None,
    seeds: int | None = None,
    variants: Sequence[str] | None = None,
    variant_overrides: Sequence[str] = (),
) -> list[RunSpec]:
    """The runs of ``profile``, restricted to ``tasks`` / ``algos``, with ``seeds`` seeds 0..N-1:
    each algorithm without a variant (where ``profile.base`` allows) and with each of its
    variants (``select_variants``)."""
    tasks = list(tasks) if tasks else list(profile.tasks)
    bad = [t for t in tasks if t not in profile.tasks]
    if bad:
        raise UserError(
            f"unknown task {bad[0]!r} for profile {profile.name!r}; "
            f"valid: {', '.join(profile.tasks)}"
        )
    algos = validate_algos(list(algos) if algos else list(profile.algos))
    n_seeds = profile.seeds if seeds is None else seeds
    if n_seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {n_seeds}")
    if n_seeds > MAX_SEEDS:
        raise UserError(f"--seeds {n_seeds} is out of range; valid: 1 to {MAX_SEEDS:,}")
    with_base, chosen = select_variants(profile, variants, variant_overrides)
    specs = []
    for task in tasks:
        budget = profile.tasks[task]
        overrides = (f"{EVAL_EVERY_KEY}={budget.eval_every}", *budget.overrides)
        for algo in algos:
            arms: list[Variant | None] = [v for v in chosen if v.applies_to(algo, task)]
            if with_base and (profile.base is None or algo in profile.base):
                arms.insert(0, None)
            for variant in arms:
                for seed in range(n_seeds):
                    specs.append(RunSpec(task, algo, seed, budget.episodes, overrides, variant))
    if not specs:
        raise UserError(f"profile {profile.name!r}: no run matches the chosen algos and variants")
    return specs


def check_runs_match(specs: Sequence[RunSpec], runs_dir: Path) -> None:
    """A one-line ``UserError`` if any existing run folder of ``specs`` was made with other
    settings (its stored config differs from what this suite would train)."""
    from sppo_bench.control.runs import RUNS_DIR_REMEDY, requested_config
    from sppo_bench.control.spec import upgrade_stored_spec

    for spec in specs:
        run = RunDir(spec.run_dir(runs_dir))
        if run.config_path.is_file():
            _, _, config = requested_config(
                spec.task, spec.algo, spec.seed, spec.episodes, spec.overrides, spec.variant
            )
            run.check_config(config, upgrade_stored_spec, remedy=RUNS_DIR_REMEDY)


def run_state(spec: RunSpec, runs_dir: Path) -> str:
    """``"done"`` (marker present), ``"resume"`` (directory exists, unfinished) or ``"new"``."""
    run = RunDir(spec.run_dir(runs_dir))
    if run.done:
        return "done"
    return "resume" if run.path.is_dir() else "new"


def stack_jobs(specs: Sequence[RunSpec], stack: int) -> list[list[RunSpec]]:
    """``specs`` cut into jobs: runs that differ only in their seed, at most ``stack`` per job."""
    groups: dict[tuple[Any, ...], list[RunSpec]] = {}
    for spec in specs:
        key = (spec.task, spec.label, spec.episodes, spec.overrides, spec.variant)
        groups.setdefault(key, []).append(spec)
    return [g[i : i + stack] for g in groups.values() for i in range(0, len(g), stack)]


def stage_overrides(spec: RunSpec) -> tuple[str, ...]:
    """The profile's overrides of a run minus the evaluation interval: what its stages share."""
    return tuple(o for o in spec.overrides if not o.startswith(f"{EVAL_EVERY_KEY}="))
