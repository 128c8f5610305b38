"""Batched control dynamics against Gymnasium's own environments, step for step, full horizon.

For each task, N envs are reset with per-env seeds and driven by action sequences (random, or
random mixed with a simple controller so that episodes also reach the horizon or the goal); the
same seeds and actions drive one ``gym.make(base, max_episode_steps=H)`` per env. Checked: equal
start observations, observations to float tolerance, the base env's termination and truncation,
the sparse reward / success against ``rules.py`` applied to the base env's final observation, and
that ended envs stay frozen.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from sppo_bench.control import rules
from sppo_bench.control.batched import (
    BATCHED_TASKS,
    PrecisionCartPoleBatched,
    SparseMountainCarBatched,
    SparsePendulumBatched,
)

N_ENVS = 12


def cartpole_policy(obs: np.ndarray, rng: np.random.Generator, eps: float) -> np.ndarray:
    """Push toward the side the pole falls to (3 theta + theta_dot), with eps random actions."""
    greedy = (3.0 * obs[:, 2] + obs[:, 3] > 0).astype(np.int64)
    return np.where(rng.random(len(obs)) < eps, rng.integers(0, 2, len(obs)), greedy)


def mountaincar_policy(obs: np.ndarray, rng: np.random.Generator, eps: float) -> np.ndarray:
    """Push along the velocity (energy pumping), with eps random actions in {0, 1, 2}."""
    greedy = np.where(obs[:, 1] >= 0, 2, 0).astype(np.int64)
    return np.where(rng.random(len(obs)) < eps, rng.integers(0, 3, len(obs)), greedy)


def pendulum_policy(obs: np.ndarray, rng: np.random.Generator, eps: float) -> np.ndarray:
    """Uniform torques in [-3, 3] (beyond the bounds, so the env's clipping is exercised)."""
    return rng.uniform(-3.0, 3.0, size=(len(obs), 1)).astype(np.float32)


CASES = [
    # (batched class, policy, eps): eps = 1 is a purely random action sequence
    (PrecisionCartPoleBatched, cartpole_policy, 1.0),
    (PrecisionCartPoleBatched, cartpole_policy, 0.05),
    (SparseMountainCarBatched, mountaincar_policy, 1.0),
    (SparseMountainCarBatched, mountaincar_policy, 0.2),
    (SparsePendulumBatched, pendulum_policy, 1.0),
]


def final_success(cls, obs: np.ndarray, base_term: bool) -> bool:
    """The sparse rule applied to the base env's final observation ``obs [d]``."""
    o = obs[None].astype(np.float32)
    if cls is PrecisionCartPoleBatched:
        return bool(rules.precision_cartpole_success(o, np.array([base_term]))[0])
    if cls is SparseMountainCarBatched:
        return bool(rules.mountaincar_success(o)[0])
    return bool(rules.pendulum_success(o)[0])


@pytest.mark.parametrize(("cls", "policy", "eps"), CASES, ids=lambda c: getattr(c, "__name__", c))
def test_matches_gymnasium_full_horizon(cls, policy, eps):
    rng = np.random.default_rng(7)
    seeds = [int(s) for s in rng.integers(0, 2**31, N_ENVS)]
    horizon = cls.horizon
    env = cls(N_ENVS)
    bases = [gym.make(cls.base_id, max_episode_steps=horizon) for _ in range(N_ENVS)]
    obs, _ = env.reset(seed=seeds)
    base_obs = np.stack([b.reset(seed=s)[0] for b, s in zip(bases, seeds, strict=True)])
    np.testing.assert_array_equal(obs, base_obs)
    assert obs.dtype == np.float32 and obs.shape == (N_ENVS, env.single_observation_space.shape[0])

    ended_at = np.full(N_ENVS, -1)
    n_success = 0
    for t in range(1, horizon + 1):
        actions = policy(obs, rng, eps)
        prev_obs = obs
        obs, reward, term, trunc, info = env.step(actions)
        assert reward.shape == term.shape == trunc.shape == info["success"].shape == (N_ENVS,)
        for i, base in enumerate(bases):
            if ended_at[i] >= 0:  # frozen after its end: same obs, no reward, flags kept
                np.testing.assert_array_equal(obs[i], prev_obs[i])
                assert reward[i] == 0.0 and (term[i] or trunc[i])
                continue
            a = actions[i] if actions.ndim == 1 else actions[i]
            b_obs, _, b_term, b_trunc, _ = base.step(a)
            np.testing.assert_allclose(obs[i], b_obs, rtol=1e-6, atol=1e-6)
            assert trunc[i] == b_trunc == (t == horizon)
            if cls is SparseMountainCarBatched:  # the sparse task ends at x >= 0.45 already
                assert term[i] == (b_term or b_obs[0] >= rules.MOUNTAINCAR_GOAL_POSITION)
            else:
                assert term[i] == b_term
            if term[i] or trunc[i]:
                ended_at[i] = t
                success = final_success(cls, b_obs, bool(b_term))
                assert info["success"][i] == success
                assert reward[i] == float(success)
                n_success += success
            else:
                assert reward[i] == 0.0
        if (ended_at >= 0).all():
            break
    assert (ended_at >= 0).all()
    if eps < 1.0:  # the controller runs reach the goal / the horizon, not only early failures
        assert ended_at.max() >= min(horizon, 100)
    if cls is SparseMountainCarBatched and eps < 1.0:
        assert n_success > 0


@pytest.mark.parametrize("cls", list(BATCHED_TASKS.values()))
def test_reset_seeding_conventions(cls):
    env = cls(3)
    a, _ = env.reset(seed=[5, 6, 5])
    np.testing.assert_array_equal(a[0], a[2])  # the same seed gives the same start state
    b, _ = env.reset(seed=5)  # one int means seeds 5, 6, 7
    np.testing.assert_array_equal(b[:2], a[:2])
    # seed=None continues each env's own generator, as an unseeded base reset does
    base = gym.make(cls.base_id)
    base.reset(seed=5)
    c, _ = env.reset()
    np.testing.assert_array_equal(c[0], base.reset()[0])


def test_registry_and_errors():
    assert set(BATCHED_TASKS) == {
        "sppo_bench/PrecisionCartPole-v0",
        "sppo_bench/SparseMountainCar-v0",
        "sppo_bench/SparsePendulum-v0",
    }
    env = PrecisionCartPoleBatched(4)
    with pytest.raises(RuntimeError):
        env.step(np.zeros(4, dtype=np.int64))
    env.reset(seed=[0, 1, 2, 3])
    with pytest.raises(ValueError):
        env.step(np.array([0, 1, 2, 0]))
    with pytest.raises(ValueError):
        env.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        env.reset(seed=[1, 2])
    assert env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.DISABLED


@pytest.mark.parametrize(
    ("cls", "policy", "eps"), CASES[1::2] + [CASES[-1]], ids=lambda c: getattr(c, "__name__", c)
)
def test_batched_backend_agrees_with_gymnasium_backend(cls, policy, eps):
    """``make_vector_env`` backends "batched" and "gymnasium" (the sparse wrappers): the same
    observations, rewards, ends and success flags at every step, full horizon."""
    from sppo_bench.control.envs import make_vector_env

    fast = make_vector_env(cls.task_id, 6, "batched")
    slow = make_vector_env(cls.task_id, 6, "gymnasium")
    assert isinstance(fast, cls)
    seeds = [3, 1, 4, 1, 5, 9]
    obs, _ = fast.reset(seed=seeds)
    np.testing.assert_array_equal(obs, slow.reset(seed=seeds)[0])
    rng = np.random.default_rng(0)
    for _ in range(cls.horizon):
        actions = policy(obs, rng, eps)
        obs, *out = fast.step(actions)
        s_obs, *s_out = slow.step(actions)
        np.testing.assert_allclose(obs, s_obs, rtol=1e-6, atol=1e-6)
        for a, b in zip(out[:3], s_out[:3], strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(out[3]["success"], s_out[3]["success"])
        if (out[1] | out[2]).all():
            break
    assert (out[1] | out[2]).all()
