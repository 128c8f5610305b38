"""HF rollout engine, policy/critic forward passes and micro-batch gradient accumulation."""

import copy

import pytest
import torch

from sppo_bench.core import CRITICS
from sppo_bench.core.ppo import PPOSettings
from sppo_bench.llm.models import SequenceCritic, TokenCritic, response_log_probs
from sppo_bench.llm.rollout import HFEngine, RolloutBatch, eos_response_mask, left_pad
from sppo_bench.llm.tiny import tiny_model
from sppo_bench.llm.update import critic_update, policy_log_probs, policy_update

PROMPTS = ["<|user|>1+1?\n<|assistant|>", "<|user|>What is 12*(3+4)?\n<|assistant|>", "<|user|>7"]


def test_eos_response_mask_keeps_the_first_eos_and_ignores_pad_ids():
    ids = torch.tensor([[5, 2, 7, 2], [0, 5, 0, 6], [2, 0, 0, 0]])
    mask, truncated = eos_response_mask(ids, [2])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (1.3, 1.0), (0.0, 1.0)])
def test_engine_log_probs_match_a_forward_pass(tok, model, temperature, top_p):
    torch.manual_seed(1)
    batch = HFEngine(model, tok, generation_batch_size=4).generate(
        PROMPTS, n=3, temperature=temperature, top_p=top_p, max_new_tokens=10
    )
    assert len(batch) == 9 and batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert (
        batch.prompt_mask.sum(1)
        == torch.tensor([len(tok.encode(p)) for p in PROMPTS]).repeat_interleave(3)
    ).all()
    tau = temperature if temperature > 0 else 1.0
    lp, _ = response_log_probs(
        model, batch.input_ids(), batch.attention_mask(), batch.response_ids.shape[1], tau
    )
    mask = batch.response_mask.bool()
    assert torch.allclose(lp[mask], batch.log_probs[mask], atol=1e-4)
    assert (batch.log_probs[~mask] == 0).all()
    # the batched recomputation the trainer uses agrees as well (micro-batches of 2 rows)
    again = policy_log_probs(model, batch, micro_batch_size=2, temperature=tau)
    assert torch.allclose(again[mask], batch.log_probs[mask], atol=1e-4)
    for row, text in zip(batch.response_ids, batch.texts, strict=True):
        assert tok.decode(row, skip_special_tokens=True) == text


def test_sequence_critic_reads_the_last_prompt_token_under_left_padding(tok):
    critic = SequenceCritic(tiny_model("xs", tok, seed=2).model)
    torch.nn.init.normal_(critic.head.weight)
    ids = [tok.encode(p) for p in PROMPTS]
    alone = torch.stack([critic(torch.tensor([x]), torch.ones(1, len(x))).squeeze(0) for x in ids])
    padded, mask = left_pad(ids, tok.pad_token_id)
    together = critic(padded, mask)
    assert torch.allclose(alone, together, atol=1e-5)
    # the logit is the head applied to the final hidden state of the prompt
    hidden = critic.backbone(input_ids=torch.tensor([ids[1]])).last_hidden_state[0, -1]
    assert torch.allclose(critic.head(hidden).squeeze(), alone[1], atol=1e-5)
    # right padding reads the same token
    right = torch.full_like(padded, tok.pad_token_id)
    rmask = torch.zeros_like(mask)
    for i, x in enumerate(ids):
        right[i, : len(x)], rmask[i, : len(x)] = torch.tensor(x), 1
    assert torch.allclose(critic(right, rmask), alone, atol=1e-5)
    # a new head starts at V = 0.5
    fresh = SequenceCritic(tiny_model("xs", tok).model)
    assert torch.allclose(torch.sigmoid(fresh(padded, mask)), torch.full((3,), 0.5))


def _batch(tok, model, n=2) -> RolloutBatch:
    torch.manual_seed(0)
    return HFEngine(model, tok).generate(PROMPTS, n, 1.0, 1.0, 12)


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_micro_batch_accumulation_equals_the_full_mini_batch_update(tok, model):
    batch = _batch(tok, model)
    old = policy_log_probs(model, batch, 6, 1.0) - 0.05 * torch.rand(batch.log_probs.shape)
    adv = torch.randn(len(batch), 1) * batch.response_mask
    results = []
    for micro in (1, 4, 6):
        m = copy.deepcopy(model)
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        settings = PPOSettings(max_grad_norm=1e9, entropy_coef=0.01, micro_batch_rows=micro)
        stats = policy_update(m, opt, batch, old, adv, [torch.arange(6)], settings, 1.0)
        results.append((_params(m), stats))
    base = _params(model)
    assert not torch.allclose(results[0][0], base)
    for p, stats in results[1:]:
        assert torch.allclose(p - base, results[0][0] - base, atol=1e-6, rtol=1e-4)
        for key in ("losses/policy", "losses/approx_kl", "losses/clipfrac", "losses/entropy"):
            assert stats[key] == pytest.approx(results[0][1][key], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("kind", ["sequence", "step"])
def test_critic_micro_batches_equal_the_full_mini_batch(tok, model, kind):
    batch = _batch(tok, model)
    backbone = tiny_model("xs", tok, seed=5).model
    critic = SequenceCritic(backbone) if kind == "sequence" else TokenCritic(backbone)
    torch.nn.init.normal_(critic.head.weight, std=0.1)
    if kind == "sequence":
        targets, old = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0]), None
    else:
        targets = torch.rand(batch.log_probs.shape) * batch.response_mask
        old = torch.zeros_like(targets)
    deltas = []
    for micro in (1, 6):
        c = copy.deepcopy(critic)
        opt = torch.optim.SGD(c.parameters(), lr=1.0)
        settings = PPOSettings(max_grad_norm=1e9, micro_batch_rows=micro)
        critic_update(c, CRITICS[kind], opt, batch, targets, old, [torch.arange(6)], settings)
        deltas.append(_params(c) - _params(critic))
    assert deltas[0].abs().max() > 0
    assert torch.allclose(deltas[0], deltas[1], atol=1e-6, rtol=1e-4)
