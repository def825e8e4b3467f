"""LLaDA's block-wise semi-autoregressive sampler for masked diffusion language models, and its Fast-dLLM
accelerations (Wu et al., 2025, arXiv 2505.22618): key/value caches and confidence-threshold parallel decoding.

Details: docs/modules.md, section dipod_jax.lm.sampler.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp

REMASKING_STRATEGIES = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")
# Named sampler variants (RL's --sampler, the benchmarks): name -> (cache, parallel decoding).
SAMPLERS = {"exact": ("none", False), "parallel": ("none", True), "prefix": ("prefix", False),
            "prefix_parallel": ("prefix", True), "dual": ("dual", False), "dual_parallel": ("dual", True)}

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


def sampler_options(name: str, threshold: float, refresh_interval: int = 0) -> dict[str, Any]:
    """The `generate` keyword options of the named variant in SAMPLERS: {} for "exact"; a cache refreshed every
    refresh_interval steps of a block (0: once per block); `threshold` for the *_parallel variants (and
    "parallel", which has no cache)."""
    if name not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {name!r}")
    cache, parallel = SAMPLERS[name]
    options: dict[str, Any] = {} if cache == "none" else {"cache": cache}
    if cache != "none" and refresh_interval:
        options["refresh_interval"] = refresh_interval
    if parallel:
        options["threshold"] = threshold
    return options


def _validate(prompt: jax.Array, gen_length: int, block_length: int, steps: int, temperature,
              remasking: str, mask_id: int, prompt_mask: jax.Array | None, cache: str = "none",
              refresh_interval: int | None = None, threshold: float | None = None,
              return_history: bool = False, return_stats: bool = False) -> None:
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt must be an int array [B, P], got shape {prompt.shape} dtype {prompt.dtype}")
    for name, value in (("gen_length", gen_length), ("block_length", block_length), ("steps", steps)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if gen_length % block_length:
        raise ValueError(f"gen_length={gen_length} must be divisible by block_length={block_length}")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps={steps} must be divisible by the number of blocks "
                         f"gen_length/block_length={num_blocks}")
    if isinstance(temperature, (int, float)) and temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if remasking not in REMASKING_STRATEGIES:
        raise ValueError(f"remasking must be one of {REMASKING_STRATEGIES}, got {remasking!r}")
    if not isinstance(mask_id, int) or mask_id < 0:
        raise ValueError(f"mask_id must be a non-negative int, got {mask_id!r}")
    if prompt_mask is not None and prompt_mask.shape != prompt.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask.shape} must equal prompt shape {prompt.shape}")
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
    if refresh_interval is not None:
        if cache == "none":
            raise ValueError("refresh_interval needs a cache (cache='prefix' or 'dual')")
        if not isinstance(refresh_interval, int) or isinstance(refresh_interval, bool) or refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be a positive int or None, got {refresh_interval!r}")
    if threshold is not None:
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must be a number in (0, 1] or None, got {threshold!r}")
        if remasking != "low_confidence":
            raise ValueError(f"threshold (confidence-threshold parallel decoding) needs remasking='low_confidence', "
                             f"got {remasking!r}")
    if return_history and return_stats:
        raise ValueError("return_history and return_stats cannot both be set")


def _unmask(tokens: jax.Array, logits: jax.Array, candidates: jax.Array, counts: jax.Array, temperature,
            remasking: str, mask_id: int, gumbel_key: jax.Array, score_key: jax.Array,
            threshold: float | None = None) -> jax.Array:
    """One denoising step on a window of W positions: predict a token everywhere, unmask the best candidates.

    tokens [B, W] int32, logits [B, W, V] (any float dtype), candidates [B, W] bool (masked positions of the
    current block), counts [B] int (how many to unmask in each row; more are unmasked when `threshold` is set:
    every candidate whose confidence exceeds it). gumbel_key, score_key: PRNG keys of the step's sampling noise
    and random scores. Returns tokens [B, W] int32.
    """
    logits = logits.astype(jnp.float32).at[..., mask_id].set(-jnp.inf)
    if isinstance(temperature, (int, float)) and temperature == 0:
        # Greedy: argmax(logits + 0 * noise) is argmax(logits), so the noise need not be drawn.
        predicted = jnp.argmax(logits, axis=-1)
    else:
        predicted = jnp.argmax(logits + temperature * jax.random.gumbel(gumbel_key, logits.shape), axis=-1)
    if remasking == "low_confidence":
        probs = jax.nn.softmax(logits, axis=-1)
        score = jnp.take_along_axis(probs, predicted[..., None], axis=-1)[..., 0]
    else:
        score = jax.random.uniform(score_key, tokens.shape)
    score = jnp.where(candidates, score, -jnp.inf)
    if threshold is not None:
        counts = jnp.maximum(counts, jnp.sum(score > threshold, axis=-1))
    # rank[b, i] = place of position i when row b is sorted by descending score (stable: leftmost first).
    rank = jnp.argsort(jnp.argsort(-score, axis=-1, stable=True), axis=-1, stable=True)
    unmask = candidates & (rank < counts[:, None])
    return jnp.where(unmask, predicted.astype(jnp.int32), tokens)


def _initial_tokens(prompt: jax.Array, prompt_mask: jax.Array | None, gen_length: int, mask_id: int):
    """(tokens [B, P + gen_length] int32: the prompt then masks, attention mask [B, P + gen_length] | None)."""
    batch = prompt.shape[0]
    tokens = jnp.concatenate([prompt.astype(jnp.int32), jnp.full((batch, gen_length), mask_id, jnp.int32)], axis=1)
    attention_mask = None
    if prompt_mask is not None:
        attention_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((batch, gen_length), bool)], axis=1)
    return tokens, attention_mask


def _generate_exact(logits_fn: LogitsFn, prompt: jax.Array, key: jax.Array, *, gen_length: int,
                    block_length: int, steps: int, temperature, remasking: str, mask_id: int,
                    prompt_mask: jax.Array | None, return_history: bool):
    """LLaDA's sampler: every step one full forward pass, in one `lax.scan` over the steps."""
    batch, prompt_length = prompt.shape
    total_length = prompt_length + gen_length
    steps_per_block = steps // (gen_length // block_length)
    tokens, attention_mask = _initial_tokens(prompt, prompt_mask, gen_length, mask_id)
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
        logits = logits_fn(tokens, attention_mask)
        chex.assert_shape(logits, (batch, total_length, None))
        tokens = _unmask(tokens, logits, candidates, block_counts[:, step_in_block], temperature, remasking,
                         mask_id, gumbel_key, score_key)
        return (tokens, key, block_counts), (tokens if return_history else None)

    initial_counts = jnp.zeros((batch, steps_per_block), jnp.int32)
    (tokens, _, _), history = jax.lax.scan(step, (tokens, key, initial_counts), jnp.arange(steps))
    return tokens, history


# full_pass(tokens [B, T], attention_mask | None, block_start) -> (logits [B, block_length, V] of the block, cache)
FullPass = Callable[[jax.Array, "jax.Array | None", "int | jax.Array"], Any]
# cached_pass(tokens [B, T], attention_mask | None, block_start, window, cache) -> logits [B, block_length, V] of
# the block, from a pass over the window of positions [block_start, block_start + window) only.
CachedPass = Callable[[jax.Array, "jax.Array | None", "int | jax.Array", int, Any], jax.Array]


def _generate_fast(full_pass: FullPass, cached_pass: CachedPass | None, prompt: jax.Array, key: jax.Array, *,
                   gen_length: int, block_length: int, steps: int, temperature, mask_id: int, remasking: str,
                   prompt_mask: jax.Array | None, cache: str, refresh_interval: int | None,
                   threshold: float | None, return_history: bool):
    """Block by block; inside a block a `lax.while_loop` over its steps that stops once the block has no mask.

    A block's first step (and every refresh_interval-th step) is a full pass that also returns the cache; the
    other steps are cached passes (cached_pass, given exactly when cache != "none") over a window: the block and
    everything after it ("prefix") or the block alone ("dual"). Returns (tokens, history [steps, B, T] | None, stats
    {"full_passes", "cached_passes", "cached_positions" (window positions over all cached passes)}: int32).
    """
    batch, prompt_length = prompt.shape
    total_length = prompt_length + gen_length
    num_blocks = gen_length // block_length
    steps_per_block = steps // num_blocks
    tokens, attention_mask = _initial_tokens(prompt, prompt_mask, gen_length, mask_id)

    def block_tokens(tokens, block_start):
        return jax.lax.dynamic_slice_in_dim(tokens, block_start, block_length, axis=1)

    def decode_block(block_index, tokens):
        """tokens after the block's steps, its history [steps_per_block, B, T] (or None), pass counts [3]."""
        block_start = prompt_length + block_index * block_length
        # block_start is a Python int in "prefix" mode (a Python loop over blocks), so the window is static.
        window = total_length - block_start if cache == "prefix" else block_length
        block_key = jax.random.fold_in(key, block_index)
        # The schedule is fixed from the block's masked count when the block starts.
        counts = unmask_schedule(jnp.sum(block_tokens(tokens, block_start) == mask_id, axis=-1), steps_per_block)

        def update(tokens, logits, step):
            chex.assert_shape(logits, (batch, block_length, None))
            current = block_tokens(tokens, block_start)
            gumbel_key, score_key = jax.random.split(jax.random.fold_in(block_key, step))
            new = _unmask(current, logits, current == mask_id, counts[:, step], temperature, remasking, mask_id,
                          gumbel_key, score_key, threshold)
            return jax.lax.dynamic_update_slice_in_dim(tokens, new, block_start, axis=1)

        def record(history, step, tokens):
            return None if history is None else history.at[step].set(tokens)

        logits, kv = full_pass(tokens, attention_mask, block_start)
        tokens = update(tokens, logits, 0)
        history = record(jnp.zeros((steps_per_block, batch, total_length), jnp.int32) if return_history else None,
                         0, tokens)
        full_step, cached_step = jnp.array([1, 0, 0], jnp.int32), jnp.array([0, 1, window], jnp.int32)

        def unfinished(carry):
            step, tokens = carry[:2]
            return (step < steps_per_block) & jnp.any(block_tokens(tokens, block_start) == mask_id)

        def body(carry):
            step, tokens, kv, history, passes = carry
            if cached_pass is None:
                logits, _ = full_pass(tokens, attention_mask, block_start)
                passes = passes + full_step
            elif refresh_interval is None:
                logits = cached_pass(tokens, attention_mask, block_start, window, kv)
                passes = passes + cached_step
            else:
                refresh = step % refresh_interval == 0
                cached = cached_pass
                logits, kv = jax.lax.cond(refresh, lambda: full_pass(tokens, attention_mask, block_start),
                                          lambda: (cached(tokens, attention_mask, block_start, window, kv), kv))
                passes = passes + jnp.where(refresh, full_step, cached_step)
            tokens = update(tokens, logits, step)
            return step + 1, tokens, kv, record(history, step, tokens), passes

        executed, tokens, _, history, passes = jax.lax.while_loop(
            unfinished, body, (jnp.int32(1), tokens, kv, history, full_step))
        if history is not None:
            # Steps skipped because the block was already complete leave the tokens as they are.
            done = jnp.arange(steps_per_block) < executed
            history = jnp.where(done[:, None, None], history, tokens[None])
        return tokens, history, passes

    # The window of a "prefix" cached pass (the block and everything after it) shrinks block by block, so each
    # block has its own static shapes: a Python loop over the blocks.
    tokens, history, passes = _decode_blocks(decode_block, tokens, num_blocks, steps_per_block,
                                             python_loop=cache == "prefix", return_history=return_history)
    return tokens, history, dict(zip(("full_passes", "cached_passes", "cached_positions"), passes, strict=True))


def _decode_blocks(decode_block, tokens: jax.Array, num_blocks: int, steps_per_block: int, *, python_loop: bool,
                   return_history: bool):
    """`decode_block(block_index, tokens)` -> (tokens, history [steps_per_block, B, T] | None, passes [3]) over
    the blocks in order: a Python loop (each block traced with its own static shapes) or one `fori_loop`.

    Returns (tokens [B, T], history [num_blocks * steps_per_block, B, T] | None, passes [3] summed over blocks).
    """
    if python_loop:
        histories, passes = [], jnp.zeros(3, jnp.int32)
        for block_index in range(num_blocks):
            tokens, history, block_passes = decode_block(block_index, tokens)
            histories.append(history)
            passes = passes + block_passes
        return tokens, jnp.concatenate(histories) if return_history else None, passes

    def loop_body(block_index, carry):
        tokens, history, passes = carry
        tokens, block_history, block_passes = decode_block(block_index, tokens)
        if history is not None:
            history = jax.lax.dynamic_update_slice_in_dim(history, block_history, block_index * steps_per_block,
                                                          axis=0)
        return tokens, history, passes + block_passes

    history = jnp.zeros((num_blocks * steps_per_block,) + tokens.shape, jnp.int32) if return_history else None
    return jax.lax.fori_loop(0, num_blocks, loop_body, (tokens, history, jnp.zeros(3, jnp.int32)))


def _outputs(tokens, history, stats, return_history: bool, return_stats: bool):
    if return_history:
        return tokens, history
    if return_stats:
        return tokens, stats
    return tokens


def _logits_fn_full_pass(logits_fn: LogitsFn, block_length: int) -> FullPass:
    def full_pass(tokens, attention_mask, block_start):
        logits = logits_fn(tokens, attention_mask)
        chex.assert_shape(logits, tokens.shape + (None,))
        return jax.lax.dynamic_slice_in_dim(logits, block_start, block_length, axis=1), None
    return full_pass


def generate_from_logits_fn(logits_fn: LogitsFn, prompt: jax.Array, key: jax.Array, *, gen_length: int,
                            block_length: int, steps: int, temperature: float | jax.Array,
                            remasking: str = "low_confidence", mask_id: int,
                            prompt_mask: jax.Array | None = None, threshold: float | None = None,
                            return_history: bool = False, return_stats: bool = False):
    """The sampler for any denoiser (no cache: a plain logits_fn exposes no keys / values). See `generate`.

    logits_fn(tokens [B, P + gen_length] int32, attention_mask [B, P + gen_length] bool | None) -> [B, ., V].
    Returns tokens [B, P + gen_length] int32, and with return_history also the tokens after every step
    [steps, B, P + gen_length], or with return_stats the pass counts.
    """
    _validate(prompt, gen_length, block_length, steps, temperature, remasking, mask_id, prompt_mask,
              threshold=threshold, return_history=return_history, return_stats=return_stats)
    settings: dict[str, Any] = dict(gen_length=gen_length, block_length=block_length, steps=steps,
                                    temperature=temperature, remasking=remasking, mask_id=mask_id,
                                    prompt_mask=prompt_mask, return_history=return_history)
    if threshold is None:
        tokens, history = _generate_exact(logits_fn, prompt, key, **settings)
        stats = {"full_passes": jnp.int32(steps), "cached_passes": jnp.int32(0), "cached_positions": jnp.int32(0)}
    else:
        tokens, history, stats = _generate_fast(_logits_fn_full_pass(logits_fn, block_length), None, prompt, key,
                                                cache="none", refresh_interval=None, threshold=threshold,
                                                **settings)
    return _outputs(tokens, history, stats, return_history, return_stats)


def generate(model, prompt: jax.Array, key: jax.Array, *, gen_length: int, block_length: int, steps: int,
             temperature: float | jax.Array, remasking: str = "low_confidence", mask_id: int,
             prompt_mask: jax.Array | None = None, cache: str = "none", refresh_interval: int | None = None,
             threshold: float | None = None, return_history: bool = False, return_stats: bool = False):
    """Sample completions from a masked diffusion model with LLaDA's block-wise low-confidence remasking.

    model: callable `model(tokens [B, T] int32, attention_mask [B, T] bool | None) -> logits [B, T, V]`
      (a `dipod_jax.models.llada.LLaDA`; with a cache it must also have `forward_with_cache` and
      `forward_cached`, as LLaDA does).
    prompt [B, P] int: never modified. prompt_mask [B, P] bool | None: False marks prompt padding (left padding),
      which is excluded from attention; completion positions are always attended to.
    key: PRNG key. gen_length, block_length, steps: Python ints with gen_length % block_length == 0 and
      steps % (gen_length // block_length) == 0, else ValueError.
    temperature: >= 0 (float or traced scalar); 0 is greedy. remasking: "low_confidence" or "random".
    mask_id: the mask token id (an argument, never a global).
    cache: "none" (every step a full forward pass), "prefix" or "dual" (Fast-dLLM's key/value caches; see the
      module docstring). refresh_interval: with a cache, recompute it every this many steps of a block
      (None: once per block, at its first step; 1: every step is a full pass, giving the exact sampler's greedy
      tokens; at temperature > 0 the fast paths draw their noise differently, same distribution).
    threshold: None, or a confidence in (0, 1] for parallel decoding: each step unmasks every candidate whose
      confidence exceeds it, and at least its scheduled count (low_confidence remasking only).
    Returns tokens [B, P + gen_length] int32 (prompt then completion), plus the per-step history
    [steps, B, P + gen_length] when return_history is True (steps a block skipped repeat its final tokens),
    or {"full_passes", "cached_passes", "cached_positions"} (int32 scalars: forward passes run, and window
    positions computed by the cached ones) when return_stats is True.
    With cache="none" and threshold=None this is the exact sampler (one `lax.scan`, unchanged).
    """
    _validate(prompt, gen_length, block_length, steps, temperature, remasking, mask_id, prompt_mask, cache,
              refresh_interval, threshold, return_history, return_stats)
    if cache == "none":
        return generate_from_logits_fn(model, prompt, key, gen_length=gen_length, block_length=block_length,
                                       steps=steps, temperature=temperature, remasking=remasking, mask_id=mask_id,
                                       prompt_mask=prompt_mask, threshold=threshold, return_history=return_history,
                                       return_stats=return_stats)
    for method in ("forward_with_cache", "forward_cached"):
        if not callable(getattr(model, method, None)):
            raise ValueError(f"cache={cache!r} needs a model with a {method} method (dipod_jax.models.llada.LLaDA)")

    def full_pass(tokens, attention_mask, block_start):
        return model.forward_with_cache(tokens, attention_mask, block_start, block_length)

    def cached_pass(tokens, attention_mask, block_start, window, kv):
        window_tokens = jax.lax.dynamic_slice_in_dim(tokens, block_start, window, axis=1)
        return model.forward_cached(window_tokens, block_start, kv, attention_mask, block_length)

    tokens, history, stats = _generate_fast(
        full_pass, cached_pass, prompt, key, gen_length=gen_length, block_length=block_length, steps=steps,
        temperature=temperature, mask_id=mask_id, remasking=remasking, prompt_mask=prompt_mask, cache=cache,
        refresh_interval=refresh_interval, threshold=threshold, return_history=return_history)
    return _outputs(tokens, history, stats, return_history, return_stats)
