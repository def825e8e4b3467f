"""Exact log-likelihoods of the flow policy's K-step Euler sampler (small action dimensions).

Details: docs/modules.md, section dipod_jax.diagnostics.flow_exact.
"""
from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

from dipod_jax.models.flow_policy import VelocityFn, euler_sample, euler_step, euler_times

MAX_ACTION_DIM = 8


class SamplerInversionError(RuntimeError):
    """The step-by-step fixed-point inversion of the Euler sampler did not converge."""


def _check_num_flow_steps(num_flow_steps: int) -> None:
    if not isinstance(num_flow_steps, (int, np.integer)) or num_flow_steps < 1:
        raise ValueError(f"num_flow_steps must be an integer >= 1, got {num_flow_steps!r}")


def _check_batch(obs: jax.Array, x: jax.Array, x_name: str) -> None:
    if obs.ndim != 2 or x.ndim != 2 or obs.shape[0] != x.shape[0]:
        raise ValueError(f"expected obs [B, S] and {x_name} [B, D] with the same B, got obs {obs.shape} "
                         f"and {x_name} {x.shape}")
    if x.shape[1] > MAX_ACTION_DIM:
        raise ValueError(f"{x_name} has action dimension {x.shape[1]} > {MAX_ACTION_DIM}; exact Jacobians are "
                         "only computed for small action dimensions")


def _sample_one(velocity_fn: VelocityFn, obs: jax.Array, noise: jax.Array, num_flow_steps: int) -> jax.Array:
    """`euler_sample` of one trajectory: obs [S], noise [D] -> action [D]."""
    return euler_sample(velocity_fn, obs[None], noise[None], num_flow_steps)[0]


def _standard_normal_log_prob(x: jax.Array) -> jax.Array:
    """log N(x; 0, I) for x [..., D] -> [...]."""
    return -0.5 * jnp.sum(jnp.square(x), axis=-1) - 0.5 * x.shape[-1] * math.log(2.0 * math.pi)


def log_prob_from_noise(
    velocity_fn: VelocityFn, obs: jax.Array, noise: jax.Array, num_flow_steps: int
) -> tuple[jax.Array, jax.Array]:
    """Sample actions and their exact log-density under the Euler sampler (no inversion needed).

    Args:
      velocity_fn: the velocity field, parameters closed over.
      obs: [B, S] observations.
      noise: [B, D] starting noise.
      num_flow_steps: K >= 1.

    Returns:
      actions [B, D] and log pi(actions | obs) [B] = log N(noise) - log |det d action / d noise|.
    """
    _check_num_flow_steps(num_flow_steps)
    _check_batch(obs, noise, "noise")

    def one(s, z):
        def sample(x):
            return _sample_one(velocity_fn, s, x, num_flow_steps)

        _, log_abs_det = jnp.linalg.slogdet(jax.jacfwd(sample)(z))
        return sample(z), _standard_normal_log_prob(z) - log_abs_det

    actions, log_prob = jax.vmap(one)(obs, noise)
    chex.assert_shape(log_prob, (obs.shape[0],))
    return actions, log_prob


def _invert_one(
    velocity_fn: VelocityFn, obs: jax.Array, action: jax.Array, num_flow_steps: int,
    max_iterations: int, tolerance: float,
) -> tuple[jax.Array, jax.Array]:
    """Undo `euler_sample` for one trajectory: obs [S], action [D] -> (noise [D], largest step residual [])."""
    dt = 1.0 / num_flow_steps

    def fixed_point(step_fn, initial):
        # x <- x - step_fn(x) is x <- x_next + dt * v(x, t): a contraction when dt * Lip(v) < 1.
        def keep_going(state):
            iteration, _, change = state
            return (iteration < max_iterations) & (change > tolerance)

        def iterate(state):
            iteration, x, _ = state
            x_new = x - step_fn(x)
            return iteration + 1, x_new, jnp.max(jnp.abs(x_new - x))

        _, solution, _ = jax.lax.while_loop(keep_going, iterate, (0, initial, jnp.asarray(jnp.inf, initial.dtype)))
        return solution

    def solve_linear(linear_fn, rhs):
        return jnp.linalg.solve(jax.jacfwd(linear_fn)(rhs), rhs)

    def invert_step(x_next, t):
        def step_residual(x):
            return euler_step(velocity_fn, obs[None], x[None], t, dt)[0] - x_next

        x = jax.lax.custom_root(step_residual, x_next, fixed_point, solve_linear)
        residual = jnp.max(jnp.abs(jax.lax.stop_gradient(step_residual(x))))
        return x, residual

    noise, residuals = jax.lax.scan(invert_step, action, euler_times(num_flow_steps), reverse=True)
    # NaN residuals (a diverged iteration) must count as failures, so they are mapped to +inf.
    largest = jnp.max(residuals)
    return noise, jnp.where(jnp.isnan(largest), jnp.inf, largest)


def check_inversion_converged(residual: jax.Array, tolerance: float) -> None:
    """Raise `SamplerInversionError` when any concrete residual exceeds `tolerance` (or is not finite).

    Args:
      residual: [...] largest per-step residual |euler_step(x(t_k)) - x(t_k - dt)|_inf of each inverted action.
      tolerance: the accepted residual.
    """
    values = np.asarray(residual)
    failed = ~(values <= tolerance)
    if np.any(failed):
        raise SamplerInversionError(
            f"Euler-sampler inversion did not converge for {int(failed.sum())} of {values.size} actions "
            f"(largest residual {np.nanmax(np.where(np.isfinite(values), values, np.inf)):.3g} > tolerance "
            f"{tolerance:.3g}); the step is not a contraction: dt * Lip(v) >= 1, so increase num_flow_steps")


def invert_euler_sampler(
    velocity_fn: VelocityFn,
    obs: jax.Array,
    actions: jax.Array,
    num_flow_steps: int,
    max_iterations: int = 500,
    tolerance: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
    """Recover the noise that the Euler sampler maps to `actions`, one step at a time.

    Gradients with respect to the parameters closed over by `velocity_fn` (and to `actions`) are exact,
    by implicit differentiation of each step's fixed point.

    Args:
      velocity_fn: the velocity field, parameters closed over.
      obs: [B, S] observations.
      actions: [B, D] actions.
      num_flow_steps: K >= 1.
      max_iterations: fixed-point iterations allowed per step.
      tolerance: an iteration stops once the update's largest entry is <= tolerance; an action counts as
        converged when its largest per-step residual is <= tolerance.

    Returns:
      noise [B, D] and residual [B] (largest per-step residual, +inf where the iteration diverged).

    Raises:
      SamplerInversionError: when called with concrete arrays (outside jit) and some action did not converge.
        Under jit it cannot raise; the caller must pass `residual` to `check_inversion_converged` on the host.
    """
    _check_num_flow_steps(num_flow_steps)
    _check_batch(obs, actions, "actions")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations!r}")
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    noise, residual = jax.vmap(
        lambda s, a: _invert_one(velocity_fn, s, a, num_flow_steps, max_iterations, tolerance))(obs, actions)
    chex.assert_shape(residual, (actions.shape[0],))
    if not isinstance(residual, Tracer):
        check_inversion_converged(residual, tolerance)
    return noise, residual


def exact_log_prob(
    velocity_fn: VelocityFn,
    obs: jax.Array,
    actions: jax.Array,
    num_flow_steps: int,
    max_iterations: int = 500,
    tolerance: float = 1e-5,
) -> tuple[jax.Array, jax.Array]:
    """Exact log pi_theta(a | s) of given actions under the Euler sampler, differentiable in theta.

    Args:
      velocity_fn: the velocity field, parameters closed over.
      obs: [B, S] observations.
      actions: [B, D] actions (any parameters may have produced them).
      num_flow_steps: K >= 1.
      max_iterations, tolerance: see `invert_euler_sampler`.

    Returns:
      log_prob [B] and the inversion residual [B] (see `invert_euler_sampler`; it raises outside jit).
    """
    noise, residual = invert_euler_sampler(velocity_fn, obs, actions, num_flow_steps, max_iterations, tolerance)
    _, log_prob = log_prob_from_noise(velocity_fn, obs, noise, num_flow_steps)
    return log_prob, residual
