"""Per-task throughput of seed-stacked training against its physics floor, and the paper-budget
suite projection with the suite's default of 10 seeds per process.

Per task (the task's own geometry: N = ``rl.trajectories_per_update`` episodes per update):

- ``floor N`` / ``floor KxN``: the physics-only floor, env steps/s of ``collect_episodes`` from
  the training start states with a fixed action (no policy, no update), at the single-seed batch
  and at the K-seed batch;
- ``trainer K=1`` / ``trainer K=10``: whole updates (collection + advantages + PPO epochs) of the
  trainer with one and ten seeds, fp32; ``trainer K=10 bf16``: with ``rl.compute_dtype=bfloat16``.

The tasks' cloned policies are used where ``runs/control/<task>/clone`` exists, else an untrained
policy (whose episodes may end early: the projection scales seconds per env step to full-horizon
episodes, an upper bound there).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sppo_bench.control.collector import collect_episodes
from sppo_bench.control.envs import make_vector_env, space_dims
from sppo_bench.control.spec import load_spec
from sppo_bench.control.tasks import TASKS, get_task

STACK = 10  # seeds per process, the suite's default
PAPER_EPISODES = {
    "pendulum": 20_000,
    "cartpole": 40_000,
    "mountaincar": 10_000,
    "lunarlander": 30_000,
    "hopper": 20_000,
}  # the paper's approximate budgets (Figure 8 x-axes, see shared PAPER.md)
ALGOS = ("sppo", "ppo-gae")
SEEDS = 10


def physics_floor(task: str, num_envs: int, min_seconds: float = 1.0) -> tuple[int, float]:
    """(env steps, seconds) of whole-episode collections with a fixed action (action 0 / zeros)
    from random start states, repeated for at least ``min_seconds``."""
    venv = make_vector_env(task, num_envs)
    _, discrete, dim = space_dims(venv)
    action = np.zeros(num_envs, np.int64) if discrete else np.zeros((num_envs, dim), np.float32)
    horizon = get_task(task).horizon
    rng = np.random.default_rng(0)
    collect_episodes(venv, lambda obs: action, rng.integers(0, 2**31, num_envs), horizon)
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_seconds:
        seeds = rng.integers(0, 2**31, num_envs)
        steps += collect_episodes(venv, lambda obs: action, seeds, horizon).num_steps
    return steps, elapsed


def trainer_rate(task: str, algo: str, seeds: int, dtype: str, updates: int = 2):
    """(env steps, seconds, trainer) of ``updates`` updates of a ``seeds``-seed trainer after one
    warm-up update."""
    import trainer_throughput as ours

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ours.make_trainer(
            task, algo, Path(tmp), seeds=seeds, overrides=[f"rl.compute_dtype={dtype}"]
        )
        steps, secs = ours.timed_updates(trainer, updates)
    return steps, secs, trainer


def per_task(table) -> tuple[list[str], dict[str, float]]:
    """Adds every task's rows to ``table``; returns the summary lines and the projection (hours
    of the paper-budget suite on 2 cores with 10-seed jobs, and its physics floor)."""
    lines = [
        "",
        "per task (steps/s; trainer rows are SPPO / PPO-GAE):",
        f"{'task':<12} {'floor N':>9} {'floor KxN':>10} {'K=1':>15} {'K=10':>15} "
        f"{'K=10 bf16':>15} {'K=10 / K=1':>11} {'proj h':>7} {'floor h':>7}",
    ]
    total_h = floor_h = 0.0
    for task in TASKS:
        spec = load_spec(task)
        n, horizon = spec.rl.trajectories_per_update, get_task(task).horizon
        floors = []
        for envs in (n, STACK * n):
            floors.append(
                table.add(
                    "floor",
                    task,
                    "fixed action, collect_episodes",
                    envs,
                    *physics_floor(task, envs),
                )
            )
        rates: dict[tuple[str, int, str], float] = {}
        for algo in ALGOS:
            for seeds, dtype in ((1, "float32"), (STACK, "float32"), (STACK, "bfloat16")):
                steps, secs, trainer = trainer_rate(task, algo, seeds, dtype)
                label = f"trainer {algo} K={seeds} {dtype}"
                rollouts = trainer.rollouts * seeds
                rates[(algo, seeds, dtype)] = table.add("K", task, label, rollouts, steps, secs)
        updates = math.ceil(PAPER_EPISODES[task] / n)
        job_steps = updates * SEEDS * n * horizon  # one 10-seed job, full-horizon episodes
        task_h = sum(job_steps / rates[(a, STACK, "float32")] for a in ALGOS) / 3600 / 2
        task_floor = len(ALGOS) * job_steps / floors[1] / 3600 / 2
        total_h, floor_h = total_h + task_h, floor_h + task_floor
        cells = [
            "/".join(f"{rates[(a, k, d)] / 1000:.1f}k" for a in ALGOS)
            for k, d in ((1, "float32"), (STACK, "float32"), (STACK, "bfloat16"))
        ]
        gain = "/".join(
            f"{rates[(a, STACK, 'float32')] / rates[(a, 1, 'float32')]:.1f}x" for a in ALGOS
        )
        lines.append(
            f"{task:<12} {floors[0] / 1000:>8.0f}k {floors[1] / 1000:>9.0f}k {cells[0]:>15} "
            f"{cells[1]:>15} {cells[2]:>15} {gain:>11} {task_h:>7.2f} {task_floor:>7.2f}"
        )
    lines.append(
        f"paper-budget suite (5 tasks x SPPO, PPO-GAE x 10 seeds, one 10-seed job per task and "
        f"algorithm, 2 jobs at a time on 2 cores): {total_h:.1f} h projected, physics floor "
        f"{floor_h:.1f} h ({total_h / floor_h:.1f}x the floor); evaluation episodes not included"
    )
    return lines, {"projection_h": total_h, "floor_h": floor_h}
