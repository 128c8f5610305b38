"""Figures from finished control runs (matplotlib, Agg backend, PNG).

1. ``plot_learning_curves``: evaluation success against training episodes (top row) and against
   wall time (bottom row), one column per task; the mean over seeds per algorithm with a 95%
   bootstrap band over seeds.
2. ``plot_tail_effect``: for one task, the PPO-GAE critic's V(s_t) against the time step t for
   successful and failed evaluation episodes at the early, middle and late evaluation points, and
   beside it SPPO's V(s_0) on the same evaluation start states, split by outcome. The AUROC of the
   value for "this episode will succeed" is printed at t = 0 and at each episode's last step.
3. ``plot_calibration``: SPPO's V(s_0) against the empirical success rate of the same start states
   (``calibration.npz``), binned into a reliability diagram with the diagonal; Spearman and Pearson
   correlations of the unbinned points in the legend. Without ``calibration.npz`` the latest
   evaluation episodes are used (binary outcomes, labelled as such).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patheffects as pe  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sppo_bench.analysis.runs import DEFAULT_METRIC, Run, load_values  # noqa: E402
from sppo_bench.analysis.stats import auroc_text, correlation_text, mean_ci_over_runs  # noqa: E402
from sppo_bench.control.variants import split_folder  # noqa: E402
from sppo_bench.core.registry import critic_kind, label  # noqa: E402
from sppo_bench.errors import UserError  # noqa: E402

TASK_TITLES = {
    "cartpole": "Precision CartPole",
    "mountaincar": "MountainCar",
    "hopper": "Hopper",
    "lunarlander": "LunarLander",
    "pendulum": "Pendulum",
}
ALGO_COLORS = {  # Okabe-Ito, colour-blind safe
    "sppo": "#D55E00",
    "ppo-gae": "#0072B2",
    "ppo-bce": "#000000",
    "grpo": "#009E73",
    "rloo": "#CC79A7",
    "remax": "#E69F00",
    "reinforce": "#56B4E9",
}
SUCCESS_COLOR, FAILURE_COLOR = "#0072B2", "#D55E00"
STAGES = ("early", "middle", "late")


def task_title(task: str) -> str:
    return TASK_TITLES.get(task, task)


def task_order(task: str) -> tuple[int, str]:
    """Sort key: the paper's task order, unknown tasks last."""
    order = list(TASK_TITLES)
    return (order.index(task) if task in order else len(order), task)


def algo_label(algo: str) -> str:
    """Display name of an algorithm or a run label: ``PPO-GAE``, ``PPO-GAE @ lam0.95``."""
    base, variant = split_folder(algo)
    name = label(base)
    return name if variant is None else f"{name} @ {variant}"


def algo_color(label: str) -> str | None:
    """The algorithm's colour for its plain runs; None (the colour cycle) for a variant."""
    base, variant = split_folder(label)
    return ALGO_COLORS.get(base) if variant is None else None


def _save(fig: plt.Figure, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(out)
    return out


def _group(runs: Sequence[Run]) -> dict[str, dict[str, list[Run]]]:
    by_task: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        by_task[run.task][run.label].append(run)
    return by_task


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 3 * 3600:
        return 3600.0, "h"
    if seconds >= 180:
        return 60.0, "min"
    return 1.0, "s"


def plot_learning_curves(
    runs: Sequence[Run],
    out: Path,
    metric: str = DEFAULT_METRIC,
    threshold: float | None = None,
    grid_points: int = 100,
) -> Path:
    """Success rate vs training episodes and vs wall time; one column per task.

    Each run's evaluation curve is linearly interpolated onto a common grid from 0 to the shortest
    run's last point, then averaged over seeds with a 95% bootstrap band.
    """
    by_task = _group(runs)
    if not by_task:
        raise UserError("no runs to plot learning curves from")
    tasks = sorted(by_task, key=task_order)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.6 * len(tasks), 7.2), squeeze=False)
    for col, task in enumerate(tasks):
        for row, xkey in enumerate(("episodes", "wall_time")):
            ax = axes[row, col]
            arms, shown = {}, []
            for algo in sorted(by_task[task]):
                curves = [r.eval_curve(metric) for r in by_task[task][algo]]
                curves = [c for c in curves if len(c) >= 2]
                if curves:
                    arms[algo] = (curves, min(float(c[xkey].iloc[-1]) for c in curves))
            max_x = max((end for _, end in arms.values()), default=0.0)
            scale = _time_unit(max_x)[0] if xkey == "wall_time" else 1.0  # one unit per axis
            for algo, (curves, end) in arms.items():
                grid = np.linspace(0.0, end, grid_points)
                ys = np.stack([np.interp(grid, c[xkey], c["success"]) for c in curves])
                mean, lo, hi = mean_ci_over_runs(ys)
                shown += [mean, lo, hi]
                color = algo_color(algo)
                ax.plot(
                    grid / scale,
                    mean,
                    color=color,
                    lw=2,
                    label=f"{algo_label(algo)} (n={len(curves)})",
                )
                ax.fill_between(grid / scale, lo, hi, color=color, alpha=0.2, lw=0)
            if xkey == "wall_time":
                ax.set_xlabel(f"wall time ({_time_unit(max_x)[1]})")
            else:
                ax.set_xlabel("training episodes")
                ax.set_title(task_title(task), fontsize=13, fontweight="bold")
            if threshold is not None:
                ax.axhline(threshold, color="0.5", ls=":", lw=1, label=f"threshold {threshold:g}")
            ax.set_ylim(*value_limits(shown, pad=0.03))
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"success rate ({metric} eval)")
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("Learning curves: mean over seeds, 95% bootstrap CI", fontsize=14)
    fig.tight_layout()
    return _save(fig, out)


def _stage_files(runs: Sequence[Run]) -> dict[str, list[tuple[Run, int, Path]]]:
    """Per stage, each run's values file at 0%, 50% and 100% of its evaluation points."""
    chosen: dict[str, list[tuple[Run, int, Path]]] = {s: [] for s in STAGES}
    for run in runs:
        files = run.value_files()
        if not files:
            continue
        for stage, frac in zip(STAGES, (0.0, 0.5, 1.0), strict=True):
            update, path = files[int(round(frac * (len(files) - 1)))]
            chosen[stage].append((run, update, path))
    return chosen


def _episodes_at(run: Run, update: int) -> float:
    rows = run.metrics[run.metrics["update"] == update]
    return float(rows["episodes"].iloc[0]) if len(rows) else float("nan")


def value_limits(arrays: Sequence[np.ndarray], pad: float = 0.05) -> tuple[float, float]:
    """y-limits that show every finite value of ``arrays``: [0, 1] widened by ``pad``, and
    further where a value lies outside (a critic trained by squared error is not bounded)."""
    finite = [a[np.isfinite(a)] for a in map(np.asarray, arrays) if np.size(a)]
    finite = [a for a in finite if a.size]
    low = min([0.0, *(float(a.min()) for a in finite)])
    high = max([1.0, *(float(a.max()) for a in finite)])
    return low - pad, high + pad


def _note_non_finite(ax: plt.Axes, values: np.ndarray) -> None:
    """Say on the panel how many values were infinite (not drawable); NaN marks padding."""
    count = int(np.isinf(values).sum())
    if count:
        ax.text(
            0.99,
            0.01,
            f"{count} infinite values not drawn",
            ha="right",
            va="bottom",
            transform=ax.transAxes,
            fontsize=7,
        )


def _last_values(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    idx = np.clip(np.asarray(lengths, int) - 1, 0, values.shape[1] - 1)
    return values[np.arange(values.shape[0]), idx]


def _plot_value_traces(
    ax: plt.Axes, values: np.ndarray, success: np.ndarray, max_lines: int
) -> None:
    """Thin per-episode traces and bold per-outcome means of ``values [E, H]`` (NaN after end)."""
    steps = np.arange(values.shape[1])
    rng = np.random.default_rng(0)
    for mask, color, name in (
        (success, SUCCESS_COLOR, "success"),
        (~success, FAILURE_COLOR, "failure"),
    ):
        group = values[mask]
        if group.shape[0] == 0:
            continue
        pick = rng.choice(group.shape[0], size=min(max_lines, group.shape[0]), replace=False)
        for i in pick:
            ax.plot(steps, group[i], color=color, lw=0.6, alpha=0.15)
        alive = np.sum(~np.isnan(group), axis=0)
        enough = alive >= max(2, int(0.1 * group.shape[0]))
        with np.errstate(all="ignore"):
            mean = np.where(enough, np.nanmean(np.where(enough, group, 0.0), axis=0), np.nan)
        ax.plot(
            steps,
            mean,
            color=color,
            lw=2.8,
            zorder=4,
            label=f"{name} (n={group.shape[0]}), mean",
            path_effects=[pe.Stroke(linewidth=4.5, foreground="white"), pe.Normal()],
        )


def plot_tail_effect(runs: Sequence[Run], task: str, out: Path, max_lines: int = 15) -> Path:
    """The tail-effect figure for ``task``: PPO-GAE V(s_t) by outcome at three training stages,
    and SPPO V(s_0) by outcome beside it. Episodes are pooled over seeds."""
    gae = [r for r in runs if r.task == task and critic_kind(r.algo) in ("step", "step-bce")]
    sppo = [r for r in runs if r.task == task and critic_kind(r.algo) == "sequence"]
    gae_files, sppo_files = _stage_files(gae), _stage_files(sppo)
    if not gae_files["late"] and not sppo_files["late"]:
        raise UserError(
            f"no values files for task {task!r} (need ppo-gae or sppo runs with values/)"
        )
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    for ax, stage in zip(axes[:3], STAGES, strict=True):
        items = gae_files[stage]
        if not items:
            ax.text(0.5, 0.5, "no PPO-GAE runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        data = [load_values(p) for _, _, p in items]
        horizon = max(d["values"].shape[1] for d in data)
        values = np.concatenate(
            [
                np.pad(
                    d["values"],
                    ((0, 0), (0, horizon - d["values"].shape[1])),
                    constant_values=np.nan,
                )
                for d in data
            ]
        ).astype(float)
        success = np.concatenate([d["success"] for d in data]).astype(bool)
        lengths = np.concatenate([d["lengths"] for d in data])
        _plot_value_traces(ax, values, success, max_lines)
        rate = success.mean()
        ax.axhline(rate, color="0.3", ls="--", lw=1, label=f"empirical success rate {rate:.2f}")
        a0 = auroc_text(values[success, 0], values[~success, 0])
        last = _last_values(values, lengths)
        a_end = auroc_text(last[success], last[~success])
        ax.plot([], [], " ", label=f"AUROC at t=0: {a0}; at last step: {a_end}")
        episodes = np.nanmean([_episodes_at(r, u) for r, u, _ in items])
        names = " / ".join(sorted({label(r.algo) for r in gae}))
        ax.set_title(f"{names} critic V(s_t), {stage}: {episodes:,.0f} training episodes")
        ax.set_xlabel("time step t")
        ax.set_ylabel("V(s_t)  (predicted success probability)")
        ax.set_ylim(*value_limits([values]))
        _note_non_finite(ax, values)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=7.5)
    ax = axes[3]
    rng = np.random.default_rng(0)
    ticks, drawn = [], []
    for pos, stage in enumerate(STAGES):
        items = sppo_files[stage]
        if not items:
            ticks.append(f"{stage}\n(no SPPO runs)")
            continue
        data = [load_values(p) for _, _, p in items]
        v0 = np.concatenate([d["v0"] for d in data]).astype(float)
        success = np.concatenate([d["success"] for d in data]).astype(bool)
        drawn.append(v0)
        for offset, mask, color, name in (
            (-0.17, success, SUCCESS_COLOR, "success"),
            (0.17, ~success, FAILURE_COLOR, "failure"),
        ):
            x = pos + offset + rng.uniform(-0.08, 0.08, mask.sum())
            ax.scatter(x, v0[mask], s=9, color=color, alpha=0.45, label=name if pos == 0 else None)
            if mask.any():
                ax.hlines(
                    v0[mask].mean(), pos + offset - 0.13, pos + offset + 0.13, color="k", lw=2
                )
        text = auroc_text(v0[success], v0[~success]).replace(" (", "\n(")
        ticks.append(f"{stage}\nAUROC {text}")
    ax.hlines([], 0, 0, color="k", lw=2, label="mean")
    ax.set_xticks(range(len(STAGES)), ticks)
    ax.set_ylim(*value_limits(drawn))
    ax.set_ylabel("V(s_0)  (predicted success probability)")
    ax.set_title("SPPO critic V(s_0), same start states")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        f"{task_title(task)}: does the critic tell success from failure before the end?",
        fontsize=14,
    )
    fig.tight_layout()
    return _save(fig, out)


def _calibration_points(runs: Sequence[Run]) -> tuple[np.ndarray, np.ndarray, str]:
    cal = [c for c in (r.calibration() for r in runs) if c is not None]
    if cal:
        v0 = np.concatenate([c["v0"] for c in cal])
        rate = np.concatenate([c["success_rate"] for c in cal])
        return v0, rate, f"{v0.size} start states from {len(cal)} runs; y = success over rollouts"
    data = [load_values(r.value_files()[-1][1]) for r in runs if r.value_files()]
    if not data:
        return np.empty(0), np.empty(0), ""
    v0 = np.concatenate([d["v0"] for d in data]).astype(float)
    rate = np.concatenate([d["success"] for d in data]).astype(float)
    return v0, rate, f"{v0.size} final evaluation episodes; y = binary outcome"


def plot_calibration(runs: Sequence[Run], out: Path, bins: int = 10) -> Path:
    """Reliability diagram of SPPO's V(s_0) per task (one panel each)."""
    by_task = {t: a["sppo"] for t, a in _group(runs).items() if a.get("sppo")}
    panels = {t: _calibration_points(by_task[t]) for t in sorted(by_task, key=task_order)}
    panels = {t: p for t, p in panels.items() if p[0].size}
    if not panels:
        raise UserError(
            "no SPPO runs with calibration.npz or values files to draw calibration from"
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.0), squeeze=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, (task, (v0, rate, source)) in zip(axes[0], panels.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.4", ls="--", lw=1, label="perfect calibration")
        ax.scatter(
            v0,
            rate,
            s=8,
            color="0.55",
            alpha=0.35,
            label="episodes" if "binary" in source else "start states",
        )
        which = np.clip(np.digitize(v0, edges) - 1, 0, bins - 1)
        xs, ys, errs, counts = [], [], [], []
        for b in range(bins):
            sel = which == b
            if sel.sum() == 0:
                continue
            xs.append(v0[sel].mean())
            ys.append(rate[sel].mean())
            sd = rate[sel].std(ddof=1) if sel.sum() > 1 else 0.0
            errs.append(1.96 * sd / np.sqrt(sel.sum()))
            counts.append(sel.sum())
        ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=ALGO_COLORS["sppo"], capsize=3)
        ax.scatter(
            xs,
            ys,
            s=20 + 180 * np.asarray(counts) / max(counts),
            color=ALGO_COLORS["sppo"],
            edgecolor="k",
            zorder=3,
            label=f"bin mean (size ~ count)\nall points: {correlation_text(v0, rate)}",
        )
        ax.set_xlim(*value_limits([v0], pad=0.02))
        ax.set_ylim(*value_limits([rate], pad=0.02))
        ax.set_xlabel("SPPO critic V(s_0)  (predicted success probability)")
        ax.set_ylabel("empirical success rate")
        ax.set_title(f"{task_title(task)}\n({source})", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle("Calibration of the SPPO value V(s_0)  (bars: 95% CI per bin)", fontsize=13)
    fig.tight_layout()
    return _save(fig, out)
