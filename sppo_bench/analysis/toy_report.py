"""Tables and figures of the CPU toy comparison (``bench/llm_toy.py``).

Inputs are the bench's per-run curves, keyed by (arm, seed): rows ``{"step", "samples",
"updates", "wall_s", "accuracy"}`` with the warm start as step 0, ``samples`` the responses
generated so far, ``updates`` the policy optimiser updates so far and ``wall_s`` the summed
training step time (generation, reward, critic, update; evaluation excluded).

- ``summary_table``: per run, warm-start / best / final accuracy, samples, updates and wall time at
  the first evaluation that reached the best, and for every arm but GRPO the samples and wall
  time at its first evaluation that reached GRPO's best accuracy (same seed), if it did;
- ``seed_summary``: per arm over its seeds, mean and 95% bootstrap CI (``stats.mean_ci_over_runs``)
  of best / final accuracy and wall time, and of the responses, updates and wall time to reach a
  threshold accuracy (default: the GRPO arm's mean best over its seeds), over the runs that
  reached it;
- ``mean_curves`` / ``plot_curves``: accuracy against generated responses, policy optimiser
  updates and wall time, mean over seeds with a 95% bootstrap band;
- the critics' views (token values, calibration) are in ``toy_critic``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sppo_bench.analysis.stats import mean_ci_over_runs  # noqa: E402

COLORS = {
    "sppo": "tab:blue",
    "grpo": "tab:orange",
    "grpo-eq-updates": "tab:red",
    "ppo-gae": "tab:green",
}
LABELS = {
    "sppo": "SPPO (N=1)",
    "grpo": "GRPO (N=8)",
    "grpo-eq-updates": "GRPO (N=8, equal updates)",
    "ppo-gae": "PPO-GAE (N=1)",
}
BASELINE = "grpo"  # the arm whose best accuracy the others are timed to


def policy_updates(
    steps: int, rows_per_step: int, rows_per_update: int, epochs: int, actor_start: int
) -> int:
    """Policy optimiser updates after ``steps`` trainer steps: ``epochs`` passes over each step's
    ``rows_per_step`` rows in mini-batches of ``rows_per_update`` (the last may be shorter), from
    step ``actor_start`` on (the critic methods' critic-only warm-up steps update no policy)."""
    per_step = epochs * math.ceil(rows_per_step / rows_per_update)
    return max(0, steps - actor_start) * per_step


def _first_reaching(rows: list[dict], level: float) -> dict | None:
    return next((r for r in rows if r["accuracy"] >= level - 1e-12), None)


def summary_table(curves: dict[tuple[str, int], list[dict]]) -> pd.DataFrame:
    """One row per (algorithm, seed); accuracies in percent, wall times in seconds."""
    out = []
    for (algo, seed), rows in _ordered(curves):
        best = max(r["accuracy"] for r in rows)
        at_best = _first_reaching(rows, best)
        row = {
            "method": algo,
            "seed": seed,
            "warm_start_acc": 100 * rows[0]["accuracy"],
            "best_acc": 100 * best,
            "samples_to_best": at_best["samples"],
            "updates_to_best": at_best.get("updates"),
            "wall_s_to_best": round(at_best["wall_s"], 1),
            "final_acc": 100 * rows[-1]["accuracy"],
            "samples_total": rows[-1]["samples"],
            "updates_total": rows[-1].get("updates"),
            "wall_s_total": round(rows[-1]["wall_s"], 1),
            "samples_to_grpo_best": None,
            "wall_s_to_grpo_best": None,
        }
        grpo = curves.get((BASELINE, seed))
        if algo != BASELINE and grpo is not None:
            hit = _first_reaching(rows, max(r["accuracy"] for r in grpo))
            if hit is not None:
                row["samples_to_grpo_best"] = hit["samples"]
                row["wall_s_to_grpo_best"] = round(hit["wall_s"], 1)
        out.append(row)
    return pd.DataFrame(out)


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a Markdown table (``-`` where an arm never reached GRPO's best)."""
    head = [
        "method",
        "seed",
        "warm start %",
        "best %",
        "samples to best",
        "updates to best",
        "wall s to best",
        "final %",
        "samples",
        "updates",
        "wall s",
        "samples to GRPO best",
        "wall s to GRPO best",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        to_grpo = r["method"] != BASELINE
        cells = [
            LABELS.get(r["method"], r["method"]),
            str(r["seed"]),
            f"{r['warm_start_acc']:.1f}",
            f"{r['best_acc']:.1f}",
            str(int(r["samples_to_best"])),
            _maybe(r.get("updates_to_best"), "{:.0f}"),
            f"{r['wall_s_to_best']:.0f}",
            f"{r['final_acc']:.1f}",
            str(int(r["samples_total"])),
            _maybe(r.get("updates_total"), "{:.0f}"),
            f"{r['wall_s_total']:.0f}",
            _maybe(r["samples_to_grpo_best"], "{:.0f}") if to_grpo else "",
            _maybe(r["wall_s_to_grpo_best"], "{:.0f}") if to_grpo else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _maybe(value, fmt: str) -> str:
    return "-" if value is None or pd.isna(value) else fmt.format(value)


def _ordered(curves: dict) -> list:
    order = {name: i for i, name in enumerate(LABELS)}
    return sorted(curves.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0]))


def _arms(curves: dict[tuple[str, int], list[dict]]) -> dict[str, dict[int, list[dict]]]:
    arms: dict[str, dict[int, list[dict]]] = {}
    for (arm, seed), rows in _ordered(curves):
        arms.setdefault(arm, {})[seed] = rows
    return arms


def seed_mean_ci(values, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of per-run values: ``stats.mean_ci_over_runs`` on a ``[runs, 1]`` column."""
    v = np.asarray(values, dtype=float).reshape(-1, 1)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean, lo, hi = mean_ci_over_runs(v, seed=seed)
    return float(mean[0]), float(lo[0]), float(hi[0])


def threshold_accuracy(curves: dict[tuple[str, int], list[dict]]) -> float | None:
    """The default threshold: the GRPO arm's best accuracy averaged over its seeds (a fraction)."""
    bests = [max(r["accuracy"] for r in rows) for (a, _), rows in curves.items() if a == BASELINE]
    return float(np.mean(bests)) if bests else None


SEED_METRICS = ("best_acc", "final_acc", "wall_s_total")
TO_THRESHOLD = ("samples", "updates", "wall_s")


def seed_summary(
    curves: dict[tuple[str, int], list[dict]], threshold: float | None = None
) -> pd.DataFrame:
    """One row per arm: mean and 95% bootstrap CI over its seeds (columns ``<metric>``,
    ``<metric>_lo``, ``<metric>_hi``) of best and final accuracy (%) and training wall time (s);
    the responses and updates per run; and, for the ``threshold`` accuracy (a fraction; default
    :func:`threshold_accuracy`), how many runs reached it and the mean [CI] of the responses,
    updates and wall time at each run's first evaluation at or above it, over those runs."""
    if threshold is None:
        threshold = threshold_accuracy(curves)
    out = []
    for arm, runs in _arms(curves).items():
        row: dict = {"method": arm, "runs": len(runs), "seeds": " ".join(map(str, runs))}
        per_run = {
            "best_acc": [100 * max(r["accuracy"] for r in rows) for rows in runs.values()],
            "final_acc": [100 * rows[-1]["accuracy"] for rows in runs.values()],
            "wall_s_total": [rows[-1]["wall_s"] for rows in runs.values()],
        }
        for key in SEED_METRICS:
            row[key], row[f"{key}_lo"], row[f"{key}_hi"] = seed_mean_ci(per_run[key])
        last = [rows[-1] for rows in runs.values()]
        row["samples_total"] = float(np.mean([r["samples"] for r in last]))
        updates = [r.get("updates") for r in last]
        row["updates_total"] = None if None in updates else float(np.mean(updates))
        row["threshold_acc"] = None if threshold is None else 100 * threshold
        hits = (
            []
            if threshold is None
            else [_first_reaching(rows, threshold) for rows in runs.values()]
        )
        hits = [h for h in hits if h is not None]
        row["reached"] = len(hits)
        for key in TO_THRESHOLD:
            values = [h.get(key) for h in hits]
            values = [] if None in values else values
            name = f"{key}_to_threshold"
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = seed_mean_ci(values)
        out.append(row)
    return pd.DataFrame(out)


def _est(r, key: str, fmt: str) -> str:
    if r[key] is None or pd.isna(r[key]):
        return "-"
    return f"{fmt.format(r[key])} [{fmt.format(r[f'{key}_lo'])}, {fmt.format(r[f'{key}_hi'])}]"


def seed_markdown(table: pd.DataFrame) -> str:
    """The per-arm summary as Markdown: mean [95% CI] over seeds."""
    thr = table["threshold_acc"].dropna()
    to = f"to {thr.iloc[0]:.1f}%" if len(thr) else "to threshold"
    head = [
        "method",
        "seeds",
        "best %",
        "final %",
        "responses",
        "updates",
        "wall s",
        "runs reaching" + (f" {thr.iloc[0]:.1f}%" if len(thr) else ""),
        f"responses {to}",
        f"updates {to}",
        f"wall s {to}",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [
            LABELS.get(r["method"], r["method"]),
            str(r["seeds"]),
            _est(r, "best_acc", "{:.1f}"),
            _est(r, "final_acc", "{:.1f}"),
            f"{r['samples_total']:.0f}",
            _maybe(r["updates_total"], "{:.0f}"),
            _est(r, "wall_s_total", "{:.0f}"),
            f"{r['reached']}/{r['runs']}",
            _est(r, "samples_to_threshold", "{:.0f}"),
            _est(r, "updates_to_threshold", "{:.0f}"),
            _est(r, "wall_s_to_threshold", "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_curves(curves: dict[tuple[str, int], list[dict]]) -> pd.DataFrame:
    """Per arm and evaluation point (by responses, at the points every seed of the arm has): the
    mean responses, updates and wall time, and accuracy (%) mean with its 95% bootstrap band."""
    frames = []
    for arm, runs in _arms(curves).items():
        by_seed = [{r["samples"]: r for r in rows} for rows in runs.values()]
        common = sorted(set.intersection(*(set(b) for b in by_seed)))
        acc = np.array([[100 * b[x]["accuracy"] for x in common] for b in by_seed])
        mean, lo, hi = mean_ci_over_runs(acc)
        updates = [[b[x].get("updates") for x in common] for b in by_seed]
        has_updates = all(u is not None for row in updates for u in row)
        frames.append(
            pd.DataFrame(
                {
                    "method": arm,
                    "runs": len(by_seed),
                    "samples": common,
                    "updates": np.mean(updates, axis=0) if has_updates else np.nan,
                    "wall_s": np.mean([[b[x]["wall_s"] for x in common] for b in by_seed], axis=0),
                    "accuracy": mean,
                    "accuracy_lo": lo,
                    "accuracy_hi": hi,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def plot_curves(curves: dict[tuple[str, int], list[dict]], path: str | Path) -> None:
    """Held-out accuracy (%) against generated responses, policy optimiser updates and training
    wall time: mean over seeds (line) with its 95% bootstrap band, single seeds as thin lines."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), sharey=True)
    mean = mean_curves(curves)
    axis_keys = (("samples", 1.0), ("updates", 1.0), ("wall_s", 1 / 60))
    for arm, runs in _arms(curves).items():
        color = COLORS.get(arm)
        m = mean[mean.method == arm]
        label = f"{LABELS.get(arm, arm)}, {len(runs)} seed{'s' if len(runs) > 1 else ''}"
        for ax, (key, scale) in zip(axes, axis_keys, strict=True):
            if m[key].isna().any():
                continue
            x = m[key] * scale
            ax.plot(x, m.accuracy, marker="o", ms=3, color=color, label=label, lw=1.8)
            if len(runs) > 1:
                ax.fill_between(x, m.accuracy_lo, m.accuracy_hi, color=color, alpha=0.18, lw=0)
                for rows in runs.values():
                    xs = [r.get(key, np.nan) * scale for r in rows]
                    ax.plot(xs, [100 * r["accuracy"] for r in rows], color=color, lw=0.5, alpha=0.4)
    warm = 100 * np.mean([rows[0]["accuracy"] for rows in curves.values()])
    for ax in axes:
        ax.axhline(warm, color="grey", ls=":", lw=1, label="warm start" if ax is axes[0] else None)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("generated responses")
    axes[1].set_xlabel("policy optimiser updates")
    axes[2].set_xlabel("training wall time (min, evaluation excluded; mean over seeds)")
    axes[0].set_ylabel("held-out accuracy (Average@k, %)")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(
        "Toy arithmetic: held-out accuracy during RL from the same warm start "
        "(mean over seeds, 95% bootstrap band)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
