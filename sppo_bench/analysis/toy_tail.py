r"""Does the PPO-GAE token critic notice a toy response's error when it happens, or at the end?

Input: the bench's tail probes (``bench/llm_toy.py``, ``tail_probe_step<N>.json``), at three
training points per run. A PPO-GAE row is one sampled response: ``reward`` R, ``values``
[V(s_0), ..., V(s_{T-1})] (V(s_t): the state before response token t), ``line_end_tokens``
(per response line i, the first token index ``e_i`` whose state holds the whole line) and
``first_wrong_step`` j (``llm.toy.steps``). An SPPO row is ``{"value": V(s_p), "reward": R}``.

Windows, for offsets d in [-k, k]: w(d) = V(s_{t + d}) (NaN outside 0..T-1), with
- incorrect responses (R = 0) whose first wrong line j exists in the response: t = t_err = e_j, so
  d = 0 is the first state that has seen the whole wrong line (a wrong digit before the line's
  end is seen a few tokens earlier);
- correct responses (R = 1, including the few whose box is right after a wrong line, counted as
  ``n_correct_with_wrong_line``: the critic is trained on R alone): t = e_j for every line j
  they have. The reference curve is
  sum_j P(j) * mean_{correct with line j} w_j(d) / sum_j P(j), with P(j) the frequency of j
  among the incorrect responses and the sums over the j that some correct response has (and
  that are not NaN at d): the same mixture of line positions as the incorrect curve, each
  correct response counted once per line.

Per training point and seed: the mean windows (NaN-aware mean per d), the drop across the error
drop = mean_{d=1..k} w(d) - mean_{d=-k..-1} w(d) of each mean window, its difference incorrect
minus correct (difference in differences), the mean value at the last token (the eos) of all
incorrect and of all correct responses, and SPPO's mean V(s_p) over prompts whose sampled
response was incorrect / correct. Over seeds: the mean of the per-seed numbers with their min
and max.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

POINTS = ("first", "middle", "final")  # the bench's three probed training points, in order
OUTCOMES = ("incorrect", "correct")


def step_window(values: list[float], t: int, k: int) -> np.ndarray:
    """``[2k + 1]``: V(s_{t + d}) for d = -k..k, NaN where t + d is outside the response."""
    out = np.full(2 * k + 1, np.nan)
    for i, pos in enumerate(range(t - k, t + k + 1)):
        if 0 <= pos < len(values):
            out[i] = values[pos]
    return out


def _at_line(row: dict, j: int, k: int) -> np.ndarray:
    return step_window(row["values"], row["line_end_tokens"][j], k)


@contextmanager
def _quiet():
    """numpy's all-NaN warnings off: a NaN result is the intended answer there."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _nanmean(rows: list[np.ndarray], width: int) -> np.ndarray:
    """``[width]`` NaN-aware mean over rows (NaN where every row is)."""
    if not rows:
        return np.full(width, np.nan)
    with _quiet():
        return np.nanmean(np.vstack(rows), axis=0)


def seed_windows(rows: list[dict], k: int = 8) -> dict:
    """One seed's PPO-GAE probe rows -> mean windows (``[2k + 1]`` each), the step weights
    ``P(j)`` and the counts (see the module docstring)."""
    width = 2 * k + 1
    incorrect = [r for r in rows if r["reward"] == 0.0]
    correct = [r for r in rows if r["reward"] == 1.0]
    located = [
        r
        for r in incorrect
        if r["first_wrong_step"] is not None and r["first_wrong_step"] < len(r["line_end_tokens"])
    ]
    steps = [r["first_wrong_step"] for r in located]
    wrong = [_at_line(r, r["first_wrong_step"], k) for r in located]
    weights = {j: steps.count(j) / len(steps) for j in sorted(set(steps))}
    per_step, used = [], []
    for j, p in weights.items():
        own = [_at_line(r, j, k) for r in correct if j < len(r["line_end_tokens"])]
        if own:
            per_step.append(_nanmean(own, width))
            used.append(p)
    right = np.full(width, np.nan)
    if per_step:
        grid, w = np.vstack(per_step), np.array(used)[:, None]
        have = ~np.isnan(grid)
        total = (have * w).sum(axis=0)
        summed = (np.where(have, grid, 0.0) * w).sum(axis=0)
        right = np.divide(summed, total, out=right, where=total > 0)
    return {
        "incorrect": _nanmean(wrong, width),
        "correct": right,
        "step_weights": weights,
        "n_incorrect": len(incorrect),
        "n_located": len(located),
        "n_correct": len(correct),
        "n_correct_with_wrong_line": sum(r["first_wrong_step"] is not None for r in correct),
    }


def drop(window: np.ndarray, k: int) -> float:
    """mean w(1..k) - mean w(-k..-1) of a ``[2k + 1]`` window (NaN-aware; NaN if a side is)."""
    after, before = window[k + 1 :], window[:k]
    if np.all(np.isnan(after)) or np.all(np.isnan(before)):
        return float("nan")
    return float(np.nanmean(after) - np.nanmean(before))


def _mean_of(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def seed_numbers(gae_rows: list[dict], sppo_rows: list[dict] | None, k: int = 8) -> dict:
    """One seed's summary at one training point (module docstring), windows included."""
    win = seed_windows(gae_rows, k)
    counts = ("n_incorrect", "n_located", "n_correct", "n_correct_with_wrong_line")
    out = {key: win[key] for key in counts}
    out["step_weights"] = {str(j): p for j, p in win["step_weights"].items()}
    out["drop_incorrect"] = drop(win["incorrect"], k)
    out["drop_correct"] = drop(win["correct"], k)
    out["drop_difference"] = out["drop_incorrect"] - out["drop_correct"]
    for outcome, reward in (("incorrect", 0.0), ("correct", 1.0)):
        last = [r["values"][-1] for r in gae_rows if r["reward"] == reward and r["values"]]
        out[f"last_value_{outcome}"] = _mean_of(last)
        if sppo_rows is not None:
            v = [r["value"] for r in sppo_rows if r["reward"] == reward]
            out[f"sppo_value_{outcome}"] = _mean_of(v)
    return out | {"window_incorrect": win["incorrect"], "window_correct": win["correct"]}


def tail_report(
    gae: dict[int, list[dict]], sppo: dict[int, list[dict]], k: int = 8
) -> tuple[pd.DataFrame, dict]:
    """Per seed, the probe files of a run in step order (``{"step", "rows"}``; the first three
    are the points ``POINTS``) -> (long table: point, step, outcome, d, mean / min / max over
    seeds of the mean window, seeds; summary dict: per point the per-seed numbers and their mean,
    min, max and total over seeds). SPPO's numbers join the seed of the same number."""
    table, summary = [], {"k": k, "points": []}
    for p, name in enumerate(POINTS):
        seeds = sorted(s for s in gae if len(gae[s]) > p)
        if not seeds:
            continue
        per_seed = {}
        for s in seeds:
            sp = sppo.get(s, [])
            per_seed[s] = seed_numbers(gae[s][p]["rows"], sp[p]["rows"] if len(sp) > p else None, k)
        step = gae[seeds[0]][p]["step"]
        for outcome in OUTCOMES:
            grid = np.vstack([per_seed[s][f"window_{outcome}"] for s in seeds])
            have = (~np.isnan(grid)).sum(axis=0)
            with _quiet():
                mean, lo, hi = np.nanmean(grid, 0), np.nanmin(grid, 0), np.nanmax(grid, 0)
            for i, d in enumerate(range(-k, k + 1)):
                table.append(
                    {"point": name, "step": step, "outcome": outcome, "d": d, "mean": mean[i],
                     "min": lo[i], "max": hi[i], "seeds": int(have[i])}
                )  # fmt: skip
        numbers = {
            s: {key: v for key, v in n.items() if not key.startswith("window_")}
            for s, n in per_seed.items()
        }
        keys = [key for key, v in numbers[seeds[0]].items() if isinstance(v, int | float)]
        over = {}
        for key in keys:
            vals = [numbers[s][key] for s in seeds if key in numbers[s]]
            vals = [v for v in vals if not np.isnan(v)]
            over[key] = {
                "mean": _mean_of(vals),
                "min": min(vals, default=float("nan")),
                "max": max(vals, default=float("nan")),
                "seeds": len(vals),
                "total": float(sum(vals)),
            }
        summary["points"].append(
            {"point": name, "step": step, "per_seed": numbers, "over_seeds": over}
        )
    return pd.DataFrame(table), summary


COLORS = {"incorrect": "tab:red", "correct": "tab:green"}


def plot_tail(table: pd.DataFrame, summary: dict, path: str | Path) -> None:
    """One panel per training point: mean V(s_{t_err + d}) over seeds (band: min..max over seeds)
    for incorrect and step-matched correct responses; SPPO's mean V(s_p) as flat dashed lines."""
    points = summary["points"]
    fig, axes = plt.subplots(1, max(1, len(points)), figsize=(5 * max(1, len(points)), 4.2))
    axes = np.atleast_1d(axes)
    for ax, point in zip(axes, points, strict=False):
        over = point["over_seeds"]
        for outcome in OUTCOMES:
            sel = table[(table.point == point["point"]) & (table.outcome == outcome)]
            n = over["n_located" if outcome == "incorrect" else "n_correct"]
            c = COLORS[outcome]
            label = f"PPO-GAE {outcome} (n={n['total']:.0f} over {n['seeds']} seeds)"
            ax.plot(sel.d, sel["mean"], color=c, lw=2, marker=".", label=label)
            ax.fill_between(sel.d, sel["min"], sel["max"], color=c, alpha=0.15)
            sppo = over.get(f"sppo_value_{outcome}")
            if sppo and not np.isnan(sppo["mean"]):
                ax.axhline(sppo["mean"], color=c, ls="--", lw=1, label=f"SPPO V(s_p), {outcome}")
        ax.axvline(0, color="grey", ls=":", lw=1)
        did = over["drop_difference"]["mean"]
        ax.set_title(f"{point['point']} (step {point['step']}): drop diff {did:+.3f}")
        ax.set_xlabel("d (tokens from the end of the first wrong line)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(r"token critic $V(s_{t_{err} + d})$")
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(
        "PPO-GAE critic around the first wrong line (correct: same line positions); "
        "mean over seeds, band min..max"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
