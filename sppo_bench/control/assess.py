"""Evaluating saved policies and calibrating a run's critic against empirical success rates.

Calibration: for ``K`` start states (seeds ``CALIBRATION_SEED + k``) the critic's V(s_0) is
compared with the success rate of ``M`` stochastic rollouts of the run's policy from each of
them; ``calibration.npz`` holds ``v0 [K]``, ``success_rate [K]`` and ``seeds [K]``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sppo_bench.config import from_dict
from sppo_bench.control.cloning import load_policy
from sppo_bench.control.collector import collect_episodes
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.evaluation import evaluate, policy_actor
from sppo_bench.control.runs import SavedRun, run_dir_for
from sppo_bench.control.spec import TaskSpec, load_spec, upgrade_stored_spec
from sppo_bench.control.tasks import get_task
from sppo_bench.control.update import critic_values
from sppo_bench.control.variants import Variant, all_overrides, variant_stage_dir
from sppo_bench.errors import UserError
from sppo_bench.io import atomic_write_bytes
from sppo_bench.rundir import RunDir

CALIBRATION_SEED = 5_000_000


def load_run(
    task: str, algo: str, seed: int, runs_dir: Path, variant: Variant | None = None
) -> SavedRun:
    """A run's policy and critic from its ``config.yaml`` and latest checkpoint."""
    run_dir = run_dir_for(runs_dir, task, algo, seed, variant)
    config = RunDir(run_dir).stored_config(upgrade_stored_spec)
    if config is None:
        raise UserError(f"no run at {str(run_dir)!r}; train it first")
    name = config.pop("algo")
    config.pop("seed")
    config.pop("variant", None)
    return SavedRun.load(run_dir, from_dict(TaskSpec, config), name)


def evaluate_saved(
    task: str,
    runs_dir: Path,
    algo: str | None,
    seed: int,
    n_eval: int,
    variant: Variant | None = None,
) -> dict[str, Any]:
    """Success rates of a run's latest policy (or, with ``algo=None``, of the clone the
    ``variant``'s runs start from) on the fixed evaluation start states."""
    torch.set_num_threads(1)
    if algo is None:
        spec = load_spec(task, all_overrides((), variant))
        folder = variant_stage_dir(runs_dir, task, "clone", variant)
        policy = load_policy(folder / "policy.pt", spec)
        what = folder.name
    else:
        run = load_run(task, algo, seed, runs_dir, variant)
        policy, what = run.policy, f"{run.algo}/seed{seed}@{run.update}"
    venv = make_vector_env(task, int(np.gcd(n_eval, 64)))
    det, sto, _ = evaluate(
        venv, policy, n_eval, get_task(task).horizon, torch.Generator().manual_seed(seed)
    )
    return {
        "task": get_task(task).name,
        "policy": what,
        "n_eval": n_eval,
        "success_deterministic": det,
        "success_stochastic": sto,
    }


def calibrate(
    task: str,
    algo: str,
    seed: int,
    runs_dir: Path,
    k: int,
    m: int,
    progress: bool = True,
    variant: Variant | None = None,
) -> Path:
    """Write ``calibration.npz`` into the run directory (see module doc); returns its path."""
    torch.set_num_threads(1)
    if k < 1 or m < 1:
        raise UserError(f"--calibration needs K >= 1 and M >= 1, got {k} {m}")
    run = load_run(task, algo, seed, runs_dir, variant)
    if run.critic is None:
        raise UserError(f"{run.algo} has no critic to calibrate; use sppo or ppo-gae")
    strategy = run.estimator.critic_strategy
    seeds = CALIBRATION_SEED + np.arange(k)
    horizon = get_task(task).horizon
    venv = make_vector_env(task, m)
    generator = torch.Generator().manual_seed(seed)
    actor = policy_actor(run.policy, False, generator)
    v0 = np.zeros(k, dtype=np.float32)
    rate = np.zeros(k, dtype=np.float32)
    for i, s in enumerate(tqdm(seeds, desc="calibration", disable=not progress)):
        batch = collect_episodes(venv, actor, [int(s)] * m, horizon)
        rate[i] = batch.success.mean()
        start = torch.as_tensor(batch.obs[:1, :1], dtype=torch.float32)  # s_0, [1, 1, d]
        with torch.no_grad():
            out = critic_values(run.critic, strategy, start)
        v0[i] = float(strategy.start_values(out)[0])
    buffer = io.BytesIO()
    np.savez(buffer, v0=v0, success_rate=rate, seeds=seeds)
    path = run.run_dir / "calibration.npz"
    atomic_write_bytes(path, buffer.getvalue())
    return path
