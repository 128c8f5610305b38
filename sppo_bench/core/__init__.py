"""The shared algorithm core over padded ``[B, T]`` batches: the estimator registry (the one list
of algorithms), losses, the two critic strategies (``core.critics``) and the PPO settings and
epoch loop (``core.ppo``)."""

from sppo_bench.core.advantages import (
    ESTIMATORS,
    AdvantageInput,
    AdvantageOutput,
    EstimatorSpec,
    algorithm_names,
    compute_advantages,
    get_estimator,
    sequence_rewards,
    valid_estimator_names,
)
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
