"""Rollouts: the batch container and the Hugging Face ``generate`` engine.

Every engine implements ``RolloutEngine``::

    generate(prompts, n, temperature, top_p, max_new_tokens) -> RolloutBatch

``prompts`` are strings (already chat-formatted; tokenised without extra special tokens) or lists
of token ids. Each prompt is sampled ``n`` times; rows are prompt-major (prompt ``i`` fills rows
``i * n ... i * n + n - 1``). ``temperature == 0`` is greedy decoding.

Log-probabilities are those of the sampling policy, log softmax(z / tau) of the sampled token with
``tau`` the temperature (1 for greedy), top-p truncation not applied; a forward pass of the same
model over prompt + response with ``models.response_log_probs`` gives the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["RolloutBatch", "RolloutEngine", "HFEngine", "left_pad", "eos_response_mask"]


@dataclass
class RolloutBatch:
    """``B`` sampled responses.

    prompt_ids: ``[B, P]`` left-padded prompt tokens; prompt_mask: ``[B, P]`` 1 on real tokens.
    response_ids: ``[B, T]`` right-padded response tokens (up to and including eos);
    response_mask: ``[B, T]`` 1 on real response tokens (the eos counts as real).
    log_probs: ``[B, T]`` float32 log-probs of the response tokens under the sampling policy, 0 on
    padding. prompt_index: ``[B]`` index of each row's prompt in the engine's input list.
    truncated: ``[B]`` bool, True where no eos came within ``max_new_tokens``.
    texts: ``B`` decoded responses (special tokens dropped).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    log_probs: Tensor
    prompt_index: Tensor
    truncated: Tensor
    texts: list[str]

    def __len__(self) -> int:
        return len(self.texts)

    def input_ids(self) -> Tensor:
        """``[B, P + T]`` prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> Tensor:
        """``[B, P + T]``."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def select(self, index: Tensor | list[int]) -> RolloutBatch:
        """Rows ``index``, with columns that are padding in every selected row trimmed away."""
        index = torch.as_tensor(index, dtype=torch.long)
        pm, rm = self.prompt_mask[index], self.response_mask[index]
        p_keep = int(pm.sum(0).nonzero().min()) if pm.any() else pm.shape[1]
        t_keep = int(rm.sum(0).nonzero().max()) + 1 if rm.any() else 0
        return RolloutBatch(
            prompt_ids=self.prompt_ids[index, p_keep:],
            prompt_mask=pm[:, p_keep:],
            response_ids=self.response_ids[index, :t_keep],
            response_mask=rm[:, :t_keep],
            log_probs=self.log_probs[index, :t_keep],
            prompt_index=self.prompt_index[index],
            truncated=self.truncated[index],
            texts=[self.texts[i] for i in index.tolist()],
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        kwargs = {
            f.name: getattr(self, f.name).to(device)
            if isinstance(getattr(self, f.name), Tensor)
            else getattr(self, f.name)
            for f in fields(self)
        }
        return RolloutBatch(**kwargs)

    @staticmethod
    def concat(batches: list[RolloutBatch], pad_token_id: int) -> RolloutBatch:
        """Stack batches row-wise, re-padding prompts on the left and responses on the right."""
        p = max(b.prompt_ids.shape[1] for b in batches)
        t = max(b.response_ids.shape[1] for b in batches)

        def lpad(x: Tensor, value: float) -> Tensor:
            return torch.nn.functional.pad(x, (p - x.shape[1], 0), value=value)

        def rpad(x: Tensor, value: float) -> Tensor:
            return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=value)

        return RolloutBatch(
            prompt_ids=torch.cat([lpad(b.prompt_ids, pad_token_id) for b in batches]),
            prompt_mask=torch.cat([lpad(b.prompt_mask, 0) for b in batches]),
            response_ids=torch.cat([rpad(b.response_ids, pad_token_id) for b in batches]),
            response_mask=torch.cat([rpad(b.response_mask, 0) for b in batches]),
            log_probs=torch.cat([rpad(b.log_probs, 0.0) for b in batches]),
            prompt_index=torch.cat([b.prompt_index for b in batches]),
            truncated=torch.cat([b.truncated for b in batches]),
            texts=[text for b in batches for text in b.texts],
        )


class RolloutEngine(Protocol):
    """What the trainer and the evaluator need from a generator."""

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
    ) -> RolloutBatch: ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from ``model``'s current weights."""

    def wake_up(self) -> None:
        """Before generation: bring weights and cache back (no-op where nothing sleeps)."""

    def sleep(self) -> None:
        """After generation: free the engine's accelerator memory for training."""


def left_pad(sequences: list[list[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Token lists -> ``([B, L] ids, [B, L] mask)`` padded on the left to the longest."""
    length = max((len(s) for s in sequences), default=0)
    ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[i, length - len(seq) :] = 1
    return ids, mask


def eos_response_mask(response_ids: Tensor, eos_token_ids: list[int]) -> tuple[Tensor, Tensor]:
    """``[B, T]`` ids -> (mask up to and including the first eos, ``[B]`` truncated flags).

    The mask comes from the eos position, never from pad ids, because a model may sample the pad
    token as an ordinary token.
    """
    is_eos = torch.isin(response_ids, torch.tensor(eos_token_ids, device=response_ids.device))
    seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return (~seen_before).long(), ~is_eos.any(dim=1)


def prompt_token_ids(tokenizer, prompts: list[str] | list[list[int]]) -> list[list[int]]:
    """Strings are tokenised without added special tokens (the chat template has them)."""
    if prompts and isinstance(prompts[0], str):
        return tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [list(p) for p in prompts]


def eos_ids(model, tokenizer) -> list[int]:
    """The eos ids generation stops at: the tokenizer's and the model's generation config's."""
    found = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        found.add(configured)
    elif configured:
        found.update(configured)
    return sorted(i for i in found if i is not None)


def sampled_log_probs(logits: tuple[Tensor, ...], response: Tensor, scale: float) -> Tensor:
    """``T`` raw logits ``[B, V]`` (one per generated token) and ``[B, T]`` sampled ids ->
    ``[B, T]`` float32 log softmax(z / scale) of the sampled ids, on the logits' device.

    Step by step, so that no ``[B, T, V]`` stack (nor a CPU copy of it) is ever made: with a
    150k-token vocabulary that stack is 0.6 GB per row per 1,000 tokens.
    """
    columns = [
        torch.log_softmax(z.float() / scale, dim=-1).gather(-1, response[:, t, None]).squeeze(-1)
        for t, z in enumerate(logits)
    ]
    return torch.stack(columns, dim=1)


class HFEngine:
    """Batched ``model.generate`` with a KV cache; the model is the trainer's own policy module.

    Rows are generated in chunks of ``generation_batch_size``. The sampled tokens' log-probs come
    from the raw logits that ``generate`` returns (``output_logits``), scaled by 1/temperature.
    """

    def __init__(self, model, tokenizer, generation_batch_size: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size

    def wake_up(self) -> None:
        return None

    def sleep(self) -> None:
        return None

    def sync_weights(self, model: torch.nn.Module) -> None:
        """The engine samples from ``self.model``; a different module is copied into it."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
    ) -> RolloutBatch:
        ids = prompt_token_ids(self.tokenizer, prompts)
        rows = [(i, seq) for i, seq in enumerate(ids) for _ in range(n)]
        pad = self.tokenizer.pad_token_id
        stop = eos_ids(self.model, self.tokenizer)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks = []
        for start in range(0, len(rows), self.generation_batch_size):
            chunk = rows[start : start + self.generation_batch_size]
            prompt_ids, prompt_mask = left_pad([seq for _, seq in chunk], pad)
            sampling = (
                {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
                if temperature > 0
                else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            )
            out = self.model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=stop,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
            response = out.sequences[:, prompt_ids.shape[1] :]
            scale = temperature if temperature > 0 else 1.0
            log_probs = sampled_log_probs(out.logits, response, scale).cpu()
            del out  # the per-step logits: generation's largest tensors
            response = response.cpu()
            mask, truncated = eos_response_mask(response, stop)
            response = torch.where(mask.bool(), response, torch.full_like(response, pad))
            chunks.append(
                RolloutBatch(
                    prompt_ids=prompt_ids,
                    prompt_mask=prompt_mask,
                    response_ids=response,
                    response_mask=mask,
                    log_probs=log_probs * mask,
                    prompt_index=torch.tensor([i for i, _ in chunk], dtype=torch.long),
                    truncated=truncated,
                    texts=self.tokenizer.batch_decode(response, skip_special_tokens=True),
                )
            )
        self.model.train(was_training)
        return RolloutBatch.concat(chunks, pad)
