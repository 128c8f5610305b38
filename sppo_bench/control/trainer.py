"""Stage 3: RL fine-tuning of the cloned policy with the binary terminal reward, any estimator.

``train_run(task, algo, seed)`` trains one run in ``runs/control/<task>/<algo>/seed<seed>/``
(``<algo>@<variant>/`` for a named variant, ``sppo_bench.control.variants``);
``train_seeds(task, algo, seeds)`` trains several seeds of it in one process, seed-stacked
(:mod:`sppo_bench.control.loop`), each in its own folder:

- ``config.yaml``: the resolved task spec with the algorithm and seed;
- ``metrics.jsonl``: one row per update (update 0 = the cloned policy before any update);
- ``checkpoints/latest.pt``: policy, critic, optimisers and counters;
- ``values/update_<u:06d>.npz``: the critic on the stochastic evaluation episodes (critics only);
- ``done``: written last, a small JSON summary.

A run resumed from a checkpoint continues exactly as if it had not stopped, and the same seed
gives the same metrics (up to float rounding when another number of seeds shares the process).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sppo_bench.config import to_dict
from sppo_bench.control.cloning import build_policy
from sppo_bench.control.expert import stage_dir, variant_stage_dir
from sppo_bench.control.loop import Trainer, build_critic, num_updates
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import TaskSpec, load_spec, upgrade_stored_spec
from sppo_bench.control.update import compute_autocast
from sppo_bench.control.variants import Variant, all_overrides, folder_name
from sppo_bench.core import EstimatorSpec, get_estimator
from sppo_bench.errors import DivergedError, UserError
from sppo_bench.io import RunLock, clear_diverged
from sppo_bench.rundir import RunDir


def run_dir_for(
    runs_dir: Path, task: str, algo: str, seed: int, variant: Variant | str | None = None
) -> Path:
    """``runs/control/<task>/<run name of algo>[@<variant>]/seed<seed>``."""
    name = folder_name(get_estimator(algo).run_name, variant)
    return stage_dir(runs_dir, task, name) / f"seed{seed}"


@dataclass
class SavedRun:
    """A run's networks as its latest checkpoint holds them (no optimisers, no environments)."""

    run_dir: Path
    estimator: EstimatorSpec
    policy: Policy
    critic: ValueNet | None
    update: int

    @property
    def algo(self) -> str:
        return self.estimator.run_name

    @classmethod
    def load(cls, run_dir: Path, spec: TaskSpec, algo: str) -> SavedRun:
        """The networks of ``run_dir``'s ``checkpoints/latest.pt``; a one-line error if none."""
        blob = RunDir(run_dir).load_checkpoint(keys=("state", "policy"))
        if blob is None:
            raise UserError(f"run {str(run_dir)!r} has no checkpoint yet")
        estimator = get_estimator(algo)
        policy = build_policy(spec)
        policy.load_state_dict(blob["policy"])
        critic = None
        if estimator.critic_strategy is not None:
            critic = build_critic(spec, policy)
            critic.load_state_dict(blob["critic"])
        return cls(run_dir, estimator, policy, critic, int(blob["state"]["update"]))


RUNS_DIR_REMEDY = "use another --runs-dir or remove that folder"


def upgrade_stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config with the keys of older versions as today's."""
    return upgrade_stored_spec(config)


def resolved_config(
    spec: TaskSpec, algo: str, seed: int, variant: Variant | None = None
) -> dict[str, Any]:
    """What ``config.yaml`` holds: algorithm, seed, the variant's name (only for a variant, so
    that older runs' configs stay valid) and the full task spec."""
    named = {"variant": variant.name} if variant is not None else {}
    return {"algo": algo, "seed": seed, **named, **to_dict(spec)}


def requested_config(
    task: str,
    algo: str,
    seed: int,
    episodes: int | None,
    overrides: Sequence[str],
    variant: Variant | None = None,
) -> tuple[Path, TaskSpec, dict[str, Any]]:
    """(run folder relative to a runs dir, task spec, config.yaml contents) of the run
    ``train_run`` would make with these arguments."""
    estimator = get_estimator(algo)
    name = estimator.run_name
    spec = load_spec(task, all_overrides(overrides, variant))
    estimator.configured_params(spec.rl.estimator_params)  # a bad parameter fails before any work
    compute_autocast(spec.rl.compute_dtype)
    if episodes is not None:
        spec.rl.episodes = episodes
    per_update = spec.rl.trajectories_per_update  # stored: the episodes whole updates train
    spec.rl.episodes = -(-spec.rl.episodes // per_update) * per_update
    relative = run_dir_for(Path("."), spec.task, name, seed, variant)
    return relative, spec, resolved_config(spec, name, seed, variant)


def train_run(
    task: str,
    algo: str,
    seed: int,
    runs_dir: Path = Path("runs"),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    tensorboard: Path | None = None,
    variant: Variant | None = None,
) -> Path:
    """Train (or resume, or skip if done) one RL run and return its directory.

    ``episodes``: the training-episode budget (None = the task yaml's ``rl.episodes``); the run
    makes ceil(episodes / trajectories_per_update) updates. ``tensorboard``: a folder that also
    receives every metrics row as TensorBoard scalars. ``variant``: a named set of overrides
    applied after ``overrides``; the run lives in ``<algo>@<variant>`` and starts from the
    variant's own clone where the variant changes the clone's settings.
    """
    boards = None if tensorboard is None else [tensorboard]
    runs = train_seeds(task, algo, [seed], runs_dir, episodes, overrides, progress, boards, variant)
    return runs[0]


def train_seeds(
    task: str,
    algo: str,
    seeds: Sequence[int],
    runs_dir: Path = Path("runs"),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    tensorboard: Sequence[Path | None] | None = None,
    variant: Variant | None = None,
) -> list[Path]:
    """``train_run`` for several seeds of one (task, algorithm) at once, seed-stacked in this
    process; returns their run folders. Finished seeds are skipped; seeds at different updates
    (an interrupted earlier call) are grouped by update and each group is trained as one stack.
    A seed that diverges is marked so and the others go on; a ``DivergedError`` naming the
    diverged seeds is raised after the rest have finished."""
    torch.set_num_threads(1)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {list(seeds)}")
    boards = list(tensorboard) if tensorboard is not None else [None] * len(seeds)
    runs: list[tuple[int, RunDir, dict[str, Any], Path | None]] = []
    spec = None
    for seed, board in zip(seeds, boards, strict=True):
        relative, spec, config = requested_config(task, algo, seed, episodes, overrides, variant)
        run = RunDir(Path(runs_dir) / relative)
        run.check_config(config, upgrade_stored_config, remedy=RUNS_DIR_REMEDY)
        runs.append((seed, run, config, board))
    todo = [r for r in runs if not r[1].done]
    diverged: list[int] = []
    with ExitStack() as stack:
        for _, run, _, _ in todo:  # a diverged seed's marker must outlive the others' success
            stack.enter_context(RunLock(run.path))
        todo = [r for r in todo if not r[1].done]  # finished by a process that held a lock
        for _, run, config, _ in todo:
            run.write_config(config)
        clone = variant_stage_dir(runs_dir, spec.task, "clone", variant) / "policy.pt"
        while todo:
            group = _same_update(todo)
            trainer = Trainer(
                spec,
                algo,
                [r[0] for r in group],
                [r[1].path for r in group],
                clone,
                [r[3] for r in group],
            )
            try:
                summaries = trainer.run(num_updates(spec), progress)
            finally:
                trainer.close()
            for (_, run, _, _), summary in zip(group, summaries, strict=False):
                run.mark_done(summary)
                clear_diverged(run.path)
            diverged += trainer.diverged
            todo = [r for r in todo if not r[1].done and r[0] not in diverged]
    if diverged:
        raise DivergedError(
            f"{task}/{folder_name(get_estimator(algo).run_name, variant)}: seed(s) "
            f"{sorted(diverged)} diverged "
            f"(see their 'diverged' files); the other seeds finished"
        )
    return [run.path for _, run, _, _ in runs]


def _same_update(runs: list[tuple[int, RunDir, Any, Any]]) -> list[tuple[int, RunDir, Any, Any]]:
    """The runs at the lowest checkpointed update (none yet counts as -1)."""

    def update(run: RunDir) -> int:
        blob = run.load_checkpoint(keys=("state",))
        return -1 if blob is None else int(blob["state"]["update"])

    updates = [update(r[1]) for r in runs]
    lowest = min(updates)
    return [r for r, u in zip(runs, updates, strict=True) if u == lowest]


__all__ = [
    "SavedRun",
    "Trainer",
    "build_critic",
    "run_dir_for",
    "train_run",
    "train_seeds",
    "upgrade_stored_config",
]
