"""One RL loop for every estimator of ``sppo_bench.core`` on verifiable math prompts.

Per step: generate ``n`` responses for ``batch_size`` prompts (plus a greedy one per prompt for
ReMax) -> reward R in {0, 1} from ``reward_fn`` -> critic predictions (SPPO: V(s_p) at the last
prompt token; PPO-GAE: V(s_t) per response token) -> recomputed old log-probs (and reference
log-probs for an in-reward KL) -> ``compute_advantages`` -> critic update -> policy update in
mini-/micro-batches -> weight sync to the engine. One JSON row per step goes to
``<run_dir>/metrics.jsonl``; ``checkpoints/latest.pt`` (policy, critic, optimisers, step, RNG) is
written atomically every ``save_every`` steps and a rerun resumes from it. The folder follows the
run contract of ``sppo_bench.rundir`` (a rerun with other settings than ``train.steps`` is
refused; the lock; ``done`` = ``{"step": N}``).
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
from sppo_bench.llm.recipe import LLMConfig, resolve_algorithm_defaults
from sppo_bench.llm.rollout import RolloutBatch
from sppo_bench.llm.update import critic_predictions, critic_update, policy_log_probs
from sppo_bench.llm.update import policy_update as run_policy_update
from sppo_bench.rundir import RunDir

# A rerun may extend the budget: every other setting must match the stored config.
BUDGET_KEYS = ("train.steps",)
RUN_DIR_REMEDY = "use another --run-dir or remove that folder"

RewardFn = Callable[[list[str], list[str]], list[float]]
SCHEDULE_STREAM = 0  # step_generator stream of the mini-batch schedule


class LLMTrainer:
    """Build with a resolved-or-not ``LLMConfig``; ``train()`` runs (or resumes) to the end.

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
    ) -> None:
        self.cfg = cfg = resolve_algorithm_defaults(cfg)
        self.tensorboard = tensorboard
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
            row.update(_calibration(critic.start_values(predictions), reward))
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
        row.update(_rollout_stats(batch, reward, out.advantages, old_lp))
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

    def save_checkpoint(self) -> None:
        state = {
            "step": self.step,
            "policy": self.policy.state_dict(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic": self.critic.state_dict() if self.critic is not None else None,
            "critic_opt": self.critic_opt.state_dict() if self.critic_opt is not None else None,
            "rng": _rng_state(),
        }
        self.run.save_checkpoint(state)

    def load_checkpoint(self) -> bool:
        # On the CPU: ``load_state_dict`` copies weights and optimiser state onto the modules'
        # devices, and the RNG states must stay CPU ByteTensors (``set_rng_state`` refuses others).
        state = self.run.load_checkpoint(keys=("policy", "step", "rng"))
        if state is None:
            return False
        self.policy.load_state_dict(state["policy"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        if self.critic is not None:
            if state["critic"] is None:
                raise UserError(
                    f"checkpoint {self.checkpoint_path} has no critic for {self.spec.name}"
                )
            self.critic.load_state_dict(state["critic"])
            self.critic_opt.load_state_dict(state["critic_opt"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.engine.sync_weights(self.policy)
        return True

    # ----------------------------------------------------------------- loop
    def train(self, progress: bool = True) -> list[dict[str, float]]:
        """Run (or resume) to ``train.steps``; returns the rows written in this call."""
        self.run.check_config(to_dict(self.cfg), ignore=BUDGET_KEYS, remedy=RUN_DIR_REMEDY)
        with self.run.writing():
            return self._train(progress)

    def _train(self, progress: bool) -> list[dict[str, float]]:
        cfg = self.cfg
        self.run.write_config(to_dict(cfg))
        metrics = self.run.metrics(self.tensorboard)
        if self.load_checkpoint():
            metrics.truncate_after("step", self.step)
        else:
            metrics.truncate_after("step", 0)
        rows = []
        bar = tqdm(
            range(self.step, cfg.train.steps),
            desc=f"{self.spec.name}",
            disable=not progress,
            initial=self.step,
            total=cfg.train.steps,
        )
        try:
            for step in bar:
                row = {"step": step + 1, **self.train_step(step)}
                metrics.append(row)
                rows.append(row)
                self.step = step + 1
                bar.set_postfix(reward=f"{row['reward_mean']:.3f}")
                if self.step % cfg.train.save_every == 0 or self.step == cfg.train.steps:
                    self.save_checkpoint()
        finally:
            metrics.close()
        if self.step >= cfg.train.steps:
            self.run.mark_done({"step": self.step})
        return rows

    def close(self) -> None:
        if self.verifier is not None:
            self.verifier.close()


def _calibration(v: torch.Tensor, reward: torch.Tensor) -> dict[str, float]:
    """Brier score and mean V vs mean R of the critic's pre-update V(s_0) ``v`` ``[B]``."""
    return {
        "critic_brier": float(((v - reward) ** 2).mean()),
        "value_mean": float(v.mean()),
    }


def _rollout_stats(batch: RolloutBatch, reward, advantages, old_lp) -> dict[str, float]:
    mask = batch.response_mask.float()
    lengths = mask.sum(dim=1)
    return {
        "reward_mean": float(reward.mean()),
        "response_length_mean": float(lengths.mean()),
        "response_length_max": float(lengths.max()),
        "truncated_fraction": float(batch.truncated.float().mean()),
        "advantage_mean": float((advantages * mask).sum() / mask.sum().clamp_min(1)),
        "rollout_log_prob_gap": float(
            ((batch.log_probs - old_lp).abs() * mask).sum() / mask.sum().clamp_min(1)
        ),
    }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, object]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, object]) -> None:
    """Restore ``_rng_state()``. Torch's restore functions take CPU ``uint8`` tensors only, so
    each state is brought there first, wherever the checkpoint was mapped; CUDA states are
    restored for the devices that exist (a checkpoint from a machine with more GPUs keeps the
    first ones)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(_cpu_byte_tensor(state["torch"]))
    cuda = state["cuda"]
    if cuda is not None and torch.cuda.is_available():
        cuda = [_cpu_byte_tensor(s) for s in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)


def _cpu_byte_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.uint8)
