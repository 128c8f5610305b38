"""The episodes of an SB3 ``VecEnv`` as the core's padded batches, and their binary outcome.

``EpisodeBuffer`` holds the complete episodes of one collection of ``SPPO``
(``sppo_bench.sb3.algorithm``); ``episode_outcome`` reads R of an episode from its last step:

R of an episode is ``info["success"]`` of its last step where present, otherwise
  its undiscounted return (the ``Monitor``'s ``info["episode"]["r"]`` where present, which is the
  raw return even under ``VecNormalize``). R must be 0 or 1; a non-binary R is a one-line
  ``UserError`` unless ``return_transform`` maps the return into ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th

from sppo_bench.errors import UserError

ReturnTransform = Callable[[float], float]


@dataclass
class Episode:
    """One complete episode of length ``L``.

    observations: ``[L, *obs_shape]``; actions: ``[L, *action_shape]`` (as sampled, before
    clipping to the action bounds); log_probs: ``[L]`` of the behaviour policy; outcome: R.
    """

    observations: np.ndarray
    actions: np.ndarray
    log_probs: np.ndarray
    outcome: float

    def __len__(self) -> int:
        return len(self.log_probs)


@dataclass
class EpisodeBatch:
    """Episodes padded to ``T`` steps: ``observations [B, T, *obs]``, ``actions [B, T, *act]``,
    ``old_log_probs [B, T]``, ``mask [B, T]``, ``rewards [B, T]`` (R on each row's last real
    step, 0 elsewhere), ``outcomes [B]``, ``first_observations [B, *obs]``."""

    observations: th.Tensor
    actions: th.Tensor
    old_log_probs: th.Tensor
    mask: th.Tensor
    rewards: th.Tensor
    outcomes: th.Tensor
    first_observations: th.Tensor


class EpisodeBuffer:
    """The complete episodes of one collection (``SPPO.rollout_buffer``)."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []

    def reset(self) -> None:
        self.episodes = []

    def add(self, episode: Episode) -> None:
        self.episodes.append(episode)

    @property
    def n_steps(self) -> int:
        """Steps in all episodes."""
        return sum(len(e) for e in self.episodes)

    def batch(self, device: th.device | str = "cpu") -> EpisodeBatch:
        """The episodes as one padded ``EpisodeBatch`` (padding repeats each row's last step's
        observation and action, so that the policy can be evaluated on it; the mask hides it)."""
        if not self.episodes:
            raise UserError("the episode buffer is empty; collect episodes before training")
        horizon = max(len(e) for e in self.episodes)

        def pad(x: np.ndarray) -> np.ndarray:
            extra = horizon - len(x)
            return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

        lengths = th.tensor([len(e) for e in self.episodes])
        mask = (th.arange(horizon)[None, :] < lengths[:, None]).float()
        outcomes = th.tensor([e.outcome for e in self.episodes], dtype=th.float32)
        rewards = th.zeros_like(mask)
        rewards[th.arange(len(lengths)), lengths - 1] = outcomes
        old = th.as_tensor(np.stack([pad(e.log_probs.astype(np.float32)) for e in self.episodes]))
        obs = th.as_tensor(np.stack([pad(e.observations) for e in self.episodes]))
        actions = th.as_tensor(np.stack([pad(e.actions) for e in self.episodes]))
        first = th.as_tensor(np.stack([e.observations[0] for e in self.episodes]))
        tensors = (obs, actions, old * mask, mask, rewards, outcomes, first)
        return EpisodeBatch(*(t.to(device) for t in tensors))


def binary_outcome(value: Any) -> float:
    """``info["success"]`` as R: a bool, or a number equal to 0 or 1 (numpy's too); anything
    else (a string, None, 0.5, an array) is a one-line ``UserError``."""
    if isinstance(value, bool | np.bool_):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating) and float(value) in (0.0, 1.0):
        return float(value)
    shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
    raise UserError(f'info["success"] must be a bool or a number 0 or 1, got {shown}')


def episode_outcome(
    info: dict[str, Any], summed_reward: float, return_transform: ReturnTransform | None
) -> float:
    """R of an episode from its last step's ``info`` (see the module doc)."""
    if "success" in info:
        return binary_outcome(info["success"])
    episode_return = float(info["episode"]["r"]) if "episode" in info else float(summed_reward)
    if return_transform is not None:
        outcome = float(return_transform(episode_return))
        if not 0.0 <= outcome <= 1.0:
            raise UserError(
                f"return_transform mapped the episode return {episode_return:g} to {outcome:g}; "
                "SPPO's outcome must lie in [0, 1]"
            )
        return outcome
    if episode_return not in (0.0, 1.0):
        raise UserError(
            f"SPPO needs a binary outcome, but an episode returned {episode_return:g} and its "
            'last info has no "success"; pass return_transform= to map returns into [0, 1]'
        )
    return episode_return


def new_steps() -> dict[str, list]:
    return {"observations": [], "actions": [], "log_probs": [], "rewards": []}
