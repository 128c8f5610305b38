"""The first two stages as one call: the task's expert, then its cloned policy, each cached."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sppo_bench.control.cloning import clone_expert
from sppo_bench.control.expert import train_expert
from sppo_bench.control.tasks import get_task
from sppo_bench.control.variants import Variant
from sppo_bench.io import waiting_lock
from sppo_bench.rundir import stage_dir


def ensure_clone(
    task: str,
    runs_dir: Path = Path("runs"),
    overrides: Sequence[str] = (),
    progress: bool = False,
    variant: Variant | None = None,
) -> Path:
    """Train the expert if its folder has no ``done`` marker, then clone it likewise.

    Returns the clone folder (``runs/control/<task>/clone``, or ``clone@<variant>`` for a
    variant that changes the clone's settings), whose ``policy.pt`` the task's RL runs (of that
    variant) start from. Another process building the same task's stages is waited for (its
    finished stages are then reused).
    """
    with waiting_lock(stage_dir(runs_dir, get_task(task).name, ".stages.lock")):
        train_expert(task, Path(runs_dir), overrides, progress=progress, variant=variant)
        return clone_expert(task, Path(runs_dir), overrides, progress=progress, variant=variant)
