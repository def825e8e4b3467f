"""A contextual bandit with a multimodal reward, solved by a flow policy trained with FPO or FPO + DiPOD.

Details: docs/modules.md, section dipod_jax.toys.bandit.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, cast

import chex
import jax
import jax.numpy as jnp
import optax

from dipod_jax.diagnostics.drift import (
    bound_gap,
    flow_fpo_elbo,
    gradient_cosine,
    log_ratio_error,
    score_function_objective,
)
from dipod_jax.diagnostics.flow_exact import exact_log_prob, log_prob_from_noise
from dipod_jax.losses.advantages import normalize_advantages
from dipod_jax.losses.flow import cfm_loss, draw_tau_eps, fpo_log_ratio
from dipod_jax.losses.policy_gradient import fpo_loss
from dipod_jax.models.flow_policy import VelocityFn, VelocityMLP
from dipod_jax.run.config import ConfigError
from dipod_jax.toys import batching

# Metrics of train_step that are finite exactly while training is healthy (the others are diagnostics).
TRAINING_METRICS = ("reward", "cfm_loss")


@dataclasses.dataclass(frozen=True)
class BanditConfig:
    """Hyper-parameters of the flow bandit (all static under jit), checked on construction (`check_config`)."""
    action_dim: int = 2
    num_flow_steps: int = 8
    hidden_size: int = 32
    output_scale: float = 0.25
    batch_size: int = 128
    num_tau_samples: int = 8
    tau_schedule: str = "grid"
    cfm_variant: str = "velocity"
    learning_rate: float = 1e-3
    inner_epochs: int = 8
    clip_eps: float = 0.05
    mode_radius: float = 1.5
    mode_width: float = 0.3
    inversion_tolerance: float = 1e-4
    inversion_max_iterations: int = 1000

    def __post_init__(self):
        check_config(self)


class BanditState(NamedTuple):
    """Training state of one seed."""
    params: Any
    opt_state: Any
    key: jax.Array


def check_config(config: BanditConfig) -> None:
    """ConfigError (a ValueError) naming the first invalid field of `config` (BanditConfig's construction calls it)."""
    if config.action_dim not in (1, 2):
        raise ConfigError("action_dim", f"must be 1 or 2, got {config.action_dim!r}")
    for name in ("num_flow_steps", "hidden_size", "batch_size", "num_tau_samples", "inner_epochs",
                 "inversion_max_iterations"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(name, f"must be >= 1, got {getattr(config, name)!r}")
    for name in ("output_scale", "learning_rate", "clip_eps", "mode_radius", "mode_width", "inversion_tolerance"):
        if not getattr(config, name) > 0:
            raise ConfigError(name, f"must be > 0, got {getattr(config, name)!r}")


def make_velocity_fn(config: BanditConfig):
    """The project's velocity model (`models.flow_policy.VelocityMLP`, two hidden layers of `hidden_size`) and
    `velocity_fn_of(params)`, which closes it over `params` in the project's velocity signature."""
    model = VelocityMLP((config.hidden_size, config.hidden_size), config.action_dim,
                        output_scale=config.output_scale)

    def velocity_fn_of(params):
        return cast(VelocityFn, functools.partial(model.apply, params))

    return model, velocity_fn_of


def make_optimizer(config: BanditConfig) -> optax.GradientTransformation:
    return optax.adam(config.learning_rate)


def reward_modes(contexts: jax.Array, config: BanditConfig) -> jax.Array:
    """The reward's modes: contexts [B, 1] -> [B, M, D] (M = 2 for D = 1, 4 for D = 2)."""
    chex.assert_shape(contexts, (None, 1))
    s = contexts[:, 0]
    if config.action_dim == 1:
        signs = jnp.array([-1.0, 1.0])
        return (config.mode_radius * signs[None, :] + 0.5 * s[:, None])[..., None]
    angles = math.pi / 4 + jnp.arange(4) * (math.pi / 2)
    angles = angles[None, :] + (math.pi / 4) * s[:, None]
    return config.mode_radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def bandit_reward(contexts: jax.Array, actions: jax.Array, config: BanditConfig) -> jax.Array:
    """r(s, a) = max_i exp(-|a - m_i(s)|^2 / (2 w^2)): contexts [B, 1], actions [B, D] -> [B] in [0, 1]."""
    chex.assert_shape(actions, (contexts.shape[0], config.action_dim))
    sq_dist = jnp.sum(jnp.square(actions[:, None, :] - reward_modes(contexts, config)), axis=-1)
    return jnp.max(jnp.exp(-sq_dist / (2.0 * config.mode_width ** 2)), axis=-1)


def init_state(key: jax.Array, config: BanditConfig) -> BanditState:
    """Initial parameters, optimiser state and PRNG key of one seed."""
    model, _ = make_velocity_fn(config)
    key_init, key_train = jax.random.split(key)
    params = model.init(key_init, jnp.zeros((1, 1)), jnp.zeros((1, config.action_dim)), jnp.zeros((1,)))
    return BanditState(params, make_optimizer(config).init(params), key_train)


def train_step(state: BanditState, config: BanditConfig, dipod_beta: float) -> tuple[BanditState, dict]:
    """One FPO (+ DiPOD) rollout-and-update step with exact drift diagnostics.

    Args:
      state: one seed's state.
      config: static hyper-parameters.
      dipod_beta: >= 0, a Python float (0 is FPO exactly) or a traced scalar (`make_population_step`).

    Returns:
      the new state and a dict of scalars: "reward" (mean rollout reward), "bound_gap" (mean of
      log pi_old + mean_n l_old on the rollout; see dipod_jax.diagnostics.drift for its constant),
      "log_ratio_error" (mean |FPO log-ratio - exact log-ratio| of the rollout after the update),
      "exact_log_ratio" (mean |log pi_new - log pi_old|, how far the update moved the policy),
      "grad_cosine" (FPO proxy gradient vs exact policy gradient at the rollout parameters),
      "cfm_loss" (mean l_old), "inversion_residual" (largest residual of the exact-likelihood inversions,
      to be checked on the host with `check_inversion_converged`).
    """
    _, velocity_fn_of = make_velocity_fn(config)
    optimizer = make_optimizer(config)
    b, d, k = config.batch_size, config.action_dim, config.num_flow_steps
    key, key_ctx, key_noise, key_tau = jax.random.split(state.key, 4)
    params_old = state.params

    contexts = jax.random.uniform(key_ctx, (b, 1), minval=-1.0, maxval=1.0)
    noise = jax.random.normal(key_noise, (b, d))
    actions, log_prob_old = log_prob_from_noise(velocity_fn_of(params_old), contexts, noise, k)
    rewards = bandit_reward(contexts, actions, config)
    advantages = normalize_advantages(rewards)
    tau, eps = draw_tau_eps(key_tau, b, config.num_tau_samples, d, config.tau_schedule, k)

    def cfm_losses(params):
        return cfm_loss(velocity_fn_of(params), contexts, actions, tau, eps, config.cfm_variant)

    l_old = cfm_losses(params_old)

    def exact_log_prob_of(params):
        return exact_log_prob(velocity_fn_of(params), contexts, actions, k,
                              config.inversion_max_iterations, config.inversion_tolerance)

    def exact_objective(params):
        log_prob, residual = exact_log_prob_of(params)
        return score_function_objective(log_prob, advantages), residual

    # Both gradients are of objectives to maximise, at the rollout parameters, on the same batch.
    proxy_grad = jax.grad(lambda p: -fpo_loss(l_old, cfm_losses(p), advantages, config.clip_eps,
                                              dipod_beta=0.0)[0])(params_old)
    exact_grad, residual_old = jax.grad(exact_objective, has_aux=True)(params_old)

    def update(carry, _):
        params, opt_state = carry
        grads = jax.grad(lambda p: fpo_loss(l_old, cfm_losses(p), advantages, config.clip_eps,
                                            dipod_beta=dipod_beta)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params_new, opt_state), _ = jax.lax.scan(update, (params_old, state.opt_state), None,
                                              length=config.inner_epochs)

    log_prob_new, residual_new = exact_log_prob_of(params_new)
    exact_ratio = log_prob_new - log_prob_old
    metrics = {
        "reward": jnp.mean(rewards),
        "bound_gap": jnp.mean(bound_gap(log_prob_old, flow_fpo_elbo(l_old))),
        "log_ratio_error": jnp.mean(jnp.abs(log_ratio_error(fpo_log_ratio(l_old, cfm_losses(params_new)),
                                                            exact_ratio))),
        "exact_log_ratio": jnp.mean(jnp.abs(exact_ratio)),
        "grad_cosine": gradient_cosine(proxy_grad, exact_grad),
        "cfm_loss": jnp.mean(l_old),
        "inversion_residual": jnp.maximum(jnp.max(residual_old), jnp.max(residual_new)),
    }
    return BanditState(params_new, opt_state, key), metrics


def make_seed_batched_step(config: BanditConfig, dipod_beta: float):
    """`dipod_jax.toys.batching.seed_batched_step` of this toy: state [n_seeds] -> (state, metrics [n_seeds])."""
    return batching.seed_batched_step(train_step, config, dipod_beta)


def make_population_step(config: BanditConfig):
    """`dipod_jax.toys.batching.population_step` of this toy: (state [P], dipod_beta [P]) -> (state, metrics)."""
    return batching.population_step(train_step, config)


def init_seed_batch(seeds: jax.Array, config: BanditConfig) -> BanditState:
    """Initial states for int seeds [n_seeds] (leading axis [n_seeds] on every leaf)."""
    return batching.init_seed_batch(init_state, seeds, config)
