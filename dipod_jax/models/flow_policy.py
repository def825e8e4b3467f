"""The project's flow policy: a velocity MLP and its K-step Euler sampler (docs/algorithms.md, section 3.1).

Sign convention (WORKSPACE.md): t = 1 is noise, t = 0 is the action; the sampler integrates from t = 1 to
t = 0 with x_{t - dt} = x_t - dt * v(x_t, t, s). A zero initial noise x_1 = 0 gives the deterministic
("zero-noise") evaluation action.

This is the only velocity model and the only sampler: the control trainer (dipod_jax.control.policies), the
flow bandit (dipod_jax.toys.bandit) and the exact likelihoods (dipod_jax.diagnostics.flow_exact, which inverts
`euler_step` on the grid `euler_times`) all use it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

VelocityFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def sinusoidal_time_embedding(t: jax.Array, embed_dim: int) -> jax.Array:
    """FPO's time features: cos and sin of t * 2^j for j = 0 .. embed_dim / 2 - 1.

    Args:
      t: [...] flow times in [0, 1].
      embed_dim: even number of features.

    Returns:
      [..., embed_dim] features, cosines first.
    """
    if embed_dim < 2 or embed_dim % 2:
        raise ValueError(f"embed_dim must be a positive even number, got {embed_dim!r}")
    frequencies = 2.0 ** jnp.arange(embed_dim // 2, dtype=jnp.float32)
    scaled = t[..., None] * frequencies
    return jnp.concatenate([jnp.cos(scaled), jnp.sin(scaled)], axis=-1)


class VelocityMLP(nn.Module):
    """v_theta(x, t, s): an MLP on [obs, x, time features] with SiLU hidden layers and a scaled output.

    The output scale (FPO: 0.25) keeps the initial velocity small, so the initial policy stays close to the
    noise it starts from.

    Attributes:
      hidden_sizes: widths of the hidden layers (FPO reference: 4 x 32).
      action_dim: D.
      time_embed_dim: number of sinusoidal time features (even).
      output_scale: constant factor on the last layer's output.
    """

    hidden_sizes: Sequence[int]
    action_dim: int
    time_embed_dim: int = 8
    output_scale: float = 0.25

    @nn.compact
    def __call__(self, obs: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
        """obs [..., S], x [..., D], t [...] -> velocity [..., D] (leading axes must match)."""
        chex.assert_equal_shape_prefix([obs, x, t], t.ndim)
        chex.assert_axis_dimension(x, -1, self.action_dim)
        features = jnp.concatenate([obs, x, sinusoidal_time_embedding(t, self.time_embed_dim)], axis=-1)
        for width in self.hidden_sizes:
            features = nn.silu(nn.Dense(width)(features))
        return nn.Dense(self.action_dim)(features) * self.output_scale


def euler_times(num_steps: int) -> jax.Array:
    """[K] the grid t_k = 1 - k / K (k = 0 .. K - 1) at which the sampler's steps evaluate the velocity."""
    return 1.0 - jnp.arange(num_steps, dtype=jnp.float32) * (1.0 / num_steps)


def euler_step(velocity_fn: VelocityFn, obs: jax.Array, x: jax.Array, t: jax.Array, dt: float) -> jax.Array:
    """One Euler step from t to t - dt: obs [B, S], x [B, D], scalar t -> x - dt * v(x, t, s) [B, D]."""
    return x - dt * velocity_fn(obs, x, jnp.full(x.shape[:1], t))


def euler_sample(velocity_fn: VelocityFn, obs: jax.Array, x1: jax.Array, num_steps: int) -> jax.Array:
    """Integrate the flow from t = 1 to t = 0 with `num_steps` Euler steps on the grid `euler_times`.

    Args:
      velocity_fn: `velocity_fn(obs [B, S], x [B, D], t [B]) -> [B, D]`, parameters closed over.
      obs: [B, S] (normalised) observations.
      x1: [B, D] initial noise; zeros give the zero-noise evaluation action.
      num_steps: K >= 1.

    Returns:
      [B, D] unsquashed actions x_0.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps!r}")
    chex.assert_rank([obs, x1], 2)
    chex.assert_equal_shape_prefix([obs, x1], 1)
    dt = 1.0 / num_steps

    def step(x, t):
        return euler_step(velocity_fn, obs, x, t, dt), None

    x0, _ = jax.lax.scan(step, x1, euler_times(num_steps))
    return x0


def sample_actions(velocity_fn: VelocityFn, obs: jax.Array, key: jax.Array, action_dim: int,
                   num_steps: int, deterministic: bool = False) -> jax.Array:
    """Draw x_1 ~ N(0, I) (or x_1 = 0 when `deterministic`) and run the Euler sampler.

    Args:
      velocity_fn: see `euler_sample`.
      obs: [B, S].
      key: PRNG key (unused when deterministic).
      action_dim: D.
      num_steps: K.
      deterministic: zero-noise evaluation mode.

    Returns:
      [B, D] unsquashed actions.
    """
    shape = (obs.shape[0], action_dim)
    x1 = jnp.zeros(shape) if deterministic else jax.random.normal(key, shape)
    return euler_sample(velocity_fn, obs, x1, num_steps)
