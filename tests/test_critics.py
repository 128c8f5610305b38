"""The critic strategies of the core: what each reads, how V comes from its output, its loss."""

import torch

from sppo_bench.core import CRITICS, get_estimator
from sppo_bench.core.critics import SEQUENCE, STEP


def test_each_estimator_names_its_critic():
    assert get_estimator("sppo").critic_strategy is SEQUENCE
    assert get_estimator("ppo-gae").critic_strategy is STEP
    assert all(get_estimator(n).critic_strategy is None for n in ("grpo", "rloo", "remax"))
    assert set(CRITICS) == {"sequence", "step"}


def test_sequence_critic_reads_s0_and_learns_a_probability():
    states = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(SEQUENCE.states(states), states[:, 0])
    v = torch.tensor([0.0, 2.0])
    assert torch.allclose(SEQUENCE.start_values(v), torch.tensor([0.5, 0.8807971]))
    assert SEQUENCE.advantage_inputs(v) == {"value_logits": v}
    r = torch.tensor([1.0, 0.0])
    bce = -(torch.log(torch.sigmoid(v)) * r + torch.log(1 - torch.sigmoid(v)) * (1 - r)).mean()
    loss = SEQUENCE.loss(v, None, r, torch.ones(2, 3), row_share=0.25)
    assert torch.allclose(loss, 0.25 * bce)


def test_step_critic_reads_every_state_and_regresses_returns():
    states = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(STEP.states(states), states)
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.equal(STEP.start_values(values), torch.tensor([0.1, 0.4]))
    assert STEP.advantage_inputs(values) == {"values": values}
    returns = torch.ones(2, 3)
    expected = 0.5 * (((values - 1.0) ** 2) * mask).sum() / mask.sum()
    assert torch.allclose(STEP.loss(values, values, returns, mask), expected)
    out = torch.zeros(STEP.output_shape(3, 4))
    STEP.put(out, torch.tensor([0, 2]), values, mask)
    assert torch.equal(out[2, :3], values[1]) and torch.equal(out[0, :3], values[0] * mask[0])
    assert torch.equal(STEP.take(out, torch.tensor([2]), 2), out[2:, :2])
    diag = STEP.diagnostics(values, returns, mask)
    assert diag["value/mean"] == float((values * mask).sum() / mask.sum())
    assert diag["value/explained_variance"] is None  # the returns do not vary
