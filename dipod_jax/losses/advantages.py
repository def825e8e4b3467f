"""Advantage estimators: GAE with truncation bootstrapping, batch normalisation, GRPO group advantages."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

TRUNCATION_BOOTSTRAPS = ("next_value", "current_value")


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminations: jax.Array,
    truncations: jax.Array,
    gamma: float,
    gae_lambda: float,
    truncation_bootstrap: str = "next_value",
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over a rollout with auto-reset environments.

    An episode ends at step t when it terminates or is truncated. A termination bootstraps nothing; a
    truncation bootstraps from the value of the observation actually reached, `next_values[t]`, which the
    rollout records before the auto-reset. Either way the recursion does not carry across the boundary.
    truncation_bootstrap="current_value" is the FPO++ release's (rsl_rl's) approximation instead: a truncated
    step's reward gets gamma * V(s_t), the value of the state it started from, and the step is then treated as
    terminal (fpo.py `process_env_step`); it is exact only when V(s_{t+1}) = V(s_t).

    Args:
      rewards: [T, B] reward of step t.
      values: [T, B] V(s_t).
      next_values: [T, B] V(s_{t+1}) of the observation reached by step t (pre-reset).
      terminations: [T, B] 1 where step t ended the episode in a terminal state.
      truncations: [T, B] 1 where step t ended the episode by a time limit (and did not terminate).
      gamma: discount in [0, 1].
      gae_lambda: lambda in [0, 1].

      truncation_bootstrap: "next_value" (correct) or "current_value" (the FPO++ release).

    Returns:
      advantages [T, B] and value targets returns = advantages + values, [T, B].

    Examples:
      Two steps of one environment, reward 1 each, zero values, the episode terminating at the second step:

      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import gae
      >>> ones, zeros = jnp.ones((2, 1)), jnp.zeros((2, 1))
      >>> advantages, returns = gae(ones, zeros, zeros, jnp.array([[0.0], [1.0]]), zeros, 0.9, 1.0)
      >>> print(np.asarray(advantages[:, 0], float).round(3))  # 1 + 0.9 * 1, then 1
      [1.9 1. ]
    """
    if truncation_bootstrap not in TRUNCATION_BOOTSTRAPS:
        raise ValueError(f"truncation_bootstrap must be one of {TRUNCATION_BOOTSTRAPS}, got {truncation_bootstrap!r}")
    for name, value in (("gamma", gamma), ("gae_lambda", gae_lambda)):
        if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    chex.assert_rank(rewards, 2)
    chex.assert_equal_shape([rewards, values, next_values, terminations, truncations])
    terminations = terminations.astype(rewards.dtype)
    if truncation_bootstrap == "current_value":
        rewards = rewards + gamma * values * truncations.astype(rewards.dtype)
        terminations = jnp.maximum(terminations, truncations.astype(rewards.dtype))
    episode_end = jnp.maximum(terminations, truncations.astype(rewards.dtype))
    deltas = rewards + gamma * (1.0 - terminations) * next_values - values
    carry_discount = gamma * gae_lambda * (1.0 - episode_end)

    def backward(next_advantage, step):
        delta, discount = step
        advantage = delta + discount * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(rewards[0]), (deltas, carry_discount), reverse=True)
    return advantages, advantages + values


def normalize_advantages(advantages: jax.Array, eps: float = 1e-8, unbiased: bool = False) -> jax.Array:
    """(A - mean) / (std + eps) over every element of `advantages` [...].

    unbiased=False divides the variance by n (Brax PPO and the FPO reference, per minibatch); True by n - 1,
    as torch's `Tensor.std()` in the FPO++ release (rollout_storage.py `compute_returns`).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import normalize_advantages
      >>> print(np.round(normalize_advantages(jnp.array([1.0, 2.0, 3.0])), 3))  # population std
      [-1.225  0.     1.225]
    """
    return (advantages - jnp.mean(advantages)) / (jnp.std(advantages, ddof=1 if unbiased else 0) + eps)


def grpo_advantages(rewards: jax.Array, scale_by_std: bool = False, eps: float = 1e-4) -> jax.Array:
    """GRPO group-relative advantages.

    Args:
      rewards: [P, G] rewards of G completions for each of P prompts (G >= 2).
      scale_by_std: divide by the group's standard deviation + eps (GRPO); d1 leaves it off.
      eps: added to the std.

    Returns:
      [P, G] A = r - mean_group(r) (optionally / (std_group + eps)).

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import grpo_advantages
      >>> print(np.round(grpo_advantages(jnp.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])), 3))
      [[ 0.5 -0.5 -0.5  0.5]
       [ 0.   0.   0.   0. ]]
    """
    chex.assert_rank(rewards, 2)
    if rewards.shape[1] < 2:
        raise ValueError(f"group size G must be >= 2, got rewards of shape {rewards.shape}")
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if scale_by_std:
        return centred / (jnp.std(rewards, axis=1, keepdims=True) + eps)
    return centred
