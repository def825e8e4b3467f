"""dLLM policy-gradient losses: GRPO / diffu-GRPO, FPO for dLLMs, SPG; each with the DiPOD term.

Every loss returns (loss scalar, aux dict of scalar diagnostics) and takes `dipod_beta`, composed only through
`dipod_jax.losses.dipod.with_dipod`: a Python 0 returns the baseline loss object untouched, so the loss and
its gradient are bit-for-bit the baseline's. "Old" and "reference" inputs are treated as constants
(`stop_gradient`), as in d1 where they come from no-grad forward passes.

Validation: clip_eps <= 0, negative betas, an unknown estimator and shape mismatches raise ValueError naming
the argument; an all-empty completion mask raises when concrete, and under jit its denominators are floored
so the loss is 0, not NaN.
"""
from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from dipod_jax.losses.dipod import check_dipod_beta, dipod_term_metric, is_zero_beta, weighted_mean, with_dipod
from dipod_jax.losses.masked import is_concrete, spg_mix
from dipod_jax.losses.trust_region import check_clip_eps, clip_fraction, ppo_objective

SPG_ESTIMATORS = ("elbo", "eubo", "mix")
LossAndAux = tuple[jax.Array, dict[str, jax.Array]]


def _check_shape(name: str, array: jax.Array, shape: tuple[int, ...]) -> None:
    if tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(array.shape)}")


def _check_nonnegative(name: str, value) -> None:
    if isinstance(value, numbers.Real) and not float(value) >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_not_all_empty(name: str, mask: jax.Array) -> None:
    if is_concrete(mask) and not np.any(np.asarray(mask)):
        raise ValueError(f"{name} is empty: no real completion token in the batch")


def _needs_elbo(dipod_beta, elbo) -> None:
    check_dipod_beta(dipod_beta)
    if elbo is None and not is_zero_beta(dipod_beta):
        raise ValueError("elbo is required when dipod_beta is not 0")


def grpo_loss(token_logp_new: jax.Array, token_logp_old: jax.Array, advantages: jax.Array,
              completion_mask: jax.Array, clip_eps: float, token_logp_ref: jax.Array | None = None,
              kl_beta: float = 0.0, elbo: jax.Array | None = None, *, dipod_beta) -> LossAndAux:
    """Token-level GRPO with PPO clipping, a k3 KL penalty to a reference model and the DiPOD term.

    Per real completion token: -min(r A, clip(r, 1 - eps, 1 + eps) A) + kl_beta * k3, with
    r = exp(logp_new - logp_old) and k3 = exp(ref - new) - (ref - new) - 1. Averaging follows d1: ONE mean
    over all real completion tokens of the batch, sum(per_token * mask) / sum(mask) (so long completions
    weigh more), not a per-sequence mean followed by a batch mean. The DiPOD term is put on the same scale,
    a token mean of the sequence ELBOs: -dipod_beta * sum_b ELBO_b / sum_b L_b with L_b the real completion
    tokens of row b (a sequence ELBO added to a token-mean loss would weigh it about L times more; our
    extension, the release's diffu-GRPO has no DiPOD term).

    Args:
      token_logp_new: [B, T] current per-token log-probs (differentiated).
      token_logp_old: [B, T] log-probs at the start of the generation batch (constant).
      advantages: [B] one per completion, broadcast over its tokens.
      completion_mask: [B, T] bool, real completion tokens.
      clip_eps: eps > 0 (d1: 0.5).
      token_logp_ref: [B, T] reference-model log-probs; required when kl_beta != 0.
      kl_beta: KL coefficient >= 0 (d1: 0.04).
      elbo: [B] on-policy sequence ELBOs under the current parameters; required when dipod_beta != 0.
      dipod_beta: DiPOD coefficient >= 0, required (0.0 is the baseline, bit for bit).

    Returns:
      (scalar loss, aux with pg_loss, kl, clip_fraction, ratio_mean, dipod_term).
    """
    check_clip_eps(clip_eps)
    _check_nonnegative("kl_beta", kl_beta)
    _needs_elbo(dipod_beta, elbo)
    if token_logp_new.ndim != 2:
        raise ValueError(f"token_logp_new must have shape [B, T], got {token_logp_new.shape}")
    batch = token_logp_new.shape[0]
    _check_shape("token_logp_old", token_logp_old, token_logp_new.shape)
    _check_shape("completion_mask", completion_mask, token_logp_new.shape)
    _check_shape("advantages", advantages, (batch,))
    if elbo is not None:
        _check_shape("elbo", elbo, (batch,))
    _check_not_all_empty("completion_mask", completion_mask)
    use_kl = not (isinstance(kl_beta, numbers.Real) and kl_beta == 0)
    if use_kl and token_logp_ref is None:
        raise ValueError("token_logp_ref is required when kl_beta != 0")

    ratio = jnp.exp(token_logp_new - jax.lax.stop_gradient(token_logp_old))
    token_advantages = jnp.broadcast_to(advantages[:, None], ratio.shape).astype(ratio.dtype)
    per_token = -ppo_objective(ratio, token_advantages, clip_eps)
    pg_loss = weighted_mean(per_token, completion_mask)
    aux = {"pg_loss": pg_loss,
           "clip_fraction": weighted_mean((jnp.abs(ratio - 1.0) > clip_eps).astype(ratio.dtype), completion_mask),
           "ratio_mean": weighted_mean(ratio, completion_mask)}
    if use_kl and token_logp_ref is not None:
        _check_shape("token_logp_ref", token_logp_ref, token_logp_new.shape)
        log_ref_ratio = jax.lax.stop_gradient(token_logp_ref) - token_logp_new
        per_token_kl = jnp.exp(log_ref_ratio) - log_ref_ratio - 1.0
        aux["kl"] = weighted_mean(per_token_kl, completion_mask)
        baseline = pg_loss + kl_beta * aux["kl"]
    else:
        baseline = pg_loss
    if elbo is None or is_zero_beta(dipod_beta):
        loss = with_dipod(baseline, elbo, dipod_beta)
    else:
        # weighted_mean(ELBO_b / L_b, weights L_b) = sum_b ELBO_b / sum_b L_b.
        lengths = jnp.sum(completion_mask, axis=-1).astype(elbo.dtype)
        loss = with_dipod(baseline, elbo / jnp.maximum(lengths, 1.0), dipod_beta, weights=lengths)
    aux["dipod_term"] = dipod_term_metric(loss, baseline, dipod_beta)
    return loss, aux


def diffu_grpo_loss(token_logp_new: jax.Array, token_logp_old: jax.Array, advantages: jax.Array,
                    completion_mask: jax.Array, clip_eps: float = 0.5,
                    token_logp_ref: jax.Array | None = None, kl_beta: float = 0.04,
                    elbo: jax.Array | None = None, *, dipod_beta) -> LossAndAux:
    """diffu-GRPO (d1): `grpo_loss` fed by the one-step per-token log-prob estimate, with d1's defaults.

    The loss formula is exactly `grpo_loss` (d1 reuses GRPO's); what makes it diffu-GRPO is the input: each
    token_logp_* is `token_log_probs(logits_fn(apply_mask(tokens, mask, mask_id)), tokens)` for ONE mask from
    `mask_completion_and_prompt` (every completion token hidden, prompt tokens hidden w.p. 0.15), the same
    mask for new, old and reference models, a fresh one per inner iteration. Defaults: eps = 0.5,
    kl_beta = 0.04. The DiPOD `elbo` is the Section-3 sequence ELBO (`elbo_masked` with `mask_uniform_count`),
    entered as a token mean (`grpo_loss`).

    Shapes as `grpo_loss`: token_logp_new / token_logp_old / token_logp_ref [B, T], advantages [B],
    completion_mask [B, T], elbo [B]. Returns (loss scalar, aux dict).
    """
    return grpo_loss(token_logp_new, token_logp_old, advantages, completion_mask, clip_eps,
                     token_logp_ref=token_logp_ref, kl_beta=kl_beta, elbo=elbo, dipod_beta=dipod_beta)


def fpo_dllm_loss(elbo_new: jax.Array, elbo_old: jax.Array, advantages: jax.Array, clip_eps: float = 0.5,
                  elbo_ref: jax.Array | None = None, kl_beta: float = 0.0, *, dipod_beta) -> LossAndAux:
    """FPO for dLLMs (d1 `fpo=True`): sequence ratio exp(ELBO_new - ELBO_old) with PPO clipping.

    loss = -mean_b min(rho A, clip(rho) A) + kl_beta * mean_b(ELBO_new - ELBO_ref) - dipod_beta * mean_b ELBO_new.
    The KL term is d1's (a mean log-ratio of ELBOs, not a k3 estimate). The DiPOD term reuses ELBO_new, so it
    costs no extra forward pass. All three ELBOs must come from the same stored masks.

    Args:
      elbo_new: [B] current sequence ELBOs (differentiated).
      elbo_old: [B] ELBOs at the start of the generation batch (constant).
      advantages: [B].
      clip_eps: eps > 0 (d1-FPO: 0.5).
      elbo_ref: [B] reference-model ELBOs; required when kl_beta != 0.
      kl_beta: >= 0.
      dipod_beta: >= 0.

    Returns:
      (scalar loss, aux with pg_loss, clip_fraction, ratio_mean, dipod_term and kl when used).
    """
    check_clip_eps(clip_eps)
    _check_nonnegative("kl_beta", kl_beta)
    check_dipod_beta(dipod_beta)
    if elbo_new.ndim != 1:
        raise ValueError(f"elbo_new must have shape [B], got {elbo_new.shape}")
    _check_shape("elbo_old", elbo_old, elbo_new.shape)
    _check_shape("advantages", advantages, elbo_new.shape)
    use_kl = not (isinstance(kl_beta, numbers.Real) and kl_beta == 0)
    if use_kl and elbo_ref is None:
        raise ValueError("elbo_ref is required when kl_beta != 0")

    ratio = jnp.exp(elbo_new - jax.lax.stop_gradient(elbo_old))
    pg_loss = -jnp.mean(ppo_objective(ratio, advantages.astype(ratio.dtype), clip_eps))
    aux = {"pg_loss": pg_loss, "clip_fraction": clip_fraction(ratio, clip_eps), "ratio_mean": jnp.mean(ratio)}
    baseline = pg_loss
    if use_kl and elbo_ref is not None:
        _check_shape("elbo_ref", elbo_ref, elbo_new.shape)
        aux["kl"] = jnp.mean(elbo_new - jax.lax.stop_gradient(elbo_ref))
        baseline = pg_loss + kl_beta * aux["kl"]
    loss = with_dipod(baseline, elbo_new, dipod_beta)
    aux["dipod_term"] = dipod_term_metric(loss, baseline, dipod_beta)
    return loss, aux


def spg_loss(logp_lower: jax.Array, logp_upper: jax.Array | None, advantages: jax.Array,
             lengths: jax.Array, estimator: str = "mix", mix_weight: float = 0.5, *, dipod_beta,
             elbo: jax.Array | None = None) -> LossAndAux:
    """SPG's sandwiched, length-weighted policy gradient loss with the DiPOD term.

    logp_i is the lower (ELBO-type) estimate where A_i > 0 and, where A_i <= 0 (as SPG: its reward mask is
    A > 0), the upper side chosen by `estimator`: "elbo" -> logp_lower, "eubo" -> logp_upper,
    "mix" -> spg_mix(logp_lower, logp_upper, mix_weight).
    loss = -sum_i A_i logp_i L_i / sum_i L_i, plus DiPOD's -beta * sum_i ELBO_i L_i / sum_i L_i (with_dipod with
    the lengths as weights; ELBO defaults to logp_lower, which is what the DiPOD release uses).

    Args:
      logp_lower: [B] `spg_elbo_from_token_logprobs` of the current model.
      logp_upper: [B] `spg_eubo_from_token_logprobs`; may be None when estimator == "elbo".
      advantages: [B].
      lengths: [B] number of real completion tokens L_i.
      estimator: "elbo", "eubo" or "mix".
      mix_weight: w in [0, 1] for "mix" (SPG: 0.5).
      dipod_beta: >= 0.
      elbo: optional [B] ELBO for the DiPOD term instead of logp_lower.

    Returns:
      (scalar loss, aux with pg_loss, dipod_term, positive_fraction).
    """
    if estimator not in SPG_ESTIMATORS:
        raise ValueError(f"estimator must be one of {SPG_ESTIMATORS}, got {estimator!r}")
    check_dipod_beta(dipod_beta)
    if logp_lower.ndim != 1:
        raise ValueError(f"logp_lower must have shape [B], got {logp_lower.shape}")
    _check_shape("advantages", advantages, logp_lower.shape)
    _check_shape("lengths", lengths, logp_lower.shape)
    if estimator != "elbo":
        if logp_upper is None:
            raise ValueError(f"logp_upper is required for estimator {estimator!r}")
        _check_shape("logp_upper", logp_upper, logp_lower.shape)
    if elbo is not None:
        _check_shape("elbo", elbo, logp_lower.shape)
    _check_not_all_empty("lengths", lengths)

    if estimator == "elbo" or logp_upper is None:  # logp_upper is given for the other estimators (checked above)
        upper = logp_lower
    elif estimator == "eubo":
        upper = logp_upper
    else:
        upper = spg_mix(logp_lower, logp_upper, mix_weight)
    positive = advantages > 0
    logp = jnp.where(positive, logp_lower, upper)
    lengths = lengths.astype(logp.dtype)
    baseline = weighted_mean(-advantages.astype(logp.dtype) * logp, lengths)
    loss = with_dipod(baseline, logp_lower if elbo is None else elbo, dipod_beta, weights=lengths)
    aux = {"pg_loss": baseline, "dipod_term": dipod_term_metric(loss, baseline, dipod_beta),
           "positive_fraction": jnp.mean(positive.astype(logp.dtype))}
    return loss, aux
