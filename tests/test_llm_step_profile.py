"""Random-weight real-size Qwen2 models (configs only; never instantiated at full size here) and
the per-step profile bench, run end to end on CPU with the tiny model."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from sppo_bench.core.critics import SEQUENCE
from sppo_bench.errors import UserError
from sppo_bench.llm.data import build_prompt
from sppo_bench.llm.models import build_critic, load_policy, load_tokenizer
from sppo_bench.llm.random_models import (
    RANDOM_SIZES,
    VOCAB_SIZE,
    random_config,
    random_model,
    random_tokenizer,
)
from sppo_bench.llm.rollout import HFEngine
from sppo_bench.llm.tiny import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "llm_step_profile", ROOT / "bench/llm_step_profile.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok():
    return random_tokenizer("random:qwen2-0.5b")


def test_random_tokenizer_decodes_every_id_and_round_trips_the_chat_prompt(tok):
    assert len(tok) == VOCAB_SIZE and tok.padding_side == "left"
    ids = list(range(VOCAB_SIZE))
    pieces = tok.batch_decode([ids[i : i + 4096] for i in range(0, VOCAB_SIZE, 4096)])
    assert all(pieces)
    tokens = tok.convert_ids_to_tokens(ids)
    assert None not in tokens and len(set(tokens)) == VOCAB_SIZE
    assert tok.decode([VOCAB_SIZE - 1]) == f"<{VOCAB_SIZE - 1}>"
    tiny = tiny_tokenizer()
    prompt = build_prompt(tok, "What is 12*(3+4)? \\frac{1}{2}")
    assert prompt == build_prompt(tiny, "What is 12*(3+4)? \\frac{1}{2}")
    encoded = tok(prompt, add_special_tokens=False)["input_ids"]
    assert encoded == tiny(prompt, add_special_tokens=False)["input_ids"]  # fillers never encoded
    assert tok.decode(encoded) == prompt
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_unknown_random_size_is_a_one_line_user_error(tok):
    for call in (
        lambda: load_tokenizer("random:qwen2-7b"),
        lambda: load_policy("random:llama", tok),
        lambda: build_critic(SEQUENCE, "random:qwen2-3b", tok, "float32", 0),
    ):
        with pytest.raises(UserError, match="valid: random:qwen2-0.5b, random:qwen2-1.5b") as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, params, arch",
    [
        ("random:qwen2-0.5b", 494e6, (896, 24, 14, 2, 4864)),
        ("random:qwen2-1.5b", 1.54e9, (1536, 28, 12, 2, 8960)),
    ],
)
def test_real_size_configs_match_qwen2_5(tok, name, params, arch):
    config = random_config(name, tok)
    got = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
    )
    assert got == arch and config.vocab_size == VOCAB_SIZE and config.tie_word_embeddings
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    count = sum(p.numel() for p in model.parameters())  # tied: the embedding counts once
    assert count == pytest.approx(params, rel=0.02)
    # the builder allocates in the requested dtype on the requested device
    built = random_model(name, tok, torch.bfloat16, "meta")
    assert {p.dtype for p in built.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in built.parameters()} == {"meta"}
    assert built.lm_head.weight is built.model.embed_tokens.weight


def test_random_model_is_seeded_and_every_sampled_id_decodes(tok, monkeypatch):
    # a narrow stand-in size with the real vocabulary: the real sizes are too big for a unit test
    arch = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    monkeypatch.setitem(
        RANDOM_SIZES, "qwen2-test", {**arch, "num_key_value_heads": 2, "intermediate_size": 64}
    )
    torch.set_num_threads(1)
    state = torch.get_rng_state()
    a = load_policy("random:qwen2-test", tok, "float32", seed=3)
    b = load_policy("random:qwen2-test", tok, "float32", seed=3, device="cpu")
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is not consumed
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    critic = build_critic(SEQUENCE, "random:qwen2-test", tok, "bfloat16", seed=4)
    assert critic.backbone.embed_tokens.weight.dtype == torch.bfloat16
    torch.manual_seed(0)
    batch = HFEngine(a, tok, 4).generate([build_prompt(tok, "1+1?")], 2, 1.0, 1.0, 6)
    assert batch.response_mask.sum() > 0 and all(batch.texts)
    assert int(batch.response_ids.max()) > len(tiny_tokenizer())  # a filler was sampled


def _csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_bench_profiles_three_algorithms_and_resumes(tmp_path, capsys):
    bench = _bench()
    argv = ["--device", "cpu", "--sizes", "tiny:xs", "--sppo-critic", "tiny:xs", "--prompts", "2"]
    argv += ["--max-new-tokens", "8", "--warmup", "1", "--steps", "1", "--threads", "1"]
    argv += ["--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = _csv(tmp_path / "llm_step_profile.csv")
    assert [(r["algo"], r["n_samples"], r["critic"]) for r in rows] == [
        ("sppo", "1", "tiny:xs"),
        ("grpo", "8", "-"),
        ("gae", "1", "tiny:xs"),
    ]
    for r in rows:
        assert r["status"] == "ok"
        for key in ("time_generation", "time_update", "time_step", "tokens_per_step", "peak_gib"):
            assert float(r[key]) > 0, key
        assert float(r["time_step"]) >= float(r["time_generation"])
        assert float(r["policy_params_m"]) > 0
    assert float(rows[0]["time_critic"]) > 0 and float(rows[1]["time_critic"]) < 1e-3  # no critic
    assert float(rows[1]["rows"]) == 16
    meta = json.loads((tmp_path / "llm_step_profile.json").read_text())
    assert meta["settings"]["prompts"] == 2 and meta["torch"] == torch.__version__
    assert "peak RSS" in meta["memory"] and meta["rows"] == 3
    assert "| tiny:xs | grpo | 8 |" in (tmp_path / "llm_step_profile.md").read_text()

    capsys.readouterr()
    assert bench.main(argv) == 0  # a rerun measures nothing again
    assert capsys.readouterr().out.count("measured before, skipped") == 3
    assert len((tmp_path / "llm_step_profile.partial.jsonl").read_text().splitlines()) == 3
    assert _csv(tmp_path / "llm_step_profile.csv") == rows


def test_bench_records_out_of_memory_and_goes_on(tmp_path, monkeypatch):
    bench = _bench()

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(bench, "measure", out_of_memory)
    argv = ["--device", "cpu", "--sizes", "tiny:xs", "--sppo-critic", "tiny:xs"]
    assert bench.main([*argv, "--algos", "sppo", "grpo", "--out", str(tmp_path)]) == 0
    rows = _csv(tmp_path / "llm_step_profile.csv")
    assert [r["status"] for r in rows] == ["OOM", "OOM"]
    assert rows[0]["note"].startswith("CUDA out of memory") and float(rows[0]["peak_gib"]) > 0

    monkeypatch.setattr(bench, "measure", lambda *a, **k: 1 / 0)  # anything else propagates
    with pytest.raises(ZeroDivisionError):
        bench.main([*argv, "--algos", "rloo", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algos", "sppo", "dpo"], "unknown algorithm 'dpo'"),
        (["--sizes", "7b"], "unknown size '7b'; valid: 0.5b, 1.5b, tiny:xs"),
        (["--sizes", "tiny:xl"], "unknown size 'tiny:xl'"),
        (["--prompts", "0"], "--prompts must be >= 1"),
    ],
)
def test_bench_argument_errors_are_one_line(argv, message, capsys, tmp_path):
    assert _bench().main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_bench_cuda_without_cuda_is_an_error(capsys):
    assert _bench().main(["--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
