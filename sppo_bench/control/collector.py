"""Whole-episode collection from a vector environment, inference batched over environments.

``collect_episodes`` resets every env of a ``VectorEnv`` with its own seed, then at each step
asks ``act(obs [N, d]) -> actions [N, ...]`` once for all envs, and steps until every env's
episode has ended. Each env is recorded only up to its own end; anything a backend returns after
that (a repeated final step or an autoreset) is ignored, so the collector never relies on
autoreset. The result is padded to ``[N, T]`` with ``T`` = the longest episode (at most H).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium.vector import VectorEnv


@dataclass
class EpisodeBatch:
    """N episodes padded to T steps.

    obs: ``[N, T, d]`` observation before each step (``obs[:, 0]`` is the start state s_0).
    actions: ``[N, T]`` (discrete) or ``[N, T, a]`` (continuous), as given to the env.
    rewards: ``[N, T]`` float32, 0 on padding. mask: ``[N, T]`` float32, 1 on real steps.
    lengths: ``[N]`` int64. success: ``[N]`` bool (the final step's ``info["success"]``).
    final_obs: ``[N, d]`` observation after each episode's last step.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray
    success: np.ndarray
    final_obs: np.ndarray

    @property
    def num_steps(self) -> int:
        return int(self.lengths.sum())

    def select(self, rows: np.ndarray) -> EpisodeBatch:
        """The episodes at ``rows`` (an index or bool array), trimmed to their longest length."""
        lengths = self.lengths[rows]
        t = int(lengths.max()) if len(lengths) else 0
        return EpisodeBatch(
            self.obs[rows, :t],
            self.actions[rows, :t],
            self.rewards[rows, :t],
            self.mask[rows, :t],
            lengths,
            self.success[rows],
            self.final_obs[rows],
        )


def collect_episodes(
    venv: VectorEnv,
    act: Callable[[np.ndarray], np.ndarray],
    seeds: Sequence[int],
    horizon: int,
) -> EpisodeBatch:
    """Run one episode in each of the ``venv.num_envs`` envs (start state i from ``seeds[i]``).

    ``act`` maps the observations of all envs ``[N, d]`` to actions ``[N, ...]``; rows of envs
    that have ended are computed but ignored. Raises if an env outlives ``horizon``.
    """
    n = venv.num_envs
    obs, _ = venv.reset(seed=[int(s) for s in seeds])
    obs = np.asarray(obs)
    action_shape = venv.single_action_space.shape
    action_dtype = venv.single_action_space.dtype
    obs_buf = np.zeros((n, horizon, *obs.shape[1:]), dtype=np.float32)
    act_buf = np.zeros((n, horizon, *action_shape), dtype=action_dtype)
    rew_buf = np.zeros((n, horizon), dtype=np.float32)
    mask = np.zeros((n, horizon), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    success = np.zeros(n, dtype=bool)
    final_obs = np.zeros_like(obs, dtype=np.float32)
    alive = np.ones(n, dtype=bool)
    t = 0
    for t in range(horizon):
        actions = np.asarray(act(obs))
        rows = slice(None) if alive.all() else alive  # a slice is cheaper than a mask
        obs_buf[rows, t] = obs[rows]
        act_buf[rows, t] = actions[rows]
        next_obs, reward, terminated, truncated, info = venv.step(actions)
        next_obs = np.asarray(next_obs)
        rew_buf[rows, t] = np.asarray(reward)[rows]
        mask[rows, t] = 1.0
        lengths[rows] += 1
        ended = alive & (np.asarray(terminated) | np.asarray(truncated))
        success[ended] = np.asarray(info["success"])[ended]
        final_obs[ended] = next_obs[ended]
        alive &= ~ended
        if not alive.any():
            break
        obs = next_obs
    if alive.any():
        raise RuntimeError(f"{int(alive.sum())} episodes ran past the horizon {horizon}")
    steps = t + 1
    return EpisodeBatch(
        obs_buf[:, :steps],
        act_buf[:, :steps],
        rew_buf[:, :steps],
        mask[:, :steps],
        lengths,
        success,
        final_obs,
    )
