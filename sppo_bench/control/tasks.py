"""The five sparse binary-reward control tasks as Gymnasium environments.

Each task wraps a Gymnasium base environment (built directly, without its own time limit) and
replaces the reward: ``r_t = 0`` for every step except the last step of a successful episode,
where ``r_t = 1``. The success rules themselves live in :mod:`sppo_bench.control.rules`.

- Early ends of the base task (pole fell, MountainCar reached the goal, Hopper unhealthy,
  LunarLander crashed or came to rest) are ``terminated=True``.
- Reaching the horizon ``H`` is ``truncated=True``; no episode runs past ``H``.
- Every step's ``info["success"]`` is a bool; on the final step it equals the reward.
- Continuous actions are clipped to the action bounds before they reach the base env.

Importing :mod:`sppo_bench.control` registers the ids ``sppo_bench/<Name>-v0`` (see ``TASKS``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from sppo_bench.control import rules
from sppo_bench.errors import UserError


class RangeCheckedDiscrete(gym.spaces.Discrete):
    """``Discrete`` whose membership test of a Python int is a range check. LunarLander asserts
    ``action_space.contains(action)`` on every step, and ``Discrete.contains`` builds numpy's
    ``iinfo`` for an int each time: ~8% of a seed-stacked LunarLander update. The answer is the
    same for every value (other values go to ``Discrete.contains``); the space's state (its
    ``np_random``) is the original's, since ``SparseTask`` only changes the object's class."""

    def contains(self, x: Any) -> bool:
        if type(x) is int:
            return bool(self.start <= x < self.start + self.n)
        return super().contains(x)


class SparseTask(gym.Wrapper, ABC):
    """Base class: horizon, binary terminal reward, ``info["success"]``.

    Subclasses set ``horizon`` and implement ``_success(obs, terminated, base_info) -> bool``,
    called once, on the final step. ``base_reward`` holds the base env's own reward of the last
    step (the expert's reward shaping reads it; the sparse task never returns it).
    """

    horizon: int = 0

    def __init__(self, base: gym.Env) -> None:
        super().__init__(base)
        self._t = 0
        self.base_reward = 0.0
        self._continuous = isinstance(self.action_space, gym.spaces.Box)
        if type(base.unwrapped.action_space) is gym.spaces.Discrete:
            base.unwrapped.action_space.__class__ = RangeCheckedDiscrete

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _ = self.env.reset(seed=seed, options=options)
        self._t = 0
        self.base_reward = 0.0
        return obs, {"success": False}

    def _base_terminated(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        return bool(terminated)

    @abstractmethod
    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        """Implemented by each task."""

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._continuous:
            space = self.action_space
            action = np.clip(np.asarray(action, dtype=space.dtype), space.low, space.high)
        else:
            action = int(action)
        obs, base_reward, base_terminated, _, base_info = self.env.step(action)
        self._t += 1
        self.base_reward = float(base_reward)
        terminated = self._base_terminated(obs, base_terminated, base_info)
        truncated = (not terminated) and self._t >= self.horizon
        success = (
            bool(self._success(obs, terminated, base_info)) if terminated or truncated else False
        )
        return obs, float(success), terminated, truncated, {"success": success}


class PrecisionCartPole(SparseTask):
    """CartPole, H = 200: success iff the pole never fell and |theta| <= 0.5 deg at step 200."""

    horizon = rules.CARTPOLE_HORIZON

    def __init__(self, render_mode: str | None = None) -> None:
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        super().__init__(CartPoleEnv(render_mode=render_mode))

    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        # terminated here means the base CartPole's failure (pole angle or cart position).
        return bool(rules.precision_cartpole_success(obs[None], np.array([terminated]))[0])


class SparseMountainCar(SparseTask):
    """Discrete MountainCar, H = 1000: success iff position >= 0.45 (the episode ends there)."""

    horizon = rules.MOUNTAINCAR_HORIZON

    def __init__(self, render_mode: str | None = None) -> None:
        from gymnasium.envs.classic_control.mountain_car import MountainCarEnv

        super().__init__(MountainCarEnv(render_mode=render_mode))

    def _base_terminated(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        return bool(terminated) or bool(rules.mountaincar_success(obs[None])[0])

    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        return bool(rules.mountaincar_success(obs[None])[0])


class SparseHopper(SparseTask):
    """Hopper-v5, H = 1000: success iff never unhealthy and torso x > 1.0 m at step 1000.

    The base env terminates when unhealthy, so "never unhealthy" means "reached step 1000 without
    termination"; x is ``info["x_position"]`` (the torso's world x; the start is within 0.005 m
    of 0).
    """

    horizon = rules.HOPPER_HORIZON

    def __init__(self, render_mode: str | None = None) -> None:
        from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

        super().__init__(HopperEnv(render_mode=render_mode, terminate_when_unhealthy=True))

    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        x = np.array([base_info["x_position"]])
        return bool(rules.hopper_success(x, np.array([terminated]))[0])


class SparseLunarLander(SparseTask):
    """Discrete LunarLander-v3, H = 1000: success iff at the episode's end (at rest, or step
    1000) the lander has not crashed, both leg-contact flags are set and |x| < 0.4."""

    horizon = rules.LUNARLANDER_HORIZON

    def __init__(self, render_mode: str | None = None) -> None:
        from gymnasium.envs.box2d.lunar_lander import LunarLander

        super().__init__(LunarLander(render_mode=render_mode, continuous=False))

    def crashed(self, obs: np.ndarray) -> bool:
        """The base env's crash: body contact with the ground, or off-screen (|x| >= 1)."""
        return bool(self.env.unwrapped.game_over) or abs(float(obs[0])) >= 1.0

    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        return bool(rules.lunarlander_success(obs[None], np.array([self.crashed(obs)]))[0])


class SparsePendulum(SparseTask):
    """Pendulum, H = 1000: success iff cos(theta) > 0.8 at step 1000."""

    horizon = rules.PENDULUM_HORIZON

    def __init__(self, render_mode: str | None = None) -> None:
        from gymnasium.envs.classic_control.pendulum import PendulumEnv

        super().__init__(PendulumEnv(render_mode=render_mode))

    def _success(self, obs: np.ndarray, terminated: bool, base_info: dict) -> bool:
        return bool(rules.pendulum_success(obs[None])[0])


@dataclass(frozen=True)
class TaskInfo:
    """A task's short name (CLI, run folders, ``envs/<name>.yaml``), Gymnasium id and class."""

    name: str
    env_id: str
    cls: type[SparseTask]

    @property
    def horizon(self) -> int:
        return self.cls.horizon


TASKS: dict[str, TaskInfo] = {
    t.name: t
    for t in (
        TaskInfo("cartpole", "sppo_bench/PrecisionCartPole-v0", PrecisionCartPole),
        TaskInfo("mountaincar", "sppo_bench/SparseMountainCar-v0", SparseMountainCar),
        TaskInfo("hopper", "sppo_bench/SparseHopper-v0", SparseHopper),
        TaskInfo("lunarlander", "sppo_bench/SparseLunarLander-v0", SparseLunarLander),
        TaskInfo("pendulum", "sppo_bench/SparsePendulum-v0", SparsePendulum),
    )
}


def get_task(name: str | TaskInfo) -> TaskInfo:
    """Look up a task by short name or Gymnasium id (with or without ``sppo_bench/``); a
    resolved ``TaskInfo`` is returned as it is."""
    if isinstance(name, TaskInfo):
        return name
    for info in TASKS.values():
        if name in (info.name, info.env_id, info.env_id.split("/", 1)[1]):
            return info
    valid = ", ".join(f"{t.name} ({t.env_id})" for t in TASKS.values())
    raise UserError(f"unknown task {name!r}; valid: {valid}")


def register_tasks() -> None:
    """Register every task with Gymnasium under its id (idempotent)."""
    for info in TASKS.values():
        if info.env_id not in gym.registry:
            gym.register(
                id=info.env_id,
                entry_point=f"{__name__}:{info.cls.__name__}",
            )
