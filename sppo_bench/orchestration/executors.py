"""Where a suite's jobs run: in-process (``workers == 1``), a local process pool (one job per
worker, one worker per core by default), or Ray tasks (``executor="ray"``; on a cluster,
``runs_dir`` must be on a filesystem every node shares); and the worker bodies of the three job
kinds (a task's expert + clone stages, one run, a seed-stacked job). The trainer functions are
imported lazily and can be injected (tests, other trainers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sppo_bench.control.variants import Variant
from sppo_bench.errors import UserError
from sppo_bench.orchestration.plan import RunSpec

EXECUTORS = ("local", "ray")

RunFn = Callable[..., Path]  # train_run(task, algo, seed, runs_dir, episodes, overrides, progress)

SeedsFn = Callable[..., list[Path]]  # train_seeds(task, algo, seeds, runs_dir, episodes, ...)

CloneFn = Callable[[str, Path, Sequence[str]], Path]  # ensure_clone(task, runs_dir, overrides)


def default_run_fn(*args: Any, **kwargs: Any) -> Path:
    """``train_run`` that waits for a run another process (a second suite) is writing."""
    from sppo_bench.control.trainer import train_run

    return train_run(*args, wait=True, **kwargs)


def default_seeds_fn(*args: Any, **kwargs: Any) -> list[Path]:
    """``train_seeds`` that waits for runs another process (a second suite) is writing."""
    from sppo_bench.control.trainer import train_seeds

    return train_seeds(*args, wait=True, **kwargs)


def default_clone_fn(
    task: str, runs_dir: Path, overrides: Sequence[str] = (), variant: Variant | None = None
) -> Path:
    from sppo_bench.control.pipeline import ensure_clone

    return ensure_clone(task, runs_dir, overrides, variant=variant)


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
            **({"variant": spec.variant} if spec.variant is not None else {}),
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
        **({"variant": first.variant} if first.variant is not None else {}),
    )


def execute_clone(
    clone_fn: CloneFn,
    task: str,
    runs_dir: Path,
    overrides: Sequence[str] = (),
    variant: Variant | None = None,
) -> Path:
    """Worker body for one task's expert + behaviour-cloning stages (a variant's own stages
    where it owns them)."""
    _limit_threads()
    extra = {"variant": variant} if variant is not None else {}
    return Path(clone_fn(task, Path(runs_dir), list(overrides), **extra))


class _InlineExecutor:
    """Runs each job at submission, in this process (``workers == 1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # noqa: BLE001 - reported per run by the caller
            future.set_exception(exc)
        return future

    def wait_any(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
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

    def wait_any(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        return list(wait(handles, timeout=timeout, return_when=FIRST_COMPLETED).done)

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

    def wait_any(self, handles: list[Any], timeout: float | None = None) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
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


def make_executor(executor: str, workers: int, ray_address: str | None = None) -> Any:
    if executor not in EXECUTORS:
        raise UserError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    if executor == "ray":
        return _RayExecutor(workers, ray_address)
    return _InlineExecutor() if workers == 1 else _PoolExecutor(workers)
