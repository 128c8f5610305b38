"""Stage 1: an expert per task, Stable-Baselines3 PPO on the task's shaped dense reward.

Output, cached in ``runs/control/<task>/expert/``:

- ``policy.pt``: the SB3 policy module and its frozen observation normalisation
  (``obs_mean``, ``obs_var``, ``clip_obs``, ``epsilon``: x -> clip((x - mean) / sqrt(var + eps))).
- ``summary.json``: success rate of the deterministic expert on the sparse task (evaluation start
  states are seeds 2_000_000 + i), training timesteps and wall time.
- ``done``: written last. While training, ``checkpoint.zip`` + ``vecnormalize.pkl`` allow a
  rerun to resume where it stopped. A resumed training is another expert (SB3 restores the model
  and normalisation, not the environments' and samplers' state): ``summary.json``'s
  ``resumed_from_timesteps`` is the timestep its last process started from (0: trained in one go).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from sppo_bench.config import to_dict, write_yaml_atomic, yaml_round_trip
from sppo_bench.control.collector import collect_episodes
from sppo_bench.control.envs import make_vector_env
from sppo_bench.control.shaping import make_shaped_env
from sppo_bench.control.spec import TaskSpec, load_spec, upgrade_stored_spec
from sppo_bench.control.tasks import TaskInfo, get_task
from sppo_bench.control.variants import Variant, all_overrides, variant_stage_dir
from sppo_bench.errors import UserError
from sppo_bench.io import atomic_torch_save, atomic_write_json, read_torch_file
from sppo_bench.rundir import config_difference, stage_dir  # noqa: F401 - stage_dir: layout

EXPERT_EVAL_SEED = 2_000_000
ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


def stage_config_difference(out: Path, spec: TaskSpec, sections: Sequence[str]) -> str | None:
    """The first setting (dotted key, ``key: stored != wanted``) in which the stage folder
    ``out``'s stored ``config.yaml`` differs from ``spec`` within ``sections``; None where they
    agree or ``out`` holds no stored config. Older stored configs are read as today's
    (``upgrade_stored_spec``: a field added later reads as the value those stages used)."""
    path = out / "config.yaml"
    if not path.is_file():
        return None
    stored = upgrade_stored_spec(yaml.safe_load(path.read_text()) or {})
    wanted = yaml_round_trip(to_dict(spec))
    return config_difference(
        {s: stored.get(s) for s in sections}, {s: wanted.get(s) for s in sections}
    )


def check_stage_config(
    out: Path, spec: TaskSpec, sections: Sequence[str], overrides: Sequence[str]
) -> None:
    """Refuse to reuse a cached stage built with other settings than the overrides ask for.

    ``sections``: the top-level spec sections the stage depends on (``variants.STAGE_SECTIONS``:
    ``expert`` for the expert; ``expert``, ``policy``, ``clone`` for the clone). Only the sections
    that ``overrides`` touch are compared, so a stage cached with custom settings is reused by a
    caller that asks for nothing in particular; a caller that does ask (a profile's
    ``clone.lr=...``) gets either a matching stage or a one-line error naming the sections that
    differ.
    """
    touched = {o.split("=", 1)[0].split(".", 1)[0].strip() for o in overrides}
    differ = [s for s in sections if s in touched and stage_config_difference(out, spec, [s])]
    if differ:
        raise UserError(
            f"{str(out)!r} was built with other {', '.join(differ)} settings; "
            "use another --runs-dir or remove that folder"
        )


class ExpertActor:
    """The trained expert as a batched deterministic actor: ``obs [N, d] -> actions [N, ...]``."""

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise UserError(f"no expert at {str(path)!r}; run `sppo-bench control expert` first")
        blob = read_torch_file(path, "expert policy")
        self.policy = blob["policy"].eval()
        self.mean = blob["obs_mean"]
        self.std = np.sqrt(blob["obs_var"] + blob["epsilon"])
        self.clip = blob["clip_obs"]

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return np.clip((obs - self.mean) / self.std, -self.clip, self.clip).astype(np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        actions, _ = self.policy.predict(self.normalize(np.asarray(obs)), deterministic=True)
        return actions


def _progress_callback(out: Path, total: int, every: int, progress: bool) -> Any:
    """An SB3 callback that drives a tqdm bar and saves a resumable checkpoint every ``every``
    timesteps."""
    from stable_baselines3.common.callbacks import BaseCallback

    class Callback(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(
                total=total,
                initial=self.num_timesteps,
                desc="expert",
                unit="step",
                disable=not progress,
                mininterval=2.0,
            )
            self.last_save = self.num_timesteps

        def _on_step(self) -> bool:
            self.bar.update(self.num_timesteps - self.bar.n)
            if self.num_timesteps - self.last_save >= every:
                self.last_save = self.num_timesteps
                _save_checkpoint(self.model, out)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    return Callback()


def _save_checkpoint(model: Any, out: Path) -> None:
    tmp = out / ".checkpoint.tmp.zip"
    model.save(tmp)
    tmp.replace(out / "checkpoint.zip")
    model.get_vec_normalize_env().save(str(out / ".vecnormalize.tmp"))
    (out / ".vecnormalize.tmp").replace(out / "vecnormalize.pkl")


def _make_model(spec: TaskSpec, out: Path, seed: int) -> Any:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    cfg = spec.expert
    if cfg.activation not in ACTIVATIONS:
        raise UserError(f"expert.activation {cfg.activation!r}; valid: {', '.join(ACTIVATIONS)}")
    venv = DummyVecEnv(
        [lambda: make_shaped_env(spec.task, cfg.shaping, cfg.train_horizon)] * cfg.n_envs
    )
    venv.seed(seed)
    if (out / "checkpoint.zip").is_file() and (out / "vecnormalize.pkl").is_file():
        venv = VecNormalize.load(str(out / "vecnormalize.pkl"), venv)
        return PPO.load(out / "checkpoint.zip", env=venv, device="cpu")
    venv = VecNormalize(venv, norm_obs=True, norm_reward=cfg.norm_reward, gamma=cfg.gamma)
    policy_kwargs: dict[str, Any] = {
        "net_arch": dict(pi=list(cfg.net_arch), vf=list(cfg.net_arch)),
        "activation_fn": ACTIVATIONS[cfg.activation],
    }
    if isinstance(spec.info.cls().action_space, gym.spaces.Box):
        policy_kwargs["log_std_init"] = cfg.log_std_init
    return PPO(
        "MlpPolicy",
        venv,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        learning_rate=cfg.learning_rate,
        ent_coef=cfg.ent_coef,
        clip_range=cfg.clip_range,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        use_sde=cfg.use_sde,
        sde_sample_freq=cfg.sde_sample_freq,
        policy_kwargs=policy_kwargs,
        seed=seed,
        device="cpu",
        verbose=0,
    )


def evaluate_actor(
    task: str | TaskInfo, act: Any, episodes: int, seed_base: int, num_envs: int = 32
) -> tuple[float, list[Any]]:
    """Success rate of ``act`` on the sparse task over ``episodes`` start states
    (seeds ``seed_base + i``), and the collected episode batches."""
    batches, successes = [], []
    task = get_task(task)
    venv = make_vector_env(task, min(num_envs, episodes), backend="gymnasium")
    horizon = task.horizon
    for start in range(0, episodes, venv.num_envs):
        n = min(venv.num_envs, episodes - start)
        if n < venv.num_envs:
            venv = make_vector_env(task, n, backend="gymnasium")
        batch = collect_episodes(
            venv, act, range(seed_base + start, seed_base + start + n), horizon
        )
        batches.append(batch)
        successes.append(batch.success)
    return float(np.concatenate(successes).mean()), batches


def train_expert(
    task: str,
    runs_dir: Path = Path("runs"),
    overrides: Sequence[str] = (),
    timesteps: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    variant: Variant | None = None,
) -> Path:
    """Train (or resume, or skip if done) the task's expert; returns its folder (the variant's
    own where its overrides touch ``expert.*``). ``seed``: the training seed, stored as
    ``expert.seed`` (None: the spec's ``expert.seed``)."""
    torch.set_num_threads(1)
    overrides = all_overrides(overrides, variant)
    spec = load_spec(task, overrides)
    if timesteps is not None:
        spec.expert.total_timesteps = timesteps
    if seed is not None:
        spec.expert.seed = seed
    seed = spec.expert.seed
    out = variant_stage_dir(runs_dir, spec.task, "expert", variant)
    check_stage_config(out, spec, ["expert"], overrides)
    if (out / "done").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_yaml_atomic(out / "config.yaml", {"task": spec.task, "seed": seed, **to_dict(spec)})
    start = time.time()
    model = _make_model(spec, out, seed)
    resumed_from = int(model.num_timesteps)
    remaining = spec.expert.total_timesteps - model.num_timesteps
    if remaining > 0:
        callback = _progress_callback(out, spec.expert.total_timesteps, 50_000, progress)
        model.learn(remaining, callback=callback, reset_num_timesteps=False)
        _save_checkpoint(model, out)
    train_time = time.time() - start
    vecnorm = model.get_vec_normalize_env()
    atomic_torch_save(
        out / "policy.pt",
        {
            "policy": model.policy,
            "obs_mean": vecnorm.obs_rms.mean.copy(),
            "obs_var": vecnorm.obs_rms.var.copy(),
            "clip_obs": vecnorm.clip_obs,
            "epsilon": vecnorm.epsilon,
        },
    )
    start_eval = time.time()
    rate, _ = evaluate_actor(
        spec.info, ExpertActor(out / "policy.pt"), spec.expert.eval_episodes, EXPERT_EVAL_SEED
    )
    summary = {
        "task": spec.task,
        "success_rate": rate,
        "eval_episodes": spec.expert.eval_episodes,
        "timesteps": int(model.num_timesteps),
        "resumed_from_timesteps": resumed_from,
        "train_wall_time": train_time,
        "eval_wall_time": time.time() - start_eval,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_json(out / "done", summary)
    return out
