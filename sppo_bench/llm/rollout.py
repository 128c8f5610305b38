"""Rollouts: the batch container and the Hugging Face ``generate`` engine.

Every engine implements ``RolloutEngine``::

    generate(prompts, n, temperature, top_p, max_new_tokens) -> RolloutBatch

``prompts`` are strings (already chat-formatted; tokenised without extra special tokens) or lists
of token ids. Each prompt is sampled ``n`` times; rows are prompt-major (prompt ``i`` fills rows
``i * n ... i * n + n - 1``). ``temperature == 0`` is greedy decoding.

Log-probabilities are those of the sampling policy, log softmax(z / tau) of the sampled token with
``tau`` the temperature (1 for greedy), top-p truncation not applied; a forward pass of the same
model over prompt + response with ``models.response_log_probs`` gives the same numbers (the HF
engine with a generation copy in another dtype: those of the copy).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList

__all__ = [
    "RolloutBatch",
    "RolloutEngine",
    "HFEngine",
    "SampledLogProbs",
    "left_pad",
    "eos_response_mask",
]


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


class SampledLogProbs(LogitsProcessor):
    """A ``generate`` logits processor that records log softmax(z / scale) of each sampled token.

    ``generate`` calls it once per decoding step with the raw logits ``z`` ``[B, V]`` (custom
    processors run before temperature / top-p; it returns them unchanged). The token sampled at
    step t is only known at step t + 1, as the last column of ``input_ids``, so the step's
    log-softmax is kept until then: one ``[B, V]`` tensor at a time, never the ``[B, T, V]`` stack
    of ``output_logits`` (0.6 GB per row per 1,000 tokens at a 150k vocabulary).
    ``finish(last_tokens)`` adds the final token's column and returns ``[B, T]`` float32.
    """

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.previous: Tensor | None = None
        self.columns: list[Tensor] = []

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.previous = torch.log_softmax(scores.float() / self.scale, dim=-1)
        return scores

    def finish(self, last_tokens: Tensor) -> Tensor:
        if self.previous is not None:
            self.columns.append(self.previous.gather(-1, last_tokens[:, None]).squeeze(-1))
        self.previous = None
        out = torch.stack(self.columns, dim=1) if self.columns else last_tokens[:, :0].float()
        self.columns = []
        return out


def generation_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen copy of ``model`` in ``dtype`` on the same device, made parameter by parameter
    (the deep copy is handed each parameter already cast, so no second full-precision copy of
    the weights ever exists)."""
    memo = {
        id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for p in model.parameters()
    }
    return copy.deepcopy(model, memo).to(dtype).eval()


class HFEngine:
    """Batched ``model.generate`` with a KV cache.

    The engine samples from ``model`` itself (the trainer's policy) unless ``dtype`` asks for a
    generation copy in another dtype (e.g. bf16 beside fp32 master weights), which
    ``sync_weights`` refreshes after each update. ``static_cache=True`` uses a fixed-size KV cache,
    for which transformers compiles the decoding step on a GPU (the first call per shape compiles
    for about a minute); to keep shapes few, prompts are left-padded to a multiple of
    ``prompt_multiple`` tokens and every chunk is filled to ``generation_batch_size`` rows (the
    extra rows are dropped). Rows are generated in chunks of ``generation_batch_size``; the
    sampled tokens' log-probs are recorded during generation by ``SampledLogProbs``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        generation_batch_size: int = 64,
        dtype: torch.dtype | None = None,
        static_cache: bool = False,
        prompt_multiple: int = 64,
    ) -> None:
        self.model = model
        if dtype is not None and dtype != next(model.parameters()).dtype:
            self.model = generation_copy(model, dtype)
        self.tokenizer = tokenizer
        self.generation_batch_size = generation_batch_size
        self.static_cache = static_cache
        self.prompt_multiple = prompt_multiple

    def wake_up(self) -> None:
        return None

    def sleep(self) -> None:
        return None

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """The engine samples from ``self.model``; a different module is copied (and cast) in."""
        if model is not self.model:
            self.model.load_state_dict(model.state_dict())

    def _chunk_inputs(self, chunk: list[list[int]], pad: int) -> tuple[Tensor, Tensor, int]:
        """Left-padded ``[b, P]`` ids and mask of a chunk, and its number of real rows; with a
        static cache, P is rounded up to ``prompt_multiple`` and b filled to the batch size."""
        real = len(chunk)
        if self.static_cache:
            chunk = chunk + [chunk[-1]] * (self.generation_batch_size - real)
        ids, mask = left_pad(chunk, pad)
        if self.static_cache:
            extra = -ids.shape[1] % self.prompt_multiple
            ids = torch.nn.functional.pad(ids, (extra, 0), value=pad)
            mask = torch.nn.functional.pad(mask, (extra, 0), value=0)
        return ids, mask, real

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
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if self.static_cache:
            sampling["cache_implementation"] = "static"
        chunks = []
        for start in range(0, len(rows), self.generation_batch_size):
            chunk = rows[start : start + self.generation_batch_size]
            prompt_ids, prompt_mask, real = self._chunk_inputs([seq for _, seq in chunk], pad)
            recorder = SampledLogProbs(temperature if temperature > 0 else 1.0)
            sequences = self.model.generate(
                input_ids=prompt_ids.to(device),
                attention_mask=prompt_mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=stop,
                logits_processor=LogitsProcessorList([recorder]),
                **sampling,
            )
            response = sequences[:, prompt_ids.shape[1] :]
            log_probs = recorder.finish(response[:, -1])[:real].cpu()
            response = response[:real].cpu()
            mask, truncated = eos_response_mask(response, stop)
            response = torch.where(mask.bool(), response, torch.full_like(response, pad))
            chunks.append(
                RolloutBatch(
                    prompt_ids=prompt_ids[:real],
                    prompt_mask=prompt_mask[:real],
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
