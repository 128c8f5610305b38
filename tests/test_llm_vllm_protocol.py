"""The vLLM engine's calls into vLLM, on a CPU: which settings it starts vLLM with, the
sleep / wake / weight-load order around each generation, and where the weights land.

vLLM itself cannot run here (it needs CUDA). ``RecordingLLM`` stands in for ``vllm.LLM`` and
records the calls; ``collective_rpc`` runs the engine's real worker function on a worker object
whose model runner's ``get_model()`` returns a real torch module with vLLM's ``load_weights``
contract (an iterable of ``(name, tensor)`` pairs, returns the names loaded). The GPU tests in
``test_llm_vllm_engine.py`` run the same engine against real vLLM where it is installed.
"""

import sys
import types

import pytest
import torch

from sppo_bench.llm.tiny import tiny_model, tiny_tokenizer
from sppo_bench.llm.vllm_engine import VLLMEngine


class LoadableModel(torch.nn.Module):
    """A vLLM-style model: ``load_weights`` copies named tensors into its own parameters."""

    def __init__(self, like: torch.nn.Module) -> None:
        super().__init__()
        self.inner = tiny_model("xs", tiny_tokenizer(), seed=123)
        self.inner.load_state_dict({k: torch.zeros_like(v) for k, v in like.state_dict().items()})

    def load_weights(self, weights):
        own = self.inner.state_dict()
        names = set()
        for name, tensor in weights:
            own[name].copy_(tensor)
            names.add(name)
        return names


class RecordingLLM:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs
        self.calls: list[str] = []
        self.model = None
        runner = types.SimpleNamespace(get_model=lambda: self.model)
        self.worker = types.SimpleNamespace(model_runner=runner)

    def sleep(self, level: int = 1) -> None:
        self.calls.append(f"sleep({level})")

    def wake_up(self, tags=None) -> bool:
        self.calls.append(f"wake_up({','.join(tags) if tags else 'all'})")
        return True

    def collective_rpc(self, method, args=()):
        self.calls.append("load_weights")
        return [method(self.worker, *args)]

    def reset_prefix_cache(self) -> bool:
        self.calls.append("reset_prefix_cache")
        return True


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = RecordingLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # a user's setting
    return module


def _engine():
    tok = tiny_tokenizer()
    policy = tiny_model("xs", tok, seed=0)
    engine = VLLMEngine.from_policy(policy, tok, "tiny:xs", max_model_len=64, dtype="float32")
    engine.llm.model = LoadableModel(policy)
    return policy, engine


def test_starts_in_process_with_sleep_mode_and_processed_log_probs(fake_vllm):
    import os

    _, engine = _engine()
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # overrides the user's "1"
    kw = engine.llm.kwargs
    assert kw["enable_sleep_mode"] is True
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert engine.llm.calls == ["sleep(2)"] and engine.asleep


def test_each_wake_up_loads_the_current_policy_in_trl_order(fake_vllm):
    policy, engine = _engine()
    llm = engine.llm
    llm.calls.clear()
    engine.wake_up()
    engine.wake_up()  # already awake: nothing
    assert llm.calls == [
        "wake_up(weights)",
        "load_weights",
        "reset_prefix_cache",
        "wake_up(kv_cache)",
    ]
    for name, value in policy.state_dict().items():
        assert torch.equal(llm.model.inner.state_dict()[name], value)
    engine.sleep()
    llm.calls.clear()
    with torch.no_grad():  # an update while vLLM sleeps: nothing moves until the next wake-up
        for p in policy.parameters():
            p.add_(1.0)
    engine.sync_weights(policy)
    assert llm.calls == []
    engine.wake_up()
    assert llm.calls[:3] == ["wake_up(weights)", "load_weights", "reset_prefix_cache"]
    for name, value in policy.state_dict().items():
        assert torch.equal(llm.model.inner.state_dict()[name], value)


def test_sync_while_awake_loads_at_once_and_resets_the_prefix_cache(fake_vllm):
    policy, engine = _engine()
    engine.wake_up()
    engine.llm.calls.clear()
    other = tiny_model("xs", tiny_tokenizer(), seed=7)
    engine.sync_weights(other)
    assert engine.llm.calls == ["load_weights", "reset_prefix_cache"]
    for name, value in other.state_dict().items():
        assert torch.equal(engine.llm.model.inner.state_dict()[name], value)
