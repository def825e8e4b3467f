"""A tiny masked-diffusion policy over short sequences, trained by FPO-for-dLLMs or SPG, with or without DiPOD.

Details: docs/modules.md, section dipod_jax.toys.sequence.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, cast

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dipod_jax.diagnostics.drift import bound_gap, gradient_cosine, log_ratio_error, score_function_objective
from dipod_jax.diagnostics.masked_exact import (
    MAX_EXACT_LENGTH,
    elbo_from_subset_table,
    logprob_from_subset_table,
    subset_token_log_probs,
)
from dipod_jax.losses.advantages import grpo_advantages
from dipod_jax.losses.lm import fpo_dllm_loss, spg_loss
from dipod_jax.losses.masked import (
    apply_mask,
    elbo_from_token_logprobs,
    mask_block_random,
    mask_uniform_count,
    spg_elbo_from_token_logprobs,
    spg_eubo_from_token_logprobs,
    token_log_probs,
)
from dipod_jax.run.config import ConfigError
from dipod_jax.toys import batching

# Metrics of train_step that are finite exactly while training is healthy (the others are diagnostics).
TRAINING_METRICS = ("reward", "log_prob")

SEQUENCE_ALGORITHMS = ("fpo", "spg")


@dataclasses.dataclass(frozen=True)
class SequenceConfig:
    """Hyper-parameters of the sequence toy (all static under jit), checked on construction (`check_config`)."""
    algo: str = "fpo"
    vocab_size: int = 6
    completion_length: int = 4
    num_prompts: int = 8
    group_size: int = 8
    hidden_size: int = 64
    learning_rate: float = 3e-3
    inner_epochs: int = 4
    clip_eps: float = 0.5
    num_mask_draws: int = 4
    spg_num_draws: int = 2
    spg_block_length: int = 2
    spg_beta_e: float = 1.5
    spg_mix_weight: float = 0.5

    def __post_init__(self):
        check_config(self)


class SequenceState(NamedTuple):
    """Training state of one seed."""
    params: Any
    opt_state: Any
    key: jax.Array


def check_config(config: SequenceConfig) -> None:
    """ConfigError (a ValueError) naming the first invalid field of `config` (SequenceConfig's construction
    calls it)."""
    if config.algo not in SEQUENCE_ALGORITHMS:
        raise ConfigError("algo", f"must be one of {SEQUENCE_ALGORITHMS}, got {config.algo!r}")
    if not 1 <= config.completion_length <= MAX_EXACT_LENGTH:
        raise ConfigError("completion_length", f"must be in [1, {MAX_EXACT_LENGTH}], got {config.completion_length!r}")
    if not 2 <= config.vocab_size <= 8:
        raise ConfigError("vocab_size", f"must be in [2, 8], got {config.vocab_size!r}")
    if config.group_size < 2:
        raise ConfigError("group_size", f"must be >= 2, got {config.group_size!r}")
    for name in ("num_prompts", "hidden_size", "inner_epochs", "num_mask_draws", "spg_num_draws",
                 "spg_block_length"):
        if int(getattr(config, name)) < 1:
            raise ConfigError(name, f"must be >= 1, got {getattr(config, name)!r}")
    for name in ("learning_rate", "clip_eps", "spg_beta_e"):
        if not getattr(config, name) > 0:
            raise ConfigError(name, f"must be > 0, got {getattr(config, name)!r}")
    if not 0.0 <= config.spg_mix_weight <= 1.0:
        raise ConfigError("spg_mix_weight", f"must be in [0, 1], got {config.spg_mix_weight!r}")
    window_blocks = -(-config.completion_length // config.spg_block_length)
    if config.algo == "spg" and config.spg_num_draws > window_blocks:
        raise ConfigError("spg_num_draws", f"must be <= the completion's {window_blocks} blocks of spg_block_length, "
                          f"got {config.spg_num_draws!r}")


def mask_id(config: SequenceConfig) -> int:
    """The mask token id, one past the vocabulary."""
    return config.vocab_size


def completion_mask(config: SequenceConfig) -> np.ndarray:
    """[B, 1 + L] concrete bool: every position after the prompt token is a real completion token."""
    batch = config.num_prompts * config.group_size
    mask = np.ones((batch, 1 + config.completion_length), dtype=bool)
    mask[:, 0] = False
    return mask


class DenoiserMLP(nn.Module):
    """p_theta(x_i | x): tokens [B, T] (ids in [0, V], V = mask) -> logits [B, T, V]."""
    vocab_size: int
    hidden_size: int

    @nn.compact
    def __call__(self, tokens):
        batch, length = tokens.shape
        h = jax.nn.one_hot(tokens, self.vocab_size + 1).reshape(batch, length * (self.vocab_size + 1))
        h = nn.swish(nn.Dense(self.hidden_size)(h))
        h = nn.swish(nn.Dense(self.hidden_size)(h))
        return nn.Dense(length * self.vocab_size)(h).reshape(batch, length, self.vocab_size)


def make_logits_fn(config: SequenceConfig):
    """Return (model, `logits_fn_of(params)`) with `logits_fn_of(params)(tokens [B, T]) -> [B, T, V]`."""
    model = DenoiserMLP(config.vocab_size, config.hidden_size)
    return model, lambda params: (lambda tokens: cast(jax.Array, model.apply(params, tokens)))


def target_completions(prompts: jax.Array, config: SequenceConfig) -> jax.Array:
    """The two rewarded completions of each prompt: prompts [B] -> [B, 2, L]."""
    steps = jnp.arange(config.completion_length)
    up = (prompts[:, None] + steps[None]) % config.vocab_size
    down = (prompts[:, None] - steps[None]) % config.vocab_size
    return jnp.stack([up, down], axis=1)


def sequence_reward(prompts: jax.Array, completions: jax.Array, config: SequenceConfig) -> jax.Array:
    """max over the two targets of the fraction of matching positions: prompts [B], completions [B, L] -> [B]."""
    chex.assert_shape(completions, (prompts.shape[0], config.completion_length))
    matches = jnp.mean(completions[:, None, :] == target_completions(prompts, config), axis=-1)
    return jnp.max(matches, axis=-1)


def sample_random_order(key: jax.Array, logits_fn, prompts: jax.Array, config: SequenceConfig) -> jax.Array:
    """Random-order sampler: unmask one uniformly chosen completion position per step, drawn at temperature 1.

    Args:
      key: PRNG key.
      logits_fn: tokens [B, T] -> logits [B, T, V].
      prompts: [B] prompt tokens.
      config: static configuration.

    Returns:
      [B, 1 + L] int32 rows (prompt, completion).
    """
    batch, length = prompts.shape[0], config.completion_length
    key_order, key_tokens = jax.random.split(key)
    # Completion positions 1..L in a uniformly random order per row.
    order = 1 + jnp.argsort(jax.random.uniform(key_order, (batch, length)), axis=-1)
    start = jnp.concatenate([prompts[:, None], jnp.full((batch, length), mask_id(config))], axis=-1)
    rows = jnp.arange(batch)

    def reveal(tokens, step_inputs):
        position, step_key = step_inputs
        logits = logits_fn(tokens)[rows, position]  # [B, V]
        drawn = jax.random.categorical(step_key, logits, axis=-1)
        return tokens.at[rows, position].set(drawn.astype(tokens.dtype)), None

    tokens, _ = jax.lax.scan(reveal, start.astype(jnp.int32),
                             (order.T, jax.random.split(key_tokens, length)))
    return tokens


def init_state(key: jax.Array, config: SequenceConfig) -> SequenceState:
    """Initial parameters, optimiser state and PRNG key of one seed."""
    model, _ = make_logits_fn(config)
    key_init, key_train = jax.random.split(key)
    params = model.init(key_init, jnp.zeros((1, 1 + config.completion_length), jnp.int32))
    return SequenceState(params, optax.adam(config.learning_rate).init(params), key_train)


def _masked_token_log_probs(logits_fn, tokens, masks, mask_token):
    """log p(token | draw m) at every position: masks [M, B, T] -> [M, B, T]."""
    return jax.lax.map(lambda mask: token_log_probs(logits_fn(apply_mask(tokens, mask, mask_token)), tokens), masks)


def train_step(state: SequenceState, config: SequenceConfig, dipod_beta: float) -> tuple[SequenceState, dict]:
    """One generation batch and `inner_epochs` updates of FPO-for-dLLMs or SPG (+ DiPOD), with exact diagnostics.

    Args:
      state: one seed's state; config: static configuration.
      dipod_beta: >= 0, a Python float (0 is the baseline exactly) or a traced scalar (`make_population_step`).

    Returns:
      the new state and a dict of scalars: "reward", "bound_gap" (mean log pi - exact ELBO at the generation
      parameters), "log_ratio_error" (mean |ELBO-estimate log-ratio - exact log-ratio| after the update),
      "exact_log_ratio" (mean |log pi_new - log pi_old|), "grad_cosine" (the method's proxy policy gradient
      vs the exact one at the generation parameters), "log_prob" (mean exact log pi_old).
    """
    _, logits_fn_of = make_logits_fn(config)
    optimizer = optax.adam(config.learning_rate)
    row_mask = completion_mask(config)  # numpy: the exact log-likelihood enumerates on the host
    row_mask_device = jnp.asarray(row_mask)
    mask_token = mask_id(config)
    key, key_prompt, key_sample, key_mask, key_spg = jax.random.split(state.key, 5)
    params_old = state.params

    prompts = jnp.repeat(jax.random.randint(key_prompt, (config.num_prompts,), 0, config.vocab_size),
                         config.group_size)
    tokens = sample_random_order(key_sample, logits_fn_of(params_old), prompts, config)
    rewards = sequence_reward(prompts, tokens[:, 1:], config)
    advantages = grpo_advantages(rewards.reshape(config.num_prompts, config.group_size)).reshape(-1)

    elbo_masks, _ = mask_uniform_count(key_mask, row_mask_device, config.num_mask_draws)

    def elbo_estimate(params):
        token_logp = _masked_token_log_probs(logits_fn_of(params), tokens, elbo_masks, mask_token)
        return elbo_from_token_logprobs(token_logp, elbo_masks, row_mask_device)

    elbo_estimate_old = elbo_estimate(params_old)
    if config.algo == "fpo":
        def method_loss(params, beta):
            return fpo_dllm_loss(elbo_estimate(params), elbo_estimate_old, advantages, config.clip_eps,
                                 dipod_beta=beta)[0]
    else:
        # The prompt stays visible (p_mask_prompt = 0): the exact ELBO the laboratory compares with conditions
        # on it, so hiding it would measure a different bound.
        spg_masks, spg_t = mask_block_random(key_spg, row_mask_device, config.spg_num_draws, config.spg_block_length,
                                             window_length=config.completion_length, p_mask_prompt=0.0)
        lengths = jnp.full((tokens.shape[0],), float(config.completion_length))

        def method_loss(params, beta):
            token_logp = _masked_token_log_probs(logits_fn_of(params), tokens, spg_masks, mask_token)
            lower = spg_elbo_from_token_logprobs(token_logp, spg_masks, row_mask_device)
            upper = spg_eubo_from_token_logprobs(token_logp, spg_masks, row_mask_device, spg_t, config.spg_beta_e)
            return spg_loss(lower, upper, advantages, lengths, "mix", config.spg_mix_weight, dipod_beta=beta)[0]

    def exact_table(params):
        return subset_token_log_probs(logits_fn_of(params), tokens, row_mask, mask_token)

    table_old = exact_table(params_old)
    log_prob_old = logprob_from_subset_table(table_old)
    proxy_grad = jax.grad(lambda p: -method_loss(p, 0.0))(params_old)
    exact_grad = jax.grad(lambda p: score_function_objective(logprob_from_subset_table(exact_table(p)),
                                                             advantages))(params_old)

    def update(carry, _):
        params, opt_state = carry
        grads = jax.grad(lambda p: method_loss(p, dipod_beta))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    (params_new, opt_state), _ = jax.lax.scan(update, (params_old, state.opt_state), None,
                                              length=config.inner_epochs)

    exact_ratio = logprob_from_subset_table(exact_table(params_new)) - log_prob_old
    proxy_ratio = elbo_estimate(params_new) - elbo_estimate_old
    metrics = {
        "reward": jnp.mean(rewards),
        "bound_gap": jnp.mean(bound_gap(log_prob_old, elbo_from_subset_table(table_old))),
        "log_ratio_error": jnp.mean(jnp.abs(log_ratio_error(proxy_ratio, exact_ratio))),
        "exact_log_ratio": jnp.mean(jnp.abs(exact_ratio)),
        "grad_cosine": gradient_cosine(proxy_grad, exact_grad),
        "log_prob": jnp.mean(log_prob_old),
    }
    return SequenceState(params_new, opt_state, key), metrics


def make_seed_batched_step(config: SequenceConfig, dipod_beta: float):
    """`dipod_jax.toys.batching.seed_batched_step` of this toy: state [n_seeds] -> (state, metrics [n_seeds])."""
    return batching.seed_batched_step(train_step, config, dipod_beta)


def make_population_step(config: SequenceConfig):
    """`dipod_jax.toys.batching.population_step` of this toy: (state [P], dipod_beta [P]) -> (state, metrics)."""
    return batching.population_step(train_step, config)


def init_seed_batch(seeds: jax.Array, config: SequenceConfig) -> SequenceState:
    """Initial states for int seeds [n_seeds] (leading axis [n_seeds] on every leaf)."""
    return batching.init_seed_batch(init_state, seeds, config)
