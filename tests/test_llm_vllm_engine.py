"""The colocated vLLM engine on a GPU; runs only where vLLM and a CUDA GPU are present (its CPU
backend is tested in tests/vllm)."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="needs vLLM (pip install 'sppo-bench[vllm]') and a CUDA GPU",
)


@pytest.fixture(scope="module")
def setup():
    from sppo_bench.llm.tiny import tiny_model, tiny_tokenizer
    from sppo_bench.llm.vllm_engine import VLLMEngine

    tok = tiny_tokenizer()
    policy = tiny_model("m", tok, seed=0).cuda()
    engine = VLLMEngine.from_policy(
        policy,
        tok,
        "tiny:m",
        gpu_memory_utilization=0.2,
        max_model_len=256,
        dtype="float32",
        enforce_eager=True,
    )
    return tok, policy, engine


def test_generation_log_probs_and_sleep_cycle(setup):
    from sppo_bench.llm.models import response_log_probs

    tok, policy, engine = setup
    engine.wake_up()
    batch = engine.generate(["<|user|>1+1?\n<|assistant|>", "<|user|>7"], 3, 0.7, 1.0, 16)
    engine.sleep()
    assert len(batch) == 6 and batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    cuda = batch.to("cuda")
    lp, _ = response_log_probs(
        policy, cuda.input_ids(), cuda.attention_mask(), cuda.response_ids.shape[1], 0.7
    )
    mask = cuda.response_mask.bool()
    # processed log-probs: those of the tempered distribution the tokens were sampled from
    assert torch.allclose(lp[mask].float().cpu(), batch.log_probs[mask.cpu()], atol=2e-2)


def test_weight_sync_changes_what_vllm_samples(setup):
    tok, policy, engine = setup
    prompt = ["<|user|>2*3?\n<|assistant|>"]
    engine.wake_up()
    before = engine.generate(prompt, 1, 0.0, 1.0, 12).texts
    with torch.no_grad():
        policy.lm_head.weight.mul_(-1.0)  # tied with the embeddings: a different greedy path
    engine.sync_weights(policy)
    after = engine.generate(prompt, 1, 0.0, 1.0, 12).texts
    engine.sleep()
    from sppo_bench.llm.rollout import HFEngine

    hf = HFEngine(policy, tok).generate(prompt, 1, 0.0, 1.0, 12).texts
    assert after != before
    assert after == hf  # vLLM now samples from the trainer's updated weights
