"""Stage 3: RL fine-tuning of the cloned policy with the binary terminal reward, any estimator.

``train_run(task, algo, seed)`` trains one run (folder and files: :mod:`sppo_bench.control.runs`);
``train_seeds(task, algo, seeds)`` trains several seeds of it in one process. A ``Trainer`` holds
``S`` runs that share a task spec and an estimator and differ only in their seed; their networks
are seed-stacked (:mod:`sppo_bench.control.stack`): one batched forward pass per environment step
for the ``S x N`` environments, per-seed losses, clipping and Adam state in every optimiser step
(:mod:`sppo_bench.control.update`). ``S = 1`` is the single-seed trainer.

Each seed keeps everything a run owns, as if it ran alone, in a ``sppo_bench.rundir.RunSession``
and draws from its own random streams (:mod:`sppo_bench.control.rollouts`), so a seed of an
``S``-seed run agrees with the same seed alone up to floating-point rounding, and a resumed run
continues exactly as if it had not stopped. A seed whose numbers stop being finite is marked
diverged and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sppo_bench.control.cloning import load_policy
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.rollouts import ROLLOUT_STREAM, SHUFFLE_STREAM, SeedRollouts, seed_rows
from sppo_bench.control.runs import (
    RUNS_DIR_REMEDY,
    at_lowest_update,
    build_critic,
    num_updates,
    requested_spec,
    resolved_config,
    run_dir_for,
    run_identity,
)
from sppo_bench.control.spec import TaskSpec, upgrade_stored_spec
from sppo_bench.control.stack import (
    StackedPolicy,
    StackedValueNet,
    seed_optimizer_state,
    stack_optimizer_states,
)
from sppo_bench.control.tasks import TaskInfo
from sppo_bench.control.update import RESULT_KEYS, BatchTensors, Learner, ppo_update
from sppo_bench.control.variants import Variant, folder_name, variant_stage_dir
from sppo_bench.core import EstimatorSpec, get_estimator
from sppo_bench.core.ppo import step_generator
from sppo_bench.errors import DivergedError, UserError
from sppo_bench.rundir import Checkpoint, RunDir, RunSession, rng_state, set_rng_state

EMPTY_LOSSES = {"train/success_rate": None, **dict.fromkeys(RESULT_KEYS), "charts/SPS": None}


class Trainer(SeedRollouts):
    """The networks, optimisers, envs and counters of ``S`` runs (one per seed).

    ``sessions``: the runs' (locked) sessions, one per seed; by default unlocked ones are made
    for ``run_dirs``, their identity from ``spec``, ``algo``, the seed and ``variant``."""

    def __init__(
        self,
        spec: TaskSpec,
        algo: str | EstimatorSpec,
        seeds: int | Sequence[int],
        run_dirs: Path | Sequence[Path],
        clone: Path,
        tensorboard: Path | Sequence[Path | None] | None = None,
        sessions: Sequence[RunSession] | None = None,
        variant: str | None = None,
    ) -> None:
        self.seeds = [int(seeds)] if isinstance(seeds, int | np.integer) else list(seeds)
        dirs = [run_dirs] if isinstance(run_dirs, str | Path) else list(run_dirs)
        boards = tensorboard if isinstance(tensorboard, list | tuple) else [tensorboard]
        if len(boards) == 1:
            boards = boards * len(self.seeds)
        if not (len(dirs) == len(boards) == len(self.seeds) >= 1):
            raise ValueError("Trainer needs one run folder (and board) per seed")
        self.spec, self.run_dirs = spec, [Path(d) for d in dirs]
        self.estimator = get_estimator(algo) if isinstance(algo, str) else algo
        self.algo = self.estimator.run_name
        cfg = spec.rl
        self.horizon = spec.info.horizon
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
        self.train_env = make_vector_env(spec.info, s * self.rollouts, cfg.backend)
        self.eval_env = make_vector_env(spec.info, s * cfg.n_eval, cfg.backend)
        self.states = [
            {"update": 0, "episodes": 0, "env_steps": 0, "wall_time": 0.0} for _ in self.seeds
        ]
        if sessions is None:
            ids = [run_identity(resolved_config(spec, self.algo, s, variant)) for s in self.seeds]
            runs = zip(self.run_dirs, ids, boards, strict=True)
            sessions = [RunSession(d, i, "update", 0, b) for d, i, b in runs]
        self.sessions = list(sessions)
        self.metrics = [s.metrics for s in self.sessions]
        self.diverged: list[int] = []  # seeds (values) that stopped being finite

    @property
    def update_count(self) -> int:
        return self.states[0]["update"]

    # --- checkpoints -------------------------------------------------------------------
    def seed_checkpoint(self, k: int) -> Checkpoint:
        """Seed ``k``'s (index) checkpoint in the single-run layout (``rundir.Checkpoint``)."""
        critic = self.critic is not None and self.critic_opt is not None
        return Checkpoint(
            self.states[k]["update"],
            {
                "policy": self.policy.seed_state(k),
                "critic": self.critic.seed_state(k) if critic else None,
            },
            {
                "policy": seed_optimizer_state(self.policy_opt.state_dict(), k),
                "critic": seed_optimizer_state(self.critic_opt.state_dict(), k) if critic else None,
            },
            rng_state(),
            dict(self.states[k]),
        )

    def load(self) -> bool:
        """Resume every seed's session (checks: ``RunSession.resume``) and restore the seeds
        from their checkpoints; False where none has one. The seeds must be at the same update
        (``train_seeds`` groups them so)."""
        ckpts = [s.resume() for s in self.sessions]
        if all(c is None for c in ckpts):
            return False
        updates = {None if c is None else c.step for c in ckpts}
        if len(updates) != 1:
            raise ValueError(f"seeds {self.seeds} are at different updates {sorted(updates)}")
        for k, ckpt in enumerate(ckpts):
            self.states[k] = dict(ckpt.counters)
            where = self.sessions[k].dir.checkpoint_path
            try:
                self.policy.load_seed_state(k, ckpt.networks["policy"])
                if self.critic is not None:
                    self.critic.load_seed_state(k, ckpt.networks["critic"])
            except (RuntimeError, KeyError, TypeError, AttributeError):
                raise UserError(
                    f"checkpoint {str(where)!r} does not fit this run's networks (another task "
                    "or algorithm); use another run folder or remove that one"
                ) from None
        opts = [c.optimizers for c in ckpts]
        self.policy_opt.load_state_dict(stack_optimizer_states([o["policy"] for o in opts]))
        if self.critic_opt is not None:
            self.critic_opt.load_state_dict(stack_optimizer_states([o["critic"] for o in opts]))
        if ckpts[0].rng is not None:
            set_rng_state(ckpts[0].rng)
        return True

    # --- the loop ------------------------------------------------------------------------
    def update(
        self, data: BatchTensors, generators: Sequence[torch.Generator]
    ) -> list[dict[str, float | None]]:
        """One RL update of every seed on ``data`` (``[S, B, ...]``); critic-only in warm-up."""
        learner = Learner(self.policy, self.policy_opt, self.critic, self.critic_opt)
        warmup = self.update_count < self.spec.rl.critic_warmup_updates
        return ppo_update(learner, self.estimator, self.spec.rl, data, generators, warmup)

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
        success = seed_rows(sampled.success, s)
        lengths = seed_rows(sampled.lengths, s)
        steps = seed_rows(episodes.lengths, s).sum(axis=1)
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
            for k, folder in enumerate(self.sessions):
                if self.seeds[k] in self.diverged:
                    continue
                try:
                    folder.save(self.seed_checkpoint(k))
                except DivergedError as err:
                    self._diverge(k, err)

    def _diverge(self, k: int, err: DivergedError) -> None:
        self.sessions[k].diverged(err)
        self.diverged.append(self.seeds[k])

    def run(self, num_updates: int, progress: bool) -> list[dict[str, Any]]:
        """Train every seed to ``num_updates`` updates (resuming from the checkpoints); returns
        each seed's summary, or stops early (empty list) when a seed diverged."""
        cfg = self.spec.rl
        if not self.load():
            evals = self._timed_evaluation(0)
            rows = [{**self.counters(k), **EMPTY_LOSSES, **e} for k, e in enumerate(evals)]
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
        variant = self.sessions[k].identity.variant
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
        for session in self.sessions:
            session.metrics.close()


def train_run(
    task: str | TaskInfo,
    algo: str | EstimatorSpec,
    seed: int,
    runs_dir: Path = Path("runs"),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    tensorboard: Path | None = None,
    variant: Variant | None = None,
    wait: bool = False,
) -> Path:
    """Train (or resume, or skip if done) one RL run and return its directory. ``episodes``:
    the training-episode budget (None = the task yaml's ``rl.episodes``); the run makes
    ceil(episodes / trajectories_per_update) updates. ``tensorboard``: a folder that also
    receives every metrics row as TensorBoard scalars. ``variant``: a named set of overrides
    applied after ``overrides``; the run lives in ``<algo>@<variant>`` and starts from the
    variant's own clone where that changes the clone's settings. ``wait``: as ``train_seeds``.
    """
    boards = None if tensorboard is None else [tensorboard]
    args = (episodes, overrides, progress, boards, variant, wait)
    return train_seeds(task, algo, [seed], runs_dir, *args)[0]


def train_seeds(
    task: str | TaskInfo,
    algo: str | EstimatorSpec,
    seeds: Sequence[int],
    runs_dir: Path = Path("runs"),
    episodes: int | None = None,
    overrides: Sequence[str] = (),
    progress: bool = True,
    tensorboard: Sequence[Path | None] | None = None,
    variant: Variant | None = None,
    wait: bool = False,
) -> list[Path]:
    """``train_run`` for several seeds of one (task, algorithm) at once, seed-stacked in this
    process; returns their run folders. Finished seeds are skipped; seeds at different updates
    (an interrupted earlier call) are grouped by update and each group is trained as one stack.
    A seed that diverges is marked so and the others go on; a ``DivergedError`` naming the
    diverged seeds is raised after the rest have finished. ``wait``: a run that another process
    is writing is waited for (then skipped if that process finished it), not refused."""
    torch.set_num_threads(1)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {list(seeds)}")
    estimator = get_estimator(algo) if isinstance(algo, str) else algo
    algo = estimator.run_name
    spec = requested_spec(task, estimator, episodes, overrides, variant)
    boards = list(tensorboard) if tensorboard is not None else [None] * len(seeds)
    runs: list[tuple[int, RunDir, dict[str, Any], Path | None]] = []
    for seed, board in zip(seeds, boards, strict=True):
        config = resolved_config(spec, algo, seed, variant)
        run = RunDir(run_dir_for(Path(runs_dir), spec.task, estimator, seed, variant))
        run.check_config(config, upgrade_stored_spec, remedy=RUNS_DIR_REMEDY)
        runs.append((seed, run, config, board))
    todo = [r for r in runs if not r[1].done]
    diverged: list[int] = []
    with ExitStack() as stack:
        sessions = {}
        for seed, run, config, board in sorted(todo, key=lambda r: str(r[1].path)):
            session = RunSession(run.path, run_identity(config), "update", 0, board, wait)
            sessions[seed] = stack.enter_context(session)
        todo = [r for r in todo if not r[1].done]  # finished by a process that held a lock
        for _, run, config, _ in todo:
            run.write_config(config)
        clone = variant_stage_dir(runs_dir, spec.task, "clone", variant) / "policy.pt"
        while todo:
            lowest = at_lowest_update([r[1] for r in todo])
            group = [r for r, low in zip(todo, lowest, strict=True) if low]
            seeds_now = [r[0] for r in group]
            trainer = Trainer(
                spec,
                estimator,
                seeds_now,
                [r[1].path for r in group],
                clone,
                sessions=[sessions[seed] for seed in seeds_now],
            )
            try:
                summaries = trainer.run(num_updates(spec), progress)
            finally:
                trainer.close()
            for seed, summary in zip(seeds_now, summaries, strict=False):
                sessions[seed].finish(summary)
            diverged += trainer.diverged
            todo = [r for r in todo if not r[1].done and r[0] not in diverged]
    if diverged:
        raise DivergedError(
            f"{spec.task}/{folder_name(algo, variant)}: seed(s) {sorted(diverged)} diverged "
            f"(see their 'diverged' files); the other seeds finished"
        )
    return [run.path for _, run, _, _ in runs]
