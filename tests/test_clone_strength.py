"""The clone-strength knob clone.demo_noise: demonstrated actions replaced at rate p."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from sppo_bench.control.cloning import fit, noisy_actions
from sppo_bench.control.policies import Policy
from sppo_bench.control.spec import load_spec
from sppo_bench.errors import UserError


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_discrete_actions_are_replaced_at_rate_p_by_uniform_ones(p):
    actions = np.zeros(20_000, dtype=np.int64)
    out = noisy_actions(actions, p, gym.spaces.Discrete(3), np.random.default_rng(0))
    assert out.dtype == actions.dtype and actions.sum() == 0  # a new array
    # a replaced action is uniform over 3, so it still equals 0 a third of the time
    assert np.mean(out != 0) == pytest.approx(p * 2 / 3, abs=0.01)
    assert set(np.unique(out)) <= {0, 1, 2}


def test_box_actions_are_replaced_by_uniform_draws_in_the_box():
    space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
    actions = np.full((10_000, 1), 1.5, dtype=np.float32)
    out = noisy_actions(actions, 0.5, space, np.random.default_rng(1))
    changed = out[:, 0] != 1.5
    assert changed.mean() == pytest.approx(0.5, abs=0.02)
    assert (np.abs(out) <= 2.0).all() and out[changed].mean() == pytest.approx(0.0, abs=0.05)
    assert np.array_equal(noisy_actions(actions, 0.0, space, np.random.default_rng(1)), actions)


def test_a_noisier_fit_is_a_less_certain_clone():
    """Fitted to convergence on one state, the clone's probability of the expert's action is
    about (1 - p) + p / 3."""
    spec = load_spec("mountaincar", ["clone.epochs=200", "clone.lr=0.05", "policy.hidden=[]"])
    obs = np.random.default_rng(2).normal(size=(1024, 2)).astype(np.float32) * 1e-3
    probs = []
    for p in (0.0, 0.45, 0.9):
        torch.manual_seed(0)
        policy = Policy(2, True, 3, hidden=[])
        labels = noisy_actions(
            np.full(1024, 2), p, gym.spaces.Discrete(3), np.random.default_rng(3)
        )
        fit(policy, obs, labels, spec, progress=False)
        with torch.no_grad():
            probs.append(float(torch.softmax(policy(torch.as_tensor(obs[:1])), -1)[0, 2]))
    assert probs == pytest.approx([1.0 - 0.0, 1 - 0.45 + 0.15, 1 - 0.9 + 0.3], abs=0.04)


def test_demo_noise_is_a_probability():
    for bad in ("-0.1", "1.5"):
        with pytest.raises(UserError, match=r"clone.demo_noise=.* valid: a number in \[0, 1\]"):
            load_spec("cartpole", [f"clone.demo_noise={bad}"])
