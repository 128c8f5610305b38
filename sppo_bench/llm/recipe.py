"""The LLM recipe: a typed config loaded from YAML (``sppo_bench.config.load_config``).

Defaults are the paper's 1.5B settings (PAPER.md, "LLM experiments"). Fields that the paper sets
per algorithm are ``None`` by default and resolved by ``resolve_algorithm_defaults`` from the
registry entry (``EstimatorSpec.group_size`` and ``.paper``):

==========  =========  ========  ==========  ===================
algorithm   samples N  KL coef   critic lr   critic warm-up
==========  =========  ========  ==========  ===================
sppo        1          0         5e-6        0
ppo-gae     1          0         1e-5        50
ppo-bce     1          0         1e-5        50     (the paper's "PPO + BCE" ablation; as PPO)
grpo        8          0         -           -
rloo        5          0.001     -           -
remax       1          0.001     -           -
reinforce   1          0         -           -
==========  =========  ========  ==========  ===================

(The KL term is in the reward: r_t = -beta * (log pi - log pi_ref) on every token, R on the last.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from sppo_bench.config import load_config, read_yaml
from sppo_bench.core import get_estimator
from sppo_bench.core.bounds import NON_NEGATIVE, POSITIVE, UNIT, at_least, check_bounds, optional
from sppo_bench.core.ppo import PPOConfig, ppo_bounds
from sppo_bench.errors import UserError

RECIPE_BOUNDS = {
    **{f"train.{k}": at_least(1) for k in ("steps", "save_every", "reward_workers")},
    **{f"train.{k}": at_least(1, 10**6) for k in ("batch_size", "micro_batch_size")},
    "train.reward_timeout_s": POSITIVE,
    "train.seed": at_least(0),
    **{f"rollout.{k}": at_least(1, 10**6) for k in ("max_new_tokens", "generation_batch_size")},
    "rollout.cpu_kv_cache_gib": at_least(1),
    "rollout.temperature": NON_NEGATIVE,
    "rollout.top_p": UNIT,
    "rollout.gpu_memory_utilization": UNIT,
    **ppo_bounds("algo"),
    "algo.value_clip": optional(POSITIVE),
    "actor.warmup_steps": at_least(0),
    "eval.k": at_least(1, 10**5),
    "eval.temperature": NON_NEGATIVE,
    "eval.top_p": UNIT,
    "eval.max_new_tokens": at_least(1, 10**6),
}

Dtype = Literal["float32", "bfloat16", "float16"]


@dataclass
class ModelConfig:
    """policy: a Hub id / local path, ``tiny:<size>`` or ``random:<size>``. dtype: parameter
    (master) dtype; compute_dtype: autocast dtype on CUDA (float32 = no autocast). init: a file
    with starting weights ``{"policy": state_dict}`` (None = the model's own); init_builder: what
    builds ``init`` when it is absent (``toy-arithmetic``; see ``sppo_bench.llm.warm_start``)."""

    policy: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    dtype: Dtype = "float32"
    compute_dtype: Dtype = "bfloat16"
    gradient_checkpointing: bool = True
    init: str | None = None
    init_builder: str | None = None


@dataclass
class DataConfig:
    """train: .jsonl / .parquet path or Hub dataset id; dataset: field mapping (None = infer)."""

    train: str = "agentica-org/DeepScaleR-Preview-Dataset"
    dataset: str | None = None
    split: str = "train"
    limit: int | None = None
    max_prompt_tokens: int = 1024


@dataclass
class RolloutConfig:
    """engine: "hf" (model.generate) or "vllm" (colocated; sleep mode where the platform has it).
    cpu_kv_cache_gib: vLLM's KV cache on its CPU backend, whole GiB (``VLLM_CPU_KVCACHE_SPACE``).

    HF engine only: generation_dtype samples from a copy of the policy in that dtype (None = the
    policy module itself); static_cache uses a fixed-size KV cache, for which transformers
    compiles the decoding step on a GPU. ``generation_dtype: bfloat16`` with ``static_cache: true``
    is the fast setting for a GPU; the defaults keep CPU runs exact and uncompiled.
    """

    engine: Literal["hf", "vllm"] = "vllm"
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 8192
    generation_batch_size: int = 64
    gpu_memory_utilization: float = 0.4
    enforce_eager: bool = False
    cpu_kv_cache_gib: int = 1
    generation_dtype: Dtype | None = None
    static_cache: bool = False


@dataclass
class AlgoConfig(PPOConfig):
    """name: a registered estimator (``sppo-bench estimators``), stored as its run name.
    The PPO settings are the core's ``PPOConfig`` (mini_batch_size counts prompts;
    critic_lr: None = the paper's per algorithm). estimator_params: keyword parameters per
    estimator name, e.g. ``{ppo-gae: {lam: 0.95}}`` (defaults: the estimator's own; the old keys
    ``gamma``, ``lam``, ``grpo_normalize_std`` and ``reinforce_baseline`` still read into it)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "gamma": "estimator_params.gae.gamma",
        "lam": "estimator_params.gae.lam",
        "grpo_normalize_std": "estimator_params.grpo.normalize_std",
        "reinforce_baseline": "estimator_params.reinforce.baseline",
    }

    lr: float = 1e-6
    critic_lr: float | None = None
    epochs: int = 1
    mini_batch_size: int = 128
    name: str = "sppo"
    n_samples: int | None = None
    kl_coef: float | None = None
    value_clip: float | None = 0.5
    estimator_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """The policy's AdamW beyond ``algo.lr``. warmup_steps: the lr rises linearly from
    lr / warmup_steps to lr over the first ``warmup_steps`` updating RL steps (0 = constant lr,
    the paper's)."""

    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0


@dataclass
class CriticConfig:
    """model: None = the policy's model. warmup_steps: None = the paper's per algorithm."""

    model: str | None = None
    weight_decay: float = 0.01
    warmup_steps: int | None = None


@dataclass
class TrainConfig:
    """batch_size counts prompts (as ``algo.mini_batch_size``); micro_batch_size counts rows."""

    steps: int = 1000
    batch_size: int = 256
    micro_batch_size: int = 4
    seed: int = 0
    save_every: int = 10
    output_dir: str = "runs/llm"
    device: str = "auto"
    reward_workers: int = 2
    reward_timeout_s: float = 5.0


@dataclass
class EvalConfig:
    """sets: files (or Hub ids) read with ``data.load_problems``; Average@k at temperature."""

    sets: list[str] = field(default_factory=list)
    k: int = 16
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 8192
    limit: int | None = None
    output_dir: str = "runs/llm-eval"


@dataclass
class LLMConfig:
    """The recipe. Keys of older versions keep working (``RENAMED``)."""

    RENAMED: ClassVar[dict[str, str]] = {
        "actor.lr": "algo.lr",
        "actor.grad_clip": "algo.max_grad_norm",
        "critic.lr": "algo.critic_lr",
        "critic.grad_clip": "algo.max_grad_norm",
        "train.mini_batch_size": "algo.mini_batch_size",
        "train.ppo_epochs": "algo.epochs",
    }

    model: ModelConfig = field(default_factory=ModelConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    actor: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> LLMConfig:
    """The recipe at ``path`` with ``key=value`` overrides. A recipe must name its model
    (``model.policy``): a one-line ``UserError`` otherwise, never a silent Hub default. Relative
    data paths (``data.train``, ``eval.sets``) that exist beside the recipe file resolve against
    its folder; anything else (a Hub id, a path from the working folder) stays as given."""
    data = read_yaml(path)
    model = data.get("model")
    named = isinstance(model, dict) and model.get("policy")
    if not named and not any(o.partition("=")[0].strip() == "model.policy" for o in overrides):
        raise UserError(
            f"recipe {str(path)!r} names no model: add model.policy (a Hub id, a local path, "
            "tiny:<size> or random:<size>); see llm/tiny-cpu.yaml"
        )
    cfg = load_config(LLMConfig, None, overrides, base=data)
    folder = Path(path).parent

    def beside(source: str) -> str:
        candidate = folder / source
        return str(candidate) if not Path(source).is_absolute() and candidate.exists() else source

    cfg.data.train = beside(cfg.data.train)
    cfg.eval.sets = [beside(s) for s in cfg.eval.sets]
    return cfg


ADDED_KEYS = {("rollout", "cpu_kv_cache_gib"): 1}  # keys added since runs were first stored


def upgrade_stored_recipe(config: dict[str, Any]) -> dict[str, Any]:
    """A stored LLM run config with the keys added since as today's defaults (``ADDED_KEYS``):
    a run stored before a key existed ran as that default does."""
    config = dict(config)
    for (section, key), default in ADDED_KEYS.items():
        if isinstance(config.get(section), dict):
            config[section] = {**config[section]}
            config[section].setdefault(key, default)
    return config


def resolve_algorithm_defaults(cfg: LLMConfig) -> LLMConfig:
    """Fill the ``None`` per-algorithm fields (table above) and check the batch arithmetic."""
    check_bounds(cfg, RECIPE_BOUNDS)
    spec = get_estimator(cfg.algo.name)
    name = spec.name
    spec.configured_params(cfg.algo.estimator_params)  # unknown names are an error here
    algo = replace(
        cfg.algo,
        name=spec.run_name,
        n_samples=cfg.algo.n_samples or spec.group_size,
        kl_coef=spec.paper.kl_coef if cfg.algo.kl_coef is None else cfg.algo.kl_coef,
        critic_lr=spec.paper.critic_lr if cfg.algo.critic_lr is None else cfg.algo.critic_lr,
    )
    critic = replace(
        cfg.critic,
        model=cfg.critic.model or cfg.model.policy,
        warmup_steps=(
            spec.paper.critic_warmup_steps
            if cfg.critic.warmup_steps is None
            else cfg.critic.warmup_steps
        ),
    )
    if (
        spec.critic_strategy is not None
        and spec.critic_strategy.objective == "bce"
        and (algo.kl_coef > 0)
    ):
        raise UserError(
            f"algo {name!r} trains its critic with BCE on the outcome R in {{0, 1}}; an in-reward "
            f"KL (algo.kl_coef={algo.kl_coef}) would move that target outside {{0, 1}}: set "
            "algo.kl_coef=0"
        )
    r = cfg.rollout
    if r.engine != "hf" and (r.generation_dtype is not None or r.static_cache):
        raise UserError(
            "rollout.generation_dtype and rollout.static_cache apply to rollout.engine=hf only, "
            f"not {r.engine!r}"
        )
    if spec.needs_groups and algo.n_samples < 2:
        raise UserError(f"algo {name!r} needs algo.n_samples >= 2, got {algo.n_samples}")
    t, mini = cfg.train, algo.mini_batch_size
    if t.batch_size < 1 or mini < 1 or t.micro_batch_size < 1:
        raise UserError(
            "train.batch_size, algo.mini_batch_size, train.micro_batch_size must be >= 1"
        )
    if t.batch_size % mini:
        raise UserError(
            f"train.batch_size ({t.batch_size}) must be a multiple of algo.mini_batch_size ({mini})"
        )
    return replace(cfg, algo=algo, critic=critic)


def is_resolved(cfg: LLMConfig) -> bool:
    """True for a config that ``resolve_algorithm_defaults`` returned (nothing left to fill)."""
    a = cfg.algo
    filled = (a.n_samples, a.kl_coef, a.critic_lr, cfg.critic.warmup_steps, cfg.critic.model)
    return all(x is not None for x in filled) and a.name == get_estimator(a.name).run_name
