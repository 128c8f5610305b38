"""Hopper-v5 stepped in batches through MuJoCo's multi-threaded ``mujoco.rollout``.

A policy-in-the-loop collector needs one observation per env step, so each ``step`` is one
``Rollout.rollout`` call of ``nstep = frame_skip`` (4) physics steps for all ``N`` envs, run on a
persistent thread pool. Observations, health and torso x are computed from the returned states
with array math, as Gymnasium's ``Hopper-v5`` computes them:

    obs = (qpos[1:], clip(qvel, -10, 10))                      [N, 11]
    healthy = all(|qpos[2:], qvel| < 100) & 0.7 < z & -0.2 < angle < 0.2

Start states come from ``gym.make("Hopper-v5").reset(seed=s)`` (one loop at reset only).
"""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
from mujoco import rollout


class HopperRollout:
    """``N`` Hopper-v5 copies; ``step(actions [N, 3])`` → (obs [N, 11], healthy [N], x [N])."""

    def __init__(self, num_envs: int, nthread: int = 2) -> None:
        self._env = gym.make("Hopper-v5")
        base = self._env.unwrapped
        self.model = base.model
        self.frame_skip = base.frame_skip
        self.num_envs = num_envs
        self.spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self.nstate = mujoco.mj_stateSize(self.model, self.spec)
        self.nq, self.nv = self.model.nq, self.model.nv
        self._datas = [mujoco.MjData(self.model) for _ in range(max(nthread, 1))]
        self._models = [self.model] * num_envs
        self._pool = rollout.Rollout(nthread=nthread)
        self._out = np.empty((num_envs, self.frame_skip, self.nstate))
        self._ctrl = np.empty((num_envs, self.frame_skip, self.model.nu))
        self.state = np.empty((num_envs, self.nstate))
        # FULLPHYSICS layout: time, qpos, qvel, act, ... (Hopper has no actuator activations)
        self._qpos = slice(1, 1 + self.nq)
        self._qvel = slice(1 + self.nq, 1 + self.nq + self.nv)

    def reset(self, seeds: list[int]) -> np.ndarray:
        base = self._env.unwrapped
        for i, s in enumerate(seeds):
            self._env.reset(seed=s)
            mujoco.mj_getState(self.model, base.data, self.state[i], self.spec)
        return self.observe()

    def observe(self) -> np.ndarray:
        qpos, qvel = self.state[:, self._qpos], self.state[:, self._qvel]
        return np.concatenate((qpos[:, 1:], np.clip(qvel, -10.0, 10.0)), axis=1)

    def healthy(self) -> np.ndarray:
        qpos, qvel = self.state[:, self._qpos], self.state[:, self._qvel]
        rest = np.concatenate((qpos[:, 2:], qvel), axis=1)
        z, angle = qpos[:, 1], qpos[:, 2]
        return (np.abs(rest) < 100.0).all(axis=1) & (z > 0.7) & (angle > -0.2) & (angle < 0.2)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._ctrl[:] = actions[:, None, :]
        self._pool.rollout(
            self._models,
            self._datas,
            self.state,
            self._ctrl,
            nstep=self.frame_skip,
            state=self._out,
            skip_checks=True,
        )
        self.state[:] = self._out[:, -1]
        return self.observe(), self.healthy(), self.state[:, self._qpos][:, 0].copy()

    def close(self) -> None:
        self._pool.close()
        self._env.close()


def max_deviation_from_gymnasium(num_envs: int = 4, steps: int = 100, seed: int = 0) -> float:
    """Largest |obs difference| between this stepper and ``gym.make("Hopper-v5")`` driven by the
    same seeds and random actions for ``steps`` steps (until any base env terminates)."""
    rng = np.random.default_rng(seed)
    seeds = [seed + i for i in range(num_envs)]
    fast = HopperRollout(num_envs)
    bases = [gym.make("Hopper-v5") for _ in range(num_envs)]
    obs = fast.reset(seeds)
    base_obs = np.stack([b.reset(seed=s)[0] for b, s in zip(bases, seeds, strict=True)])
    worst = float(np.abs(obs - base_obs).max())
    for _ in range(steps):
        actions = rng.uniform(-1.0, 1.0, size=(num_envs, 3))
        obs, healthy, _ = fast.step(actions)
        outs = [b.step(a) for b, a in zip(bases, actions, strict=True)]
        base_obs = np.stack([o[0] for o in outs])
        worst = max(worst, float(np.abs(obs - base_obs).max()))
        if not (healthy == ~np.array([o[2] for o in outs])).all():
            return float("inf")
        if any(o[2] for o in outs):
            break
    fast.close()
    for b in bases:
        b.close()
    return worst
