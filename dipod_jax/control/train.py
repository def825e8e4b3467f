"""Jitted on-policy trainer for continuous control: PPO (Gaussian), FPO and FPO++ (flow), each with dipod_beta.

Details: docs/modules.md, section dipod_jax.control.train.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import chex
import jax
import jax.numpy as jnp
import optax

from dipod_jax import losses
from dipod_jax.control import normalization
from dipod_jax.control.configs import HyperParams, TrainConfig, hyper_params
from dipod_jax.control.envs import Environment, make_environment
from dipod_jax.control.policies import Policy, make_policy
from dipod_jax.control.rollout import ActFn, RolloutState, evaluate_episodes, init_rollout_state, rollout
from dipod_jax.models.critic import CriticMLP

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
    """Everything the trainer carries between iterations (a pytree; vmappable over seeds).

    Attributes:
      params: {"actor": ..., "critic": ...}.
      opt_state: Adam state of `params`.
      obs_stats: running observation statistics.
      rollout_state: batched environments.
      key: PRNG key.
      iteration: [] int32 RL iterations done.
      env_steps: [] int32 environment steps taken (self-distillation rollouts included).
    """

    params: Any
    opt_state: Any
    obs_stats: normalization.RunningStats
    rollout_state: RolloutState
    key: jax.Array
    iteration: jax.Array
    env_steps: jax.Array


class PolicyExtras(NamedTuple):
    """What a rollout stores with each action besides the environment's action (leading axis E):
    raw_action [E, D], the policy's unsquashed sample that the losses score, and stored, the family's
    rollout-time quantities (dipod_jax.control.policies.FlowStored or GaussianStored; () when not stored)."""

    raw_action: jax.Array
    stored: Any


class Batch(NamedTuple):
    """Flattened update data, leading axis the number of transitions: obs [.., S] (normalised), action [..,
    D] (raw), advantages [..], returns [..], extras (the policy's stored quantities)."""

    obs: jax.Array
    action: jax.Array
    advantages: jax.Array
    returns: jax.Array
    extras: Any


class Trainer(NamedTuple):
    """The functions returned by `make_train` (see the module docstring) and the environment they use."""

    init: Callable[[jax.Array], TrainState]
    train_iteration: Callable[..., tuple[TrainState, Metrics]]
    train_iterations: Callable[..., tuple[TrainState, Metrics]]
    evaluate: Callable[[TrainState, jax.Array], Metrics]
    self_distill: Callable[[TrainState, int], tuple[TrainState, Metrics]]
    env: Environment
    config: TrainConfig
    policy: Policy


def explained_variance(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """1 - Var(targets - predictions) / Var(targets) over all elements of [...]-shaped arrays (0 if Var = 0)."""
    chex.assert_equal_shape([predictions, targets])
    target_variance = jnp.var(targets)
    return jnp.where(target_variance > 0,
                     1.0 - jnp.var(targets - predictions) / jnp.maximum(target_variance, 1e-12), 0.0)


def values_from_next_values(next_values: jax.Array, start_values: jax.Array, reset_values: jax.Array,
                            episode_ended: jax.Array) -> jax.Array:
    """V(s_t) for a rollout from V(s'_t), saving one critic pass over the whole batch.

    With auto-reset to each environment's cached first state, the observation at step t + 1 is the one reached
    at step t unless the episode ended there, in which case it is that environment's reset observation.

    Args:
      next_values: [T, E] V of the observation reached by step t (pre-reset).
      start_values: [E] V of the observation at step 0.
      reset_values: [E] V of each environment's reset observation.
      episode_ended: [T, E] 1 where step t terminated or truncated.

    Returns:
      [T, E] V(s_t).
    """
    chex.assert_rank(next_values, 2)
    chex.assert_equal_shape([next_values, episode_ended])
    chex.assert_shape([start_values, reset_values], next_values.shape[1:])
    later = jnp.where(episode_ended[:-1] > 0, reset_values[None], next_values[:-1])
    return jnp.concatenate([start_values[None], later])


def make_optimizer(config: TrainConfig, learning_rate) -> optax.GradientTransformation:
    """Adam (AdamW when config.weight_decay > 0) after optional global-norm clipping. `learning_rate` may be
    traced; the optimiser state's structure does not depend on it."""
    b1, b2 = config.adam_betas
    adam = optax.adamw(learning_rate, b1, b2, weight_decay=config.weight_decay) \
        if config.weight_decay else optax.adam(learning_rate, b1, b2)
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm) if config.max_grad_norm else optax.identity(), adam)


def make_self_distill(config: TrainConfig, env: Environment, episode_length: int, policy: Policy,
                      make_act: Callable[..., ActFn], normalized: Callable) -> Callable:
    """make_train's self_distill(state, num_iterations) -> (state, metrics [num_iterations]): fit a student
    (started at the actor) to the frozen actor's own samples.

    Each iteration rolls `sd_env_steps` steps of the teacher in the training environments into a ring buffer of
    `sd_batch_size` (obs, raw action) pairs, then takes one AdamW step on the policy's `distill_loss` over
    `sd_batch_size` pairs drawn from the filled part, with fresh (tau, eps). `make_act` and `normalized` are
    make_train's (the policy on raw observations; observation normalisation).
    """
    obs_size, action_size = env.observation_size, env.action_size
    capacity = config.sd_batch_size
    rows_per_iteration = config.sd_env_steps * config.num_envs
    sd_optimizer = optax.chain(optax.clip_by_global_norm(config.sd_max_grad_norm),
                               optax.adamw(config.sd_learning_rate, weight_decay=config.sd_weight_decay))

    def self_distill(state: TrainState, num_iterations: int) -> tuple[TrainState, Metrics]:
        distill_loss = policy.distill_loss
        if distill_loss is None:
            raise ValueError("self_distill needs a flow policy (algo fpo or fpo++)")
        teacher = state.params["actor"]
        teacher_act = make_act(teacher, state.obs_stats, store=False)

        def sd_iteration(carry, key):
            student, opt_state, buffer_obs, buffer_action, filled, write_at, rollout_state = carry
            key_rollout, key_index, key_loss = jax.random.split(key, 3)
            rollout_state, transitions, _ = rollout(env, teacher_act, rollout_state, key_rollout,
                                                    config.sd_env_steps, episode_length)
            rows = (write_at + jnp.arange(rows_per_iteration)) % capacity
            buffer_obs = buffer_obs.at[rows].set(
                normalized(state.obs_stats, transitions.obs).reshape(rows_per_iteration, obs_size))
            buffer_action = buffer_action.at[rows].set(
                transitions.extras.raw_action.reshape(rows_per_iteration, action_size))
            filled = jnp.minimum(filled + rows_per_iteration, capacity)
            index = jax.random.randint(key_index, (capacity,), 0, filled)
            loss, grads = jax.value_and_grad(distill_loss)(student, buffer_obs[index], buffer_action[index],
                                                                  key_loss)
            updates, opt_state = sd_optimizer.update(grads, opt_state, student)
            student = optax.apply_updates(student, updates)
            carry = (student, opt_state, buffer_obs, buffer_action, filled,
                     (write_at + rows_per_iteration) % capacity, rollout_state)
            return carry, {"sd_loss": loss}

        key, key_sd = jax.random.split(state.key)
        carry = (teacher, sd_optimizer.init(teacher), jnp.zeros((capacity, obs_size)),
                 jnp.zeros((capacity, action_size)), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32),
                 state.rollout_state)
        carry, metrics = jax.lax.scan(sd_iteration, carry, jax.random.split(key_sd, num_iterations))
        student, rollout_state = carry[0], carry[-1]
        new_state = state._replace(
            params={**state.params, "actor": student}, rollout_state=rollout_state, key=key,
            env_steps=state.env_steps + num_iterations * rows_per_iteration)
        return new_state, metrics

    return self_distill


def make_train(config: TrainConfig, env: Environment | None = None,
               minibatch_sharding: jax.sharding.Sharding | None = None) -> Trainer:
    """Build the trainer for `config` (validated first; `env` defaults to `make_environment(config.env_name)`).

    The algorithm enters only through `make_policy` (dipod_jax.control.policies). The functions that update
    the parameters take an optional `hyper` (a HyperParams): None means the config's own values as Python
    floats; a population passes per-member traced values instead. `minibatch_sharding` (e.g.
    NamedSharding(mesh, PartitionSpec(None, "data"))) constrains every [num_minibatches, minibatch, ...] array
    of the update epochs, so each minibatch's forward and backward passes are split over devices and the
    compiler sums the gradients (data parallelism); None leaves placement to the compiler.

    Long as a whole, on purpose: the nested functions (each under 50 lines) close over one static setup (config,
    environment, policy, critic), as Brax's and PureJaxRL's train builders do; self-distillation, which needs
    none of the update path, is `make_self_distill`.
    """
    if env is None:
        env = make_environment(config.env_name)
    obs_size, action_size = env.observation_size, env.action_size
    episode_length = config.episode_length or env.default_episode_length
    num_envs, rollout_length = config.num_envs, config.rollout_length
    static_hyper = hyper_params(config)
    policy = make_policy(config, action_size)
    critic = CriticMLP(config.critic_hidden)

    def critic_values(params, obs: jax.Array) -> jax.Array:
        return cast(jax.Array, critic.apply(params, obs))
    advantage_normalization = config.resolved_advantage_normalization

    def normalized(stats, obs):
        return normalization.normalize(stats, obs) if config.normalize_observations else obs

    def make_act(actor_params, stats, deterministic=False, store=True) -> ActFn:
        """The policy on raw observations [E, S] -> (environment actions [E, D], PolicyExtras)."""
        def act(obs, key):
            obs_n = normalized(stats, obs)
            if store:
                raw_action, stored = policy.act_and_store(actor_params, obs_n, key)
            else:
                raw_action, stored = policy.act(actor_params, obs_n, key, deterministic), ()
            return policy.postprocess(raw_action), PolicyExtras(raw_action, stored)
        return act

    def total_loss(params, batch: Batch, key, hyper: HyperParams):
        advantages = batch.advantages
        if advantage_normalization == "minibatch":
            advantages = losses.normalize_advantages(advantages)
        pg_total, aux = policy.loss(params["actor"], batch.obs, batch.action, batch.extras, advantages, key,
                                    hyper)
        v_loss = losses.value_loss(critic_values(params["critic"], batch.obs), batch.returns)
        loss = pg_total + hyper.value_loss_coef * v_loss
        return loss, {**aux, "value_loss": v_loss, "total_loss": loss}

    def update_epochs(params, opt_state, batch: Batch, key, hyper: HyperParams):
        """num_updates_per_batch epochs over `batch`, each a reshuffle into num_minibatches minibatches."""
        optimizer = make_optimizer(config, hyper.learning_rate)

        def minibatch_step(carry, minibatch_and_key):
            params, opt_state = carry
            minibatch, key = minibatch_and_key
            (_, aux), grads = jax.value_and_grad(total_loss, has_aux=True)(params, minibatch, key, hyper)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (params, opt_state), {**aux, "grad_norm": optax.tree.norm(grads)}

        def epoch(carry, key):
            params, opt_state = carry
            key_perm, key_steps = jax.random.split(key)
            num_transitions = batch.advantages.shape[0]
            permutation = jax.random.permutation(key_perm, num_transitions)
            minibatches = jax.tree.map(
                lambda x: x[permutation].reshape((config.num_minibatches, -1) + x.shape[1:]), batch)
            if minibatch_sharding is not None:
                minibatches = jax.lax.with_sharding_constraint(minibatches, minibatch_sharding)
            return jax.lax.scan(minibatch_step, (params, opt_state),
                                (minibatches, jax.random.split(key_steps, config.num_minibatches)))

        return jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, config.num_updates_per_batch))

    def rl_update(state: TrainState, key, hyper: HyperParams) -> tuple[TrainState, Metrics]:
        """One iteration of rollout and update epochs (no self-distillation)."""
        key_rollout, key_epochs = jax.random.split(key)
        act = make_act(state.params["actor"], state.obs_stats)
        rollout_state, transitions, episodes = rollout(env, act, state.rollout_state, key_rollout,
                                                       rollout_length, episode_length)
        obs_n = normalized(state.obs_stats, transitions.obs)
        next_values = critic_values(state.params["critic"], normalized(state.obs_stats, transitions.next_obs))
        start_and_reset_obs = jnp.concatenate([transitions.obs[0], state.rollout_state.first_env_state.obs])
        start_values, reset_values = jnp.split(
            critic_values(state.params["critic"], normalized(state.obs_stats, start_and_reset_obs)), 2)
        values = values_from_next_values(next_values, start_values, reset_values,
                                         jnp.maximum(transitions.termination, transitions.truncation))
        advantages, returns = losses.gae(transitions.reward * config.reward_scaling, values, next_values,
                                         transitions.termination, transitions.truncation, config.discounting,
                                         config.gae_lambda, truncation_bootstrap=config.timeout_bootstrap)
        trained_advantages = advantages
        if advantage_normalization == "rollout":
            trained_advantages = losses.normalize_advantages(advantages, unbiased=True)
        flatten = lambda x: x.reshape((rollout_length * num_envs,) + x.shape[2:])  # noqa: E731
        batch = jax.tree.map(flatten, Batch(obs_n, transitions.extras.raw_action, trained_advantages, returns,
                                            transitions.extras.stored))
        (params, opt_state), update_metrics = update_epochs(state.params, state.opt_state, batch, key_epochs,
                                                            hyper)
        obs_stats = state.obs_stats
        if config.normalize_observations:
            obs_stats = normalization.update_running_stats(obs_stats, transitions.obs)
        env_steps = state.env_steps + rollout_length * num_envs
        metrics = {name: jnp.mean(value) for name, value in update_metrics.items()}
        metrics.update(
            explained_variance=explained_variance(values, returns),
            advantage_std=jnp.std(advantages),
            reward_mean=jnp.mean(transitions.reward),
            episode_return=episodes.return_sum / jnp.maximum(episodes.count, 1.0),
            episode_length=episodes.length_sum / jnp.maximum(episodes.count, 1.0),
            episodes_ended=episodes.count,
        )
        new_state = state._replace(params=params, opt_state=opt_state, obs_stats=obs_stats,
                                   rollout_state=rollout_state, iteration=state.iteration + 1,
                                   env_steps=env_steps)
        return new_state, metrics

    self_distill = make_self_distill(config, env, episode_length, policy, make_act, normalized)

    def init(key) -> TrainState:
        key_actor, key_critic, key_env, key_state = jax.random.split(key, 4)
        params = {"actor": policy.init(key_actor, obs_size),
                  "critic": critic.init(key_critic, jnp.zeros((1, obs_size)))}
        optimizer = make_optimizer(config, static_hyper.learning_rate)
        state = TrainState(params, optimizer.init(params), normalization.init_running_stats(obs_size),
                           init_rollout_state(env, key_env, num_envs), key_state,
                           jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
        if config.sd_init_iterations:
            state, _ = self_distill(state, config.sd_init_iterations)
        return state

    def train_iteration(state: TrainState, hyper: HyperParams | None = None) -> tuple[TrainState, Metrics]:
        key, key_iteration = jax.random.split(state.key)
        state, metrics = rl_update(state._replace(key=key), key_iteration, static_hyper if hyper is None else hyper)
        if config.sd_every:
            def distill(s):
                s, sd_metrics = self_distill(s, config.sd_interleaved_iterations)
                return s, sd_metrics["sd_loss"][0], sd_metrics["sd_loss"][-1]

            def skip(s):
                return s, jnp.zeros(()), jnp.zeros(())

            state, metrics["sd_loss_first"], metrics["sd_loss"] = jax.lax.cond(
                state.iteration % config.sd_every == 0, distill, skip, state)
        return state, metrics

    def train_iterations(state: TrainState, num_iterations: int,
                         hyper: HyperParams | None = None) -> tuple[TrainState, Metrics]:
        return jax.lax.scan(lambda s, _: train_iteration(s, hyper), state, None, length=num_iterations)

    def evaluate(state: TrainState, key) -> Metrics:
        act = make_act(state.params["actor"], state.obs_stats, deterministic=True, store=False)
        returns, lengths = evaluate_episodes(env, act, key, config.num_eval_envs, episode_length)
        return {"eval_return_mean": jnp.mean(returns), "eval_return_std": jnp.std(returns),
                "eval_length_mean": jnp.mean(lengths)}

    return Trainer(init, train_iteration, train_iterations, evaluate, self_distill, env, config, policy)
