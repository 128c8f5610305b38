"""Batched numpy dynamics for the three classic-control tasks of the sparse control suite
(SparseHopper's batched backend, on ``mujoco.rollout``, is ``control.batched_hopper``).

Each class is a ``gymnasium.vector.VectorEnv`` that steps ``N`` copies of one task with whole-array
math (no Python loop over environments in ``step``). The physics, constants, operation order and
dtypes copy Gymnasium's ``CartPole-v1``, ``MountainCar-v0`` and ``Pendulum-v1`` so that, for the
same seeds and action sequences, observations agree with Gymnasium's to the last float (the tests
check it over full horizons). The sparse task layer follows the control-track contract:

- ``reset(seed=[s_0, ..., s_{N-1}])`` draws env ``i``'s start state from
  ``gymnasium.utils.seeding.np_random(s_i)`` exactly as the base env's ``reset(seed=s_i)`` does
  (one short loop over envs at reset only). ``seed=None`` continues each env's own generator (the
  base env's behaviour for an unseeded reset); an int ``s`` means seeds ``s, s+1, ..., s+N-1``
  (Gymnasium's vector convention).
- ``step(actions)`` returns ``obs [N, d]`` (float32), ``reward [N]`` (float64, exactly 0.0 or 1.0,
  1.0 only on the final step of a successful episode), ``terminated [N]`` (an early end),
  ``truncated [N]`` (step count reached the horizon ``H``, as Gymnasium's ``TimeLimit`` reports)
  and ``info = {"success": bool [N]}``. Success is decided by ``sppo_bench.control.rules`` on the
  float32 observation of the final step.
- There is no autoreset: an env that has ended stays frozen (same observation, reward 0, its
  ``terminated``/``truncated``/``success`` flags kept as they were at its end) until the next
  ``reset``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import VectorEnv
from gymnasium.vector.utils import batch_space
from gymnasium.vector.vector_env import AutoresetMode

from sppo_bench.control import rules


class _BatchedSparseEnv(VectorEnv, ABC):
    """Shared reset / bookkeeping; subclasses define the start-state draw and the physics.

    State is kept structure-of-arrays, ``self._state [k, N]`` float64, so each physical quantity
    is one contiguous row.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}
    task_id: str = ""
    base_id: str = ""
    horizon: int = 0

    def __init__(self, num_envs: int) -> None:
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._state: np.ndarray | None = None
        self._obs = np.zeros(
            (self.num_envs, self.single_observation_space.shape[0]), dtype=np.float32
        )
        self._t = 0
        self._done = np.zeros(self.num_envs, dtype=bool)
        self._any_done = False
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)
        self._success = np.zeros(self.num_envs, dtype=bool)

    # --- subclass hooks -------------------------------------------------------------------
    @abstractmethod
    def _draw_start(self, rng: np.random.Generator) -> np.ndarray:
        """One env's start state ``[k]`` float64, drawn as the base env's ``reset`` draws it."""

    @abstractmethod
    def _physics(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``state [k, N]``, ``actions`` → (new state ``[k, N]``, base termination ``[N]`` bool)."""

    def _observe(self, state: np.ndarray) -> np.ndarray:
        """``state [k, N]`` → observation ``[N, d]`` float32 (the base env's observation)."""
        return state.T.astype(np.float32)

    @abstractmethod
    def _end_rule(
        self, obs: np.ndarray, base_term: np.ndarray, at_horizon: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """→ (terminated ``[N]``, success ``[N]``; success read only where the env ends)."""

    @abstractmethod
    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        """Implemented by each task."""

    # --- VectorEnv API ----------------------------------------------------------------------
    def reset(
        self,
        *,
        seed: int | list[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset all envs; ``seed`` is a list of per-env seeds, one int, or None (see module)."""
        if options:
            raise ValueError(f"{type(self).__name__}.reset takes no options, got {options!r}")
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} envs")
        starts = []
        for i, s in enumerate(seeds):  # reset only: per-env generators, as the base envs have
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
            starts.append(self._draw_start(self._rngs[i]))
        self._state = np.ascontiguousarray(np.stack(starts, axis=1), dtype=np.float64)
        self._obs = self._observe(self._state)
        self._t = 0
        self._done[:] = False
        self._any_done = False
        self._terminated[:] = False
        self._truncated[:] = False
        self._success[:] = False
        return self._obs.copy(), {}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Advance every live env one step; ended envs stay frozen (see module docstring)."""
        if self._state is None:
            raise RuntimeError("call reset before step")
        actions = self._check_actions(np.asarray(actions))
        new_state, base_term = self._physics(self._state, actions)
        self._t += 1
        at_horizon = np.full(self.num_envs, self._t >= self.horizon)
        obs = self._observe(new_state)
        terminated, success = self._end_rule(obs, base_term, at_horizon)
        ended = terminated | at_horizon
        reward = (ended & success).astype(np.float64)
        if self._any_done:  # freeze envs that ended earlier: keep their state and flags
            live = ~self._done
            new_state = np.where(live, new_state, self._state)
            obs = np.where(live[:, None], obs, self._obs)
            reward[self._done] = 0.0
            terminated = np.where(live, terminated, self._terminated)
            at_horizon = np.where(live, at_horizon, self._truncated)
            success = np.where(live, success & ended, self._success)
        else:
            success = success & ended
        self._state, self._obs = new_state, obs
        self._terminated, self._truncated, self._success = terminated, at_horizon, success
        self._done = terminated | at_horizon
        self._any_done = bool(self._done.any())
        return obs.copy(), reward, terminated.copy(), at_horizon.copy(), {"success": success.copy()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.task_id}, num_envs={self.num_envs})"


def _check_discrete(actions: np.ndarray, n: int, num_envs: int) -> np.ndarray:
    actions = actions.reshape(-1)
    if actions.shape != (num_envs,):
        raise ValueError(f"expected {num_envs} discrete actions, got shape {actions.shape}")
    if actions.dtype.kind not in "iub" or actions.min() < 0 or actions.max() >= n:
        raise ValueError(f"discrete actions must be ints in [0, {n}), got {actions!r}")
    return actions


class PrecisionCartPoleBatched(_BatchedSparseEnv):
    """CartPole-v1 physics (explicit Euler, tau = 0.02), H = 200. Terminated when the pole falls
    (|theta| > 12 deg) or the cart leaves |x| <= 2.4; success per
    ``rules.precision_cartpole_success`` at step 200. State rows: x, x_dot, theta, theta_dot
    (float64, as Gymnasium keeps them)."""

    task_id = "sppo_bench/PrecisionCartPole-v0"
    base_id = "CartPole-v1"
    horizon = rules.CARTPOLE_HORIZON
    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    total_mass = masspole + masscart
    polemass_length = masspole * length
    theta_threshold = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    _high = np.array([x_threshold * 2, np.inf, theta_threshold * 2, np.inf], dtype=np.float32)
    single_observation_space = spaces.Box(-_high, _high, dtype=np.float32)
    single_action_space = spaces.Discrete(2)

    def _draw_start(self, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(low=-0.05, high=0.05, size=(4,))

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        return _check_discrete(actions, 2, self.num_envs)

    def _physics(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, x_dot, theta, theta_dot = state
        force = np.where(actions == 1, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        fell = (
            (x < -self.x_threshold)
            | (x > self.x_threshold)
            | (theta < -self.theta_threshold)
            | (theta > self.theta_threshold)
        )
        return np.stack((x, x_dot, theta, theta_dot)), fell

    def _end_rule(self, obs, base_term, at_horizon):
        return base_term, rules.precision_cartpole_success(obs, base_term)


class SparseMountainCarBatched(_BatchedSparseEnv):
    """MountainCar-v0 physics (3 discrete actions), H = 1000; terminated as soon as the position
    reaches ``rules.MOUNTAINCAR_GOAL_POSITION`` (success). State rows: position, velocity."""

    task_id = "sppo_bench/SparseMountainCar-v0"
    base_id = "MountainCar-v0"
    horizon = rules.MOUNTAINCAR_HORIZON
    min_position, max_position, max_speed = -1.2, 0.6, 0.07
    goal_position, goal_velocity, force, gravity = 0.5, 0, 0.001, 0.0025
    single_observation_space = spaces.Box(
        np.array([min_position, -max_speed], dtype=np.float32),
        np.array([max_position, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = spaces.Discrete(3)

    def _draw_start(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([rng.uniform(low=-0.6, high=-0.4), 0.0])

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        return _check_discrete(actions, 3, self.num_envs)

    def _physics(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position, velocity = state
        velocity = velocity + ((actions - 1) * self.force + np.cos(3 * position) * (-self.gravity))
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position = np.clip(position + velocity, self.min_position, self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        base_term = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        return np.stack((position, velocity)), base_term

    def _end_rule(self, obs, base_term, at_horizon):
        reached = rules.mountaincar_success(obs)
        return reached | base_term, reached


class SparsePendulumBatched(_BatchedSparseEnv):
    """Pendulum-v1 physics (g = 10), H = 1000, continuous torque clipped to [-2, 2]; never
    terminates early; success per ``rules.pendulum_success`` at step 1000. State rows: theta,
    theta_dot; observation (cos theta, sin theta, theta_dot)."""

    task_id = "sppo_bench/SparsePendulum-v0"
    base_id = "Pendulum-v1"
    horizon = rules.PENDULUM_HORIZON
    max_speed, max_torque, dt, g, m, l = 8, 2.0, 0.05, 10.0, 1.0, 1.0  # noqa: E741
    single_observation_space = spaces.Box(
        -np.array([1.0, 1.0, max_speed], dtype=np.float32),
        np.array([1.0, 1.0, max_speed], dtype=np.float32),
        dtype=np.float32,
    )
    single_action_space = spaces.Box(-max_torque, max_torque, shape=(1,), dtype=np.float32)

    def _draw_start(self, rng: np.random.Generator) -> np.ndarray:
        high = np.array([np.pi, 1.0])
        return rng.uniform(low=-high, high=high)

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        if actions.size != self.num_envs or actions.dtype.kind != "f":
            raise ValueError(
                f"expected {self.num_envs} float torques, got {actions.dtype} {actions.shape}"
            )
        return actions.reshape(-1)

    def _physics(self, state: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        th, thdot = state
        g, m, l, dt = self.g, self.m, self.l, self.dt  # noqa: E741
        u = np.clip(actions, -self.max_torque, self.max_torque)
        newthdot = thdot + (3 * g / (2 * l) * np.sin(th) + 3.0 / (m * l**2) * u) * dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        return np.stack((newth, newthdot)), np.zeros(self.num_envs, dtype=bool)

    def _observe(self, state: np.ndarray) -> np.ndarray:
        th, thdot = state
        return np.stack((np.cos(th), np.sin(th), thdot), axis=1).astype(np.float32)

    def _end_rule(self, obs, base_term, at_horizon):
        return base_term, rules.pendulum_success(obs)


BATCHED_TASKS: dict[str, type[_BatchedSparseEnv]] = {  # the numpy dynamics of this module
    cls.task_id: cls
    for cls in (PrecisionCartPoleBatched, SparseMountainCarBatched, SparsePendulumBatched)
}
