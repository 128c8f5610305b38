"""One RL loop for every estimator of ``sppo_bench.core`` on verifiable math prompts.

Per step: generate ``n`` responses for ``batch_size`` prompts (plus a greedy one per prompt for
ReMax) -> reward R in {0, 1} from ``reward_fn`` -> critic predictions (SPPO: V(s_p) at the last
prompt token; PPO-GAE: V(s_t) per response token) -> recomputed old log-probs (and reference
log-probs for an in-reward KL) -> ``compute_advantages`` -> critic update -> policy update in
mini-/micro-batches -> weight sync to the engine. The run is one ``sppo_bench.rundir.RunSession``:
one JSON row per step in ``<run_dir>/metrics.jsonl`` (the critic's under the core's names,
``value/mean``, ``value/explained_variance``, ``value/brier``), ``checkpoints/latest.pt`` (the
shared ``Checkpoint`` layout, with every RNG stream) every ``save_every`` steps, from which a rerun
resumes; a rerun with other settings than ``train.steps`` is refused; ``done`` =
``{"step": N}``.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sppo_bench.config import to_dict
from sppo_bench.core import AdvantageInput, compute_advantages, get_estimator
from sppo_bench.core.ppo import minibatch_schedule, step_generator
from sppo_bench.errors import UserError
from sppo_bench.llm.data import load_prompts
from sppo_bench.llm.engines import make_engine, pick_device
from sppo_bench.llm.models import DTYPES, build_critic, load_policy, load_tokenizer
from sppo_bench.llm.recipe import (
    LLMConfig,
    is_resolved,
    resolve_algorithm_defaults,
    upgrade_stored_recipe,
)
from sppo_bench.llm.update import (
    critic_predictions,
    critic_update,
    policy_log_probs,
    rollout_stats,
)
from sppo_bench.llm.update import policy_update as run_policy_update
from sppo_bench.rundir import (
    Checkpoint,
    RunDir,
    RunIdentity,
    RunSession,
    config_hash,
    rng_state,
    set_rng_state,
)

# A rerun may extend the budget: every other setting must match the stored config.
BUDGET_KEYS = ("train.steps",)
RUN_DIR_REMEDY = "use another --run-dir or remove that folder"

RewardFn = Callable[[list[str], list[str]], list[float]]
SCHEDULE_STREAM = 0  # step_generator stream of the mini-batch schedule


class LLMTrainer:
    """Build with a resolved-or-not ``LLMConfig``; ``train()`` runs (or resumes) to the end.
    ``session``: the run's session, already open (the command opens it before it loads a
    model); by default ``train()`` opens one for ``run_dir``.

    ``reward_fn``, ``prompts``/``golds`` and ``engine`` may be injected; by default they are the
    verifier, the recipe's training set and the recipe's engine.
    """

    def __init__(
        self,
        cfg: LLMConfig,
        run_dir: str | Path | None = None,
        reward_fn: RewardFn | None = None,
        prompts: Sequence[str] | None = None,
        golds: Sequence[str] | None = None,
        engine=None,
        tensorboard: str | Path | None = None,
        session: RunSession | None = None,
    ) -> None:
        self.cfg = cfg = cfg if is_resolved(cfg) else resolve_algorithm_defaults(cfg)
        self.tensorboard = tensorboard
        self.session = session  # given: locked, its settings checked (``open_session``)
        self.spec = get_estimator(cfg.algo.name)
        self.run_dir = Path(run_dir or cfg.train.output_dir)
        self.run = RunDir(self.run_dir)
        self.device = pick_device(cfg.train.device)
        _seed_everything(cfg.train.seed)
        self.tokenizer = load_tokenizer(cfg.model.policy)
        m = cfg.model
        self.policy = load_policy(m.policy, self.tokenizer, m.dtype, cfg.train.seed, self.device)
        self.policy.to(self.device)
        self.critic = build_critic(
            self.spec.critic_strategy,
            cfg.critic.model,
            self.tokenizer,
            m.dtype,
            cfg.train.seed + 1,
            self.device,
        )
        if cfg.model.init:
            from sppo_bench.llm.warm_start import load_initial_weights

            load_initial_weights(cfg, self.policy, self.critic)
        if cfg.model.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.ref = None
        if cfg.algo.kl_coef > 0:
            self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False)
        a = cfg.actor
        self.actor_opt = torch.optim.AdamW(
            self.policy.parameters(),
            lr=cfg.algo.lr,
            betas=tuple(a.betas),
            weight_decay=a.weight_decay,
        )
        self.critic_opt = None
        if self.critic is not None:
            self.critic.to(self.device)
            if cfg.model.gradient_checkpointing:
                self.critic.backbone.gradient_checkpointing_enable()
            self.critic_opt = torch.optim.AdamW(
                self.critic.parameters(),
                lr=cfg.algo.critic_lr,
                weight_decay=cfg.critic.weight_decay,
            )
        if prompts is None:
            prompts, golds = load_prompts(cfg, self.tokenizer)
        if golds is None or len(golds) != len(prompts):
            raise UserError("the trainer needs one gold answer per prompt")
        self.prompts, self.golds = list(prompts), list(golds)
        self.verifier = None
        if reward_fn is None:
            from sppo_bench.llm.verifier import Verifier

            self.verifier = Verifier(cfg.train.reward_workers, cfg.train.reward_timeout_s)
            reward_fn = self.verifier.score_batch
        self.reward_fn = reward_fn
        if engine is None:
            engine = make_engine(cfg, self.policy, self.tokenizer)
        self.engine = engine
        self.step = 0

    # ----------------------------------------------------------------- helpers
    def autocast(self):
        dtype = DTYPES[self.cfg.model.compute_dtype]
        if self.device.type == "cuda" and dtype != torch.float32:
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def prompt_indices(self, step: int) -> list[int]:
        """Prompts of ``step``: a fresh permutation of the set per epoch, from (seed, epoch)."""
        n, size = len(self.prompts), self.cfg.train.batch_size
        out = []
        for pos in range(step * size, (step + 1) * size):
            epoch, offset = divmod(pos, n)
            perm = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(n)
            out.append(int(perm[offset]))
        return out

    # ----------------------------------------------------------------- one step
    def _clock(self) -> float:
        """``perf_counter`` once the device's queued work is done (CUDA kernels run async), so
        that each phase's time is its own."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def train_step(self, step: int) -> dict[str, float]:
        cfg, r = self.cfg, self.cfg.rollout
        n = cfg.algo.n_samples
        times = {}
        idx = self.prompt_indices(step)
        prompts = [self.prompts[i] for i in idx]
        t0 = self._clock()
        self.engine.wake_up()
        batch = self.engine.generate(prompts, n, r.temperature, r.top_p, r.max_new_tokens)
        greedy = None
        if self.spec.needs_greedy_baseline:
            greedy = self.engine.generate(prompts, 1, 0.0, 1.0, r.max_new_tokens)
        self.engine.sleep()
        times["time_generation"] = self._clock() - t0

        t0 = self._clock()
        before = self.verifier.stats if self.verifier is not None else {}
        golds = [self.golds[idx[i]] for i in batch.prompt_index.tolist()]
        reward = torch.tensor(self.reward_fn(batch.texts, golds), dtype=torch.float32)
        baseline = None
        if greedy is not None:
            greedy_golds = [self.golds[idx[i]] for i in greedy.prompt_index.tolist()]
            greedy_r = torch.tensor(self.reward_fn(greedy.texts, greedy_golds))
            baseline = greedy_r[batch.prompt_index].float().to(self.device)
        times["time_reward"] = self._clock() - t0

        batch = batch.to(self.device)
        reward = reward.to(self.device)
        mask = batch.response_mask.float()
        micro = cfg.train.micro_batch_size
        critic = self.spec.critic_strategy
        t0 = self._clock()
        predictions = None
        if self.critic is not None:
            predictions = critic_predictions(
                self.critic, self.spec.critic_strategy, batch, micro, self.autocast
            )
        times["time_critic"] = self._clock() - t0

        t0 = self._clock()
        old_lp = policy_log_probs(self.policy, batch, micro, r.temperature, self.autocast)
        rewards = torch.zeros_like(mask)
        last = (mask.sum(dim=1).long() - 1).clamp_min(0)
        rewards[torch.arange(len(batch), device=self.device), last] = reward
        row: dict[str, float] = {}
        if self.ref is not None:
            ref_lp = policy_log_probs(self.ref, batch, micro, r.temperature, self.autocast)
            kl = (old_lp - ref_lp) * mask
            rewards = rewards - cfg.algo.kl_coef * kl
            row["kl_ref"] = float(kl.sum() / mask.sum().clamp_min(1))
        out = compute_advantages(
            self.spec.name,
            AdvantageInput(
                rewards=rewards,
                mask=mask,
                group_ids=batch.prompt_index,
                baseline_rewards=baseline,
                **(critic.advantage_inputs(predictions) if critic else {}),
            ),
            **self.spec.configured_params(cfg.algo.estimator_params),
        )
        times["time_update"] = self._clock() - t0

        # one shuffled schedule of mini-batches for the critic and the policy phase
        rows_per_mini = cfg.algo.mini_batch_size * n
        generator = step_generator(cfg.train.seed, step, SCHEDULE_STREAM)
        schedule = minibatch_schedule(len(batch), cfg.algo.epochs, rows_per_mini, generator)
        settings = cfg.algo.settings(cfg.algo.value_clip, micro)
        if self.critic is not None:
            t0 = self._clock()
            row.update(
                critic_update(
                    self.critic,
                    critic,
                    self.critic_opt,
                    batch,
                    out.value_targets,
                    predictions,
                    schedule,
                    settings,
                    autocast=self.autocast,
                )
            )
            row.update(critic.diagnostics(predictions, out.value_targets, mask))
            row.update(critic.brier(predictions, reward))
            times["time_critic"] += self._clock() - t0

        if step >= cfg.critic.warmup_steps or self.critic is None:
            t0 = self._clock()
            self._set_actor_lr(step - (cfg.critic.warmup_steps if self.critic is not None else 0))
            row.update(
                run_policy_update(
                    self.policy,
                    self.actor_opt,
                    batch,
                    old_lp,
                    out.advantages,
                    schedule,
                    settings,
                    r.temperature,
                    autocast=self.autocast,
                )
            )
            times["time_update"] += self._clock() - t0
            t0 = self._clock()
            self.engine.sync_weights(self.policy)
            times["time_weight_sync"] = self._clock() - t0
        else:
            times["time_weight_sync"] = 0.0
        row.update(rollout_stats(batch, reward, out.advantages, old_lp))
        times["time_step"] = sum(times.values())
        row["tokens_per_s"] = float(mask.sum()) / max(times["time_generation"], 1e-9)
        row.update(times)
        if self.verifier is not None:
            after = self.verifier.stats  # this step's counts (the verifier's are cumulative)
            row.update({f"verifier_{k}": v - before.get(k, 0) for k, v in after.items()})
        return row

    def _set_actor_lr(self, updates_before: int) -> None:
        """Linear lr warm-up over the first ``actor.warmup_steps`` policy-updating steps."""
        a = self.cfg.actor
        scale = min(1.0, (updates_before + 1) / a.warmup_steps) if a.warmup_steps > 0 else 1.0
        for group in self.actor_opt.param_groups:
            group["lr"] = self.cfg.algo.lr * scale

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run.checkpoint_path

    def checkpoint(self) -> Checkpoint:
        """The trainer's state in the shared layout (with every global RNG stream)."""
        critic = self.critic is not None
        return Checkpoint(
            self.step,
            {
                "policy": self.policy.state_dict(),
                "critic": self.critic.state_dict() if critic else None,
            },
            {
                "policy": self.actor_opt.state_dict(),
                "critic": self.critic_opt.state_dict() if critic else None,
            },
            rng_state(),
            {"step": self.step},
        )

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (read onto the CPU: ``load_state_dict`` copies onto the modules'
        devices, and the RNG states must stay CPU ByteTensors)."""
        ckpt.load_network("policy", self.policy, self.checkpoint_path)
        self.actor_opt.load_state_dict(ckpt.optimizers["policy"])
        if self.critic is not None:
            ckpt.load_network("critic", self.critic, self.checkpoint_path)
            self.critic_opt.load_state_dict(ckpt.optimizers["critic"])
        if ckpt.rng is not None:
            set_rng_state(ckpt.rng)
        self.step = ckpt.step
        self.engine.sync_weights(self.policy)

    def load_checkpoint(self) -> bool:
        """Restore the run folder's checkpoint, if any (no checks: ``RunSession.resume``)."""
        ckpt = self.run.read_checkpoint()
        if ckpt is not None:
            self.restore(ckpt)
        return ckpt is not None

    # ----------------------------------------------------------------- loop
    def train(self, progress: bool = True) -> list[dict[str, float]]:
        """Run (or resume) to ``train.steps``; returns the rows written in this call."""
        if self.session is not None:
            return self._train(self.session, progress)
        with open_session(self.cfg, self.run_dir, self.tensorboard) as session:
            return self._train(session, progress)

    def _train(self, session: RunSession, progress: bool) -> list[dict[str, float]]:
        cfg = self.cfg
        session.dir.write_config(to_dict(cfg))
        ckpt = session.resume()
        if ckpt is not None:
            self.restore(ckpt)
        rows = []
        bar = tqdm(
            range(self.step, cfg.train.steps),
            desc=f"{self.spec.name}",
            disable=not progress,
            initial=self.step,
            total=cfg.train.steps,
        )
        for step in bar:
            row = {"step": step + 1, **self.train_step(step)}
            session.append(row)
            rows.append(row)
            self.step = step + 1
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}")
            if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                session.save(self.checkpoint())
        session.metrics.close()
        if self.step >= cfg.train.steps:
            session.finish({"step": self.step})
        return rows

    def close(self) -> None:
        if self.verifier is not None:
            self.verifier.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_identity(cfg: LLMConfig) -> RunIdentity:
    """What makes an LLM run: its training set, algorithm and settings (less the budget)."""
    return RunIdentity(cfg.data.train, cfg.algo.name, None, config_hash(to_dict(cfg), BUDGET_KEYS))


def open_session(
    cfg: LLMConfig, run_dir: str | Path, tensorboard: str | Path | None = None
) -> RunSession:
    """The session of ``cfg``'s run in ``run_dir``, its stored settings checked (one line if they
    differ); enter it (``with``) to hold the lock."""
    RunDir(run_dir).check_config(
        to_dict(cfg), upgrade_stored_recipe, ignore=BUDGET_KEYS, remedy=RUN_DIR_REMEDY
    )
    return RunSession(run_dir, run_identity(cfg), "step", 1, tensorboard)
