"""Synthetic control run directories that follow the control-track run-directory contract.

Learning curves rise from the cloned policy's success towards a plateau, faster for SPPO; the
PPO-GAE values files show a tail effect (V(s_t) stays near the success rate and splits by outcome
only in the last ~15% of the episode); SPPO's V(s_0) tracks each start state's success probability;
SPPO runs carry a ``calibration.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

TASK_SPECS = {  # horizon, episodes per update, start success, plateau (sppo, ppo-gae)
    "cartpole": (200, 64, 0.3, (0.9, 0.7)),
    "mountaincar": (1000, 8, 0.2, (0.85, 0.1)),
}
N_EVAL = 32


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def success_prob(task: str, algo: str, episodes: float, budget: float) -> float:
    _, _, start, plateaus = TASK_SPECS[task]
    plateau = plateaus[0] if algo == "sppo" else plateaus[1]
    tau = budget / (5.0 if algo == "sppo" else 2.0)
    return start + (plateau - start) * (1.0 - np.exp(-episodes / tau))


def _values_npz(rng, task: str, algo: str, p: float) -> dict[str, np.ndarray]:
    horizon = TASK_SPECS[task][0]
    state_p = np.clip(rng.beta(2, 2, N_EVAL) * 0.6 + p - 0.3, 0.01, 0.99)  # per start state
    success = rng.random(N_EVAL) < state_p
    lengths = np.where(success, horizon, rng.integers(horizon // 2, horizon + 1, N_EVAL))
    v0 = np.clip(_sigmoid(np.log(state_p / (1 - state_p)) + rng.normal(0, 0.5, N_EVAL)), 0, 1)
    out = {"success": success, "v0": v0.astype(np.float32), "lengths": lengths.astype(np.int64)}
    if algo == "ppo-gae":
        t = np.arange(horizon)[None, :]
        tail = _sigmoid((t - 0.85 * lengths[:, None]) / (0.03 * lengths[:, None]))
        values = p + (success[:, None] - p) * tail + rng.normal(0, 0.01, (N_EVAL, horizon))
        values[t >= lengths[:, None]] = np.nan
        out["values"] = values.astype(np.float32)
        out["v0"] = values[:, 0].astype(np.float32)
    return out


def write_run(
    runs_dir: Path,
    task: str,
    algo: str,
    seed: int,
    budget: int,
    eval_every: int = 2,
    finished: bool = True,
) -> Path:
    """Write one run directory; ``finished=False`` stops halfway and writes no ``done``."""
    rng = np.random.default_rng([sum(map(ord, task)), sum(map(ord, algo)), seed])
    _, per_update, _, _ = TASK_SPECS[task]
    run = Path(runs_dir) / "control" / task / algo / f"seed{seed}"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    name, _, variant = algo.partition("@")  # as the trainer stores a variant's run
    config = {"task": task, "algo": name, "seed": seed, **({"variant": variant} if variant else {})}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    updates = budget // per_update
    last = updates if finished else updates // 2
    rows, wall = [], 0.0
    for u in range(last + 1):
        episodes = u * per_update
        wall += 0.0 if u == 0 else rng.uniform(0.8, 1.2) * (1.3 if algo == "ppo-gae" else 1.0)
        p = success_prob(task, algo, episodes, budget)
        has_critic = algo in ("sppo", "ppo-gae")
        row = {
            "update": u,
            "episodes": episodes,
            "env_steps": episodes * TASK_SPECS[task][0] // 2,
            "wall_time": wall,
            "train/success_rate": float(rng.binomial(per_update, p) / per_update),
            "losses/policy": float(rng.normal(0, 0.01)),
            "losses/value": float(rng.uniform(0.3, 0.7)) if has_critic else None,
            "losses/entropy": 0.5,
            "losses/approx_kl": 0.001,
            "losses/clipfrac": 0.05,
            "value/mean": p if has_critic else None,
            "value/explained_variance": 0.1 if has_critic else None,
            "charts/SPS": 5000.0,
        }
        if u % eval_every == 0 or u == updates:
            row["eval/success_stochastic"] = float(rng.binomial(N_EVAL, p) / N_EVAL)
            row["eval/success_deterministic"] = float(
                rng.binomial(N_EVAL, min(1, p + 0.05)) / N_EVAL
            )
            if has_critic:
                (run / "values").mkdir(exist_ok=True)
                np.savez(run / "values" / f"update_{u:06d}.npz", **_values_npz(rng, task, algo, p))
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "checkpoints" / "latest.pt").write_bytes(b"checkpoint")
    if finished:
        if algo == "sppo":
            k = 64
            true_p = rng.beta(2, 2, k)
            rate = rng.binomial(16, true_p) / 16
            v0 = np.clip(true_p + rng.normal(0, 0.12, k), 0, 1)
            np.savez(run / "calibration.npz", v0=v0.astype(np.float32), success_rate=rate)
        (run / "done").write_text(
            json.dumps({"updates": updates, "episodes": updates * per_update})
        )
    return run


def write_suite(
    runs_dir: Path,
    tasks=("cartpole", "mountaincar"),
    algos=("sppo", "ppo-gae"),
    seeds: int = 5,
    budgets: dict[str, int] | None = None,
) -> Path:
    """A whole synthetic suite plus the expert/clone stage folders the control track caches."""
    budgets = budgets or {"cartpole": 1280, "mountaincar": 160}
    for task in tasks:
        for stage in ("expert", "clone"):
            stage_dir = Path(runs_dir) / "control" / task / stage
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / "summary.json").write_text(json.dumps({"success_rate": 0.3}))
        for algo in algos:
            for seed in range(seeds):
                write_run(runs_dir, task, algo, seed, budgets[task])
    return Path(runs_dir)
