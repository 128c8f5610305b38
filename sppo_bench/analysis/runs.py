"""Discover and load control-track run directories.

Layout read here (the control track writes it)::

    <runs_dir>/control/<task>/<algo>[@<variant>]/seed<k>/
        config.yaml  metrics.jsonl  checkpoints/latest.pt  values/update_<u:06d>.npz  done
        calibration.npz   (optional, SPPO runs only)

A run is identified by (task, algo, variant, seed); ``label`` = ``algo`` or ``algo@variant`` (its
folder name) is what reports and figures group by.

``metrics.jsonl`` has one JSON object per update; evaluation rows carry
``eval/success_deterministic`` and ``eval/success_stochastic``. The cached ``expert/`` and
``clone/`` stages (and a variant's ``clone@<variant>/``) sit beside the algorithm folders and are
not runs.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from sppo_bench.analysis.stats import episodes_to_threshold
from sppo_bench.control.spec import upgrade_stored_spec
from sppo_bench.control.variants import STAGE_SECTIONS, folder_name, split_folder
from sppo_bench.core.critics import VALUE_METRICS
from sppo_bench.core.ppo import LOSS_METRICS
from sppo_bench.errors import UserError
from sppo_bench.io import atomic_write_text
from sppo_bench.rundir import RunDir

EVAL_METRICS = {
    "stochastic": "eval/success_stochastic",
    "deterministic": "eval/success_deterministic",
}
DEFAULT_METRIC = "stochastic"
DEFAULT_FINAL_EVALS = 3
STAGE_DIRS = frozenset({"expert", "clone"})
COMPACT_COLUMNS = (
    "update",
    "episodes",
    "env_steps",
    "wall_time",
    "train/success_rate",
    "eval/success_deterministic",
    "eval/success_stochastic",
    *LOSS_METRICS,
    *VALUE_METRICS,
    "charts/SPS",
)
_SEED_DIR = re.compile(r"^seed(\d+)$")
_VALUES_FILE = re.compile(r"^update_(\d+)\.npz$")


CLONE_SECTIONS = STAGE_SECTIONS["clone"]  # the settings a cloned policy is built from


def metric_key(metric: str) -> str:
    """``"stochastic"`` / ``"deterministic"`` -> the metrics-row key; a one-line error otherwise."""
    if metric not in EVAL_METRICS:
        raise UserError(f"unknown evaluation metric {metric!r}; valid: {', '.join(EVAL_METRICS)}")
    return EVAL_METRICS[metric]


@dataclass
class Run:
    """One RL run directory and lazily loaded contents."""

    task: str
    algo: str
    seed: int
    path: Path
    variant: str | None = None

    @property
    def label(self) -> str:
        """``algo`` or ``algo@variant``: the run's folder under its task."""
        return folder_name(self.algo, self.variant)

    @property
    def done(self) -> bool:
        return RunDir(self.path).done

    @property
    def diverged(self) -> str | None:
        """The message of the ``DivergedError`` that stopped the run, or None."""
        marker = self.path / "diverged"
        return marker.read_text().strip() if marker.is_file() else None

    @cached_property
    def config(self) -> dict:
        """The stored ``config.yaml`` with older keys as today's (``{}`` where there is none)."""
        return RunDir(self.path).stored_config(upgrade_stored_spec) or {}

    @cached_property
    def clone(self) -> str:
        """Which cloned policy the run started from: a 10-digit hash of its stored ``expert``,
        ``policy`` and ``clone`` settings ("" where the config stores none), equal for runs
        that share a clone stage."""
        stages = {k: self.config[k] for k in CLONE_SECTIONS if k in self.config}
        if not stages:
            return ""
        text = json.dumps(stages, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """All metrics rows as a DataFrame (``null`` -> NaN), sorted by update."""
        rows = RunDir(self.path).metrics().rows()
        frame = pd.DataFrame(rows)
        if frame.empty:
            return pd.DataFrame(columns=list(COMPACT_COLUMNS))
        frame = frame.apply(pd.to_numeric, errors="coerce")
        return frame.sort_values("update", kind="stable").reset_index(drop=True)

    def eval_curve(self, metric: str = DEFAULT_METRIC) -> pd.DataFrame:
        """Evaluation rows: columns ``update, episodes, wall_time, success`` in training order."""
        key = metric_key(metric)
        frame = self.metrics
        if key not in frame.columns:
            return pd.DataFrame(columns=["update", "episodes", "wall_time", "success"])
        rows = frame[frame[key].notna()]
        return pd.DataFrame(
            {
                "update": rows["update"].to_numpy(),
                "episodes": rows["episodes"].to_numpy(dtype=float),
                "wall_time": rows["wall_time"].to_numpy(dtype=float),
                "success": rows[key].to_numpy(dtype=float),
            }
        )

    def final_success(self, metric: str = DEFAULT_METRIC, last: int = DEFAULT_FINAL_EVALS) -> float:
        """Evaluation success averaged over the last ``last`` evaluation points (NaN if none)."""
        if last < 1:
            raise UserError(f"--final-evals must be at least 1, got {last}")
        success = self.eval_curve(metric)["success"].to_numpy(dtype=float)
        return float(success[-last:].mean()) if success.size else float("nan")

    def value_files(self) -> list[tuple[int, Path]]:
        """``(update, path)`` of every values npz, sorted by update."""
        folder = self.path / "values"
        if not folder.is_dir():
            return []
        found = []
        for p in folder.iterdir():
            m = _VALUES_FILE.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def calibration(self) -> dict[str, np.ndarray] | None:
        """``{"v0": [K], "success_rate": [K]}`` from ``calibration.npz``, or None if absent."""
        path = self.path / "calibration.npz"
        if not path.is_file():
            return None
        data = read_npz(path)
        return {"v0": data["v0"].astype(float), "success_rate": data["success_rate"].astype(float)}


def load_values(path: Path) -> dict[str, np.ndarray]:
    """One values npz as a dict: ``success [E]``, ``v0 [E]``, ``lengths [E]``, ``values [E, H]``
    (the last only for per-step critics). A file that cannot be read whole (truncated, not an
    npz) is a one-line ``UserError`` naming it."""
    return read_npz(path)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of the npz file ``path``; an unreadable file is a one-line ``UserError``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = type(exc).__name__ if isinstance(exc, zipfile.BadZipFile) else "unreadable"
        raise UserError(f"{str(path)!r} is not a whole .npz file ({reason}: truncated?)") from None


def run_problem(run: Run, metric: str = DEFAULT_METRIC) -> str | None:
    """Why ``run`` must not enter a report or figure, in one line, or None when it may.

    A run's ``config.yaml`` must name the task, algorithm, variant and seed of its folder (a
    folder copied under another name is not that run); every metrics row must hold an integer
    ``update`` and numeric ``episodes``; evaluation successes must lie in [0, 1]; a finished
    run's last row must carry its final evaluation of ``metric``."""
    config = run.config
    stored = {k: config.get(k) for k in ("task", "algo", "seed") if k in config}
    stored["variant"] = config.get("variant")
    expected = {"task": run.task, "algo": run.algo, "seed": run.seed, "variant": run.variant}
    for key, value in stored.items():
        if value != expected[key]:
            return f"config.yaml says {key} {value!r}, the folder {expected[key]!r} (a copy?)"
    try:
        rows = RunDir(run.path).metrics().rows()
    except UserError as exc:
        return str(exc)
    key = metric_key(metric)
    for number, row in enumerate(rows, 1):
        where = f"metrics.jsonl row {number}"
        if not _is_int(row.get("update")):
            return f"{where}: 'update' is {row.get('update')!r}, not an integer"
        if not _is_number(row.get("episodes")):
            return f"{where}: 'episodes' is {row.get('episodes')!r}, not a number"
        present = [name for name in EVAL_METRICS.values() if row.get(name) is not None]
        for name in present:
            if not (_is_number(row[name]) and 0.0 <= row[name] <= 1.0):
                return f"{where}: {name} is {row[name]!r}, not a success rate in [0, 1]"
        if len(present) == 1:  # an evaluation row with one of its two values missing
            missing = next(n for n in EVAL_METRICS.values() if n not in present)
            return f"{where}: {present[0]} without {missing} (a missing evaluation value)"
    if run.done and rows and rows[-1].get(key) is None:
        return f"metrics.jsonl: the last row (update {rows[-1]['update']}) has no {key}"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def settings_key(run: Run) -> str:
    """The run's stored settings without its seed (what the runs of one cell share)."""
    rest = {k: v for k, v in run.config.items() if k != "seed"}
    return json.dumps(rest, sort_keys=True, default=str)


def check_cells(runs: list[Run]) -> None:
    """Runs of one (task, algorithm, variant) cell must share their settings (budget,
    overrides): a one-line ``UserError`` names the cell, the seeds and the first key that
    differs."""
    cells: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        cells.setdefault((run.task, run.label), []).append(run)
    for (task, label), members in cells.items():
        groups: dict[str, list[Run]] = {}
        for run in members:
            groups.setdefault(settings_key(run), []).append(run)
        if len(groups) > 1:
            (a, *_), (b, *_) = list(groups.values())[:2]
            key = _first_difference(a.config, b.config)
            seeds = " vs ".join(",".join(str(r.seed) for r in g) for g in list(groups.values())[:2])
            raise UserError(
                f"{task}/{label} mixes runs of different settings (seeds {seeds} differ in "
                f"{key}); report them apart (--runs-dir, --tasks/--algos) or name a --variant"
            )


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for key in sorted(set(a) | set(b)):
        if key == "seed" and not prefix:
            continue
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _first_difference(x, y, f"{prefix}{key}.")
            if inner:
                return inner
        elif x != y:
            return f"{prefix}{key} ({x!r} / {y!r})"
    return ""


def discover_runs(
    runs_dir: Path,
    tasks: Iterable[str] | None = None,
    algos: Iterable[str] | None = None,
    finished_only: bool = False,
) -> list[Run]:
    """All run directories under ``runs_dir/control`` that have a metrics file.

    ``tasks`` / ``algos`` filter (None = all); an ``algos`` entry matches an algorithm (all its
    variants) or one label (``ppo-gae@lam0.95``). A missing folder, or no run at all, is a
    one-line ``UserError``.
    """
    runs_dir = Path(runs_dir)
    root = runs_dir / "control"
    if not root.is_dir():
        raise UserError(
            f"no control runs under {str(runs_dir)!r} (expected {str(root)!r}); "
            "run `sppo-bench suite run` first or pass --runs-dir"
        )
    task_set = set(tasks) if tasks else None
    algo_set = set(algos) if algos else None
    runs = []
    for task_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if task_set is not None and task_dir.name not in task_set:
            continue
        for algo_dir in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            algo, variant = split_folder(algo_dir.name)
            if algo in STAGE_DIRS or (
                algo_set is not None and not {algo, algo_dir.name} & algo_set
            ):
                continue
            for seed_dir in algo_dir.iterdir():
                m = _SEED_DIR.match(seed_dir.name)
                if not (m and RunDir(seed_dir).metrics_path.is_file()):
                    continue
                run = Run(task_dir.name, algo, int(m.group(1)), seed_dir, variant)
                if finished_only and not run.done:
                    continue
                runs.append(run)
    runs.sort(key=lambda r: (r.task, r.algo, r.variant or "", r.seed))
    if not runs:
        what = "finished runs" if finished_only else "runs"
        filters = []
        if task_set:
            filters.append(f"tasks {', '.join(sorted(task_set))}")
        if algo_set:
            filters.append(f"algos {', '.join(sorted(algo_set))}")
        where = f" for {' and '.join(filters)}" if filters else ""
        raise UserError(f"no {what} found under {str(root)!r}{where}")
    return runs


def runs_table(
    runs: Iterable[Run],
    metric: str = DEFAULT_METRIC,
    final_evals: int = DEFAULT_FINAL_EVALS,
    threshold: float = 0.8,
) -> pd.DataFrame:
    """One row per run: identity, progress, final success and episodes to ``threshold``."""
    rows = []
    for run in runs:
        curve = run.eval_curve(metric)
        last = run.metrics.iloc[-1] if len(run.metrics) else None
        rows.append(
            {
                "task": run.task,
                "algo": run.algo,
                "variant": run.variant or "",
                "label": run.label,
                "seed": run.seed,
                "done": run.done,
                "updates": int(last["update"]) if last is not None else 0,
                "episodes": float(last["episodes"]) if last is not None else 0.0,
                "env_steps": float(last["env_steps"]) if last is not None else 0.0,
                "wall_time_s": float(last["wall_time"]) if last is not None else 0.0,
                "eval_points": len(curve),
                "clone": run.clone,
                "initial_success": float(curve["success"].iloc[0]) if len(curve) else np.nan,
                "final_success": run.final_success(metric, final_evals),
                "episodes_to_threshold": episodes_to_threshold(
                    curve["episodes"].to_numpy(), curve["success"].to_numpy(), threshold
                ),
            }
        )
    return pd.DataFrame(rows)


def export_compact_csv(run: Run, path: Path) -> Path:
    """Write the run's metrics (the contract's scalar keys, 5 significant digits) as a CSV."""
    frame = run.metrics
    columns = [c for c in COMPACT_COLUMNS if c in frame.columns]
    atomic_write_text(path, frame[columns].to_csv(index=False, float_format="%.5g"))
    return path


def export_all_compact(runs: Iterable[Run], out_dir: Path) -> list[Path]:
    """``out_dir/<task>/<algo>[@<variant>]/seed<k>.csv`` for every run."""
    return [
        export_compact_csv(run, Path(out_dir) / run.task / run.label / f"seed{run.seed}.csv")
        for run in runs
    ]
