"""Seed-stacked networks: ``S`` independent copies of a ``Policy`` / ``ValueNet`` as one module.

Every parameter of the ``S`` networks is stacked along a leading seed axis (a linear layer's
weight ``[S, out, in]``, its bias ``[S, out]``) and a forward pass over inputs ``[S, ..., d]`` is
one batched matmul per layer (``torch.baddbmm``) instead of ``S`` small calls: at the 8-64 rows a
control-task update feeds a 2x64 MLP, the time of a call is overhead, not arithmetic, so ``S``
seeds cost little more than one. Seed s's outputs depend only on seed s's parameters and inputs.

Parameters are registered in the order of the single network's ``parameters()`` (``net.0.weight``,
``net.0.bias``, ..., ``log_std``), so one optimiser over the stacked parameters holds, in slice s
of each state tensor, exactly the state of an optimiser of seed s's network: ``seed_state`` /
``load_seed_state`` and ``seed_optimizer_state`` / ``stack_optimizer_states`` convert to and from
the single-seed checkpoint format, and a run folder does not record how many seeds shared its
process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sppo_bench.control.policies import Policy, ValueNet, gaussian_log_prob_entropy

Weights = list[tuple[Tensor, Tensor]]  # per layer: W^T [S, in, out] and b [S, 1, out]
Actor = Callable[..., Tensor]  # StackedPolicy.act's signature
_FUNCTIONAL: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.Tanh: torch.tanh,
    nn.ReLU: torch.relu,
    nn.Identity: lambda h: h,
}


def run_layers(layers: Weights, activation: Callable[[Tensor], Tensor], h: Tensor) -> Tensor:
    """``h [S, n, in] -> [S, n, out]``: h <- h W_i^T + b_i (one ``baddbmm``), ``activation``
    between the layers."""
    for i, (wt, b) in enumerate(layers):
        h = torch.baddbmm(b, h, wt)
        if i < len(layers) - 1:
            h = activation(h)
    return h


class StackedMLP(nn.Module):
    """``S`` copies of an ``mlp`` (Linear, activation, ..., Linear): ``[S, ..., in]`` to
    ``[S, ..., out]``.

    Parameters ``w<i>`` ``[S, out_i, in_i]`` and ``b<i>`` ``[S, out_i]``, layer by layer.
    """

    def __init__(self, nets: Sequence[nn.Sequential]) -> None:
        super().__init__()
        layers = [
            [m for m in net if isinstance(m, nn.Linear)] for net in nets
        ]  # per seed, per layer
        acts = [type(m) for m in nets[0] if not isinstance(m, nn.Linear)]
        self.activation = acts[0]() if acts else nn.Identity()
        self.n_layers = len(layers[0])
        for i in range(self.n_layers):
            w = torch.stack([seed[i].weight.detach() for seed in layers])
            b = torch.stack([seed[i].bias.detach() for seed in layers])
            self.register_parameter(f"w{i}", nn.Parameter(w.clone()))
            self.register_parameter(f"b{i}", nn.Parameter(b.clone()))

    def layers(self) -> Weights:
        """The layers as ``run_layers`` reads them (views of the parameters)."""
        return [
            (getattr(self, f"w{i}").transpose(1, 2), getattr(self, f"b{i}").unsqueeze(1))
            for i in range(self.n_layers)
        ]

    def forward(self, x: Tensor) -> Tensor:
        seeds, lead = x.shape[0], x.shape[1:-1]
        h = run_layers(self.layers(), self.activation, x.reshape(seeds, -1, x.shape[-1]))
        return h.reshape(seeds, *lead, h.shape[-1])

    def seed_items(self, s: int, prefix: str) -> dict[str, Tensor]:
        """Seed s's layers under the single ``mlp``'s names (``<prefix>0.weight``, ...)."""
        out: dict[str, Tensor] = {}
        for i in range(self.n_layers):
            index = 2 * i  # Linear, activation, Linear, ...
            out[f"{prefix}{index}.weight"] = getattr(self, f"w{i}")[s].detach().clone()
            out[f"{prefix}{index}.bias"] = getattr(self, f"b{i}")[s].detach().clone()
        return out

    @torch.no_grad()
    def load_seed_items(self, s: int, state: dict[str, Tensor], prefix: str) -> None:
        for i in range(self.n_layers):
            getattr(self, f"w{i}")[s].copy_(state[f"{prefix}{2 * i}.weight"])
            getattr(self, f"b{i}")[s].copy_(state[f"{prefix}{2 * i}.bias"])


class _StackedNormalized(nn.Module):
    def __init__(self, singles: Sequence[nn.Module], net: StackedMLP) -> None:
        super().__init__()
        self.register_buffer("obs_mean", torch.stack([m.obs_mean for m in singles]).clone())
        self.register_buffer("obs_std", torch.stack([m.obs_std for m in singles]).clone())
        self.seeds = len(singles)
        self.net = net

    def _seed_view(self, x: Tensor, like: Tensor) -> Tensor:
        """``x [S, k]`` shaped to broadcast over ``like [S, ..., k]``."""
        return x.view(self.seeds, *([1] * (like.dim() - 2)), x.shape[-1])

    def normalize(self, obs: Tensor) -> Tensor:
        return (obs - self._seed_view(self.obs_mean, obs)) / self._seed_view(self.obs_std, obs)

    def _buffers_of(self, s: int) -> dict[str, Tensor]:
        return {"obs_mean": self.obs_mean[s].clone(), "obs_std": self.obs_std[s].clone()}

    @torch.no_grad()
    def _load_buffers(self, s: int, state: dict[str, Tensor]) -> None:
        self.obs_mean[s].copy_(state["obs_mean"])
        self.obs_std[s].copy_(state["obs_std"])


class StackedPolicy(_StackedNormalized):
    """``S`` policies with one architecture; the math of ``Policy`` with a leading seed axis."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        super().__init__(policies, StackedMLP([p.net for p in policies]))
        first = policies[0]
        self.discrete, self.action_dim = first.discrete, first.action_dim
        self.log_std = nn.Parameter(torch.stack([p.log_std.detach() for p in policies]).clone())
        self.log_std.requires_grad_(not self.discrete)

    def forward(self, obs: Tensor) -> Tensor:
        """Logits or Gaussian means ``[S, ..., a]`` for ``obs [S, ..., d]``."""
        return self.net(self.normalize(obs))

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """``Policy.log_prob_entropy`` per seed: both ``[S, ...]`` for ``obs [S, ..., d]``."""
        out = self(obs)
        if self.discrete:
            log_p = torch.log_softmax(out, dim=-1)
            chosen = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return chosen, -(log_p.exp() * log_p).sum(-1)
        log_std = self._seed_view(self.log_std, out).expand_as(out)
        return gaussian_log_prob_entropy(out, actions, log_std)

    def act(
        self,
        obs: Tensor,
        greedy: Tensor | bool,
        generators: Sequence[torch.Generator],
        uniforms: Tensor | None = None,
    ) -> Tensor:
        """Actions for ``obs [S, N, d]``: greedy where ``greedy [S, N]`` (or a bool for every
        row), else sampled with seed s's generator exactly as ``Policy.act`` samples (same draws,
        same order). ``uniforms [S, N, 1]``: a categorical's draws of this call, taken beforehand
        with ``draw_uniforms`` (the same numbers); drawn here when None."""
        return self.actor()(obs, greedy, generators, uniforms)

    def actor(self) -> Actor:
        """``act`` with the parameters read once, for the many calls of one collection (they do
        not change during it): the same operations on the same tensors, so the same numbers,
        without a module call or an attribute lookup per step (~1/3 of a call's time at 8 rows
        per seed)."""
        layers = [(wt.detach(), b.detach()) for wt, b in self.net.layers()]
        activation = _FUNCTIONAL.get(type(self.net.activation), self.net.activation)
        mean, std = self.obs_mean.unsqueeze(1), self.obs_std.unsqueeze(1)  # [S, 1, d]
        std_out = self.log_std.detach().unsqueeze(1).exp()  # [S, 1, a]
        last = self.action_dim - 1

        def act(  # no autograd graph: every tensor it reads is detached
            obs: Tensor,
            greedy: Tensor | bool,
            generators: Sequence[torch.Generator],
            uniforms: Tensor | None = None,
        ) -> Tensor:
            out = run_layers(layers, activation, (obs - mean) / std)
            if greedy is True:
                return out.argmax(-1) if self.discrete else out
            n = out.shape[1]
            if self.discrete:
                probs = torch.softmax(out, dim=-1)
                if uniforms is None:
                    uniforms = torch.stack([torch.rand(n, 1, generator=g) for g in generators])
                sampled = (probs.cumsum(-1) < uniforms).sum(-1).clamp_max(last)
                return sampled if greedy is False else torch.where(greedy, out.argmax(-1), sampled)
            noise = torch.stack([torch.randn(out.shape[1:], generator=g) for g in generators])
            sampled = out + noise * std_out
            return sampled if greedy is False else torch.where(greedy.unsqueeze(-1), out, sampled)

        return act

    @staticmethod
    def draw_uniforms(generators: Sequence[torch.Generator], calls: int, n: int) -> Tensor:
        """The categorical draws of ``calls`` calls of ``act`` on ``n`` rows, at once:
        ``[S, calls, N, 1]``, slice ``[:, t]`` being call t's. A CPU generator's uniforms come
        out one by one in order, so ``torch.rand(calls, n, 1)`` holds the numbers that ``calls``
        calls of ``torch.rand(n, 1)`` draw (``tests/test_seed_stack.py``). A Gaussian's draws depend
        on each call's size (torch's normal sampler works in blocks of 16) and stay per call."""
        return torch.stack([torch.rand(calls, n, 1, generator=g) for g in generators])

    def seed_state(self, s: int) -> dict[str, Tensor]:
        """Seed s's parameters as a ``Policy.state_dict()``."""
        state = {**self._buffers_of(s), **self.net.seed_items(s, "net.")}
        state["log_std"] = self.log_std[s].detach().clone()
        return state

    @torch.no_grad()
    def load_seed_state(self, s: int, state: dict[str, Tensor]) -> None:
        self._load_buffers(s, state)
        self.net.load_seed_items(s, state, "net.")
        self.log_std[s].copy_(state["log_std"])

    def trainable(self) -> list[nn.Parameter]:
        """The parameters a policy optimiser steps, in ``Policy``'s order."""
        return [p for p in self.parameters() if p.requires_grad]


class StackedValueNet(_StackedNormalized):
    """``S`` critics (``ValueNet``): ``obs [S, ..., d] -> [S, ...]``."""

    def __init__(self, critics: Sequence[ValueNet]) -> None:
        super().__init__(critics, StackedMLP([c.net for c in critics]))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(self.normalize(obs)).squeeze(-1)

    def seed_state(self, s: int) -> dict[str, Tensor]:
        return {**self._buffers_of(s), **self.net.seed_items(s, "net.")}

    @torch.no_grad()
    def load_seed_state(self, s: int, state: dict[str, Tensor]) -> None:
        self._load_buffers(s, state)
        self.net.load_seed_items(s, state, "net.")

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parameters())


def seed_optimizer_state(state: dict[str, Any], s: int) -> dict[str, Any]:
    """Seed s's slice of a stacked optimiser's ``state_dict()``: every per-parameter tensor with a
    seed axis is indexed at ``s``; step counts (0-d) and hyper-parameters are shared."""
    per_param = {
        key: {
            name: value[s].clone() if torch.is_tensor(value) and value.dim() > 0 else value
            for name, value in slot.items()
        }
        for key, slot in state["state"].items()
    }
    return {"state": per_param, "param_groups": [dict(g) for g in state["param_groups"]]}


def stack_optimizer_states(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The inverse of ``seed_optimizer_state``: single-seed optimiser states -> one stacked state.
    The seeds must have taken the same number of steps (they are at the same update)."""
    first = states[0]
    stacked: dict[Any, dict[str, Any]] = {}
    for key, slot in first["state"].items():
        stacked[key] = {}
        for name, value in slot.items():
            if torch.is_tensor(value) and value.dim() > 0:
                stacked[key][name] = torch.stack([st["state"][key][name] for st in states])
            else:
                stacked[key][name] = value
    return {"state": stacked, "param_groups": [dict(g) for g in first["param_groups"]]}


__all__ = [
    "StackedMLP",
    "StackedPolicy",
    "StackedValueNet",
    "seed_optimizer_state",
    "stack_optimizer_states",
]
