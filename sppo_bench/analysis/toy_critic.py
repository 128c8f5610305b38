"""The CPU toy's critic views (``bench/llm_toy.py``): where its critics put V.

- ``token_value_profile`` / ``plot_token_values``: the token critic's V(s_t) against token
  position, correct against incorrect responses, aligned at the first token and at the last (the
  paper's Figure 1);
- ``calibration_stats`` / ``calibration_over_seeds`` / ``reliability_bins`` /
  ``plot_calibration``: the SPPO critic's V(s_p) against the empirical success rate, scatter and
  binned reliability diagram, with Pearson and Spearman correlations.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from sppo_bench.analysis.toy_report import seed_mean_ci  # noqa: E402


def _mean_band(traces: list[list[float]], from_end: bool, min_count: int) -> tuple:
    """Per position: (positions, mean, std, count) over the traces long enough to have it."""
    length = max(len(t) for t in traces)
    grid = np.full((len(traces), length), np.nan)
    for i, t in enumerate(traces):
        if from_end:
            grid[i, length - len(t) :] = t
        else:
            grid[i, : len(t)] = t
    count = np.sum(~np.isnan(grid), axis=0)
    keep = count >= min_count
    pos = np.arange(length) - (length - 1 if from_end else 0)
    with np.errstate(invalid="ignore"):
        mean, std = np.nanmean(grid, axis=0), np.nanstd(grid, axis=0)
    return pos[keep], mean[keep], std[keep], count[keep]


def token_value_profile(traces: list[dict], min_count: int = 5) -> pd.DataFrame:
    """Mean and std of V(s_t) per position (from the start and from the end), per outcome."""
    frames = []
    for outcome, reward in (("correct", 1.0), ("incorrect", 0.0)):
        values = [t["values"] for t in traces if t["reward"] == reward and t["values"]]
        if not values:
            continue
        for align, from_end in (("start", False), ("end", True)):
            pos, mean, std, count = _mean_band(values, from_end, min_count)
            frames.append(
                pd.DataFrame(
                    {
                        "outcome": outcome,
                        "aligned_at": align,
                        "position": pos,
                        "mean_value": mean,
                        "std_value": std,
                        "responses": count,
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def plot_token_values(traces: list[dict], path: str | Path, individual: int = 4) -> None:
    """V(s_t) against token position, correct (green) and incorrect (red) responses."""
    profile = token_value_profile(traces)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    rng = np.random.default_rng(0)
    style = {"correct": "tab:green", "incorrect": "tab:red"}
    for ax, align in zip(axes, ("start", "end"), strict=True):
        for outcome, reward in (("correct", 1.0), ("incorrect", 0.0)):
            sel = profile[(profile.outcome == outcome) & (profile.aligned_at == align)]
            if sel.empty:
                continue
            n = sum(1 for t in traces if t["reward"] == reward)
            c = style[outcome]
            ax.plot(sel.position, sel.mean_value, color=c, lw=2, label=f"{outcome} (n={n})")
            lo, hi = sel.mean_value - sel.std_value, sel.mean_value + sel.std_value
            ax.fill_between(sel.position, lo, hi, color=c, alpha=0.15)
            own = [t["values"] for t in traces if t["reward"] == reward and t["values"]]
            for j in rng.choice(len(own), size=min(individual, len(own)), replace=False):
                v = own[j]
                x = np.arange(len(v)) - (len(v) - 1 if align == "end" else 0)
                ax.plot(x, v, color=c, lw=0.6, alpha=0.5)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("response token position t (from the first token)")
    axes[1].set_xlabel("response token position (0 = the last token, eos)")
    axes[0].set_ylabel("token critic V(s_t)")
    axes[1].legend(loc="center left")
    fig.suptitle(
        "PPO-GAE token-level critic on held-out prompts: mean ± std, thin lines = single responses"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibration_stats(rows: list[dict]) -> dict[str, float]:
    v = np.array([r["value"] for r in rows])
    s = np.array([r["success"] for r in rows])
    return {
        "prompts": len(rows),
        "samples_per_prompt": rows[0]["k"],
        "pearson": float(stats.pearsonr(v, s).statistic),
        "spearman": float(stats.spearmanr(v, s).statistic),
        "brier_vs_success": float(np.mean((v - s) ** 2)),
        "mean_value": float(v.mean()),
        "mean_success": float(s.mean()),
    }


def calibration_over_seeds(per_seed: dict[int, dict[str, float]]) -> dict:
    """Mean and 95% bootstrap CI over seeds of the Pearson and Spearman correlations and the
    Brier score of :func:`calibration_stats`."""
    out: dict = {"seeds": sorted(per_seed)}
    for key in ("pearson", "spearman", "brier_vs_success"):
        mean, lo, hi = seed_mean_ci([per_seed[s][key] for s in sorted(per_seed)])
        out[key] = {"mean": mean, "lo": lo, "hi": hi}
    return out


def reliability_bins(rows: list[dict], bins: int = 8) -> pd.DataFrame:
    """Equal-count bins of V(s_p) (prompts sorted by V, cut into ``bins`` groups): mean V, mean
    empirical success and prompt count per bin. Equal counts keep every bin informative when the
    critic's predictions span a narrow range."""
    v = np.array([r["value"] for r in rows])
    s = np.array([r["success"] for r in rows])
    order = np.argsort(v, kind="stable")
    out = []
    for part in np.array_split(order, min(bins, len(order))):
        out.append(
            {
                "value_low": float(v[part].min()),
                "value_high": float(v[part].max()),
                "mean_value": float(v[part].mean()),
                "mean_success": float(s[part].mean()),
                "prompts": len(part),
            }
        )
    return pd.DataFrame(out)


def plot_calibration(rows: list[dict], path: str | Path) -> None:
    """Scatter of V(s_p) against success over k samples, and the binned reliability diagram."""
    st = calibration_stats(rows)
    binned = reliability_bins(rows)
    v = np.array([r["value"] for r in rows])
    s = np.array([r["success"] for r in rows])
    jitter = np.random.default_rng(0).uniform(-0.012, 0.012, size=len(s))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
    axes[0].scatter(v, s + jitter, s=10, alpha=0.5, color="tab:blue")
    axes[0].set_xlabel("SPPO critic V(s_p)")
    axes[0].set_ylabel(f"empirical success over {st['samples_per_prompt']} samples")
    axes[0].set_title(f"Pearson {st['pearson']:.3f}, Spearman {st['spearman']:.3f}")
    axes[1].plot(binned.mean_value, binned.mean_success, marker="o", color="tab:blue")
    axes[1].set_xlabel(
        f"mean V(s_p) in bin ({len(binned)} bins of {int(binned.prompts[0])} prompts)"
    )
    axes[1].set_ylabel("mean empirical success in bin")
    axes[1].set_title("reliability diagram")
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.04, 1.04)
        ax.grid(alpha=0.3)
    fig.suptitle(f"SPPO critic calibration on {st['prompts']} held-out prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
