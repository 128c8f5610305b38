"""One RL update on a batch of whole episodes, for any estimator registered in the core, for
``S`` independent runs (seeds) at once.

Each seed's batch is padded ``[B, T]`` with a mask; the seeds' batches are stacked ``[S, B, T]``
(padded to the longest episode of all seeds) and their networks are seed-stacked
(:mod:`sppo_bench.control.stack`). Advantages are computed seed by seed, and seed s's losses,
gradients, clipping and optimiser state are its own: a seed's update is the update it would
get alone (``S = 1`` is the single-seed trainer). The reward is binary and terminal and gamma = 1.
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
(``sppo_bench.core.ppo``), each seed with its own shuffle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from sppo_bench.control.collector import EpisodeBatch
from sppo_bench.control.spec import RLConfig
from sppo_bench.control.stack import StackedPolicy, StackedValueNet
from sppo_bench.core import AdvantageInput, CriticStrategy, EstimatorSpec, compute_advantages
from sppo_bench.core.critics import VALUE_METRICS
from sppo_bench.core.ppo import (
    GRAD_METRICS,
    LOSS_METRICS,
    minibatch_schedule,
    stacked_critic_phase,
    stacked_policy_phase,
)


@dataclass
class BatchTensors:
    """One update's episodes of ``S`` seeds as tensors: obs ``[S, B, T, d]``, actions
    ``[S, B, T(, a)]``, rewards / mask ``[S, B, T]``; group_ids ``[S, B]`` (group estimators) and
    baseline_rewards ``[S, B]`` (ReMax: the greedy episode's success from the same start
    state), else None."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    group_ids: Tensor | None = None
    baseline_rewards: Tensor | None = None

    @property
    def seeds(self) -> int:
        return self.obs.shape[0]

    @classmethod
    def from_batch(
        cls,
        batch: EpisodeBatch,
        discrete: bool,
        seeds: int = 1,
        group_ids: Tensor | None = None,
        baseline_rewards: Tensor | None = None,
    ) -> BatchTensors:
        """``batch``'s ``S * B`` episodes, seed-major (seed s holds rows ``s*B .. s*B+B-1``)."""
        actions = torch.as_tensor(batch.actions)

        def per_seed(x: Tensor) -> Tensor:
            return x.reshape(seeds, -1, *x.shape[1:])

        return cls(
            per_seed(torch.as_tensor(batch.obs, dtype=torch.float32)),
            per_seed(actions.long() if discrete else actions.float()),
            per_seed(torch.as_tensor(batch.rewards, dtype=torch.float32)),
            per_seed(torch.as_tensor(batch.mask, dtype=torch.float32)),
            group_ids,
            baseline_rewards,
        )


@dataclass
class Learner:
    """The seed-stacked networks an update trains and their optimisers (no critic: both None)."""

    policy: StackedPolicy
    policy_opt: torch.optim.Optimizer
    critic: StackedValueNet | None = None
    critic_opt: torch.optim.Optimizer | None = None


def critic_values(
    critic: torch.nn.Module | None, strategy: CriticStrategy | None, obs: Tensor
) -> Tensor | None:
    """The critic's raw output on ``obs [B, T, d]``: ``[B]`` on s_0 or ``[B, T]`` (strategy).
    A seed-stacked critic takes ``obs [S, B, T, d]`` and gives ``[S, B(, T)]``."""
    if critic is None or strategy is None:
        return None
    if isinstance(critic, StackedValueNet):
        flat = strategy.states(obs.flatten(0, 1))
        return critic(flat.reshape(obs.shape[0], -1, *flat.shape[1:]))
    return critic(strategy.states(obs))


def _rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x [S, B, ...]`` at each seed's ``rows [S, b]`` -> ``[S, b, ...]``."""
    return x[torch.arange(x.shape[0]).unsqueeze(1), rows]


def ppo_update(
    learner: Learner,
    estimator: EstimatorSpec,
    cfg: RLConfig,
    data: BatchTensors,
    generators: Sequence[torch.Generator],
) -> list[dict[str, float | None]]:
    """Old outputs -> advantages (core estimator, per seed) -> critic and policy PPO epochs (core
    loop, per-seed losses) -> diagnostics. ``generators[s]`` shuffles seed s's mini-batches.
    Returns each seed's row of update metrics (``None`` where there is no critic)."""
    policy, critic = learner.policy, learner.critic
    strategy = estimator.critic_strategy if critic is not None else None
    seeds = range(data.seeds)
    with torch.no_grad():
        old_log_probs, _ = policy.log_prob_entropy(data.obs, data.actions)
        old_critic = critic_values(critic, strategy, data.obs)

    params = estimator.configured_params(cfg.estimator_params)
    outs = []
    for s in seeds:
        inputs = AdvantageInput(
            rewards=data.rewards[s],
            mask=data.mask[s],
            terminated=torch.ones(data.obs.shape[1], dtype=torch.bool),
            group_ids=None if data.group_ids is None else data.group_ids[s],
            baseline_rewards=None if data.baseline_rewards is None else data.baseline_rewards[s],
            **(strategy.advantage_inputs(old_critic[s]) if strategy else {}),
        )
        outs.append(compute_advantages(estimator.name, inputs, **params))
    advantages = torch.stack([o.advantages.detach() for o in outs])

    settings = cfg.settings()
    n_rows = data.obs.shape[1]
    per_seed = [minibatch_schedule(n_rows, cfg.epochs, cfg.mini_batch_size, g) for g in generators]
    schedule = [torch.stack(steps) for steps in zip(*per_seed, strict=True)]  # [S, m] each
    result: dict[str, list[float | None]] = {k: [None] * data.seeds for k in RESULT_KEYS}
    if strategy is not None and learner.critic_opt is not None:
        targets = torch.stack([o.value_targets for o in outs])
        result.update(
            stacked_critic_phase(
                lambda rows: critic_values(critic, strategy, _rows(data.obs, rows)),
                strategy,
                critic.trainable(),
                learner.critic_opt,
                schedule,
                targets,
                old_critic,
                data.mask,
                settings,
                stacked=data.seeds,
            )
        )
    result.update(
        stacked_policy_phase(
            lambda rows: policy.log_prob_entropy(_rows(data.obs, rows), _rows(data.actions, rows)),
            policy.trainable(),
            learner.policy_opt,
            schedule,
            old_log_probs,
            advantages,
            data.mask,
            settings,
            stacked=data.seeds,
        )
    )
    rows = [{k: v[s] for k, v in result.items()} for s in seeds]
    if strategy is not None:
        for s in seeds:
            rows[s].update(strategy.diagnostics(old_critic[s], outs[s].value_targets, data.mask[s]))
    return rows


RESULT_KEYS = (*LOSS_METRICS, *VALUE_METRICS, *GRAD_METRICS)  # a row's update metrics
