"""The critic strategies of the core: what each reads, how V comes from its output, its loss."""

import pytest
import torch

from sppo_bench.core import CRITICS, get_estimator
from sppo_bench.core.critics import SEQUENCE, STEP


def test_each_estimator_names_its_critic():
    assert get_estimator("sppo").critic_strategy is SEQUENCE
    assert get_estimator("ppo-gae").critic_strategy is STEP
    assert all(get_estimator(n).critic_strategy is None for n in ("grpo", "rloo", "remax"))
    assert set(CRITICS) == {"sequence", "step", "step-bce"}


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


def test_step_bce_critic_reads_every_state_and_learns_probabilities():
    from sppo_bench.core.critics import STEP_BCE

    assert get_estimator("ppo-bce").critic_strategy is STEP_BCE
    states = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(STEP_BCE.states(states), states)
    ln3 = float(torch.log(torch.tensor(3.0)))
    v = torch.tensor([[0.0, ln3, -ln3], [ln3, 0.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert torch.allclose(STEP_BCE.values(v)[0], torch.tensor([0.5, 0.75, 0.25]))
    assert torch.allclose(STEP_BCE.start_values(v), torch.tensor([0.5, 0.75]))
    assert STEP_BCE.advantage_inputs(v) == {"step_logits": v}
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    # token mean over the 5 real steps of -log V (R = 1) and -log(1 - V) (R = 0)
    logs = torch.log(torch.tensor([0.5, 0.75, 0.25, 1 - 0.75, 1 - 0.5]))
    expected = -logs.sum() / 5
    assert torch.allclose(STEP_BCE.loss(v, None, r, mask, clip=0.2), expected)
    # micro-batches with the mini-batch's global counts add up to the whole loss
    parts = [
        STEP_BCE.loss(v[i : i + 1], None, r[i : i + 1], mask[i : i + 1], global_tokens=5.0)
        for i in range(2)
    ]
    assert torch.allclose(sum(parts), expected)
    seq_mean = STEP_BCE.loss(v, None, r, mask, aggregation="seq-mean-token-mean")
    assert torch.allclose(seq_mean, (-logs[:3].mean() - logs[3:].mean()) / 2)
    diag = STEP_BCE.diagnostics(v, r, mask)
    assert diag["value/mean"] == pytest.approx(float((0.5 + 0.75 + 0.25 + 0.75 + 0.5) / 5))
