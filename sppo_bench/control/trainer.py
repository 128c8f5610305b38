"""Stage 3: RL fine-tuning of the cloned policy with the binary terminal reward, any estimator.

``train_run(task, algo, seed)`` trains one run in ``runs/control/<task>/<algo>/seed<seed>/``
(``<algo>@<variant>/`` for a named variant, ``sppo_bench.control.variants``):

- ``config.yaml``: the resolved task spec with the algorithm and seed;
- ``metrics.jsonl``: one row per update (update 0 = the cloned policy before any update);
- ``checkpoints/latest.pt``: policy, critic, optimisers and counters;
- ``values/update_<u:06d>.npz``: the critic on the stochastic evaluation episodes (critics only);
- ``done``: written last, a small JSON summary.

Each update draws start states from ``numpy.random.default_rng([seed, update])`` and samples
actions with a ``torch.Generator`` seeded from ``(seed, update)``, so a run resumed from a
checkpoint continues exactly as if it had not stopped, and the same seed gives the same metrics.
Group estimators give all ``group_size`` members of a group one start-state seed; ReMax also
rolls out the greedy policy from every start state (counted in ``env_steps``, not ``episodes``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sppo_bench.config import to_dict
from sppo_bench.control.cloning import build_policy, load_policy
from sppo_bench.control.collector import collect_episodes
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.evaluation import evaluate, policy_actor
from sppo_bench.control.expert import stage_dir, variant_stage_dir
from sppo_bench.control.policies import Policy, ValueNet
from sppo_bench.control.spec import TaskSpec, load_spec, upgrade_stored_spec
from sppo_bench.control.tasks import get_task
from sppo_bench.control.update import (
    RESULT_KEYS,
    BatchTensors,
    Learner,
    critic_values,
    ppo_update,
)
from sppo_bench.control.variants import Variant, all_overrides, folder_name
from sppo_bench.core import EstimatorSpec, get_estimator
from sppo_bench.core.ppo import step_generator
from sppo_bench.errors import UserError
from sppo_bench.io import (
    atomic_write_bytes,
)
from sppo_bench.rundir import RunDir


def run_dir_for(
    runs_dir: Path, task: str, algo: str, seed: int, variant: Variant | str | None = None
) -> Path:
    """``runs/control/<task>/<run name of algo>[@<variant>]/seed<seed>``."""
    name = folder_name(get_estimator(algo).run_name, variant)
    return stage_dir(runs_dir, task, name) / f"seed{seed}"


def build_critic(spec: TaskSpec, policy: Policy) -> ValueNet:
    """A run's critic: ``spec.policy.critic_hidden`` layers, the policy's input normalisation."""
    critic = ValueNet(policy.obs_mean.numel(), spec.policy.critic_hidden, spec.policy.activation)
    critic.set_normalization(policy.obs_mean, policy.obs_std)
    return critic


@dataclass
class SavedRun:
    """A run's networks as its latest checkpoint holds them (no optimisers, no environments)."""

    run_dir: Path
    estimator: EstimatorSpec
    policy: Policy
    critic: ValueNet | None
    update: int

    @property
    def algo(self) -> str:
        return self.estimator.run_name

    @classmethod
    def load(cls, run_dir: Path, spec: TaskSpec, algo: str) -> SavedRun:
        """The networks of ``run_dir``'s ``checkpoints/latest.pt``; a one-line error if none."""
        blob = RunDir(run_dir).load_checkpoint(keys=("state", "policy"))
        if blob is None:
            raise UserError(f"run {str(run_dir)!r} has no checkpoint yet")
        estimator = get_estimator(algo)
        policy = build_policy(spec)
        policy.load_state_dict(blob["policy"])
        critic = None
        if estimator.critic_strategy is not None:
            critic = build_critic(spec, policy)
            critic.load_state_dict(blob["critic"])
        return cls(run_dir, estimator, policy, critic, int(blob["state"]["update"]))


class Trainer:
    """Holds the networks, optimisers, envs and counters of one run."""

    def __init__(
        self,
        spec: TaskSpec,
        algo: str,
        seed: int,
        run_dir: Path,
        clone: Path,
        tensorboard: Path | None = None,
    ) -> None:
        self.spec, self.seed, self.run_dir = spec, seed, run_dir
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
        if cfg.n_eval < 1:
            raise UserError(f"rl.n_eval must be >= 1, got {cfg.n_eval}")
        torch.manual_seed(seed)
        self.policy: Policy = load_policy(clone, spec)
        self.critic: ValueNet | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        if self.estimator.critic_strategy is not None:
            self.critic = build_critic(spec, self.policy)
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        self.policy_opt = torch.optim.Adam(params, lr=cfg.lr)
        rollouts = self.batch * (2 if self.estimator.needs_greedy_baseline else 1)
        self.train_env = make_vector_env(spec.task, rollouts, cfg.backend)
        eval_envs = math.gcd(cfg.n_eval, 64)
        self.eval_env = make_vector_env(spec.task, eval_envs, cfg.backend)
        self.state = {"update": 0, "episodes": 0, "env_steps": 0, "wall_time": 0.0}
        self.folder = RunDir(run_dir)
        self.metrics = self.folder.metrics(tensorboard)

    # --- checkpoints -------------------------------------------------------------------
    def save(self) -> None:
        blob: dict[str, Any] = {
            "state": dict(self.state),
            "policy": self.policy.state_dict(),
            "policy_opt": self.policy_opt.state_dict(),
        }
        if self.critic is not None and self.critic_opt is not None:
            blob["critic"] = self.critic.state_dict()
            blob["critic_opt"] = self.critic_opt.state_dict()
        self.folder.save_checkpoint(blob)

    def load(self) -> bool:
        blob = self.folder.load_checkpoint(keys=("state", "policy", "policy_opt"))
        if blob is None:
            return False
        self.state = dict(blob["state"])
        self.policy.load_state_dict(blob["policy"])
        self.policy_opt.load_state_dict(blob["policy_opt"])
        if self.critic is not None and self.critic_opt is not None:
            self.critic.load_state_dict(blob["critic"])
            self.critic_opt.load_state_dict(blob["critic_opt"])
        return True

    # --- rollouts ------------------------------------------------------------------------
    def start_states(self, update: int) -> tuple[np.ndarray, torch.Tensor | None]:
        """Seeds ``[B]`` for this update's episodes and group ids ``[B]`` (group methods)."""
        rng = np.random.default_rng([self.seed, update])
        n_starts = self.batch // self.group
        seeds = rng.integers(0, 2**31 - 1, size=n_starts).repeat(self.group)
        if not self.estimator.needs_groups:
            return seeds, None
        return seeds, torch.arange(n_starts).repeat_interleave(self.group)

    def evaluation(self, update: int) -> dict[str, float]:
        """Deterministic and stochastic success on the fixed evaluation start states; writes
        the critic's values on the stochastic episodes."""
        generator = step_generator(self.seed, update, 1)
        det, sto, episodes = evaluate(
            self.eval_env, self.policy, self.spec.rl.n_eval, self.horizon, generator
        )
        if self.critic is not None:
            self.write_values(update, episodes)
        return {"eval/success_deterministic": det, "eval/success_stochastic": sto}

    def write_values(self, update: int, episodes: Any) -> None:
        obs = torch.as_tensor(episodes.obs, dtype=torch.float32)
        strategy = self.estimator.critic_strategy
        with torch.no_grad():
            out = critic_values(self.critic, strategy, obs)
        arrays: dict[str, np.ndarray] = {
            "success": episodes.success.astype(bool),
            "lengths": episodes.lengths.astype(np.int64),
            "v0": strategy.start_values(out).numpy().astype(np.float32),
        }
        if strategy.per_step:  # V(s_t) of every step, NaN after the episode's end
            values = np.full((len(episodes.lengths), self.horizon), np.nan, dtype=np.float32)
            steps = out.shape[1]
            values[:, :steps] = np.where(episodes.mask > 0, strategy.values(out).numpy(), np.nan)
            arrays["values"] = values
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.run_dir / "values" / f"update_{update:06d}.npz", buffer.getvalue())

    # --- the loop ------------------------------------------------------------------------
    def update(self, data: BatchTensors, generator: torch.Generator) -> dict[str, float | None]:
        """One RL update of this run's policy and critic with its optimisers on ``data``."""
        learner = Learner(self.policy, self.policy_opt, self.critic, self.critic_opt)
        return ppo_update(learner, self.estimator, self.spec.rl, data, generator)

    def step(self, update: int) -> dict[str, Any]:
        """Collect one batch of whole episodes and update; returns the metrics row."""
        start = time.time()
        seeds, group_ids = self.start_states(update)
        greedy = np.zeros(len(seeds), dtype=bool)
        if self.estimator.needs_greedy_baseline:
            seeds, greedy = np.concatenate([seeds, seeds]), np.concatenate([greedy, ~greedy])
        generator = step_generator(self.seed, update, 0)
        episodes = collect_episodes(
            self.train_env, policy_actor(self.policy, greedy, generator), seeds, self.horizon
        )
        sampled = episodes.select(np.flatnonzero(~greedy))
        baseline = None
        if self.estimator.needs_greedy_baseline:
            baseline = torch.as_tensor(episodes.success[greedy], dtype=torch.float32)
        data = BatchTensors.from_batch(sampled, self.policy.discrete, group_ids, baseline)
        stats = self.update(data, generator)
        elapsed = time.time() - start
        self.state["update"] = update
        self.state["episodes"] += len(sampled.lengths)
        self.state["env_steps"] += episodes.num_steps
        self.state["wall_time"] += elapsed
        return {
            **self.counters(),
            "train/success_rate": float(sampled.success.mean()),
            "train/episode_length": float(sampled.lengths.mean()),
            **stats,
            "charts/SPS": episodes.num_steps / max(elapsed, 1e-9),
        }

    def counters(self) -> dict[str, Any]:
        return {k: self.state[k] for k in ("update", "episodes", "env_steps", "wall_time")}

    def run(self, num_updates: int, progress: bool) -> dict[str, Any]:
        cfg = self.spec.rl
        if self.load():
            self.metrics.truncate_after("update", self.state["update"])
        else:
            self.metrics.truncate_after("update", -1)
            start = time.time()
            row = self.evaluation(0)
            self.state["wall_time"] += time.time() - start
            self.metrics.append({**self.counters(), **_empty_losses(), **row})
            self.save()
        bar = tqdm(
            total=num_updates,
            initial=self.state["update"],
            desc=f"{self.spec.task}/{self.algo}/seed{self.seed}",
            unit="upd",
            disable=not progress,
        )
        last_eval: dict[str, float] = {}
        while self.state["update"] < num_updates:
            update = self.state["update"] + 1
            row = self.step(update)
            if update % cfg.eval_every == 0 or update == num_updates:
                start = time.time()
                last_eval = self.evaluation(update)
                self.state["wall_time"] += time.time() - start
                row.update(last_eval, wall_time=self.state["wall_time"])
            self.metrics.append(row)
            if update % cfg.checkpoint_every == 0 or update == num_updates or last_eval:
                self.save()
            bar.update(1)
            bar.set_postfix(train=f"{row['train/success_rate']:.2f}", refresh=False)
            last_eval = {}
        bar.close()
        rows = self.metrics.rows()
        evals = [r for r in rows if "eval/success_stochastic" in r]
        return {
            "task": self.spec.task,
            "algo": self.algo,
            "seed": self.seed,
            **self.counters(),
            "final/success_deterministic": evals[-1]["eval/success_deterministic"],
            "final/success_stochastic": evals[-1]["eval/success_stochastic"],
            "initial/success_stochastic": evals[0]["eval/success_stochastic"],
        }


def _empty_losses() -> dict[str, Any]:
    return {"train/success_rate": None, **dict.fromkeys(RESULT_KEYS), "charts/SPS": None}


RUNS_DIR_REMEDY = "use another --runs-dir or remove that folder"


def upgrade_stored_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored run config with the keys of older versions as today's."""
    return upgrade_stored_spec(config)


def resolved_config(
    spec: TaskSpec, algo: str, seed: int, variant: Variant | None = None
) -> dict[str, Any]:
    """What ``config.yaml`` holds: algorithm, seed, the variant's name (only for a variant, so
    that older runs' configs stay valid) and the full task spec."""
    named = {"variant": variant.name} if variant is not None else {}
    return {"algo": algo, "seed": seed, **named, **to_dict(spec)}


def requested_config(
    task: str,
    algo: str,
    seed: int,
    episodes: int | None,
    overrides: Sequence[str],
    variant: Variant | None = None,
) -> tuple[Path, TaskSpec, dict[str, Any]]:
    """(run folder relative to a runs dir, task spec, config.yaml contents) of the run
    ``train_run`` would make with these arguments."""
    estimator = get_estimator(algo)
    name = estimator.run_name
    spec = load_spec(task, all_overrides(overrides, variant))
    estimator.configured_params(spec.rl.estimator_params)  # a bad parameter fails before any work
    if episodes is not None:
        spec.rl.episodes = episodes
    relative = run_dir_for(Path("."), spec.task, name, seed, variant)
    return relative, spec, resolved_config(spec, name, seed, variant)


def train_run(
    task: str,
    algo: str,
    seed: int,
    runs_dir: Path = Path("runs"),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    tensorboard: Path | None = None,
    variant: Variant | None = None,
) -> Path:
    """Train (or resume, or skip if done) one RL run and return its directory.

    ``episodes``: the training-episode budget (None = the task yaml's ``rl.episodes``); the run
    makes ceil(episodes / trajectories_per_update) updates. ``tensorboard``: a folder that also
    receives every metrics row as TensorBoard scalars. ``variant``: a named set of overrides
    applied after ``overrides``; the run lives in ``<algo>@<variant>`` and starts from the
    variant's own clone where the variant changes the clone's settings.
    """
    torch.set_num_threads(1)
    relative, spec, config = requested_config(task, algo, seed, episodes, overrides, variant)
    name = config["algo"]
    run_dir = Path(runs_dir) / relative
    run = RunDir(run_dir)
    run.check_config(config, upgrade_stored_config, remedy=RUNS_DIR_REMEDY)
    if run.done:
        return run_dir
    with run.writing():
        if run.done:  # finished by the process that held the lock
            return run_dir
        run.write_config(config)
        clone = variant_stage_dir(runs_dir, spec.task, "clone", variant) / "policy.pt"
        trainer = Trainer(spec, name, seed, run_dir, clone, tensorboard)
        num_updates = math.ceil(spec.rl.episodes / spec.rl.trajectories_per_update)
        try:
            summary = trainer.run(num_updates, progress)
        finally:
            trainer.metrics.close()
        run.mark_done(summary)
    return run_dir


__all__ = ["SavedRun", "Trainer", "run_dir_for", "train_run", "upgrade_stored_config"]
