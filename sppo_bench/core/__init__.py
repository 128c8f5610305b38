"""The shared algorithm core over padded ``[B, T]`` batches: the estimator registry (the one list
of algorithms, ``core.registry``), the estimators (``core.advantages``), losses, the critic
strategies (``core.critics``), the PPO settings and epoch loop (``core.ppo``) and the bounds of
settings (``core.bounds``)."""

from sppo_bench.core.advantages import compute_advantages, sequence_rewards
from sppo_bench.core.critics import CRITICS, CriticStrategy
from sppo_bench.core.losses import (
    AGGREGATIONS,
    aggregate,
    bce_value_loss,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
)
from sppo_bench.core.registry import (
    ESTIMATORS,
    AdvantageInput,
    AdvantageOutput,
    EstimatorSpec,
    algorithm_names,
    get_estimator,
    valid_estimator_names,
)

__all__ = [
    "AGGREGATIONS",
    "CRITICS",
    "CriticStrategy",
    "ESTIMATORS",
    "AdvantageInput",
    "AdvantageOutput",
    "EstimatorSpec",
    "aggregate",
    "algorithm_names",
    "bce_value_loss",
    "clipped_policy_loss",
    "clipped_value_loss",
    "compute_advantages",
    "entropy_from_logits",
    "explained_variance",
    "get_estimator",
    "sequence_rewards",
    "valid_estimator_names",
]
