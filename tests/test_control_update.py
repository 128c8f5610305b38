"""The control update's wiring, pinned against closed forms on a fixed tiny batch.

A linear softmax policy pi(a | s) = softmax(W s + b)[a] makes the PPO gradient explicit: with
ratio r_t = pi(a_t | s_t) / pi_old(a_t | s_t), token-mean aggregation over N real steps,

    dL/dz_t = -(A_t r_t / N) * active_t * (onehot(a_t) - pi(. | s_t)),   z_t = W s_t + b,

where active_t is 0 where the clip holds the ratio (A > 0 and r > 1 + eps, or A < 0 and
r < 1 - eps). Plain SGD then moves (W, b) by -lr times that gradient, epoch after epoch.
"""

import copy

import numpy as np
import pytest
import torch

from sppo_bench.control.cloning import build_policy
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import RLConfig, load_spec
from sppo_bench.control.stack import StackedPolicy, StackedValueNet
from sppo_bench.control.trainer import Trainer
from sppo_bench.control.update import BatchTensors, Learner, ppo_update
from sppo_bench.core import get_estimator

LENGTHS = [3, 2, 3, 1]
SUCCESS = [1.0, 0.0, 1.0, 0.0]


def _batch(obs_dim: int = 2, n_actions: int = 3, success=SUCCESS) -> BatchTensors:
    """Four episodes of at most 3 steps, binary terminal rewards, groups {0, 1} and {2, 3}."""
    g = torch.Generator().manual_seed(0)
    bsz, horizon = len(LENGTHS), max(LENGTHS)
    mask = torch.zeros(bsz, horizon)
    rewards = torch.zeros(bsz, horizon)
    for b, (n, r) in enumerate(zip(LENGTHS, success, strict=True)):
        mask[b, :n] = 1.0
        rewards[b, n - 1] = r
    obs = torch.randn(bsz, horizon, obs_dim, generator=g)
    actions = torch.randint(0, n_actions, (bsz, horizon), generator=g)
    return BatchTensors(obs, actions, rewards, mask)


GROUPS = torch.tensor([0, 0, 1, 1])


def _linear_policy(obs_dim: int = 2, n_actions: int = 3) -> Policy:
    torch.manual_seed(1)
    return Policy(obs_dim, True, n_actions, hidden=[])


def _cfg(**kw) -> RLConfig:
    base = dict(epochs=1, mini_batch_size=4, max_grad_norm=1e9, entropy_coef=0.0, dual_clip=None)
    return RLConfig(**{**base, **kw})


def _closed_form_grad(w, b, data: BatchTensors, adv, old_lp, clip: float):
    """(dL/dW, dL/db) of the clipped token-mean surrogate, float64, from the formula above."""
    x = data.obs.double()
    p = torch.softmax(x @ w.T + b, dim=-1)
    lp = torch.log(p.gather(-1, data.actions.unsqueeze(-1)).squeeze(-1))
    ratio = torch.exp(lp - old_lp)
    active = ((adv > 0) & (ratio <= 1 + clip)) | ((adv < 0) & (ratio >= 1 - clip))
    m = data.mask.double()
    coef = -adv * ratio * active.double() * m / m.sum()
    onehot = torch.nn.functional.one_hot(data.actions, p.shape[-1]).double()
    dz = coef.unsqueeze(-1) * (onehot - p)
    return torch.einsum("bta,btd->ad", dz, x), dz.sum(dim=(0, 1))


def _log_probs(w, b, data: BatchTensors):
    p = torch.softmax(data.obs.double() @ w.T + b, dim=-1)
    return torch.log(p.gather(-1, data.actions.unsqueeze(-1)).squeeze(-1))


def _sgd_closed_form(policy: Policy, data, adv, lr: float, clip: float, epochs: int):
    """The (W, b) that ``epochs`` plain-SGD steps on the whole batch reach."""
    w = policy.net[0].weight.detach().double().clone()
    b = policy.net[0].bias.detach().double().clone()
    old_lp = _log_probs(w, b, data)
    for _ in range(epochs):
        gw, gb = _closed_form_grad(w, b, data, adv.double(), old_lp, clip)
        w, b = w - lr * gw, b - lr * gb
    return w, b


def _one_seed(data: BatchTensors) -> BatchTensors:
    """``data`` with a seed axis of 1, as the (seed-stacked) update takes it."""
    fields = (data.obs, data.actions, data.rewards, data.mask, data.group_ids)
    return BatchTensors(*(None if x is None else x.unsqueeze(0) for x in fields))


def _run_update(policy, cfg: RLConfig, algo: str, data, lr: float, critic=None, critic_lr=0.1):
    """One ``ppo_update`` with plain SGD; the plain modules receive the updated weights."""
    stacked = StackedPolicy([policy])
    stacked_critic = StackedValueNet([critic]) if critic else None
    policy_opt = torch.optim.SGD(stacked.trainable(), lr=lr)
    critic_opt = torch.optim.SGD(stacked_critic.trainable(), lr=critic_lr) if critic else None
    data.group_ids = GROUPS
    learner = Learner(stacked, policy_opt, stacked_critic, critic_opt)
    gen = [torch.Generator().manual_seed(0)]
    stats = ppo_update(learner, get_estimator(algo), cfg, _one_seed(data), gen)
    policy.load_state_dict(stacked.seed_state(0))
    if critic is not None:
        critic.load_state_dict(stacked_critic.seed_state(0))
    return stats[0]


def _reinforce_advantage(success) -> torch.Tensor:
    """A = R - mean R on every real step (REINFORCE with its default mean baseline)."""
    r = torch.tensor(success, dtype=torch.float64)
    return (r - r.mean()).unsqueeze(-1) * _batch().mask.double()


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("lr, clip, epochs", [(0.5, 0.05, 3), (0.5, 10.0, 3), (0.2, 0.2, 1)])
def test_sgd_step_is_the_closed_form_gradient(sign, lr, clip, epochs):
    success = SUCCESS if sign > 0 else [1.0 - s for s in SUCCESS]
    data = _batch(success=success)
    policy = _linear_policy()
    expected_w, expected_b = _sgd_closed_form(
        policy, data, _reinforce_advantage(success), lr, clip, epochs
    )
    _run_update(policy, _cfg(clip_eps=clip, epochs=epochs), "reinforce", data, lr)
    got_w, got_b = policy.net[0].weight.double(), policy.net[0].bias.double()
    assert torch.allclose(got_w, expected_w, atol=1e-5) and torch.allclose(
        got_b, expected_b, atol=1e-5
    )


def test_closed_form_depends_on_sign_lr_and_clip():
    """The cases above differ from one another, so each pins its setting."""
    data, policy = _batch(), _linear_policy()
    adv = _reinforce_advantage(SUCCESS)
    w0 = policy.net[0].weight.detach().double()
    step = _sgd_closed_form(policy, data, adv, 0.5, 0.05, 3)[0] - w0
    assert not torch.allclose(step, _sgd_closed_form(policy, data, adv, 0.5, 10.0, 3)[0] - w0)
    assert not torch.allclose(step, _sgd_closed_form(policy, data, adv, 0.5, 0.2, 3)[0] - w0)
    one = _sgd_closed_form(policy, data, adv, 0.2, 0.2, 1)[0] - w0
    assert torch.allclose(_sgd_closed_form(policy, data, -adv, 0.2, 0.2, 1)[0] - w0, -one)
    assert torch.allclose(_sgd_closed_form(policy, data, adv, 0.4, 0.2, 1)[0] - w0, 2 * one)


def _gae(rewards, values, mask, gamma: float, lam: float) -> torch.Tensor:
    """A_t = sum_l (gamma lam)^l delta_{t+l}, delta_t = r_t + gamma V_{t+1} - V_t (V = 0 after
    the last real step), written as the explicit sum."""
    bsz, horizon = rewards.shape
    out = torch.zeros(bsz, horizon, dtype=torch.float64)
    for b in range(bsz):
        n = int(mask[b].sum())
        v = [float(values[b, t]) for t in range(n)] + [0.0]
        delta = [float(rewards[b, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            out[b, t] = sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, n))
    return out


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.5), (1.0, 1.0)])
def test_gae_parameters_reach_the_estimator(gamma, lam):
    data, policy = _batch(), _linear_policy()
    torch.manual_seed(2)
    critic = ValueNet(2, hidden=[])
    with torch.no_grad():
        values = critic(data.obs)
    adv = _gae(data.rewards, values, data.mask, gamma, lam)
    expected_w, expected_b = _sgd_closed_form(policy, data, adv, 0.3, 0.2, 1)
    cfg = _cfg(estimator_params={"gae": {"gamma": gamma, "lam": lam}})
    _run_update(policy, cfg, "ppo-gae", data, 0.3, critic)
    assert torch.allclose(policy.net[0].weight.double(), expected_w, atol=1e-5)
    assert torch.allclose(policy.net[0].bias.double(), expected_b, atol=1e-5)
    assert not torch.allclose(adv, _gae(data.rewards, values, data.mask, 0.5, 0.2))


@pytest.mark.parametrize("gamma, lam", [(0.9, 0.5), (1.0, 1.0)])
@pytest.mark.parametrize("key", ["ppo-bce", "bce"])
def test_ppo_bce_runs_gae_over_sigmoid_values(gamma, lam, key):
    """PPO-BCE: the same GAE sums over V(s_t) = sigmoid(v_t); its parameters reach it under
    its name or alias."""
    data, policy = _batch(), _linear_policy()
    torch.manual_seed(2)
    critic = ValueNet(2, hidden=[])
    with torch.no_grad():
        values = torch.sigmoid(critic(data.obs))
    adv = _gae(data.rewards, values, data.mask, gamma, lam)
    expected_w, expected_b = _sgd_closed_form(policy, data, adv, 0.3, 0.2, 1)
    cfg = _cfg(estimator_params={key: {"gamma": gamma, "lam": lam}})
    _run_update(policy, cfg, "ppo-bce", data, 0.3, critic)
    assert torch.allclose(policy.net[0].weight.double(), expected_w, atol=1e-5)
    assert torch.allclose(policy.net[0].bias.double(), expected_b, atol=1e-5)


@pytest.mark.parametrize("normalize_std", [True, False])
def test_grpo_std_normalisation_reaches_the_estimator(normalize_std):
    data, policy = _batch(), _linear_policy()
    r = torch.tensor(SUCCESS, dtype=torch.float64)
    # groups {0, 1} and {2, 3} each hold one success: mean 0.5, population std 0.5
    per_seq = (r - 0.5) / (0.5 + 1e-6) if normalize_std else r - 0.5
    adv = per_seq.unsqueeze(-1) * data.mask.double()
    expected_w, _ = _sgd_closed_form(policy, data, adv, 0.3, 0.2, 1)
    cfg = _cfg(estimator_params={"grpo": {"normalize_std": normalize_std}})
    _run_update(policy, cfg, "grpo", data, 0.3)
    assert torch.allclose(policy.net[0].weight.double(), expected_w, atol=1e-5)


def _critic_loss(critic: ValueNet, algo: str, data: BatchTensors, targets) -> float:
    with torch.no_grad():
        if algo == "sppo":
            return float(
                torch.nn.functional.binary_cross_entropy_with_logits(
                    critic(data.obs[:, 0]), targets
                )
            )
        if algo == "ppo-bce":  # BCE against R at every real step, token mean
            per_step = torch.nn.functional.binary_cross_entropy_with_logits(
                critic(data.obs), targets, reduction="none"
            )
            return float((per_step * data.mask).sum() / data.mask.sum())
        err = (critic(data.obs) - targets) ** 2
        return float(0.5 * (err * data.mask).sum() / data.mask.sum())


def test_policy_metrics_are_the_first_steps_loss_and_entropy():
    """One epoch, one mini-batch: the ratio is 1, so the logged policy loss is -token-mean(A),
    the entropy the policy's token-mean entropy before the step, approx_kl and clipfrac 0."""
    data, policy = _batch(), _linear_policy()
    w, b = policy.net[0].weight.detach().double(), policy.net[0].bias.detach().double()
    p = torch.softmax(data.obs.double() @ w.T + b, dim=-1)
    entropy = -(p * p.log()).sum(-1)
    m = data.mask.double()
    adv = _reinforce_advantage(SUCCESS)
    stats = _run_update(policy, _cfg(), "reinforce", data, 0.3)
    assert stats["losses/policy"] == pytest.approx(float(-(adv * m).sum() / m.sum()), abs=1e-6)
    assert stats["losses/entropy"] == pytest.approx(float((entropy * m).sum() / m.sum()), abs=1e-6)
    assert stats["losses/approx_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["losses/clipfrac"] == 0.0


@pytest.mark.parametrize("algo", ["sppo", "ppo-gae", "ppo-bce"])
def test_critic_step_lowers_its_loss(algo):
    data, policy = _batch(), _linear_policy()
    torch.manual_seed(3)
    critic = ValueNet(2, hidden=[8])
    before = copy.deepcopy(critic)
    if algo == "sppo":
        targets = torch.tensor(SUCCESS)  # BCE on R from s_0
    else:  # gamma = lam = 1 with a terminal reward: the return is R on every real step
        targets = torch.tensor(SUCCESS).unsqueeze(-1) * data.mask
    stats = _run_update(policy, _cfg(), algo, data, 0.1, critic, critic_lr=0.2)
    assert stats["losses/value"] == pytest.approx(_critic_loss(before, algo, data, targets))
    assert _critic_loss(critic, algo, data, targets) < _critic_loss(before, algo, data, targets)
    for new, old in zip(critic.parameters(), before.parameters(), strict=True):
        assert not torch.equal(new, old)


def _cartpole_trainer(tmp_path, algo: str, *overrides: str) -> Trainer:
    spec = load_spec("cartpole", ["policy.hidden=[]", *overrides])
    clone = tmp_path / "clone.pt"
    torch.manual_seed(4)
    torch.save({"state_dict": build_policy(spec).state_dict()}, clone)
    return Trainer(spec, algo, 0, tmp_path / "run", clone)


@pytest.mark.parametrize("lr, critic_lr", [(0.01, 0.003), (0.002, 0.02)])
def test_trainer_optimisers_take_the_configured_learning_rates(tmp_path, lr, critic_lr):
    """The trainer's own optimisers (Adam): the first step moves a parameter with gradient g by
    -lr * g / (|g| + 1e-8), and every critic parameter moves by at most critic_lr."""
    sets = [f"rl.lr={lr}", f"rl.critic_lr={critic_lr}", "rl.epochs=1", "rl.mini_batch_size=4"]
    trainer = _cartpole_trainer(tmp_path, "sppo", *sets, "rl.max_grad_norm=1e9")
    data = _batch(obs_dim=4, n_actions=2)
    policy, critic = trainer.policy, trainer.critic  # seed-stacked, one seed
    critic_before = copy.deepcopy(critic)
    with torch.no_grad():
        v0 = torch.sigmoid(critic(data.obs[None, :, 0])[0]).double()
    adv = (torch.tensor(SUCCESS, dtype=torch.float64) - v0).unsqueeze(-1) * data.mask.double()
    w0 = policy.net.w0[0].detach().double().clone()
    b0 = policy.net.b0[0].detach().double().clone()
    x = policy.normalize(data.obs[None])[0].double()
    normalized = BatchTensors(x, data.actions, data.rewards, data.mask)
    gw, gb = _closed_form_grad(w0, b0, normalized, adv, _log_probs(w0, b0, normalized), 0.2)
    trainer.update(_one_seed(data), [torch.Generator().manual_seed(0)])
    for got, before, g in ((policy.net.w0[0], w0, gw), (policy.net.b0[0], b0, gb)):
        expected = before - lr * g / (g.abs() + 1e-8)
        assert torch.allclose(got.double(), expected, atol=lr * 1e-3)
    moves = [
        (a - b).detach().abs().max()
        for a, b in zip(critic.parameters(), critic_before.parameters(), strict=True)
    ]
    assert all(0 < float(m) <= critic_lr * 1.001 for m in moves)
    assert max(float(m) for m in moves) == pytest.approx(critic_lr, rel=1e-3)


def test_sppo_raises_the_success_rate_of_a_one_state_bandit():
    """One state, two actions, success iff a = 1, p(a = 1) = 0.2 at first. Each sample's SPPO
    advantage is 1 - V > 0 where a = 1 and -V < 0 where a = 0, with V = sigmoid(v) in (0, 1), so
    every unclipped gradient step raises p(a = 1): it must rise at every update."""
    policy = Policy(1, True, 2, hidden=[])
    with torch.no_grad():
        policy.net[0].weight.zero_()
        policy.net[0].bias.copy_(torch.tensor([np.log(4.0), 0.0]))
    critic = ValueNet(1, hidden=[])
    policy, critic = StackedPolicy([policy]), StackedValueNet([critic])
    policy_opt = torch.optim.Adam(policy.trainable(), lr=0.05)
    critic_opt = torch.optim.Adam(critic.trainable(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    obs = torch.zeros(1, 16, 1, 1)  # [seeds, episodes, steps, d]

    def p_success() -> float:
        with torch.no_grad():
            return float(torch.softmax(policy(obs[:, 0, 0]), -1)[0, 1])

    rates = [p_success()]
    for _ in range(5):
        greedy = torch.zeros(1, 16, dtype=torch.bool)
        actions = policy.act(obs[:, :, 0], greedy, [g]).unsqueeze(-1)
        data = BatchTensors(obs, actions, actions.float(), torch.ones(1, 16, 1))
        cfg = RLConfig(epochs=2, mini_batch_size=8)
        learner = Learner(policy, policy_opt, critic, critic_opt)
        ppo_update(learner, get_estimator("sppo"), cfg, data, [g])
        rates.append(p_success())
    assert rates[0] == pytest.approx(0.2)
    assert all(b > a for a, b in zip(rates[:-1], rates[1:], strict=True))
    assert rates[-1] > 0.3
