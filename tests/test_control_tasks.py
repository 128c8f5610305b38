"""Contract tests of the five sparse control tasks, the vector env and the episode collector."""

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sppo_bench.control  # noqa: F401  (registers the environments)
from sppo_bench.control import rules
from sppo_bench.control.collector import collect_episodes
from sppo_bench.control.envs import EpisodeVectorEnv, make_vector_env, resolve_backend
from sppo_bench.control.spec import load_spec
from sppo_bench.control.tasks import TASKS, RangeCheckedDiscrete, get_task
from sppo_bench.errors import UserError

HORIZONS = {
    "cartpole": rules.CARTPOLE_HORIZON,
    "mountaincar": rules.MOUNTAINCAR_HORIZON,
    "hopper": rules.HOPPER_HORIZON,
    "lunarlander": rules.LUNARLANDER_HORIZON,
    "pendulum": rules.PENDULUM_HORIZON,
}


@pytest.mark.parametrize("name", list(TASKS))
def test_registered_env_passes_checker(name):
    env = gym.make(TASKS[name].env_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env, skip_render_check=True)
    assert env.unwrapped is not env


@pytest.mark.parametrize("name", list(TASKS))
def test_spec_matches_rules(name):
    spec = load_spec(name)
    assert spec.task == name and spec.env_id == TASKS[name].env_id
    assert spec.horizon == HORIZONS[name] == get_task(name).horizon
    assert spec.success_rule and spec.decisions
    assert spec.rl.trajectories_per_update % spec.rl.group_size == 0


@pytest.mark.parametrize("name", list(TASKS))
def test_binary_terminal_reward_and_horizon(name):
    """Random and constant policies: rewards in {0, 1}, only on the last step, agreeing with
    info["success"]; the episode never passes H; reaching H is a truncation."""
    env = get_task(name).cls()
    rng = np.random.default_rng(0)
    for episode in range(3):
        env.reset(seed=episode)
        rewards, successes, t = [], [], 0
        while True:
            action = env.action_space.sample() if episode < 2 else env.action_space.sample() * 0
            _, reward, terminated, truncated, info = env.step(action)
            t += 1
            rewards.append(reward)
            successes.append(info["success"])
            assert isinstance(info["success"], bool)
            assert t <= HORIZONS[name]
            if terminated or truncated:
                break
        assert set(rewards) <= {0.0, 1.0}
        assert sum(rewards[:-1]) == 0 and not any(successes[:-1])
        assert rewards[-1] == float(successes[-1])
        assert truncated == (t == HORIZONS[name] and not terminated)
        rng.random()


def _at_last_step(env, name):
    env._t = HORIZONS[name] - 1


def test_cartpole_success_rule_on_constructed_states():
    env = get_task("cartpole").cls()
    cases = [((0.0, 0.0, 0.0, 0.0), True), ((0.0, 0.0, 0.03, 0.0), False)]
    for state, expected in cases:
        env.reset(seed=0)
        env.unwrapped.state = np.array(state)
        _at_last_step(env, "cartpole")
        obs, reward, terminated, truncated, info = env.step(1)
        assert abs(obs[2]) <= math.radians(0.5) if expected else abs(obs[2]) > math.radians(0.5)
        assert (reward, info["success"], truncated, terminated) == (
            float(expected),
            expected,
            True,
            False,
        )
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.0, 0.0, 0.2094, 3.0])  # about to fall
    _at_last_step(env, "cartpole")
    _, reward, terminated, truncated, info = env.step(1)
    assert terminated and not truncated and reward == 0.0 and not info["success"]


def test_mountaincar_success_ends_the_episode():
    env = get_task("mountaincar").cls()
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.44, 0.02])
    obs, reward, terminated, truncated, info = env.step(2)
    assert obs[0] >= 0.45 and terminated and not truncated and reward == 1.0 and info["success"]
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.3, 0.0])
    _at_last_step(env, "mountaincar")
    _, reward, terminated, truncated, info = env.step(1)
    assert truncated and not terminated and reward == 0.0 and not info["success"]


@pytest.mark.parametrize(
    "x, z, expected_terminated, expected_success",
    [(1.5, None, False, True), (0.9, None, False, False), (1.5, 0.5, True, False)],
)
def test_hopper_success_rule_on_constructed_states(x, z, expected_terminated, expected_success):
    env = get_task("hopper").cls()
    env.reset(seed=0)
    base = env.unwrapped
    qpos, qvel = base.init_qpos.copy(), base.init_qvel.copy()
    qpos[0] = x
    if z is not None:
        qpos[1] = z  # torso height below 0.7: unhealthy
    base.set_state(qpos, qvel)
    _at_last_step(env, "hopper")
    _, reward, terminated, truncated, info = env.step(np.zeros(3))
    assert terminated == expected_terminated and truncated == (not expected_terminated)
    assert reward == float(expected_success) and info["success"] == expected_success


@pytest.mark.parametrize(
    "x, legs, crashed, expected",
    [
        (0.1, (1, 1), False, True),
        (0.39, (1, 1), False, True),
        (0.45, (1, 1), False, False),
        (0.1, (1, 0), False, False),
        (0.1, (0, 0), False, False),
        (0.1, (1, 1), True, False),
        (-0.3, (1, 1), False, True),
    ],
)
def test_lunarlander_success_rule_on_constructed_states(x, legs, crashed, expected):
    env = get_task("lunarlander").cls()
    env.reset(seed=0)
    obs = np.zeros(8, dtype=np.float32)
    obs[0], obs[6], obs[7] = x, *legs
    env.unwrapped.game_over = crashed
    assert env._success(obs, True, {}) == expected
    assert rules.lunarlander_success(obs[None], np.array([crashed]))[0] == expected


def test_lunarlander_off_screen_is_a_crash():
    env = get_task("lunarlander").cls()
    env.reset(seed=0)
    obs = np.zeros(8, dtype=np.float32)
    obs[0], obs[6], obs[7] = 1.0, 1, 1
    assert env.crashed(obs) and not env._success(obs, True, {})


@pytest.mark.parametrize("theta, expected", [(0.1, True), (math.pi, False), (1.0, False)])
def test_pendulum_success_rule_on_constructed_states(theta, expected):
    env = get_task("pendulum").cls()
    env.reset(seed=0)
    env.unwrapped.state = np.array([theta, 0.0])
    _at_last_step(env, "pendulum")
    obs, reward, terminated, truncated, info = env.step(np.zeros(1, dtype=np.float32))
    assert truncated and not terminated
    assert (obs[0] > 0.8) == expected and reward == float(expected)


def test_continuous_actions_are_clipped():
    env = get_task("pendulum").cls()
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.0, 0.0])
    env.step(np.array([100.0], dtype=np.float32))
    assert env.unwrapped.last_u == pytest.approx(2.0)


def test_range_checked_discrete_answers_as_discrete_and_lunarlander_steps_as_gymnasium():
    """The faster membership test gives ``Discrete.contains``'s answer for every kind of value,
    and a LunarLander task (which uses it) steps exactly as Gymnasium's own LunarLander."""
    plain, fast = gym.spaces.Discrete(4, start=1), gym.spaces.Discrete(4, start=1)
    fast.__class__ = RangeCheckedDiscrete
    values = [-1, 0, 1, 4, 5, 2**70, True, 2.0, "1", np.int64(2), np.int32(7), np.array(3)]
    assert [fast.contains(v) for v in values] == [plain.contains(v) for v in values]
    task = get_task("lunarlander").cls()
    assert type(task.env.unwrapped.action_space) is RangeCheckedDiscrete
    base = gym.make("LunarLander-v3").unwrapped
    assert type(base.action_space) is gym.spaces.Discrete
    obs, _ = task.reset(seed=3)
    ref, _ = base.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(60):
        assert np.array_equal(obs, ref)
        action = int(rng.integers(4))
        obs, *_ = task.step(action)
        ref, *_ = base.step(action)


def test_vector_env_seeds_and_backends():
    venv = make_vector_env("cartpole", 4, backend="gymnasium")
    assert isinstance(venv, EpisodeVectorEnv) and venv.num_envs == 4
    a, _ = venv.reset(seed=[7, 7, 8, 9])
    b, _ = venv.reset(seed=[7, 8, 8, 9])
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[2], b[1])
    with pytest.raises(UserError, match="valid: auto, gymnasium, batched"):
        make_vector_env("cartpole", 2, backend="jax")
    with pytest.raises(UserError, match="unknown task"):
        make_vector_env("acrobot", 2)
    assert resolve_backend("hopper", "auto") == "batched"  # mujoco.rollout
    assert resolve_backend("lunarlander", "auto") == "gymnasium"  # Box2D has no batched backend


def test_collector_records_each_env_up_to_its_own_end():
    venv = make_vector_env("cartpole", 3, backend="gymnasium")
    batch = collect_episodes(venv, lambda obs: np.zeros(len(obs), dtype=np.int64), [0, 1, 2], 200)
    assert batch.obs.shape[:2] == batch.mask.shape == (3, int(batch.lengths.max()))
    np.testing.assert_array_equal(batch.mask.sum(1), batch.lengths)
    assert (batch.lengths < 200).all() and not batch.success.any()  # always pushing left falls
    for i, n in enumerate(batch.lengths):
        assert (batch.obs[i, n:] == 0).all() and batch.rewards[i].sum() == 0
    # the same seeds reproduce the same episodes
    again = collect_episodes(venv, lambda obs: np.zeros(len(obs), dtype=np.int64), [0, 1, 2], 200)
    np.testing.assert_array_equal(batch.obs, again.obs)
