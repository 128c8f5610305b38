"""The multi-seed suite runner: tasks x algorithms x seeds from a named profile.

A profile (``envs/profiles/<name>.yaml``) lists the algorithms, the number of seeds and, per task,
the training-episode budget and the evaluation interval. ``run_suite`` then

1. skips every run whose directory already holds the ``done`` marker;
2. runs each remaining task's cached expert and behaviour-cloning stages once
   (``sppo_bench.control.pipeline.ensure_clone``, with the profile's overrides for the task, so
   a profile can set ``clone.*`` fields), before any RL run of that task;
3. runs the RL runs on an executor: a local process pool (one job per worker, one worker per
   core by default), in-process when ``workers == 1``, or Ray tasks (``executor="ray"``; on a
   cluster, ``runs_dir`` must be on a filesystem every node shares). A job is up to ``stack``
   seeds of one (task, algorithm), trained seed-stacked in one process
   (``sppo_bench.control.trainer.train_seeds``; ``stack=1``: one ``train_run`` per job); either
   resumes an unfinished run from its latest checkpoint.

Both stage functions are imported lazily and can be injected (tests, other trainers).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sppo_bench.config import read_yaml
from sppo_bench.core import algorithm_names, get_estimator
from sppo_bench.errors import UserError
from sppo_bench.rundir import RunDir

PROFILES_DIR = Path(__file__).resolve().parents[1] / "specs" / "profiles"  # envs/profiles
EVAL_EVERY_KEY = "rl.eval_every"  # the trainer-config key the profile's eval interval overrides
EXECUTORS = ("local", "ray")

RunFn = Callable[..., Path]  # train_run(task, algo, seed, runs_dir, episodes, overrides, progress)
SeedsFn = Callable[..., list[Path]]  # train_seeds(task, algo, seeds, runs_dir, episodes, ...)
CloneFn = Callable[[str, Path, Sequence[str]], Path]  # ensure_clone(task, runs_dir, overrides)


@dataclass(frozen=True)
class TaskBudget:
    episodes: int
    eval_every: int
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    algos: tuple[str, ...]
    seeds: int
    tasks: dict[str, TaskBudget] = field(hash=False)


@dataclass(frozen=True)
class RunSpec:
    """One RL run: what ``train_run`` is called with."""

    task: str
    algo: str
    seed: int
    episodes: int
    overrides: tuple[str, ...]

    def run_dir(self, runs_dir: Path) -> Path:
        from sppo_bench.control.trainer import run_dir_for

        return run_dir_for(Path(runs_dir), self.task, self.algo, self.seed)

    def __str__(self) -> str:
        return f"{self.task}/{self.algo}/seed{self.seed}"


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
    allowed = {"description", "algos", "seeds", "tasks"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]!r} in profile {str(path)!r}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
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
    return Profile(
        name=path.stem,
        description=str(data.get("description", "")),
        algos=algos,
        seeds=_positive_int(data.get("seeds"), "seeds"),
        tasks=tasks,
    )


def validate_algos(algos: Sequence[str]) -> list[str]:
    """The run names of ``algos`` (names or aliases of registered estimators)."""
    if not algos:
        raise UserError(f"no algorithms given; valid: {', '.join(algorithm_names())}")
    return [get_estimator(a).run_name for a in algos]


def plan_runs(
    profile: Profile,
    tasks: Sequence[str] | None = None,
    algos: Sequence[str] | None = None,
    seeds: int | None = None,
) -> list[RunSpec]:
    """The runs of ``profile``, restricted to ``tasks`` / ``algos``, with ``seeds`` seeds 0..N-1."""
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
    specs = []
    for task in tasks:
        budget = profile.tasks[task]
        overrides = (f"{EVAL_EVERY_KEY}={budget.eval_every}", *budget.overrides)
        for algo in algos:
            for seed in range(n_seeds):
                specs.append(RunSpec(task, algo, seed, budget.episodes, overrides))
    return specs


def check_runs_match(specs: Sequence[RunSpec], runs_dir: Path) -> None:
    """A one-line ``UserError`` if any existing run folder of ``specs`` was made with other
    settings (its stored config differs from what this suite would train)."""
    from sppo_bench.control.trainer import (
        RUNS_DIR_REMEDY,
        requested_config,
        upgrade_stored_config,
    )

    for spec in specs:
        run = RunDir(spec.run_dir(runs_dir))
        if run.config_path.is_file():
            _, _, config = requested_config(
                spec.task, spec.algo, spec.seed, spec.episodes, spec.overrides
            )
            run.check_config(config, upgrade_stored_config, remedy=RUNS_DIR_REMEDY)


def run_state(spec: RunSpec, runs_dir: Path) -> str:
    """``"done"`` (marker present), ``"resume"`` (directory exists, unfinished) or ``"new"``."""
    run = RunDir(spec.run_dir(runs_dir))
    if run.done:
        return "done"
    return "resume" if run.path.is_dir() else "new"


def default_run_fn(*args: Any, **kwargs: Any) -> Path:
    from sppo_bench.control.trainer import train_run

    return train_run(*args, **kwargs)


def default_seeds_fn(*args: Any, **kwargs: Any) -> list[Path]:
    from sppo_bench.control.trainer import train_seeds

    return train_seeds(*args, **kwargs)


def default_clone_fn(task: str, runs_dir: Path, overrides: Sequence[str] = ()) -> Path:
    from sppo_bench.control.pipeline import ensure_clone

    return ensure_clone(task, runs_dir, overrides)


def die_with_parent() -> None:
    """Pool-worker initializer: the kernel kills this worker when the suite's process dies
    (Linux ``PR_SET_PDEATHSIG``), so a killed suite leaves no run training in the background."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGKILL)


def _limit_threads() -> None:
    """One compute thread per run: the pool already uses every core."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def execute_run(run_fn: RunFn, spec: RunSpec, runs_dir: Path, progress: bool) -> Path:
    """Worker body for one RL run."""
    _limit_threads()
    return Path(
        run_fn(
            spec.task,
            spec.algo,
            spec.seed,
            runs_dir=Path(runs_dir),
            episodes=spec.episodes,
            overrides=list(spec.overrides),
            progress=progress,
        )
    )


def execute_stack(seeds_fn: SeedsFn, specs: Sequence[RunSpec], runs_dir: Path, progress: bool):
    """Worker body for one job of several seeds of one (task, algorithm), seed-stacked."""
    _limit_threads()
    first = specs[0]
    return seeds_fn(
        first.task,
        first.algo,
        [spec.seed for spec in specs],
        runs_dir=Path(runs_dir),
        episodes=first.episodes,
        overrides=list(first.overrides),
        progress=progress,
    )


def stack_jobs(specs: Sequence[RunSpec], stack: int) -> list[list[RunSpec]]:
    """``specs`` cut into jobs: runs that differ only in their seed, at most ``stack`` per job."""
    groups: dict[tuple[Any, ...], list[RunSpec]] = {}
    for spec in specs:
        key = (spec.task, spec.algo, spec.episodes, spec.overrides)
        groups.setdefault(key, []).append(spec)
    return [g[i : i + stack] for g in groups.values() for i in range(0, len(g), stack)]


def stage_overrides(spec: RunSpec) -> tuple[str, ...]:
    """The profile's overrides of a run minus the evaluation interval: what its stages share."""
    return tuple(o for o in spec.overrides if not o.startswith(f"{EVAL_EVERY_KEY}="))


def execute_clone(
    clone_fn: CloneFn, task: str, runs_dir: Path, overrides: Sequence[str] = ()
) -> Path:
    """Worker body for one task's expert + behaviour-cloning stages."""
    _limit_threads()
    return Path(clone_fn(task, Path(runs_dir), list(overrides)))


class _InlineExecutor:
    """Runs each job at submission, in this process (``workers == 1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported per run by the caller
            future.set_exception(exc)
        return future

    def wait_any(self, handles: list[Any]) -> list[Any]:
        return [h for h in handles if h.done()]

    def result(self, handle: Future) -> Any:
        return handle.result()

    def shutdown(self) -> None:
        pass


class _PoolExecutor(_InlineExecutor):
    """A spawn-context process pool: one run per worker process."""

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=get_context("spawn"), initializer=die_with_parent
        )

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self.pool.submit(fn, *args)

    def wait_any(self, handles: list[Any]) -> list[Any]:
        return list(wait(handles, return_when=FIRST_COMPLETED).done)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def kill(self) -> None:
        """Stop at once (Ctrl-C): running runs die; a rerun resumes them from checkpoints."""
        for process in list(getattr(self.pool, "_processes", {}).values()):
            process.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _RayExecutor:
    """Ray tasks (one CPU each) on a local instance or the cluster at ``address``."""

    def __init__(self, workers: int, address: str | None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(
                "--executor ray needs Ray: pip install 'sppo-bench[ray]' (or 'ray[default]')"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # local instance: workers import this checkout, not another installed copy
                path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
                ray.init(
                    num_cpus=workers,
                    include_dashboard=False,
                    log_to_driver=False,
                    runtime_env={"env_vars": {"PYTHONPATH": path}},
                )
        self.remote = {}

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        return self.remote[fn].remote(*args)

    def wait_any(self, handles: list[Any]) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def result(self, handle: Any) -> Any:
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as exc:  # re-raise what the task raised
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def shutdown(self) -> None:
        pass


def _job_name(specs: Sequence[RunSpec]) -> str:
    if len(specs) == 1:
        return str(specs[0])
    return f"{specs[0].task}/{specs[0].algo}/seeds {','.join(str(s.seed) for s in specs)}"


def _clock(seconds: float) -> str:
    """``mm:ss`` (``h:mm:ss`` past an hour) of the suite's elapsed time, for progress lines."""
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def make_executor(executor: str, workers: int, ray_address: str | None = None) -> Any:
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if executor == "ray":
        return _RayExecutor(workers, ray_address)
    return _InlineExecutor() if workers == 1 else _PoolExecutor(workers)


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
) -> SuiteResult:
    """Run every unfinished spec; the clone stage of a task runs once before its RL runs.

    ``stack``: seeds per job (``seeds_fn``, default ``train_seeds``); 1: one ``run_fn`` per run.
    A failing run is recorded and the others go on (in a stacked job, the seeds it finished
    count as finished); a failing clone stage fails that task's runs.
    """
    if stack < 1:
        raise UserError(f"stack must be at least 1, got {stack}")
    start = time.monotonic()
    runs_dir = Path(runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    clone_fn = clone_fn or default_clone_fn
    workers = workers or max(1, os.cpu_count() or 1)
    result = SuiteResult()
    if run_fn is None:  # the real trainer's stored configs (a custom run_fn keeps its own)
        check_runs_match(specs, runs_dir)
    run_fn = run_fn or default_run_fn
    seeds_fn = seeds_fn or default_seeds_fn
    todo: dict[str, list[RunSpec]] = {}
    for spec in specs:
        if run_state(spec, runs_dir) == "done":
            result.skipped.append(spec)
        else:
            todo.setdefault(spec.task, []).append(spec)
    if not todo:
        result.wall_time_s = time.monotonic() - start
        return result
    pool = make_executor(executor, workers, ray_address)
    progress = workers == 1 and executor == "local"
    jobs: dict[Any, tuple[str, Any]] = {}
    bar = tqdm(total=sum(len(v) for v in todo.values()), desc="suite runs", unit="run")
    try:
        for task in todo:
            overrides = stage_overrides(todo[task][0])
            jobs[pool.submit(execute_clone, clone_fn, task, runs_dir, overrides)] = ("clone", task)
            bar.write(f"[{_clock(0)}] {task}: expert and clone stages (cached ones are reused)")
        while jobs:
            for handle in pool.wait_any(list(jobs)):
                kind, item = jobs.pop(handle)
                try:
                    pool.result(handle)
                    error = None
                except Exception as exc:  # noqa: BLE001 - recorded, the suite goes on
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                clock = _clock(time.monotonic() - start)
                if kind == "clone":
                    status = "ready" if error is None else f"FAILED: {error}"
                    bar.write(f"[{clock}] {item}: expert and clone {status}")
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
