"""The policy of each algorithm family as one record, chosen once per configuration.

Details: docs/modules.md, section dipod_jax.control.policies.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from dipod_jax import losses
from dipod_jax.control.configs import HyperParams, TrainConfig
from dipod_jax.models.flow_policy import VelocityFn, VelocityMLP, sample_actions
from dipod_jax.models.gaussian_policy import GaussianPolicyMLP, gaussian_log_prob, squashed_entropy_estimate

LossAndAux = tuple[jax.Array, dict]


class FlowStored(NamedTuple):
    """Stored with each flow action: tau [E, N], eps [E, N, D], l_old [E, N] (common random numbers)."""

    tau: jax.Array
    eps: jax.Array
    l_old: jax.Array


class GaussianStored(NamedTuple):
    """Stored with each Gaussian action: logp_old [E]."""

    logp_old: jax.Array


class Policy(NamedTuple):
    """An algorithm family's actor (see the module docstring for each function's contract)."""

    init: Callable[[jax.Array, int], Any]
    act: Callable[[Any, jax.Array, jax.Array, bool], jax.Array]
    act_and_store: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
    postprocess: Callable[[jax.Array], jax.Array]
    loss: Callable[[Any, jax.Array, jax.Array, Any, jax.Array, jax.Array, HyperParams], LossAndAux]
    distill_loss: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array] | None


def squash(raw_actions: jax.Array) -> jax.Array:
    """tanh: both families sample in R^D and act in [-1, 1]^D (Brax PPO's NormalTanhDistribution)."""
    return jnp.tanh(raw_actions)


def make_policy(config: TrainConfig, action_size: int) -> Policy:
    """The policy of `config.algo`'s family: Gaussian for "ppo", flow for "fpo" and "fpo++"."""
    if config.is_flow:
        return _flow_policy(config, action_size)
    return _gaussian_policy(config, action_size)


def _gaussian_policy(config: TrainConfig, action_size: int) -> Policy:
    network = GaussianPolicyMLP(config.actor_hidden, action_size)

    def init(key, obs_size):
        return network.init(key, jnp.zeros((1, obs_size)))

    def sample(params, obs, key):
        # The step key is split as the flow policy splits it (action, stored samples).
        key_action, _ = jax.random.split(key)
        mean, std = cast(tuple[jax.Array, jax.Array], network.apply(params, obs))
        return mean, std, mean + std * jax.random.normal(key_action, mean.shape)

    def act(params, obs, key, deterministic=False):
        mean, _, action = sample(params, obs, key)
        return mean if deterministic else action

    def act_and_store(params, obs, key):
        mean, std, action = sample(params, obs, key)
        return action, GaussianStored(gaussian_log_prob(action, mean, std))

    def loss(params, obs, raw_actions, stored, advantages, key, hyper):
        mean, std = cast(tuple[jax.Array, jax.Array], network.apply(params, obs))
        logp_new = gaussian_log_prob(raw_actions, mean, std)
        entropy = squashed_entropy_estimate(mean, std, key)
        return losses.ppo_loss(logp_new, stored.logp_old, advantages, hyper.clip_eps, entropy=entropy,
                               entropy_coef=hyper.entropy_cost, dipod_beta=hyper.dipod_beta)

    return Policy(init, act, act_and_store, squash, loss, None)


def _flow_policy(config: TrainConfig, action_size: int) -> Policy:
    network = VelocityMLP(config.actor_hidden, action_size, config.time_embed_dim, config.output_scale)
    tau_schedule = config.resolved_tau_schedule
    trust_region = config.resolved_trust_region

    def velocity_fn(params):
        return cast(VelocityFn, functools.partial(network.apply, params))

    def draw_tau_eps(key, batch_size):
        return losses.draw_tau_eps(key, batch_size, config.num_cfm_samples, action_size, tau_schedule,
                                   config.num_flow_steps, config.tau_beta_b)

    def cfm_loss(velocity, obs, action, tau, eps):
        return losses.cfm_loss(velocity, obs, action, tau, eps, config.cfm_variant, config.cfm_reduction,
                               config.cfm_huber_delta)

    def init(key, obs_size):
        return network.init(key, jnp.zeros((1, obs_size)), jnp.zeros((1, action_size)), jnp.zeros((1,)))

    def act(params, obs, key, deterministic=False):
        key_action, _ = jax.random.split(key)
        return sample_actions(velocity_fn(params), obs, key_action, action_size, config.num_flow_steps,
                              deterministic)

    def act_and_store(params, obs, key):
        key_action, key_samples = jax.random.split(key)
        velocity = velocity_fn(params)
        action = sample_actions(velocity, obs, key_action, action_size, config.num_flow_steps)
        tau, eps = draw_tau_eps(key_samples, obs.shape[0])
        return action, FlowStored(tau, eps, cfm_loss(velocity, obs, action, tau, eps))

    if config.algo == "fpo":
        def ratio_loss(l_old, l_new, advantages, hyper):
            return losses.fpo_loss(l_old, l_new, advantages, hyper.clip_eps, trust_region,
                                   dipod_beta=hyper.dipod_beta)
    else:
        def ratio_loss(l_old, l_new, advantages, hyper):
            return losses.fpo_pp_loss(l_old, l_new, advantages, hyper.clip_eps, trust_region,
                                      advantage_clamp=config.advantage_clamp, loss_clamp=config.loss_clamp,
                                      log_ratio_clamp=config.log_ratio_clamp, dipod_beta=hyper.dipod_beta,
                                      cfm_loss_clamp=config.cfm_loss_clamp)

    def loss(params, obs, raw_actions, stored, advantages, key, hyper):
        del key  # the stored (tau, eps) pairs are the loss's only randomness
        l_new = cfm_loss(velocity_fn(params), obs, raw_actions, stored.tau, stored.eps)
        return ratio_loss(stored.l_old, l_new, advantages, hyper)

    def distill_loss(params, obs, raw_actions, key):
        tau, eps = draw_tau_eps(key, obs.shape[0])
        return losses.self_distillation_loss(cfm_loss(velocity_fn(params), obs, raw_actions, tau, eps))

    return Policy(init, act, act_and_store, squash, loss, distill_loss)
