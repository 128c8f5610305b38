"""The ablation study: where PPO-GAE falls behind SPPO, over GAE's lambda and the clone's strength.

Every finished run of a task is placed by what its stored ``config.yaml`` says (not by its folder
name): its algorithm, PPO-GAE's effective lambda (the estimator's default where the config does
not set it), the clone-strength setting ``CLONE_KEY`` and the critic learning rate. A *cell* is
one (lambda, clone strength, critic lr) triple; its PPO-GAE runs are compared with the SPPO runs
of the same clone strength and critic learning rate (SPPO has no lambda):

- final success (stochastic evaluation, mean of the last ``final_evals`` evaluation points):
  difference of means, PPO-GAE minus SPPO, with a 95% percentile bootstrap interval (runs of
  each side resampled independently);
- training episodes to reach ``threshold``: difference of medians, a run that never reached it
  counted at its budget (so a difference is a lower bound where runs did not get there), with
  the same bootstrap.

PPO-BCE (a per-step critic trained with BCE, GAE over it) is placed the same way. ``phase_table``
gives one row per (algorithm, lambda, clone strength) cell; ``plot_phase`` draws the two
differences as heat maps, each cell annotated with its interval and run counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sppo_bench.analysis.runs import DEFAULT_FINAL_EVALS, discover_runs
from sppo_bench.analysis.stats import binomial_ci, episodes_to_threshold
from sppo_bench.core import get_estimator
from sppo_bench.errors import UserError

CLONE_KEY = "clone.demo_noise"  # the clone-strength knob (envs/*.yaml)
LAMBDA = "lam"


def _dotted(config: dict, key: str) -> object:
    node: object = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def study_runs(
    runs_dir: Path,
    task: str,
    threshold: float = 0.8,
    final_evals: int = DEFAULT_FINAL_EVALS,
    clone_key: str = CLONE_KEY,
) -> pd.DataFrame:
    """One row per finished run of ``task``: algo, seed, lam (PPO-GAE; NaN otherwise), clone
    (the ``clone_key`` setting), critic_lr, final success, episodes to ``threshold`` (NaN: not
    reached) and the run's episode budget."""
    rows = []
    for run in discover_runs(runs_dir, [task], finished_only=True):
        config = run.config
        estimator = get_estimator(str(config.get("algo", run.algo)))
        rl = config.get("rl", {})
        lam = np.nan
        if LAMBDA in estimator.params:  # ppo-gae, ppo-bce
            lam = float(estimator.configured_params(rl.get("estimator_params") or {})[LAMBDA])
        curve = run.eval_curve()
        clone = _dotted(config, clone_key)
        rows.append(
            {
                "task": task,
                "algo": estimator.run_name,
                "seed": run.seed,
                "path": str(run.path),
                "lam": lam,
                "clone": np.nan if clone is None else float(clone),
                "critic_lr": rl.get("critic_lr"),
                "final": run.final_success(last=final_evals),
                "to_threshold": episodes_to_threshold(
                    curve["episodes"].to_numpy(), curve["success"].to_numpy(), threshold
                ),
                "budget": float(rl.get("episodes", np.nan)),
            }
        )
    if not rows:
        raise UserError(f"no finished runs of {task!r} under {str(runs_dir)!r}")
    return pd.DataFrame(rows)


def _bootstrap_difference(
    x: np.ndarray, y: np.ndarray, statistic, reps: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """statistic(x) - statistic(y) and its 95% percentile interval (independent resampling)."""
    rng = np.random.default_rng(seed)
    point = float(statistic(x) - statistic(y))
    bx = x[rng.integers(0, len(x), size=(reps, len(x)))]
    by = y[rng.integers(0, len(y), size=(reps, len(y)))]
    diffs = statistic(bx, axis=1) - statistic(by, axis=1)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return point, float(lo), float(hi)


def _equal(column: pd.Series, value: object) -> pd.Series:
    """``column == value``, with NaN equal to NaN (a setting the configs do not hold)."""
    return column.eq(value) | (column.isna() & pd.isna(value))


def phase_table(
    runs: pd.DataFrame, algos: tuple[str, ...] = ("ppo-gae", "ppo-bce"), baseline: str = "sppo"
) -> pd.DataFrame:
    """One row per (algo, lam, clone, critic_lr) cell of the ``algos`` runs that has ``baseline``
    runs of the same clone strength and critic learning rate: run counts, means and the two
    differences with their intervals (columns ``n``, ``n_base``, ``final``, ``final_base``,
    ``reached``, ``reached_base``)."""
    cells = []
    base = runs[runs["algo"] == baseline]
    test = runs[runs["algo"].isin(algos)]
    keys = ["algo", "lam", "clone", "critic_lr"]
    for (algo, lam, clone, critic_lr), group in test.groupby(keys, dropna=False):
        ref = base[_equal(base["clone"], clone) & _equal(base["critic_lr"], critic_lr)]
        if ref.empty:
            continue
        x_final, y_final = group["final"].to_numpy(float), ref["final"].to_numpy(float)
        x_eps = group["to_threshold"].fillna(group["budget"]).to_numpy(float)
        y_eps = ref["to_threshold"].fillna(ref["budget"]).to_numpy(float)
        final = _bootstrap_difference(x_final, y_final, np.mean)
        eps = _bootstrap_difference(x_eps, y_eps, np.median)
        cells.append(
            {
                "task": group["task"].iloc[0],
                "algo": algo,
                "lam": lam,
                "clone": clone,
                "critic_lr": critic_lr,
                "n": len(group),
                "n_base": len(ref),
                "final": float(x_final.mean()),
                "final_base": float(y_final.mean()),
                "final_diff": final[0],
                "final_diff_lo": final[1],
                "final_diff_hi": final[2],
                "reached": int(group["to_threshold"].notna().sum()),
                "reached_base": int(ref["to_threshold"].notna().sum()),
                **_reached_ci(group, ""),
                **_reached_ci(ref, "_base"),
                "episodes_diff": eps[0],
                "episodes_diff_lo": eps[1],
                "episodes_diff_hi": eps[2],
            }
        )
    return pd.DataFrame(cells)


def _reached_ci(runs: pd.DataFrame, suffix: str) -> dict[str, float]:
    """Exact 95% interval on the share of ``runs`` that reached the threshold."""
    lo, hi = binomial_ci(int(runs["to_threshold"].notna().sum()), len(runs))
    return {f"reached{suffix}_lo": lo, f"reached{suffix}_hi": hi}


NAMES = {"ppo-gae": "PPO-GAE", "ppo-bce": "PPO-BCE", "sppo": "SPPO"}


def plot_phase(table: pd.DataFrame, out: Path, title: str) -> Path:
    """Two heat maps (final-success difference, episodes-to-threshold difference): rows are
    (algorithm, lambda), columns the clone's demo noise p (higher: weaker clone); red where the
    algorithm does worse than SPPO. Cells carry the difference, its interval and run counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(set(zip(table["algo"], table["lam"], table["critic_lr"], strict=True)))
    several_lrs = len({r[2] for r in rows}) > 1
    clones = sorted(table["clone"].dropna().unique()) or [np.nan]
    fig, axes = plt.subplots(1, 2, figsize=(5 + 2.2 * len(clones), 1.6 + 1.0 * len(rows)))
    panels: Sequence[tuple[str, str, str, int]] = (
        ("final_diff", "final success minus SPPO's", "RdBu", 2),
        ("episodes_diff", "episodes to threshold minus SPPO's", "RdBu_r", 0),
    )
    for ax, (key, label, cmap, digits) in zip(axes, panels, strict=True):
        grid = np.full((len(rows), len(clones)), np.nan)
        notes = [["" for _ in clones] for _ in rows]
        for _, row in table.iterrows():
            i = rows.index((row["algo"], row["lam"], row["critic_lr"]))
            j = 0 if pd.isna(row["clone"]) else clones.index(row["clone"])
            grid[i, j] = row[key]
            notes[i][j] = (
                f"{row[key]:+.{digits}f}\n[{row[key + '_lo']:+.{digits}f}, "
                f"{row[key + '_hi']:+.{digits}f}]\nn={row['n']}/{row['n_base']}"
            )
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap=cmap, vmin=-bound or -1, vmax=bound or 1, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(clones)):
                if notes[i][j]:
                    box = {"facecolor": "white", "alpha": 0.7, "linewidth": 0}
                    ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=7, bbox=box)
        ax.set_xticks(range(len(clones)), [f"{c:g}" for c in clones])
        names = [
            f"{NAMES.get(a, a)} λ={lam:g}" + (f", critic lr {lr:g}" if several_lrs else "")
            for a, lam, lr in rows
        ]
        ax.set_yticks(range(len(rows)), names)
        ax.set_xlabel("clone demo noise p (higher: weaker clone)")
        ax.set_title(label, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
