"""The episodes of ``S`` seed-stacked runs: start states, collection and evaluation.

``SeedRollouts`` is the rollout half of ``sppo_bench.control.trainer.Trainer``, which sets the
attributes it reads: ``seeds`` (``S`` ints), ``spec``, ``estimator``, ``policy`` (a
``StackedPolicy``), ``critic`` (a ``StackedValueNet`` or None), ``batch`` (episodes per update),
``group``, ``horizon``, ``eval_env``, ``run_dirs``. Seed ``k`` draws its start states from
``numpy.random.default_rng([seed_k, update])`` and its actions from ``step_generator(seed_k,
update, stream)`` (``ROLLOUT_STREAM`` for training, ``EVAL_STREAM`` for the stochastic
evaluation); other seeds never touch these streams.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from sppo_bench.control.collector import EpisodeBatch, collect_episodes
from sppo_bench.control.evaluation import eval_seeds
from sppo_bench.control.update import critic_values
from sppo_bench.control.values import write_values
from sppo_bench.core.ppo import step_generator

ROLLOUT_STREAM, EVAL_STREAM, SHUFFLE_STREAM = 0, 1, 2


def seed_rows(x: np.ndarray, seeds: int) -> np.ndarray:
    """``[S * N, ...] -> [S, N, ...]`` (seed-major rows)."""
    return x.reshape(seeds, -1, *x.shape[1:])


class SeedRollouts:
    """Episodes of every seed at once (see the module doc for the attributes it reads)."""

    seeds: list[int]
    batch: int
    group: int
    horizon: int
    spec: Any
    estimator: Any
    policy: Any
    critic: Any
    eval_env: Any
    run_dirs: list[Any]

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
        s, n = starts.shape
        mode: torch.Tensor | bool = torch.as_tensor(greedy)  # a bool where every row agrees
        if greedy.all() or not greedy.any():
            mode = bool(greedy.all())
        uniforms = None
        if self.policy.discrete and mode is not True:  # the whole collection's draws at once
            uniforms = self.policy.draw_uniforms(generators, self.horizon, n)
        calls, actor = itertools.count(), self.policy.actor()  # parameters read once

        def act(obs: np.ndarray) -> np.ndarray:
            obs_t = torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(s, n, -1)
            t = next(calls)
            draws = None if uniforms is None else uniforms[:, t]
            return actor(obs_t, mode, generators, draws).flatten(0, 1).numpy()

        return collect_episodes(venv, act, starts.reshape(-1), self.horizon)

    def evaluation(self, update: int) -> list[dict[str, float]]:
        """Per seed: deterministic and stochastic success on the fixed evaluation start states;
        writes the critic's values on the stochastic episodes."""
        s, n = len(self.seeds), self.spec.rl.n_eval
        starts = np.tile(eval_seeds(n), (s, 1))
        det = self.collect(self.eval_env, starts, np.ones((s, n), bool), EVAL_STREAM, update)
        sto = self.collect(self.eval_env, starts, np.zeros((s, n), bool), EVAL_STREAM, update)
        det_success, sto_success = seed_rows(det.success, s), seed_rows(sto.success, s)
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
        s, strategy = len(self.seeds), self.estimator.critic_strategy
        obs = torch.as_tensor(seed_rows(episodes.obs, s), dtype=torch.float32)
        with torch.no_grad():
            out = critic_values(self.critic, strategy, obs)
        n = obs.shape[1]
        for k, run_dir in enumerate(self.run_dirs):
            mine = episodes.select(np.arange(k * n, (k + 1) * n))
            write_values(run_dir, update, mine, out[k], strategy, self.horizon)
