"""SparseHopper on ``mujoco.rollout`` against the Gymnasium task, step for step.

Same seeds and actions drive ``SparseHopperBatched`` and one ``SparseHopper`` per env: equal
start observations, observations to 1e-9, and identical rewards, termination, truncation and
success at every step; ended envs stay frozen. A shortened horizon (and a lowered x threshold)
makes episodes reach the horizon and succeed, so the truncation and success paths are compared
too. ``make_vector_env`` uses the batched backend for Hopper by default."""

from __future__ import annotations

import numpy as np
import pytest

from sppo_bench.control import rules
from sppo_bench.control.batched_hopper import SparseHopperBatched
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.tasks import SparseHopper

N_ENVS = 6


def _compare(horizon: int | None, scale: float, seed: int) -> tuple[int, int, int]:
    """Drive both for up to ``horizon`` steps; returns (steps, terminated, succeeded)."""
    rng = np.random.default_rng(seed)
    seeds = [int(s) for s in rng.integers(0, 2**31, N_ENVS)]
    env, bases = SparseHopperBatched(N_ENVS), [SparseHopper() for _ in range(N_ENVS)]
    if horizon is not None:
        env.horizon = horizon
        for b in bases:
            b.horizon = horizon
    obs, _ = env.reset(seed=seeds)
    base_obs = np.stack([b.reset(seed=s)[0] for b, s in zip(bases, seeds, strict=True)])
    np.testing.assert_array_equal(obs, base_obs)
    ended = np.zeros(N_ENVS, dtype=bool)
    frozen = obs.copy()
    terminated_count = success_count = 0
    for t in range(1, env.horizon + 1):
        actions = rng.uniform(-scale, scale, size=(N_ENVS, 3)).astype(np.float32)
        obs, reward, term, trunc, info = env.step(actions)
        np.testing.assert_array_equal(obs[ended], frozen[ended])  # ended envs stay frozen
        for i, base in enumerate(bases):
            if ended[i]:
                continue
            b_obs, b_reward, b_term, b_trunc, b_info = base.step(actions[i])
            np.testing.assert_allclose(obs[i], b_obs, rtol=0, atol=1e-9)
            assert (reward[i], term[i], trunc[i]) == (b_reward, b_term, b_trunc), (t, i)
            assert info["success"][i] == b_info["success"], (t, i)
            if b_term or b_trunc:
                ended[i] = True
                terminated_count += int(b_term)
                success_count += int(b_info["success"])
        frozen = obs.copy()
        if ended.all():
            break
    env.close()
    return t, terminated_count, success_count


def test_random_actions_until_every_hopper_falls():
    steps, terminated, _ = _compare(None, 1.0, seed=0)
    assert terminated == N_ENVS and steps < 1000  # all fell: the termination path is compared


def test_horizon_and_success_paths(monkeypatch):
    monkeypatch.setattr(rules, "HOPPER_MIN_FINAL_X", 0.0)  # x > 0 at the horizon succeeds
    steps, terminated, succeeded = _compare(40, 0.05, seed=1)
    assert steps == 40 and terminated < N_ENVS and 0 < succeeded


def test_batched_backend_is_hoppers_default():
    env = make_vector_env("hopper", 3)
    assert isinstance(env, SparseHopperBatched)
    with pytest.raises(ValueError, match=r"actions \[3, 3\]"):
        env.reset(seed=0)
        env.step(np.zeros((3, 2)))
