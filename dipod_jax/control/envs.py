"""Environment adapters behind one interface: brax.envs, MuJoCo Playground's DM Control Suite, a tiny test env.

Every environment is an `Environment` of two pure, unbatched functions:
  reset(key) -> state              state is a pytree with fields obs [S], reward [], done []
  step(state, action [D]) -> state action in [-1, 1]^D; done marks a terminal state (never a time limit)
Time limits, auto-reset and episode metrics are added by `dipod_jax.control.rollout`, identically for every
backend (the raw brax / Playground environments are used without their own wrappers).

Names: "CartpoleBalance" and the other DM Control Suite names (Playground, impl "jax" by default),
"brax/<name>" for brax.envs (backend "mjx" by default), "tiny/point_target" (pure JAX, for tests).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

BRAX_PREFIX = "brax/"
TINY_POINT_TARGET = "tiny/point_target"


class Environment(NamedTuple):
    """An environment as two pure functions plus its sizes.

    Attributes:
      name: registry name.
      observation_size: S.
      action_size: D.
      reset: key -> state (unbatched pytree with obs [S], reward [], done []).
      step: (state, action [D]) -> state.
      default_episode_length: the backend's time limit in steps.
    """

    name: str
    observation_size: int
    action_size: int
    reset: Callable[[jax.Array], Any]
    step: Callable[[Any, jax.Array], Any]
    default_episode_length: int


class PointTargetState(NamedTuple):
    """State of the tiny environment: obs [2 * D], reward [], done [], position [D], target [D]."""

    obs: jax.Array
    reward: jax.Array
    done: jax.Array
    position: jax.Array
    target: jax.Array


def make_point_target(action_size: int = 2, speed: float = 0.2, termination_radius: float = 3.0,
                      episode_length: int = 50) -> Environment:
    """A point in R^D that should move to a random target: a tiny, fast, learnable pure-JAX environment.

    obs = [target - position, position]; position += speed * action; reward = 1 - ||target - position||^2 / D;
    the episode terminates (done = 1) when ||position||_inf exceeds `termination_radius`. The optimal policy
    moves straight to the target, so the return of a learning agent rises well above a random policy's.

    Returns:
      an `Environment` with observation_size 2 D.
    """

    def observe(position, target):
        return jnp.concatenate([target - position, position])

    def reset(key):
        key_position, key_target = jax.random.split(key)
        position = jax.random.uniform(key_position, (action_size,), minval=-0.5, maxval=0.5)
        target = jax.random.uniform(key_target, (action_size,), minval=-1.0, maxval=1.0)
        zero = jnp.zeros((), jnp.float32)
        return PointTargetState(observe(position, target), zero, zero, position, target)

    def step(state, action):
        chex.assert_shape(action, (action_size,))
        position = state.position + speed * jnp.clip(action, -1.0, 1.0)
        reward = 1.0 - jnp.sum(jnp.square(state.target - position)) / action_size
        done = (jnp.max(jnp.abs(position)) > termination_radius).astype(jnp.float32)
        return PointTargetState(observe(position, state.target), reward, done, position, state.target)

    return Environment(TINY_POINT_TARGET, 2 * action_size, action_size, reset, step, episode_length)


def playground_env_names() -> tuple[str, ...]:
    """DM Control Suite names registered by MuJoCo Playground."""
    from mujoco_playground import dm_control_suite
    return tuple(dm_control_suite.ALL_ENVS)


def brax_env_names() -> tuple[str, ...]:
    """brax.envs names with the "brax/" prefix (brax keeps its registry in the module-level `_envs`)."""
    from brax import envs as brax_envs
    return tuple(BRAX_PREFIX + name for name in sorted(brax_envs._envs))


def valid_env_names() -> tuple[str, ...]:
    """Every name `make_environment` accepts."""
    return (TINY_POINT_TARGET,) + playground_env_names() + brax_env_names()


def _size(value: Any) -> int:
    """A size the environment libraries report (a number, typed loosely there: dict-valued observation sizes
    are refused) as an int."""
    if not isinstance(value, (int, np.integer)):
        raise ValueError(f"expected an integer size from the environment, got {value!r}")
    return int(value)


def make_environment(name: str, brax_backend: str = "mjx", playground_impl: str = "jax") -> Environment:
    """Build an environment by name.

    Args:
      name: see the module docstring.
      brax_backend: physics backend for "brax/..." names.
      playground_impl: MuJoCo Playground's physics implementation ("jax" runs on CPU).

    Returns:
      an `Environment`.

    Raises:
      ValueError: unknown name (the message lists the valid names).
    """
    if name == TINY_POINT_TARGET:
        return make_point_target()
    if name.startswith(BRAX_PREFIX):
        from brax import envs as brax_envs
        if name not in brax_env_names():
            raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(valid_env_names())}")
        env = brax_envs.get_environment(name[len(BRAX_PREFIX):], backend=brax_backend)
        return Environment(name, _size(env.observation_size), _size(env.action_size), env.reset, env.step, 1000)
    if name in playground_env_names():
        from mujoco_playground import registry
        env = registry.load(name, config_overrides={"impl": playground_impl})
        episode_length = _size(registry.get_default_config(name).episode_length)
        return Environment(name, _size(env.observation_size), _size(env.action_size), env.reset, env.step,
                           episode_length)
    raise ValueError(f"unknown environment {name!r}; valid names: {', '.join(valid_env_names())}")
