"""Drift measurements: how far a surrogate (ELBO) log-likelihood and its gradient are from the exact ones.

Details: docs/modules.md, section dipod_jax.diagnostics.drift.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def flow_fpo_elbo(cfm_losses: jax.Array) -> jax.Array:
    """The log-likelihood surrogate implied by FPO's ratio.

    Args:
      cfm_losses: [B, N] per-sample CFM losses l(a_b; s_b, tau_n, eps_n).

    Returns:
      [B] -mean_n l: a flow ELBO with unit weight and its additive constant set to zero (see module docstring).
    """
    chex.assert_rank(cfm_losses, 2)
    return -jnp.mean(cfm_losses, axis=-1)


def bound_gap(exact_log_prob: jax.Array, elbo: jax.Array) -> jax.Array:
    """Per-sample bound gap, exact log pi minus the surrogate.

    Args:
      exact_log_prob: [B] exact log pi(a_b | s_b).
      elbo: [B] surrogate estimates of the same log-likelihoods.

    Returns:
      [B] log pi - ELBO (>= 0 in expectation for a true lower bound).
    """
    chex.assert_rank(exact_log_prob, 1)
    chex.assert_equal_shape([exact_log_prob, elbo])
    return exact_log_prob - elbo


def log_ratio_error(proxy_log_ratio: jax.Array, exact_log_ratio: jax.Array) -> jax.Array:
    """Per-sample error of a surrogate log-ratio log(pi_new / pi_old).

    Args:
      proxy_log_ratio: [B] surrogate log-ratio (e.g. ELBO_new - ELBO_old, or FPO's mean l_old - mean l_new).
      exact_log_ratio: [B] log pi_new - log pi_old of the same samples.

    Returns:
      [B] proxy - exact.
    """
    chex.assert_rank(proxy_log_ratio, 1)
    chex.assert_equal_shape([proxy_log_ratio, exact_log_ratio])
    return proxy_log_ratio - exact_log_ratio


def score_function_objective(exact_log_prob: jax.Array, advantages: jax.Array) -> jax.Array:
    """The objective whose gradient is the exact policy-gradient estimate mean_b A_b grad log pi(a_b | s_b).

    Args:
      exact_log_prob: [B] exact log pi_theta(a_b | s_b), differentiable in theta.
      advantages: [B] advantages (treated as constants).

    Returns:
      scalar mean_b stop_gradient(A_b) * log pi(a_b | s_b), to be maximised.
    """
    chex.assert_rank(exact_log_prob, 1)
    chex.assert_equal_shape([exact_log_prob, advantages])
    return jnp.mean(jax.lax.stop_gradient(advantages) * exact_log_prob)


def gradient_cosine(grads_a: chex.ArrayTree, grads_b: chex.ArrayTree, eps: float = 1e-12) -> jax.Array:
    """Cosine similarity between two gradients given as pytrees of the same structure.

    Args:
      grads_a: pytree of arrays.
      grads_b: pytree of arrays with the same structure and shapes.
      eps: floor on the product of norms, so two zero gradients give 0 rather than NaN.

    Returns:
      scalar in [-1, 1]: <a, b> / (|a| |b|) over all leaves flattened together.
    """
    chex.assert_trees_all_equal_shapes(grads_a, grads_b)
    leaves_a = jax.tree_util.tree_leaves(grads_a)
    leaves_b = jax.tree_util.tree_leaves(grads_b)
    dot = sum(jnp.vdot(a, b) for a, b in zip(leaves_a, leaves_b, strict=True))
    norm_a = jnp.sqrt(sum(jnp.vdot(a, a) for a in leaves_a))
    norm_b = jnp.sqrt(sum(jnp.vdot(b, b) for b in leaves_b))
    return dot / jnp.maximum(norm_a * norm_b, eps)
