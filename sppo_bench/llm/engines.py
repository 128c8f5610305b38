"""Where the LLM track runs: the torch device of ``train.device`` and the recipe's rollout engine
(``rollout.engine``: ``hf`` -> ``HFEngine``, ``vllm`` -> ``VLLMEngine``)."""

from __future__ import annotations

import torch

from sppo_bench.errors import UserError
from sppo_bench.llm.models import DTYPES
from sppo_bench.llm.recipe import LLMConfig


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA where available), ``cpu``, ``cuda`` or ``cuda:<index>``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"train.device={name!r}; valid: auto, cpu, cuda, cuda:<index>") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"train.device={name!r}; valid: auto, cpu, cuda, cuda:<index>")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                f"train.device={name!r} but CUDA is not available (torch {torch.__version__}); "
                "use auto or cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise UserError(f"train.device={name!r} but this machine has {count} CUDA device(s)")
    return device


def make_engine(cfg: LLMConfig, policy, tokenizer):
    """The configured rollout engine, sampling from ``policy``."""
    if cfg.rollout.engine == "hf":
        from sppo_bench.llm.rollout import HFEngine

        r = cfg.rollout
        return HFEngine(
            policy,
            tokenizer,
            r.generation_batch_size,
            dtype=DTYPES[r.generation_dtype] if r.generation_dtype else None,
            static_cache=r.static_cache,
        )
    from sppo_bench.llm.vllm_engine import VLLMEngine

    return VLLMEngine.from_policy(
        policy,
        tokenizer,
        name=cfg.model.policy,
        gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        max_model_len=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
        dtype=cfg.model.compute_dtype,
        seed=cfg.train.seed,
        enforce_eager=cfg.rollout.enforce_eager,
    )
