"""The ablation study: where PPO-GAE falls behind SPPO, over GAE's lambda and the clone's strength.

Every finished run of a task is placed by what its stored ``config.yaml`` says (not by its folder
name): its algorithm, PPO-GAE's effective lambda (the estimator's default where the config does
not set it), the clone-strength setting ``CLONE_KEY``, the critic learning rate, the critic
warm-up (``rl.critic_warmup_updates``), and the stages it started from (``expert.seed``,
``clone.seed``: another seed is another expert or clone). A *cell* is one (lambda, clone strength,
critic lr, warm-up, expert seed, clone seed); its PPO-GAE runs are compared with the SPPO runs of
the same ``SETTINGS`` and ``STAGES`` (SPPO has no lambda):

- final success (stochastic evaluation, mean of the last ``final_evals`` evaluation points):
  difference of means, PPO-GAE minus SPPO, with a 95% percentile bootstrap interval (runs of
  each side resampled independently);
- training episodes to reach ``threshold``: difference of medians, a run that never reached it
  counted at its budget (so a difference is a lower bound where runs did not get there), with
  the same bootstrap.

PPO-BCE (a per-step critic trained with BCE, GAE over it) is placed the same way. ``phase_table``
gives one row per cell; ``plot_phase`` draws the two differences as heat maps, each cell annotated
with its interval and run counts. ``stage_spread`` puts, for a cell repeated from several experts
or clones, the spread between them beside the spread between seeds, and says whether the
difference to SPPO holds across them.
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
STAGES = ["expert_seed", "clone_seed"]  # which expert and clone a run started from
SETTINGS = ["clone", "critic_lr", "warmup"]  # what a cell shares with its SPPO reference


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
    (the ``clone_key`` setting), critic_lr, warmup (critic warm-up updates), expert_seed and
    clone_seed (0 where the config predates them), final success, episodes to ``threshold``
    (NaN: not reached) and the run's episode budget."""
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
                "warmup": int(rl.get("critic_warmup_updates") or 0),
                "expert_seed": int(_dotted(config, "expert.seed") or 0),
                "clone_seed": int(_dotted(config, "clone.seed") or 0),
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


def _same_start(runs: pd.DataFrame, cell: pd.Series) -> pd.Series:
    """The rows of ``runs`` that started where ``cell`` (a row of ``phase_table``) did: the same
    ``SETTINGS`` (clone strength, critic learning rate, critic warm-up) and ``STAGES`` (expert
    and clone seed): the cell's SPPO runs, or its own."""
    same = pd.Series(True, index=runs.index)
    for column in SETTINGS:
        same &= _equal(runs[column], cell[column])
    for column in STAGES:
        same &= runs[column].eq(cell[column])
    return same


def phase_table(
    runs: pd.DataFrame, algos: tuple[str, ...] = ("ppo-gae", "ppo-bce"), baseline: str = "sppo"
) -> pd.DataFrame:
    """One row per (algo, lam, ``SETTINGS``, ``STAGES``) cell of the ``algos`` runs that has
    ``baseline`` runs of the same settings and stages:
    run counts, means and the two differences with their intervals (columns ``n``, ``n_base``,
    ``final``, ``final_base``, ``reached``, ``reached_base``)."""
    cells = []
    base = runs[runs["algo"] == baseline]
    test = runs[runs["algo"].isin(algos)]
    keys = ["algo", "lam", *SETTINGS, *STAGES]
    for values, group in test.groupby(keys, dropna=False):
        cell = pd.Series(dict(zip(keys, values, strict=True)))
        ref = base[_same_start(base, cell)]
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
                **cell.to_dict(),
                **{column: int(cell[column]) for column in ["warmup", *STAGES]},
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


def _stage(row: pd.Series) -> str:
    """A cell's stages as text: ``expert 1`` (clone seed 0), ``expert 1, clone 2``."""
    clone = f", clone {row['clone_seed']}" if row["clone_seed"] else ""
    return f"expert {row['expert_seed']}{clone}"


def _pooled_sd(runs: pd.DataFrame, algo: str, lam: float, stages: pd.DataFrame) -> float:
    """The seed-to-seed SD of ``algo`` (at ``lam``) within each of ``stages``' rows, pooled
    (the root of the mean within-stage variance, ddof 1)."""
    variances = []
    for _, row in stages.iterrows():
        start = _same_start(runs, row)
        cell = runs[runs["algo"].eq(algo) & _equal(runs["lam"], lam) & start]["final"]
        if len(cell) > 1:
            variances.append(float(cell.var(ddof=1)))
    return float(np.sqrt(np.mean(variances))) if variances else float("nan")


def stage_spread(runs: pd.DataFrame, table: pd.DataFrame, baseline: str = "sppo") -> pd.DataFrame:
    """For every cell of ``table`` (``phase_table(runs)``) run from two or more stages (experts or
    clones), one row per (algo, lam, ``SETTINGS``):

    - ``stages`` and ``final_diffs``: each stage's difference to SPPO with its interval;
    - ``between_sd`` / ``between_sd_base``: the SD (ddof 1) of the stages' mean final success,
      the arm's and SPPO's, beside ``within_sd`` / ``within_sd_base``: the seed-to-seed SD within
      a stage, pooled;
    - ``mean_diff``, ``min_diff``, ``max_diff``: the stage differences' mean and range;
    - ``verdict``: ``worse at every stage`` / ``better at every stage`` where every stage's
      interval excludes 0 on one side, ``separable at no stage`` where every one holds 0, else
      ``differs between stages``.
    """
    rows = []
    keys = ["task", "algo", "lam", *SETTINGS]
    for values, cells in table.groupby(keys, dropna=False):
        key = dict(zip(keys, values, strict=True))
        if len(cells) < 2:
            continue
        cells = cells.sort_values(STAGES)
        diffs = cells["final_diff"].to_numpy(float)
        if (cells["final_diff_hi"] < 0).all():
            verdict = "worse at every stage"
        elif (cells["final_diff_lo"] > 0).all():
            verdict = "better at every stage"
        elif ((cells["final_diff_lo"] <= 0) & (cells["final_diff_hi"] >= 0)).all():
            verdict = "separable at no stage"
        else:
            verdict = "differs between stages"
        rows.append(
            {
                **key,
                "stages": "; ".join(_stage(r) for _, r in cells.iterrows()),
                "n": "; ".join(f"{r['n']}/{r['n_base']}" for _, r in cells.iterrows()),
                "finals": "; ".join(f"{x:.2f}" for x in cells["final"]),
                "finals_base": "; ".join(f"{x:.2f}" for x in cells["final_base"]),
                "final_diffs": "; ".join(
                    f"{r['final_diff']:+.2f} [{r['final_diff_lo']:+.2f}, {r['final_diff_hi']:+.2f}]"
                    for _, r in cells.iterrows()
                ),
                "between_sd": float(cells["final"].std(ddof=1)),
                "within_sd": _pooled_sd(runs, key["algo"], key["lam"], cells),
                "between_sd_base": float(cells["final_base"].std(ddof=1)),
                "within_sd_base": _pooled_sd(runs, baseline, np.nan, cells),
                "mean_diff": float(diffs.mean()),
                "min_diff": float(diffs.min()),
                "max_diff": float(diffs.max()),
                "verdict": verdict,
            }
        )
    return pd.DataFrame(rows)


NAMES = {"ppo-gae": "PPO-GAE", "ppo-bce": "PPO-BCE", "sppo": "SPPO"}


def plot_phase(table: pd.DataFrame, out: Path, title: str) -> Path:
    """Two heat maps (final-success difference, episodes-to-threshold difference): rows are
    (algorithm, lambda, critic lr, critic warm-up), columns the clone's demo noise p (higher:
    weaker clone), one per expert and clone seed where the table has several; red where the
    algorithm does worse than SPPO.
    Cells carry the difference, its interval and run counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(
        set(zip(table["algo"], table["lam"], table["critic_lr"], table["warmup"], strict=True))
    )
    several_lrs = len({r[2] for r in rows}) > 1
    stage_pairs = zip(table["expert_seed"], table["clone_seed"], strict=True)
    columns = sorted(set(zip(table["clone"].fillna(-1.0), stage_pairs, strict=True)))
    several_stages = len({stages for _, stages in columns}) > 1
    fig, axes = plt.subplots(1, 2, figsize=(5 + 2.2 * len(columns), 1.6 + 1.0 * len(rows)))
    panels: Sequence[tuple[str, str, str, int]] = (
        ("final_diff", "final success minus SPPO's", "RdBu", 2),
        ("episodes_diff", "episodes to threshold minus SPPO's", "RdBu_r", 0),
    )
    for ax, (key, label, cmap, digits) in zip(axes, panels, strict=True):
        grid = np.full((len(rows), len(columns)), np.nan)
        notes = [["" for _ in columns] for _ in rows]
        for _, row in table.iterrows():
            i = rows.index((row["algo"], row["lam"], row["critic_lr"], row["warmup"]))
            clone = -1.0 if pd.isna(row["clone"]) else row["clone"]
            j = columns.index((clone, (row["expert_seed"], row["clone_seed"])))
            grid[i, j] = row[key]
            notes[i][j] = (
                f"{row[key]:+.{digits}f}\n[{row[key + '_lo']:+.{digits}f}, "
                f"{row[key + '_hi']:+.{digits}f}]\nn={row['n']}/{row['n_base']}"
            )
        bound = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        image = ax.imshow(grid, cmap=cmap, vmin=-bound or -1, vmax=bound or 1, aspect="auto")
        for i in range(len(rows)):
            for j in range(len(columns)):
                if notes[i][j]:
                    box = {"facecolor": "white", "alpha": 0.7, "linewidth": 0}
                    ax.text(j, i, notes[i][j], ha="center", va="center", fontsize=7, bbox=box)
        ticks = [
            ("" if clone < 0 else f"{clone:g}")
            + (f"\nexpert {e}" + (f", clone {c}" if c else "") if several_stages else "")
            for clone, (e, c) in columns
        ]
        ax.set_xticks(range(len(columns)), ticks)
        names = [
            f"{NAMES.get(a, a)} λ={lam:g}"
            + (f", critic lr {lr:g}" if several_lrs else "")
            + (f", warm-up {warm}" if warm else "")
            for a, lam, lr, warm in rows
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
