"""Statistics over seeds and tasks: IQM, stratified bootstrap intervals, probability of
improvement, and sample efficiency.

The method follows Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical
Precipice" (NeurIPS 2021) and its library rliable: scores are a set of runs per task; an aggregate
(for example the interquartile mean over all runs of all tasks) gets a 95% percentile confidence
interval from a *stratified* bootstrap, which resamples runs with replacement within each task
(the stratum) and recomputes the aggregate. The probability of improvement is rliable's
``probability_of_improvement``: per task the Mann-Whitney U statistic divided by ``n * m``, averaged
over tasks, with each algorithm's runs resampled independently per task in the bootstrap. This is a
numpy/scipy re-implementation of those definitions (rliable's own package pins ``arch<8``, which
does not import under pandas 3).

Conventions: ``scores`` for one algorithm is a sequence with one 1-d array per task, ``[n_t]`` runs
each (tasks may have different run counts); values are success rates in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

TaskScores = Sequence[np.ndarray]  # one [n_t] array of per-run scores per task
Statistic = Callable[[Sequence[Sequence[np.ndarray]]], np.ndarray]


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a confidence interval ``[lo, hi]``."""

    point: float
    lo: float
    hi: float

    def format(self, digits: int = 2) -> str:
        if not np.isfinite(self.point):
            return "n/a"
        return f"{self.point:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% of ``scores``.

    ``scipy.stats.trim_mean(x, 0.25)``: sort, drop ``floor(0.25 n)`` values from each end, average
    the rest (rliable's definition). ``axis=None`` flattens; ``axis=-1`` gives one IQM per row.
    """
    x = np.asarray(scores, dtype=float)
    if axis is None:
        x = x.ravel()
        axis = 0
    return sps.trim_mean(x, 0.25, axis=axis)


def _check_tasks(scores: TaskScores, what: str) -> list[np.ndarray]:
    arrays = [np.asarray(s, dtype=float).ravel() for s in scores]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError(f"{what}: every task needs at least one run")
    return arrays


def stratified_bootstrap(
    groups: Sequence[TaskScores],
    statistic: Statistic,
    reps: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap distribution ``[reps]`` of ``statistic`` under stratified resampling.

    ``groups[g][t]`` holds the ``[n_gt]`` run scores of group ``g`` (an algorithm) on task ``t``.
    Each replicate draws, independently for every group and task, ``n_gt`` runs with replacement
    from that cell. ``statistic`` receives the resampled cells as arrays ``[reps, n_gt]`` (same
    nesting as ``groups``) and returns ``[reps]``.
    """
    rng = np.random.default_rng(seed)
    resampled = []
    for group in groups:
        cells = []
        for cell in _check_tasks(group, "stratified_bootstrap"):
            idx = rng.integers(0, cell.size, size=(reps, cell.size))
            cells.append(cell[idx])
        resampled.append(cells)
    return np.asarray(statistic(resampled), dtype=float)


def interval_estimate(
    groups: Sequence[TaskScores],
    statistic: Statistic,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Point estimate of ``statistic`` on the data plus its percentile bootstrap interval."""
    point_cells = [[np.asarray(c, float).ravel()[None, :] for c in g] for g in groups]
    point = float(np.asarray(statistic(point_cells)).ravel()[0])
    dist = stratified_bootstrap(groups, statistic, reps=reps, seed=seed)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(dist, [100 * alpha, 100 * (1 - alpha)])
    return Estimate(point, float(lo), float(hi))


def _aggregate_iqm_stat(groups: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    return iqm(np.concatenate(list(groups[0]), axis=1), axis=1)


def iqm_ci(
    scores: TaskScores, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """IQM over all runs of all tasks in ``scores`` with a stratified bootstrap interval.

    With a single task this is the per-task IQM [CI]; with several it is rliable's aggregate IQM
    (the IQM of the pooled ``sum_t n_t`` run scores, resampled within each task).
    """
    return interval_estimate([scores], _aggregate_iqm_stat, reps, confidence, seed)


def prob_improvement_cells(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) for every replicate: ``x [R, n]``, ``y [R, m]`` -> ``[R]``.

    This is the Mann-Whitney U statistic of X against Y divided by ``n * m``.
    """
    gt = (x[:, :, None] > y[:, None, :]).mean(axis=(1, 2))
    eq = (x[:, :, None] == y[:, None, :]).mean(axis=(1, 2))
    return gt + 0.5 * eq


def _poi_stat(groups: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    xs, ys = groups
    per_task = [prob_improvement_cells(x, y) for x, y in zip(xs, ys, strict=True)]
    return np.mean(per_task, axis=0)


def probability_of_improvement(
    x: TaskScores, y: TaskScores, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Estimate:
    """P(X > Y): the probability that a run of X beats a run of Y on a random task.

    Per task ``t``: ``P_t = (1 / (n m)) sum_i sum_j [x_i > y_j] + 0.5 [x_i = y_j]``; the estimate
    is ``mean_t P_t``. ``x`` and ``y`` list the same tasks in the same order.
    """
    if len(x) != len(y):
        raise ValueError("probability_of_improvement: x and y must cover the same tasks")
    return interval_estimate([x, y], _poi_stat, reps, confidence, seed)


def mean_ci_over_runs(
    curves: np.ndarray, reps: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of ``curves [n_runs, G]`` with a percentile bootstrap band (over runs).

    Returns ``(mean [G], lo [G], hi [G])``. One run gives a zero-width band.
    """
    curves = np.asarray(curves, dtype=float)
    mean = curves.mean(axis=0)
    if curves.shape[0] < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, curves.shape[0], size=(reps, curves.shape[0]))
    boot = curves[idx].mean(axis=1)  # [reps, G]
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return mean, lo, hi


def episodes_to_threshold(episodes: np.ndarray, success: np.ndarray, threshold: float) -> float:
    """Training episodes at the first evaluation point whose success is ``>= threshold``.

    ``episodes [P]`` and ``success [P]`` are the evaluation points in training order. Returns NaN
    when the threshold is never reached.
    """
    episodes = np.asarray(episodes, dtype=float)
    success = np.asarray(success, dtype=float)
    hit = np.flatnonzero(success >= threshold)
    return float(episodes[hit[0]]) if hit.size else float("nan")


def binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a proportion k / n, e.g. runs that reached a threshold.

    lo = Beta^-1(a/2; k, n - k + 1) (0 when k = 0), hi = Beta^-1(1 - a/2; k + 1, n - k)
    (1 when k = n), a = 1 - level. Counts of stuck runs are coin flips per seed: at n = 10 a
    count of 5 spans [0.19, 0.81], so only such an interval says what a count can decide.
    """
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"binomial_ci: need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = 1.0 - level
    lo = 0.0 if k == 0 else float(sps.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def median_episodes_to_threshold(values: np.ndarray) -> float:
    """Median over runs of episodes-to-threshold, counting "not reached" (NaN) as infinitely many.

    Returns ``inf`` when fewer than half of the runs reached the threshold (the median run did not).
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan")
    return float(np.median(np.where(np.isnan(v), np.inf, v)))


def correlations(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(Spearman rho, Pearson r) between two ``[K]`` arrays; NaN when either is constant."""
    pred = np.asarray(pred, dtype=float)
    target = np.asarray(target, dtype=float)
    if pred.size < 2 or np.ptp(pred) == 0 or np.ptp(target) == 0:
        return float("nan"), float("nan")
    return float(sps.spearmanr(pred, target).statistic), float(sps.pearsonr(pred, target).statistic)


def correlation_text(pred: np.ndarray, target: np.ndarray) -> str:
    """``Spearman 0.71, Pearson 0.68``, or why they are undefined (one point, a constant)."""
    pred, target = np.asarray(pred, dtype=float), np.asarray(target, dtype=float)
    if pred.size < 2:
        return f"Spearman, Pearson undefined ({pred.size} point)"
    for values, name in ((pred, "V(s_0)"), (target, "the success rate")):
        if np.ptp(values) == 0:
            return f"Spearman, Pearson undefined ({name} is {values[0]:.2f} everywhere)"
    rho, r = correlations(pred, target)
    return f"Spearman {rho:.2f}, Pearson {r:.2f}"


def auroc_text(score_pos: np.ndarray, score_neg: np.ndarray) -> str:
    """``0.83``, or ``n/a (no failures)`` / ``n/a (no successes)`` where a class is empty."""
    if np.size(score_neg) == 0:
        return "n/a (no failures)" if np.size(score_pos) else "n/a (no episodes)"
    if np.size(score_pos) == 0:
        return "n/a (no successes)"
    return f"{auroc(score_pos, score_neg):.2f}"


def auroc(score_pos: np.ndarray, score_neg: np.ndarray) -> float:
    """Area under the ROC curve of a score separating positives from negatives.

    Equal to P(S_pos > S_neg) + 0.5 P(S_pos = S_neg); NaN when a class is empty.
    """
    p = np.asarray(score_pos, dtype=float).ravel()
    n = np.asarray(score_neg, dtype=float).ravel()
    if p.size == 0 or n.size == 0:
        return float("nan")
    return float(prob_improvement_cells(p[None, :], n[None, :])[0])
