"""Trainer throughput (benchmark item c): the trainer on one task, one or several seeds.

The trainer is ``sppo_bench.control.trainer.Trainer``: each ``step`` collects one batch of whole
episodes through ``make_vector_env(task, N, backend)`` (batched dynamics for CartPole,
MountainCar and Pendulum, ``mujoco.rollout`` for Hopper; Gymnasium for LunarLander) and runs the
PPO update, for every seed of the trainer at once. Throughput is env steps (all seeds) over the
wall time of whole updates (collection + advantages + epochs).

Policies: Precision CartPole's geometry only means something with episodes that last the 200
steps, so the CartPole rows use the cloned policy of the normal pipeline (``runs/control/
cartpole/clone``; the expert and clone stages are trained there first if absent: about a
minute). Other tasks use their clone when one exists, else an untrained policy.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from sppo_bench.control.cloning import build_policy, clone_expert, save_policy
from sppo_bench.control.expert import stage_dir, train_expert
from sppo_bench.control.spec import load_spec
from sppo_bench.control.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs"


def cartpole_geometry() -> dict[str, object]:
    """Precision CartPole's RL geometry and network sizes from ``envs/cartpole.yaml``."""
    spec = load_spec("cartpole")
    return {
        "episodes": spec.rl.trajectories_per_update,
        "horizon": spec.horizon,
        "epochs": spec.rl.epochs,
        "mini_batch_size": spec.rl.mini_batch_size,
        "hidden": tuple(spec.policy.hidden),
        "critic_hidden": tuple(spec.policy.critic_hidden),
    }


def clone_path(task: str, train_if_missing: bool) -> Path | None:
    """The task's cloned policy under ``runs/``; trains expert and clone first if asked."""
    path = stage_dir(RUNS, task, "clone") / "policy.pt"
    if not path.is_file() and train_if_missing:
        train_expert(task, RUNS, progress=False)
        clone_expert(task, RUNS, progress=False)
    return path if path.is_file() else None


def make_trainer(
    task: str,
    algo: str,
    workdir: Path,
    backend: str = "auto",
    seeds: int = 1,
    overrides: tuple[str, ...] | list[str] = (),
) -> Trainer:
    """A ``seeds``-seed trainer of ``task`` (its clone, or an untrained policy) in ``workdir``."""
    spec = load_spec(task, [f"rl.backend={backend}", *overrides])
    clone = clone_path(task, train_if_missing=task == "cartpole")
    if clone is None:  # an untrained policy, in the clone's file format
        clone = workdir / task / "policy.pt"
        save_policy(clone, build_policy(spec), spec)
    run_dirs = [workdir / task / algo / f"seed{k}" for k in range(seeds)]
    return Trainer(spec, algo, list(range(seeds)), run_dirs, clone)


def timed_updates(trainer: Trainer, updates: int) -> tuple[int, float]:
    """(env steps of all seeds, seconds) of ``updates`` updates after one warm-up update."""

    def steps() -> int:
        return sum(state["env_steps"] for state in trainer.states)

    trainer.step(1)
    steps0 = steps()
    start = time.perf_counter()
    for u in range(2, updates + 2):
        trainer.step(u)
    return steps() - steps0, time.perf_counter() - start


def trainer_updates(task: str, algo: str, updates: int = 3, seeds: int = 1) -> tuple[int, float]:
    """Item (c): our trainer's env steps and seconds over ``updates`` updates."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        return timed_updates(make_trainer(task, algo, Path(tmp), seeds=seeds), updates)
