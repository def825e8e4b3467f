"""One RL post-training step for a masked-diffusion LM: sample, score, group advantages, mu inner updates.

Details: docs/modules.md, section dipod_jax.lm.rl.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.typing import ArrayLike

from dipod_jax.lm.data import completion_mask_from_tokens
from dipod_jax.lm.rl_config import RLConfig
from dipod_jax.lm.sampler import generate, sampler_options
from dipod_jax.losses.advantages import grpo_advantages
from dipod_jax.losses.dipod import weighted_mean
from dipod_jax.losses.lm import diffu_grpo_loss, fpo_dllm_loss, spg_loss
from dipod_jax.losses.masked import (
    apply_mask,
    elbo_from_token_logprobs,
    mask_block_random,
    mask_completion_and_prompt,
    mask_uniform_count,
    masked_token_log_probs,
    spg_elbo_from_token_logprobs,
    spg_eubo_from_token_logprobs,
    token_log_probs,
)
from dipod_jax.models import sharding
from dipod_jax.models.llada import LORA_FILTER

Params = Any
# Reward of each row: (tokens [N, T] int32, completion_mask [N, T] bool), numpy, -> rewards [N] float.
RewardFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


class RolloutBatch(NamedTuple):
    """One generation batch, N = P * G rows grouped as p * G + g.

    tokens [N, T] int32 (prompt then completion); attention_mask [N, T] bool (all but the prompt's left
    padding); prompt_mask [N, T] bool (real prompt tokens); completion_mask [N, T] bool (real completion tokens
    up to and including the first EOS); rewards [N] float32. The same record carries host (NumPy) arrays
    before a step, device arrays inside it and their shardings for jit, hence the loose field types.
    """

    tokens: Any
    attention_mask: Any
    prompt_mask: Any
    completion_mask: Any
    rewards: Any


class TrainState(NamedTuple):
    """params: trainable pure pytree; opt_state: its optax state; ref_params: the reference copy of params
    (an empty dict when kl_beta == 0); start_params: the trainable parameters at step 0 (an empty dict unless
    log_kl_to_start); step: int32 scalar, completed RL steps (a sharding in place of each for jit)."""

    params: Params
    opt_state: Any
    ref_params: Params
    start_params: Params
    step: Any


def split_model(model: nnx.Module, lora_only: bool) -> tuple[Any, Params, Params]:
    """(graphdef, trainable params, frozen rest) of an nnx model, both as pure dicts of arrays.

    lora_only selects the LoRA adapters as trainable (ValueError when the model has none); otherwise every
    nnx.Param is trained and `frozen` holds only non-parameter state.
    """
    if lora_only:
        graphdef, trainable, frozen = nnx.split(model, LORA_FILTER, ...)
        if not jax.tree.leaves(trainable):
            raise ValueError("lora_only=True but the model has no LoRA adapters (set LLaDAConfig.lora_rank > 0)")
    else:
        graphdef, trainable, frozen = nnx.split(model, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(trainable), nnx.to_pure_dict(frozen)


def param_shardings(model: nnx.Module, lora_only: bool, mesh: Mesh) -> tuple[Params, Params]:
    """NamedShardings (pure dicts matching `split_model`) of the trainable and frozen parts on `mesh`,
    from the variables' logical axes (dipod_jax.models.sharding.DEFAULT_RULES). ValueError naming the parameter
    when a mesh axis would leave a large parameter replicated
    (`dipod_jax.models.sharding.assert_params_sufficiently_sharded`)."""
    _, trainable, frozen = nnx.split(model, LORA_FILTER if lora_only else nnx.Param, ...)
    sharding.assert_params_sufficiently_sharded(nnx.state(model), mesh)
    return (nnx.to_pure_dict(sharding.state_shardings(trainable, mesh)),
            nnx.to_pure_dict(sharding.state_shardings(frozen, mesh)))


def make_optimizer(config: RLConfig) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW with a linear warm-up (counted in optimizer updates, mu per step)."""
    schedule = optax.warmup_constant_schedule(0.0, config.learning_rate, config.warmup_steps) \
        if config.warmup_steps else config.learning_rate
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                       optax.adamw(schedule, b1=config.adam_b1, b2=config.adam_b2,
                                   weight_decay=config.weight_decay))


def init_train_state(params: Params, config: RLConfig, mesh: Mesh | None = None) -> TrainState:
    """Fresh optimizer state, the reference and start copies (when used) and step 0 for a copy of `params`.

    The copy keeps the caller's arrays (e.g. the model's own) alive when the update donates the state. Every
    array is committed to a device as the update expects it (`update_shardings` with a mesh: the optimizer
    moments on their parameters' shardings, the scalars replicated; device 0 without a mesh, where the
    outputs land, so the second step does not recompile for a change of placement).
    """
    params = jax.tree.map(jnp.copy, params)
    ref_params = jax.tree.map(jnp.copy, params) if config.kl_beta > 0 else {}
    start_params = jax.tree.map(jnp.copy, params) if config.log_kl_to_start else {}
    state = TrainState(params=params, opt_state=make_optimizer(config).init(params), ref_params=ref_params,
                       start_params=start_params, step=jnp.zeros((), jnp.int32))
    if mesh is None:
        return jax.device_put(state, jax.devices()[0])
    replicated = NamedSharding(mesh, PartitionSpec())
    # Via a host copy: the new scalars sit on this process's device, and a device-to-device put onto a mesh
    # spanning several processes would be a cross-host transfer.
    return jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding)
                        else jax.device_put(np.asarray(x), replicated), state)


def check_batch_divisible(num_rows: int, config: RLConfig, mesh: Mesh | None) -> None:
    """ValueError unless `num_rows` splits into grad_accum_steps micro-batches that each divide evenly over
    the mesh's batch shards (its "data" x "fsdp" devices)."""
    shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    needed = shards * config.grad_accum_steps
    if num_rows % needed:
        raise ValueError(
            f"rollout batch of {num_rows} rows (num_prompts * num_generations) is not divisible by "
            f"{shards} batch shards (mesh data x fsdp) x grad_accum_steps={config.grad_accum_steps} = {needed}")


def _logits_fn(graphdef, params: Params, frozen: Params, attention_mask: jax.Array):
    model = nnx.merge(graphdef, params, frozen)
    return lambda tokens: model(tokens, attention_mask)


def _generation_region(batch: RolloutBatch) -> jax.Array:
    return batch.attention_mask & ~batch.prompt_mask


def prepare_inputs(config: RLConfig, graphdef, mask_id: int, state: TrainState, frozen: Params,
                   batch: RolloutBatch, advantages: jax.Array, key: jax.Array):
    """Masks and frozen old / reference quantities of the generation batch.

    Returns (fixed, per_iteration): fixed is a dict of batch-first arrays [N, ...] used by every inner
    iteration (mask stacks stored as [N, M, T]); per_iteration a dict of [mu, N, ...] arrays, one slice per
    inner iteration (diffu-GRPO's fresh one-step masks and their old / reference log-probs; SPG's fresh
    block-random masks [mu, N, M, T] and t_emp [mu, N, M]).
    """
    tokens, completion_mask = batch.tokens, batch.completion_mask
    mask_key, iteration_key = jax.random.split(key)
    old_logits = _logits_fn(graphdef, jax.lax.stop_gradient(state.params), frozen, batch.attention_mask)
    ref_logits = (_logits_fn(graphdef, state.ref_params, frozen, batch.attention_mask) if config.kl_beta > 0
                  else None)
    fixed = {"tokens": tokens, "attention_mask": batch.attention_mask, "completion_mask": completion_mask,
             "advantages": advantages}
    per_iteration: dict[str, jax.Array] = {}

    def sequence_elbo(logits_fn, masks):
        token_logp = masked_token_log_probs(logits_fn, tokens, masks, mask_id)
        return jax.lax.stop_gradient(elbo_from_token_logprobs(token_logp, masks, completion_mask))

    if config.algo == "fpo" or (config.algo == "diffu_grpo" and config.dipod_beta > 0):
        # The masking randomness is drawn once per generated completion and shared by old, new and reference.
        elbo_masks, _ = mask_uniform_count(mask_key, completion_mask, config.num_elbo_draws)
        fixed["elbo_masks"] = jnp.swapaxes(elbo_masks, 0, 1)
        if config.algo == "fpo":
            fixed["elbo_old"] = sequence_elbo(old_logits, elbo_masks)
            if ref_logits is not None:
                fixed["elbo_ref"] = sequence_elbo(ref_logits, elbo_masks)
    if config.algo == "diffu_grpo":
        iteration_keys = jax.random.split(iteration_key, config.num_inner_iterations)
        one_step_masks = jax.vmap(lambda k: mask_completion_and_prompt(
            k, batch.prompt_mask, completion_mask, config.p_mask_prompt))(iteration_keys)  # [mu, N, T]
        per_iteration["one_step_mask"] = one_step_masks
        per_iteration["token_logp_old"] = jax.lax.stop_gradient(
            masked_token_log_probs(old_logits, tokens, one_step_masks, mask_id))
        if ref_logits is not None:
            per_iteration["token_logp_ref"] = jax.lax.stop_gradient(
                masked_token_log_probs(ref_logits, tokens, one_step_masks, mask_id))
    if config.algo == "spg":
        # As the release: a fresh block-random draw per inner iteration (SPG has no old or reference
        # quantities, so nothing else shares it); the blocks cut the sampler's gen_length window.
        p_mask_prompt = config.p_mask_prompt if config.spg_use_mask_prompt else 0.0

        def spg_draw(iteration):
            masks, t_emp = mask_block_random(iteration, completion_mask, config.spg_num_draws,
                                             config.spg_block_length, config.gen_length, config.spg_min_t,
                                             config.spg_max_t, p_mask_prompt)
            return jnp.swapaxes(masks, 0, 1), jnp.swapaxes(t_emp, 0, 1)

        iteration_keys = jax.random.split(iteration_key, config.num_inner_iterations)
        per_iteration["spg_masks"], per_iteration["t_emp"] = jax.vmap(spg_draw)(iteration_keys)
    return fixed, per_iteration


def rl_loss(config: RLConfig, graphdef, mask_id: int, params: Params, frozen: Params,
            inputs: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The method's loss on one micro-batch of `inputs` (batch-first arrays, see `prepare_inputs`)."""
    tokens, completion_mask = inputs["tokens"], inputs["completion_mask"]
    logits_fn = _logits_fn(graphdef, params, frozen, inputs["attention_mask"])
    advantages = inputs["advantages"]

    def sequence_elbo():
        masks = jnp.swapaxes(inputs["elbo_masks"], 0, 1)
        token_logp = masked_token_log_probs(logits_fn, tokens, masks, mask_id)
        return elbo_from_token_logprobs(token_logp, masks, completion_mask)

    if config.algo == "fpo":
        elbo_new = sequence_elbo()
        loss, aux = fpo_dllm_loss(elbo_new, inputs["elbo_old"], advantages, config.clip_eps,
                                  elbo_ref=inputs.get("elbo_ref"), kl_beta=config.kl_beta,
                                  dipod_beta=config.dipod_beta)
        aux["elbo"] = jnp.mean(elbo_new)
    elif config.algo == "diffu_grpo":
        token_logp_new = token_log_probs(logits_fn(apply_mask(tokens, inputs["one_step_mask"], mask_id)), tokens)
        elbo = sequence_elbo() if config.dipod_beta > 0 else None
        loss, aux = diffu_grpo_loss(token_logp_new, inputs["token_logp_old"], advantages, completion_mask,
                                    config.clip_eps, token_logp_ref=inputs.get("token_logp_ref"),
                                    kl_beta=config.kl_beta, elbo=elbo, dipod_beta=config.dipod_beta)
        if elbo is not None:
            aux["elbo"] = jnp.mean(elbo)
    else:
        masks = jnp.swapaxes(inputs["spg_masks"], 0, 1)
        token_logp = masked_token_log_probs(logits_fn, tokens, masks, mask_id)
        lower = spg_elbo_from_token_logprobs(token_logp, masks, completion_mask)
        upper = None if config.spg_estimator == "elbo" else spg_eubo_from_token_logprobs(
            token_logp, masks, completion_mask, jnp.swapaxes(inputs["t_emp"], 0, 1), config.spg_beta_e)
        lengths = jnp.sum(completion_mask, axis=-1)
        loss, aux = spg_loss(lower, upper, advantages, lengths, config.spg_estimator, config.spg_mix_weight,
                             dipod_beta=config.dipod_beta)
        aux["elbo"] = jnp.mean(lower)
    aux["loss"] = loss
    return loss, aux


def shuffle_within_groups(key: jax.Array, rewards: jax.Array, num_generations: int) -> jax.Array:
    """The placebo control: each group's rewards in a uniformly random order.

    Args:
      key: PRNG key.
      rewards: [N] rewards of rows grouped p * G + g.
      num_generations: G.

    Returns:
      [N] rewards, permuted within each group of G rows (group means and spreads unchanged, so the update sees
      advantages of the right size that carry no information about which completion earned them).
    """
    groups = rewards.reshape(-1, num_generations)
    order = jnp.argsort(jax.random.uniform(key, groups.shape), axis=-1)
    return jnp.take_along_axis(groups, order, axis=-1).reshape(rewards.shape)


def group_reward_statistics(rewards: jax.Array, num_generations: int) -> dict[str, jax.Array]:
    """How much learning signal a batch carries: rewards [N] grouped p * G + g ->
    {"zero_advantage_group_fraction": fraction of groups whose G rewards are all equal (their GRPO advantages
    are all zero), "reward_std_within_group": mean over groups of the rewards' standard deviation}."""
    groups = rewards.reshape(-1, num_generations)
    all_equal = jnp.all(groups == groups[:, :1], axis=-1)
    return {"zero_advantage_group_fraction": jnp.mean(all_equal.astype(jnp.float32)),
            "reward_std_within_group": jnp.mean(jnp.std(groups, axis=-1))}


def kl_to_start(graphdef, params: Params, start_params: Params, frozen: Params, batch: RolloutBatch,
                mask_id: int) -> jax.Array:
    """KL(pi_params || pi_start) on the batch's own completions, a scalar >= 0.

    The per-token k3 estimate exp(s - c) - (s - c) - 1 (c, s: log-probs of the sampled token under the current
    and the start parameters) with d1's one-step likelihood (the whole generation region masked, the prompt
    visible), averaged over the real completion tokens of the batch. The rows are samples of the current
    policy, so this estimates KL(current || start) token by token.
    """
    mask = _generation_region(batch)
    noised = apply_mask(batch.tokens, mask, mask_id)

    def log_probs(trainable):
        logits = _logits_fn(graphdef, jax.lax.stop_gradient(trainable), frozen, batch.attention_mask)(noised)
        return token_log_probs(logits, batch.tokens)

    log_ratio = log_probs(start_params) - log_probs(params)
    return weighted_mean(jnp.exp(log_ratio) - log_ratio - 1.0, batch.completion_mask)


def _micro_batches(tree, num_micro: int):
    """Split batch-first arrays [N, ...] into [A, N / A, ...]; micro-batch a takes rows a, a + A, ...

    The strided split keeps every micro-batch spread evenly over the batch shards (row blocks per device).
    """
    def split(x):
        rows = x.shape[0]
        return jnp.swapaxes(x.reshape((rows // num_micro, num_micro) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, tree)


def rl_update(state: TrainState, frozen: Params, batch: RolloutBatch, key: jax.Array, *, config: RLConfig,
              graphdef, mask_id: int, mesh: Mesh | None = None, params_sharding: Params | None = None
              ) -> tuple[TrainState, dict[str, jax.Array]]:
    """The pure core of one RL step on a scored generation batch (jit it, e.g. via `make_update_fn`).

    Args:
      state: TrainState before the step.
      frozen: pure pytree of the non-trained model variables.
      batch: RolloutBatch of N = P * G rows, rewards [N].
      key: PRNG key for the forward masks of this batch.
      config: RLConfig (static). graphdef: the model's nnx graphdef (static). mask_id: mask token id (static).
      mesh: optional Mesh (static): the batch must divide over its batch shards (`check_batch_divisible`).
      params_sharding: optional NamedShardings of state.params (static); every inner update keeps the
        parameters there. Where the inputs and outputs live is `make_update_fn`'s jit contract.

    Returns:
      (new TrainState, metrics: dict of float32 scalars averaged over the mu inner iterations and
      micro-batches: loss, pg_loss, dipod_term, clip_fraction / ratio_mean (ratio methods), kl (kl_beta > 0),
      elbo (when an ELBO is computed), grad_norm (before clipping); plus reward_mean, reward_std,
      advantage_abs_mean, completion_length_mean, zero_advantage_group_fraction, reward_std_within_group of the
      batch (the true rewards, also under the placebo) and kl_to_start of the rollout policy when logged).
    """
    num_rows = batch.tokens.shape[0]
    chex.assert_rank([batch.tokens, batch.rewards], [2, 1])
    chex.assert_equal_shape([batch.tokens, batch.attention_mask, batch.prompt_mask, batch.completion_mask])
    chex.assert_shape(batch.rewards, (num_rows,))
    if num_rows % config.num_generations:
        raise ValueError(f"batch has {num_rows} rows, not a multiple of num_generations={config.num_generations}")
    check_batch_divisible(num_rows, config, mesh)
    rewards = batch.rewards.astype(jnp.float32)
    # Derived by fold_in, so the masks (from `key` itself) are the same with and without the placebo.
    trained_rewards = shuffle_within_groups(jax.random.fold_in(key, 1), rewards, config.num_generations) \
        if config.placebo else rewards
    advantages = grpo_advantages(trained_rewards.reshape(-1, config.num_generations),
                                 scale_by_std=config.scale_rewards_by_std).reshape(num_rows)
    fixed, per_iteration = prepare_inputs(config, graphdef, mask_id, state, frozen, batch, advantages, key)
    optimizer = make_optimizer(config)
    grad_fn = jax.grad(functools.partial(rl_loss, config, graphdef, mask_id), has_aux=True)

    def inner_iteration(carry, iteration_inputs):
        params, opt_state = carry
        micro = _micro_batches({**fixed, **(iteration_inputs or {})}, config.grad_accum_steps)

        def accumulate(sums, micro_inputs):
            grads, aux = grad_fn(params, frozen, micro_inputs)
            return jax.tree.map(jnp.add, sums, (grads, aux)), None

        zero_aux = jax.eval_shape(lambda: grad_fn(params, frozen, jax.tree.map(lambda x: x[0], micro))[1])
        zeros = (jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero_aux))
        (grad_sum, aux_sum), _ = jax.lax.scan(accumulate, zeros, micro)
        grads, aux = jax.tree.map(lambda x: x / config.grad_accum_steps, (grad_sum, aux_sum))
        aux["grad_norm"] = optax.tree.norm(grads)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if params_sharding is not None:
            params = jax.lax.with_sharding_constraint(params, params_sharding)
        return (params, opt_state), aux

    (params, opt_state), aux_per_iteration = jax.lax.scan(
        inner_iteration, (state.params, state.opt_state), per_iteration or None,
        length=config.num_inner_iterations)
    metrics = jax.tree.map(jnp.mean, aux_per_iteration)

    step = state.step + 1
    ref_params, start_params = state.ref_params, state.start_params
    if config.kl_beta > 0 and config.ref_sync_every > 0:
        sync = step % config.ref_sync_every == 0
        ref_params = jax.tree.map(lambda ref, new: jnp.where(sync, new, ref), ref_params, params)
    lengths = jnp.sum(batch.completion_mask, axis=-1).astype(jnp.float32)
    metrics.update(reward_mean=jnp.mean(rewards), reward_std=jnp.std(rewards),
                   advantage_abs_mean=jnp.mean(jnp.abs(advantages)), completion_length_mean=jnp.mean(lengths),
                   **group_reward_statistics(rewards, config.num_generations))
    if config.log_kl_to_start:
        metrics["kl_to_start"] = kl_to_start(graphdef, state.params, state.start_params, frozen, batch, mask_id)
    return TrainState(params, opt_state, ref_params, start_params, step), metrics


def update_shardings(state: TrainState, frozen: Params, config: RLConfig, graphdef, mesh: Mesh):
    """The jit contract of the sharded update: (in_shardings, out_shardings) of
    fn(state, frozen, batch, key) -> (state, metrics), for a state and frozen part shaped like these.

    Parameters, the reference and start copies and the optimizer moments follow the parameters' logical axes
    (`param_shardings`); the batch is split over the mesh's batch axes; the key, step, optimizer counters and
    metrics are replicated.
    """
    params_sharding, frozen_sharding = param_shardings(nnx.merge(graphdef, state.params, frozen), config.lora_only,
                                                       mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_sharding = optax.tree_map_params(make_optimizer(config), lambda _, leaf_sharding: leaf_sharding,
                                         state.opt_state, params_sharding, transform_non_params=lambda _: replicated)
    state_sharding = TrainState(params_sharding, opt_sharding, params_sharding if state.ref_params else {},
                                params_sharding if state.start_params else {}, replicated)
    rows, row_values = sharding.batch_sharding(mesh, 2), sharding.batch_sharding(mesh, 1)
    batch_sharding = RolloutBatch(rows, rows, rows, rows, row_values)
    return (state_sharding, frozen_sharding, batch_sharding, replicated), (state_sharding, replicated)


@functools.cache
def make_update_fn(config: RLConfig, graphdef, mask_id: int, mesh: Mesh | None = None):
    """jit(rl_update) with config, graphdef, mask_id and mesh bound; the state's buffers are donated.

    With a mesh the jit has explicit in_shardings / out_shardings (`update_shardings`, built from the first
    state it gets: the parameters' shapes and logical axes fix them) and runs under `jax.set_mesh(mesh)`;
    inputs placed elsewhere are refused by jit, outputs come back where the next step expects its inputs.
    Cached on its (hashable) arguments, so repeated runs in one process reuse the compiled step.
    Returns fn(state, frozen, batch, key) -> (state, metrics).
    """
    update = functools.partial(rl_update, config=config, graphdef=graphdef, mask_id=mask_id, mesh=mesh)
    if mesh is None:
        return jax.jit(update, donate_argnums=0)
    compiled = []

    def sharded_update(state: TrainState, frozen: Params, batch: RolloutBatch, key: jax.Array):
        if not compiled:
            in_shardings, out_shardings = update_shardings(state, frozen, config, graphdef, mesh)
            compiled.append(jax.jit(functools.partial(update, params_sharding=in_shardings[0].params),
                                    in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=0))
        with jax.set_mesh(mesh):
            return compiled[0](state, frozen, batch, key)
    return sharded_update


@functools.cache
def make_sample_fn(config: RLConfig, graphdef, mask_id: int):
    """The jitted sampler (variant config.sampler): fn(params, frozen, prompts [N, P] int32, prompt_mask [N, P]
    bool, key) -> tokens [N, P + gen_length] int32 (one completion per row; rows are the prompts already
    repeated G times)."""
    options = sampler_options(config.sampler, config.sampler_threshold, config.sampler_refresh_interval)

    def sample(params, frozen, prompts, prompt_mask, key):
        model = nnx.merge(graphdef, params, frozen)
        return generate(model, prompts, key, gen_length=config.gen_length, block_length=config.block_length,
                        steps=config.diffusion_steps, temperature=config.rollout_temperature,
                        remasking=config.remasking, mask_id=mask_id, prompt_mask=prompt_mask, **options)
    return jax.jit(sample)


def distinct_completions_per_group(tokens: ArrayLike, completion_mask: ArrayLike, num_generations: int) -> float:
    """Mean over groups of the number of different completions among its G rows (1 = all identical, G = all
    different). tokens [N, T], completion_mask [N, T] bool (the compared tokens), rows grouped p * G + g."""
    completions = np.where(np.asarray(completion_mask, bool), np.asarray(tokens), -1)
    groups = completions.reshape(-1, num_generations, completions.shape[-1])
    return float(np.mean([len(np.unique(group, axis=0)) for group in groups]))


def rollout_batch_from_tokens(tokens: np.ndarray, prompt_mask: np.ndarray, eos_id: int,
                              reward_fn: RewardFn) -> RolloutBatch:
    """Host side: masks and rewards of sampled rows (numpy in, numpy out).

    Args:
      tokens: [N, P + L] int32 sampled rows; prompt_mask: [N, P] bool (False = left padding);
      eos_id: end-of-sequence id; reward_fn: (tokens [N, T], completion_mask [N, T]) -> [N].

    Returns:
      RolloutBatch of numpy arrays.
    """
    tokens = np.asarray(tokens)
    prompt_mask = np.asarray(prompt_mask, bool)
    num_rows, prompt_length = prompt_mask.shape
    if tokens.ndim != 2 or tokens.shape[0] != num_rows or tokens.shape[1] <= prompt_length:
        raise ValueError(f"tokens {tokens.shape} do not extend prompt_mask {prompt_mask.shape}")
    generation = tokens.shape[1] - prompt_length
    completion_mask = completion_mask_from_tokens(tokens, prompt_length, eos_id)
    full_prompt_mask = np.concatenate([prompt_mask, np.zeros((num_rows, generation), bool)], axis=1)
    attention_mask = np.concatenate([prompt_mask, np.ones((num_rows, generation), bool)], axis=1)
    rewards = np.asarray(reward_fn(tokens, completion_mask), np.float32)
    if rewards.shape != (num_rows,):
        raise ValueError(f"reward_fn returned shape {rewards.shape}, expected ({num_rows},)")
    return RolloutBatch(tokens.astype(np.int32), attention_mask, full_prompt_mask, completion_mask, rewards)


def _batch_spec(mesh: Mesh, ndim: int) -> PartitionSpec:
    return sharding.batch_sharding(mesh, ndim).spec


def to_global(tree, mesh: Mesh | None):
    """Process-local batch-major numpy arrays -> global device arrays split over the mesh's batch axes
    (plain device arrays without a mesh). Each process passes only its own rows."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    return jax.tree.map(lambda x: multihost_utils.host_local_array_to_global_array(
        np.asarray(x), mesh, _batch_spec(mesh, np.ndim(x))), tree)


def to_local(tree, mesh: Mesh | None):
    """Inverse of `to_global`: this process's rows of batch-major global arrays, as numpy."""
    if mesh is None:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(lambda x: np.asarray(multihost_utils.global_array_to_host_local_array(
        x, mesh, _batch_spec(mesh, x.ndim))), tree)


def rl_step(state: TrainState, frozen: Params, prompts: np.ndarray, prompt_mask: np.ndarray,
            reward_fn: RewardFn, key: jax.Array, *, config: RLConfig, sample_fn, update_fn, eos_id: int,
            mesh: Mesh | None = None) -> tuple[TrainState, dict[str, jax.Array], RolloutBatch]:
    """One full RL step: sample G completions per prompt, score them on the host, update.

    Args:
      state, frozen: as `rl_update`.
      prompts: [P_local, P] int32 this process's prompts (left-padded); prompt_mask: [P_local, P] bool.
      reward_fn: host reward of this process's rows, see `rollout_batch_from_tokens`.
      key: PRNG key of the step (the same on every process).
      config: RLConfig; sample_fn / update_fn: from `make_sample_fn` / `make_update_fn`; eos_id: EOS id;
      mesh: optional Mesh (the batch is split over its data x fsdp axes).

    Returns:
      (new state, metrics (`rl_update`'s, plus distinct_completions_per_group of this process's rows),
      this process's RolloutBatch as numpy).
    """
    prompts = np.asarray(prompts)
    prompt_mask = np.asarray(prompt_mask, bool)
    if prompts.ndim != 2 or prompts.shape != prompt_mask.shape:
        raise ValueError(f"prompts {prompts.shape} and prompt_mask {prompt_mask.shape} must be equal [P, L]")
    rows = prompts.shape[0] * config.num_generations * (1 if mesh is None else jax.process_count())
    check_batch_divisible(rows, config, mesh)
    sample_key, update_key = jax.random.split(key)
    prompt_rows = np.repeat(prompts, config.num_generations, axis=0)
    prompt_mask_rows = np.repeat(prompt_mask, config.num_generations, axis=0)
    global_prompts, global_prompt_mask = to_global((prompt_rows, prompt_mask_rows), mesh)
    # Under the mesh, the model pins its activations by their logical axes (dipod_jax.models.sharding).
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
        tokens = sample_fn(state.params, frozen, global_prompts, global_prompt_mask, sample_key)
    local_batch = rollout_batch_from_tokens(to_local(tokens, mesh), prompt_mask_rows, eos_id, reward_fn)
    state, metrics = update_fn(state, frozen, to_global(local_batch, mesh), update_key)
    metrics = {**metrics, "distinct_completions_per_group": distinct_completions_per_group(
        local_batch.tokens, local_batch.completion_mask, config.num_generations)}
    return state, metrics, local_batch


# Sampling with the frozen part bound: (params, prompts [N, P] int32, prompt_mask [N, P] bool, key) -> tokens.
SampleFn = Callable[[Params, jax.Array, jax.Array, jax.Array], jax.Array]


class RLTrainer(NamedTuple):
    """What `make_rl` returns: the functions of one RL run, closed over its static parts (as control's
    `make_train` record).

      init() -> TrainState                         step 0: the model's trainable parameters, placed on the mesh
      step(state, prompts, prompt_mask, reward_fn, key) -> (state, metrics, batch)   `rl_step`: sample, score, update
      update(state, batch, key) -> (state, metrics)  the jitted `rl_update` alone, on a scored RolloutBatch
      sample(params, prompts, prompt_mask, key) -> tokens           the rollout sampler (config.sampler)
      sampler_at(temperature) -> SampleFn            the exact sampler at another temperature (evaluation)
    """

    init: Callable[[], TrainState]
    step: Callable[..., tuple[TrainState, dict[str, Any], RolloutBatch]]
    update: Callable[[TrainState, RolloutBatch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
    sample: SampleFn
    sampler_at: Callable[[float], SampleFn]
    config: RLConfig
    graphdef: Any
    frozen: Params
    mesh: Mesh | None


def make_rl(config: RLConfig, model: nnx.Module, mesh: Mesh | None = None, *, mask_id: int,
            eos_id: int) -> RLTrainer:
    """Build the RL trainer of `model` (an nnx LLaDA) for `config`: split into trainable and frozen parts
    (`split_model`), placed on `mesh` by their logical axes when given (`param_shardings`: ValueError naming a
    parameter the mesh would leave replicated), with the jitted sampler and update (`make_sample_fn`,
    `make_update_fn`; both cached, so a second trainer of the same configuration compiles nothing new)."""
    graphdef, params, frozen = split_model(model, config.lora_only)
    if mesh is not None:
        params_sharding, frozen_sharding = param_shardings(model, config.lora_only, mesh)
        # From host copies: each process then places only its own shards (a device-to-device put would be a
        # cross-host transfer in a multi-process run).
        params, frozen = jax.device_put(jax.tree.map(np.asarray, (params, frozen)),
                                        (params_sharding, frozen_sharding))
    sample_fn = make_sample_fn(config, graphdef, mask_id)
    update_fn = make_update_fn(config, graphdef, mask_id, mesh)

    def init() -> TrainState:
        return init_train_state(params, config, mesh)

    def step(state: TrainState, prompts: np.ndarray, prompt_mask: np.ndarray, reward_fn: RewardFn,
             key: jax.Array) -> tuple[TrainState, dict[str, Any], RolloutBatch]:
        return rl_step(state, frozen, prompts, prompt_mask, reward_fn, key, config=config, sample_fn=sample_fn,
                       update_fn=update_fn, eos_id=eos_id, mesh=mesh)

    def update(state: TrainState, batch: RolloutBatch, key: jax.Array):
        return update_fn(state, frozen, batch, key)

    def bind_frozen(sample) -> SampleFn:
        return lambda params, prompts, prompt_mask, key: sample(params, frozen, prompts, prompt_mask, key)

    def sampler_at(temperature: float) -> SampleFn:
        exact = dataclasses.replace(config, rollout_temperature=temperature, sampler="exact")
        return bind_frozen(make_sample_fn(exact, graphdef, mask_id))

    return RLTrainer(init, step, update, bind_frozen(sample_fn), sampler_at, config, graphdef, frozen, mesh)
