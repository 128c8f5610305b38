"""Trainer throughput (benchmark item c) and the paper-budget suite projection.

The trainer is ``sppo_bench.control.trainer.Trainer``: each ``step`` collects one batch of whole
episodes through ``make_vector_env(task, N, backend)`` (batched dynamics for CartPole,
MountainCar and Pendulum; Gymnasium otherwise) and runs the PPO update. Throughput is env steps
over the wall time of whole updates (collection + advantages + epochs), as ``charts/SPS``.

Policies: Precision CartPole's geometry only means something with episodes that last the 200
steps, so the CartPole rows use the cloned policy of the normal pipeline (``runs/control/
cartpole/clone``; the expert and clone stages are trained there first if absent: about a
minute). Other tasks use their clone when one exists, else an untrained policy; the projection
scales each task's measured seconds per env step to full-horizon episodes (an upper bound for
tasks where episodes can end early).
"""

from __future__ import annotations

import math
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
# The paper's approximate training budgets (episodes), Figure 8 x-axes (see shared PAPER.md).
PAPER_EPISODES = {
    "pendulum": 20_000,
    "cartpole": 40_000,
    "mountaincar": 10_000,
    "lunarlander": 30_000,
    "hopper": 20_000,
}
ALGOS = ("sppo", "ppo-gae")
SEEDS = 10


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


def make_trainer(task: str, algo: str, workdir: Path, backend: str = "auto") -> Trainer:
    spec = load_spec(task, [f"rl.backend={backend}"])
    clone = clone_path(task, train_if_missing=task == "cartpole")
    if clone is None:  # an untrained policy, in the clone's file format
        clone = workdir / task / "policy.pt"
        save_policy(clone, build_policy(spec), spec)
    run_dir = workdir / task / algo
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(spec, algo, 0, run_dir, clone)


def timed_updates(trainer: Trainer, updates: int) -> tuple[int, float]:
    """(env steps, seconds) of ``updates`` trainer updates after one warm-up update."""
    trainer.step(1)
    steps0 = trainer.state["env_steps"]
    start = time.perf_counter()
    for u in range(2, updates + 2):
        trainer.step(u)
    return trainer.state["env_steps"] - steps0, time.perf_counter() - start


def trainer_updates(task: str, algo: str, updates: int = 3) -> tuple[int, float]:
    """Item (c): our trainer's env steps and seconds over ``updates`` updates."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        return timed_updates(make_trainer(task, algo, Path(tmp)), updates)


def project_suite(table) -> str:
    """Measure one update per task and algorithm; project the paper-budget suite (5 tasks x
    {SPPO, PPO-GAE} x 10 seeds). Seconds per update at full horizon =
    (measured seconds / measured env steps) x episodes per update x H. Adds rows to ``table``."""
    lines = ["", "paper-budget projection (one update measured per task and algorithm):"]
    lines.append(
        f"{'task':<12} {'algo':<8} {'backend':<10} {'ep/upd':>6} {'steps':>6} {'s/upd':>7} "
        f"{'s/upd@H':>8} {'updates':>7} {'hours/run':>9}"
    )
    total_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for task, budget in PAPER_EPISODES.items():
            for algo in ALGOS:
                trainer = make_trainer(task, algo, Path(tmp))
                steps, secs = timed_updates(trainer, 1)
                batch, horizon = trainer.batch, trainer.horizon
                backend = type(trainer.train_env).__name__
                table.add("proj", task, f"trainer {algo} ({backend})", batch, steps, secs)
                full = secs / max(steps, 1) * batch * horizon
                n_updates = math.ceil(budget / batch)
                run_s = full * n_updates
                total_s += run_s * SEEDS
                lines.append(
                    f"{task:<12} {algo:<8} {backend[:10]:<10} {batch:>6} {steps:>6} "
                    f"{secs:>7.3f} {full:>8.3f} {n_updates:>7} {run_s / 3600:>9.2f}"
                )
    lines.append(
        f"projected suite: {total_s / 3600:.1f} h serial on one core; "
        f"{total_s / 7200:.1f} h with two runs in parallel on the 2 cores (target <= 3 h)"
    )
    return "\n".join(lines)
