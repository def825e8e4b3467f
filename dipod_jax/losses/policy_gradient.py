"""Policy-gradient losses for continuous control: Gaussian PPO, FPO and FPO++, each with the DiPOD term.

Each returns `(loss, aux)`: a scalar to minimise and a dict of scalar diagnostics
("pg_loss", "dipod_term", "ratio_mean", "ratio_std", "clip_fraction", and "cfm_loss" for flows).
"""
from __future__ import annotations

import numbers
from typing import cast

import chex
import jax
import jax.numpy as jnp

from dipod_jax.losses.dipod import check_dipod_beta, dipod_term_metric, with_dipod
from dipod_jax.losses.flow import fpo_log_ratio, fpo_pp_log_ratio
from dipod_jax.losses.trust_region import check_clip_eps, clip_fraction, ppo_objective, trust_region_objective

LossAndAux = tuple[jax.Array, dict[str, jax.Array]]
AdvantageClamp = float | tuple[float, float]


def _ratio_stats(ratio: jax.Array, clip_eps: float) -> dict[str, jax.Array]:
    return {"ratio_mean": jnp.mean(ratio), "ratio_std": jnp.std(ratio),
            "clip_fraction": clip_fraction(ratio, clip_eps)}


def ppo_loss(
    logp_new: jax.Array,
    logp_old: jax.Array,
    advantages: jax.Array,
    clip_eps: float = 0.2,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
    *,
    dipod_beta: float,
) -> LossAndAux:
    """Clipped PPO for a policy with an exact log-likelihood (the Gaussian baseline).

    Args:
      logp_new: [B] log pi_theta(a | s).
      logp_old: [B] log pi_old(a | s) stored at rollout time.
      advantages: [B].
      clip_eps: eps > 0.
      entropy: optional [B] policy entropies; the loss subtracts entropy_coef * mean(entropy).
      entropy_coef: >= 0.
      dipod_beta: >= 0; for an exact-likelihood policy the on-policy "ELBO" is log pi itself.

    Returns:
      (loss, aux).

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import ppo_loss
      >>> loss, aux = ppo_loss(jnp.log(jnp.array([1.0, 1.5])), jnp.zeros(2), jnp.ones(2), 0.2, dipod_beta=0.0)
      >>> round(float(loss), 4)  # -mean(min(r A, clip(r) A)) = -(1 + 1.2) / 2
      -1.1
    """
    check_clip_eps(clip_eps)
    check_dipod_beta(dipod_beta)
    chex.assert_rank(logp_new, 1)
    chex.assert_equal_shape([logp_new, logp_old, advantages])
    ratio = jnp.exp(logp_new - logp_old)
    pg = -jnp.mean(ppo_objective(ratio, advantages, clip_eps))
    if entropy is not None:
        chex.assert_equal_shape([entropy, logp_new])
        pg = pg - entropy_coef * jnp.mean(entropy)
    loss = with_dipod(pg, logp_new, dipod_beta)
    return loss, {"pg_loss": pg, "dipod_term": dipod_term_metric(loss, pg, dipod_beta),
                  **_ratio_stats(ratio, clip_eps)}


def fpo_loss(
    l_old: jax.Array,
    l_new: jax.Array,
    advantages: jax.Array,
    clip_eps: float = 0.05,
    trust_region: str = "ppo",
    *,
    dipod_beta: float,
) -> LossAndAux:
    """FPO: one ratio per action, exp(mean_n l_old - mean_n l_new), under a trust region.

    The DiPOD term is beta * mean(l_new): the negated flow ELBO of the rollout's own actions, computed from the
    same per-sample losses the ratio uses, so it costs no extra forward pass.

    Args:
      l_old: [B, N] stored per-sample CFM losses.
      l_new: [B, N] per-sample CFM losses under the current parameters.
      advantages: [B].
      clip_eps: eps > 0 (FPO: 0.05).
      trust_region: "ppo" | "spo" | "aspo".
      dipod_beta: >= 0.

    Returns:
      (loss, aux).

    Examples:
      The first sample's CFM loss fell by 0.1 (ratio e^0.1, clipped at 1.05), the second's did not move:

      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import fpo_loss
      >>> l_old, l_new = jnp.array([[1.0, 1.0], [2.0, 2.0]]), jnp.array([[0.9, 0.9], [2.0, 2.0]])
      >>> loss, aux = fpo_loss(l_old, l_new, jnp.array([1.0, -1.0]), 0.05, dipod_beta=0.0)
      >>> round(float(loss), 4)  # -(1.05 - 1) / 2
      -0.025
      >>> loss, aux = fpo_loss(l_old, l_new, jnp.array([1.0, -1.0]), 0.05, dipod_beta=0.1)
      >>> round(float(loss), 4)  # + 0.1 * mean CFM loss (the ELBO is -l_new)
      0.12
    """
    check_clip_eps(clip_eps)
    check_dipod_beta(dipod_beta)
    chex.assert_rank(advantages, 1)
    chex.assert_equal_shape_prefix([l_new, advantages], 1)
    ratio = jnp.exp(fpo_log_ratio(l_old, l_new))
    pg = -jnp.mean(trust_region_objective(ratio, advantages, clip_eps, trust_region))
    loss = with_dipod(pg, -l_new, dipod_beta)
    return loss, {"pg_loss": pg, "dipod_term": dipod_term_metric(loss, pg, dipod_beta), "cfm_loss": jnp.mean(l_new),
                  **_ratio_stats(ratio, clip_eps)}


def clamp_advantages(advantages: jax.Array, advantage_clamp: AdvantageClamp) -> jax.Array:
    """Clip advantages to [-c, c] (a number c) or to [-negative_max, positive_max] (a pair
    (positive_max, negative_max), the FPO++ release's `advantage_clamp` order); every bound must be > 0.

    Examples:
      >>> import jax.numpy as jnp, numpy as np
      >>> from dipod_jax.losses import clamp_advantages
      >>> print(np.asarray(clamp_advantages(jnp.array([-5.0, 0.5, 5.0]), (2.0, 1.0))))  # (positive_max, negative_max)
      [-1.   0.5  2. ]
    """
    bounds: tuple = ((advantage_clamp, advantage_clamp) if isinstance(advantage_clamp, numbers.Real)
                     else tuple(cast(tuple, advantage_clamp)))
    if len(bounds) != 2 or not all(isinstance(b, numbers.Real) and float(b) > 0 for b in bounds):
        raise ValueError(f"advantage_clamp must be a number > 0 or a pair (positive_max, negative_max) of "
                         f"numbers > 0, got {advantage_clamp!r}")
    positive_max, negative_max = (float(b) for b in bounds)
    return jnp.clip(advantages, -negative_max, positive_max)


def fpo_pp_loss(
    l_old: jax.Array,
    l_new: jax.Array,
    advantages: jax.Array,
    clip_eps: float = 0.05,
    trust_region: str = "aspo",
    advantage_clamp: AdvantageClamp | None = None,
    loss_clamp: float | None = 20.0,
    log_ratio_clamp: float = 10.0,
    *,
    dipod_beta: float,
    cfm_loss_clamp: float = -1.0,
) -> LossAndAux:
    """FPO++: a ratio per (tau, eps) sample, each under the trust region, averaged over samples and actions.

    The clamps follow the release (fpo.py `FPO.update`): advantages clipped first, then `fpo_pp_log_ratio`'s
    CFM-loss clamps and its upper-only straight-through log-ratio clamp. The defaults are the release's code
    defaults (FPO's constructor); its IsaacLab configurations are `dipod_jax.control.configs.ALGORITHM_PRESETS`.

    Args:
      l_old: [B, N] stored per-sample CFM losses.
      l_new: [B, N] current per-sample CFM losses.
      advantages: [B].
      clip_eps: eps > 0.
      trust_region: "aspo" (FPO++ default) | "ppo" | "spo".
      advantage_clamp: None, a number c (clip to [-c, c]) or a pair (positive_max, negative_max) (clip to
        [-negative_max, positive_max]; the release's (100, 100)).
      loss_clamp: l_new is clamped at this value where A < 0; None disables it.
      log_ratio_clamp: straight-through upper clamp of each log-ratio.
      dipod_beta: >= 0; the term uses the unclamped l_new.
      cfm_loss_clamp: l_old and l_new are both clamped at this value for every sample; <= 0 disables it.

    Returns:
      (loss, aux).

    Examples:
      >>> import jax.numpy as jnp
      >>> from dipod_jax.losses import fpo_pp_loss
      >>> l_old, l_new = jnp.array([[1.0, 1.0], [2.0, 2.0]]), jnp.array([[0.9, 0.9], [2.0, 2.0]])
      >>> loss, aux = fpo_pp_loss(l_old, l_new, jnp.array([1.0, -1.0]), dipod_beta=0.0)
      >>> round(float(loss), 4)
      -0.025
    """
    check_clip_eps(clip_eps)
    check_dipod_beta(dipod_beta)
    if advantage_clamp is not None:
        advantages = clamp_advantages(advantages, advantage_clamp)
    log_ratio = fpo_pp_log_ratio(l_old, l_new, advantages, loss_clamp, log_ratio_clamp, cfm_loss_clamp)
    ratio = jnp.exp(log_ratio)
    per_sample_adv = jnp.broadcast_to(advantages[:, None], ratio.shape)
    pg = -jnp.mean(trust_region_objective(ratio, per_sample_adv, clip_eps, trust_region))
    loss = with_dipod(pg, -l_new, dipod_beta)
    return loss, {"pg_loss": pg, "dipod_term": dipod_term_metric(loss, pg, dipod_beta), "cfm_loss": jnp.mean(l_new),
                  **_ratio_stats(ratio, clip_eps)}


def self_distillation_loss(l_student: jax.Array) -> jax.Array:
    """Self-distillation objective: the student's mean CFM loss on the teacher's own samples.

    Minimising it maximises the student's ELBO of actions drawn from the frozen teacher theta_T, with fresh
    (tau, eps) per step; started at theta_T it leaves the sampling distribution in place and tightens the bound.

    Args:
      l_student: [B, N] per-sample CFM losses of teacher actions under the student.

    Returns:
      scalar.
    """
    chex.assert_rank(l_student, 2)
    return jnp.mean(l_student)
