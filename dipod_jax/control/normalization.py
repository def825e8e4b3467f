"""Running observation normalisation (batched Welford / Chan merge of mean and sum of squared deviations)."""
from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

# Variance clip, as in Brax's running statistics: keeps the std away from 0 for constant features.
MIN_VARIANCE = 1e-6
MAX_VARIANCE = 1e6


class RunningStats(NamedTuple):
    """count [] (float32, avoids int overflow), mean [S], sum of squared deviations m2 [S]."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


def init_running_stats(size: int) -> RunningStats:
    """Empty statistics for S = `size` features; `normalize` is then the identity."""
    return RunningStats(jnp.zeros((), jnp.float32), jnp.zeros((size,), jnp.float32),
                        jnp.zeros((size,), jnp.float32))


def update_running_stats(stats: RunningStats, batch: jax.Array) -> RunningStats:
    """Merge a batch [..., S] into the statistics (exact: equals the statistics of all data seen so far)."""
    chex.assert_axis_dimension(batch, -1, stats.mean.shape[0])
    flat = batch.reshape(-1, batch.shape[-1]).astype(jnp.float32)
    batch_count = jnp.float32(flat.shape[0])
    batch_mean = jnp.mean(flat, axis=0)
    batch_m2 = jnp.sum(jnp.square(flat - batch_mean), axis=0)
    total = stats.count + batch_count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * batch_count / total
    m2 = stats.m2 + batch_m2 + jnp.square(delta) * stats.count * batch_count / total
    return RunningStats(total, mean, m2)


def normalize(stats: RunningStats, obs: jax.Array) -> jax.Array:
    """(obs [..., S] - mean) / std; the identity before any data was seen."""
    variance = jnp.clip(stats.m2 / jnp.maximum(stats.count, 1.0), MIN_VARIANCE, MAX_VARIANCE)
    std = jnp.where(stats.count > 0, jnp.sqrt(variance), 1.0)
    return (obs - stats.mean) / std
