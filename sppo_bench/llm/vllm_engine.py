"""A colocated vLLM rollout engine (GPU only; ``pip install 'sppo-bench[vllm]'``, vLLM 0.33).

One ``vllm.LLM`` lives in the trainer's process on the trainer's GPU, created with
``enable_sleep_mode=True``. Its engine core is forced in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, overriding a user's setting), because the weight sync hands
a plain function to ``LLM.collective_rpc``, which only works in-process. Between generations vLLM
sleeps at level 2 (weights and KV cache discarded: the trainer's policy is the only copy of the
weights). Each generation follows the sequence TRL 1.16 and verl use::

    wake_up(tags=["weights"]) -> load_weights(policy's state_dict) -> reset_prefix_cache()
    -> wake_up(tags=["kv_cache"]) -> generate -> sleep(level=2)

``sync_weights(model)`` names the module whose weights the next wake-up loads (and loads them at
once if the engine is awake). Weights reach vLLM's model, read through the model runner's
``get_model()``, by its own ``load_weights`` (which maps Hugging Face names onto its fused layers).

Log-probs come from ``SamplingParams(logprobs=0)`` with ``logprobs_mode="processed_logprobs"``:
the sampled token's log-prob under the distribution it was sampled from (after temperature and
top-p). The trainer still recomputes the old log-probs with its own forward pass (vLLM's kernels
and dtype differ from the trainer's); ``RolloutBatch.log_probs`` is the diagnostic
``rollout_log_prob_gap``.
"""

from __future__ import annotations

import os
import tempfile

import torch

from sppo_bench.errors import UserError
from sppo_bench.llm.models import is_tiny
from sppo_bench.llm.random_models import is_random
from sppo_bench.llm.rollout import RolloutBatch, left_pad, prompt_token_ids

IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def _load_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> int:
    """Runs inside vLLM's worker: copy ``weights`` into its model; returns how many arrived."""
    model = worker.model_runner.get_model()
    loaded = model.load_weights(weights=weights)
    return len(loaded) if loaded is not None else len(weights)


class VLLMEngine:
    """``generate`` with a sleeping, colocated ``vllm.LLM``; see the module docstring."""

    def __init__(self, llm, tokenizer, source: torch.nn.Module, seed: int = 0) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.source = source  # the module whose weights each wake-up loads
        self.seed = seed
        self.calls = 0
        self.asleep = False

    @classmethod
    def from_policy(
        cls,
        policy,
        tokenizer,
        name: str,
        gpu_memory_utilization: float = 0.4,
        max_model_len: int | None = None,
        dtype: str = "bfloat16",
        seed: int = 0,
        enforce_eager: bool = False,
    ) -> VLLMEngine:
        """Start vLLM on ``name`` (a ``tiny:`` or ``random:`` policy is saved to a temp folder
        first)."""
        try:
            import vllm
        except ImportError:
            raise UserError(
                "rollout.engine=vllm needs vLLM: pip install 'sppo-bench[vllm]' (GPU only), "
                "or set rollout.engine=hf"
            ) from None
        if not torch.cuda.is_available():
            raise UserError("rollout.engine=vllm needs a CUDA GPU; set rollout.engine=hf")
        os.environ.update(IN_PROCESS)
        path = name
        if is_tiny(name) or is_random(name):  # built in process: vLLM loads it from a folder
            path = tempfile.mkdtemp(prefix="sppo-tiny-")
            policy.save_pretrained(path)
            tokenizer.save_pretrained(path)
        llm = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_sleep_mode=True,
            enforce_eager=enforce_eager,
            logprobs_mode="processed_logprobs",
        )
        engine = cls(llm, tokenizer, policy, seed)
        engine.sleep()
        return engine

    def wake_up(self) -> None:
        """Weights back, the policy's weights loaded, prefix cache reset, then the KV cache."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
            self._load(self.source)
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def sleep(self) -> None:
        """Level 2: weights and KV cache discarded (the next wake-up reloads the policy)."""
        if not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Sample from ``model`` from now on: loaded now if awake, else at the next wake-up."""
        self.source = model
        if not self.asleep:
            self._load(model)

    @torch.no_grad()
    def _load(self, model: torch.nn.Module) -> None:
        weights = [(k, v.detach()) for k, v in model.state_dict().items()]
        self.llm.collective_rpc(_load_weights, args=(weights,))
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    def generate(
        self,
        prompts: list[str] | list[list[int]],
        n: int,
        temperature: float,
        top_p: float = 1.0,
        max_new_tokens: int = 256,
    ) -> RolloutBatch:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = prompt_token_ids(self.tokenizer, prompts)
        self.calls += 1
        params = SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            logprobs=0,
            seed=self.seed * 1_000_003 + self.calls,
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False
        )
        pad = self.tokenizer.pad_token_id
        rows, responses, log_probs, index, cut = [], [], [], [], []
        for i, out in enumerate(outputs):
            for completion in out.outputs:
                tokens = list(completion.token_ids)
                rows.append(ids[i])
                responses.append(tokens)
                steps = completion.logprobs or [None] * len(tokens)
                lp = [
                    step[tok].logprob if step is not None and tok in step else 0.0
                    for tok, step in zip(tokens, steps, strict=True)
                ]
                log_probs.append(lp)
                index.append(i)
                cut.append(completion.finish_reason == "length")
        prompt_ids, prompt_mask = left_pad(rows, pad)
        t = max((len(r) for r in responses), default=0)
        response = torch.full((len(responses), t), pad, dtype=torch.long)
        lp_tensor = torch.zeros((len(responses), t))
        for j, (tokens, lp) in enumerate(zip(responses, log_probs, strict=True)):
            response[j, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            lp_tensor[j, : len(lp)] = torch.tensor(lp)
        # vLLM stops at (and returns) the eos token: every returned token is real
        lengths = torch.tensor([len(r) for r in responses])
        mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).long()
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=torch.where(mask.bool(), response, torch.full_like(response, pad)),
            response_mask=mask,
            log_probs=lp_tensor * mask,
            prompt_index=torch.tensor(index, dtype=torch.long),
            truncated=torch.tensor(cut, dtype=torch.bool),
            texts=self.tokenizer.batch_decode(responses, skip_special_tokens=True),
        )
