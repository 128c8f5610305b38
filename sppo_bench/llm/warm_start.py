"""Starting weights for RL: a state-dict file named by the recipe, built first when absent.

``model.init`` names a file holding ``{"policy": state_dict}`` (a warm start, or a trainer
``checkpoint.pt``). When it does not exist and ``model.init_builder`` names a builder, the builder
makes it (``toy-arithmetic``: supervised fine-tuning on the toy task's worked solutions,
``sppo_bench.llm.toy.task.build_warm_start``); the file is then reused by every later run, so every
algorithm starts from the same weights.

A critic whose model is the policy's model starts from the same transformer weights (its value
head stays at zero), as a critic initialised from the policy's checkpoint would.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sppo_bench.errors import UserError
from sppo_bench.io import read_torch_file


def _build_toy(policy: str, path: Path) -> None:
    from sppo_bench.llm.toy.task import build_warm_start

    build_warm_start(policy, path)


BUILDERS = {"toy-arithmetic": _build_toy}


def initial_policy_state(policy: str, init: str, builder: str | None) -> dict:
    """The policy state dict in ``init``, building the file with ``builder`` when absent."""
    path = Path(init)
    if not path.exists():
        if builder is None:
            raise UserError(
                f"model.init file {init!r} does not exist and model.init_builder is null"
            )
        if builder not in BUILDERS:
            raise UserError(f"unknown model.init_builder {builder!r}; valid: {', '.join(BUILDERS)}")
        BUILDERS[builder](policy, path)
    state = read_torch_file(path, "model.init file")
    if not isinstance(state, dict) or "policy" not in state:
        raise UserError(f"model.init file {init!r} has no 'policy' state dict")
    return state["policy"]


def load_initial_weights(cfg, policy: nn.Module, critic: nn.Module | None) -> None:
    """Load ``cfg.model.init`` into ``policy`` and, when the critic uses the policy's model,
    into the critic's transformer (``cfg`` is a resolved ``LLMConfig``)."""
    state = initial_policy_state(cfg.model.policy, cfg.model.init, cfg.model.init_builder)
    policy.load_state_dict(state)
    if critic is not None and cfg.critic.model == cfg.model.policy:
        prefix = "model."
        critic.backbone.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
