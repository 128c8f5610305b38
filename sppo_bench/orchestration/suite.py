"""The multi-seed suite's scheduler: ``run_suite`` runs a plan's runs (``orchestration.plan``
of a ``orchestration.profile``) on an executor (``orchestration.executors``):

1. it skips every run whose directory already holds the ``done`` marker;
2. it runs each remaining task's cached expert and behaviour-cloning stages once
   (``sppo_bench.control.pipeline.ensure_clone``, with the profile's overrides for the task, so
   a profile can set ``clone.*`` fields), before any RL run of that task; once more per variant
   that changes ``expert.*``, ``policy.*`` or ``clone.*`` (its own ``clone@<variant>``). With
   ``stages_from``, stage folders the runs folder lacks are first copied from that folder
   (``orchestration.stages``), so these stages are found finished, not trained;
3. it runs the RL runs, up to ``stack`` seeds of one (task, algorithm, variant) per job, trained
   seed-stacked in one process (``sppo_bench.control.trainer.train_seeds``; ``stack=1``: one
   ``train_run`` per job); either resumes an unfinished run from its latest checkpoint. Runs or
   stages that another process (a second suite) is writing are waited for, then found done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sppo_bench.errors import UserError
from sppo_bench.orchestration.executors import (
    CloneFn,
    RunFn,
    SeedsFn,
    default_clone_fn,
    default_run_fn,
    default_seeds_fn,
    execute_clone,
    execute_run,
    execute_stack,
    make_executor,
)
from sppo_bench.orchestration.plan import (
    RunSpec,
    check_runs_match,
    run_state,
    stack_jobs,
    stage_overrides,
)
from sppo_bench.orchestration.stages import StageImport, import_stage, plan_stage_imports
from sppo_bench.rundir import stage_dir


def _job_name(specs: Sequence[RunSpec]) -> str:
    if len(specs) == 1:
        return str(specs[0])
    return f"{specs[0].task}/{specs[0].label}/seeds {','.join(str(s.seed) for s in specs)}"


def _stages(key: tuple[str, str, str]) -> str:
    """``task`` or ``task (expert@v, clone@v)`` for progress lines."""
    task, expert, clone = key
    return task if (expert, clone) == ("expert", "clone") else f"{task} ({expert}, {clone})"


def stage_state(runs_dir: Path, key: tuple[str, str, str]) -> str:
    """What the stages of ``key`` (task, expert folder, clone folder) will do: both found
    finished (reused), or which of them train now."""
    task, expert, clone = key
    found = [(stage_dir(runs_dir, task, f) / "done").is_file() for f in (expert, clone)]
    if all(found):
        return "expert and clone found finished (reused)"
    if found[0]:
        return "expert found finished (reused); cloning now"
    return "training the expert, then cloning (the bar counts RL runs, which follow)"


def _clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour) of the suite's elapsed time, for progress lines."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class SuiteResult:
    """What a suite invocation did: runs skipped as done, finished now, failed (with reason)."""

    skipped: list[RunSpec] = field(default_factory=list)
    finished: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)
    wall_time_s: float = 0.0


def run_suite(
    specs: Sequence[RunSpec],
    runs_dir: Path,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    run_fn: RunFn | None = None,
    clone_fn: CloneFn | None = None,
    stack: int = 1,
    seeds_fn: SeedsFn | None = None,
    stages_from: Path | None = None,
) -> SuiteResult:
    """Run every unfinished spec; the clone stage of a task runs once before its RL runs.

    ``stack``: seeds per job (``seeds_fn``, default ``train_seeds``); 1: one ``run_fn`` per run.
    A failing run is recorded and the others go on (in a stacked job, the seeds it finished
    count as finished); a failing clone stage fails that task's runs. ``stages_from``: a runs
    folder whose expert and clone folders are copied in before a task's stages would be trained
    (``orchestration.stages``; checked before anything starts).
    """
    if stack < 1:
        raise UserError(f"stack must be at least 1, got {stack}")
    start = time.monotonic()
    runs_dir = Path(runs_dir).resolve()
    imports: dict[tuple[str, str], StageImport] = {}
    if stages_from is not None:
        pending = [s for s in specs if run_state(s, runs_dir) != "done"]
        imports = plan_stage_imports(pending, runs_dir, stages_from)
    runs_dir.mkdir(parents=True, exist_ok=True)
    clone_fn = clone_fn or default_clone_fn
    workers = workers or max(1, os.cpu_count() or 1)
    result = SuiteResult()
    if run_fn is None:  # the real trainer's stored configs (a custom run_fn keeps its own)
        check_runs_match(specs, runs_dir)
    run_fn = run_fn or default_run_fn
    seeds_fn = seeds_fn or default_seeds_fn
    todo: dict[tuple[str, str, str], list[RunSpec]] = {}  # runs by the stages they share
    for spec in specs:
        if run_state(spec, runs_dir) == "done":
            result.skipped.append(spec)
        else:
            todo.setdefault(spec.stage_key, []).append(spec)
    if not todo:
        result.wall_time_s = time.monotonic() - start
        return result
    pool = make_executor(executor, workers, ray_address)
    progress = workers == 1 and executor == "local"
    jobs: dict[Any, tuple[str, Any]] = {}
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="suite runs", unit="run")
    try:
        for key, group in todo.items():
            task, first = key[0], group[0]
            owner = first.variant if key[1:] != ("expert", "clone") else None
            overrides = stage_overrides(first)
            for folder in key[1:] if imports else ():
                if import_stage(imports[task, folder], runs_dir):
                    bar.write(f"[{_clock(0)}] {task}/{folder}: copied from {stages_from}")
            job = pool.submit(execute_clone, clone_fn, task, runs_dir, overrides, owner)
            jobs[job] = ("clone", key)
            bar.write(f"[{_clock(0)}] {_stages(key)}: {stage_state(runs_dir, key)}")
        while jobs:
            stages = [_stages(item) for kind, item in jobs.values() if kind == "clone"]
            bar.set_postfix_str(f"expert/clone: {', '.join(stages)}" if stages else "")
            for handle in pool.wait_any(list(jobs), timeout=1.0):  # the clock ticks meanwhile
                kind, item = jobs.pop(handle)
                try:
                    pool.result(handle)
                    error = None
                except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                clock = _clock(time.monotonic() - start)
                if kind == "clone":
                    status = "ready" if error is None else f"FAILED: {error}"
                    bar.write(f"[{clock}] {_stages(item)}: expert and clone {status}")
                    for group in stack_jobs(todo[item], stack):
                        if error is not None:
                            result.failed += [(s, f"clone stage failed: {error}") for s in group]
                            bar.update(len(group))
                        elif len(group) == 1:
                            job = pool.submit(execute_run, run_fn, group[0], runs_dir, progress)
                            jobs[job] = ("runs", group)
                        else:
                            job = pool.submit(execute_stack, seeds_fn, group, runs_dir, progress)
                            jobs[job] = ("runs", group)
                else:
                    for spec in item:
                        ok = error is None or run_state(spec, runs_dir) == "done"
                        if ok:
                            result.finished.append(spec)
                        else:
                            result.failed.append((spec, error))
                    bar.write(
                        f"[{clock}] {_job_name(item)}: {'done' if error is None else 'FAILED'}"
                    )
                    bar.update(len(item))
    except KeyboardInterrupt:
        getattr(pool, "kill", pool.shutdown)()
        raise
    finally:
        bar.close()
        pool.shutdown()
    result.wall_time_s = time.monotonic() - start
    return result
