"""The suite report: per-task IQM [95% CI], aggregate IQM, P(SPPO > PPO-GAE), episodes to a
success threshold; written as ``summary.csv``, ``summary.md``, ``runs.csv`` and per-run compact
metrics CSVs (``runs/<task>/<algo>[@<variant>]/seed<k>.csv``).

Runs are grouped by (task, algo, variant): each variant of an algorithm is its own column
(``PPO-GAE @ lam0.95``) and its own rows of ``summary.csv`` (columns ``algo``, ``variant``,
``label``). P(SPPO > PPO-GAE) compares the plain runs (no variant) of the two, or, where there
are none, the first variant both have (the markdown names it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sppo_bench.analysis.figures import algo_label, task_order, task_title
from sppo_bench.analysis.runs import (
    DEFAULT_FINAL_EVALS,
    DEFAULT_METRIC,
    check_cells,
    discover_runs,
    export_all_compact,
    run_problem,
    runs_table,
)
from sppo_bench.analysis.stats import (
    Estimate,
    binomial_ci,
    iqm_ci,
    median_episodes_to_threshold,
    probability_of_improvement,
)
from sppo_bench.errors import UserError
from sppo_bench.io import atomic_write_text, replace_dir

BOOTSTRAP_REPS = 2000
AGGREGATE = "aggregate"
REACHED_CI = ("reached_lo", "reached_hi")  # exact 95% interval on reached_threshold / n_runs


@dataclass
class Report:
    runs: pd.DataFrame  # one row per run (runs_table)
    summary: pd.DataFrame  # one row per (task or "aggregate", algo)
    improvement: Estimate | None  # P(SPPO > PPO-GAE) over the tasks both have
    improvement_tasks: list[str]
    markdown: str
    excluded: list[tuple[str, str]] = field(default_factory=list)  # (task/label/seedK, why)


def _fmt_episodes(value: float) -> str:
    if np.isnan(value):
        return "n/a"
    return "not reached" if np.isinf(value) else f"{value:,.0f}"


def build_report(
    runs_dir: Path,
    tasks: list[str] | None = None,
    algos: list[str] | None = None,
    metric: str = DEFAULT_METRIC,
    final_evals: int = DEFAULT_FINAL_EVALS,
    threshold: float = 0.8,
    include_unfinished: bool = False,
    compare: tuple[str, str] = ("sppo", "ppo-gae"),
    seed: int = 0,
) -> Report:
    """Aggregate the (finished) runs under ``runs_dir``; see the module docstring."""
    found = discover_runs(runs_dir, tasks, algos, finished_only=not include_unfinished)
    problems = {id(r): run_problem(r, metric) for r in found}
    excluded = [(r, problems[id(r)]) for r in found if problems[id(r)]]
    runs = [r for r in found if not problems[id(r)]]
    if not runs:
        run, reason = excluded[0]
        raise UserError(f"no valid runs to report; e.g. {run.path}: {reason}")
    check_cells(runs)
    table = runs_table(runs, metric, final_evals, threshold)
    task_list = sorted(table["task"].unique(), key=task_order)
    arm = table.drop_duplicates("label").set_index("label")
    algo_list = sorted(
        table["label"].unique(),
        key=lambda a: (
            compare.index(arm.algo[a]) if arm.algo[a] in compare else 9,
            arm.algo[a],
            arm.variant[a],
        ),
    )
    rows = []
    for algo in algo_list:
        per_task = []
        ident = {"algo": arm.algo[algo], "variant": arm.variant[algo], "label": algo}
        for task in task_list:
            cell = table[(table.task == task) & (table.label == algo)]
            if cell.empty:
                continue
            scores = cell["final_success"].to_numpy(float)
            per_task.append(scores)
            est = iqm_ci([scores], reps=BOOTSTRAP_REPS, seed=seed)
            eps = cell["episodes_to_threshold"].to_numpy(float)
            reached = int(np.sum(~np.isnan(eps)))
            rows.append(
                {
                    "task": task,
                    **ident,
                    "n_runs": len(cell),
                    "iqm": est.point,
                    "ci_lo": est.lo,
                    "ci_hi": est.hi,
                    "mean": float(scores.mean()),
                    "initial_success": float(cell["initial_success"].mean()),
                    "clone": cell["clone"].iloc[0],
                    "episodes_to_threshold_median": median_episodes_to_threshold(eps),
                    "reached_threshold": reached,
                    **dict(zip(REACHED_CI, binomial_ci(reached, len(cell)), strict=True)),
                }
            )
        est = iqm_ci(per_task, reps=BOOTSTRAP_REPS, seed=seed)
        rows.append(
            {
                "task": AGGREGATE,
                **ident,
                "n_runs": int(sum(len(s) for s in per_task)),
                "n_tasks": len(per_task),
                "iqm": est.point,
                "ci_lo": est.lo,
                "ci_hi": est.hi,
                "mean": float(np.mean(np.concatenate(per_task))),
            }
        )
    summary = pd.DataFrame(rows)
    compare = _compared_labels(table, compare)
    x_algo, y_algo = compare
    both = [
        t
        for t in task_list
        if ((table.task == t) & (table.label == x_algo)).any()
        and ((table.task == t) & (table.label == y_algo)).any()
    ]
    improvement = None
    if both:
        xs = [
            table[(table.task == t) & (table.label == x_algo)]["final_success"].to_numpy()
            for t in both
        ]
        ys = [
            table[(table.task == t) & (table.label == y_algo)]["final_success"].to_numpy()
            for t in both
        ]
        improvement = probability_of_improvement(xs, ys, reps=BOOTSTRAP_REPS, seed=seed)
    md = _markdown(
        summary, task_list, algo_list, improvement, both, compare, metric, final_evals, threshold
    )
    md += _seed_blocks(table, threshold)
    left = [(f"{r.task}/{r.label}/seed{r.seed}", reason) for r, reason in excluded]
    if left:
        md += "\n\nLeft out (not valid runs):\n\n" + "\n".join(f"- {n}: {w}" for n, w in left)
    return Report(table, summary, improvement, both, md, left)


SEED_BLOCK = 10  # seeds per block in the rerun-variance table


def _seed_blocks(table: pd.DataFrame, threshold: float) -> str:
    """For cells of at least two full blocks of ``SEED_BLOCK`` seeds: runs that reached the
    threshold per block (seeds 0-9, 10-19, ...), i.e. what independent 10-seed reruns of the
    cell would have reported. Empty when no cell has that many seeds."""
    rows = []
    for (task, label), cell in table.groupby(["task", "label"], sort=True):
        blocks = cell.groupby(cell["seed"] // SEED_BLOCK)
        full = [(b, g) for b, g in blocks if len(g) == SEED_BLOCK]
        if len(full) < 2:
            continue
        counts = [
            f"seeds {b * SEED_BLOCK}-{b * SEED_BLOCK + SEED_BLOCK - 1}: "
            f"{int(g['episodes_to_threshold'].notna().sum())}/{SEED_BLOCK}"
            for b, g in full
        ]
        rows.append(f"| {task_title(task)} | {algo_label(label)} | " + "; ".join(counts) + " |")
    if not rows:
        return ""
    return (
        "\n".join(
            [
                "",
                f"## Runs that reached {threshold:g}, per block of {SEED_BLOCK} seeds",
                "",
                f"What independent {SEED_BLOCK}-seed runs of each cell would have counted.",
                "",
                "| task | arm | reached, per block |",
                "|---|---|---|",
                *rows,
            ]
        )
        + "\n"
    )


def _compared_labels(table: pd.DataFrame, compare: tuple[str, str]) -> tuple[str, str]:
    """The run labels P(x > y) compares: the plain runs of the two algorithms where both have
    some, else the first variant (by name) that both have; ``compare`` itself if none."""
    labels = set(table["label"])
    variants = [""] + sorted(v for v in set(table["variant"]) if v)
    for variant in variants:
        pair = tuple(f"{a}@{variant}" if variant else a for a in compare)
        if set(pair) <= labels:
            return pair  # type: ignore[return-value]
    return compare


def _markdown(
    summary: pd.DataFrame,
    tasks: list[str],
    algos: list[str],
    improvement: Estimate | None,
    improvement_tasks: list[str],
    compare: tuple[str, str],
    metric: str,
    final_evals: int,
    threshold: float,
) -> str:
    def cell(task: str, algo: str) -> pd.Series | None:
        hit = summary[(summary.task == task) & (summary.label == algo)]
        return None if hit.empty else hit.iloc[0]

    header = "| task | cloned policy | " + " | ".join(algo_label(a) for a in algos) + " |"
    rule = "|---|---|" + "---|" * len(algos)
    lines = [
        "## Control suite: final success rate",
        "",
        f"Final success = {metric} evaluation success averaged over the last {final_evals} "
        "evaluation points of each run. Cells: IQM over seeds [95% stratified bootstrap CI, "
        f"{BOOTSTRAP_REPS} resamples] (n runs). Cloned policy = mean success at update 0; "
        "where a task's arms start from different clones (a clone-strength variant), each "
        "cell gives its own start.",
        "",
        header,
        rule,
    ]
    for task in tasks:
        cells = [cell(task, algo) for algo in algos]
        found = [c for c in cells if c is not None]
        per_arm = len({c["clone"] for c in found}) > 1
        parts = []
        for c in cells:
            if c is None:
                parts.append("-")
                continue
            est = Estimate(c["iqm"], c["ci_lo"], c["ci_hi"])
            start = f"; start {c['initial_success']:.2f}" if per_arm else ""
            parts.append(f"{est.format()} (n={int(c['n_runs'])}{start})")
        first = "per arm" if per_arm else f"{np.mean([c['initial_success'] for c in found]):.2f}"
        lines.append(f"| {task_title(task)} | {first} | " + " | ".join(parts) + " |")
    agg = []
    for algo in algos:
        c = cell(AGGREGATE, algo)
        text = f"**{Estimate(c['iqm'], c['ci_lo'], c['ci_hi']).format()}**"
        if int(c["n_tasks"]) < len(tasks):  # an aggregate over fewer tasks is not comparable
            text += f" ({int(c['n_tasks'])} of {len(tasks)} tasks)"
        agg.append(text)
    lines.append("| **aggregate IQM** | | " + " | ".join(agg) + " |")
    lines.append("")
    x, y = (algo_label(a) for a in compare)
    if improvement is not None:
        names = ", ".join(task_title(t) for t in improvement_tasks)
        lines.append(
            f"Probability of improvement P({x} > {y}) = {improvement.format()} "
            f"(Mann-Whitney per task, averaged over {len(improvement_tasks)} "
            f"task{'s' if len(improvement_tasks) != 1 else ''}: {names})."
        )
    else:
        lines.append(f"Probability of improvement P({x} > {y}): no task has runs of both.")
    lines += [
        "",
        f"## Sample efficiency: training episodes to reach success >= {threshold:g}",
        "",
        "First evaluation point at or above the threshold; median over seeds, runs that never "
        "reach it counted as infinitely slow; (k/n) = runs that reached it, with its exact "
        "(Clopper-Pearson) 95% interval.",
        "",
        "| task | " + " | ".join(algo_label(a) for a in algos) + " |",
        "|---|" + "---|" * len(algos),
    ]
    for task in tasks:
        parts = []
        for algo in algos:
            c = cell(task, algo)
            if c is None:
                parts.append("-")
            else:
                med = _fmt_episodes(c["episodes_to_threshold_median"])
                k, n = int(c["reached_threshold"]), int(c["n_runs"])
                lo, hi = binomial_ci(k, n)
                parts.append(f"{med} ({k}/{n} [{lo:.2f}, {hi:.2f}])")
        lines.append(f"| {task_title(task)} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: Report, runs_dir: Path, out_dir: Path) -> dict[str, Path]:
    """Write summary.csv, summary.md, runs.csv and per-run compact CSVs into ``out_dir``.

    The per-run folder is replaced as a whole, so no CSV of a run outside this report stays in
    it; an ``out_dir`` whose ``runs/`` holds run folders (a runs dir) is refused.
    """
    out_dir = Path(out_dir)
    paths = {
        "summary_csv": out_dir / "summary.csv",
        "summary_md": out_dir / "summary.md",
        "runs_csv": out_dir / "runs.csv",
        "per_run_csv": out_dir / "runs",
    }
    if (paths["per_run_csv"] / "control").is_dir():
        raise UserError(
            f"{str(paths['per_run_csv'])!r} holds runs, not a report's per-run CSVs; "
            "pass another --out"
        )
    selected = {(r.task, r.label, r.seed) for r in report.runs.itertuples()}
    runs = [r for r in discover_runs(runs_dir) if (r.task, r.label, r.seed) in selected]
    replace_dir(paths["per_run_csv"], lambda folder: export_all_compact(runs, folder))
    atomic_write_text(paths["summary_csv"], report.summary.to_csv(index=False, float_format="%.4g"))
    atomic_write_text(paths["summary_md"], report.markdown)
    atomic_write_text(paths["runs_csv"], report.runs.to_csv(index=False, float_format="%.5g"))
    return paths
