"""The RL policy and critics: small MLPs over a frozen observation normalisation.

- ``Policy``: categorical over ``n`` actions (discrete) or a diagonal Gaussian with a
  state-independent log standard deviation (continuous): a ~ N(mu(s), diag(exp(2 log_std))).
- ``ValueNet``: a scalar head. As the SPPO sequence critic it reads s_0 and outputs the logit v
  of V(s_0) = sigmoid(v); as the PPO-GAE step critic it outputs V(s_t) directly.

Both normalise inputs with fixed buffers ``obs_mean``/``obs_std`` (set once from the cloning
data), so that badly scaled observations (MountainCar's velocity is ~0.07) train well.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sppo_bench.errors import UserError

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int, activation: str) -> nn.Sequential:
    """Linear layers ``in -> hidden... -> out`` with ``activation`` between them."""
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    last = in_dim
    for width in hidden:
        layers += [nn.Linear(last, width), ACTIVATIONS[activation]()]
        last = width
    layers.append(nn.Linear(last, out_dim))
    return nn.Sequential(*layers)


def gaussian_log_prob_entropy(
    mean: Tensor, actions: Tensor, log_std: Tensor
) -> tuple[Tensor, Tensor]:
    """log N(a; mu, diag(exp(2 log_std))) and the Gaussian's entropy, summed over the last axis:
    ``mean``, ``actions``, ``log_std`` ``[..., a]`` -> two ``[...]`` tensors."""
    z = (actions - mean) / log_std.exp()
    log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
    entropy = (log_std + 0.5 * np.log(2 * np.pi * np.e)).sum(-1)
    return log_prob, entropy


class _Normalized(nn.Module):
    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))

    def set_normalization(self, mean: np.ndarray | Tensor, std: np.ndarray | Tensor) -> None:
        """Fix the input normalisation x -> (x - mean) / std (std floored at 1e-3)."""
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-3))

    def normalize(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std


class Policy(_Normalized):
    """pi(a | s) for ``obs [..., d]``; ``discrete`` picks categorical or diagonal Gaussian."""

    def __init__(
        self,
        obs_dim: int,
        discrete: bool,
        action_dim: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
        log_std: float = 0.0,
    ) -> None:
        super().__init__(obs_dim)
        self.discrete = discrete
        self.action_dim = action_dim
        self.net = mlp(obs_dim, hidden, action_dim, activation)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std)), requires_grad=True)
        if discrete:
            self.log_std.requires_grad_(False)

    def forward(self, obs: Tensor) -> Tensor:
        """Logits ``[..., n]`` (discrete) or the Gaussian mean ``[..., a]`` (continuous)."""
        return self.net(self.normalize(obs))

    def log_prob_entropy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """log pi(a|s) and the policy entropy at s, both ``[...]`` for ``obs [..., d]``.

        Discrete: ``actions [...]`` int; continuous: ``actions [..., a]``.
        """
        out = self(obs)
        if self.discrete:
            log_p = torch.log_softmax(out, dim=-1)
            chosen = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            return chosen, -(log_p.exp() * log_p).sum(-1)
        return gaussian_log_prob_entropy(out, actions, self.log_std.expand_as(out))

    @torch.no_grad()
    def act(
        self, obs: Tensor, greedy: Tensor | bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Actions for ``obs [N, d]``: sampled, or greedy (argmax / mean) where ``greedy [N]``.

        Sampling uses ``generator`` (inverse-CDF for categorical, ``mean + std * eps`` for the
        Gaussian), so a seeded generator makes rollouts reproducible.
        """
        out = self(obs)
        greedy = torch.as_tensor(greedy, dtype=torch.bool).expand(out.shape[0])
        if self.discrete:
            probs = torch.softmax(out, dim=-1)
            u = torch.rand(out.shape[0], 1, generator=generator)
            sampled = (probs.cumsum(-1) < u).sum(-1).clamp_max(out.shape[-1] - 1)
            return torch.where(greedy, out.argmax(-1), sampled)
        noise = torch.randn(out.shape, generator=generator) * self.log_std.exp()
        return torch.where(greedy.unsqueeze(-1), out, out + noise)


class ValueNet(_Normalized):
    """A scalar head over ``obs [..., d]`` -> ``[...]`` (a logit for SPPO, a value for GAE)."""

    def __init__(
        self, obs_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh"
    ) -> None:
        super().__init__(obs_dim)
        self.net = mlp(obs_dim, hidden, 1, activation)

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(self.normalize(obs)).squeeze(-1)
