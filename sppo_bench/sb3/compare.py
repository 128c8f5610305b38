"""SPPO and its in-library comparison by the core's estimator names; cloned policies for SB3.

``make_algorithm(name, policy, env, **kwargs)`` resolves ``name`` in the core's estimator
registry (``sppo_bench.core.get_estimator``), so the names and defaults are the suite's own:

- ``"sppo"`` -> :class:`sppo_bench.sb3.SPPO`;
- ``"ppo-gae"`` (aliases ``"gae"``, ``"ppo"``) -> SB3's own ``PPO`` with ``gamma`` and
  ``gae_lambda`` defaulting to the core estimator's ``gamma = lam = 1``, the suite's PPO-GAE
  setting for sparse episodic tasks. Everything else (its per-step critic, advantage
  normalisation, ``n_steps`` collection) is SB3's PPO unchanged.

Other estimators of the core (GRPO, RLOO, ReMax, REINFORCE) need grouped or greedy rollouts
that SB3's collection does not make; asking for them is a one-line ``UserError``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv

from sppo_bench.core import get_estimator
from sppo_bench.errors import UserError
from sppo_bench.io import read_torch_file
from sppo_bench.sb3.algorithm import SPPO

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"sppo": SPPO, "ppo-gae": PPO}


def make_algorithm(
    name: str, policy: str | type[ActorCriticPolicy], env: GymEnv | str, **kwargs: Any
) -> BaseAlgorithm:
    """``SPPO(policy, env, **kwargs)`` for ``"sppo"``; SB3's ``PPO(policy, env, gamma=1,
    gae_lambda=1, **kwargs)`` for ``"ppo-gae"`` (``kwargs`` may override gamma, gae_lambda)."""
    spec = get_estimator(name)
    if spec.run_name not in ALGORITHMS:
        raise UserError(
            f"estimator {spec.run_name!r} is not available for Stable-Baselines3; "
            f"valid: {', '.join(ALGORITHMS)}"
        )
    if spec.run_name == "ppo-gae":
        kwargs.setdefault("gamma", float(spec.params["gamma"]))  # type: ignore[arg-type]
        kwargs.setdefault("gae_lambda", float(spec.params["lam"]))  # type: ignore[arg-type]
    return ALGORITHMS[spec.run_name](policy, env, **kwargs)


def clone_state_dict(
    clone: str | os.PathLike[str] | dict[str, th.Tensor], policy: ActorCriticPolicy
) -> dict[str, th.Tensor]:
    """``policy``'s state dict with its actor replaced by a cloned policy of this project.

    ``clone`` is a ``policy.pt`` written by ``sppo-bench control clone`` (or its
    ``"state_dict"``). The project's actor is ``net((x - obs_mean) / obs_std)``; the input
    normalisation is folded into the first layer, W' = W / s (column-wise), b' = b - W' m, so
    that SB3's ``mlp_extractor.policy_net`` + ``action_net`` compute the same logits (or the
    same Gaussian mean, with ``log_std`` copied). The critic is left as it is. Use::

        model.policy.load_state_dict(clone_state_dict("runs/.../clone/policy.pt", model.policy))

    The SB3 policy needs the same actor layers (``policy_kwargs=dict(net_arch=dict(pi=[64,
    64]))``, the default) and activation (``Tanh``, the default); a mismatch is a ``UserError``.
    """
    if isinstance(clone, dict) and "state_dict" not in clone:
        source, activation = clone, None
    else:
        data = clone if isinstance(clone, dict) else read_torch_file(clone, "cloned policy")
        if "state_dict" not in data:
            raise UserError("the cloned policy has no 'state_dict': not a policy.pt of a clone")
        source = data["state_dict"]
        activation = (data.get("spec") or {}).get("policy", {}).get("activation")
    if activation is not None and activation.lower() != policy.activation_fn.__name__.lower():
        raise UserError(
            f"the clone uses {activation} activations but the SB3 policy uses "
            f"{policy.activation_fn.__name__}; pass policy_kwargs=dict(activation_fn=...)"
        )
    layers = sorted(
        {int(k.split(".")[1]) for k in source if k.startswith("net.")},
    )
    targets = [f"mlp_extractor.policy_net.{i}" for i in layers[:-1]] + ["action_net"]
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    mean = source["obs_mean"].float()
    std = source["obs_std"].float()
    obs_size = math.prod(policy.observation_space.shape)  # type: ignore[arg-type]
    if mean.numel() != obs_size:
        raise UserError(
            f"the clone reads {mean.numel()} observation values but the SB3 policy's env gives "
            f"{obs_size}: a clone of another task?"
        )
    n_actions = state["action_net.bias"].numel()
    if source[f"net.{layers[-1]}.bias"].numel() != n_actions:
        raise UserError(
            f"the clone has {source[f'net.{layers[-1]}.bias'].numel()} action outputs but the "
            f"SB3 policy {n_actions}: a clone of another task?"
        )
    for n, (layer, target) in enumerate(zip(layers, targets, strict=True)):
        weight = source[f"net.{layer}.weight"].float()
        bias = source[f"net.{layer}.bias"].float()
        if n == 0:
            weight = weight / std[None, :]
            bias = bias - weight @ mean
        if f"{target}.weight" not in state or state[f"{target}.weight"].shape != weight.shape:
            have = state.get(f"{target}.weight")
            raise UserError(
                f"the clone's layer net.{layer} {tuple(weight.shape)} does not fit the SB3 "
                f"policy's {target} {None if have is None else tuple(have.shape)}; build SPPO "
                "with policy_kwargs=dict(net_arch=dict(pi=[...])) matching the clone's hidden sizes"
            )
        state[f"{target}.weight"], state[f"{target}.bias"] = weight, bias
    if "log_std" in state and "log_std" in source:
        state["log_std"] = source["log_std"].float().clone()
    return state
