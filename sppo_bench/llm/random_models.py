"""Random-weight Qwen2 models of real sizes, built from a config in process (nothing downloaded).

A recipe names them ``random:<size>``. Their architecture is that of the Qwen2.5 base models'
``config.json`` on the Hub (Qwen2 blocks: RoPE with theta 1e6, SwiGLU MLP, RMSNorm eps 1e-6,
bias on the q/k/v projections, grouped-query attention, tied input/output embeddings):

===================  ======  ======  =====  ========  ============  ======  ===================
name                 hidden  layers  heads  kv heads  intermediate  vocab   parameters
===================  ======  ======  =====  ========  ============  ======  ===================
random:qwen2-0.5b    896     24      14     2         4864          151936  494M (358M non-emb.)
random:qwen2-1.5b    1536    28      12     2         8960          151936  1.54B (1.31B non-emb.)
===================  ======  ======  =====  ========  ============  ======  ===================

(DeepSeek-R1-Distill-Qwen-1.5B, the paper's policy, has the 1.5B body with an untied LM head:
1.78B parameters.) The weights are Hugging Face's initialisation (normal, std 0.02) from a seed;
such a model samples near-uniformly over the vocabulary, so its responses run to
``max_new_tokens``; it is for timing and memory, never for accuracy.

The tokenizer (``random_tokenizer``) is the character tokenizer of ``sppo_bench.llm.tiny`` (same
special ids, left padding and chat template) padded with filler tokens up to the full vocabulary,
so that every sampled id decodes. All sizes share it, so a 0.5B critic reads a 1.5B policy's ids.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from sppo_bench.errors import UserError
from sppo_bench.llm.tiny import tiny_tokenizer

PREFIX = "random:"
VOCAB_SIZE = 151936

# size -> Qwen2Config architecture fields (Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B config.json)
RANDOM_SIZES: dict[str, dict[str, int]] = {
    "qwen2-0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
    },
    "qwen2-1.5b": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
    },
}


def is_random(name: str) -> bool:
    return name.startswith(PREFIX)


def random_size(name: str) -> str:
    """``"random:qwen2-0.5b"`` -> ``"qwen2-0.5b"``; an unknown size is a one-line ``UserError``."""
    size = name.removeprefix(PREFIX)
    if size not in RANDOM_SIZES:
        valid = ", ".join(PREFIX + s for s in RANDOM_SIZES)
        raise UserError(f"unknown random model {name!r}; valid: {valid}")
    return size


def random_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """The character tokenizer with ``VOCAB_SIZE`` ids (the same for every size in the table)."""
    random_size(name)
    return tiny_tokenizer(vocab_size=VOCAB_SIZE)


def random_config(name: str, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    """The ``Qwen2Config`` of ``name`` with ``tokenizer``'s special ids."""
    arch = RANDOM_SIZES[random_size(name)]
    if len(tokenizer) > VOCAB_SIZE:
        raise UserError(f"{name} has {VOCAB_SIZE} ids but the tokenizer has {len(tokenizer)}")
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        **arch,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        use_sliding_window=False,
        max_window_layers=arch["num_hidden_layers"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def random_model(
    name: str,
    tokenizer: PreTrainedTokenizerFast,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """``Qwen2ForCausalLM`` of ``name`` with seeded random weights, allocated directly in
    ``dtype`` on ``device`` (no CPU float32 copy first). The global RNG state is left untouched.
    """
    config = random_config(name, tokenizer)
    device = torch.device(device or "cpu")
    devices = []  # CUDA generators forked besides the CPU one
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices), device:
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model
