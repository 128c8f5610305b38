"""The vLLM engine's calls into vLLM, in the default environment (no vLLM installed): the settings
it starts vLLM with, the sleep / wake / reload order around each generation on a platform with
sleep mode (CUDA), the CUDA cache emptied before each wake-up, the always-awake CPU path, the
CPU head_dim refusal and the KV-cache recipe field.

``RecordingLLM`` stands in for ``vllm.LLM`` and records the calls; ``collective_rpc`` runs the
engine's real worker function on a worker whose ``reload_weights(weights_iterator=...)`` copies
the named tensors into a real torch module. The CUDA path cannot run on a CPU machine, so these
recorded calls are its test here; ``tests/vllm/`` runs the same engine against real vLLM (its CPU
build) in ``.venv-vllm``, and ``test_llm_vllm_engine.py`` on a GPU where vLLM is installed.
"""

import os
import sys
import types

import pytest
import torch

from sppo_bench.config import load_config
from sppo_bench.errors import UserError
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults
from sppo_bench.llm.tiny import tiny_model, tiny_tokenizer
from sppo_bench.llm.vllm_engine import VLLMEngine, check_cpu_head_dim, head_dim


class RecordingLLM:
    calls: list[str] = []  # shared with the CUDA-cache spy, in call order

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.model = None
        self.worker = types.SimpleNamespace(reload_weights=self._reload)
        RecordingLLM.calls = []
        self.calls = RecordingLLM.calls

    def _reload(self, weights_iterator):
        own = self.model.state_dict()
        for name, tensor in weights_iterator:
            own[name].copy_(tensor)

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None) -> bool:
        self.calls.append(f"wake_up({','.join(tags) if tags else 'all'})")
        return True

    def collective_rpc(self, method, args=()):
        self.calls.append("reload_weights")
        return [method(self.worker, *args)]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True


def _fake_vllm(monkeypatch, platform: str):
    module = types.ModuleType("vllm")
    module.LLM = RecordingLLM
    module.envs = types.SimpleNamespace(disable_envs_cache=lambda: None)
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(
        is_cpu=lambda: platform == "cpu",
        is_cuda_alike=lambda: platform == "cuda",
        is_sleep_mode_available=lambda: platform == "cuda",
    )
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # a user's setting
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "40")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: RecordingLLM.calls.append("empty"))


@pytest.fixture
def cuda_vllm(monkeypatch):
    _fake_vllm(monkeypatch, "cuda")


@pytest.fixture
def cpu_vllm(monkeypatch):
    _fake_vllm(monkeypatch, "cpu")


def _engine(size: str = "m", **kwargs):
    tok = tiny_tokenizer()
    policy = tiny_model(size, tok, seed=0)
    engine = VLLMEngine.from_policy(
        policy, tok, f"tiny:{size}", max_model_len=64, dtype="float32", **kwargs
    )
    engine.llm.model = tiny_model(size, tok, seed=123)
    return policy, engine


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


def test_cuda_starts_in_process_with_sleep_mode_and_processed_log_probs(cuda_vllm):
    _, engine = _engine("s")  # head_dim 16 is refused on the CPU backend only
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # overrides the user's "1"
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "40"  # not the CPU backend: untouched
    kw = engine.llm.kwargs
    assert kw["enable_sleep_mode"] is True
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert engine.llm.calls == ["sleep(2)"] and engine.asleep


def test_cuda_wake_up_empties_the_cache_then_reloads_in_trl_order(cuda_vllm):
    policy, engine = _engine()
    llm = engine.llm
    llm.calls.clear()
    engine.wake_up()
    engine.wake_up()  # already awake: nothing
    assert llm.calls == [
        "empty",
        "wake_up(weights)",
        "reload_weights",
        "reset_prefix_cache",
        "empty",
        "wake_up(kv_cache)",
    ]
    assert _same_weights(llm.model, policy)
    engine.sleep()
    llm.calls.clear()
    with torch.no_grad():  # an update while vLLM sleeps: nothing moves until the next wake-up
        for p in policy.parameters():
            p.add_(1.0)
    engine.sync_weights(policy)
    assert llm.calls == [] and not _same_weights(llm.model, policy)
    engine.wake_up()
    assert llm.calls[:4] == ["empty", "wake_up(weights)", "reload_weights", "reset_prefix_cache"]
    assert _same_weights(llm.model, policy)


def test_cpu_has_no_sleep_mode_and_reloads_at_each_sync(cpu_vllm):
    policy, engine = _engine(cpu_kv_cache_gib=2)
    llm = engine.llm
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"  # the recipe's, over the user's 40
    assert llm.kwargs["enable_sleep_mode"] is False
    assert llm.kwargs["enable_chunked_prefill"] is False  # vLLM 0.32 CPU: seeded split prefill
    assert llm.calls == [] and not engine.asleep
    engine.wake_up()
    engine.sleep()
    assert llm.calls == []  # neither reaches vLLM (its CPU worker would pause the scheduler)
    other = tiny_model("m", tiny_tokenizer(), seed=7)
    engine.sync_weights(other)
    assert llm.calls == ["reload_weights", "reset_prefix_cache"]
    assert _same_weights(llm.model, other)


def test_cpu_refuses_a_head_dim_its_attention_cannot_run(cpu_vllm):
    with pytest.raises(UserError, match=r"head_dim 16.*tiny:m") as err:
        _engine("s")
    assert "\n" not in str(err.value)


def test_head_dim_check_without_vllm():
    tok = tiny_tokenizer()
    assert [head_dim(tiny_model(s, tok).config) for s in ("xs", "s", "m")] == [8, 16, 32]
    check_cpu_head_dim("tiny:m", tiny_model("m", tok).config)  # 128 / 4 heads: runs
    config = types.SimpleNamespace(hidden_size=96, num_attention_heads=2, head_dim=None)
    with pytest.raises(UserError, match="head_dim 48"):
        check_cpu_head_dim("x", config)
    explicit = types.SimpleNamespace(hidden_size=96, num_attention_heads=2, head_dim=64)
    check_cpu_head_dim("x", explicit, supported=(32, 64))  # an explicit head_dim wins


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "true"])
def test_cpu_kv_cache_field_takes_whole_positive_gib(value):
    with pytest.raises(UserError, match="cpu_kv_cache_gib") as err:
        resolve_algorithm_defaults(
            load_config(LLMConfig, None, [f"rollout.cpu_kv_cache_gib={value}"])
        )
    assert "\n" not in str(err.value)
    assert load_config(LLMConfig, None, []).rollout.cpu_kv_cache_gib == 1
