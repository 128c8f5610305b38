"""The tiny random-weight LLM set-up shared by the LLM trainer tests (nothing downloaded)."""

from __future__ import annotations

from sppo_bench.config import load_config
from sppo_bench.llm.recipe import LLMConfig


def tiny_config(algo: str, *overrides: str) -> LLMConfig:
    """``algo`` on the ``tiny:xs`` policy and critic, HF engine, CPU, no critic warm-up."""
    return load_config(
        LLMConfig,
        None,
        [
            f"algo.name={algo}",
            "model.policy=tiny:xs",
            "model.gradient_checkpointing=false",
            "critic.model=tiny:xs",
            "rollout.engine=hf",
            "train.device=cpu",
            "critic.warmup_steps=0",
            *overrides,
        ],
    )
