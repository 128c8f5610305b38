"""``sppo_bench.sb3``: SPPO as a Stable-Baselines3 algorithm, and its PPO-GAE comparison."""

from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import LinearSchedule

import sppo_bench.control  # noqa: F401  (registers the suite's tasks)
from sppo_bench.control.cloning import build_policy, fit, save_policy
from sppo_bench.control.spec import load_spec
from sppo_bench.control.tasks import TASKS
from sppo_bench.core import (
    AdvantageInput,
    aggregate,
    bce_value_loss,
    clipped_policy_loss,
    compute_advantages,
)
from sppo_bench.errors import UserError
from sppo_bench.sb3 import (
    SPPO,
    Episode,
    EpisodeBuffer,
    clone_state_dict,
    episode_outcome,
    make_algorithm,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Small MLPs: one torch thread (faster here, and the CPU-time budgets count work, not the
    spinning of idle threads on a shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BANDIT_P = (0.1, 0.2, 0.3, 0.9)


class SparseBandit(gym.Env):
    """One state, ``len(p)`` arms, one step: success (reward 1) with probability ``p[a]``."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, p: tuple[float, ...] = BANDIT_P, report_success: bool = True) -> None:
        self.p = p
        self.report_success = report_success
        self.action_space = gym.spaces.Discrete(len(p))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        success = bool(self.np_random.random() < self.p[int(action)])
        info = {"success": success} if self.report_success else {}
        return np.zeros(1, np.float32), float(success), True, False, info


class Countdown(gym.Env):
    """Episode ``k`` lasts ``length`` steps; obs = (steps taken, length); the last step's reward
    is ``outcome``; continuous actions (to exercise ``Box`` action spaces)."""

    observation_space = gym.spaces.Box(0.0, 100.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, length: int = 3, outcome: float = 1.0) -> None:
        self.length, self.outcome, self.t = length, outcome, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.length], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.length
        return self._obs(), self.outcome if done else 0.0, done, False, {}


def _bandit_success(model: SPPO) -> float:
    """Exact expected success of the stochastic policy on the bandit: sum_a pi(a) p[a]."""
    with torch.no_grad():
        probs = model.policy.get_distribution(torch.zeros(1, 1)).distribution.probs[0]
    return float((probs * torch.tensor(BANDIT_P)).sum())


def test_bandit_env_passes_sb3_check_env() -> None:
    check_env(SparseBandit())
    check_env(Countdown())


@pytest.mark.parametrize(
    "env_id", ["sppo_bench/PrecisionCartPole-v0", "sppo_bench/SparsePendulum-v0"]
)
def test_smoke_learn_predict_evaluate_on_vec_env(env_id: str) -> None:
    """Discrete and continuous suite tasks, 3 envs: learn, predict (single and batched obs),
    evaluate_policy; the collected episodes end with done and each row is one episode."""
    limit = {"max_episode_steps": 50}  # Pendulum's 1000 steps cut short (gym.make's TimeLimit)
    env = make_vec_env(env_id, n_envs=3, seed=0, env_kwargs=limit)
    model = SPPO("MlpPolicy", env, n_episodes=3, batch_size=2, n_epochs=1, seed=0)
    model.learn(600)
    assert 600 <= model.num_timesteps < 603  # the budget ends the last collection
    episodes = model.rollout_buffer.episodes
    assert len(episodes) >= 1
    for episode in episodes:
        assert episode.observations.shape == (len(episode), *env.observation_space.shape)
        assert episode.outcome in (0.0, 1.0)
    obs = env.reset()
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (3, *env.action_space.shape)
    single, _ = model.predict(obs[0])
    assert env.action_space.contains(single.astype(env.action_space.dtype))
    mean, _ = evaluate_policy(model, env, n_eval_episodes=3)
    assert 0.0 <= mean <= 1.0


def test_episode_boundaries_per_env_and_carry_over() -> None:
    """Envs with episodes of 2, 3 and 5 steps: every collected episode is one env's steps from
    its reset to its done, in order; steps of unfinished episodes are carried, never lost."""
    env = make_vec_env(Countdown, n_envs=3, seed=0)
    for i, length in enumerate((2, 3, 5)):
        env.envs[i].unwrapped.length = length
    model = SPPO("MlpPolicy", env, n_episodes=3, batch_size=2, n_epochs=1, seed=0)
    model.learn(30)
    model._total_timesteps = 10**9  # collections outside learn(): no budget
    used = 0
    for _ in range(3):
        steps_before = model.num_timesteps
        carried = sum(len(p["log_probs"]) for p in model._partial)
        model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer)
        episodes = model.rollout_buffer.episodes
        assert len(episodes) >= 3
        for episode in episodes:
            length = int(episode.observations[0, 1])
            np.testing.assert_array_equal(episode.observations[:, 0], np.arange(length))
            assert len(episode) == length and episode.actions.shape == (length, 2)
        now_carried = sum(len(p["log_probs"]) for p in model._partial)
        collected = model.num_timesteps - steps_before
        assert sum(len(e) for e in episodes) + now_carried == carried + collected
        used += len(episodes)
    assert used >= 9


def test_advantages_and_losses_equal_the_core() -> None:
    """On a collected batch, SPPO's advantage, surrogate, entropy and critic losses equal the
    core's functions applied to per-episode evaluations made here, step by step."""
    env = make_vec_env(lambda: gym.make("sppo_bench/PrecisionCartPole-v0"), n_envs=2, seed=1)
    model = SPPO("MlpPolicy", env, n_episodes=5, dual_clip=3.0, aggregation="seq-mean-token-mean")
    model.learn(1)  # sets the model up, then perturb the policy so that ratios != 1
    model._total_timesteps = 10**9  # collections outside learn(): no budget
    model.collect_rollouts(model.env, model._init_callback(None), model.rollout_buffer)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = model.rollout_buffer.batch()
    episodes = model.rollout_buffer.episodes
    advantages, targets = model.sppo_advantages(batch)
    rows = torch.arange(len(episodes))
    out = model.sppo_losses(batch, rows, advantages, targets, clip_range=0.2)

    horizon = max(len(e) for e in episodes)
    mask = torch.zeros(len(episodes), horizon)
    old, new, ent, adv = (torch.zeros_like(mask) for _ in range(4))
    logits, outcomes = [], []
    for b, e in enumerate(episodes):
        n = len(e)
        obs = torch.as_tensor(e.observations)
        with torch.no_grad():
            _, log_prob, entropy = model.policy.evaluate_actions(obs, torch.as_tensor(e.actions))
            v0 = model.policy.predict_values(obs[:1])[0, 0]
        mask[b, :n] = 1
        old[b, :n] = torch.as_tensor(e.log_probs)
        new[b, :n], ent[b, :n] = log_prob, entropy
        adv[b, :n] = e.outcome - torch.sigmoid(v0)
        logits.append(v0)
        outcomes.append(e.outcome)
    logits_t, outcomes_t = torch.stack(logits), torch.tensor(outcomes)
    rewards = torch.zeros_like(mask)
    rewards[rows, mask.sum(1).long() - 1] = outcomes_t
    core = compute_advantages("sppo", AdvantageInput(rewards, mask, value_logits=logits_t))
    torch.testing.assert_close(advantages, adv)
    torch.testing.assert_close(advantages, core.advantages)
    torch.testing.assert_close(targets, outcomes_t)
    expected = clipped_policy_loss(new, old, adv, mask, 0.2, 3.0, "seq-mean-token-mean")
    assert expected.clip_fraction > 0  # the perturbation moved the ratios
    torch.testing.assert_close(out.policy.loss, expected.loss)
    torch.testing.assert_close(out.policy.approx_kl, expected.approx_kl)
    torch.testing.assert_close(out.policy.clip_fraction, expected.clip_fraction)
    torch.testing.assert_close(out.entropy_loss, -aggregate(ent, mask, "seq-mean-token-mean"))
    torch.testing.assert_close(out.value_loss, bce_value_loss(logits_t, outcomes_t))


def test_save_load_round_trip_gives_identical_actions(tmp_path: Path) -> None:
    env = make_vec_env(
        "sppo_bench/SparsePendulum-v0",
        n_envs=2,
        seed=0,
        env_kwargs={"max_episode_steps": 100},
    )
    model = SPPO("MlpPolicy", env, n_episodes=2, clip_range=0.3, dual_clip=2.0, seed=0)
    model.learn(400)
    model.save(tmp_path / "sppo")
    loaded = SPPO.load(tmp_path / "sppo", env=env)
    obs = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float32)
    a, _ = model.predict(obs, deterministic=True)
    b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    assert (loaded.n_episodes, loaded.dual_clip, loaded.clip_range(1.0)) == (2, 2.0, 0.3)
    for key, value in model.policy.state_dict().items():
        torch.testing.assert_close(loaded.policy.state_dict()[key], value)
    loaded.learn(200, reset_num_timesteps=False)  # it trains on after loading
    assert loaded.num_timesteps >= model.num_timesteps + 200


def test_non_binary_return_is_a_user_error_unless_transformed() -> None:
    with pytest.raises(UserError, match="binary outcome") as err:
        SPPO("MlpPolicy", Countdown(outcome=3.0), n_episodes=2).learn(10)
    assert "\n" not in str(err.value)
    model = SPPO(
        "MlpPolicy", Countdown(outcome=3.0), n_episodes=2, return_transform=lambda r: r / 4.0
    )
    model.learn(10)
    assert {e.outcome for e in model.rollout_buffer.episodes} == {0.75}
    with pytest.raises(UserError, match="must lie in"):
        SPPO("MlpPolicy", Countdown(outcome=3.0), return_transform=lambda r: r).learn(10)


def test_outcome_from_info_success_over_return() -> None:
    """``info["success"]`` wins over the return; without it the (binary) return is R."""
    with_info = SPPO("MlpPolicy", SparseBandit(), n_episodes=64, seed=0)
    without = SPPO("MlpPolicy", SparseBandit(report_success=False), n_episodes=64, seed=0)
    for model in (with_info, without):
        model.learn(64)
        outcomes = [e.outcome for e in model.rollout_buffer.episodes]
        assert set(outcomes) == {0.0, 1.0}
        assert list(model.ep_success_buffer)[-len(outcomes) :] == outcomes


def test_episode_outcome_precedence() -> None:
    """info["success"] over the Monitor's raw return over the summed (possibly normalised)
    rewards; the transform applies to returns only."""
    half = lambda r: r / 2.0  # noqa: E731
    assert episode_outcome({"success": True, "episode": {"r": 0.0}}, 0.0, None) == 1.0
    assert episode_outcome({"success": False}, 1.0, half) == 0.0
    assert episode_outcome({"episode": {"r": 1.0}}, 0.37, None) == 1.0
    assert episode_outcome({}, 0.0, None) == 0.0
    assert episode_outcome({"episode": {"r": 2.0}}, 0.5, half) == 1.0
    with pytest.raises(UserError, match="binary outcome"):
        episode_outcome({}, 0.37, None)


def test_bad_settings_are_user_errors() -> None:
    for kwargs, message in (
        ({"n_episodes": 0}, "must be >= 1"),
        ({"aggregation": "mean"}, "unknown aggregation"),
        ({"dual_clip": 1.0}, "dual_clip"),
    ):
        with pytest.raises(UserError, match=message):
            SPPO("MlpPolicy", SparseBandit(), **kwargs)


def test_bandit_success_rises_within_a_small_budget() -> None:
    """Uniform start: success = mean(p) = 0.375; 1,600 one-step episodes lift it above 0.6."""
    start = time.process_time()  # CPU time: the budget, whatever else shares the machine
    env = make_vec_env(SparseBandit, n_envs=4, seed=0)
    model = SPPO("MlpPolicy", env, n_episodes=32, batch_size=8, learning_rate=3e-3, seed=0)
    before = _bandit_success(model)
    model.learn(1600)
    after = _bandit_success(model)
    assert abs(before - np.mean(BANDIT_P)) < 0.02
    print(f"bandit success: {before:.3f} -> {after:.3f}")
    assert after > 0.6 > before
    assert model.logger.name_to_value["train/outcome_mean"] > before
    assert time.process_time() - start < 60, time.process_time() - start


def _noisy_mountaincar_clone(path: Path, idle: float = 0.8) -> None:
    """A clone of the project's kind (``build_policy`` + ``fit``) of a demonstrator that pushes
    along the velocity but idles (action 1) with probability ``idle``: it pumps, unreliably."""
    spec = load_spec("mountaincar", ["clone.epochs=8", "clone.lr=0.003"])
    rng = np.random.default_rng(0)
    obs = np.stack([rng.uniform(-1.2, 0.6, 4000), rng.uniform(-0.07, 0.07, 4000)], 1)
    actions = np.where(rng.random(4000) < idle, 1, np.where(obs[:, 1] > 0, 2, 0))
    torch.manual_seed(0)
    policy = build_policy(spec)
    fit(policy, obs.astype(np.float32), actions, spec, progress=False)
    save_policy(path, policy, spec)


def _mountaincar_success(model: SPPO, n: int = 32) -> float:
    env = make_vec_env("sppo_bench/SparseMountainCar-v0", n_envs=n, seed=123)
    rewards, _ = evaluate_policy(
        model, env, n_eval_episodes=n, deterministic=False, return_episode_rewards=True
    )
    return float(np.mean(rewards))


def test_mountaincar_from_clone_success_rises(tmp_path: Path) -> None:
    """SparseMountainCar from an unreliable clone: the stochastic success rate on 32 fixed
    start states, averaged over seeds 0-2, rises after 30k steps of SPPO (the clone loads
    exactly)."""
    start = time.process_time()
    _noisy_mountaincar_clone(tmp_path / "policy.pt")
    before, after = [], []
    for seed in range(3):
        env = make_vec_env("sppo_bench/SparseMountainCar-v0", n_envs=8, seed=seed)
        model = SPPO("MlpPolicy", env, n_episodes=8, batch_size=4, learning_rate=1e-3, seed=seed)
        model.policy.load_state_dict(clone_state_dict(tmp_path / "policy.pt", model.policy))
        before.append(_mountaincar_success(model))
        model.learn(30_000)
        after.append(_mountaincar_success(model))
    print(f"SparseMountainCar success: {before} -> {after}")
    assert np.mean(before) < 0.5 and np.mean(after) >= np.mean(before) + 0.3, (before, after)
    assert time.process_time() - start < 90, time.process_time() - start


def test_clone_state_dict_reproduces_the_clone(tmp_path: Path) -> None:
    """The SB3 policy's logits equal the project's clone's, normalisation folded in; a policy of
    other shape is a one-line UserError."""
    spec = load_spec("mountaincar")
    torch.manual_seed(0)
    clone = build_policy(spec)
    clone.set_normalization(np.array([-0.5, 0.01]), np.array([0.4, 0.03]))
    save_policy(tmp_path / "policy.pt", clone, spec)
    model = SPPO("MlpPolicy", "sppo_bench/SparseMountainCar-v0")
    critic = {k: v.clone() for k, v in model.policy.state_dict().items() if "value" in k}
    model.policy.load_state_dict(clone_state_dict(tmp_path / "policy.pt", model.policy))
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(64, 2)), dtype=torch.float32)
    with torch.no_grad():
        got = model.policy.get_distribution(obs).distribution.logits
        torch.testing.assert_close(got, torch.log_softmax(clone(obs), -1))
    for key, value in critic.items():
        torch.testing.assert_close(model.policy.state_dict()[key], value)
    other = SPPO("MlpPolicy", "sppo_bench/SparseMountainCar-v0", policy_kwargs={"net_arch": [32]})
    with pytest.raises(UserError, match="does not fit"):
        clone_state_dict(tmp_path / "policy.pt", other.policy)


class _Count(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.steps = self.rollouts = 0

    def _on_step(self) -> bool:
        self.steps += 1
        return True

    def _on_rollout_end(self) -> None:
        self.rollouts += 1


def test_callback_progress_bar_csv_log_and_schedules(tmp_path: Path) -> None:
    """A callback sees every vec-env step and rollout; the CSV log has SB3's and SPPO's keys;
    linear schedules of learning rate and clip range decay across the run."""
    env = make_vec_env(SparseBandit, n_envs=2, seed=0)
    model = SPPO(
        "MlpPolicy",
        env,
        n_episodes=8,
        learning_rate=LinearSchedule(1e-3, 1e-4, 1.0),
        clip_range=LinearSchedule(0.3, 0.1, 1.0),
        seed=0,
    )
    model.set_logger(configure(str(tmp_path), ["csv"]))
    callback = _Count()
    model.learn(80, callback=callback, progress_bar=True)
    assert callback.steps == model.num_timesteps // 2 and callback.rollouts == 10
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    keys = {"train/value_loss", "train/policy_gradient_loss", "rollout/success_rate"}
    assert keys <= set(rows[0])
    trained = [r for r in rows if r["train/learning_rate"]]
    lr = [float(r["train/learning_rate"]) for r in trained]
    clip = [float(r["train/clip_range"]) for r in trained]
    assert lr == sorted(lr, reverse=True) and lr[0] > lr[-1]
    assert clip == sorted(clip, reverse=True) and clip[0] > clip[-1]


def test_seeding_is_reproducible() -> None:
    runs = []
    for _ in range(2):
        model = SPPO(
            "MlpPolicy", make_vec_env(SparseBandit, n_envs=2, seed=3), n_episodes=8, seed=3
        )
        model.learn(64)
        runs.append([p.detach().clone() for p in model.policy.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b)


def test_tensorboard_log_writes_readable_event_files(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the dev extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = SPPO("MlpPolicy", SparseBandit(), n_episodes=8, tensorboard_log=str(tmp_path))
    model.learn(32)
    runs = sorted(tmp_path.iterdir())
    assert [r.name for r in runs] == ["SPPO_1"]
    assert list(runs[0].glob("events.out.tfevents.*"))
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/value_loss", "train/policy_gradient_loss", "rollout/success_rate"} <= tags
    # SB3 dumps an iteration's log before its update: 4 collections, 3 updates' train/ rows
    assert len(events.Scalars("train/value_loss")) == 3


def test_ppo_gae_comparison_is_sb3_ppo_at_gamma_lambda_one() -> None:
    """``make_algorithm`` resolves the core's names: PPO-GAE is SB3's PPO with gamma = lambda =
    1, and its advantages on a whole episode equal the core's GAE(1, 1); other estimators are a
    one-line UserError."""
    task = "sppo_bench/PrecisionCartPole-v0"
    ppo = make_algorithm("ppo-gae", "MlpPolicy", task, n_steps=64, batch_size=32, seed=0)
    assert isinstance(ppo, PPO) and (ppo.gamma, ppo.gae_lambda) == (1.0, 1.0)
    ppo.learn(128)  # runs on the suite's task like SPPO does
    assert ppo.num_timesteps == 128
    assert isinstance(make_algorithm("sppo", "MlpPolicy", SparseBandit()), SPPO)
    env = make_vec_env(Countdown, n_envs=1, seed=0, env_kwargs={"length": 8})
    ppo = make_algorithm("gae", "MlpPolicy", env, n_steps=8, batch_size=8, seed=0)
    ppo._setup_learn(8)
    ppo.collect_rollouts(ppo.env, ppo._init_callback(None), ppo.rollout_buffer, 8)
    buffer = ppo.rollout_buffer
    values = torch.as_tensor(buffer.values[:, 0]).float()[None]
    rewards = torch.as_tensor(buffer.rewards[:, 0]).float()[None]
    core = compute_advantages("gae", AdvantageInput(rewards, torch.ones(1, 8), values=values))
    torch.testing.assert_close(torch.as_tensor(buffer.advantages[:, 0]).float(), core.advantages[0])
    with pytest.raises(UserError, match="not available for Stable-Baselines3"):
        make_algorithm("grpo", "MlpPolicy", SparseBandit())


def test_rl_zoo_hyperparameters_build_sppo_for_every_task() -> None:
    """hyperparams/sppo.yml: one entry per suite task, rl-zoo3's keys, SPPO accepts the rest."""
    table = yaml.safe_load((REPO / "hyperparams" / "sppo.yml").read_text())
    assert set(table) == {info.env_id for info in TASKS.values()}
    for env_id, params in table.items():
        params = dict(params)
        assert params.pop("policy") == "MlpPolicy"
        task = next(t for t in TASKS.values() if t.env_id == env_id)
        spec = load_spec(task.name)
        assert params.pop("n_timesteps") == spec.rl.episodes * task.horizon
        assert params.pop("n_envs") >= 1
        assert params["n_episodes"] == spec.rl.trajectories_per_update
        assert params["batch_size"] == spec.rl.mini_batch_size
        assert params["n_epochs"] == spec.rl.epochs and params["dual_clip"] == spec.rl.dual_clip
        assert params["learning_rate"] == spec.rl.lr
        params["policy_kwargs"] = eval(params["policy_kwargs"], {"dict": dict})  # rl-zoo3 style
        model = SPPO("MlpPolicy", env_id, **params)
        assert model.n_episodes == spec.rl.trajectories_per_update


# ---------------------------------------------------------------- every setting reaches the update
class _Probe(gym.Env):
    """Spaces only (2-d observations, 3 actions): the episodes of these tests are made by hand."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, True, False, {"success": False}


def _probe_model(**settings) -> SPPO:
    kwargs = {"n_episodes": 6, "batch_size": 6, "n_epochs": 1, "learning_rate": 0.1, "seed": 0}
    kwargs["max_grad_norm"] = 100.0  # the probes' gradients are not clipped unless asked
    kwargs["policy_kwargs"] = {"optimizer_class": torch.optim.SGD}
    model = SPPO("MlpPolicy", _Probe(), **{**kwargs, **settings})
    model.set_logger(configure(None, []))
    with torch.no_grad():  # away from the uniform policy, where the entropy's gradient is 0
        model.policy.action_net.weight.mul_(100.0)
    return model


def _probe_episodes(policy) -> EpisodeBuffer:
    """6 episodes of 1-5 steps, outcomes 0/1, behaviour log-probs off the policy's by about
    N(0, 0.2), or by -0.9 more (ratios near e^0.9 = 2.5, inside a dual clip of 3, outside
    one of 1.5), so that both clips and the dual clip act."""
    gen = np.random.default_rng(0)
    buffer = EpisodeBuffer()
    for i, length in enumerate((1, 5, 2, 4, 3, 5)):
        obs = gen.uniform(-1, 1, (length, 2)).astype(np.float32)
        actions = gen.integers(0, 3, length)
        with torch.no_grad():
            dist = policy.get_distribution(torch.as_tensor(obs))
            log_probs = dist.log_prob(torch.as_tensor(actions)).numpy()
        shift = gen.choice([-0.9, 0.0], length) + gen.normal(0.0, 0.2, length)
        shift = shift.astype(np.float32)
        buffer.add(Episode(obs, actions, log_probs + shift, float(i % 2)))
    return buffer


def _aggregate(x: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "token-mean":
        return (x * mask).sum() / mask.sum()
    if how == "seq-mean-token-sum":
        return (x * mask).sum(1).mean()
    return ((x * mask).sum(1) / mask.sum(1)).mean()


def _reference_update(policy, buffer: EpisodeBuffer, **s) -> list[torch.Tensor]:
    """SPPO's update written out here: A = R - sigmoid(v(s_0)) (fixed for the update), the
    clipped surrogate with dual clip, -entropy, BCE; n_epochs full-batch SGD steps with the
    gradient norm clipped."""
    clip, dual, agg = s.get("clip_range", 0.2), s.get("dual_clip", 3.0), s.get("aggregation")
    agg = agg or "token-mean"
    ent, vf, max_norm = s.get("ent_coef", 0.0), s.get("vf_coef", 1.0), s.get("max_grad_norm", 100.0)
    lr = s.get("learning_rate", 0.1)
    policy = copy.deepcopy(policy)
    b = buffer.batch()
    n, horizon = b.mask.shape
    with torch.no_grad():
        adv = b.outcomes - torch.sigmoid(policy.predict_values(b.first_observations).flatten())
    adv = adv[:, None].expand(n, horizon)
    for _ in range(s.get("n_epochs", 1)):
        dist = policy.get_distribution(b.observations.flatten(0, 1))
        log_p = dist.log_prob(b.actions.flatten().long()).view(n, horizon)
        entropy = dist.entropy().view(n, horizon)
        ratio = torch.exp(log_p - b.old_log_probs)
        pg = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
        if dual is not None:
            pg = torch.where(adv < 0, torch.min(pg, -dual * adv), pg)
        logits = policy.predict_values(b.first_observations).flatten()
        value_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b.outcomes)
        loss = _aggregate(pg, b.mask, agg) - ent * _aggregate(entropy, b.mask, agg)
        loss = loss + vf * value_loss
        params = list(policy.parameters())
        grads = torch.autograd.grad(loss, params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        scale = min(1.0, max_norm / (float(norm) + 1e-6))
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * scale * g
    return [p.detach() for p in policy.parameters()]


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


SETTINGS = [  # (setting, value, the default it must differ from, also differ from -value)
    ("clip_range", 0.05, 0.2, False),
    ("dual_clip", 1.5, 3.0, False),
    ("aggregation", "seq-mean-token-sum", "token-mean", False),
    ("aggregation", "seq-mean-token-mean", "token-mean", False),
    ("ent_coef", 2.0, 0.0, True),
    ("vf_coef", 3.0, 1.0, True),
    ("max_grad_norm", 0.05, 100.0, False),
    ("learning_rate", 0.02, 0.1, False),
    ("n_epochs", 3, 1, False),
]


@pytest.mark.parametrize(("name", "value", "default", "signed"), SETTINGS)
def test_every_setting_reaches_the_update(name, value, default, signed) -> None:
    """One ``train()`` on hand-made episodes equals the update written out in the test with
    the setting's value; that update differs from the one with the default value (so an ignored
    setting, or one replaced by a constant, fails) and, for a coefficient, from the one with
    its sign flipped."""
    model = _probe_model(**{name: value})
    start = copy.deepcopy(model.policy)
    model.rollout_buffer = _probe_episodes(model.policy)
    model.train()
    got = [p.detach() for p in model.policy.parameters()]
    expected = _reference_update(start, model.rollout_buffer, **{name: value})
    assert _distance(got, expected) < 1e-5
    other = _reference_update(start, model.rollout_buffer, **{name: default})
    assert _distance(expected, other) > 2e-4
    if signed:
        flipped = _reference_update(start, model.rollout_buffer, **{name: -value})
        assert _distance(expected, flipped) > 2e-4


def test_batch_size_sets_the_optimiser_steps_per_epoch() -> None:
    """6 episodes, batch_size 4, 2 epochs: 4 optimiser steps on mini-batches of 4, 2, 4, 2
    distinct episodes per epoch."""
    model = _probe_model(batch_size=4, n_epochs=2)
    model.rollout_buffer = _probe_episodes(model.policy)
    seen: list[int] = []
    inner = model.sppo_losses

    def spy(batch, rows, *args, **kwargs):
        seen.append(len(set(rows.tolist())))
        return inner(batch, rows, *args, **kwargs)

    model.sppo_losses = spy
    model.train()
    assert seen == [4, 2, 4, 2]


def test_seed_fixes_the_minibatch_shuffles() -> None:
    """Two models of one seed make identical updates on the same episodes even when torch's
    global stream differs between them: the shuffles come from the model's own generator."""
    params = []
    for global_seed in (1, 2):
        model = _probe_model(batch_size=2, n_epochs=2)
        model.rollout_buffer = _probe_episodes(model.policy)
        torch.manual_seed(global_seed)
        model.train()
        params.append([p.detach() for p in model.policy.parameters()])
    assert _distance(*params) == 0.0
    other = _probe_model(batch_size=2, n_epochs=2, seed=5)
    other.policy.load_state_dict(_probe_model().policy.state_dict())
    other.rollout_buffer = _probe_episodes(other.policy)
    other.train()
    assert _distance(params[0], [p.detach() for p in other.policy.parameters()]) > 1e-4
