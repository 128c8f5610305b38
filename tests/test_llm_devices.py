"""Device handling of the LLM track: resume restores CPU RNG states whatever device the run is
on, and the toy's critic probes read CPU batches from the engine into a model on any device.

The CUDA tests run where a GPU exists and skip elsewhere; the CPU tests pin the same contracts
(what reaches torch's RNG-restore functions, batches moved to the critic's device).
"""

import pytest
import torch
from test_llm_trainer import _config, _strip, _train

from sppo_bench.core.critics import SEQUENCE, STEP
from sppo_bench.llm import trainer as trainer_module
from sppo_bench.llm.data import Problem
from sppo_bench.llm.models import build_critic, load_policy
from sppo_bench.llm.tiny import tiny_tokenizer
from sppo_bench.llm.toy.probes import sequence_calibration, token_value_traces

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_resume_hands_cpu_byte_tensors_to_every_rng_restore(tmp_path, monkeypatch):
    _, _, first = _train(_config("sppo", 1), tmp_path)
    state = torch.load(first.checkpoint_path, weights_only=False)
    # a checkpoint written on a 2-GPU machine, resumed here on a (pretend) 1-GPU machine
    state["rng"]["cuda"] = [torch.get_rng_state().to(torch.int64), torch.get_rng_state()]
    torch.save(state, first.checkpoint_path)
    seen: dict[str, list[torch.Tensor]] = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: seen.setdefault("cuda", s))
    real_set = torch.set_rng_state
    monkeypatch.setattr(
        torch, "set_rng_state", lambda s: (seen.setdefault("cpu", [s]), real_set(s))
    )
    assert first.load_checkpoint()
    assert len(seen["cuda"]) == 1 and len(seen["cpu"]) == 1
    for t in seen["cuda"] + seen["cpu"]:
        assert t.device.type == "cpu" and t.dtype == torch.uint8
    assert torch.equal(seen["cpu"][0], state["rng"]["torch"])


def test_checkpoint_is_read_onto_the_cpu_then_copied_to_the_modules(tmp_path, monkeypatch):
    _, _, first = _train(_config("sppo", 1), tmp_path)
    mapped = []
    real_load = torch.load

    def spy(*args, **kwargs):
        mapped.append(str(kwargs.get("map_location")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(trainer_module.torch, "load", spy)
    first.device = torch.device("meta")  # wherever the run is, the file is read onto the CPU
    assert first.load_checkpoint()
    assert mapped == ["cpu"]


def _toy_models(device: str):
    tok = tiny_tokenizer()
    policy = load_policy("tiny:xs", tok, seed=0).to(device)
    step = build_critic(STEP, "tiny:xs", tok, "float32", 1).to(device)
    seq = build_critic(SEQUENCE, "tiny:xs", tok, "float32", 1).to(device)
    problems = [Problem(id=str(i), question=f"{i}+1=?", answer=str(i + 1)) for i in range(3)]
    return tok, policy, step, seq, problems


def _reward(texts, golds):
    return [float(g in t) for t, g in zip(texts, golds, strict=True)]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_critic_probes_run_with_the_models_on_the_device(device):
    tok, policy, step, seq, problems = _toy_models(device)
    traces = token_value_traces(policy, step, tok, problems, _reward, 1.0, 6, seed=0)
    assert len(traces) == 3 and all(len(t["values"]) >= 1 for t in traces)
    rows = sequence_calibration(policy, seq, tok, problems, _reward, 4, 1.0, 6, seed=0)
    assert [r["k"] for r in rows] == [4, 4, 4]
    assert all(0.0 < r["value"] < 1.0 for r in rows)


@needs_cuda
@pytest.mark.parametrize("algo", ["sppo", "ppo-gae"])
def test_resume_on_cuda_reproduces_an_uninterrupted_run(tmp_path, algo):
    cfg = _config(algo, 3, "train.device=cuda")
    straight, _, _ = _train(cfg, tmp_path / "a")
    _train(_config(algo, 2, "train.device=cuda"), tmp_path / "b")
    resumed, _, _ = _train(cfg, tmp_path / "b")
    assert [r["step"] for r in resumed] == [3]
    assert _strip(resumed[0]) == pytest.approx(_strip(straight[-1]), rel=1e-4, abs=1e-6)
