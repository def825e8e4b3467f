"""The DiPOD on-policy ELBO regulariser: the single place where the DiPOD term is defined.

DiPOD (arXiv 2606.13795) adds to every policy-gradient loss

    loss_DiPOD(theta) = loss_PG(theta) - beta * mean_{rollout batch} ELBO_theta(a | s)

Self-distillation (maximising the ELBO of the policy's own samples) leaves the sampling distribution unchanged
but tightens the bound; the regulariser is that step merged into the policy update.
"""
from __future__ import annotations

import numbers

import chex
import jax
import jax.numpy as jnp


def check_dipod_beta(beta) -> None:
    """Raise ValueError when a concrete `dipod_beta` is negative or not finite (traced values pass)."""
    if isinstance(beta, numbers.Real):
        value = float(beta)
        if not (value >= 0.0) or value == float("inf"):
            raise ValueError(f"dipod_beta must be a finite number >= 0, got {beta!r}")


def is_zero_beta(beta) -> bool:
    """True when `beta` is a concrete Python number equal to 0: the DiPOD term is then left out entirely."""
    return isinstance(beta, numbers.Real) and beta == 0


def weighted_mean(values: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean of `values` [...], or sum(w * v) / sum(w) with `weights` of the same shape.

    The denominator is floored at the smallest positive float so an all-zero weight vector gives 0, not NaN.
    """
    if weights is None:
        return jnp.mean(values)
    chex.assert_equal_shape([values, weights])
    weights = weights.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), jnp.finfo(values.dtype).tiny)


def dipod_regularizer(elbo: jax.Array, beta, weights: jax.Array | None = None) -> jax.Array:
    """The DiPOD term -beta * mean(ELBO) over the on-policy batch.

    Args:
      elbo: [...] ELBO estimates of the current rollout's samples under the current parameters
        (for flows: -l_theta, the negated per-sample CFM loss; for dLLMs: a sequence ELBO).
      beta: scalar >= 0 (Python number or traced array).
      weights: optional [...] non-negative weights (e.g. completion lengths for SPG's length-weighted mean).

    Returns:
      scalar, to be added to the policy-gradient loss.

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import dipod_regularizer
      >>> round(float(dipod_regularizer(jnp.array([-2.0, -4.0]), 0.1)), 4)  # -0.1 * mean ELBO
      0.3
    """
    check_dipod_beta(beta)
    return -beta * weighted_mean(elbo, weights)


def with_dipod(pg_loss: jax.Array, elbo: jax.Array | None, beta, weights: jax.Array | None = None) -> jax.Array:
    """Compose a policy-gradient loss with the DiPOD term: pg_loss - beta * mean(elbo).

    A concrete beta == 0 returns `pg_loss` itself, so the loss and its gradient are bit-for-bit the baseline's
    (no extra operation enters the graph). A traced beta always adds the term.

    Args:
      pg_loss: scalar policy-gradient loss.
      elbo: [...] on-policy ELBO estimates (see `dipod_regularizer`); may be None only when beta is a Python 0.
      beta: scalar >= 0.
      weights: optional [...] weights for the mean.

    Returns:
      scalar total loss.

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import with_dipod
      >>> pg_loss, elbo = jnp.float32(0.5), jnp.array([-2.0, -4.0])
      >>> round(float(with_dipod(pg_loss, elbo, 0.1)), 4)  # 0.5 - 0.1 * mean ELBO
      0.8
      >>> with_dipod(pg_loss, elbo, 0.0) is pg_loss  # beta = 0: the baseline's own array, no extra operation
      True
    """
    check_dipod_beta(beta)
    chex.assert_rank(pg_loss, 0)
    if is_zero_beta(beta):
        return pg_loss
    if elbo is None:
        raise ValueError(f"the DiPOD term needs the ELBO when dipod_beta != 0 (got {beta!r})")
    return pg_loss + dipod_regularizer(elbo, beta, weights)


def dipod_term_metric(loss: jax.Array, pg_loss: jax.Array, beta) -> jax.Array:
    """The DiPOD term's value for diagnostics: loss - pg_loss, or a constant 0 when beta is a Python 0.

    The constant keeps the diagnostic from adding any operation on the baseline's loss at beta = 0, so the
    compiled baseline is the same program (and hence the same bits) on every backend.
    """
    if is_zero_beta(beta):
        return jnp.zeros((), pg_loss.dtype)
    return loss - pg_loss
