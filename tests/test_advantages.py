"""Advantage estimators: closed forms, hand-computed examples and a peer (SB3) comparison."""

import numpy as np
import pytest
import torch

from sppo_bench.core import (
    ESTIMATORS,
    AdvantageInput,
    algorithm_names,
    compute_advantages,
    get_estimator,
)
from sppo_bench.errors import UserError


def terminal_batch(lengths, rewards, horizon):
    """Rows of given lengths with a single reward on each row's last real step."""
    mask = torch.zeros(len(lengths), horizon, dtype=torch.float64)
    r = torch.zeros_like(mask)
    for b, (n, reward) in enumerate(zip(lengths, rewards, strict=True)):
        mask[b, :n] = 1
        r[b, n - 1] = reward
    return r, mask


@pytest.mark.parametrize("gamma", [1.0, 0.99])
@pytest.mark.parametrize("lam", [1.0, 0.9])
def test_gae_single_terminal_reward_closed_form(gamma, lam):
    """One reward R at the last step T-1, values V_t: A_t = sum_l (g l)^l delta_{t+l} with
    delta_t = g V_{t+1} - V_t for t < T-1 and delta_{T-1} = R - V_{T-1} (terminated)."""
    horizon, reward = 7, 1.0
    values = torch.linspace(0.1, 0.7, horizon, dtype=torch.float64).unsqueeze(0)
    r, mask = terminal_batch([horizon], [reward], horizon)
    out = compute_advantages("gae", AdvantageInput(r, mask, values=values), gamma=gamma, lam=lam)
    v = values[0].numpy()
    delta = np.array([gamma * v[t + 1] - v[t] for t in range(horizon - 1)] + [reward - v[-1]])
    expected = [
        sum((gamma * lam) ** k * delta[t + k] for k in range(horizon - t)) for t in range(horizon)
    ]
    np.testing.assert_allclose(out.advantages[0].numpy(), expected, atol=1e-12)
    if lam == 1.0:  # Monte-Carlo: A_t = gamma^(T-1-t) R - V_t
        mc = [gamma ** (horizon - 1 - t) * reward - v[t] for t in range(horizon)]
        np.testing.assert_allclose(out.advantages[0].numpy(), mc, atol=1e-12)
    np.testing.assert_allclose(out.value_targets, out.advantages + values, atol=1e-12)


def test_gae_truncation_bootstraps_and_padding_is_zero():
    r, mask = terminal_batch([3, 2], [0.0, 0.0], 4)
    values = torch.full((2, 4), 0.5, dtype=torch.float64)
    last = torch.tensor([0.8, 0.8], dtype=torch.float64)
    terminated = torch.tensor([False, True])
    out = compute_advantages(
        "gae",
        AdvantageInput(r, mask, values=values, last_values=last, terminated=terminated),
        gamma=1.0,
        lam=1.0,
    )
    # truncated row: A_t = V(s_T) - V_t = 0.3 everywhere; terminated row: 0 - 0.5
    torch.testing.assert_close(
        out.advantages[0], torch.tensor([0.3, 0.3, 0.3, 0.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        out.advantages[1], torch.tensor([-0.5, -0.5, 0.0, 0.0], dtype=torch.float64)
    )


def test_gae_matches_stable_baselines3_rollout_buffer():
    """Random rewards, values and episode boundaries in SB3's flat buffer layout; our per-episode
    rows (terminated where an episode ended, truncated-and-bootstrapped at the buffer's end)
    must give SB3's advantages and returns."""
    from gymnasium import spaces
    from stable_baselines3.common.buffers import RolloutBuffer

    rng = np.random.default_rng(0)
    n_steps, n_envs, gamma, lam = 40, 3, 0.97, 0.9
    buf = RolloutBuffer(
        n_steps,
        spaces.Box(-1, 1, (1,)),
        spaces.Discrete(2),
        "cpu",
        gae_lambda=lam,
        gamma=gamma,
        n_envs=n_envs,
    )
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    starts = (rng.random((n_steps, n_envs)) < 0.15).astype(np.float32)
    starts[0] = 1.0
    for t in range(n_steps):
        buf.add(
            np.zeros((n_envs, 1)),
            np.zeros((n_envs, 1)),
            rewards[t],
            starts[t],
            torch.as_tensor(values[t]),
            torch.zeros(n_envs),
        )
    last_values = rng.normal(size=n_envs).astype(np.float32)
    dones = np.zeros(n_envs, dtype=np.float32)
    buf.compute_returns_and_advantage(torch.as_tensor(last_values), dones)

    for env in range(n_envs):
        bounds = [t for t in range(n_steps) if starts[t, env]] + [n_steps]
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            n = end - start
            r = torch.as_tensor(rewards[start:end, env], dtype=torch.float64)[None]
            v = torch.as_tensor(values[start:end, env], dtype=torch.float64)[None]
            truncated = end == n_steps
            out = compute_advantages(
                "gae",
                AdvantageInput(
                    r,
                    torch.ones(1, n, dtype=torch.float64),
                    values=v,
                    last_values=torch.tensor([float(last_values[env])], dtype=torch.float64),
                    terminated=torch.tensor([not truncated]),
                ),
                gamma=gamma,
                lam=lam,
            )
            np.testing.assert_allclose(
                out.advantages[0], buf.advantages[start:end, env], rtol=1e-4, atol=1e-5
            )
            np.testing.assert_allclose(
                out.value_targets[0], buf.returns[start:end, env], rtol=1e-4, atol=1e-5
            )


def test_sppo_hand_computed():
    """R = (1, 0, 1); v = (0, ln 3, -ln 3) -> V = (0.5, 0.75, 0.25); A = (0.5, -0.75, 0.75)."""
    r, mask = terminal_batch([3, 2, 1], [1.0, 0.0, 1.0], 3)
    logits = torch.tensor([0.0, np.log(3.0), -np.log(3.0)], dtype=torch.float64)
    out = compute_advantages("sppo", AdvantageInput(r, mask, value_logits=logits))
    expected = torch.tensor(
        [[0.5, 0.5, 0.5], [-0.75, -0.75, 0.0], [0.75, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(out.advantages, expected)
    torch.testing.assert_close(
        out.value_targets, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    )


def test_sppo_is_not_whitened():
    r, mask = terminal_batch([2, 2], [1.0, 1.0], 2)
    out = compute_advantages(
        "sppo", AdvantageInput(r, mask, value_logits=torch.zeros(2, dtype=torch.float64))
    )
    assert torch.allclose(out.advantages, torch.full((2, 2), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("successes", [1, 2, 3, 5, 7])
def test_grpo_equals_standardised_bernoulli_residual(successes):
    n = 8
    rewards = [1.0] * successes + [0.0] * (n - successes)
    r, mask = terminal_batch([4] * n, rewards, 4)
    out = compute_advantages("grpo", AdvantageInput(r, mask, group_ids=torch.zeros(n)), eps=0.0)
    p = successes / n
    expected = (torch.tensor(rewards, dtype=torch.float64) - p) / np.sqrt(p * (1 - p))
    torch.testing.assert_close(out.advantages[:, 0], expected)


def test_grpo_groups_are_independent_and_degenerate_group_is_zero():
    r, mask = terminal_batch([1] * 4, [1.0, 0.0, 1.0, 1.0], 1)
    out = compute_advantages("grpo", AdvantageInput(r, mask, group_ids=torch.tensor([5, 5, 9, 9])))
    torch.testing.assert_close(out.advantages[2:], torch.zeros(2, 1, dtype=torch.float64))
    assert out.advantages[0, 0] > 0 > out.advantages[1, 0]


def test_rloo_leave_one_out():
    r, mask = terminal_batch([1] * 3, [1.0, 0.0, 0.0], 1)
    out = compute_advantages("rloo", AdvantageInput(r, mask, group_ids=torch.zeros(3)))
    torch.testing.assert_close(
        out.advantages[:, 0], torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64)
    )


def test_remax_and_reinforce():
    r, mask = terminal_batch([2, 2], [1.0, 0.0], 2)
    out = compute_advantages(
        "remax",
        AdvantageInput(r, mask, baseline_rewards=torch.tensor([1.0, 0.0], dtype=torch.float64)),
    )
    assert torch.all(out.advantages == 0)
    out = compute_advantages("reinforce", AdvantageInput(r, mask))
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([0.5, -0.5], dtype=torch.float64))
    out = compute_advantages("reinforce", AdvantageInput(r, mask), baseline="none")
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([1.0, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_of_one_is_a_clear_error(name):
    r, mask = terminal_batch([1] * 3, [1.0, 0.0, 0.0], 1)
    with pytest.raises(UserError, match="at least 2 samples per group"):
        compute_advantages(name, AdvantageInput(r, mask, group_ids=torch.tensor([0, 0, 1])))


def test_unknown_estimator_lists_valid_names():
    with pytest.raises(UserError, match="valid: .*grpo.*sppo"):
        get_estimator("ppo2")
    assert get_estimator("ppo-gae").name == "gae"


def test_missing_input_is_a_clear_error():
    r, mask = terminal_batch([1], [1.0], 1)
    with pytest.raises(UserError, match="value_logits"):
        compute_advantages("sppo", AdvantageInput(r, mask))


def test_the_registry_is_the_one_list_of_algorithms():
    assert algorithm_names() == ("sppo", "ppo-gae", "ppo-bce", "grpo", "rloo", "remax", "reinforce")
    gae = get_estimator("gae")
    assert gae.run_name == "ppo-gae" and get_estimator("ppo").run_name == "ppo-gae"
    assert gae.params == {"gamma": 1.0, "lam": 1.0}  # the function's own defaults
    assert gae.configured_params({"ppo-gae": {"lam": 0.5}}) == {"gamma": 1.0, "lam": 0.5}
    assert gae.configured_params({"grpo": {"normalize_std": False}}) == gae.params
    with pytest.raises(UserError, match="unknown parameter 'lamda' .*valid: gamma, lam"):
        gae.configured_params({"gae": {"lamda": 0.5}})
    with pytest.raises(UserError, match="unknown algorithm 'gea'"):
        gae.configured_params({"gea": {"lam": 0.5}})


def _bce_batch() -> AdvantageInput:
    """Row 0: three steps, R = 1; row 1: two steps, R = 0. V = sigmoid(v) is
    [[.5, .75, .25], [.75, .5, pad]]."""
    ln3 = float(np.log(3.0))
    logits = torch.tensor([[0.0, ln3, -ln3], [ln3, 0.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    return AdvantageInput(rewards=rewards, mask=mask, step_logits=logits)


@pytest.mark.parametrize(
    "gamma, lam, expected",
    [
        # gamma = lam = 1: the deltas telescope, A_t = R - V(s_t)
        (1.0, 1.0, [[0.5, 0.25, 0.75], [-0.75, -0.5, 0.0]]),
        # gamma = 0.5: delta_2 = 1 - .25, delta_1 = .5 * .25 - .75, delta_0 = .5 * .75 - .5 ...
        (0.5, 1.0, [[-0.25, -0.25, 0.75], [-0.75, -0.5, 0.0]]),
    ],
)
def test_ppo_bce_hand_computed(gamma, lam, expected):
    out = compute_advantages("ppo-bce", _bce_batch(), gamma=gamma, lam=lam)
    assert torch.allclose(out.advantages, torch.tensor(expected, dtype=torch.float64))
    # the critic's target is the outcome R on every real step, not the GAE returns
    targets = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(out.value_targets, targets)


def test_ppo_bce_shares_gae_parameters_and_needs_step_logits():
    spec = get_estimator("ppo-bce")
    assert spec.params == get_estimator("gae").params == {"gamma": 1.0, "lam": 1.0}
    assert spec.critic_strategy.per_step and spec.critic_strategy.objective == "bce"
    assert spec.configured_params({"ppo-bce": {"lam": 0.9}}) == {"gamma": 1.0, "lam": 0.9}
    batch = _bce_batch()
    batch.step_logits = None
    with pytest.raises(UserError, match="needs AdvantageInput.step_logits"):
        compute_advantages("ppo-bce", batch)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"gae": {"lam": -1}}, r"estimator_params.ppo-gae.lam=-1 is out of range; valid: a number"),
        ({"ppo": {"lam": 2}}, r"ppo-gae.lam=2 is out of range"),
        ({"gae": {"gamma": float("nan")}}, r"ppo-gae.gamma=nan is out of range"),
        ({"gae": {"gamma": "abc"}}, r"ppo-gae.gamma='abc' is out of range"),
        ({"gae": {"lam": [1, 2]}}, r"ppo-gae.lam=\[1, 2\] is out of range"),
        ({"ppo-bce": {"lam": 1.5}}, r"ppo-bce.lam=1.5 is out of range"),
        ({"grpo": {"eps": 0}}, r"grpo.eps=0 is out of range; valid: a finite number > 0"),
        ({"grpo": {"normalize_std": "yes"}}, r"normalize_std='yes' is out of range; valid: true"),
        ({"reinforce": {"baseline": "max"}}, r"baseline='max' is out of range; valid: one of"),
        ({"gae": 3}, r"estimator_params.gae must be a mapping"),
    ],
)
def test_estimator_parameters_are_bounded_beside_their_defaults(table, message):
    name = next(iter(table))
    with pytest.raises(UserError, match=message):
        get_estimator(name).configured_params(table)
    for spec in ESTIMATORS.values():  # every parameter has a bound, and its default is in it
        assert set(spec.bounds) == set(spec.params)
        assert all(spec.bounds[k][0](v) for k, v in spec.params.items())


def test_an_out_of_range_estimator_parameter_is_one_line_and_leaves_nothing(tmp_path, capsys):
    from sppo_bench.cli import main

    args = ["control", "train", "--task", "cartpole", "--algo", "ppo-gae", "--no-progress"]
    args += ["--runs-dir", str(tmp_path), "--set", "rl.estimator_params.gae.lam=-1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "ppo-gae.lam=-1 is out of range" in err
    assert list(tmp_path.iterdir()) == []
