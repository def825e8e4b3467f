"""Masked diffusion (LLaDA-style dLLMs): forward masking schemes, per-token log-probs, ELBO / EUBO estimators.

Conventions (WORKSPACE.md): tokens [B, T] int32 hold prompt and completion side by side; completion_mask
[B, T] bool marks the real completion tokens (up to and including the first end-of-sequence token); forward
masks are bool [M, B, T] for M independent draws; the mask token id is always an argument.

Every estimator scores only positions that are both masked and real completion tokens, so a mask may hide
other positions too (SPG's also hides the padding after the first EOS and, with probability p_mask_prompt,
prompt positions) without changing which tokens are counted.

Common random numbers: draw the masks once per generated batch and pass the SAME mask arrays when scoring
the old, current and reference models, so that ratios and KL terms compare like with like.
"""
from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

LogitsFn = Callable[[jax.Array], jax.Array]


def is_concrete(array) -> bool:
    """True unless `array` is a tracer (inside jit / grad / vmap), i.e. when data checks can run."""
    return not isinstance(array, Tracer)


def check_completion_mask(completion_mask: jax.Array | np.ndarray, name: str = "completion_mask") -> None:
    """Raise ValueError if a concrete [B, T] mask has a row with no real completion token.

    Traced masks pass unchecked; every estimator below guards its denominators so that an empty row gives
    0 instead of NaN under jit.
    """
    if completion_mask.ndim != 2:
        raise ValueError(f"{name} must have shape [B, T], got {completion_mask.shape}")
    if is_concrete(completion_mask) and not np.all(np.asarray(completion_mask).any(axis=-1)):
        raise ValueError(f"{name} has a row with no real completion token")


def _check_num_draws(num_draws) -> None:
    if not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
        raise ValueError(f"num_draws must be a positive int, got {num_draws!r}")


def _rank_among(scores: jax.Array, eligible: jax.Array) -> jax.Array:
    """Rank (0-based, ascending) of each eligible position's score among the eligible ones of its row.

    Args:
      scores: [..., T] float scores, distinct almost surely.
      eligible: [..., T] bool.

    Returns:
      [..., T] int32 ranks; ineligible positions get ranks >= the row's eligible count.
    """
    masked_scores = jnp.where(eligible, scores, jnp.inf)
    order = jnp.argsort(masked_scores, axis=-1)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)


def mask_uniform_count(key: jax.Array, completion_mask: jax.Array,
                       num_draws: int, count_rounding: str = "floor") -> tuple[jax.Array, jax.Array]:
    """d1-FPO masking: t ~ U(0, 1), then exactly k = floor(t * L) of the L real completion tokens masked.

    The k positions are uniform without replacement among the real completion tokens; nothing else is
    masked. Note floor(t * L) is uniform on {0, ..., L - 1}: the fully masked sequence is never drawn and
    a draw with k = 0 contributes 0 to `elbo_from_token_logprobs`, so the estimator's mean sits above the true
    ELBO and can exceed log pi (see dipod_jax.diagnostics.masked_exact). `count_rounding="ceil"` draws
    k = ceil(t * L), uniform on {1, ..., L} (LLaDA's likelihood bound): the estimator's mean is then exactly
    the ELBO, a true lower bound.

    Args:
      key: PRNG key.
      completion_mask: [B, T] bool, real completion tokens.
      num_draws: M >= 1, static.
      count_rounding: "floor" (d1, the default) or "ceil" (unbiased for the ELBO).

    Returns:
      mask [M, B, T] bool and the drawn times t [M, B] float32.
    """
    _check_num_draws(num_draws)
    if count_rounding not in ("floor", "ceil"):
        raise ValueError(f"count_rounding must be 'floor' or 'ceil', got {count_rounding!r}")
    check_completion_mask(completion_mask)
    completion_mask = completion_mask.astype(bool)
    batch, length = completion_mask.shape
    time_key, order_key = jax.random.split(key)
    t = jax.random.uniform(time_key, (num_draws, batch))
    num_real = jnp.sum(completion_mask, axis=-1)
    if count_rounding == "floor":
        num_masked = jnp.floor(t * num_real).astype(jnp.int32)
    else:
        # t = 0 has probability zero in exact arithmetic; the floor at 1 keeps k in {1, ..., L} in float32.
        num_masked = jnp.maximum(jnp.ceil(t * num_real), 1).astype(jnp.int32)
    scores = jax.random.uniform(order_key, (num_draws, batch, length))
    ranks = _rank_among(scores, completion_mask[None])
    mask = completion_mask[None] & (ranks < num_masked[..., None])
    chex.assert_shape(mask, (num_draws, batch, length))
    return mask, t


def _check_time_range(min_t, max_t) -> None:
    for name, value in (("min_t", min_t), ("max_t", max_t)):
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if min_t > max_t:
        raise ValueError(f"min_t must be <= max_t, got min_t={min_t!r}, max_t={max_t!r}")


def _check_block_window(completion_mask: jax.Array, window_length: int) -> None:
    """The real completion tokens of every concrete row must start at the window's first position and run
    contiguously (the sampler writes them there; the mask after the first EOS is the padding)."""
    length = completion_mask.shape[-1]
    if not isinstance(window_length, (int, np.integer)) or not 1 <= window_length <= length:
        raise ValueError(f"window_length must be an int in [1, T={length}], got {window_length!r}")
    if not is_concrete(completion_mask):
        return
    rows = np.asarray(completion_mask, bool)
    window = rows[:, length - window_length:].astype(np.int8)
    if rows[:, :length - window_length].any() or not window[:, 0].all() or np.any(np.diff(window, axis=-1) > 0):
        raise ValueError("completion_mask must mark, in every row, a contiguous run of real tokens starting at "
                         f"the first position of the generation window (the last window_length={window_length} "
                         "positions)")


def mask_block_random(key: jax.Array, completion_mask: jax.Array, num_draws: int, block_length: int,
                      window_length: int, min_t: float = 0.0, max_t: float = 1.0,
                      p_mask_prompt: float = 0.15) -> tuple[jax.Array, jax.Array]:
    """SPG's "block_random" forward process, as the release runs it (spg_trainer.py `forward_process`).

    Rows are [prompt region | generation window]: the window is the last `window_length` positions, the real
    completion tokens (L of them, through the first EOS) start at its first position, and the window is cut into
    W = ceil(window_length / block_length) blocks of `block_length` positions (the release requires
    block_length to divide the window; here the last block may be shorter). n_b = ceil(L / block_length)
    blocks hold real tokens. Per row, one uniformly random permutation pi of the W window blocks is drawn, and
    draw m takes block b_m = pi[m] mod n_b: distinct blocks while n_b = W, but for a short completion the
    choice is not uniform and two draws can pick the same block. In draw m:
      - every window position after block b_m is masked, and so is the window's padding after the completion;
      - in block b_m, a count uniform on [max(1, floor(min_t * n)), min(floor(max_t * n), n)] of its n real
        tokens is masked, uniformly without replacement (the upper end is raised to the lower one if smaller);
      - every position before block b_m (the prompt region, its left padding included, and the real tokens of
        earlier blocks) is masked independently with probability p_mask_prompt (the release's use_mask_prompt;
        0 turns it off).
    The estimators score only masked real completion tokens, so masked prompt positions are hidden from the
    model but never scored, while masked earlier-block tokens are scored and counted in t_emp.

    Args:
      key: PRNG key (the release draws a fresh mask per inner iteration, shared by that iteration only).
      completion_mask: [B, T] bool; real completion tokens, contiguous from the window's first position.
      num_draws: M (SPG: num_t = 2), static, at most W (the release asserts num_t <= num_blocks).
      block_length: positions per block >= 1, static (SPG: the sampler's block length, 32).
      window_length: the generation window's length (the sampler's gen_length), static.
      min_t, max_t: 0 <= min_t <= max_t <= 1, the masked fraction range inside the chosen block.
      p_mask_prompt: probability in [0, 1] (the release: 0.15 from train.yaml, use_mask_prompt true).

    Returns:
      mask [M, B, T] bool (every hidden position), and t_emp [M, B] float32: the fraction of the L real
      completion tokens masked in each draw (the release's empirical_t).
    """
    _check_num_draws(num_draws)
    if not isinstance(block_length, (int, np.integer)) or block_length < 1:
        raise ValueError(f"block_length must be a positive int, got {block_length!r}")
    _check_time_range(min_t, max_t)
    if not isinstance(p_mask_prompt, (int, float)) or not 0.0 <= p_mask_prompt <= 1.0:
        raise ValueError(f"p_mask_prompt must be a number in [0, 1], got {p_mask_prompt!r}")
    check_completion_mask(completion_mask)
    _check_block_window(completion_mask, window_length)
    window_blocks = -(-window_length // block_length)
    if num_draws > window_blocks:
        raise ValueError(f"num_draws={num_draws} must be <= the window's {window_blocks} blocks "
                         f"(window_length={window_length}, block_length={block_length})")
    completion_mask = completion_mask.astype(bool)
    batch, length = completion_mask.shape
    order_key, count_key, position_key, prompt_key = jax.random.split(key, 4)

    num_real = jnp.sum(completion_mask, axis=-1)  # [B]
    num_blocks = jnp.maximum((num_real + block_length - 1) // block_length, 1)  # [B]
    window_index = jnp.arange(length) - (length - window_length)  # [T], negative in the prompt region
    position_block = jnp.where(window_index >= 0, window_index // block_length, -1)  # [T]

    window_order = jax.random.permutation(
        order_key, jnp.broadcast_to(jnp.arange(window_blocks), (batch, window_blocks)), axis=1, independent=True)
    chosen_block = (window_order[:, :num_draws] % num_blocks[:, None]).T  # [M, B]

    tokens_in_block = jnp.minimum(block_length, num_real[None] - chosen_block * block_length)  # [M, B]
    low = jnp.maximum(1, jnp.floor(min_t * tokens_in_block)).astype(jnp.int32)
    high = jnp.minimum(jnp.floor(max_t * tokens_in_block), tokens_in_block).astype(jnp.int32)
    high = jnp.maximum(high, low)
    count = jax.random.randint(count_key, (num_draws, batch), low, high + 1)

    block_of = position_block[None, None, :]  # [1, 1, T]
    chosen = chosen_block[..., None]  # [M, B, 1]
    in_chosen = (block_of == chosen) & completion_mask[None]
    ranks = _rank_among(jax.random.uniform(position_key, (num_draws, batch, length)), in_chosen)
    window_padding = (window_index >= 0)[None] & ~completion_mask  # [B, T]
    mask = (block_of > chosen) | (in_chosen & (ranks < count[..., None])) | window_padding[None]
    if p_mask_prompt > 0:
        hide_before = jax.random.uniform(prompt_key, (num_draws, batch, length)) < p_mask_prompt
        mask = mask | ((block_of < chosen) & hide_before)
    t_emp = jnp.sum(mask & completion_mask[None], axis=-1) / jnp.maximum(num_real, 1)[None]
    chex.assert_shape(mask, (num_draws, batch, length))
    return mask, t_emp.astype(jnp.float32)


def mask_completion_and_prompt(key: jax.Array, prompt_mask: jax.Array, completion_mask: jax.Array,
                               p_mask_prompt: float) -> jax.Array:
    """diffu-GRPO's one-step masking: the whole generation region masked, each prompt token w.p. p_mask_prompt.

    As in d1, every position outside the prompt region (the real completion tokens and the padding after
    the first EOS) is masked, and each prompt position independently with probability `p_mask_prompt`.

    Args:
      key: PRNG key (d1 draws a fresh one per inner iteration, shared by old, current and reference models).
      prompt_mask: [B, T] bool, the prompt region (positions d1 calls prompt_index).
      completion_mask: [B, T] bool, real completion tokens; must not overlap `prompt_mask`.
      p_mask_prompt: probability in [0, 1] (d1: 0.15).

    Returns:
      mask [B, T] bool.
    """
    if not isinstance(p_mask_prompt, (int, float)) or not 0.0 <= p_mask_prompt <= 1.0:
        raise ValueError(f"p_mask_prompt must be a number in [0, 1], got {p_mask_prompt!r}")
    if prompt_mask.shape != completion_mask.shape:
        raise ValueError(f"prompt_mask {prompt_mask.shape} and completion_mask {completion_mask.shape} "
                         "must have the same shape [B, T]")
    check_completion_mask(completion_mask)
    prompt_mask = prompt_mask.astype(bool)
    if is_concrete(prompt_mask) and is_concrete(completion_mask) and np.any(
            np.asarray(prompt_mask) & np.asarray(completion_mask, bool)):
        raise ValueError("prompt_mask and completion_mask overlap")
    hide_prompt = jax.random.uniform(key, prompt_mask.shape) < p_mask_prompt
    return jnp.where(prompt_mask, hide_prompt, True)


def apply_mask(tokens: jax.Array, mask: jax.Array, mask_id: int) -> jax.Array:
    """Replace masked tokens by the mask id.

    Args:
      tokens: [..., T] int tokens; mask: bool, broadcastable to tokens' shape after left-padding
        (e.g. tokens [B, T] with mask [M, B, T]); mask_id: the mask token id.

    Returns:
      noised tokens, shape broadcast(tokens, mask), dtype of tokens.
    """
    return jnp.where(mask, jnp.asarray(mask_id, tokens.dtype), tokens)


def token_log_probs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log softmax(logits)[target] in float32.

    Args:
      logits: [..., T, V]; targets: [..., T] int.

    Returns:
      [..., T] float32 log-probabilities.
    """
    chex.assert_equal_shape_prefix([logits, targets], targets.ndim)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _scored_positions(token_logp: jax.Array, mask: jax.Array, completion_mask: jax.Array):
    """Validate [M, B, T] / [B, T] shapes; return the [M, B, T] bool of masked real completion tokens."""
    chex.assert_rank([token_logp, mask, completion_mask], [3, 3, 2])
    chex.assert_equal_shape([token_logp, mask])
    chex.assert_equal_shape([token_logp[0], completion_mask])
    return mask.astype(bool) & completion_mask.astype(bool)[None]


def elbo_from_token_logprobs(token_logp: jax.Array, mask: jax.Array, completion_mask: jax.Array) -> jax.Array:
    """The LLaDA / d1 sequence ELBO estimate: mean_m (L / max(k_m, 1)) * sum_{i masked} log p(c_i | x_m).

    L is the number of real completion tokens of the row and k_m the number of them masked in draw m.

    Args:
      token_logp: [M, B, T] log p(token | noised draw m) at every position.
      mask: [M, B, T] bool forward masks; positions outside `completion_mask` are ignored.
      completion_mask: [B, T] bool.

    Returns:
      [B] ELBO estimates (a row with no masked real token in a draw gets 0 from that draw).

    Examples:
      One row of three real tokens, two draws masking two tokens and one:

      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import elbo_from_token_logprobs
      >>> token_logp = jnp.broadcast_to(jnp.array([-1.0, -2.0, -3.0]), (2, 1, 3))
      >>> mask = jnp.array([[[True, False, True]], [[False, True, False]]])
      >>> float(elbo_from_token_logprobs(token_logp, mask, jnp.ones((1, 3), bool))[0])  # mean(3/2 * -4, 3/1 * -2)
      -6.0
    """
    scored = _scored_positions(token_logp, mask, completion_mask)
    num_real = jnp.sum(completion_mask, axis=-1).astype(token_logp.dtype)  # [B]
    num_masked = jnp.sum(scored, axis=-1).astype(token_logp.dtype)  # [M, B]
    summed = jnp.sum(jnp.where(scored, token_logp, 0.0), axis=-1)  # [M, B]
    return jnp.mean(num_real[None] / jnp.maximum(num_masked, 1.0) * summed, axis=0)


def masked_token_log_probs(logits_fn: LogitsFn, tokens: jax.Array, mask: jax.Array,
                           mask_id: int) -> jax.Array:
    """Per-token log p(tokens | noised copy) for each of M forward masks, one forward pass per draw.

    Runs `logits_fn` on each noised copy with `lax.map` over the M draws, so memory is that of a single
    forward pass. The result feeds any estimator of this module (`elbo_from_token_logprobs`, the SPG ones);
    `logits_fn` closes over the parameters, so scoring old, current and reference models with the SAME `mask`
    gives common random numbers.

    Args:
      logits_fn: noised tokens [B, T] -> logits [B, T, V].
      tokens: [B, T] int, prompt + completion.
      mask: [M, B, T] bool forward masks.
      mask_id: the mask token id.

    Returns:
      [M, B, T] float32: entry (m, b, i) is log p(tokens[b, i] | tokens with mask[m] hidden) at every
      position i (masked or not; the estimators pick the positions they score).
    """
    chex.assert_rank([tokens, mask], [2, 3])
    chex.assert_equal_shape([tokens, mask[0]])

    def draw_log_probs(draw_mask):
        logits = logits_fn(apply_mask(tokens, draw_mask, mask_id))
        chex.assert_rank(logits, 3)
        return token_log_probs(logits, tokens)

    return jax.lax.map(draw_log_probs, mask)


def elbo_masked(logits_fn: LogitsFn, tokens: jax.Array, completion_mask: jax.Array, mask: jax.Array,
                mask_id: int) -> jax.Array:
    """Sequence ELBO of `tokens` under a masked-diffusion model, one forward pass per draw.

    `masked_token_log_probs` (lax.map over the M draws, memory of one forward pass) followed by
    `elbo_from_token_logprobs`. `logits_fn` closes over the parameters; to compare models (old, current,
    reference) call this with the SAME `mask` for each of them.

    Args:
      logits_fn: noised tokens [B, T] -> logits [B, T, V].
      tokens: [B, T] int, prompt + completion.
      completion_mask: [B, T] bool.
      mask: [M, B, T] bool forward masks (e.g. from `mask_uniform_count`).
      mask_id: the mask token id.

    Returns:
      [B] float32 ELBO estimates.
    """
    token_logp = masked_token_log_probs(logits_fn, tokens, mask, mask_id)
    return elbo_from_token_logprobs(token_logp, mask, completion_mask)


def spg_elbo_from_token_logprobs(token_logp: jax.Array, mask: jax.Array,
                                 completion_mask: jax.Array) -> jax.Array:
    """SPG's ELBO-type estimate: mean over draws of the mean log-prob of the masked real tokens.

    This is per token (not summed over the sequence); SPG's loss weights sequences by length instead.

    Args:
      token_logp: [M, B, T]; mask: [M, B, T] bool; completion_mask: [B, T] bool.

    Returns:
      [B] (a draw with no masked real token contributes 0).
    """
    scored = _scored_positions(token_logp, mask, completion_mask)
    num_masked = jnp.sum(scored, axis=-1).astype(token_logp.dtype)
    per_draw = jnp.sum(jnp.where(scored, token_logp, 0.0), axis=-1) / jnp.maximum(num_masked, 1.0)
    return jnp.mean(per_draw, axis=0)


def spg_eubo_from_token_logprobs(token_logp: jax.Array, mask: jax.Array, completion_mask: jax.Array,
                                 t_emp: jax.Array, beta_e: float) -> jax.Array:
    """SPG's EUBO-type (upper-bound) estimate with exponent beta_e > 0.

    Per token i: a_i = mean_m p_i^beta_e * [i masked in draw m] / t_emp_m; the estimate is
    (1 / beta_e) * mean over the tokens with a_i > 0 of log a_i (0 if there is none).

    Args:
      token_logp: [M, B, T]; mask: [M, B, T] bool; completion_mask: [B, T] bool.
      t_emp: [M, B] masked fraction of the real completion tokens of each draw (`mask_block_random`).
      beta_e: exponent > 0 (SPG: 1.0 for Sudoku, 1.5 otherwise).

    Returns:
      [B].
    """
    if isinstance(beta_e, (int, float)) and not beta_e > 0:
        raise ValueError(f"beta_e must be > 0, got {beta_e!r}")
    scored = _scored_positions(token_logp, mask, completion_mask)
    chex.assert_shape(t_emp, token_logp.shape[:2])
    tiny = jnp.finfo(token_logp.dtype).tiny
    weighted = jnp.where(scored, jnp.exp(beta_e * token_logp) / jnp.maximum(t_emp, tiny)[..., None], 0.0)
    per_token = jnp.mean(weighted, axis=0)  # [B, T]
    counted = per_token > 0
    # Double `where` keeps log's gradient finite at the positions that are not counted.
    log_per_token = jnp.where(counted, jnp.log(jnp.where(counted, per_token, 1.0)), 0.0)
    num_counted = jnp.sum(counted, axis=-1).astype(token_logp.dtype)
    return jnp.sum(log_per_token, axis=-1) / jnp.maximum(num_counted, 1.0) / beta_e


def spg_mix(elbo: jax.Array, eubo: jax.Array, weight: float = 0.5) -> jax.Array:
    """SPG's "mix" estimate weight * EUBO + (1 - weight) * ELBO, elementwise; weight in [0, 1].

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import spg_mix
      >>> float(spg_mix(jnp.array([-2.0]), jnp.array([-1.0]), 0.5)[0])  # halfway between the two bounds
      -1.5
    """
    if isinstance(weight, (int, float)) and not 0.0 <= weight <= 1.0:
        raise ValueError(f"mix weight must be in [0, 1], got {weight!r}")
    chex.assert_equal_shape([elbo, eubo])
    return weight * eubo + (1.0 - weight) * elbo
