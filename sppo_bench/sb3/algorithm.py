"""SPPO as a Stable-Baselines3 algorithm: ``SPPO("MlpPolicy", env).learn(...)``.

The algorithm is the one of :mod:`sppo_bench.core`, fed from an SB3 ``VecEnv``:

- **Whole episodes.** A collection steps the ``VecEnv`` until ``n_episodes`` episodes have
  ended (``done=True``); each env's steps are kept apart, so that an episode is one row of a
  padded ``[B, T]`` batch (``B >= n_episodes``: several envs may finish on the same step).
  Episodes still running when the collection stops are **carried to the next collection**: their
  steps keep the log-probabilities of the policy that took them, so the importance ratio of the
  clipped surrogate is taken against that behaviour policy. No step is discarded, and long
  episodes are not under-represented. A new ``learn(reset_num_timesteps=True)`` resets the envs
  and drops the carried steps.
- **Outcome.** R of an episode: ``sppo_bench.sb3.episodes.episode_outcome``.
- **Sequence critic.** The policy's value head output is the logit v; the critic is read only at
  each episode's first observation: V(s_0) = sigmoid(v(s_0)), trained by
  ``core.bce_value_loss(v, R)``.
- **Advantage.** ``core.compute_advantages("sppo", ...)``: A = R - V(s_0) on every step of the
  episode, with V(s_0) evaluated by the critic at the start of the update (no whitening).
- **Policy loss.** ``core.clipped_policy_loss`` (clip ``clip_range``, dual clip
  ``dual_clip``), reduced by ``core.aggregate`` under
  ``aggregation`` (token-mean, seq-mean-token-sum, seq-mean-token-mean).

One optimiser step per mini-batch of ``batch_size`` episodes minimises, as SB3's PPO does,
``loss = policy_loss + ent_coef * entropy_loss + vf_coef * value_loss`` with
``entropy_loss = -aggregate(H)``; gradients are clipped to ``max_grad_norm``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import (
    ActorCriticCnnPolicy,
    ActorCriticPolicy,
    BasePolicy,
)
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sppo_bench.core import (
    AGGREGATIONS,
    AdvantageInput,
    compute_advantages,
    explained_variance,
)
from sppo_bench.errors import UserError
from sppo_bench.sb3.callbacks import BoundedProgressBar, has_tensorboard
from sppo_bench.sb3.episodes import (
    Episode,
    EpisodeBatch,
    EpisodeBuffer,
    ReturnTransform,
    episode_outcome,
    new_steps,
)
from sppo_bench.sb3.losses import SPPOLosses, minibatch_losses

SelfSPPO = TypeVar("SelfSPPO", bound="SPPO")


class SPPO(OnPolicyAlgorithm):
    """Sequence-level PPO (SPPO) for sparse, verifiable-outcome episodic tasks.

    Usage is that of SB3's ``PPO``; the differences are that an update waits for ``n_episodes``
    complete episodes (there is no ``n_steps``), that the value head is a sequence critic
    V(s_0) = sigmoid(v) trained by BCE on the outcome R in {0, 1}, and that every step of an
    episode gets the advantage A = R - V(s_0) (see the module doc).

    :param policy: the policy (``"MlpPolicy"``, ``"CnnPolicy"`` or an ``ActorCriticPolicy``
        class); its value head's output is the logit v.
    :param env: the environment (a ``VecEnv``, a ``gym.Env`` or a registered id).
    :param learning_rate: learning rate, or a schedule of the remaining progress (1 -> 0).
    :param n_episodes: complete episodes per update (``B >= n_episodes`` rows).
    :param batch_size: episodes per mini-batch (one optimiser step each).
    :param n_epochs: passes over the update's episodes.
    :param clip_range: the surrogate's clip epsilon, or a schedule.
    :param dual_clip: dual clip constant c > 1 for A < 0 (``None``: off).
    :param aggregation: loss reduction over steps (``sppo_bench.core.AGGREGATIONS``).
    :param ent_coef: entropy coefficient.
    :param vf_coef: weight of the critic's BCE loss.
    :param max_grad_norm: gradient clipping norm.
    :param return_transform: maps a non-binary episode return into ``[0, 1]`` (used only when
        the last ``info`` has no ``"success"``).
    :param stats_window_size, tensorboard_log, policy_kwargs, verbose, seed, device,
        monitor_wrapper, _init_setup_model: as in SB3.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
    }
    rollout_buffer: EpisodeBuffer  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_episodes: int = 8,
        batch_size: int = 4,
        n_epochs: int = 4,
        clip_range: float | Schedule = 0.2,
        dual_clip: float | None = 3.0,
        aggregation: str = "token-mean",
        ent_coef: float = 0.0,
        vf_coef: float = 1.0,
        max_grad_norm: float = 1.0,
        return_transform: ReturnTransform | None = None,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        monitor_wrapper: bool = True,
        _init_setup_model: bool = True,
    ) -> None:
        if policy == "MultiInputPolicy":
            raise UserError("SPPO supports array observations; Dict observation spaces are not")
        if tensorboard_log is not None and not has_tensorboard():
            raise UserError(
                "tensorboard_log= needs tensorboard: pip install tensorboard, or leave it out"
            )
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=0,  # unused: a collection is n_episodes complete episodes
            gamma=1.0,
            gae_lambda=1.0,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=False,
            sde_sample_freq=-1,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            monitor_wrapper=monitor_wrapper,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if n_episodes < 1 or batch_size < 1 or n_epochs < 1:
            raise UserError(
                f"n_episodes, batch_size and n_epochs must be >= 1; got {n_episodes}, "
                f"{batch_size}, {n_epochs}"
            )
        if aggregation not in AGGREGATIONS:
            raise UserError(
                f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}"
            )
        if dual_clip is not None and dual_clip <= 1.0:
            raise UserError(f"dual_clip must be > 1.0, got {dual_clip}")
        self.n_episodes = n_episodes
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.dual_clip = dual_clip
        self.aggregation = aggregation
        self.return_transform = return_transform
        self._partial: list[dict[str, list]] = []
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if isinstance(self.observation_space, spaces.Dict):
            raise UserError("SPPO supports array observations; Dict observation spaces are not")
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.rollout_buffer = EpisodeBuffer()
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self.clip_range = FloatSchedule(self.clip_range)
        self._partial = []

    def set_random_seed(self, seed: int | None = None) -> None:
        """SB3's seeding, plus the generator of the mini-batch shuffles (seeded by ``seed``; a
        random seed when None), so that ``seed=`` fixes the update as well as the rollouts."""
        super().set_random_seed(seed)
        self._shuffle = th.Generator()
        if seed is None:
            self._shuffle.seed()
        else:
            self._shuffle.manual_seed(seed)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_partial", "_shuffle"]

    def _init_callback(self, callback: MaybeCallback, progress_bar: bool = False) -> BaseCallback:
        """SB3's callbacks, with a progress bar that stops at its total."""
        callback = super()._init_callback(callback, progress_bar=False)
        if progress_bar:
            callback = CallbackList([callback, BoundedProgressBar()])
            callback.init_callback(self)
        return callback

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        if reset_num_timesteps or self._last_obs is None:
            self._partial = []  # the envs are reset: running episodes are gone
        return super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )

    def _finish_episode(self, steps: dict[str, list], info: dict[str, Any]) -> Episode:
        outcome = episode_outcome(info, float(sum(steps["rewards"])), self.return_transform)
        if "is_success" not in info:
            assert self.ep_success_buffer is not None
            self.ep_success_buffer.append(outcome)
        return Episode(
            np.stack(steps["observations"]),
            np.stack(steps["actions"]),
            np.asarray(steps["log_probs"], dtype=np.float32),
            outcome,
        )

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: BaseBuffer | EpisodeBuffer,
        n_rollout_steps: int = 0,
    ) -> bool:
        """Step ``env`` until ``self.n_episodes`` episodes have ended; fill ``rollout_buffer``
        with them (``n_rollout_steps`` is ignored). Returns False if a callback stopped it.

        A ``VecEnv`` resets an env on ``done``; the next observation it returns is then the new
        episode's first, and the step's own ``info`` holds the ended episode's ``info``. The
        collection also stops when ``learn``'s ``total_timesteps`` are spent (it may then hold
        fewer episodes, or none if no episode ended)."""
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, EpisodeBuffer)
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        if len(self._partial) != env.num_envs:
            self._partial = [new_steps() for _ in range(env.num_envs)]
        callback.on_rollout_start()
        while (
            len(rollout_buffer.episodes) < self.n_episodes
            and self.num_timesteps < self._total_timesteps
        ):  # the budget counts the steps of unfinished episodes too
            with th.no_grad():
                obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
                actions, _, log_probs = self.policy(obs_tensor)
            actions = actions.cpu().numpy()
            log_probs = log_probs.cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                if self.policy.squash_output:
                    clipped_actions = self.policy.unscale_action(clipped_actions)
                else:
                    clipped_actions = np.clip(
                        actions, self.action_space.low, self.action_space.high
                    )
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            for i in range(env.num_envs):
                steps = self._partial[i]
                steps["observations"].append(np.array(self._last_obs[i]))  # type: ignore[index]
                steps["actions"].append(actions[i])
                steps["log_probs"].append(float(log_probs[i]))
                steps["rewards"].append(float(rewards[i]))
                if dones[i]:
                    rollout_buffer.add(self._finish_episode(steps, infos[i]))
                    self._partial[i] = new_steps()
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def sppo_advantages(self, batch: EpisodeBatch) -> tuple[th.Tensor, th.Tensor]:
        """``core.compute_advantages("sppo")`` on ``batch``: A = R - sigmoid(v(s_0)) on every
        real step, ``[B, T]``, with v read now at each row's first observation; and the critic's
        targets R, ``[B]``."""
        with th.no_grad():
            logits = self.policy.predict_values(batch.first_observations).flatten()
        out = compute_advantages(
            "sppo", AdvantageInput(batch.rewards, batch.mask, value_logits=logits)
        )
        assert out.value_targets is not None
        return out.advantages, out.value_targets

    def sppo_losses(
        self,
        batch: EpisodeBatch,
        rows: th.Tensor,
        advantages: th.Tensor,
        targets: th.Tensor,
        clip_range: float,
    ) -> SPPOLosses:
        """``sppo_bench.sb3.losses.minibatch_losses`` of the mini-batch ``rows`` ``[b]``."""
        return minibatch_losses(
            self.policy,
            batch,
            rows,
            advantages,
            targets,
            clip_range,
            self.dual_clip,
            self.aggregation,
        )

    def train(self) -> None:
        """One SPPO update on the collected episodes: ``n_epochs`` passes over shuffled
        mini-batches of ``batch_size`` episodes, one optimiser step each (see the module doc)."""
        if not self.rollout_buffer.episodes:
            warnings.warn(
                f"SPPO: no episode ended within {self.num_timesteps} steps; no update was made "
                "(an update needs complete episodes: give the env a time limit)",
                stacklevel=2,
            )
            return
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        batch = self.rollout_buffer.batch(self.device)
        advantages, targets = self.sppo_advantages(batch)
        n_rows = batch.mask.shape[0]
        logs: dict[str, list[float]] = {}
        for _ in range(self.n_epochs):
            for rows in th.randperm(n_rows, generator=self._shuffle).split(self.batch_size):
                out = self.sppo_losses(batch, rows, advantages, targets, clip_range)
                loss = (
                    out.policy.loss
                    + self.ent_coef * out.entropy_loss
                    + self.vf_coef * out.value_loss
                )
                self.policy.optimizer.zero_grad()
                loss.backward()
                grad_norm = th.nn.utils.clip_grad_norm_(
                    self.policy.parameters(), self.max_grad_norm
                )
                self.policy.optimizer.step()
                for key, value in (
                    ("policy_gradient_loss", out.policy.loss),
                    ("value_loss", out.value_loss),
                    ("entropy_loss", out.entropy_loss),
                    ("approx_kl", out.policy.approx_kl),
                    ("clip_fraction", out.policy.clip_fraction),
                    ("grad_norm", grad_norm),
                ):
                    logs.setdefault(key, []).append(float(value.item()))
        self._n_updates += self.n_epochs
        with th.no_grad():
            values = th.sigmoid(self.policy.predict_values(batch.first_observations).flatten())
        for key, series in logs.items():
            self.logger.record(f"train/{key}", float(np.mean(series)))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_variance(values, batch.outcomes))
        self.logger.record("train/value_mean", values.mean().item())
        self.logger.record("train/outcome_mean", batch.outcomes.mean().item())
        self.logger.record("train/n_episodes", n_rows)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/clip_range", clip_range)

    def learn(
        self: SelfSPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "SPPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSPPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
