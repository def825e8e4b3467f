"""LLaDA's block-wise semi-autoregressive sampler for masked diffusion language models.

The completion starts fully masked. It is generated in gen_length / block_length blocks, left to right; each
block gets steps / num_blocks denoising steps. At every step the model predicts a token x0 for every position
(Gumbel-max at temperature T: argmax(logits + T * Gumbel noise), which samples softmax(logits / T) and is the
greedy argmax at T = 0), each still-masked position of the current block is scored (by the probability
softmax(logits) of its predicted token for "low_confidence", uniformly at random for "random"), and the k best
are unmasked. k follows the block's masked count at the start of the block split evenly over its steps, the
remainder going to the first steps (`unmask_schedule`). Ties in the score go to the leftmost position.

One deliberate difference from LLaDA's reference generate.py: the mask token is excluded from the predictions
(its logit is set to -inf), so every step unmasks exactly its scheduled count even for an untrained model.

Everything runs in one `jax.lax.scan` over the steps (no Python loop per step or sample), so `generate` can be
jitted. Two ways:
  * NNX: `nnx.jit(functools.partial(generate, gen_length=..., block_length=..., steps=..., temperature=...,
    mask_id=...))(model, prompt, key)` (the keyword settings are closed over, hence static);
  * plain JAX: `graphdef, state = nnx.split(model)`, then
    `jax.jit(lambda state, prompt, key: generate(nnx.merge(graphdef, state), prompt, key, ...))`.
`generate_from_logits_fn` is the same sampler for any `logits_fn(tokens [B, T], attention_mask [B, T] | None)
-> [B, T, V]`.
"""
from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

REMASKING_STRATEGIES = ("low_confidence", "random")

LogitsFn = Callable[[jax.Array, "jax.Array | None"], jax.Array]


def unmask_schedule(num_masked: jax.Array, steps: int) -> jax.Array:
    """How many positions to unmask at each of `steps` steps: num_masked [B] int -> [B, steps] int32.

    Row b is num_masked[b] // steps everywhere plus one on the first num_masked[b] % steps steps, so each row
    sums to num_masked[b].
    """
    chex.assert_rank(num_masked, 1)
    num_masked = num_masked.astype(jnp.int32)
    base, remainder = num_masked // steps, num_masked % steps
    extra = jnp.arange(steps, dtype=jnp.int32)[None, :] < remainder[:, None]
    return base[:, None] + extra.astype(jnp.int32)


def _validate(prompt: jax.Array, gen_length: int, block_length: int, steps: int, temperature,
              remasking: str, mask_id: int, prompt_mask: jax.Array | None) -> None:
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an int array [B, P], got shape {prompt.shape} dtype {prompt.dtype}")
    for name, value in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be divisible by block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be divisible by the number of blocks gen_length/block_length={num_blocks}")
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(f"remasking must be one of {REMASKING_STRATEGIES}, got {remasking!r}")
    if not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}")
    if prompt_mask is not None and prompt_mask.shape != prompt.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} must equal prompt shape {prompt.shape}")


def generate_from_logits_fn(logits_fn: LogitsFn, prompt: jax.Array, key: jax.Array, *, gen_length: int,
                            block_length: int, steps: int, temperature: float | jax.Array,
                            remasking: str = "low_confidence", mask_id: int,
                            prompt_mask: jax.Array | None = None, return_history: bool = False):
    """The sampler for any denoiser. See `generate` for the arguments.

    logits_fn(tokens [B, P + gen_length] int32, attention_mask [B, P + gen_length] bool | None) -> [B, ., V].
    Returns tokens [B, P + gen_length] int32, and with return_history also the tokens after every step
    [steps, B, P + gen_length].
    """
    _validate(prompt, gen_length, block_length, steps, temperature, remasking, mask_id, prompt_mask)
    batch, prompt_length = prompt.shape
    total_length = prompt_length + gen_length
    steps_per_block = steps // (gen_length // block_length)
    tokens = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((batch, gen_length), mask_id, jnp.int32)], axis=1)
    attention_mask = None
    if prompt_mask is not None:
        attention_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((batch, gen_length), bool)], axis=1)
    positions = jnp.arange(total_length)

    def step(carry, step_index):
        tokens, key, block_counts = carry
        block_index, step_in_block = step_index // steps_per_block, step_index % steps_per_block
        block_start = prompt_length + block_index * block_length
        in_block = (positions >= block_start) & (positions < block_start + block_length)
        candidates = (tokens == mask_id) & in_block[None, :]
        # The schedule is fixed from the block's masked count when the block starts.
        block_counts = jnp.where(step_in_block == 0,
                                 unmask_schedule(jnp.sum(candidates, axis=-1), steps_per_block), block_counts)
        key, gumbel_key, score_key = jax.random.split(key, 3)
        logits = logits_fn(tokens, attention_mask).astype(jnp.float32)
        chex.assert_shape(logits, (batch, total_length, None))
        logits = logits.at[..., mask_id].set(-jnp.inf)
        predicted = jnp.argmax(logits + temperature * jax.random.gumbel(gumbel_key, logits.shape), axis=-1)
        if remasking == "low_confidence":
            probs = jax.nn.softmax(logits, axis=-1)
            score = jnp.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]
        else:
            score = jax.random.uniform(score_key, (batch, total_length))
        score = jnp.where(candidates, score, -jnp.inf)
        # rank[b, i] = place of position i when row b is sorted by descending score (stable: leftmost first).
        rank = jnp.argsort(jnp.argsort(-score, axis=-1, stable=True), axis=-1, stable=True)
        unmask = candidates & (rank < block_counts[:, step_in_block][:, None])
        tokens = jnp.where(unmask, predicted.astype(jnp.int32), tokens)
        return (tokens, key, block_counts), (tokens if return_history else None)

    initial_counts = jnp.zeros((batch, steps_per_block), jnp.int32)
    (tokens, _, _), history = jax.lax.scan(step, (tokens, key, initial_counts), jnp.arange(steps))
    return (tokens, history) if return_history else tokens


def generate(model, prompt: jax.Array, key: jax.Array, *, gen_length: int, block_length: int, steps: int,
             temperature: float | jax.Array, remasking: str = "low_confidence", mask_id: int,
             prompt_mask: jax.Array | None = None, return_history: bool = False):
    """Sample completions from a masked diffusion model with LLaDA's block-wise low-confidence remasking.

    model: callable `model(tokens [B, T] int32, attention_mask [B, T] bool | None) -> logits [B, T, V]`
      (a `dipod_jax.models.llada.LLaDA`).
    prompt [B, P] int: never modified. prompt_mask [B, P] bool | None: False marks prompt padding (left padding),
      which is excluded from attention; completion positions are always attended to.
    key: PRNG key. gen_length, block_length, steps: Python ints with gen_length % block_length == 0 and
      steps % (gen_length // block_length) == 0, else ValueError.
    temperature: >= 0 (float or traced scalar); 0 is greedy. remasking: "low_confidence" or "random".
    mask_id: the mask token id (an argument, never a global).
    Returns tokens [B, P + gen_length] int32 (prompt then completion), plus the per-step history
    [steps, B, P + gen_length] when return_history is True.
    """
    return generate_from_logits_fn(model, prompt, key, gen_length=gen_length, block_length=block_length,
                                   steps=steps, temperature=temperature, remasking=remasking, mask_id=mask_id,
                                   prompt_mask=prompt_mask, return_history=return_history)
