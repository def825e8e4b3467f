"""Critic loss."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def value_loss(values: jax.Array, returns: jax.Array, old_values: jax.Array | None = None,
               clip_eps: float | None = None) -> jax.Array:
    """0.5 * mean squared error of the critic, optionally PPO-style clipped around the rollout values.

    Args:
      values: [...] current predictions V_theta(s).
      returns: [...] targets (GAE returns).
      old_values: [...] predictions at rollout time; required when `clip_eps` is given.
      clip_eps: if given, the prediction may move at most eps from `old_values` before the loss stops
        rewarding it: 0.5 * mean(max((V - R)^2, (V_clipped - R)^2)).

    Returns:
      scalar loss.

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import value_loss
      >>> float(value_loss(jnp.array([1.0, 2.0]), jnp.array([0.0, 2.0])))  # 0.5 * mean((V - R)^2)
      0.25
    """
    chex.assert_equal_shape([values, returns])
    squared = jnp.square(values - returns)
    if clip_eps is None:
        return 0.5 * jnp.mean(squared)
    if old_values is None:
        raise ValueError("value_loss: old_values is required when clip_eps is given")
    if isinstance(clip_eps, (int, float)) and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps!r}")
    chex.assert_equal_shape([values, old_values])
    clipped = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    return 0.5 * jnp.mean(jnp.maximum(squared, jnp.square(clipped - returns)))
