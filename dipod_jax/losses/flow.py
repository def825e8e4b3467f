"""Conditional flow matching for flow policies: the path, the per-sample CFM loss, stored (tau, eps) draws,
and the FPO / FPO++ log-ratios built from CFM losses.

Sign convention (shared by the whole project): t = 1 is noise, t = 0 is the action. The linear path is
x_tau = tau * eps + (1 - tau) * a with target velocity u = eps - a, so the sampler integrates from t = 1 to 0.
The flow ELBO of an action is -E_{tau, eps}[l_theta] up to a positive weight and an additive constant.
"""
from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

CFM_VARIANTS = ("velocity", "eps")
CFM_REDUCTIONS = ("mean", "sum", "sqrt")
TAU_SCHEDULES = ("grid", "uniform", "beta")


def _check_variant(variant: str) -> None:
    if variant not in CFM_VARIANTS:
        raise ValueError(f"variant must be one of {CFM_VARIANTS}, got {variant!r}")


def _check_reduction(reduction: str, huber_delta) -> None:
    if reduction not in CFM_REDUCTIONS:
        raise ValueError(f"reduction must be one of {CFM_REDUCTIONS}, got {reduction!r}")
    if huber_delta is not None and not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0 or None, got {huber_delta!r}")


def flow_path(actions: jax.Array, eps: jax.Array, tau: jax.Array) -> jax.Array:
    """Point on the linear path between an action and noise.

    Args:
      actions: [..., D] clean actions a.
      eps: [..., D] Gaussian noise.
      tau: [...] path times in [0, 1] (0 = action, 1 = noise).

    Returns:
      [..., D] x_tau = tau * eps + (1 - tau) * a.
    """
    chex.assert_equal_shape([actions, eps])
    chex.assert_equal_shape_prefix([actions, tau], tau.ndim)
    chex.assert_rank(actions, tau.ndim + 1)
    t = tau[..., None]
    return t * eps + (1.0 - t) * actions


def cfm_loss_from_velocity(
    velocity: jax.Array,
    actions: jax.Array,
    eps: jax.Array,
    tau: jax.Array,
    variant: str = "velocity",
    reduction: str = "mean",
    huber_delta: float | None = None,
) -> jax.Array:
    """Per-sample conditional flow-matching loss from a predicted velocity.

    Args:
      velocity: [..., D] v_theta(x_tau, tau, s).
      actions: [..., D] clean actions a.
      eps: [..., D] the noise that produced x_tau.
      tau: [...] path times.
      variant: "velocity" (FPO++'s "u" mode): residual r = v - (eps - a).
        "eps" (FPO's default, "u supervised as eps"): eps_hat = x_tau + (1 - tau) * v, r = eps_hat - eps,
        which is (1 - tau) times the velocity residual.
      reduction: over the D action dimensions of the per-dimension error e_d: "mean" (sum / D), "sum", or
        "sqrt" (sum / sqrt(D), the FPO++ release's IsaacLab default: actor_critic.py `_compute_squared_error`).
      huber_delta: None for e_d = r_d^2; delta > 0 for the FPO++ release's Huber variant
        e_d = r_d^2 where |r_d| <= delta, else 2 delta |r_d| - delta^2 (quadratic inside, the tangent line
        outside: twice the textbook Huber loss).

    Returns:
      [...] per-sample loss.
    """
    _check_variant(variant)
    _check_reduction(reduction, huber_delta)
    chex.assert_equal_shape([velocity, actions, eps])
    if variant == "velocity":
        residual = velocity - (eps - actions)
    else:
        x_tau = flow_path(actions, eps, tau)
        residual = x_tau + (1.0 - tau[..., None]) * velocity - eps
    error = jnp.square(residual)
    if huber_delta is not None:
        magnitude = jnp.abs(residual)
        error = jnp.where(magnitude <= huber_delta, error, 2.0 * huber_delta * magnitude - huber_delta ** 2)
    if reduction == "mean":
        return jnp.mean(error, axis=-1)
    summed = jnp.sum(error, axis=-1)
    return summed if reduction == "sum" else summed / jnp.sqrt(float(error.shape[-1]))


def cfm_loss(
    velocity_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    obs: jax.Array,
    actions: jax.Array,
    tau: jax.Array,
    eps: jax.Array,
    variant: str = "velocity",
    reduction: str = "mean",
    huber_delta: float | None = None,
) -> jax.Array:
    """Per-sample CFM losses l_theta(a; s, tau_n, eps_n) for N stored (tau, eps) pairs per action.

    Args:
      velocity_fn: `velocity_fn(obs [..., S], x [..., D], t [...]) -> [..., D]`, parameters closed over.
      obs: [B, S] observations.
      actions: [B, D] actions.
      tau: [B, N] stored path times.
      eps: [B, N, D] stored noise.
      variant, reduction, huber_delta: see `cfm_loss_from_velocity`.

    Returns:
      [B, N] per-sample losses. Their negated mean over N is the (unnormalised) flow ELBO.
    """
    _check_variant(variant)
    _check_reduction(reduction, huber_delta)
    chex.assert_rank([obs, actions, tau, eps], [2, 2, 2, 3])
    batch, num_samples = tau.shape
    chex.assert_shape(eps, (batch, num_samples, actions.shape[-1]))
    chex.assert_shape(obs, (batch, None))
    chex.assert_shape(actions, (batch, None))
    actions_n = jnp.broadcast_to(actions[:, None, :], eps.shape)
    obs_n = jnp.broadcast_to(obs[:, None, :], (batch, num_samples, obs.shape[-1]))
    x_tau = flow_path(actions_n, eps, tau)
    velocity = velocity_fn(obs_n, x_tau, tau)
    chex.assert_equal_shape([velocity, eps])
    return cfm_loss_from_velocity(velocity, actions_n, eps, tau, variant, reduction, huber_delta)


def draw_tau_eps(
    key: jax.Array,
    batch_size: int,
    num_samples: int,
    action_dim: int,
    schedule: str = "grid",
    num_flow_steps: int = 10,
    beta_b: float = 2.0,
) -> tuple[jax.Array, jax.Array]:
    """Draw the (tau, eps) pairs that are stored at rollout time and reused by every later evaluation.

    Args:
      key: PRNG key.
      batch_size: B, number of actions.
      num_samples: N pairs per action (FPO: 8; FPO++: 16 to 32).
      action_dim: D.
      schedule: "grid": tau uniform over the K points where the Euler sampler evaluates the velocity,
        {1, 1 - 1/K, ..., 1/K} (FPO default); "uniform": tau ~ U(0, 1);
        "beta": FPO++'s tau = 0.005 + 0.99 * (1 - (1 - U)^(1 / b)), the inverse CDF of Beta(1, b).
      num_flow_steps: K, used by "grid".
      beta_b: b, used by "beta" (b > 1 puts more mass near the action end).

    Returns:
      tau [B, N] and eps [B, N, D] (float32).
    """
    if schedule not in TAU_SCHEDULES:
        raise ValueError(f"schedule must be one of {TAU_SCHEDULES}, got {schedule!r}")
    for name, value in (("batch_size", batch_size), ("num_samples", num_samples), ("action_dim", action_dim),
                        ("num_flow_steps", num_flow_steps)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    if schedule == "beta" and not beta_b > 0:
        raise ValueError(f"beta_b must be > 0, got {beta_b!r}")
    key_tau, key_eps = jax.random.split(key)
    shape = (batch_size, num_samples)
    if schedule == "grid":
        k = jax.random.randint(key_tau, shape, 0, num_flow_steps)
        tau = 1.0 - k.astype(jnp.float32) / num_flow_steps
    elif schedule == "uniform":
        tau = jax.random.uniform(key_tau, shape)
    else:
        u = jax.random.uniform(key_tau, shape)
        tau = 0.005 + 0.99 * (1.0 - jnp.power(1.0 - u, 1.0 / beta_b))
    eps = jax.random.normal(key_eps, shape + (action_dim,))
    return tau, eps


def fpo_log_ratio(l_old: jax.Array, l_new: jax.Array) -> jax.Array:
    """FPO's log-ratio, averaging the CFM losses before the exponential.

    Args:
      l_old: [B, N] stored per-sample CFM losses under the rollout parameters.
      l_new: [B, N] the same samples' losses under the current parameters.

    Returns:
      [B] log r = mean_n l_old - mean_n l_new.
    """
    chex.assert_rank(l_old, 2)
    chex.assert_equal_shape([l_old, l_new])
    return jnp.mean(l_old, axis=-1) - jnp.mean(l_new, axis=-1)


def straight_through_clip(x: jax.Array, low: float | None, high: float | None) -> jax.Array:
    """Clip to [low, high] in the forward pass (None: no bound on that side), identity in the backward pass."""
    return x + jax.lax.stop_gradient(jnp.clip(x, low, high) - x)


def fpo_pp_log_ratio(
    l_old: jax.Array,
    l_new: jax.Array,
    advantages: jax.Array,
    loss_clamp: float | None = 20.0,
    log_ratio_clamp: float = 10.0,
    cfm_loss_clamp: float = -1.0,
) -> jax.Array:
    """FPO++'s per-sample log-ratios with the release's clamps, in its order (fpo.py `FPO.update`).

    1. cfm_loss_clamp > 0: both l_old and l_new are clamped from above at cfm_loss_clamp, whatever the
       advantage's sign (<= 0 disables it; the release's IsaacLab base configuration uses 20).
    2. Where A < 0, l_new is clamped from above at `loss_clamp` (pushing an action away can otherwise blow its
       CFM loss up without bound; the clamped sample gets no gradient).
    3. log r = l_old - l_new is clamped from above only at `log_ratio_clamp` with a straight-through
       estimator (`clamp_ste(log_ratio, max=c)`): the forward value is min(log r, c), the gradient is the
       identity's. A sample whose loss rose keeps its true, small ratio.

    Args:
      l_old: [B, N] stored per-sample losses.
      l_new: [B, N] current per-sample losses.
      advantages: [B].
      loss_clamp: upper clamp on l_new where A < 0 (> 0), or None to disable it.
      log_ratio_clamp: c > 0.
      cfm_loss_clamp: upper clamp on l_old and l_new for every sample; <= 0 disables it.

    Returns:
      [B, N] log r_n (clamped as above).
    """
    if loss_clamp is not None and not loss_clamp > 0:
        raise ValueError(f"loss_clamp must be > 0 or None, got {loss_clamp!r}")
    if not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp!r}")
    chex.assert_rank([l_old, advantages], [2, 1])
    chex.assert_equal_shape([l_old, l_new])
    chex.assert_equal_shape_prefix([l_old, advantages], 1)
    if cfm_loss_clamp > 0:
        l_old = jnp.minimum(l_old, cfm_loss_clamp)
        l_new = jnp.minimum(l_new, cfm_loss_clamp)
    if loss_clamp is not None:
        negative = (advantages < 0)[:, None]
        l_new = jnp.where(negative, jnp.minimum(l_new, loss_clamp), l_new)
    return straight_through_clip(l_old - l_new, None, log_ratio_clamp)
