"""Environment-only throughput measurements (random actions, no learning) for the benchmark.

Each function steps environments for about ``seconds`` of wall time after a short warm-up and
returns ``(env_steps, seconds)``; env steps count one step of one environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from sppo_bench.control.batched import BATCHED_TASKS


def _run_for(seconds: float, step: Callable[[], int]) -> tuple[int, float]:
    """Call ``step`` (returns env steps taken) until ``seconds`` have passed."""
    for _ in range(3):  # warm-up
        step()
    steps, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        steps += step()
    return steps, elapsed


def gymnasium_single(env_id: str, horizon: int, seconds: float) -> tuple[int, float]:
    """One ``gym.make(env_id)`` stepped in a Python loop with random actions (item a)."""
    env = gym.make(env_id, max_episode_steps=horizon)
    env.reset(seed=0)
    env.action_space.seed(0)
    sample = env.action_space.sample

    def step() -> int:
        _, _, terminated, truncated, _ = env.step(sample())
        if terminated or truncated:
            env.reset()
        return 1

    out = _run_for(seconds, step)
    env.close()
    return out


def gymnasium_vector(
    env_id: str, num_envs: int, horizon: int, seconds: float, mode: str = "sync"
) -> tuple[int, float]:
    """Gymnasium's ``SyncVectorEnv`` / ``AsyncVectorEnv`` (next-step autoreset) with random
    actions. Async uses one worker process per env and shared memory."""
    fns = [lambda: gym.make(env_id, max_episode_steps=horizon) for _ in range(num_envs)]
    if mode == "sync":
        venv = gym.vector.SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
    else:
        venv = gym.vector.AsyncVectorEnv(
            fns, shared_memory=True, autoreset_mode=AutoresetMode.NEXT_STEP
        )
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=0)
    venv.action_space.seed(0)
    actions = [venv.action_space.sample() for _ in range(64)]
    k = [0]

    def step() -> int:
        venv.step(actions[k[0] % 64])
        k[0] += 1
        return num_envs

    out = _run_for(seconds, step)
    venv.close()
    return out


def batched(task_id: str, num_envs: int, seconds: float) -> tuple[int, float]:
    """Our batched dynamics (item b): whole episodes of random actions, reset at the horizon.
    Only live envs' steps are counted (ended envs are frozen and cost no simulation)."""
    env = BATCHED_TASKS[task_id](num_envs)
    env.reset(seed=list(range(num_envs)))
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(16)]
    live = np.ones(num_envs, dtype=bool)
    k = [0]

    def step() -> int:
        n_live = int(live.sum())
        if n_live == 0:
            env.reset()
            live[:] = True
            n_live = num_envs
        _, _, terminated, truncated, _ = env.step(actions[k[0] % 16])
        k[0] += 1
        live[:] = ~(terminated | truncated)
        return n_live

    return _run_for(seconds, step)


def hopper_rollout(num_envs: int, seconds: float, nthread: int = 2) -> tuple[int, float]:
    """Hopper-v5 through ``mujoco.rollout`` with a thread pool, one call per env step."""
    from hopper_rollout import HopperRollout

    fast = HopperRollout(num_envs, nthread=nthread)
    seeds = list(range(num_envs))
    fast.reset(seeds)
    start_states = fast.state.copy()
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1.0, 1.0, size=(64, num_envs, 3))
    k = [0]

    def step() -> int:
        _, healthy, _ = fast.step(actions[k[0] % 64])
        k[0] += 1
        ended = ~healthy | (k[0] % 1000 == 0)  # restart ended envs from their start states
        fast.state[ended] = start_states[ended]
        return num_envs

    out = _run_for(seconds, step)
    fast.close()
    return out
