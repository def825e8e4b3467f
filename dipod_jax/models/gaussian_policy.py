"""Diagonal Gaussian policy for the PPO baseline (actions are squashed by tanh in the environment, as Brax PPO).

The policy's log-likelihood is that of the unsquashed sample: the tanh Jacobian is the same for the old and
new policy and cancels in the PPO ratio. It enters only the entropy estimate.
"""
from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

# Floor on the standard deviation, so the log-density stays finite (Brax PPO's value).
MIN_STD = 1e-3


class GaussianPolicyMLP(nn.Module):
    """obs [..., S] -> (mean [..., D], std [..., D]); std = softplus(raw) + MIN_STD.

    Attributes:
      hidden_sizes: hidden widths (SiLU).
      action_dim: D.
    """

    hidden_sizes: Sequence[int]
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        features = obs
        for width in self.hidden_sizes:
            features = nn.silu(nn.Dense(width)(features))
        mean, raw_std = jnp.split(nn.Dense(2 * self.action_dim)(features), 2, axis=-1)
        return mean, jax.nn.softplus(raw_std) + MIN_STD


def gaussian_log_prob(actions: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """log N(actions; mean, diag(std^2)) summed over the action axis: [..., D] x3 -> [...]."""
    chex.assert_equal_shape([actions, mean, std])
    z = (actions - mean) / std
    return jnp.sum(-0.5 * jnp.square(z) - jnp.log(std) - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def tanh_log_det_jacobian(raw_actions: jax.Array) -> jax.Array:
    """log |d tanh(u) / du| = 2 (log 2 - u - softplus(-2u)), elementwise [...] -> [...] (stable for large |u|)."""
    return 2.0 * (jnp.log(2.0) - raw_actions - jax.nn.softplus(-2.0 * raw_actions))


def squashed_entropy_estimate(mean: jax.Array, std: jax.Array, key: jax.Array) -> jax.Array:
    """One-sample estimate of the entropy of tanh(u), u ~ N(mean, std^2): H[N] + E log|tanh'(u)|.

    Args:
      mean, std: [B, D].
      key: PRNG key for the sample.

    Returns:
      [B] entropies (summed over D).
    """
    chex.assert_equal_shape([mean, std])
    gaussian_entropy = 0.5 + 0.5 * jnp.log(2.0 * jnp.pi) + jnp.log(std)
    raw = mean + std * jax.random.normal(key, mean.shape)
    return jnp.sum(gaussian_entropy + tanh_log_det_jacobian(raw), axis=-1)
