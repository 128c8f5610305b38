"""A control RL run's folder, settings and identity: ``runs/control/<task>/<algo>[@<variant>]/
seed<seed>/`` (:mod:`sppo_bench.control.trainer` trains it; the layout is ``sppo_bench.rundir``'s).

- ``config.yaml``: the resolved task spec with the algorithm, seed (and the variant's name);
- ``metrics.jsonl``: one row per update (update 0 = the cloned policy before any update);
- ``checkpoints/latest.pt``: ``rundir.Checkpoint`` (policy, critic, optimisers, counters);
- ``values/update_<u:06d>.npz``: the critic on the stochastic evaluation episodes (critics only);
- ``done``: written last, a small JSON summary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sppo_bench.config import to_dict
from sppo_bench.control.cloning import build_policy
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import TaskSpec, load_spec
from sppo_bench.control.tasks import TaskInfo
from sppo_bench.control.update import compute_autocast
from sppo_bench.control.variants import Variant, all_overrides, folder_name
from sppo_bench.core import EstimatorSpec, get_estimator
from sppo_bench.errors import UserError
from sppo_bench.rundir import RunDir, RunIdentity, config_hash, stage_dir

RUNS_DIR_REMEDY = "use another --runs-dir or remove that folder"


def run_dir_for(
    runs_dir: Path,
    task: str,
    algo: str | EstimatorSpec,
    seed: int,
    variant: Variant | str | None = None,
) -> Path:
    """``runs/control/<task>/<run name of algo>[@<variant>]/seed<seed>`` (``task`` canonical)."""
    estimator = get_estimator(algo) if isinstance(algo, str) else algo
    name = folder_name(estimator.run_name, variant)
    return stage_dir(runs_dir, task, name) / f"seed{seed}"


def build_critic(spec: TaskSpec, policy: Policy) -> ValueNet:
    """A run's critic: ``spec.policy.critic_hidden`` layers, the policy's input normalisation."""
    critic = ValueNet(policy.obs_mean.numel(), spec.policy.critic_hidden, spec.policy.activation)
    critic.set_normalization(policy.obs_mean, policy.obs_std)
    return critic


def num_updates(spec: TaskSpec) -> int:
    """ceil(rl.episodes / rl.trajectories_per_update)."""
    return math.ceil(spec.rl.episodes / spec.rl.trajectories_per_update)


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
    def load(cls, run_dir: Path, spec: TaskSpec, algo: str | EstimatorSpec) -> SavedRun:
        """The networks of ``run_dir``'s ``checkpoints/latest.pt``; a one-line error if none."""
        folder = RunDir(run_dir)
        ckpt = folder.read_checkpoint()
        if ckpt is None:
            raise UserError(f"run {str(run_dir)!r} has no checkpoint yet")
        estimator = get_estimator(algo) if isinstance(algo, str) else algo
        policy = build_policy(spec)
        ckpt.load_network("policy", policy, folder.checkpoint_path)
        critic = None
        if estimator.critic_strategy is not None:
            critic = build_critic(spec, policy)
            ckpt.load_network("critic", critic, folder.checkpoint_path)
        return cls(run_dir, estimator, policy, critic, ckpt.step)


def resolved_config(
    spec: TaskSpec, algo: str, seed: int, variant: Variant | str | None = None
) -> dict[str, Any]:
    """What ``config.yaml`` holds: algorithm, seed, the variant's name and the full task spec.
    Keys added after runs had been made are stored only where set (the variant's name, a non-zero
    ``rl.critic_warmup_updates``), so older runs' configs and checkpoints stay valid."""
    name = variant if isinstance(variant, str | None) else variant.name
    named = {"variant": name} if name is not None else {}
    config = {"algo": algo, "seed": seed, **named, **to_dict(spec)}
    if not spec.rl.critic_warmup_updates:
        del config["rl"]["critic_warmup_updates"]
    return config


def run_identity(config: dict[str, Any]) -> RunIdentity:
    """What made the run of ``resolved_config``'s ``config`` (stamped on its checkpoints)."""
    return RunIdentity(config["task"], config["algo"], config.get("variant"), config_hash(config))


def requested_spec(
    task: str | TaskInfo,
    estimator: EstimatorSpec,
    episodes: int | None,
    overrides: Sequence[str],
    variant: Variant | None = None,
) -> TaskSpec:
    """The task spec that runs of these arguments share; a bad setting fails before any work."""
    spec = load_spec(task, all_overrides(overrides, variant))
    estimator.configured_params(spec.rl.estimator_params)
    compute_autocast(spec.rl.compute_dtype)
    if estimator.critic_strategy is None:  # no critic to warm up: a profile-wide setting is a
        spec.rl.critic_warmup_updates = 0  # no-op here (as the LLM track's critic.warmup_steps)
    if episodes is not None:
        spec.rl.episodes = episodes
    per_update = spec.rl.trajectories_per_update  # stored: the episodes whole updates train
    spec.rl.episodes = -(-spec.rl.episodes // per_update) * per_update
    return spec


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
    spec = requested_spec(task, estimator, episodes, overrides, variant)
    relative = run_dir_for(Path("."), spec.task, estimator.run_name, seed, variant)
    return relative, spec, resolved_config(spec, estimator.run_name, seed, variant)


def at_lowest_update(runs: Sequence[RunDir]) -> list[bool]:
    """Which of ``runs`` are at the lowest checkpointed update (none yet counts as -1)."""
    updates = [-1 if (c := run.read_checkpoint()) is None else c.step for run in runs]
    return [u == min(updates) for u in updates]
