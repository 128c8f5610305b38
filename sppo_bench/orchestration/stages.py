"""A suite's expert and clone taken from another runs folder (``suite run --stages-from DIR``).

Retraining an expert gives another expert, and so another clone: a published cell is rerun from
the exact stage folders that made it. ``DIR`` is shaped like a runs folder
(``DIR/control/<task>/<stage folder>``, e.g. ``expert``, ``clone@p0.99``). For every stage folder
that the suite's unfinished runs need (``plan.RunSpec.stage_key``):

- DIR must hold it finished (``done``), with a stored ``config.yaml`` equal to what the suite
  asks for in every section the stage is built from (``variants.STAGE_SECTIONS``; older stored
  configs are read as today's), else a one-line ``UserError`` naming the folder and what DIR
  holds, or the first setting that differs;
- a runs folder that already holds it finished keeps it if its ``policy.pt`` is DIR's byte for
  byte, and is refused otherwise (a suite never mixes its own stages with DIR's);
- otherwise it is copied: into a temporary folder beside the target, then renamed into place
  (``io.replace_dir``; an unfinished folder there is replaced), under the lock that the stage
  builders hold (``pipeline.ensure_clone``).

Every check runs before anything is copied or trained, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppo_bench.control.variants import STAGE_SECTIONS, all_overrides, split_folder
from sppo_bench.errors import UserError
from sppo_bench.io import replace_dir, waiting_lock
from sppo_bench.orchestration.plan import RunSpec, stage_overrides
from sppo_bench.rundir import stage_dir

PRODUCT = "policy.pt"  # what a stage makes: two folders with equal bytes here are one stage
COPY = "copy"  # the runs folder lacks the stage: it comes from DIR
SAME = "same"  # the runs folder holds it finished, byte-equal to DIR's


@dataclass(frozen=True)
class StageImport:
    """One stage folder of a suite and where it comes from: ``action`` is ``COPY`` (from
    ``source`` to ``target``) or ``SAME`` (``target`` is finished and equal to ``source``)."""

    task: str
    folder: str
    source: Path
    target: Path
    action: str

    def describe(self, stages_from: Path) -> str:
        """One dry-run line: which stage, and whether it is copied from DIR or already there."""
        where = f"{self.task}/{self.folder}"
        if self.action == COPY:
            return f"stage   {where}: from {stages_from} (stored config matches)"
        return f"stage   {where}: found finished in the runs folder, the same as {stages_from}'s"


def _finished(path: Path) -> list[str]:
    """The finished stage folders (``done`` directly inside: not run folders) under ``path``."""
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.iterdir() if (p / "done").is_file())


def _check_source(source: Path, stages_from: Path, task: str, folder: str, spec: Any) -> None:
    from sppo_bench.control.expert import stage_config_difference

    if not (source / "done").is_file():
        holds = ", ".join(_finished(stages_from / "control" / task)) or "none"
        raise UserError(
            f"--stages-from {str(stages_from)!r} has no finished control/{task}/{folder} "
            f"(finished {task} stage folders there: {holds})"
        )
    if not (source / "config.yaml").is_file():
        raise UserError(f"--stages-from: {str(source)!r} holds no config.yaml to check")
    stage = split_folder(folder)[0]
    differ = stage_config_difference(source, spec, STAGE_SECTIONS[stage])
    if differ:
        raise UserError(
            f"--stages-from: {str(source)!r} was built with other settings than this suite "
            f"asks for: {differ}"
        )


def plan_stage_imports(
    specs: Sequence[RunSpec], runs_dir: Path, stages_from: Path
) -> dict[tuple[str, str], StageImport]:
    """(task, stage folder) -> where each stage folder of ``specs`` comes from (pass the runs
    still to do: a finished run needs no stage). A one-line ``UserError`` for a stage folder DIR
    lacks or built with other settings, or one the runs folder holds finished but different from
    DIR's."""
    from sppo_bench.control.spec import load_spec

    stages_from, runs_dir = Path(stages_from), Path(runs_dir)
    if not (stages_from / "control").is_dir():
        raise UserError(
            f"--stages-from {str(stages_from)!r} is not a runs folder (no control/<task>/ in it)"
        )
    found: dict[tuple[str, str], StageImport] = {}
    for spec in specs:
        task, *folders = spec.stage_key
        wanted = None
        for folder in folders:
            if (task, folder) in found:
                continue
            if wanted is None:
                wanted = load_spec(task, all_overrides(stage_overrides(spec), spec.variant))
            source, target = stage_dir(stages_from, task, folder), stage_dir(runs_dir, task, folder)
            _check_source(source, stages_from, task, folder, wanted)
            action = COPY
            if (target / "done").is_file():
                if not _same_product(source, target):
                    raise UserError(
                        f"{str(target)!r} holds another {split_folder(folder)[0]} than "
                        f"{str(source)!r} ({PRODUCT} differs); stages are never mixed: use "
                        "another --runs-dir or drop --stages-from"
                    )
                action = SAME
            found[task, folder] = StageImport(task, folder, source, target, action)
    return found


def _same_product(a: Path, b: Path) -> bool:
    pa, pb = a / PRODUCT, b / PRODUCT
    return pa.is_file() and pb.is_file() and pa.read_bytes() == pb.read_bytes()


def import_stage(item: StageImport, runs_dir: Path) -> bool:
    """Copy ``item`` into the runs folder (atomic: a temporary folder, then a rename) unless a
    finished one is there by now (another suite's import); True where this call copied it."""
    if item.action != COPY:
        return False
    with waiting_lock(stage_dir(runs_dir, item.task, ".stages.lock")):
        if (item.target / "done").is_file():
            if not _same_product(item.source, item.target):
                raise UserError(f"{str(item.target)!r} was finished meanwhile with another stage")
            return False
        replace_dir(item.target, lambda new: shutil.copytree(item.source, new, dirs_exist_ok=True))
    return True
