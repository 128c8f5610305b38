"""Control-track throughput benchmark: env-steps/s of Gymnasium, our batched dynamics, our
trainer and Stable-Baselines3 PPO, plus a projection of the paper-budget suite's wall time.

Run from the repository root:  ``python bench/control_throughput.py``  (about 10 minutes).

Items (all in this one process):
  (a) raw Gymnasium stepping (one env in a Python loop; SyncVectorEnv x 64), random actions;
  (b) our batched numpy dynamics (``sppo_bench.control.batched``), random actions;
  (c) our trainer, PPO-GAE and SPPO, Precision CartPole, 64 episodes x 200 steps per update,
      4 epochs, the task's network sizes; env steps / wall time of whole updates;
  (d) SB3 PPO at the same geometry: 64 envs x n_steps 200, 4 epochs, the same minibatch count and
      hidden sizes, on the same Gymnasium CartPole physics;
  plus LunarLander (Gymnasium sync vs async vector envs) and Hopper (sync vector env vs MuJoCo's
  threaded ``mujoco.rollout``, one call per env step so a policy can act in the loop);
  per task (``bench/seed_stack.py``): the physics floor, the trainer with 1 and 10 seeds, and the
  paper-budget suite projection with 10-seed jobs; ``suite_vs_sb3``: 10 seeds of Precision
  CartPole PPO-GAE in one process against 10 sequential SB3 PPO runs.

Threads: ``torch.set_num_threads(1)``. The nets are 2x64 MLPs on batches of <= 3200 rows, where
intra-op parallelism costs more in synchronisation than it saves, and the machine has 2 cores
shared with other work; one thread per process leaves the second core to a second run of the
suite. ``mujoco.rollout`` uses its own 2-thread pool for the Hopper rows.

Writes ``results/bench/control_throughput.csv`` atomically (one row per measurement, with the
1-minute load average at that moment) and prints ``speedup_vs_sb3 <ratio>`` last.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed copy
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

torch.set_num_threads(1)

import env_throughput as envs  # noqa: E402
import seed_stack as stack  # noqa: E402
import trainer_throughput as ours  # noqa: E402

from sppo_bench.io import atomic_write_text  # noqa: E402

CSV_PATH = ROOT / "results" / "bench" / "control_throughput.csv"
FIELDS = ["item", "task", "path", "num_envs", "env_steps", "seconds", "steps_per_s", "load_1m"]


class Table:
    """Collects measurement rows; prints each as it is taken."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def add(self, item: str, task: str, path: str, num_envs: int, steps: int, secs: float) -> float:
        rate = steps / secs
        row = {
            "item": item,
            "task": task,
            "path": path,
            "num_envs": num_envs,
            "env_steps": steps,
            "seconds": round(secs, 4),
            "steps_per_s": round(rate, 1),
            "load_1m": round(os.getloadavg()[0], 2),
        }
        self.rows.append(row)
        print(f"{item:<5} {task:<18} {path:<42} {num_envs:>5} {rate:>12,.0f} steps/s", flush=True)
        return rate

    def write_csv(self, path: Path) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(path, buf.getvalue())


def sb3_ppo(seconds_updates: int = 2) -> tuple[int, float]:
    """SB3 PPO, CartPole-v1 cut at 200 steps, 64 envs x 200 steps, 4 epochs, 4 minibatches of
    3200, pi/vf hidden (64, 64) tanh (item d). One warm-up update, then ``seconds_updates``."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    cfg = ours.cartpole_geometry()
    n_envs, n_steps = cfg["episodes"], cfg["horizon"]
    venv = make_vec_env(
        lambda: gym.make("CartPole-v1", max_episode_steps=n_steps), n_envs=n_envs, seed=0
    )
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=n_steps,
        batch_size=cfg["mini_batch_size"] * n_steps,
        n_epochs=cfg["epochs"],
        policy_kwargs={
            "net_arch": {"pi": list(cfg["hidden"]), "vf": list(cfg["critic_hidden"])},
            "activation_fn": torch.nn.Tanh,
        },
        device="cpu",
        seed=0,
        verbose=0,
    )
    per_update = n_envs * n_steps
    model.learn(per_update)
    start = time.perf_counter()
    model.learn(per_update * seconds_updates, reset_num_timesteps=False)
    return per_update * seconds_updates, time.perf_counter() - start


def env_only_rows(s: float) -> list[tuple]:
    """(item, task, path, num_envs, function, args): the env-only measurements."""
    ll, hop, cartpole, vec = "LunarLander-v3", "Hopper-v5", "CartPole-v1", envs.gymnasium_vector
    rows: list[tuple] = [
        ("a", "CartPole", "gymnasium single env", 1, envs.gymnasium_single, (cartpole, 200, s)),
        ("a", "CartPole", "gymnasium SyncVectorEnv", 64, vec, (cartpole, 64, 200, s)),
    ]
    for task in ("PrecisionCartPole", "SparseMountainCar", "SparsePendulum"):
        for n in (64, 4096):
            rows.append(
                ("b", task, "batched numpy", n, envs.batched, (f"sppo_bench/{task}-v0", n, s))
            )
    rows += [
        ("env", "LunarLander", "gymnasium single env", 1, envs.gymnasium_single, (ll, 1000, s)),
        ("env", "LunarLander", "gymnasium SyncVectorEnv", 16, vec, (ll, 16, 1000, s)),
        ("env", "LunarLander", "gymnasium AsyncVectorEnv", 16, vec, (ll, 16, 1000, s, "async")),
        ("env", "Hopper", "gymnasium single env", 1, envs.gymnasium_single, (hop, 1000, s)),
        ("env", "Hopper", "gymnasium SyncVectorEnv", 8, vec, (hop, 8, 1000, s)),
        ("env", "Hopper", "gymnasium AsyncVectorEnv", 8, vec, (hop, 8, 1000, s, "async")),
        ("env", "Hopper", "mujoco.rollout, 2 threads", 8, envs.hopper_rollout, (8, s)),
        ("env", "Hopper", "mujoco.rollout, 2 threads", 64, envs.hopper_rollout, (64, s)),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="time per env-only row")
    parser.add_argument("--csv", type=Path, default=CSV_PATH)
    args = parser.parse_args(argv)
    table = Table()
    t0 = time.perf_counter()
    print(f"torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}", flush=True)
    for item, task, path, n, fn, fn_args in env_only_rows(args.seconds):
        table.add(item, task, path, n, *fn(*fn_args))
    from hopper_rollout import max_deviation_from_gymnasium

    deviation = max_deviation_from_gymnasium()
    print(f"Hopper rollout vs Gymnasium, 100 steps: max |obs diff| {deviation:.1e}")

    trainer_rates = {}
    for algo in ("ppo-gae", "sppo"):
        steps, secs = ours.trainer_updates("cartpole", algo, updates=3)
        trainer_rates[algo] = table.add(
            "c", "PrecisionCartPole", f"trainer {algo}", 64, steps, secs
        )
    steps, secs = ours.trainer_updates("cartpole", "ppo-gae", updates=3, seeds=10)
    stacked_rate = table.add(
        "c", "PrecisionCartPole", "trainer ppo-gae, 10 seeds", 640, steps, secs
    )
    sb3_rate = table.add("d", "CartPole", "SB3 PPO (DummyVecEnv)", 64, *sb3_ppo())

    lines, projection = stack.per_task(table)
    table.write_csv(args.csv)
    print("\n".join(lines))
    shown = args.csv.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    print(f"wrote {shown}; benchmark took {time.perf_counter() - t0:.0f} s")
    print(f"speedup_vs_sb3 {trainer_rates['ppo-gae'] / sb3_rate:.2f}  (one seed, same geometry)")
    # 10 seeds in one process against 10 sequential SB3 runs of the same geometry: SB3's
    # throughput per run is the same in every run, so the ratio of rates is the ratio of times
    print(f"suite_vs_sb3 {stacked_rate / sb3_rate:.2f}  (10 seeds of PPO-GAE vs 10 SB3 runs)")
    print(f"projection_h {projection['projection_h']:.1f}  floor_h {projection['floor_h']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
