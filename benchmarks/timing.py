"""Timing helpers shared by the benchmarks: median wall time of jitted calls and the machine's matmul rate."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def time_call(fn: Callable, *args) -> tuple[float, Any]:
    """(seconds, outputs) of one call of fn(*args), waiting for its outputs."""
    start = time.perf_counter()
    outputs = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, outputs


def matmul_probe(size: int) -> tuple[Callable, tuple[jax.Array, jax.Array]]:
    """(jitted matmul, (a, b)): two random float32 size x size matrices; a call is 2 * size**3 FLOPs."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    return jax.jit(jnp.matmul), (a, b)


def matmul_gflops_per_s(size: int, repeats: int = 5) -> float:
    """Median float32 GFLOP/s of a jitted size x size matrix product on the default device."""
    matmul, args = matmul_probe(size)
    jax.block_until_ready(matmul(*args))
    return 2 * size ** 3 / statistics.median(time_call(matmul, *args)[0] for _ in range(repeats)) / 1e9
