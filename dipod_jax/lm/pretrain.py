"""Supervised pre-training of a small LLaDA-style model: model presets, the SFT loss, the jitted training step
and evaluation sampler, and `load_pretrained`, which rebuilds a model from a run's output directory.

The run itself (flags, data, loop, outputs) is experiments/lm_pretrain.py. A run directory holds config.json
(`CONFIG_FILE`: task, template, prompt_length, gen_length, "model" as `model_config_to_dict`, "tokenizer" as
`tokenizer_config`, "sampler") and Orbax checkpoints with "params" (a pure dict) and "opt_state"
(dipod_jax.run.checkpoints).

Parameters are pure dicts (`nnx.to_pure_dict`); `bind_params` puts them, possibly traced, into the model.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dipod_jax.lm.sampler import generate
from dipod_jax.lm.tokenizer import Tokenizer, tokenizer_from_config
from dipod_jax.losses.masked import elbo_masked, mask_uniform_count
from dipod_jax.models.llada import LLaDA, LLaDAConfig
from dipod_jax.run.checkpoints import CHECKPOINT_DIR, CheckpointStore
from dipod_jax.run.files import read_json

# (d_model, n_layers, n_heads, mlp_hidden)
MODEL_SIZES = {
    "tiny": (32, 2, 4, 64),
    "small": (128, 4, 4, 384),
    "base": (256, 6, 8, 768),
}
CONFIG_FILE = "config.json"
# The order of the sampler settings in `sampling_function`'s hashable key.
SAMPLER_FIELDS = ("gen_length", "block_length", "steps", "temperature", "remasking")


def sized_model_config(model_size: str, vocab_size: int, max_seq_len: int, mask_token_id: int) -> LLaDAConfig:
    """LLaDAConfig of a MODEL_SIZES preset for a vocabulary and a row length (prompt + generation)."""
    if model_size not in MODEL_SIZES:
        raise ValueError(f"model_size={model_size!r} is not one of {sorted(MODEL_SIZES)}")
    d_model, n_layers, n_heads, mlp_hidden = MODEL_SIZES[model_size]
    return LLaDAConfig.tiny(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            mlp_hidden=mlp_hidden, max_seq_len=max_seq_len, mask_token_id=mask_token_id)


def model_config_to_dict(config: LLaDAConfig) -> dict[str, Any]:
    """LLaDAConfig -> JSON-ready dict (dtypes as names)."""
    fields = dataclasses.asdict(config)
    fields["dtype"] = jnp.dtype(config.dtype).name
    fields["param_dtype"] = jnp.dtype(config.param_dtype).name
    return fields


def model_config_from_dict(fields: dict[str, Any]) -> LLaDAConfig:
    """Inverse of `model_config_to_dict`."""
    fields = dict(fields, dtype=jnp.dtype(fields["dtype"]), param_dtype=jnp.dtype(fields["param_dtype"]))
    return LLaDAConfig(**fields)


def abstract_split(model_config: LLaDAConfig):
    """(graphdef, abstract state) of LLaDA(model_config), without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: LLaDA(model_config, rngs=nnx.Rngs(0))))


def bind_params(graphdef, state_template, params) -> LLaDA:
    """The model with `params` (a pure dict, possibly traced) put into a copy of `state_template`."""
    state = jax.tree.map(lambda leaf: leaf, state_template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def sft_loss(params, graphdef, state_template, tokens, attention_mask, response_mask, key, mask_id: int,
             num_draws: int) -> jax.Array:
    """LLaDA SFT loss, a scalar: mean over items of -ELBO / L on the generation region.

    tokens int32 [B, T]; attention_mask, response_mask bool [B, T]; key: PRNG key for the forward masks.
    """
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask, response_mask])
    model = bind_params(graphdef, state_template, params)
    mask, _ = mask_uniform_count(key, response_mask, num_draws)
    elbo = elbo_masked(lambda noised: model(noised, attention_mask), tokens, response_mask, mask, mask_id)
    return -jnp.mean(elbo / jnp.sum(response_mask, axis=-1))


def make_optimizer(lr: float, warmup_steps: int, decay_steps: int, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
    """AdamW (betas 0.9, 0.99) after global-norm clipping; linear warm-up, cosine decay to 10% of lr."""
    schedule = optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
                                                  decay_steps=decay_steps, end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=weight_decay))


def make_train_step(graphdef, state_template, optimizer, mask_id: int, num_draws: int):
    """Jitted (params, opt_state, tokens, attention_mask, response_mask, key)
    -> (params, opt_state, loss, pre-clip gradient norm).

    The update is computed but the caller keeps the old parameters when anything is not finite.
    """
    def train_step(params, opt_state, tokens, attention_mask, response_mask, key):
        loss, grads = jax.value_and_grad(sft_loss)(params, graphdef, state_template, tokens, attention_mask,
                                                   response_mask, key, mask_id, num_draws)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state, loss, optax.tree.norm(grads)

    return jax.jit(train_step)


@functools.lru_cache(maxsize=8)
def training_functions(model_config: LLaDAConfig, optimizer_key: tuple, num_draws: int):
    """Jitted training functions of one configuration, cached so repeated runs (resume, sweeps) compile once.

    optimizer_key: the arguments of `make_optimizer` (lr, warmup_steps, decay_steps, weight_decay, grad_clip).
    Returns (init_params, optimizer, train_step): init_params(PRNG key) -> pure-dict parameters (one compiled
    initialisation instead of one eager dispatch per weight); the optax transformation of `optimizer_key`;
    the step of `make_train_step`.
    """
    graphdef, state_template = abstract_split(model_config)
    optimizer = make_optimizer(*optimizer_key)
    init_params = jax.jit(lambda key: nnx.to_pure_dict(nnx.split(LLaDA(model_config, rngs=nnx.Rngs(key)))[1]))
    train_step = make_train_step(graphdef, state_template, optimizer, model_config.mask_token_id, num_draws)
    return init_params, optimizer, train_step


def make_sampler(graphdef, state_template, sampler_config: dict[str, Any], mask_id: int):
    """Jitted (params, prompt [B, P], prompt_mask [B, P], key) -> tokens [B, P + gen_length]."""
    def sample(params, prompt, prompt_mask, key):
        return generate(bind_params(graphdef, state_template, params), prompt, key,
                        gen_length=sampler_config["gen_length"], block_length=sampler_config["block_length"],
                        steps=sampler_config["steps"], temperature=sampler_config["temperature"],
                        remasking=sampler_config["remasking"], mask_id=mask_id, prompt_mask=prompt_mask)

    return jax.jit(sample)


@functools.lru_cache(maxsize=8)
def sampling_function(model_config: LLaDAConfig, sampler_key: tuple):
    """Cached `make_sampler` for sampler_key = the values of SAMPLER_FIELDS, in that order."""
    graphdef, state_template = abstract_split(model_config)
    return make_sampler(graphdef, state_template, dict(zip(SAMPLER_FIELDS, sampler_key, strict=True)),
                        model_config.mask_token_id)


def load_pretrained(out_dir: str, step: int | None = None) -> tuple[LLaDA, Tokenizer, dict[str, Any]]:
    """Rebuilds (model, tokenizer, run config) from a pre-training --workdir (the newest step by default);
    the run config (config.json) gets "checkpoint_step": the step loaded.

    Raises ValueError naming the directory when config.json or the checkpoint is missing.
    """
    config_path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(f"load_pretrained: {config_path} does not exist")
    run_config = read_json(config_path)
    tokenizer = tokenizer_from_config(run_config["tokenizer"])
    graphdef, state = abstract_split(model_config_from_dict(run_config["model"]))
    store = CheckpointStore(out_dir, read_only=True)
    step = store.latest() if step is None else step
    if step is None or step not in store.steps():
        raise ValueError(f"load_pretrained: no checkpoint {'' if step is None else step} in "
                         f"{out_dir}/{CHECKPOINT_DIR}")
    # Restore onto this process's first device: the sharding saved with the checkpoint names the saving
    # process's device, which another process of a multi-host run does not have.
    local_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    template = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=local_device),
                            nnx.to_pure_dict(state))
    params = store.restore(step, {"params": template})["params"]
    store.close()
    return bind_params(graphdef, state, params), tokenizer, {**run_config, "checkpoint_step": step}


DISTRACTOR_STREAM = 1  # the third entry of the seed of the generator that picks distractor items


def training_items(task, seed: int, step: int, batch: int, distractor_fraction: float = 0.0) -> list:
    """The `batch` supervised items of `step`: drawn from a generator seeded by (seed, step), each replaced by
    `task.distractor(item)` (a plausible wrong answer of one fixed kind) with probability `distractor_fraction`,
    drawn from a second generator seeded by (seed, step, DISTRACTOR_STREAM), so that 0 leaves the data exactly
    as without distractors and a resumed run sees the items an uninterrupted one would."""
    items = task.generate(np.random.default_rng([seed, step]), batch)
    if distractor_fraction > 0:
        if task.distractor is None:
            raise ValueError(f"task {task.name} has no distractor")
        picks = np.random.default_rng([seed, step, DISTRACTOR_STREAM]).random(len(items))
        items = [task.distractor(item) if pick < distractor_fraction else item
                 for item, pick in zip(items, picks, strict=True)]
    return items
