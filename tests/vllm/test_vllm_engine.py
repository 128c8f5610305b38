"""The engine on vLLM's CPU backend: log-probs, weight sync, prefix cache, truncation flags.

Measured numbers are printed (``pytest -s``); the asserted tolerance is ``TOLERANCE``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOLERANCE

from sppo_bench.errors import UserError
from sppo_bench.llm.models import response_log_probs
from sppo_bench.llm.vllm_engine import CPU_HEAD_SIZES, VLLMEngine, _reload_weights

PROMPTS = ["<|user|>12+7=?\n<|assistant|>", "<|user|>3*(4+5)\n<|assistant|>", "<|user|>9"]
LONG_PROMPT = [list(range(5, 100)) * 3]  # 285 tokens: two full 128-token prefix-cache blocks


def test_cpu_head_sizes_are_the_installed_kernels():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert tuple(CPUAttentionBackend.get_supported_head_sizes()) == CPU_HEAD_SIZES


def test_a_head_dim_the_cpu_kernel_refuses_is_one_line_before_vllm_starts(tok):
    from sppo_bench.llm.tiny import tiny_model

    with pytest.raises(UserError, match=r"head_dim 16.*tiny:m") as err:
        VLLMEngine.from_policy(tiny_model("s", tok), tok, "tiny:s", max_model_len=64)
    assert "\n" not in str(err.value)


def test_cpu_engine_is_always_awake(engine):
    assert not engine.sleeps and not engine.asleep
    engine.wake_up()
    engine.sleep()
    assert not engine.asleep


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_log_probs_equal_the_policys_recomputation(
    engine, policy, log_prob_gap, temperature
):
    batch = engine.generate(PROMPTS, 4, temperature, 1.0, 24)
    assert len(batch) == 12 and batch.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    gap = log_prob_gap(batch, policy, temperature)
    print(f"MEASURED log-prob max abs diff at temperature {temperature}: {gap:.2e}")
    assert gap < TOLERANCE


def test_after_an_optimiser_step_and_a_sync_vllm_samples_from_the_new_weights(
    engine, policy, log_prob_gap
):
    student = copy.deepcopy(policy).train()
    batch = engine.generate(PROMPTS, 4, 1.0, 1.0, 16)
    optimiser = torch.optim.AdamW(student.parameters(), lr=3e-3)
    lp, _ = response_log_probs(
        student, batch.input_ids(), batch.attention_mask(), batch.response_ids.shape[1]
    )
    mask = batch.response_mask.float()
    (-(lp * mask).sum() / mask.sum()).backward()  # raise the sampled tokens' likelihood
    optimiser.step()
    student.eval()
    try:
        stale = engine.generate(PROMPTS, 4, 1.0, 1.0, 16)
        before = log_prob_gap(stale, student, 1.0)
        assert log_prob_gap(stale, policy, 1.0) < TOLERANCE  # still the old weights
        engine.sync_weights(student)
        fresh = engine.generate(PROMPTS, 4, 1.0, 1.0, 16)
        after = log_prob_gap(fresh, student, 1.0)
    finally:
        engine.sync_weights(policy)
    print(f"MEASURED gap to the updated policy: before sync {before:.3f}, after {after:.2e}")
    assert before > 100 * TOLERANCE
    assert after < TOLERANCE


def test_the_prefix_cache_serves_no_stale_prefix_after_a_sync(engine, policy, tok, log_prob_gap):
    from sppo_bench.llm.tiny import tiny_model

    other = tiny_model("m", tok, seed=1).eval()
    try:
        engine.generate(LONG_PROMPT, 1, 1.0, 1.0, 8)  # the prompt's blocks are now cached
        # control: new weights without the cache reset, so cached blocks are served
        engine.llm.collective_rpc(_reload_weights, args=(list(other.state_dict().items()),))
        stale = log_prob_gap(engine.generate(LONG_PROMPT, 1, 1.0, 1.0, 8), other, 1.0)
        engine.sync_weights(policy)
        engine.generate(LONG_PROMPT, 1, 1.0, 1.0, 8)  # cached again, under the policy's weights
        engine.sync_weights(other)  # the engine's sync: reload and cache reset
        synced = log_prob_gap(engine.generate(LONG_PROMPT, 1, 1.0, 1.0, 8), other, 1.0)
    finally:
        engine.sync_weights(policy)
    print(f"MEASURED long-prompt gap to new weights: stale {stale:.3f}, after sync {synced:.2e}")
    assert stale > 100 * TOLERANCE  # the cache is on: without the reset it would be stale
    assert synced < TOLERANCE


def test_truncated_responses_are_flagged(engine, tok):
    eos = tok.eos_token_id
    batch = engine.generate(PROMPTS, 32, 1.5, 1.0, 40)  # hot: eos (1 of 104 ids) comes at times
    lengths = batch.response_mask.sum(dim=1)
    ended = torch.tensor(
        [bool((row[:n] == eos).any()) for row, n in zip(batch.response_ids, lengths, strict=True)]
    )
    assert torch.equal(batch.truncated, ~ended)
    assert torch.equal(lengths[batch.truncated], torch.full_like(lengths[batch.truncated], 40))
    assert batch.truncated.any() and (~batch.truncated).any()
    # the eos is the last real token of every finished row
    last = batch.response_ids[~batch.truncated].gather(1, (lengths[~batch.truncated] - 1)[:, None])
    assert (last == eos).all()


def test_a_batch_over_one_steps_token_budget_samples_with_seeds(engine):
    """50 prompts x 100 tokens exceed vLLM's 4,096-token step: with chunked prefill (off here on
    the CPU) a seeded request split over steps crashed vLLM 0.32's CPU runner."""
    config = engine.llm.llm_engine.vllm_config.scheduler_config
    assert not config.enable_chunked_prefill
    prompts = [[5 + i] * 100 for i in range(50)]
    batch = engine.generate(prompts, 2, 1.0, 1.0, 4)
    assert len(batch) == 100 and int(batch.response_mask.sum()) > 0
