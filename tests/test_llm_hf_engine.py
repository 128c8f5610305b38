"""The HF engine's GPU switch on a CPU: a bf16 generation copy with a static KV cache (transformers
compiles it only on accelerators, so here it runs uncompiled), the log-prob recorder that keeps
one ``[B, V]`` tensor instead of ``[B, T, V]``, and the recipe checks around the engine."""

import pytest
import torch
from test_llm_rollout_models import PROMPTS

from sppo_bench.config import load_config
from sppo_bench.errors import UserError
from sppo_bench.llm.engines import make_engine
from sppo_bench.llm.models import response_log_probs
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults
from sppo_bench.llm.rollout import HFEngine, SampledLogProbs


def test_recorder_gathers_each_sampled_token_from_one_step_back():
    torch.manual_seed(0)
    steps = [torch.randn(2, 11) for _ in range(3)]
    tokens = torch.tensor([[4, 7, 1], [0, 10, 3]])
    rec = SampledLogProbs(scale=0.5)
    prompt = torch.zeros(2, 2, dtype=torch.long)
    for t, scores in enumerate(steps):
        seen = torch.cat([prompt, tokens[:, :t]], dim=1)
        assert rec(seen, scores) is scores  # the logits pass through unchanged
        assert rec.previous.shape == (2, 11)  # never more than one step's [B, V]
    out = rec.finish(tokens[:, -1])
    want = torch.stack(
        [
            torch.log_softmax(s / 0.5, -1).gather(-1, tokens[:, t, None])[:, 0]
            for t, s in enumerate(steps)
        ],
        dim=1,
    )
    assert torch.allclose(out, want)


def test_static_cache_greedy_equals_the_dynamic_cache_and_fills_chunks(tok, model):
    dynamic = HFEngine(model, tok, generation_batch_size=4).generate(PROMPTS, 1, 0.0, 1.0, 10)
    static = HFEngine(model, tok, generation_batch_size=4, static_cache=True, prompt_multiple=16)
    out = static.generate(PROMPTS, 1, 0.0, 1.0, 10)  # 3 real rows in a chunk of 4
    assert out.texts == dynamic.texts
    assert len(out) == 3 and out.prompt_index.tolist() == [0, 1, 2]
    assert out.prompt_ids.shape[1] % 16 == 0  # prompts padded to the bucket
    assert torch.equal(out.prompt_mask.sum(1), dynamic.prompt_mask.sum(1))
    mask = out.response_mask.bool()
    assert torch.equal(mask, dynamic.response_mask.bool())
    assert torch.allclose(out.log_probs[mask], dynamic.log_probs[mask], atol=1e-5)


def test_bf16_copy_samples_with_its_own_weights_and_follows_updates(tok, model):
    engine = HFEngine(model, tok, 4, dtype=torch.bfloat16, static_cache=True, prompt_multiple=16)
    assert engine.model is not model and next(engine.model.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the master weights are untouched
    torch.manual_seed(2)
    batch = engine.generate(PROMPTS, 2, 0.8, 1.0, 8)
    lp, _ = response_log_probs(
        engine.model, batch.input_ids(), batch.attention_mask(), batch.response_ids.shape[1], 0.8
    )
    mask = batch.response_mask.bool()
    assert torch.allclose(lp[mask].float(), batch.log_probs[mask], atol=0.1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)
    engine.sync_weights(model)
    for (name, copy), master in zip(
        engine.model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(copy, master.to(torch.bfloat16)), name


def _cfg(*overrides: str) -> LLMConfig:
    return load_config(LLMConfig, None, ["model.policy=tiny:xs", *overrides])


def test_recipe_switch_builds_the_fast_engine(tok, model):
    cfg = resolve_algorithm_defaults(
        _cfg("rollout.engine=hf", "rollout.generation_dtype=bfloat16", "rollout.static_cache=true")
    )
    engine = make_engine(cfg, model, tok)
    assert engine.static_cache and next(engine.model.parameters()).dtype == torch.bfloat16
    plain = make_engine(resolve_algorithm_defaults(_cfg("rollout.engine=hf")), model, tok)
    assert plain.model is model and not plain.static_cache


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("algo.name=sppo", "algo.kl_coef=0.001"), "set algo.kl_coef=0"),
        (("rollout.engine=vllm", "rollout.static_cache=true"), "rollout.engine=hf only"),
        (("rollout.engine=vllm", "rollout.generation_dtype=bfloat16"), "rollout.engine=hf only"),
    ],
)
def test_bad_combinations_are_one_line_errors(overrides, message):
    with pytest.raises(UserError, match=message) as err:
        resolve_algorithm_defaults(_cfg(*overrides))
    assert "\n" not in str(err.value)


def test_in_reward_kl_stays_available_to_critic_free_estimators():
    cfg = resolve_algorithm_defaults(_cfg("algo.name=rloo"))
    assert cfg.algo.kl_coef == 0.001
