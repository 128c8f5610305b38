"""Vector environments for whole-episode collection, and the backend factory.

The "gymnasium" backend is :class:`EpisodeVectorEnv`, a ``gymnasium.vector.VectorEnv`` over
``num_envs`` sparse task environments with autoreset DISABLED: after an environment's episode
ends it is not stepped again (its last outputs are repeated, ``reward = 0``) until the next
``reset``, so no simulation time is spent on finished episodes while the others run on. That is
the contract the episode collector relies on: reset all, step until every env has ended, read
each env only up to its own end.

The "batched" backend: array-math dynamics for CartPole, MountainCar and Pendulum
(:mod:`sppo_bench.control.batched`) and SparseHopper on ``mujoco.rollout``
(:mod:`sppo_bench.control.batched_hopper`), all ``VectorEnv`` classes with the same API, keyed by
Gymnasium id in ``BATCHED``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from sppo_bench.control.batched import BATCHED_TASKS
from sppo_bench.control.batched_hopper import SparseHopperBatched
from sppo_bench.control.tasks import SparseTask, TaskInfo, get_task
from sppo_bench.errors import UserError

BACKENDS = ("auto", "gymnasium", "batched")
BATCHED = {**BATCHED_TASKS, SparseHopperBatched.task_id: SparseHopperBatched}


class EpisodeVectorEnv(VectorEnv):
    """``num_envs`` sparse tasks stepped one after another, autoreset disabled.

    ``reset(seed=[s_0, ..., s_{N-1}])`` resets env i with seed s_i (an int seeds all envs with
    ``seed + i``). ``step(actions [N, ...])`` returns ``obs [N, d]``, ``reward [N]``,
    ``terminated [N]``, ``truncated [N]`` and ``info = {"success": bool [N]}``. An env whose
    episode has ended keeps returning its final observation, flags and success with reward 0.
    """

    def __init__(self, envs: Sequence[SparseTask]) -> None:
        self.envs = list(envs)
        self.num_envs = len(self.envs)
        first = self.envs[0]
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.DISABLED}
        self.render_mode = None
        dtype = self.single_observation_space.dtype
        self._obs = np.zeros((self.num_envs, *self.single_observation_space.shape), dtype=dtype)
        self._terminated = np.zeros(self.num_envs, dtype=bool)
        self._truncated = np.zeros(self.num_envs, dtype=bool)
        self._success = np.zeros(self.num_envs, dtype=bool)

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None:
            seeds: list[int | None] = [None] * self.num_envs
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != self.num_envs:
                raise UserError(f"reset got {len(seeds)} seeds for {self.num_envs} environments")
        for i, (env, s) in enumerate(zip(self.envs, seeds, strict=True)):
            self._obs[i], _ = env.reset(seed=s, options=options)
        self._terminated[:] = False
        self._truncated[:] = False
        self._success[:] = False
        return self._obs.copy(), {"success": self._success.copy()}

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        active = ~(self._terminated | self._truncated)
        for i in np.flatnonzero(active):
            obs, reward, terminated, truncated, info = self.envs[i].step(actions[i])
            self._obs[i] = obs
            rewards[i] = reward
            self._terminated[i] = terminated
            self._truncated[i] = truncated
            self._success[i] = info["success"]
        return (
            self._obs.copy(),
            rewards,
            self._terminated.copy(),
            self._truncated.copy(),
            {"success": self._success.copy()},
        )

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def resolve_backend(task: str | TaskInfo, backend: str = "auto") -> str:
    """The backend that ``make_vector_env`` will use: "gymnasium" or "batched"."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    name = get_task(task).env_id
    if backend == "gymnasium":
        return "gymnasium"
    supported = BATCHED
    if backend == "batched":
        if name not in supported:
            valid = ", ".join(sorted(supported)) or "none"
            raise UserError(f"backend 'batched' has no task {name!r}; it has: {valid}")
        return "batched"
    return "batched" if name in supported else "gymnasium"


def make_vector_env(task: str | TaskInfo, num_envs: int, backend: str = "auto") -> VectorEnv:
    """``num_envs`` copies of ``task`` (``TaskInfo``, short name or Gymnasium id) as one
    ``VectorEnv``.

    backend: "gymnasium" (:class:`EpisodeVectorEnv`), "batched" (array-math dynamics; an error
    where unavailable) or "auto" (batched where it exists for the task, else gymnasium).
    """
    if num_envs < 1:
        raise UserError(f"num_envs must be >= 1, got {num_envs}")
    info = get_task(task)
    if resolve_backend(info, backend) == "batched":
        return BATCHED[info.env_id](num_envs)
    return EpisodeVectorEnv([info.cls() for _ in range(num_envs)])


def space_dims(venv: VectorEnv) -> tuple[int, bool, int]:
    """(observation dim, discrete?, action dim or number of actions) of a vector env."""
    obs_dim = int(np.prod(venv.single_observation_space.shape))
    space = venv.single_action_space
    if isinstance(space, gym.spaces.Discrete):
        return obs_dim, True, int(space.n)
    return obs_dim, False, int(np.prod(space.shape))
