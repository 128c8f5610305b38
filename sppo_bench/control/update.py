"""One RL update on a batch of whole episodes, for any estimator registered in the core.

The batch is padded ``[B, T]`` with a mask. The reward is binary and terminal and gamma = 1.
Both termination and reaching the horizon H end the *task* (the success test is made there and
nothing follows the terminal reward), so every row is passed to the estimator as
``terminated=True``: a per-step critic bootstraps from 0 after the last step, never from V(s_H).

Per estimator, the trainer only consults ``EstimatorSpec``:

- ``critic_strategy`` (:mod:`sppo_bench.core.critics`): which states the critic reads (s_0 for
  SPPO's sequence critic, every s_t for PPO-GAE's step critic), the advantage input its old
  outputs fill, and its loss (BCE(v, R); 0.5 (V - G_t)^2 with the estimator's returns G_t, no
  clipping here);
- ``needs_groups`` / ``needs_greedy_baseline``: the batch's ``group_ids`` / ``baseline_rewards``
  are filled by the caller's rollout.

The policy loss is the clipped surrogate of :mod:`sppo_bench.core.losses` over all masked steps,
``spec.rl.epochs`` epochs of mini-batches of ``spec.rl.mini_batch_size`` whole episodes
(``sppo_bench.core.ppo``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sppo_bench.control.collector import EpisodeBatch
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import RLConfig
from sppo_bench.core import AdvantageInput, CriticStrategy, EstimatorSpec, compute_advantages
from sppo_bench.core.critics import VALUE_METRICS
from sppo_bench.core.ppo import (
    GRAD_METRICS,
    LOSS_METRICS,
    critic_phase,
    minibatch_schedule,
    policy_phase,
)


@dataclass
class BatchTensors:
    """One update's episodes as tensors: obs ``[B, T, d]``, actions ``[B, T(, a)]``,
    rewards / mask ``[B, T]``; group_ids ``[B]`` (group estimators) and baseline_rewards ``[B]``
    (ReMax: the greedy episode's success from the same start state), else None."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    group_ids: Tensor | None = None
    baseline_rewards: Tensor | None = None

    @classmethod
    def from_batch(
        cls,
        batch: EpisodeBatch,
        discrete: bool,
        group_ids: Tensor | None = None,
        baseline_rewards: Tensor | None = None,
    ) -> BatchTensors:
        actions = torch.as_tensor(batch.actions)
        return cls(
            torch.as_tensor(batch.obs, dtype=torch.float32),
            actions.long() if discrete else actions.float(),
            torch.as_tensor(batch.rewards, dtype=torch.float32),
            torch.as_tensor(batch.mask, dtype=torch.float32),
            group_ids,
            baseline_rewards,
        )


@dataclass
class Learner:
    """The networks an update trains and their optimisers (no critic: both None)."""

    policy: Policy
    policy_opt: torch.optim.Optimizer
    critic: ValueNet | None = None
    critic_opt: torch.optim.Optimizer | None = None


def critic_values(
    critic: ValueNet | None, strategy: CriticStrategy | None, obs: Tensor
) -> Tensor | None:
    """The critic's raw output on ``obs [B, T, d]``: ``[B]`` on s_0 or ``[B, T]`` (strategy)."""
    if critic is None or strategy is None:
        return None
    return critic(strategy.states(obs))


def ppo_update(
    learner: Learner,
    estimator: EstimatorSpec,
    cfg: RLConfig,
    data: BatchTensors,
    generator: torch.Generator,
) -> dict[str, float | None]:
    """Old outputs -> advantages (core estimator) -> critic and policy PPO epochs (core loop) ->
    diagnostics. Returns the row's update metrics (``None`` where there is no critic)."""
    policy, critic = learner.policy, learner.critic
    strategy = estimator.critic_strategy if critic is not None else None
    with torch.no_grad():
        old_log_probs, _ = policy.log_prob_entropy(data.obs, data.actions)
        old_critic = critic_values(critic, strategy, data.obs)

    inputs = AdvantageInput(
        rewards=data.rewards,
        mask=data.mask,
        terminated=torch.ones(len(data.obs), dtype=torch.bool),
        group_ids=data.group_ids,
        baseline_rewards=data.baseline_rewards,
        **(strategy.advantage_inputs(old_critic) if strategy else {}),
    )
    params = estimator.configured_params(cfg.estimator_params)
    out = compute_advantages(estimator.name, inputs, **params)
    advantages = out.advantages.detach()

    settings = cfg.settings()
    schedule = minibatch_schedule(len(data.obs), cfg.epochs, cfg.mini_batch_size, generator)
    result: dict[str, float | None] = dict.fromkeys(RESULT_KEYS)
    if strategy is not None and learner.critic_opt is not None:
        result.update(
            critic_phase(
                lambda idx: critic_values(critic, strategy, data.obs[idx]),
                strategy,
                list(critic.parameters()),
                learner.critic_opt,
                schedule,
                out.value_targets,
                old_critic,
                data.mask,
                settings,
            )
        )
    policy_stats = policy_phase(
        lambda idx: policy.log_prob_entropy(data.obs[idx], data.actions[idx]),
        list(policy.parameters()),
        learner.policy_opt,
        schedule,
        old_log_probs,
        advantages,
        data.mask,
        settings,
    )
    result.update(policy_stats)
    if strategy is not None:
        result.update(strategy.diagnostics(old_critic, out.value_targets, data.mask))
    return result


RESULT_KEYS = (*LOSS_METRICS, *VALUE_METRICS, *GRAD_METRICS)  # a row's update metrics
