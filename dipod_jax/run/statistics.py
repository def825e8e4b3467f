"""Statistics of results: Student-t intervals on a mean and paired start/end differences.

Learning results in this project are reported as a mean with a 95% interval over seeds, and a change due to
training as a paired difference (end minus start on the same test items), so that the item-to-item spread
of difficulty cancels out of the interval.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def t_interval(values, confidence: float = 0.95) -> dict[str, float]:
    """Mean of the finite entries of `values` and the two-sided Student-t interval of that mean.

    Args:
      values: array-like [n]; NaN / inf entries are skipped (e.g. diverged seeds).
      confidence: level of the interval, in (0, 1).

    Returns:
      {"mean", "half_width", "low", "high", "n"}; with n = 1 the half-width is NaN (no spread to measure),
      with n = 0 every number is NaN.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    values = np.asarray(values, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    n = int(finite.size)
    mean = float(finite.mean()) if n else float("nan")
    if n > 1:
        half_width = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1) * finite.std(ddof=1) / np.sqrt(n))
    else:
        half_width = float("nan")
    return {"mean": mean, "half_width": half_width, "low": mean - half_width, "high": mean + half_width, "n": n}


def paired_difference(start, end, confidence: float = 0.95) -> dict[str, float]:
    """Paired difference end - start over the same items, with the t-interval of its mean.

    Args:
      start: [n] per-item scores before training.
      end: [n] the same items' scores after training, in the same order.
      confidence: level of the interval.

    Returns:
      `t_interval` of end - start plus "start_mean" and "end_mean".
    """
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    if start.shape != end.shape or start.ndim != 1:
        raise ValueError(f"start {start.shape} and end {end.shape} must be equal one-dimensional arrays")
    return {**t_interval(end - start, confidence), "start_mean": float(start.mean()), "end_mean": float(end.mean())}


def interval_text(interval: dict[str, float], signed: bool = False) -> str:
    """'0.593 ± 0.021' ('+0.093 ± 0.021' when `signed`), or '0.593 (n = 1)' where a single seed leaves no spread
    to measure."""
    mean = f"{interval['mean']:+.3f}" if signed else f"{interval['mean']:.3f}"
    if interval["n"] < 2:
        return f"{mean} (n = {interval['n']})"
    return f"{mean} ± {interval['half_width']:.3f}"
