"""Trust-region surrogate objectives (to be maximised) for a ratio r and an advantage A, elementwise.

PPO clips the ratio; SPO replaces the clip by a quadratic penalty that keeps a non-zero gradient pulling r
back to 1; ASPO (FPO++'s default) uses PPO where A > 0 and SPO where A < 0.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

TRUST_REGIONS = ("ppo", "spo", "aspo")


def check_clip_eps(clip_eps) -> None:
    """Raise ValueError unless a concrete clip epsilon is > 0."""
    if isinstance(clip_eps, (int, float)) and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps!r}")


def ppo_objective(ratio: jax.Array, advantages: jax.Array, clip_eps: float) -> jax.Array:
    """PPO's clipped surrogate, elementwise: min(r A, clip(r, 1 - eps, 1 + eps) A).

    Args:
      ratio: [...] probability ratios.
      advantages: [...] advantages, same shape as `ratio`.
      clip_eps: eps > 0.

    Returns:
      [...] objective to maximise.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import ppo_objective
      >>> print(np.round(ppo_objective(jnp.array([0.5, 1.0, 1.5]), jnp.ones(3), 0.2), 3))  # gain capped at 1 + eps
      [0.5 1.  1.2]
    """
    check_clip_eps(clip_eps)
    chex.assert_equal_shape([ratio, advantages])
    clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    return jnp.minimum(ratio * advantages, clipped * advantages)


def spo_objective(ratio: jax.Array, advantages: jax.Array, clip_eps: float) -> jax.Array:
    """SPO's penalised surrogate, elementwise: r A - |A| / (2 eps) * (r - 1)^2.

    Args:
      ratio: [...]; advantages: [...] same shape; clip_eps: eps > 0.

    Returns:
      [...] objective to maximise.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import spo_objective
      >>> print(np.asarray(spo_objective(jnp.array([0.5, 1.0, 1.5]), jnp.ones(3), 0.2), float).round(3))
      [-0.125  1.     0.875]
    """
    check_clip_eps(clip_eps)
    chex.assert_equal_shape([ratio, advantages])
    return ratio * advantages - jnp.abs(advantages) / (2.0 * clip_eps) * jnp.square(ratio - 1.0)


def aspo_objective(ratio: jax.Array, advantages: jax.Array, clip_eps: float) -> jax.Array:
    """ASPO: PPO's clip where A > 0, SPO's penalty where A <= 0.

    Args:
      ratio: [...]; advantages: [...] same shape; clip_eps: eps > 0.

    Returns:
      [...] objective to maximise.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import aspo_objective
      >>> print(np.round(aspo_objective(jnp.array([0.5, 1.5]), jnp.array([1.0, -1.0]), 0.2), 3))  # PPO, then SPO
      [ 0.5   -2.125]
    """
    return jnp.where(advantages > 0, ppo_objective(ratio, advantages, clip_eps),
                     spo_objective(ratio, advantages, clip_eps))


def trust_region_objective(ratio: jax.Array, advantages: jax.Array, clip_eps: float,
                           kind: str = "ppo") -> jax.Array:
    """Dispatch to `ppo_objective`, `spo_objective` or `aspo_objective` by name.

    Args:
      ratio: [...]; advantages: [...] same shape; clip_eps: eps > 0; kind: "ppo" | "spo" | "aspo".

    Returns:
      [...] objective to maximise.
    """
    if kind == "ppo":
        return ppo_objective(ratio, advantages, clip_eps)
    if kind == "spo":
        return spo_objective(ratio, advantages, clip_eps)
    if kind == "aspo":
        return aspo_objective(ratio, advantages, clip_eps)
    raise ValueError(f"trust_region must be one of {TRUST_REGIONS}, got {kind!r}")


def clip_fraction(ratio: jax.Array, clip_eps: float) -> jax.Array:
    """Fraction of ratios outside [1 - eps, 1 + eps] (a diagnostic), scalar."""
    return jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))
