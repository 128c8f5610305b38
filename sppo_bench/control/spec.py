"""Typed task specs, loaded from the top-level ``envs/<task>.yaml`` files.

A spec holds the written success rule (text; the code is in :mod:`sppo_bench.control.rules`),
the expert's shaped reward and PPO hyperparameters, the behaviour-cloning settings and the RL
fine-tuning hyperparameters shared by all estimators. ``--set key=value`` overrides address its
fields with dotted keys, e.g. ``rl.lr=1e-4`` or ``clone.epochs=5``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sppo_bench.config import load_config, read_yaml
from sppo_bench.control.tasks import TaskInfo, get_task
from sppo_bench.core.bounds import (
    FINITE,
    LEARNING_RATE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bound,
    at_least,
    check_bounds,
    optional,
)
from sppo_bench.core.ppo import PPOConfig, ppo_bounds
from sppo_bench.core.registry import ESTIMATORS, get_estimator
from sppo_bench.errors import UserError

# ``sppo_bench/specs`` is a link to the top-level ``envs/``: installed as package data, so a
# non-editable install (``pip install .``) finds the specs too.
ENVS_DIR = Path(__file__).resolve().parents[1] / "specs"


@dataclass
class ExpertConfig:
    """Stable-Baselines3 PPO on the shaped, dense reward (names follow SB3's PPO arguments).

    shaping: task-specific coefficients of the shaped reward (see ``shaping.py``).
    train_horizon: episodes of the shaped training env are cut at this many steps
    (``null`` = the task horizon). eval_episodes: sparse-task rollouts to measure success.
    seed: the training seed (SB3's ``seed``, the environments' resets); another seed gives an
    independently trained expert. 0 = the seed every expert before this field used.
    """

    total_timesteps: int = 100_000
    n_envs: int = 8
    n_steps: int = 256
    batch_size: int = 256
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    learning_rate: float = 3e-4
    ent_coef: float = 0.0
    clip_range: float = 0.2
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    log_std_init: float = 0.0
    use_sde: bool = False
    sde_sample_freq: int = -1
    norm_reward: bool = True
    train_horizon: int | None = None
    shaping: dict[str, float] = field(default_factory=dict)
    eval_episodes: int = 100
    seed: int = 0


@dataclass
class PolicyConfig:
    """The RL policy and critics: MLPs with these hidden sizes and activation."""

    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    critic_hidden: list[int] = field(default_factory=lambda: [64, 64])


@dataclass
class CloneConfig:
    """Behaviour cloning on successful expert episodes.

    episodes: successful expert episodes kept (rollouts stop once reached, or at max_rollouts).
    only_successful: keep only successful expert episodes (the method); ``false`` clones every
    rollout (for smoke tests with an untrained expert, or as an ablation).
    log_std: the cloned Gaussian policy's state-independent log standard deviation (continuous
    actions; the mean is fitted by squared error to the expert's deterministic action).
    demo_noise: the clone-strength knob, a probability p in [0, 1]: each demonstrated action is
    replaced, before fitting, by one drawn uniformly from the action space with probability p
    (seeded, so the clone is reproducible). A discrete clone fitted to convergence then acts as
    (1 - p) expert + p uniform; a continuous clone's mean shrinks towards the action box's
    centre, mu = (1 - p) a* + p c. 0 = today's clone; 1 = a clone of random actions. See
    ``results/control/clone_strength.md`` for the start success it gives per task.
    seed: the cloning seed (torch's, the demo noise's, the clone's evaluation sampling); 0 = the
    seed every clone before this field used.
    """

    episodes: int = 20
    max_rollouts: int = 400
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    log_std: float = -1.0
    eval_episodes: int = 200
    only_successful: bool = True
    demo_noise: float = 0.0
    seed: int = 0


@dataclass
class RLConfig(PPOConfig):
    """RL fine-tuning with the binary reward (gamma = 1), shared by all estimators.

    The PPO settings (lr, critic_lr, clip_eps, dual_clip, entropy_coef, max_grad_norm, epochs,
    mini_batch_size in episodes, aggregation) are the core's ``PPOConfig``. episodes:
    training-episode budget; trajectories_per_update: episodes per update (for ReMax, plus as
    many greedy episodes from the same start states). group_size: samples per start state for the
    group estimators (grpo, rloo). estimator_params: keyword parameters per estimator name (e.g.
    ``{gae: {lam: 1.0}}``); gamma is always 1. compute_dtype: the update's forward and backward
    passes in "float32" or "bfloat16" (the hand-written passes of ``control.fastmlp`` run their
    matmuls on bf16 copies with fp32 activations, gradients, master weights and Adam; rollouts
    stay fp32); bf16 was no faster than fp32 in the measured update here and moves losses by up
    to 2% and gradients by up to 5% (README, "Performance"). critic_warmup_updates: the first N
    updates fit the critic alone (fresh rollouts, the critic's loss, epochs and mini-batches; no
    policy step); they count in the episode budget. The control name of the LLM recipe's
    ``critic.warmup_steps`` (an LLM step is one update here). A critic-free estimator's run
    stores it as 0 (``runs.requested_spec``): one variant can name every algorithm of a profile.
    """

    RENAMED: ClassVar[dict[str, str]] = {"ent_coef": "entropy_coef"}
    RETIRED: ClassVar[dict[str, str]] = {
        "minibatches": "config key 'rl.minibatches' (a count) is now 'rl.mini_batch_size' "
        "(episodes per mini-batch: ceil(trajectories_per_update / minibatches))"
    }

    episodes: int = 1000
    trajectories_per_update: int = 16
    group_size: int = 8
    estimator_params: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 10
    n_eval: int = 64
    checkpoint_every: int = 5
    backend: str = "auto"
    compute_dtype: str = "float32"
    critic_warmup_updates: int = 0


def upgrade_stored_rl(rl: dict[str, Any]) -> dict[str, Any]:
    """A stored ``rl`` section with the keys of older versions as today's: ``ent_coef`` ->
    ``entropy_coef``, the count ``minibatches`` -> ``mini_batch_size`` (the same pieces)."""
    rl = dict(rl)
    per_update = rl.get("trajectories_per_update")
    if isinstance(per_update, int) and isinstance(rl.get("episodes"), int) and per_update > 0:
        rl["episodes"] = -(-rl["episodes"] // per_update) * per_update  # what the run trained
    rl.setdefault("compute_dtype", "float32")  # runs before the key existed computed in fp32
    if "ent_coef" in rl:
        rl.setdefault("entropy_coef", rl.pop("ent_coef"))
    if "minibatches" in rl:
        count = min(rl.pop("minibatches"), rl["trajectories_per_update"])
        rl.setdefault("mini_batch_size", math.ceil(rl["trajectories_per_update"] / count))
    return rl


def upgrade_stored_spec(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a run's or a stage's) with the keys of older versions as today's: the
    ``rl`` upgrades, estimator parameters under registered names (an older run may hold both
    ``gae`` and ``ppo-gae`` entries; merged as they were read: the alias's values win), and
    ``clone.demo_noise``, ``expert.seed`` and ``clone.seed`` (added later) at the values those
    used (0.0, 0, 0)."""
    if isinstance(config.get("rl"), dict):
        config["rl"] = upgrade_stored_rl(config["rl"])
        if "estimator_params" in config["rl"]:
            table = config["rl"]["estimator_params"]
            config["rl"]["estimator_params"] = canonical_params(table)
    if isinstance(config.get("clone"), dict):
        config["clone"].setdefault("demo_noise", 0.0)
        config["clone"].setdefault("seed", 0)
    if isinstance(config.get("expert"), dict):
        config["expert"].setdefault("seed", 0)
    return config


@dataclass
class TaskSpec:
    """One control task: identity, written rule, and every stage's settings."""

    task: str = ""
    env_id: str = ""
    horizon: int = 0
    success_rule: str = ""
    decisions: str = ""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    clone: CloneConfig = field(default_factory=CloneConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    @property
    def info(self) -> TaskInfo:
        """The task's ``TaskInfo`` (class, horizon, Gymnasium id), resolved once: by
        ``load_spec``, or here at the first use for a spec read back from a stored config."""
        if "_info" not in self.__dict__:
            self.__dict__["_info"] = get_task(self.task)
        return self.__dict__["_info"]


def spec_path(task: str | TaskInfo) -> Path:
    """``envs/<task>.yaml`` for a task given by short name, Gymnasium id or ``TaskInfo``."""
    return ENVS_DIR / f"{get_task(task).name}.yaml"


MEMORY_CAP = 1_000_000  # counts that size a buffer or a loop of one call: at most this
LAYERS: Bound = (
    (lambda v: isinstance(v, list) and all(at_least(1, 4096)[0](x) for x in v)),
    "a list of layer widths, integers from 1 to 4,096",
)
SPEC_BOUNDS = {
    **{f"expert.{k}": PROBABILITY for k in ("gamma", "gae_lambda")},
    **{f"expert.{k}": POSITIVE for k in ("clip_range", "max_grad_norm")},
    **{f"expert.{k}": NON_NEGATIVE for k in ("ent_coef", "vf_coef")},
    "expert.log_std_init": FINITE,
    "expert.train_horizon": optional(at_least(1, 10**7)),
    "expert.net_arch": LAYERS,
    "policy.hidden": LAYERS,
    "policy.critic_hidden": LAYERS,
    "clone.log_std": FINITE,
    "expert.total_timesteps": at_least(1, 10**10),
    **{f"expert.{k}": at_least(1, MEMORY_CAP) for k in ("n_envs", "n_steps", "batch_size")},
    **{f"expert.{k}": at_least(1, MEMORY_CAP) for k in ("n_epochs", "eval_episodes")},
    "expert.learning_rate": LEARNING_RATE,
    **{f"clone.{k}": at_least(1, MEMORY_CAP) for k in ("episodes", "max_rollouts", "batch_size")},
    "clone.eval_episodes": at_least(1, MEMORY_CAP),
    "clone.epochs": at_least(0, MEMORY_CAP),
    "clone.lr": LEARNING_RATE,
    "clone.demo_noise": PROBABILITY,
    **{f"{k}.seed": at_least(0, 2**32 - 1) for k in ("expert", "clone")},  # numpy's seed range
    "rl.episodes": at_least(1, 10**10),
    **{f"rl.{k}": at_least(1, MEMORY_CAP) for k in ("trajectories_per_update", "n_eval")},
    **{f"rl.{k}": at_least(1) for k in ("eval_every", "checkpoint_every")},
    "rl.group_size": at_least(2, MEMORY_CAP),
    "rl.critic_warmup_updates": at_least(0),
    **ppo_bounds("rl"),
}


PARAMS_KEY = "rl.estimator_params."
IDENTITY_KEYS = ("task", "env_id", "horizon", "success_rule", "decisions")
SETTABLE_SECTIONS = ("expert.*", "clone.*", "policy.*", "rl.*")


def canonical_params(table: Any) -> Any:
    """``rl.estimator_params`` keyed by registered estimator names: an alias's entry (``ppo-gae``,
    ``ppo``) merges into its estimator's (``gae``), later entries winning; an unknown name is a
    one-line ``UserError`` naming the valid ones. Anything but a mapping is returned as it is
    (the config loader reports it)."""
    if not isinstance(table, dict):
        return table
    out: dict[str, Any] = {}
    for name, params in table.items():
        key = get_estimator(str(name)).name
        if isinstance(params, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **params}
        else:
            out[key] = params
    return out


def canonical_override(item: str) -> str:
    """``rl.estimator_params.<alias>.<param>=v`` -> ``rl.estimator_params.<name>.<param>=v``,
    so that ``ppo-gae.lam`` and ``gae.lam`` set the same entry; other overrides unchanged."""
    key, sep, value = item.partition("=")
    dotted = key.strip()
    if not sep or not dotted.startswith(PARAMS_KEY):
        return item
    name, dot, rest = dotted[len(PARAMS_KEY) :].partition(".")
    return f"{PARAMS_KEY}{get_estimator(name).name}{dot}{rest}={value}" if name else item


def load_spec(task: str | TaskInfo, overrides: Sequence[str] = ()) -> TaskSpec:
    """The task's spec from ``envs/<task>.yaml`` with ``key=value`` overrides applied; values
    out of range (``SPEC_BOUNDS``) are a one-line ``UserError``. Estimator parameters are stored
    under the registered names (``canonical_params``), whichever alias the file or override used.
    The task is resolved here once (``TaskSpec.info``).
    """
    info = get_task(task)
    for item in overrides:  # the task's identity is its file's, not a setting
        key = item.partition("=")[0].strip()
        if key in IDENTITY_KEYS:
            raise UserError(
                f"{key!r} describes the task (envs/{info.name}.yaml) and is not a "
                f"setting; settable: {', '.join(sorted(SETTABLE_SECTIONS))} (e.g. rl.lr=1e-4)"
            )
    data = read_yaml(spec_path(info))
    if isinstance(data.get("rl"), dict) and "estimator_params" in data["rl"]:
        data["rl"]["estimator_params"] = canonical_params(data["rl"]["estimator_params"])
    spec = load_config(TaskSpec, None, [canonical_override(o) for o in overrides], base=data)
    spec.rl.estimator_params = canonical_params(spec.rl.estimator_params)
    check_bounds(spec, SPEC_BOUNDS)
    for name, params in spec.rl.estimator_params.items():  # each value in its registry bounds
        if not isinstance(params, dict):
            raise UserError(f"{PARAMS_KEY}{name} must be a mapping of parameters, got {params!r}")
        ESTIMATORS[name].configured_params({name: params})  # names canonical: not resolved
    spec.__dict__["_info"] = info
    return spec
