"""Batched rollouts with time limits, auto-reset and episode metrics; evaluation episodes.

Auto-reset restores each environment's first state (drawn once at initialisation), as Brax's auto-reset
wrapper does, so no reset (and no physics call) is paid inside the scan. The transition keeps the observation
reached *before* the reset (`next_obs`), so time-limit truncations bootstrap from the right state. The policy
returns the action the environment receives (squashing is the policy's job, as in brax/training/acting.py) and
whatever it wants stored with it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from dipod_jax.control.envs import Environment

# act(obs [E, S], key) -> (environment actions [E, D], per-action extras pytree with leading axis E)
ActFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


class RolloutState(NamedTuple):
    """Batched environment state between iterations.

    Attributes:
      env_state: backend state pytree with leading axis E.
      first_env_state: the states restored on auto-reset, leading axis E.
      episode_step: [E] int32 steps taken in the current episode.
      episode_return: [E] float32 undiscounted return so far.
    """

    env_state: Any
    first_env_state: Any
    episode_step: jax.Array
    episode_return: jax.Array


class Transition(NamedTuple):
    """One step of E environments (a rollout stacks them to leading axes [T, E]).

    Attributes:
      obs: [E, S] raw observation the action was chosen from.
      next_obs: [E, S] raw observation reached (before any auto-reset).
      action: [E, D] the action the environment received.
      reward: [E] environment reward (unscaled).
      termination: [E] 1.0 where the episode reached a terminal state.
      truncation: [E] 1.0 where the time limit ended a non-terminal episode.
      extras: the policy's per-action extras (for the trainer's policies: the raw sample and what the loss
        needs from rollout time, dipod_jax.control.train.PolicyExtras).
    """

    obs: jax.Array
    next_obs: jax.Array
    action: jax.Array
    reward: jax.Array
    termination: jax.Array
    truncation: jax.Array
    extras: Any


class EpisodeStats(NamedTuple):
    """Sums over the episodes that ended during a rollout: return_sum [], length_sum [], count []."""

    return_sum: jax.Array
    length_sum: jax.Array
    count: jax.Array


def init_rollout_state(env: Environment, key: jax.Array, num_envs: int) -> RolloutState:
    """Reset `num_envs` environments with independent keys."""
    env_state = jax.vmap(env.reset)(jax.random.split(key, num_envs))
    chex.assert_shape(env_state.obs, (num_envs, env.observation_size))
    return RolloutState(env_state, env_state, jnp.zeros((num_envs,), jnp.int32),
                        jnp.zeros((num_envs,), jnp.float32))


def _select(mask: jax.Array, when_true: Any, when_false: Any) -> Any:
    """Per-environment choice between two batched pytrees; mask [E] bool."""
    def pick(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, when_true, when_false)


def rollout(env: Environment, act: ActFn, state: RolloutState, key: jax.Array, num_steps: int,
            episode_length: int) -> tuple[RolloutState, Transition, EpisodeStats]:
    """Run `num_steps` steps of every environment (lax.scan over vmapped environments).

    Args:
      env: the environment.
      act: policy, see `ActFn`.
      state: batched rollout state (E environments).
      key: PRNG key.
      num_steps: T.
      episode_length: time limit; an episode reaching it is truncated and reset.

    Returns:
      (new state, transitions with leading axes [T, E], statistics of the episodes that ended).
    """
    def one_step(carry, step_key):
        state, stats = carry
        obs = state.env_state.obs
        action, extras = act(obs, step_key)
        next_env_state = jax.vmap(env.step)(state.env_state, action)
        episode_step = state.episode_step + 1
        episode_return = state.episode_return + next_env_state.reward
        termination = next_env_state.done > 0
        truncation = jnp.logical_and(episode_step >= episode_length, jnp.logical_not(termination))
        ended = jnp.logical_or(termination, truncation)
        transition = Transition(obs, next_env_state.obs, action, next_env_state.reward,
                                termination.astype(jnp.float32), truncation.astype(jnp.float32), extras)
        ended_f = ended.astype(jnp.float32)
        stats = EpisodeStats(stats.return_sum + jnp.sum(episode_return * ended_f),
                             stats.length_sum + jnp.sum(episode_step * ended_f),
                             stats.count + jnp.sum(ended_f))
        new_state = RolloutState(
            env_state=_select(ended, state.first_env_state, next_env_state),
            first_env_state=state.first_env_state,
            episode_step=jnp.where(ended, 0, episode_step),
            episode_return=jnp.where(ended, 0.0, episode_return),
        )
        return (new_state, stats), transition

    zero = jnp.zeros((), jnp.float32)
    (state, stats), transitions = jax.lax.scan(one_step, (state, EpisodeStats(zero, zero, zero)),
                                               jax.random.split(key, num_steps))
    return state, transitions, stats


def evaluate_episodes(env: Environment, act: ActFn, key: jax.Array, num_envs: int,
                      episode_length: int) -> tuple[jax.Array, jax.Array]:
    """One episode in each of `num_envs` fresh environments, without auto-reset.

    Args:
      env, act: as in `rollout` (pass a deterministic `act` for zero-noise evaluation).
      key: PRNG key for the resets and the policy.
      num_envs: number of episodes.
      episode_length: steps per episode unless it terminates earlier.

    Returns:
      episode returns [num_envs] and lengths [num_envs] (float32).
    """
    reset_key, act_key = jax.random.split(key)
    env_state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))

    def one_step(carry, step_key):
        env_state, alive, episode_return, length = carry
        action, _ = act(env_state.obs, step_key)
        env_state = jax.vmap(env.step)(env_state, action)
        # where, not a product: a finished episode may keep stepping into non-finite physics.
        episode_return = episode_return + jnp.where(alive > 0, env_state.reward, 0.0)
        length = length + alive
        alive = alive * (1.0 - (env_state.done > 0).astype(jnp.float32))
        return (env_state, alive, episode_return, length), None

    zeros = jnp.zeros((num_envs,), jnp.float32)
    (_, _, returns, lengths), _ = jax.lax.scan(one_step, (env_state, zeros + 1.0, zeros, zeros),
                                               jax.random.split(act_key, episode_length))
    return returns, lengths
