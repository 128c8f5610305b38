"""SparseHopper stepped in batches through MuJoCo's multi-threaded ``mujoco.rollout``.

A ``_BatchedSparseEnv`` (see :mod:`sppo_bench.control.batched`: per-env seeds at reset, no
autoreset, ended envs frozen) whose state is MuJoCo's full physics state, ``[k, N]`` with
``k = mj_stateSize(FULLPHYSICS)`` (time, qpos, qvel, warm-start accelerations, ...). One ``step``
is one ``Rollout.rollout`` call of ``frame_skip`` (4) physics steps for all ``N`` envs, with the
actions clipped to [-1, 1] as the sparse task clips them. Observations, health and torso x are
array math over the returned states, as Gymnasium's ``Hopper-v5`` computes them::

    obs     = (qpos[1:], clip(qvel, -10, 10))                                    [N, 11] float64
    healthy = all(|(qpos[2:], qvel)| < 100) & z > 0.7 & -0.2 < angle < 0.2       [N]
    success = healthy throughout & x > 1.0 m at step 1000   (rules.hopper_success)

Start states are drawn as ``HopperEnv.reset_model`` draws them (qpos and qvel each uniform within
+-0.005 of the initial pose, from the env's seeded generator), then ``mj_forward`` as
``set_state`` does; the state is read with ``mj_getState`` (a loop over envs at reset only).
The tests check observations, termination, x and success against ``SparseHopper`` step for step.
"""

from __future__ import annotations

import os
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from mujoco import rollout

from sppo_bench.control import rules
from sppo_bench.control.batched import _BatchedSparseEnv

RESET_NOISE = 5e-3  # HopperEnv's reset_noise_scale
HEALTHY_STATE, HEALTHY_Z, HEALTHY_ANGLE = 100.0, 0.7, 0.2
QVEL_CLIP = 10.0


class SparseHopperBatched(_BatchedSparseEnv):
    """``N`` SparseHopper copies on ``mujoco.rollout``; see the module docstring."""

    task_id = "sppo_bench/SparseHopper-v0"
    base_id = "Hopper-v5"
    horizon = rules.HOPPER_HORIZON

    def __init__(self, num_envs: int, nthread: int | None = None) -> None:
        from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

        base = HopperEnv()
        self.model = base.model
        self.frame_skip = base.frame_skip
        self._init_qpos, self._init_qvel = base.init_qpos.copy(), base.init_qvel.copy()
        base.close()
        self.single_observation_space = spaces.Box(-np.inf, np.inf, (11,), np.float64)
        self.single_action_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
        super().__init__(num_envs)
        self._obs = np.zeros((self.num_envs, 11))
        self._spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._nstate = mujoco.mj_stateSize(self.model, self._spec)
        nq, nv = self.model.nq, self.model.nv
        self._qpos, self._qvel = slice(1, 1 + nq), slice(1 + nq, 1 + nq + nv)
        threads = nthread or min(os.cpu_count() or 1, self.num_envs, 4)
        self._data = mujoco.MjData(self.model)
        self._datas = [mujoco.MjData(self.model) for _ in range(threads)]
        self._models = [self.model] * self.num_envs
        self._pool = rollout.Rollout(nthread=threads)
        self._out = np.empty((self.num_envs, self.frame_skip, self._nstate))
        self._ctrl = np.empty((self.num_envs, self.frame_skip, self.model.nu))
        self._x = np.zeros(self.num_envs)

    def _draw_start(self, rng: np.random.Generator) -> np.ndarray:
        qpos = self._init_qpos + rng.uniform(-RESET_NOISE, RESET_NOISE, size=self.model.nq)
        qvel = self._init_qvel + rng.uniform(-RESET_NOISE, RESET_NOISE, size=self.model.nv)
        mujoco.mj_resetData(self.model, self._data)
        self._data.qpos[:], self._data.qvel[:] = qpos, qvel
        mujoco.mj_forward(self.model, self._data)
        state = np.empty(self._nstate)
        mujoco.mj_getState(self.model, self._data, state, self._spec)
        return state

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        actions = actions.reshape(self.num_envs, -1)
        if actions.shape[1] != 3:
            raise ValueError(f"expected actions [{self.num_envs}, 3], got {actions.shape}")
        return np.clip(actions, -1.0, 1.0)

    def _physics(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._ctrl[:] = actions[:, None, :]
        self._pool.rollout(
            self._models,
            self._datas,
            np.ascontiguousarray(state.T),
            self._ctrl,
            nstep=self.frame_skip,
            state=self._out,
            skip_checks=True,
        )
        new = np.ascontiguousarray(self._out[:, -1].T)  # [k, N]
        self._x = new[self._qpos][0].copy()
        return new, ~self._healthy(new)

    def _observe(self, state: np.ndarray) -> np.ndarray:
        qpos, qvel = state[self._qpos], state[self._qvel]
        return np.concatenate((qpos[1:], np.clip(qvel, -QVEL_CLIP, QVEL_CLIP)), axis=0).T

    def _healthy(self, state: np.ndarray) -> np.ndarray:
        qpos, qvel = state[self._qpos], state[self._qvel]
        rest = np.concatenate((qpos[2:], qvel), axis=0)
        z, angle = qpos[1], qpos[2]
        in_range = ((-HEALTHY_STATE < rest) & (rest < HEALTHY_STATE)).all(axis=0)
        return in_range & (z > HEALTHY_Z) & (-HEALTHY_ANGLE < angle) & (angle < HEALTHY_ANGLE)

    def _end_rule(self, obs, base_term, at_horizon):
        return base_term, rules.hopper_success(self._x, base_term)

    def close_extras(self, **kwargs: Any) -> None:
        self._pool.close()
