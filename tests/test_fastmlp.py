"""The hand-written passes of the control update (``sppo_bench.control.fastmlp``) against autograd
over the same modules and the core's losses: values and gradients to float rounding, for the
categorical and Gaussian policies (entropy bonus, ratio clip, dual clip, padding masks, every
aggregation) and the three critics (BCE on s_0, MSE with and without the value clip, per-step
BCE); the bf16 matmuls within their stated bound; and a whole update by both paths."""

from __future__ import annotations

import copy

import pytest
import torch

from sppo_bench.control import fastmlp, update
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import RLConfig
from sppo_bench.control.stack import StackedPolicy, StackedValueNet
from sppo_bench.control.update import BatchTensors, Learner, critic_states, ppo_update
from sppo_bench.core import get_estimator
from sppo_bench.core.critics import SEQUENCE, STEP, STEP_BCE
from sppo_bench.core.losses import AGGREGATIONS
from sppo_bench.core.ppo import Micro, PPOSettings, autograd_critic_step, autograd_policy_step

SEEDS, ROWS, STEPS, OBS = 3, 6, 7, 4
# bf16 keeps 8 bits of mantissa: the matmuls' products carry ~4e-3 relative error each
BF16_LOSS_RTOL, BF16_GRAD_RTOL = 2e-2, 5e-2


def _data(discrete: bool, actions_dim: int = 3) -> BatchTensors:
    """Three seeds' batches of 6 rows x 7 steps with lengths 0..7 (one empty row per seed)."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(1, STEPS + 1, (SEEDS, ROWS), generator=g)
    lengths[:, 2] = 0
    mask = (torch.arange(STEPS) < lengths.unsqueeze(-1)).float()
    obs = torch.randn(SEEDS, ROWS, STEPS, OBS, generator=g) * 2
    if discrete:
        actions = torch.randint(0, actions_dim, (SEEDS, ROWS, STEPS), generator=g)
    else:
        actions = torch.randn(SEEDS, ROWS, STEPS, actions_dim, generator=g)
    rewards = (torch.rand(SEEDS, ROWS, STEPS, generator=g) < 0.5).float() * mask
    return BatchTensors(obs, actions, rewards, mask)


def _normalized(nets):
    g = torch.Generator().manual_seed(5)
    for net in nets:
        net.set_normalization(torch.randn(OBS, generator=g), torch.rand(OBS, generator=g) + 0.5)
    return nets


def _policy(discrete: bool, activation: str = "tanh", hidden=(16, 16)) -> StackedPolicy:
    torch.manual_seed(0)
    singles = [Policy(OBS, discrete, 3, hidden, activation, log_std=-0.3) for _ in range(SEEDS)]
    return StackedPolicy(_normalized(singles))


def _critic(activation: str = "tanh") -> StackedValueNet:
    torch.manual_seed(1)
    return StackedValueNet(_normalized([ValueNet(OBS, (16, 16), activation) for _ in range(SEEDS)]))


def _micro(mask: torch.Tensor) -> Micro:
    """Rows {0, 2, 5} / {1, 2, 3} / {4, 5, 0} of a mini-batch that also holds rows 1 and 3."""
    rows = torch.tensor([[0, 2, 5], [1, 2, 3], [4, 5, 0]])
    mini = torch.cat([rows, torch.tensor([[1, 3]] * SEEDS)], dim=1)
    per_row = mask[torch.arange(SEEDS)[:, None], mini].sum(-1)
    counts = torch.stack([per_row.sum(-1), (per_row > 0).sum(-1).float()], dim=1)
    return Micro(rows, counts, rows.shape[1] / mini.shape[1])


def _grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def _assert_close(a: dict, b: dict, rtol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = float(b[k].abs().max()) + 1e-6
        assert torch.allclose(a[k], b[k], rtol=rtol, atol=rtol * scale), k


def _policy_pair(discrete: bool, cfg: PPOSettings, activation: str = "tanh", bf16=False):
    """(fused metrics, fused grads, autograd metrics, autograd grads) on one micro-batch."""
    data, fused = _data(discrete), _policy(discrete, activation)
    reference = copy.deepcopy(fused)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        log_probs, _ = reference.log_prob_entropy(data.obs, data.actions)
    old = log_probs + torch.randn(log_probs.shape, generator=g)  # ratios far inside and outside
    adv = torch.randn(log_probs.shape, generator=g) * data.mask
    micro = _micro(data.mask)

    def rows_of(x: torch.Tensor) -> torch.Tensor:
        return update._rows(x, micro.rows)

    def forward(rows):
        return reference.log_prob_entropy(update._rows(data.obs, rows), rows_of(data.actions))

    expected = autograd_policy_step(forward, old, adv, data.mask, cfg)(micro)
    tensors = [rows_of(x) for x in (data.obs, data.actions, old, adv, data.mask)]
    got = fastmlp.policy_step(fused, *tensors, micro.counts, cfg, bf16)
    return got, _grads(fused), expected, _grads(reference)


@pytest.fixture(params=[4096, 3 * 5], ids=["one-chunk", "chunks-of-5-rows"])
def chunk(request, monkeypatch):
    """Micro-batches of 3 x 21 rows in one chunk, or in chunks of 5 rows per seed (the last
    one shorter)."""
    monkeypatch.setattr(fastmlp, "ROWS_PER_CHUNK", request.param)


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize(("entropy_coef", "dual_clip"), [(0.0, None), (0.05, 3.0), (0.5, 1.5)])
def test_policy_gradient_equals_autograd(discrete, aggregation, entropy_coef, dual_clip, chunk):
    cfg = PPOSettings(0.2, dual_clip, entropy_coef, aggregation)
    got, got_grads, expected, expected_grads = _policy_pair(discrete, cfg)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert expected[3].sum() > 0  # some ratios were clipped
    _assert_close(got_grads, expected_grads)
    assert ("log_std" in got_grads) != discrete


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_policy_gradient_equals_autograd_for_each_activation(activation):
    cfg = PPOSettings(0.2, 3.0, 0.01, "token-mean")
    got, got_grads, expected, expected_grads = _policy_pair(True, cfg, activation)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    _assert_close(got_grads, expected_grads)


def test_linear_policy_gradient_equals_autograd():
    """No hidden layer: one linear map, no activation."""
    data, fused = _data(True), _policy(True, hidden=())
    reference = copy.deepcopy(fused)
    micro, cfg = _micro(data.mask), PPOSettings()
    old = torch.zeros(SEEDS, ROWS, STEPS)
    adv = torch.ones(SEEDS, ROWS, STEPS)

    def forward(rows):
        return reference.log_prob_entropy(
            *(update._rows(x, rows) for x in (data.obs, data.actions))
        )

    expected = autograd_policy_step(forward, old, adv, data.mask, cfg)(micro)
    rows = [update._rows(x, micro.rows) for x in (data.obs, data.actions, old, adv, data.mask)]
    got = fastmlp.policy_step(fused, *rows, micro.counts, cfg)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    _assert_close(_grads(fused), _grads(reference))


def _critic_pair(strategy, cfg: PPOSettings, bf16: bool = False):
    data, fused = _data(True), _critic()
    reference = copy.deepcopy(fused)
    g = torch.Generator().manual_seed(11)
    states = critic_states(strategy, data.obs)
    with torch.no_grad():
        old = reference(states) + torch.randn(states.shape[:-1], generator=g) * 0.2
    targets = old + torch.randn(old.shape, generator=g) * 0.3
    if strategy.objective == "bce":
        targets = (targets > old).float()
    micro = _micro(data.mask)

    def forward(rows):
        return reference(critic_states(strategy, update._rows(data.obs, rows)))

    expected = autograd_critic_step(forward, strategy, targets, old, data.mask, cfg)(micro)
    got = fastmlp.critic_step(
        fused,
        strategy,
        critic_states(strategy, update._rows(data.obs, micro.rows)),
        *(update._rows(x, micro.rows) for x in (old, targets, data.mask)),
        micro.counts,
        cfg,
        micro.row_share,
        bf16,
    )
    return got, _grads(fused), expected, _grads(reference)


@pytest.mark.parametrize(
    ("strategy", "value_clip"),
    [(SEQUENCE, None), (STEP, None), (STEP, 0.1), (STEP_BCE, None)],
)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_critic_gradient_equals_autograd(strategy, value_clip, aggregation, chunk):
    cfg = PPOSettings(aggregation=aggregation, value_clip=value_clip)
    got, got_grads, expected, expected_grads = _critic_pair(strategy, cfg)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-7)
    _assert_close(got_grads, expected_grads)


@pytest.mark.parametrize("discrete", [True, False])
def test_bf16_matmuls_stay_within_the_stated_bound(discrete):
    """bf16 copies of the matmul operands: losses within BF16_LOSS_RTOL, every gradient within
    BF16_GRAD_RTOL of its fp32 norm; and not equal (the bf16 path runs)."""
    cfg = PPOSettings(0.2, 3.0, 0.01, "token-mean")
    fp32, fp32_grads, _, _ = _policy_pair(discrete, cfg)
    bf16, bf16_grads, _, _ = _policy_pair(discrete, cfg, bf16=True)
    assert not torch.equal(fp32, bf16)
    assert torch.allclose(bf16[0], fp32[0], rtol=BF16_LOSS_RTOL, atol=1e-3)
    for k, grad in fp32_grads.items():
        assert (bf16_grads[k] - grad).norm() <= BF16_GRAD_RTOL * grad.norm(), k
    critic, critic_grads, _, _ = _critic_pair(STEP, PPOSettings())
    critic_bf16, critic_bf16_grads, _, _ = _critic_pair(STEP, PPOSettings(), bf16=True)
    assert torch.allclose(critic_bf16, critic, rtol=BF16_LOSS_RTOL)
    for k, grad in critic_grads.items():
        assert (critic_bf16_grads[k] - grad).norm() <= BF16_GRAD_RTOL * grad.norm(), k


@pytest.mark.parametrize(
    ("algo", "discrete"), [("sppo", True), ("ppo-gae", False), ("ppo-bce", True)]
)
def test_update_equals_the_autograd_update(monkeypatch, algo, discrete):
    """A whole ``ppo_update`` (Adam, 2 epochs, micro-batches, per-seed clipping) by the
    hand-written passes and by autograd: the same metrics and weights to float rounding."""
    data = _data(discrete)
    data.rewards = torch.zeros_like(data.mask)
    last = (data.mask.sum(-1) - 1).clamp_min(0).long()
    data.rewards.scatter_(2, last.unsqueeze(-1), (torch.rand(SEEDS, ROWS, 1) < 0.5).float())
    data.rewards *= data.mask
    cfg = RLConfig(epochs=2, mini_batch_size=3, entropy_coef=0.01, max_grad_norm=0.5)
    results = []
    for fused in (True, False):
        monkeypatch.setattr(fastmlp, "supported", lambda net, fused=fused: fused)
        policy, critic = _policy(discrete), _critic()
        learner = Learner(
            policy,
            torch.optim.Adam(policy.trainable(), lr=1e-2),
            critic,
            torch.optim.Adam(critic.trainable(), lr=1e-2),
        )
        monkeypatch.setattr(update, "ROWS_PER_PASS", 2 * SEEDS * STEPS)  # 2 rows per pass
        gens = [torch.Generator().manual_seed(s) for s in range(SEEDS)]
        rows = ppo_update(learner, get_estimator(algo), cfg, data, gens)
        results.append((rows, policy.state_dict(), critic.state_dict()))
    (rows, pol, cri), (rows_ref, pol_ref, cri_ref) = results
    for row, ref in zip(rows, rows_ref, strict=True):
        assert row.keys() == ref.keys()
        for k, v in ref.items():
            assert (v is None) == (row[k] is None), k
            if v is not None:
                assert row[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    _assert_close(pol, pol_ref, rtol=1e-4)
    _assert_close(cri, cri_ref, rtol=1e-4)


def test_stacked_update_equals_each_seeds_own_update():
    """Three seeds stacked against three single-seed updates, 3 mini-batches per epoch: each seed
    shuffles with its own generator (a shared shuffle changes the mini-batches, far above
    rounding) and gets the update it would get alone."""
    data = _data(True)
    cfg = RLConfig(epochs=2, mini_batch_size=2, entropy_coef=0.01)

    def run(policy: StackedPolicy, critic: StackedValueNet, batch: BatchTensors, seeds: list[int]):
        learner = Learner(
            policy,
            torch.optim.Adam(policy.trainable(), lr=1e-2),
            critic,
            torch.optim.Adam(critic.trainable(), lr=1e-2),
        )
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return ppo_update(learner, get_estimator("ppo-gae"), cfg, batch, gens)

    policy, critic = _policy(True), _critic()
    singles = [
        (StackedPolicy([_single(policy, s)]), StackedValueNet([_single(critic, s)]))
        for s in range(SEEDS)
    ]
    stacked_rows = run(policy, critic, data, list(range(SEEDS)))
    for s, (single_policy, single_critic) in enumerate(singles):
        one = BatchTensors(
            *(x[s : s + 1] for x in (data.obs, data.actions, data.rewards, data.mask))
        )
        (row,) = run(single_policy, single_critic, one, [s])
        for k, v in row.items():
            assert (v is None) == (stacked_rows[s][k] is None), k
            if v is not None:
                assert stacked_rows[s][k] == pytest.approx(v, rel=1e-4, abs=1e-6), (s, k)
        for name, value in single_policy.seed_state(0).items():
            assert torch.allclose(policy.seed_state(s)[name], value, atol=1e-6), (s, name)


def _single(stacked: StackedPolicy | StackedValueNet, s: int):
    """Seed s of a stacked network as a plain ``Policy`` / ``ValueNet``."""
    if isinstance(stacked, StackedPolicy):
        net = Policy(OBS, stacked.discrete, stacked.action_dim, (16, 16), log_std=-0.3)
    else:
        net = ValueNet(OBS, (16, 16))
    net.load_state_dict(stacked.seed_state(s))
    return net
