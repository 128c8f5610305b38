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
(``sppo_bench.core.ppo``), each seed with its own shuffle, in micro-batches of at most
``ROWS_PER_PASS`` time steps of all seeds together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from sppo_bench.control import fastmlp
from sppo_bench.control.collector import EpisodeBatch
from sppo_bench.control.spec import RLConfig
from sppo_bench.control.stack import StackedPolicy, StackedValueNet
from sppo_bench.core import (
    AdvantageInput,
    CriticStrategy,
    EstimatorSpec,
)
from sppo_bench.core.critics import VALUE_METRICS
from sppo_bench.core.ppo import (
    GRAD_METRICS,
    LOSS_METRICS,
    Micro,
    MicroStep,
    PPOSettings,
    autograd_critic_step,
    autograd_policy_step,
    minibatch_schedule,
    stacked_critic_phase,
    stacked_policy_phase,
)
from sppo_bench.errors import UserError


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


def critic_states(strategy: CriticStrategy, obs: Tensor) -> Tensor:
    """The states a seed-stacked critic reads from ``obs [S, B, T, d]``: ``[S, B, T, d]`` (step
    critic) or ``[S, B, d]`` (s_0, sequence critic)."""
    flat = strategy.states(obs.flatten(0, 1))
    return flat.reshape(obs.shape[0], -1, *flat.shape[1:])


def critic_values(
    critic: torch.nn.Module | None, strategy: CriticStrategy | None, obs: Tensor
) -> Tensor | None:
    """The critic's raw output on ``obs [B, T, d]``: ``[B]`` on s_0 or ``[B, T]`` (strategy).
    A seed-stacked critic takes ``obs [S, B, T, d]`` and gives ``[S, B(, T)]``."""
    if critic is None or strategy is None:
        return None
    if isinstance(critic, StackedValueNet):
        return critic(critic_states(strategy, obs))
    return critic(strategy.states(obs))


COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_autocast(dtype: str) -> Callable[[], AbstractContextManager]:
    """A context factory for the update's forward passes: CPU autocast to bf16, or nothing."""
    if dtype not in COMPUTE_DTYPES:
        raise UserError(f"unknown rl.compute_dtype {dtype!r}; valid: {', '.join(COMPUTE_DTYPES)}")
    if dtype == "float32":
        return nullcontext
    return lambda: torch.autocast("cpu", dtype=torch.bfloat16)


def _rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x [S, B, ...]`` at each seed's ``rows [S, b]`` -> ``[S, b, ...]``."""
    return x[torch.arange(x.shape[0]).unsqueeze(1), rows]


def _advantages(
    estimator: EstimatorSpec,
    params: dict[str, object],
    data: BatchTensors,
    old_critic: Tensor | None,
    strategy: CriticStrategy | None,
) -> tuple[Tensor, Tensor | None]:
    """Every seed's advantages ``[S, B, T]`` and critic targets (``[S, B(, T)]`` or None).
    Estimators whose rows depend only on their own row and group get all seeds' rows in one call
    (group ids made distinct per seed): exactly the same numbers, one call instead of S (GAE's
    loop over time steps is the costly part); ``batch_wide`` ones get one call per seed."""
    seeds = data.seeds
    parts = [slice(s, s + 1) for s in range(seeds)] if estimator.batch_wide else [slice(0, seeds)]

    def flat(x: Tensor | None, part: slice) -> Tensor | None:
        return None if x is None else x[part].flatten(0, 1)

    groups = data.group_ids
    if groups is not None:  # distinct ids per seed
        groups = groups + torch.arange(seeds).unsqueeze(1) * (int(groups.max()) + 1)
    advantages, targets = [], []
    for part in parts:
        inputs = AdvantageInput(
            rewards=flat(data.rewards, part),
            mask=flat(data.mask, part),
            terminated=torch.ones((part.stop - part.start) * data.obs.shape[1], dtype=torch.bool),
            group_ids=flat(groups, part),
            baseline_rewards=flat(data.baseline_rewards, part),
            **(strategy.advantage_inputs(flat(old_critic, part)) if strategy else {}),
        )
        out = estimator.fn(inputs, **params)  # resolved once, by the command
        advantages.append(out.advantages.detach())
        targets.append(out.value_targets)
    n_rows = data.obs.shape[1]
    stacked = torch.cat(advantages).reshape(seeds, n_rows, -1)
    if targets[0] is None:
        return stacked, None
    joined = torch.cat(targets)
    return stacked, joined.reshape(seeds, n_rows, *joined.shape[1:])


class _Passes:
    """The update's forward passes (old outputs) and its phases' micro-batch steps: the
    hand-written passes of :mod:`sppo_bench.control.fastmlp` where the networks' activation has
    one, else autograd (under bf16 autocast if asked); ``compute_dtype`` is ``COMPUTE_DTYPES``."""

    def __init__(self, learner: Learner, strategy: CriticStrategy | None, dtype: str) -> None:
        self.autocast = compute_autocast(dtype)
        self.bf16 = dtype == "bfloat16"
        self.policy_net, self.critic_net, self.strategy = learner.policy, learner.critic, strategy
        nets = [learner.policy] + ([learner.critic] if learner.critic is not None else [])
        self.fused = all(fastmlp.supported(net.net) for net in nets)

    def policy(self, obs: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(log_probs, entropy) ``[S, b, T]`` of ``obs [S, b, T, d]`` and their actions."""
        if self.fused:
            return fastmlp.log_prob_entropy(self.policy_net, obs, actions, self.bf16)[:2]
        with self.autocast():
            log_probs, entropy = self.policy_net.log_prob_entropy(obs, actions)
        return log_probs.float(), entropy.float()

    def critic(self, obs: Tensor) -> Tensor:
        """The critic's output ``[S, b(, T)]`` on ``obs [S, b, T, d]``."""
        if self.fused:
            states = critic_states(self.strategy, obs)
            return fastmlp.critic_output(self.critic_net, states, self.bf16)[0]
        with self.autocast():
            return critic_values(self.critic_net, self.strategy, obs).float()

    def steps(
        self,
        data: BatchTensors,
        old_log_probs: Tensor,
        advantages: Tensor,
        old_critic: Tensor | None,
        targets: Tensor | None,
        cfg: PPOSettings,
    ) -> tuple[MicroStep, MicroStep]:
        """The policy and the critic phase's micro-batch steps (``core.ppo.MicroStep``)."""
        strategy = self.strategy
        if not self.fused:
            return (
                autograd_policy_step(
                    lambda rows: self.policy(_rows(data.obs, rows), _rows(data.actions, rows)),
                    old_log_probs,
                    advantages,
                    data.mask,
                    cfg,
                ),
                autograd_critic_step(
                    lambda rows: self.critic(_rows(data.obs, rows)),
                    strategy,
                    targets,
                    old_critic,
                    data.mask,
                    cfg,
                ),
            )

        def policy_step(micro: Micro) -> Tensor:
            rows = micro.rows
            return fastmlp.policy_step(
                self.policy_net,
                *(_rows(x, rows) for x in (data.obs, data.actions)),
                *(_rows(x, rows) for x in (old_log_probs, advantages, data.mask)),
                micro.counts,
                cfg,
                self.bf16,
            )

        def critic_step(micro: Micro) -> Tensor:
            rows = micro.rows
            return fastmlp.critic_step(
                self.critic_net,
                strategy,
                critic_states(strategy, _rows(data.obs, rows)),
                None if old_critic is None else _rows(old_critic, rows),
                *(_rows(x, rows) for x in (targets, data.mask)),
                micro.counts,
                cfg,
                micro.row_share,
                self.bf16,
            )

        return policy_step, critic_step


def ppo_update(
    learner: Learner,
    estimator: EstimatorSpec,
    cfg: RLConfig,
    data: BatchTensors,
    generators: Sequence[torch.Generator],
    critic_only: bool = False,
) -> list[dict[str, float | None]]:
    """Old outputs -> advantages (core estimator, per seed) -> critic and policy PPO epochs (core
    loop, per-seed losses) -> diagnostics. ``generators[s]`` shuffles seed s's mini-batches.
    ``critic_only``: a critic warm-up update (``RLConfig.critic_warmup_updates``), the critic
    phase alone: the policy, its optimiser state and its metrics (``None``) untouched; ignored
    without a critic. Returns each seed's row of update metrics (``None`` where there is no
    critic), with ``warmup`` (1: critic only, else 0) in a run that has a warm-up."""
    policy, critic = learner.policy, learner.critic
    strategy = estimator.critic_strategy if critic is not None else None
    warmup = critic_only and strategy is not None  # no critic: nothing to warm up
    seeds = range(data.seeds)
    n_rows, steps = data.obs.shape[1], data.obs.shape[2]
    micro = max(1, ROWS_PER_PASS // (data.seeds * steps))  # episodes per seed per pass
    passes = _Passes(learner, strategy, cfg.compute_dtype)
    with torch.no_grad():
        chunks = torch.arange(n_rows).split(micro)
        old_log_probs = torch.cat(
            [passes.policy(data.obs[:, r], data.actions[:, r])[0] for r in chunks], 1
        )
        old_critic = None
        if strategy is not None:
            old_critic = torch.cat([passes.critic(data.obs[:, r]) for r in chunks], 1)

    params = estimator.configured_params(cfg.estimator_params)
    advantages, targets = _advantages(estimator, params, data, old_critic, strategy)

    settings = cfg.settings(micro_batch_rows=micro)
    per_seed = [minibatch_schedule(n_rows, cfg.epochs, cfg.mini_batch_size, g) for g in generators]
    schedule = [torch.stack(steps) for steps in zip(*per_seed, strict=True)]  # [S, m] each
    policy_step, critic_step = passes.steps(
        data, old_log_probs, advantages, old_critic, targets, settings
    )
    result: dict[str, list[float | None]] = {k: [None] * data.seeds for k in RESULT_KEYS}
    if strategy is not None and learner.critic_opt is not None:
        result.update(
            stacked_critic_phase(
                critic_step,
                critic.trainable(),
                learner.critic_opt,
                schedule,
                data.mask,
                settings,
                stacked=data.seeds,
            )
        )
    if not warmup:
        result.update(
            stacked_policy_phase(
                policy_step,
                policy.trainable(),
                learner.policy_opt,
                schedule,
                data.mask,
                settings,
                stacked=data.seeds,
            )
        )
    rows = [{k: v[s] for k, v in result.items()} for s in seeds]
    if strategy is not None:
        for s in seeds:
            rows[s].update(strategy.diagnostics(old_critic[s], targets[s], data.mask[s]))
    if cfg.critic_warmup_updates:  # the rows of a run without a warm-up as before it existed
        for row in rows:
            row["warmup"] = int(warmup)
    return rows


RESULT_KEYS = (*LOSS_METRICS, *VALUE_METRICS, *GRAD_METRICS)  # a row's update metrics
# Time steps (of all seeds together) per forward / backward pass. A 2x64 MLP's activations for
# more rows fall out of the CPU's L2 cache and cost ~2x per row (measured: 1.2 us/row at 8k rows,
# 2.3 us/row at 40k, forward + backward, one core); mini-batches are cut into micro-batches of
# whole episodes under this size, which changes no number beyond float rounding (global counts).
ROWS_PER_PASS = 8192
