"""Dense, shaped rewards for training the experts (stage 1 only; RL never sees them).

Each shaped env wraps the sparse task itself, so dynamics, horizon, termination and success are
exactly the task's; only the reward changes. Every shaped reward adds ``success_bonus`` on the
final step of a successful episode (the sparse task's reward times the bonus). The coefficients
are the ``expert.shaping`` mapping of ``envs/<task>.yaml``; names not listed here are an error.

- cartpole: r = 1 - min(1, k_theta |theta| + k_theta_dot |theta_dot| + k_x |x|)
- mountaincar: r = k_energy (gamma phi(s') - phi(s)), phi = mechanical energy scaled to 0 at
  the valley floor at rest and 1 at the goal height (potential-based shaping)
- hopper: r = alive + k_vel clip(x_velocity, -v_cap, v_cap) [x < x_target] - k_ctrl |a|^2: the
  speed bonus stops once the torso has passed x_target, so the best behaviour is to hop past
  it and then stay up (standing still is a stable way to survive)
- lunarlander: r = k_base * (the base LunarLander reward: distance, speed, tilt, leg contact,
  engine use, -100 crash / +100 at rest)
- pendulum: r = k_base * base_reward / 16.27 + k_upright [cos(theta) > 0.8]
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np

from sppo_bench.control.tasks import SparseTask, get_task
from sppo_bench.errors import UserError

DEFAULTS: dict[str, dict[str, float]] = {
    "cartpole": {"k_theta": 20.0, "k_theta_dot": 0.5, "k_x": 0.1, "success_bonus": 10.0},
    "mountaincar": {"k_energy": 10.0, "gamma": 0.99, "success_bonus": 10.0},
    "hopper": {
        "alive": 1.0,
        "k_vel": 3.0,
        "v_cap": 0.5,
        "x_target": 1.5,
        "k_ctrl": 1e-3,
        "success_bonus": 100.0,
    },
    "lunarlander": {"k_base": 1.0, "success_bonus": 100.0},
    "pendulum": {"k_base": 1.0, "k_upright": 1.0, "success_bonus": 10.0},
}

_MC_FORCE_G = 0.0025  # MountainCar's gravity term: v' = v + (a - 1) 0.001 - 0.0025 cos(3x)


def _mc_energy(obs: np.ndarray) -> float:
    """MountainCar mechanical energy per unit mass: v^2 / 2 + 0.0025 sin(3x) / 3."""
    return 0.5 * float(obs[1]) ** 2 + _MC_FORCE_G * math.sin(3.0 * float(obs[0])) / 3.0


_MC_E_LOW = -_MC_FORCE_G / 3.0  # valley floor at rest: sin(3x) = -1
_MC_E_GOAL = _MC_FORCE_G * math.sin(3.0 * 0.45) / 3.0


class ShapedReward(gym.Wrapper):
    """Replace a sparse task's reward with the task's shaped reward (see module doc)."""

    def __init__(self, env: SparseTask, task: str, coefficients: dict[str, float]) -> None:
        super().__init__(env)
        self.task = get_task(task).name
        defaults = DEFAULTS[self.task]
        unknown = sorted(set(coefficients) - set(defaults))
        if unknown:
            raise UserError(
                f"unknown shaping coefficient {unknown[0]!r} for {self.task}; "
                f"valid: {', '.join(defaults)}"
            )
        self.k = {**defaults, **{k: float(v) for k, v in coefficients.items()}}
        self._prev_obs: np.ndarray | None = None
        self._prev_x = 0.0

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._prev_obs = np.array(obs)
        if self.task == "hopper":
            self._prev_x = float(self.env.unwrapped.data.qpos[0])
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, sparse, terminated, truncated, info = self.env.step(action)
        k = self.k
        if self.task == "cartpole":
            x, _, theta, theta_dot = (float(v) for v in obs)
            cost = k["k_theta"] * abs(theta) + k["k_theta_dot"] * abs(theta_dot) + k["k_x"] * abs(x)
            shaped = 0.0 if terminated else 1.0 - min(1.0, cost)
        elif self.task == "mountaincar":
            span = _MC_E_GOAL - _MC_E_LOW
            phi_prev = (_mc_energy(self._prev_obs) - _MC_E_LOW) / span
            phi = 0.0 if terminated else (_mc_energy(obs) - _MC_E_LOW) / span
            shaped = k["k_energy"] * (k["gamma"] * phi - phi_prev)
        elif self.task == "hopper":
            data = self.env.unwrapped.data
            x = float(data.qpos[0])
            velocity = (x - self._prev_x) / self.env.unwrapped.dt
            before_target = self._prev_x < k["x_target"]
            self._prev_x = x
            ctrl = float(np.sum(np.square(data.ctrl)))
            shaped = 0.0 if terminated else k["alive"]
            if before_target:
                shaped += k["k_vel"] * float(np.clip(velocity, -k["v_cap"], k["v_cap"]))
            shaped -= k["k_ctrl"] * ctrl
        elif self.task == "lunarlander":
            shaped = k["k_base"] * self.env.base_reward
        else:  # pendulum
            shaped = k["k_base"] * self.env.base_reward / 16.2736044
            shaped += k["k_upright"] * float(obs[0] > 0.8)
        self._prev_obs = np.array(obs)
        return obs, shaped + k["success_bonus"] * sparse, terminated, truncated, info


def make_shaped_env(
    task: str, coefficients: dict[str, float], train_horizon: int | None = None
) -> gym.Env:
    """The task with its shaped reward, optionally cut at ``train_horizon`` steps."""
    info = get_task(task)
    env: gym.Env = ShapedReward(info.cls(), info.name, coefficients)
    if train_horizon is not None and train_horizon < info.horizon:
        env = gym.wrappers.TimeLimit(env, max_episode_steps=train_horizon)
    return env
