"""The critic's values on a run's evaluation episodes: ``<run>/values/update_<u:06d>.npz``.

Arrays: ``success`` ``[N]`` bool, ``lengths`` ``[N]`` int64, ``v0`` ``[N]`` float32 = V(s_0), and
for a per-step critic ``values`` ``[N, horizon]`` float32 = V(s_t), NaN after the episode's end.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from sppo_bench.control.collector import EpisodeBatch
from sppo_bench.core.critics import CriticStrategy
from sppo_bench.io import atomic_write_bytes


def write_values(
    run_dir: Path,
    update: int,
    episodes: EpisodeBatch,
    output: torch.Tensor,
    strategy: CriticStrategy,
    horizon: int,
) -> None:
    """One run's value file from its episodes and the critic's raw ``output`` on them
    (``[N]`` or ``[N, T]``)."""
    arrays: dict[str, np.ndarray] = {
        "success": episodes.success.astype(bool),
        "lengths": episodes.lengths.astype(np.int64),
        "v0": strategy.start_values(output).numpy().astype(np.float32),
    }
    if strategy.per_step:
        values = np.full((len(episodes.lengths), horizon), np.nan, dtype=np.float32)
        steps = episodes.mask.shape[1]
        values[:, :steps] = np.where(
            episodes.mask > 0, strategy.values(output[:, :steps]).numpy(), np.nan
        )
        arrays["values"] = values
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(Path(run_dir) / "values" / f"update_{update:06d}.npz", buffer.getvalue())
