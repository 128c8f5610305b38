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
- **Outcome.** R of an episode is ``info["success"]`` of its last step where present, otherwise
  its undiscounted return (the ``Monitor``'s ``info["episode"]["r"]`` where present, which is the
  raw return even under ``VecNormalize``). R must be 0 or 1; a non-binary R is a one-line
  ``UserError`` unless ``return_transform`` maps the return into ``[0, 1]``.
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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.callbacks import BaseCallback
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
    aggregate,
    bce_value_loss,
    clipped_policy_loss,
    compute_advantages,
    explained_variance,
)
from sppo_bench.core.losses import PolicyLossOutput
from sppo_bench.errors import UserError

SelfSPPO = TypeVar("SelfSPPO", bound="SPPO")
ReturnTransform = Callable[[float], float]


@dataclass
class Episode:
    """One complete episode of length ``L``.

    observations: ``[L, *obs_shape]``; actions: ``[L, *action_shape]`` (as sampled, before
    clipping to the action bounds); log_probs: ``[L]`` of the behaviour policy; outcome: R.
    """

    observations: np.ndarray
    actions: np.ndarray
    log_probs: np.ndarray
    outcome: float

    def __len__(self) -> int:
        return len(self.log_probs)


@dataclass
class EpisodeBatch:
    """Episodes padded to ``T`` steps: ``observations [B, T, *obs]``, ``actions [B, T, *act]``,
    ``old_log_probs [B, T]``, ``mask [B, T]``, ``rewards [B, T]`` (R on each row's last real
    step, 0 elsewhere), ``outcomes [B]``, ``first_observations [B, *obs]``."""

    observations: th.Tensor
    actions: th.Tensor
    old_log_probs: th.Tensor
    mask: th.Tensor
    rewards: th.Tensor
    outcomes: th.Tensor
    first_observations: th.Tensor


@dataclass
class SPPOLosses:
    """policy: the core's ``PolicyLossOutput`` (loss, approx_kl, clip_fraction);
    entropy_loss: -aggregate(H); value_loss: BCE(v(s_0), R). Scalars."""

    policy: PolicyLossOutput
    entropy_loss: th.Tensor
    value_loss: th.Tensor


class EpisodeBuffer:
    """The complete episodes of one collection (``SPPO.rollout_buffer``)."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []

    def reset(self) -> None:
        self.episodes = []

    def add(self, episode: Episode) -> None:
        self.episodes.append(episode)

    @property
    def n_steps(self) -> int:
        """Steps in all episodes."""
        return sum(len(e) for e in self.episodes)

    def batch(self, device: th.device | str = "cpu") -> EpisodeBatch:
        """The episodes as one padded ``EpisodeBatch`` (padding repeats each row's last step's
        observation and action, so that the policy can be evaluated on it; the mask hides it)."""
        if not self.episodes:
            raise UserError("the episode buffer is empty; collect episodes before training")
        horizon = max(len(e) for e in self.episodes)

        def pad(x: np.ndarray) -> np.ndarray:
            extra = horizon - len(x)
            return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x

        lengths = th.tensor([len(e) for e in self.episodes])
        mask = (th.arange(horizon)[None, :] < lengths[:, None]).float()
        outcomes = th.tensor([e.outcome for e in self.episodes], dtype=th.float32)
        rewards = th.zeros_like(mask)
        rewards[th.arange(len(lengths)), lengths - 1] = outcomes
        old = th.as_tensor(np.stack([pad(e.log_probs.astype(np.float32)) for e in self.episodes]))
        obs = th.as_tensor(np.stack([pad(e.observations) for e in self.episodes]))
        actions = th.as_tensor(np.stack([pad(e.actions) for e in self.episodes]))
        first = th.as_tensor(np.stack([e.observations[0] for e in self.episodes]))
        tensors = (obs, actions, old * mask, mask, rewards, outcomes, first)
        return EpisodeBatch(*(t.to(device) for t in tensors))


def episode_outcome(
    info: dict[str, Any], summed_reward: float, return_transform: ReturnTransform | None
) -> float:
    """R of an episode from its last step's ``info`` (see the module doc)."""
    if "success" in info:
        return float(bool(info["success"]))
    episode_return = float(info["episode"]["r"]) if "episode" in info else float(summed_reward)
    if return_transform is not None:
        outcome = float(return_transform(episode_return))
        if not 0.0 <= outcome <= 1.0:
            raise UserError(
                f"return_transform mapped the episode return {episode_return:g} to {outcome:g}; "
                "SPPO's outcome must lie in [0, 1]"
            )
        return outcome
    if episode_return not in (0.0, 1.0):
        raise UserError(
            f"SPPO needs a binary outcome, but an episode returned {episode_return:g} and its "
            'last info has no "success"; pass return_transform= to map returns into [0, 1]'
        )
    return episode_return


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

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_partial"]

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
        episode's first, and the step's own ``info`` holds the ended episode's ``info``."""
        assert self._last_obs is not None, "No previous observation was provided"
        assert isinstance(rollout_buffer, EpisodeBuffer)
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        if len(self._partial) != env.num_envs:
            self._partial = [_new_steps() for _ in range(env.num_envs)]
        callback.on_rollout_start()
        while len(rollout_buffer.episodes) < self.n_episodes:
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
                    self._partial[i] = _new_steps()
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
        """The losses of the mini-batch ``rows`` ``[b]`` of ``batch``: the core's clipped
        surrogate and entropy under ``self.aggregation`` over ``[b, T]``, and the core's BCE of
        v(s_0) ``[b]`` against R ``[b]``."""
        mask = batch.mask[rows]
        real = mask.bool()
        actions = batch.actions[rows][real]
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.long().flatten()
        dist = self.policy.get_distribution(batch.observations[rows][real])
        log_prob_flat = dist.log_prob(actions)
        entropy_flat = dist.entropy()
        if entropy_flat is None:  # no closed form: -log pi as the estimate, as SB3's PPO does
            entropy_flat = -log_prob_flat
        log_probs = th.zeros_like(mask).index_put((real,), log_prob_flat)
        entropy = th.zeros_like(mask).index_put((real,), entropy_flat)
        policy = clipped_policy_loss(
            log_probs,
            batch.old_log_probs[rows],
            advantages[rows],
            mask,
            clip_eps=clip_range,
            dual_clip=self.dual_clip,
            aggregation=self.aggregation,
        )
        entropy_loss = -aggregate(entropy, mask, self.aggregation)
        value_logits = self.policy.predict_values(batch.first_observations[rows]).flatten()
        return SPPOLosses(policy, entropy_loss, bce_value_loss(value_logits, targets[rows]))

    def train(self) -> None:
        """One SPPO update on the collected episodes: ``n_epochs`` passes over shuffled
        mini-batches of ``batch_size`` episodes, one optimiser step each (see the module doc)."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = float(self.clip_range(self._current_progress_remaining))  # type: ignore[operator]
        batch = self.rollout_buffer.batch(self.device)
        advantages, targets = self.sppo_advantages(batch)
        n_rows = batch.mask.shape[0]
        logs: dict[str, list[float]] = {}
        for _ in range(self.n_epochs):
            for rows in th.randperm(n_rows).split(self.batch_size):
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


def _new_steps() -> dict[str, list]:
    return {"observations": [], "actions": [], "log_probs": [], "rewards": []}
