"""The seed-batched and population steps of the toys (one implementation for bandit and sequence): a toy's
`train_step(state, config, dipod_beta)` vmapped over seeds, with the beta static or traced per member."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

TrainStep = Callable[[Any, Any, Any], tuple[Any, dict]]


@functools.cache
def seed_batched_step(train_step: TrainStep, config: Any, dipod_beta: float):
    """jit(vmap(train_step)) over a batch of seeds: state with leading axis [n_seeds] -> (state, metrics
    [n_seeds]). Memoised on (train_step, config, dipod_beta), so repeated runs of a setting reuse the compile."""
    return jax.jit(jax.vmap(lambda state: train_step(state, config, dipod_beta)))


@functools.cache
def population_step(train_step: TrainStep, config: Any):
    """jit(vmap(train_step)) over a population: (state [P], dipod_beta [P] float32) -> (state, metrics [P]).

    Each member is one seed's state with its own traced DiPOD beta, so a (seed x beta) sweep of a setting is one
    program (seeds may repeat). A member at beta 0 adds the term times a traced zero, which changes no value:
    it is bit-identical to `seed_batched_step(train_step, config, 0.0)` on the same states (tests/test_toys.py).
    """
    return jax.jit(jax.vmap(lambda state, beta: train_step(state, config, beta)))


def init_seed_batch(init_state: Callable[[jax.Array, Any], Any], seeds: jax.Array, config: Any):
    """Initial states for int seeds [n_seeds] (leading axis [n_seeds] on every leaf)."""
    return jax.vmap(lambda seed: init_state(jax.random.PRNGKey(seed), config))(seeds)
