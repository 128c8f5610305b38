"""Stage 3's training loop: ``S`` seeds of one (task, algorithm) trained at once in one process.

A ``Trainer`` holds ``S`` runs that share a task spec and an estimator and differ only in their
seed. Their networks are seed-stacked (:mod:`sppo_bench.control.stack`): every environment step
asks one batched forward pass for the ``S x N`` environments of one vector env, and every optimiser
step updates all seeds with per-seed losses, gradient clipping and Adam state
(:mod:`sppo_bench.control.update`). ``S = 1`` is the single-seed trainer.

Each seed keeps everything a run owns, exactly as if it ran alone (``sppo_bench.rundir``): its
folder, ``config.yaml``, ``metrics.jsonl``, ``checkpoints/latest.pt`` in the single-seed format,
``values/update_<u:06d>.npz``, ``done``. Seed ``k`` draws its start states from
``numpy.random.default_rng([seed_k, update])``, its actions from ``step_generator(seed_k, update,
0)``, its mini-batch order from ``step_generator(seed_k, update, 2)`` and its stochastic
evaluation from ``step_generator(seed_k, update, 1)``; other seeds never touch these streams, so a
seed of an ``S``-seed run draws the same episodes as the same seed alone, and its numbers agree up
to floating-point rounding (batched matmuls of another batch size, sums over the padding of the
longest episode of all seeds). A run resumed from a checkpoint continues exactly as if it had not
stopped; a run's folder does not record how many seeds shared its process.

Group estimators give all ``group_size`` members of a group one start-state seed; ReMax also
rolls out the greedy policy from every start state (counted in ``env_steps``, not ``episodes``).
A seed whose numbers stop being finite is recorded as diverged (``sppo_bench.io``) and the other
seeds are checkpointed; ``run`` then returns and the caller restarts the rest without it.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sppo_bench.control.cloning import load_policy
from sppo_bench.control.collector import EpisodeBatch, collect_episodes
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.evaluation import eval_seeds
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import TaskSpec
from sppo_bench.control.stack import (
    StackedPolicy,
    StackedValueNet,
    seed_optimizer_state,
    stack_optimizer_states,
)
from sppo_bench.control.tasks import get_task
from sppo_bench.control.update import RESULT_KEYS, BatchTensors, Learner, critic_values, ppo_update
from sppo_bench.control.variants import split_folder
from sppo_bench.core import get_estimator
from sppo_bench.core.ppo import step_generator
from sppo_bench.errors import DivergedError, UserError
from sppo_bench.io import atomic_write_bytes, mark_diverged
from sppo_bench.rundir import RunDir

ROLLOUT_STREAM, EVAL_STREAM, SHUFFLE_STREAM = 0, 1, 2


def build_critic(spec: TaskSpec, policy: Policy) -> ValueNet:
    """A run's critic: ``spec.policy.critic_hidden`` layers, the policy's input normalisation."""
    critic = ValueNet(policy.obs_mean.numel(), spec.policy.critic_hidden, spec.policy.activation)
    critic.set_normalization(policy.obs_mean, policy.obs_std)
    return critic


def _seed_rows(x: np.ndarray, seeds: int) -> np.ndarray:
    return x.reshape(seeds, -1, *x.shape[1:])


class Trainer:
    """The networks, optimisers, envs and counters of ``S`` runs (one per seed)."""

    def __init__(
        self,
        spec: TaskSpec,
        algo: str,
        seeds: int | Sequence[int],
        run_dirs: Path | Sequence[Path],
        clone: Path,
        tensorboard: Path | Sequence[Path | None] | None = None,
    ) -> None:
        self.seeds = [int(seeds)] if isinstance(seeds, int | np.integer) else list(seeds)
        dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
        boards = tensorboard if isinstance(tensorboard, list | tuple) else [tensorboard]
        if len(boards) == 1:
            boards = boards * len(self.seeds)
        if not (len(dirs) == len(boards) == len(self.seeds) >= 1):
            raise ValueError("Trainer needs one run folder (and board) per seed")
        self.spec, self.run_dirs = spec, [Path(d) for d in dirs]
        self.estimator = get_estimator(algo)
        self.algo = self.estimator.run_name
        cfg = spec.rl
        self.horizon = get_task(spec.task).horizon
        self.batch = cfg.trajectories_per_update
        self.group = cfg.group_size if self.estimator.needs_groups else 1
        if self.batch % self.group:
            raise UserError(
                f"rl.trajectories_per_update ({self.batch}) must be a multiple of "
                f"rl.group_size ({self.group}) for {self.algo}"
            )
        policies, critics = [], []
        for seed in self.seeds:  # each seed's networks initialised as if it ran alone
            torch.manual_seed(seed)
            policies.append(load_policy(clone, spec))
            if self.estimator.critic_strategy is not None:
                critics.append(build_critic(spec, policies[-1]))
        self.policy = StackedPolicy(policies)
        self.policy_opt = torch.optim.Adam(self.policy.trainable(), lr=cfg.lr)
        self.critic: StackedValueNet | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        if critics:
            self.critic = StackedValueNet(critics)
            self.critic_opt = torch.optim.Adam(self.critic.trainable(), lr=cfg.critic_lr)
        s = len(self.seeds)
        self.rollouts = self.batch * (2 if self.estimator.needs_greedy_baseline else 1)
        self.train_env = make_vector_env(spec.task, s * self.rollouts, cfg.backend)
        self.eval_env = make_vector_env(spec.task, s * cfg.n_eval, cfg.backend)
        self.states = [
            {"update": 0, "episodes": 0, "env_steps": 0, "wall_time": 0.0} for _ in self.seeds
        ]
        self.folders = [RunDir(d) for d in self.run_dirs]
        self.metrics = [f.metrics(b) for f, b in zip(self.folders, boards, strict=True)]
        self.diverged: list[int] = []  # seeds (values) that stopped being finite

    @property
    def update_count(self) -> int:
        return self.states[0]["update"]

    # --- checkpoints -------------------------------------------------------------------
    def seed_checkpoint(self, k: int) -> dict[str, Any]:
        """Seed ``k``'s (index) checkpoint in the single-seed format."""
        blob: dict[str, Any] = {
            "state": dict(self.states[k]),
            "policy": self.policy.seed_state(k),
            "policy_opt": seed_optimizer_state(self.policy_opt.state_dict(), k),
        }
        if self.critic is not None and self.critic_opt is not None:
            blob["critic"] = self.critic.seed_state(k)
            blob["critic_opt"] = seed_optimizer_state(self.critic_opt.state_dict(), k)
        return blob

    def load(self) -> bool:
        """Restore every seed from its checkpoint; False where none has one. The seeds must be at
        the same update (``train_seeds`` groups them so)."""
        blobs = [f.load_checkpoint(keys=("state", "policy", "policy_opt")) for f in self.folders]
        if all(b is None for b in blobs):
            return False
        updates = {None if b is None else int(b["state"]["update"]) for b in blobs}
        if len(updates) != 1:
            raise ValueError(f"seeds {self.seeds} are at different updates {sorted(updates)}")
        for k, blob in enumerate(blobs):
            self.states[k] = dict(blob["state"])
            self.policy.load_seed_state(k, blob["policy"])
            if self.critic is not None:
                self.critic.load_seed_state(k, blob["critic"])
        self.policy_opt.load_state_dict(stack_optimizer_states([b["policy_opt"] for b in blobs]))
        if self.critic_opt is not None:
            states = [b["critic_opt"] for b in blobs]
            self.critic_opt.load_state_dict(stack_optimizer_states(states))
        return True

    # --- rollouts ------------------------------------------------------------------------
    def start_states(self, update: int) -> tuple[np.ndarray, torch.Tensor | None]:
        """Seeds of this update's episodes ``[S, B]`` and group ids ``[S, B]`` (group methods)."""
        n_starts = self.batch // self.group
        seeds = np.stack(
            [
                np.random.default_rng([seed, update])
                .integers(0, 2**31 - 1, size=n_starts)
                .repeat(self.group)
                for seed in self.seeds
            ]
        )
        if not self.estimator.needs_groups:
            return seeds, None
        groups = torch.arange(n_starts).repeat_interleave(self.group)
        return seeds, groups.expand(len(self.seeds), -1).clone()

    def collect(
        self, venv: Any, starts: np.ndarray, greedy: np.ndarray, stream: int, update: int
    ) -> EpisodeBatch:
        """One episode per start state ``starts [S, N]`` (``greedy [S, N]``), seed-major rows."""
        generators = [step_generator(seed, update, stream) for seed in self.seeds]
        greedy_t = torch.as_tensor(greedy)
        s = len(self.seeds)

        def act(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
            actions = self.policy.act(obs_t.reshape(s, -1, obs_t.shape[-1]), greedy_t, generators)
            return actions.flatten(0, 1).numpy()

        return collect_episodes(venv, act, starts.reshape(-1), self.horizon)

    def evaluation(self, update: int) -> list[dict[str, float]]:
        """Per seed: deterministic and stochastic success on the fixed evaluation start states;
        writes the critic's values on the stochastic episodes."""
        s, n = len(self.seeds), self.spec.rl.n_eval
        starts = np.tile(eval_seeds(n), (s, 1))
        det = self.collect(self.eval_env, starts, np.ones((s, n), bool), EVAL_STREAM, update)
        sto = self.collect(self.eval_env, starts, np.zeros((s, n), bool), EVAL_STREAM, update)
        det_success, sto_success = _seed_rows(det.success, s), _seed_rows(sto.success, s)
        if self.critic is not None:
            self.write_values(update, sto)
        return [
            {
                "eval/success_deterministic": float(det_success[k].mean()),
                "eval/success_stochastic": float(sto_success[k].mean()),
            }
            for k in range(s)
        ]

    def write_values(self, update: int, episodes: EpisodeBatch) -> None:
        s = len(self.seeds)
        obs = torch.as_tensor(_seed_rows(episodes.obs, s), dtype=torch.float32)
        strategy = self.estimator.critic_strategy
        with torch.no_grad():
            out = critic_values(self.critic, strategy, obs)
        for k, run_dir in enumerate(self.run_dirs):
            rows = slice(k * len(obs[k]), (k + 1) * len(obs[k]))
            mine = episodes.select(np.arange(rows.start, rows.stop))
            arrays: dict[str, np.ndarray] = {
                "success": mine.success.astype(bool),
                "lengths": mine.lengths.astype(np.int64),
                "v0": strategy.start_values(out[k]).numpy().astype(np.float32),
            }
            if strategy.per_step:  # V(s_t) of every step, NaN after the episode's end
                values = np.full((len(mine.lengths), self.horizon), np.nan, dtype=np.float32)
                steps = mine.mask.shape[1]
                values[:, :steps] = np.where(
                    mine.mask > 0, strategy.values(out[k, :, :steps]).numpy(), np.nan
                )
                arrays["values"] = values
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            path = run_dir / "values" / f"update_{update:06d}.npz"
            atomic_write_bytes(path, buffer.getvalue())

    # --- the loop ------------------------------------------------------------------------
    def update(
        self, data: BatchTensors, generators: Sequence[torch.Generator]
    ) -> list[dict[str, float | None]]:
        """One RL update of every seed's policy and critic on ``data`` (``[S, B, ...]``)."""
        learner = Learner(self.policy, self.policy_opt, self.critic, self.critic_opt)
        return ppo_update(learner, self.estimator, self.spec.rl, data, generators)

    def step(self, update: int) -> list[dict[str, Any]]:
        """Collect one batch of whole episodes per seed and update; returns each seed's row."""
        start = time.time()
        s = len(self.seeds)
        starts, group_ids = self.start_states(update)
        greedy = np.zeros_like(starts, dtype=bool)
        if self.estimator.needs_greedy_baseline:
            starts = np.concatenate([starts, starts], axis=1)
            greedy = np.concatenate([greedy, ~greedy], axis=1)
        episodes = self.collect(self.train_env, starts, greedy, ROLLOUT_STREAM, update)
        flat_greedy = greedy.reshape(-1)
        sampled = episodes.select(np.flatnonzero(~flat_greedy))
        baseline = None
        if self.estimator.needs_greedy_baseline:
            greedy_success = episodes.success[flat_greedy].reshape(s, -1)
            baseline = torch.as_tensor(greedy_success, dtype=torch.float32)
        data = BatchTensors.from_batch(sampled, self.policy.discrete, s, group_ids, baseline)
        shuffles = [step_generator(seed, update, SHUFFLE_STREAM) for seed in self.seeds]
        stats = self.update(data, shuffles)
        elapsed = time.time() - start
        success = _seed_rows(sampled.success, s)
        lengths = _seed_rows(sampled.lengths, s)
        steps = _seed_rows(episodes.lengths, s).sum(axis=1)
        rows = []
        for k, state in enumerate(self.states):
            state["update"] = update
            state["episodes"] += int(lengths.shape[1])
            state["env_steps"] += int(steps[k])
            state["wall_time"] += elapsed
            rows.append(
                {
                    **self.counters(k),
                    "train/success_rate": float(success[k].mean()),
                    "train/episode_length": float(lengths[k].mean()),
                    **stats[k],
                    "charts/SPS": float(steps[k]) / max(elapsed, 1e-9),
                }
            )
        return rows

    def counters(self, k: int) -> dict[str, Any]:
        return {
            key: self.states[k][key] for key in ("update", "episodes", "env_steps", "wall_time")
        }

    def _timed_evaluation(self, update: int) -> list[dict[str, float]]:
        start = time.time()
        rows = self.evaluation(update)
        for state in self.states:
            state["wall_time"] += time.time() - start
        return rows

    def _record(self, rows: Sequence[dict[str, Any]], save: bool) -> None:
        """Append each seed's row (and checkpoint it); a seed whose numbers are not finite is
        marked diverged, and then every other seed is checkpointed."""
        for k, row in enumerate(rows):
            try:
                self.metrics[k].append(row)
            except DivergedError as err:
                self._diverge(k, err)
        if save or self.diverged:
            for k, folder in enumerate(self.folders):
                if self.seeds[k] in self.diverged:
                    continue
                try:
                    folder.save_checkpoint(self.seed_checkpoint(k))
                except DivergedError as err:
                    self._diverge(k, err)

    def _diverge(self, k: int, err: DivergedError) -> None:
        mark_diverged(self.run_dirs[k], err)
        self.diverged.append(self.seeds[k])

    def run(self, num_updates: int, progress: bool) -> list[dict[str, Any]]:
        """Train every seed to ``num_updates`` updates (resuming from the checkpoints); returns
        each seed's summary, or stops early (empty list) when a seed diverged."""
        cfg = self.spec.rl
        if self.load():
            for m in self.metrics:
                m.truncate_after("update", self.update_count)
        else:
            for m in self.metrics:
                m.truncate_after("update", -1)
            evals = self._timed_evaluation(0)
            rows = [{**self.counters(k), **_empty_losses(), **e} for k, e in enumerate(evals)]
            self._record(rows, save=True)
        label = f"seed{self.seeds[0]}" if len(self.seeds) == 1 else f"{len(self.seeds)} seeds"
        bar = tqdm(
            total=num_updates,
            initial=self.update_count,
            desc=f"{self.spec.task}/{self.run_dirs[0].parent.name}/{label}",  # algo[@variant]
            unit="upd",
            disable=not progress,
        )
        while self.update_count < num_updates and not self.diverged:
            update = self.update_count + 1
            rows = self.step(update)
            evaluated = update % cfg.eval_every == 0 or update == num_updates
            if evaluated:
                for k, e in enumerate(self._timed_evaluation(update)):
                    rows[k].update(e, wall_time=self.states[k]["wall_time"])
            save = update % cfg.checkpoint_every == 0 or update == num_updates or evaluated
            self._record(rows, save)
            bar.update(1)
            mean = np.mean([r["train/success_rate"] for r in rows])
            bar.set_postfix(train=f"{mean:.2f}", refresh=False)
        bar.close()
        return [] if self.diverged else [self.summary(k) for k in range(len(self.seeds))]

    def summary(self, k: int) -> dict[str, Any]:
        """Seed ``k``'s ``done`` summary: counters and first / last evaluation."""
        evals = [r for r in self.metrics[k].rows() if "eval/success_stochastic" in r]
        _, variant = split_folder(self.run_dirs[k].parent.name)
        return {
            "task": self.spec.task,
            "algo": self.algo,
            **({"variant": variant} if variant else {}),
            "seed": self.seeds[k],
            **self.counters(k),
            "final/success_deterministic": evals[-1]["eval/success_deterministic"],
            "final/success_stochastic": evals[-1]["eval/success_stochastic"],
            "initial/success_stochastic": evals[0]["eval/success_stochastic"],
        }

    def close(self) -> None:
        for m in self.metrics:
            m.close()


def _empty_losses() -> dict[str, Any]:
    return {"train/success_rate": None, **dict.fromkeys(RESULT_KEYS), "charts/SPS": None}


def num_updates(spec: TaskSpec) -> int:
    """ceil(rl.episodes / rl.trajectories_per_update)."""
    return math.ceil(spec.rl.episodes / spec.rl.trajectories_per_update)


__all__ = ["Trainer", "build_critic", "num_updates"]
