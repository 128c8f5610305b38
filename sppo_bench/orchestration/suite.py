"""The multi-seed suite runner: tasks x algorithms x seeds from a named profile.

A profile (``envs/profiles/<name>.yaml``) lists the algorithms, the number of seeds and, per task,
the training-episode budget and the evaluation interval. It may also declare named settings
variants, each crossed with the profile's tasks x algorithms x seeds::

    variants:
      lr1e-4: [rl.critic_lr=1e-4]                                   # every algorithm
      lam0.95: {set: [rl.estimator_params.gae.lam=0.95], algos: [ppo-gae]}
      weak: {set: [clone.demo_noise=0.75], tasks: [lunarlander]}   # only these tasks
    base: [sppo]     # algorithms that also run without a variant (default: all; false: none)

A variant's runs live in ``<algo>@<variant>/`` (``sppo_bench.control.variants``). ``run_suite``
then

1. skips every run whose directory already holds the ``done`` marker;
2. runs each remaining task's cached expert and behaviour-cloning stages once
   (``sppo_bench.control.pipeline.ensure_clone``, with the profile's overrides for the task, so
   a profile can set ``clone.*`` fields), before any RL run of that task; once more per variant
   that changes ``expert.*``, ``policy.*`` or ``clone.*`` (its own ``clone@<variant>``);
3. runs the RL runs on an executor: a local process pool (one job per worker, one worker per
   core by default), in-process when ``workers == 1``, or Ray tasks (``executor="ray"``; on a
   cluster, ``runs_dir`` must be on a filesystem every node shares). A job is up to ``stack``
   seeds of one (task, algorithm, variant), trained seed-stacked in one process
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
from sppo_bench.control.variants import Variant, check_name, folder_name, stage_folder
from sppo_bench.core import algorithm_names, get_estimator
from sppo_bench.errors import UserError
from sppo_bench.rundir import RunDir

PROFILES_DIR = Path(__file__).resolve().parents[1] / "specs" / "profiles"  # envs/profiles
EVAL_EVERY_KEY = "rl.eval_every"  # the trainer-config key the profile's eval interval overrides
EXECUTORS = ("local", "ray")

MAX_SEEDS = 10_000  # seeds of one suite: a larger plan is a typo, and would fill memory
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
    """A loaded profile. ``variants``: declared variants by name; ``base``: the algorithms that
    also run without a variant."""

    name: str
    description: str
    algos: tuple[str, ...]
    seeds: int
    tasks: dict[str, TaskBudget] = field(hash=False)
    variants: dict[str, Variant] = field(default_factory=dict, hash=False)
    base: tuple[str, ...] | None = None  # None: every algorithm


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
        from sppo_bench.control.trainer import run_dir_for

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
    from sppo_bench.control.trainer import (
        RUNS_DIR_REMEDY,
        requested_config,
        upgrade_stored_config,
    )

    for spec in specs:
        run = RunDir(spec.run_dir(runs_dir))
        if run.config_path.is_file():
            _, _, config = requested_config(
                spec.task, spec.algo, spec.seed, spec.episodes, spec.overrides, spec.variant
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
    from sppo_bench.control.expert import stage_dir

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
