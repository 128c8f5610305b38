"""Rolling out a ``Policy`` on a sparse task: batched actors and success-rate evaluation.

The fixed evaluation start states are seeds ``EVAL_SEED + i`` for ``i < n_eval``; deterministic
evaluation takes argmax / the Gaussian mean, stochastic evaluation samples with a generator
seeded from the run seed and the update, so an evaluation is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from sppo_bench.control.collector import EpisodeBatch, collect_episodes
from sppo_bench.control.policies import Policy

EVAL_SEED = 1_000_000


def policy_actor(
    policy: Policy, greedy: np.ndarray | bool, generator: torch.Generator | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """``obs [N, d] -> actions [N, ...]`` from ``policy``; ``greedy`` per env or for all."""
    greedy_t = torch.as_tensor(greedy, dtype=torch.bool)

    def act(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        return policy.act(obs_t, greedy_t, generator).numpy()

    return act


def rollout(
    venv: VectorEnv,
    policy: Policy,
    seeds: np.ndarray,
    horizon: int,
    greedy: np.ndarray | bool,
    generator: torch.Generator | None,
) -> EpisodeBatch:
    """Episodes from start states ``seeds [M]`` in chunks of ``venv.num_envs`` (M divisible by
    it, or smaller), concatenated in seed order and padded to the longest."""
    chunks = []
    greedy_arr = np.broadcast_to(np.asarray(greedy, dtype=bool), (len(seeds),))
    for start in range(0, len(seeds), venv.num_envs):
        part = seeds[start : start + venv.num_envs]
        if len(part) < venv.num_envs:
            raise ValueError(f"{len(seeds)} seeds do not fill vector envs of {venv.num_envs}")
        act = policy_actor(policy, greedy_arr[start : start + venv.num_envs], generator)
        chunks.append(collect_episodes(venv, act, part, horizon))
    return concat_batches(chunks)


def concat_batches(batches: list[EpisodeBatch]) -> EpisodeBatch:
    """Stack episode batches along N, padding T to the longest."""
    if len(batches) == 1:
        return batches[0]
    t = max(b.obs.shape[1] for b in batches)

    def pad(x: np.ndarray) -> np.ndarray:
        widths = [(0, 0), (0, t - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
        return np.pad(x, widths)

    return EpisodeBatch(
        np.concatenate([pad(b.obs) for b in batches]),
        np.concatenate([pad(b.actions) for b in batches]),
        np.concatenate([pad(b.rewards) for b in batches]),
        np.concatenate([pad(b.mask) for b in batches]),
        np.concatenate([b.lengths for b in batches]),
        np.concatenate([b.success for b in batches]),
        np.concatenate([b.final_obs for b in batches]),
    )


def eval_seeds(n_eval: int) -> np.ndarray:
    """The fixed evaluation start states: ``EVAL_SEED + i``, ``i < n_eval``."""
    return EVAL_SEED + np.arange(n_eval)


def evaluate(
    venv: VectorEnv, policy: Policy, n_eval: int, horizon: int, generator: torch.Generator
) -> tuple[float, float, EpisodeBatch]:
    """(deterministic success rate, stochastic success rate, the stochastic episodes)."""
    seeds = eval_seeds(n_eval)
    det = rollout(venv, policy, seeds, horizon, True, None)
    sto = rollout(venv, policy, seeds, horizon, False, generator)
    return float(det.success.mean()), float(sto.success.mean()), sto
