"""The control suite's success rules: one pure, batched function per task.

These are the single source of truth for what "success" means; the Gymnasium wrappers and the
batched dynamics both call them. Each takes arrays with a leading batch dimension ``[N, ...]`` and
returns a bool array ``[N]``. The written rules, with the choices the paper leaves open, are in
``envs/<task>.yaml``.
"""

from __future__ import annotations

import math

import numpy as np

CARTPOLE_HORIZON = 200
CARTPOLE_MAX_FINAL_ANGLE_RAD = math.radians(0.5)
MOUNTAINCAR_HORIZON = 1000
MOUNTAINCAR_GOAL_POSITION = 0.45
HOPPER_HORIZON = 1000
HOPPER_MIN_FINAL_X = 1.0
LUNARLANDER_HORIZON = 1000
LUNARLANDER_MAX_ABS_X = 0.4
PENDULUM_HORIZON = 1000
PENDULUM_MIN_FINAL_COS = 0.8


def precision_cartpole_success(obs: np.ndarray, fell: np.ndarray) -> np.ndarray:
    """At step 200: the pole never fell and |theta| <= 0.5 degrees. ``obs [N, 4]`` (x, x_dot,
    theta, theta_dot), ``fell [N]`` bool (the base CartPole's termination fired)."""
    return ~np.asarray(fell, bool) & (np.abs(obs[:, 2]) <= CARTPOLE_MAX_FINAL_ANGLE_RAD)


def mountaincar_success(obs: np.ndarray) -> np.ndarray:
    """Position >= 0.45; the episode ends there. ``obs [N, 2]`` (position, velocity)."""
    return obs[:, 0] >= MOUNTAINCAR_GOAL_POSITION


def hopper_success(x_position: np.ndarray, unhealthy: np.ndarray) -> np.ndarray:
    """At step 1000: never unhealthy and torso x > 1.0 m (x measured from the world origin; the
    start is within 0.005 m of it). ``x_position [N]``, ``unhealthy [N]`` bool."""
    return ~np.asarray(unhealthy, bool) & (np.asarray(x_position) > HOPPER_MIN_FINAL_X)


def lunarlander_success(obs: np.ndarray, crashed: np.ndarray) -> np.ndarray:
    """At the episode's end (at rest, or step 1000): no crash, both leg-contact flags set and
    |x| < 0.4 in observation units (the helipad spans about |x| < 0.2). ``obs [N, 8]``,
    ``crashed [N]`` bool (body contact with the ground, or |x| >= 1 off-screen)."""
    legs = (obs[:, 6] > 0.5) & (obs[:, 7] > 0.5)
    return ~np.asarray(crashed, bool) & legs & (np.abs(obs[:, 0]) < LUNARLANDER_MAX_ABS_X)


def pendulum_success(obs: np.ndarray) -> np.ndarray:
    """At step 1000: cos(theta) > 0.8. ``obs [N, 3]`` (cos theta, sin theta, theta_dot)."""
    return obs[:, 0] > PENDULUM_MIN_FINAL_COS
