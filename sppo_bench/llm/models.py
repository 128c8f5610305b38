"""Policy and critics, and the forward passes the trainer needs.

- policy: ``AutoModelForCausalLM`` (or a ``tiny:<size>`` model from ``sppo_bench.llm.tiny``, or a
  random-weight real-size ``random:<size>`` from ``sppo_bench.llm.random_models``);
- ``SequenceCritic`` (SPPO): a causal-LM backbone with a scalar head read at the LAST PROMPT
  token, one logit v per prompt, V(s_p) = sigmoid(v), trained with BCE on the reward;
- ``TokenCritic`` (PPO-GAE): the same backbone kind with a per-token value head, V(s_t) for every
  response token (read at the position that precedes token t).

Both critics may use a smaller backbone than the policy, but they read the policy's token ids, so
they must share its tokenizer (checked: the tokenizer's ids must fit the backbone's vocabulary).

Positions are ``cumsum(attention_mask) - 1``, as ``generate`` uses, so that left padding does not
shift a prompt's positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from sppo_bench.core import CriticStrategy, entropy_from_logits
from sppo_bench.errors import UserError
from sppo_bench.llm.random_models import is_random, random_model, random_tokenizer
from sppo_bench.llm.tiny import tiny_model, tiny_tokenizer

if TYPE_CHECKING:
    from sppo_bench.llm.rollout import RolloutBatch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_tiny(name: str) -> bool:
    return name.startswith("tiny:")


def load_tokenizer(name: str):
    """``tiny:`` / ``random:`` -> an in-process tokenizer; else ``AutoTokenizer`` (left padding)."""
    if is_tiny(name):
        return tiny_tokenizer()
    if is_random(name):
        return random_tokenizer(name)
    tokenizer = AutoTokenizer.from_pretrained(name, padding_side="left")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    name: str,
    tokenizer,
    dtype: str = "float32",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """A causal LM: ``tiny:<size>`` / ``random:<size>`` built from a config with random weights,
    or from the Hub. ``random:`` models are allocated directly on ``device`` (others are moved
    there by the caller)."""
    if is_tiny(name):
        return tiny_model(name.split(":", 1)[1], tokenizer, seed=seed).to(DTYPES[dtype])
    if is_random(name):
        return random_model(name, tokenizer, DTYPES[dtype], device, seed)
    return AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype])


def load_backbone(
    name: str,
    tokenizer,
    dtype: str = "float32",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> PreTrainedModel:
    """The transformer without its LM head (hidden states out)."""
    if is_tiny(name) or is_random(name):
        backbone = load_policy(name, tokenizer, dtype, seed, device).model
    else:
        backbone = AutoModel.from_pretrained(name, dtype=DTYPES[dtype])
    if len(tokenizer) > backbone.config.vocab_size:
        raise UserError(
            f"critic model {name!r} has a vocabulary of {backbone.config.vocab_size} tokens but "
            f"the policy's tokenizer has {len(tokenizer)}; the critic must share the tokenizer"
        )
    return backbone.to(DTYPES[dtype])


def positions(attention_mask: Tensor) -> Tensor:
    """``[B, L]`` position ids: ``cumsum(mask) - 1``, clamped at 0 on left padding."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def last_token_index(attention_mask: Tensor) -> Tensor:
    """``[B]`` index of each row's last real token (left or right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.long().flip(dims=[1]).argmax(dim=1)


def response_log_probs(
    model: PreTrainedModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    response_length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, T]`` of the last ``T = response_length`` tokens of ``input_ids`` ``[B, L]``.

    log pi(y_t | x, y_<t) = log_softmax(z_{t-1} / tau)[y_t], where z_{t-1} are the logits at the
    position before token t. Also the entropy ``[B, T]`` of that tempered distribution.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        logits_to_keep=response_length + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float() / temperature
    targets = input_ids[:, -response_length:]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return log_probs, entropy


class _ValueHeadModel(nn.Module):
    """A transformer backbone with a scalar linear head that starts at zero (V = 0 / 0.5)."""

    def __init__(self, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``[B, L]`` ids and mask (left padding allowed) -> ``[B, L, H]`` last hidden states."""
        return self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions(attention_mask),
            use_cache=False,
        ).last_hidden_state


class SequenceCritic(_ValueHeadModel):
    """SPPO critic: logit v = w . h_last_prompt_token + b; V(s_p) = sigmoid(v).

    The head starts at zero, so V = 0.5 before training.
    """

    def predict(self, batch: RolloutBatch) -> Tensor:
        """``[B]`` logits v on the batch's prompts."""
        return self(batch.prompt_ids, batch.prompt_mask)

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor) -> Tensor:
        """``[B, P]`` prompt ids and mask -> ``[B]`` float32 logits at the last prompt token."""
        hidden = self.hidden_states(prompt_ids, prompt_mask)
        last = last_token_index(prompt_mask)
        h = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.head(h.float()).squeeze(-1)


class TokenCritic(_ValueHeadModel):
    """PPO-GAE critic: V(s_t) = w . h_{t-1} + b for every response token t (head starts at 0)."""

    def predict(self, batch: RolloutBatch) -> Tensor:
        """``[B, T]`` values of the batch's response states (padding not zeroed)."""
        return self(batch.input_ids(), batch.attention_mask(), batch.response_ids.shape[1])

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
        """``[B, P + T]`` prompt + response -> ``[B, T]`` float32 values of the response states."""
        hidden = self.hidden_states(input_ids, attention_mask)
        h = hidden[:, -response_length - 1 : -1]
        return self.head(h.float()).squeeze(-1)


def build_critic(
    strategy: CriticStrategy | None,
    name: str,
    tokenizer,
    dtype: str,
    seed: int,
    device: torch.device | str | None = None,
) -> nn.Module | None:
    """The critic that ``strategy`` (``EstimatorSpec.critic_strategy``) trains, or None."""
    if strategy is None:
        return None
    backbone = load_backbone(name, tokenizer, dtype, seed, device)
    return TokenCritic(backbone) if strategy.per_step else SequenceCritic(backbone)
