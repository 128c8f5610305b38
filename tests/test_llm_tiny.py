"""The in-process tiny tokenizer and random-weight Qwen2 model."""

import pytest
import torch

from sppo_bench.errors import UserError
from sppo_bench.llm.tiny import CHARACTERS, SPECIAL_TOKENS, tiny_model, tiny_qwen2, tiny_tokenizer


def test_tokenizer_round_trips_math_text_one_token_per_character():
    tok = tiny_tokenizer()
    text = "Solve \\frac{1}{2} + 3^2 - x_1 * (4/5) = ?\nAnswer: \\boxed{9.5}\t!"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS)
    assert tok.encode("é") == [tok.unk_token_id]


def test_special_tokens_padding_and_chat_template():
    tok = tiny_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.padding_side == "left"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "1+1?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|user|>1+1?\n<|assistant|>"
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|user|>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.decode(ids, skip_special_tokens=True) == "1+1?\n"
    batch = tok(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, :2].tolist() == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0].tolist() == [0, 0, 1, 1]


def test_tiny_qwen2_is_deterministic_and_generates():
    tok = tiny_tokenizer()
    a, b = tiny_model("xs", tok, seed=3), tiny_model("xs", tok, seed=3)
    c = tiny_model("xs", tok, seed=4)
    pa, pc = dict(a.named_parameters()), dict(c.named_parameters())
    assert all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in pa.items())
    assert not all(torch.equal(p, pc[n]) for n, p in pa.items())
    assert a.config.vocab_size == len(tok) and a.config.model_type == "qwen2"
    enc = tok(["1+1=", "2*3="], return_tensors="pt", padding=True)
    out = a.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc["input_ids"].shape[1] + 4)
    with pytest.raises(UserError, match="valid: xs, s, m"):
        tiny_model("huge", tok)
    with pytest.raises(UserError, match="hidden % heads"):
        tiny_qwen2(len(tok), hidden=30, heads=4)
