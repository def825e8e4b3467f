"""Tests of the result statistics (dipod_jax.run.statistics) and the paired evaluation built on them."""
import math

import numpy as np
import pytest
from scipy import stats

from dipod_jax.lm.evaluation import paired_evaluation, reward_summary
from dipod_jax.run.statistics import paired_difference, t_interval


def test_t_interval_known_values():
    """Three values 1, 2, 3: mean 2, sample std 1, half-width t_{0.975, 2} / sqrt(3); non-finite entries are
    skipped; one value has no interval; an invalid confidence is refused."""
    result = t_interval([1.0, 2.0, float("nan"), 3.0, float("inf")])
    assert result["n"] == 3 and result["mean"] == 2.0
    assert result["half_width"] == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3.0))
    assert result["low"] == pytest.approx(2.0 - result["half_width"])
    single = t_interval([0.5])
    assert single["mean"] == 0.5 and math.isnan(single["half_width"])
    assert t_interval([])["n"] == 0
    with pytest.raises(ValueError, match="confidence"):
        t_interval([1.0, 2.0], confidence=1.0)


def test_paired_difference_cancels_item_difficulty():
    """End = start + 0.1 on every item: the paired difference is exactly 0.1 with zero width, although the
    items' scores spread from 0 to 0.9 (an unpaired interval would be wide); mismatched lengths are refused."""
    start = np.linspace(0.0, 0.8, 9)
    result = paired_difference(start, start + 0.1)
    assert result["mean"] == pytest.approx(0.1) and result["half_width"] == pytest.approx(0.0, abs=1e-12)
    assert result["start_mean"] == pytest.approx(0.4) and result["end_mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal one-dimensional"):
        paired_difference(start, start[:-1])


def test_paired_evaluation_reports_reward_and_solved_fraction():
    """Known per-item rewards: summaries, the reward difference and the solved-fraction difference."""
    start = np.array([1.0, 0.5, 0.0, 1.0])
    end = np.array([1.0, 1.0, 0.25, 0.5])
    result = paired_evaluation(start, end)
    assert result["start"] == reward_summary(start) == {"mean_reward": 0.625, "exact_fraction": 0.5, "items": 4}
    assert result["end"]["exact_fraction"] == 0.5
    assert result["difference"]["mean"] == pytest.approx(np.mean(end - start))
    diffs = np.array([0.0, 1.0, 0.0, -1.0])
    assert result["exact_difference"]["mean"] == pytest.approx(0.0)
    assert result["exact_difference"]["half_width"] == pytest.approx(
        stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2.0)
