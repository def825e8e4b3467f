"""Exact likelihoods and exact ELBO expectations for masked-diffusion models with short completions (L <= 5).

Details: docs/modules.md, section dipod_jax.diagnostics.masked_exact.
"""
from __future__ import annotations

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from dipod_jax.losses.masked import LogitsFn, apply_mask, check_completion_mask, token_log_probs

MAX_EXACT_LENGTH = 5


def completion_positions(completion_mask) -> np.ndarray:
    """Positions of the real completion tokens, left to right.

    Args:
      completion_mask: [B, T] concrete bool; every row must hold the same number L, 1 <= L <= 5.

    Returns:
      [B, L] int32 numpy array.
    """
    completion_mask = np.asarray(completion_mask, dtype=bool)
    check_completion_mask(completion_mask)
    lengths = completion_mask.sum(axis=-1)
    if not np.all(lengths == lengths[0]):
        raise ValueError(f"completion_mask rows must all hold the same number of tokens, got {lengths.tolist()}")
    if lengths[0] > MAX_EXACT_LENGTH:
        raise ValueError(f"completion_mask holds {lengths[0]} tokens per row; exact enumeration needs "
                         f"<= {MAX_EXACT_LENGTH}")
    return np.stack([np.flatnonzero(row) for row in completion_mask]).astype(np.int32)


def subset_bits(length: int) -> np.ndarray:
    """[2^L, L] bool: row s lists which completion tokens subset s masks."""
    return (np.arange(2 ** length)[:, None] >> np.arange(length)[None] & 1).astype(bool)


def subset_token_log_probs(logits_fn: LogitsFn, tokens: jax.Array, completion_mask,
                           mask_id: int) -> jax.Array:
    """log p_theta(c_j | completion with subset s masked), for every subset s and completion token j.

    Args:
      logits_fn: noised tokens [B, T] -> logits [B, T, V].
      tokens: [B, T] int.
      completion_mask: [B, T] concrete bool, the same L <= 5 real tokens per row.
      mask_id: the mask token id.

    Returns:
      [B, 2^L, L] float32 (entries for unmasked j are the model's log-probs too, but no estimator uses them).
    """
    positions = completion_positions(completion_mask)
    chex.assert_rank(tokens, 2)
    batch, seq_len = tokens.shape
    if positions.shape[0] != batch:
        raise ValueError(f"completion_mask has {positions.shape[0]} rows, tokens has {batch}")
    length = positions.shape[1]
    bits = subset_bits(length)  # [S, L]
    masks = np.zeros((2 ** length, batch, seq_len), dtype=bool)
    rows = np.arange(batch)[:, None]
    for subset, subset_mask in enumerate(bits):
        masks[subset][rows, positions] = subset_mask[None]

    def subset_log_probs(mask):
        logits = logits_fn(apply_mask(tokens, mask, mask_id))
        return token_log_probs(logits, tokens)[rows, positions]  # [B, L]

    table = jax.lax.map(subset_log_probs, jnp.asarray(masks))  # [S, B, L]
    return jnp.transpose(table, (1, 0, 2))


def _order_tables(length: int) -> tuple[np.ndarray, np.ndarray]:
    """For every order of L tokens: [L!, L] subset masked just before step j, and [L!, L] token revealed."""
    full = 2 ** length - 1
    orders = np.array(list(itertools.permutations(range(length))), dtype=np.int32)
    revealed_before = np.cumsum(np.concatenate(
        [np.zeros((len(orders), 1), np.int64), 1 << orders[:, :-1].astype(np.int64)], axis=1), axis=1)
    return (full - revealed_before).astype(np.int32), orders


def logprob_from_subset_table(table: jax.Array) -> jax.Array:
    """Exact log pi(c) of the random-order sampler by enumerating the L! orders.

    Args:
      table: [B, 2^L, L] from `subset_token_log_probs`.

    Returns:
      [B] log-likelihoods.
    """
    length = table.shape[-1]
    chex.assert_shape(table, (None, 2 ** length, length))
    masked_subset, revealed = _order_tables(length)
    per_order = jnp.sum(table[:, masked_subset, revealed], axis=-1)  # [B, L!]
    return jax.nn.logsumexp(per_order, axis=-1) - math.log(math.factorial(length))


def exact_logprob_random_order(logits_fn: LogitsFn, tokens: jax.Array, completion_mask,
                               mask_id: int) -> jax.Array:
    """Exact log-likelihood of each completion under the one-token-per-step random-order sampler.

    Args:
      logits_fn: noised tokens [B, T] -> logits [B, T, V].
      tokens: [B, T] int, prompt + completion.
      completion_mask: [B, T] concrete bool, the same L <= 5 real completion tokens per row.
      mask_id: the mask token id.

    Returns:
      [B] log pi(completion | rest of the row).
    """
    return logprob_from_subset_table(subset_token_log_probs(logits_fn, tokens, completion_mask, mask_id))


def _subset_weighted_sum(table: jax.Array, subset_weights: np.ndarray) -> jax.Array:
    """sum_s w_s * sum_{j masked in s} table[:, s, j]; table [B, 2^L, L], weights [2^L] -> [B]."""
    length = table.shape[-1]
    bits = subset_bits(length)
    per_subset = jnp.sum(jnp.where(bits[None], table, 0.0), axis=-1)  # [B, S]
    return per_subset @ jnp.asarray(subset_weights, table.dtype)


def _weights_per_count(length: int, max_count: int) -> np.ndarray:
    """w_s = 1 / (k C(L, k)) for 1 <= k = |s| <= max_count, else 0: the mean over subsets of size k, over k."""
    counts = subset_bits(length).sum(axis=-1)
    weights = np.zeros(2 ** length)
    for count in range(1, max_count + 1):
        weights[counts == count] = 1.0 / (count * math.comb(length, count))
    return weights


def elbo_from_subset_table(table: jax.Array) -> jax.Array:
    """The exact masked-diffusion ELBO sum_{k=1}^{L} (1/k) E_{|S|=k}[ sum_{i in S} log p(c_i | x_S) ].

    This equals E_order[ sum_j log p(c_{o_j} | ...) ], so Jensen gives ELBO <= log pi for the random-order
    sampler. It is also the expectation of LLaDA's estimator with k uniform on {1, ..., L}.

    Args:
      table: [B, 2^L, L] from `subset_token_log_probs`.

    Returns:
      [B].
    """
    length = table.shape[-1]
    return _subset_weighted_sum(table, _weights_per_count(length, length))


def uniform_count_estimate_mean_from_subset_table(table: jax.Array) -> jax.Array:
    """Exact expectation of `elbo_from_token_logprobs` under `mask_uniform_count` (d1-FPO's estimator).

    k = floor(t L) is uniform on {0, ..., L - 1}; k = 0 scores 0 and k = L never occurs, so the mean is
    sum_{k=1}^{L-1} (1/k) E_{|S|=k}[...] = ELBO - (1/L) sum_i log p(c_i | all masked) >= ELBO.

    Args:
      table: [B, 2^L, L] from `subset_token_log_probs`.

    Returns:
      [B].
    """
    length = table.shape[-1]
    return _subset_weighted_sum(table, _weights_per_count(length, length - 1))


def exact_elbo(logits_fn: LogitsFn, tokens: jax.Array, completion_mask, mask_id: int) -> jax.Array:
    """`elbo_from_subset_table` from a model. Args as `exact_logprob_random_order`; returns [B]."""
    return elbo_from_subset_table(subset_token_log_probs(logits_fn, tokens, completion_mask, mask_id))


def exact_uniform_count_estimate_mean(logits_fn: LogitsFn, tokens: jax.Array, completion_mask,
                                      mask_id: int) -> jax.Array:
    """`uniform_count_estimate_mean_from_subset_table` from a model. Args as `exact_logprob_random_order`."""
    return uniform_count_estimate_mean_from_subset_table(
        subset_token_log_probs(logits_fn, tokens, completion_mask, mask_id))
