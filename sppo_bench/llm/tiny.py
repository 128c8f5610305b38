"""A tiny tokenizer and Qwen2 model built in process (nothing downloaded), for CPU tests and toys.

The tokenizer is character level: every printable ASCII character (digits, letters, arithmetic
and LaTeX symbols such as ``\\ { } ^ _``), space, newline and tab is one token; anything else maps
to ``<|unk|>``. Special tokens: ``<|pad|>``, ``<|bos|>``, ``<|eos|>``, ``<|unk|>`` and the chat
role markers ``<|system|>``, ``<|user|>``, ``<|assistant|>``. Its chat template renders

    <|user|>question\\n<|assistant|>

so ``build_prompt`` and ``apply_chat_template`` work as with a real chat model.

``tiny_qwen2`` is a ``Qwen2ForCausalLM`` with random weights from a ``Qwen2Config``;
``tiny_model(size, tokenizer)`` builds one of the named ``TINY_SIZES`` (used by recipes that name
the model ``tiny:<size>``).
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Split
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from sppo_bench.errors import UserError

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)
CHARACTERS: str = "".join(c for c in string.printable if c not in "\r\x0b\x0c")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% if message['role'] == 'assistant' %}<|eos|>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# name -> (hidden, layers, heads, kv_heads, intermediate)
TINY_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "xs": (32, 1, 4, 2, 64),
    "s": (64, 2, 4, 2, 128),
    "m": (128, 4, 4, 2, 256),
}


def tiny_tokenizer(vocab_size: int | None = None) -> PreTrainedTokenizerFast:
    """The character-level tokenizer (vocabulary: ``SPECIAL_TOKENS`` then ``CHARACTERS``).

    ``decode(encode(s)) == s`` for any string of ``CHARACTERS``; padding side is left (the
    convention for batched generation). ``vocab_size``: pad the vocabulary with filler tokens
    ``<i>`` (id i) up to that many ids, so that every id a model of that vocabulary samples
    decodes; text never encodes to a filler (the pre-tokenizer splits into single characters).
    """
    tokens = (*SPECIAL_TOKENS, *CHARACTERS)
    if vocab_size is not None and vocab_size < len(tokens):
        raise UserError(f"tokenizer vocab_size must be >= {len(tokens)}, got {vocab_size}")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    vocab.update({f"<{i}>": i for i in range(len(tokens), vocab_size or 0)})
    backend = Tokenizer(WordLevel(vocab, unk_token=UNK))
    backend.pre_tokenizer = Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_qwen2(
    vocab_size: int,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 4096,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A random-weight ``Qwen2ForCausalLM`` (tied embeddings; ids default to ``tiny_tokenizer``'s).

    ``hidden`` must be divisible by ``heads`` and ``heads`` by ``kv_heads``.
    """
    if hidden % heads or heads % kv_heads:
        raise UserError(
            f"tiny model needs hidden % heads == 0 and heads % kv_heads == 0, got "
            f"hidden={hidden}, heads={heads}, kv_heads={kv_heads}"
        )
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = Qwen2ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model


def tiny_model(size: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2ForCausalLM:
    """``tiny_qwen2`` of a named size in ``TINY_SIZES``, with ``tokenizer``'s vocabulary and ids."""
    if size not in TINY_SIZES:
        raise UserError(f"unknown tiny model size {size!r}; valid: {', '.join(TINY_SIZES)}")
    hidden, layers, heads, kv_heads, intermediate = TINY_SIZES[size]
    return tiny_qwen2(
        len(tokenizer),
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        seed=seed,
    )
