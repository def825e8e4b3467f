"""Properties of the pure losses and estimators (dipod_jax.losses) on random values drawn by hypothesis.

Each test names an identity, a bound or an invariance that must hold for every input, checks it against an
independent NumPy computation, and fails when it breaks. Shapes are fixed and every function is jitted once at
module scope, so the examples vary values only and the file runs in seconds (tests/conftest.py sets the profile:
derandomized, no deadline; HYPOTHESIS_PROFILE=explore searches more examples at random).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import dipod_jax.losses as L

F32_EPS = float(np.finfo(np.float32).eps)


def floats(low, high):
    """float32 values in [low, high] (bounds rounded to float32), never NaN, infinite or subnormal."""
    return st.floats(float(np.float32(low)), float(np.float32(high)), width=32, allow_nan=False,
                     allow_infinity=False, allow_subnormal=False)


def arrays(shape, low=-10.0, high=10.0):
    return hnp.arrays(np.float32, shape, elements=floats(low, high))


def bools(shape):
    return hnp.arrays(np.bool_, shape, elements=st.booleans())


# ------------------------------------------------------------------------------------------------ GAE

T, B = 8, 3
NO_END, TERMINATED, TRUNCATED = 0, 1, 2


def _gae(rewards, values, next_values, ends, gamma, gae_lambda):
    return L.gae(rewards, values, next_values, ends == TERMINATED, ends == TRUNCATED, gamma, gae_lambda)


gae_lambda_one = jax.jit(functools.partial(_gae, gae_lambda=1.0))
gae_lambda_zero = jax.jit(functools.partial(_gae, gae_lambda=0.0))

rollouts = dict(rewards=arrays((T, B)), values=arrays((T, B)), next_values=arrays((T, B)),
                ends=hnp.arrays(np.int8, (T, B), elements=st.sampled_from([NO_END, TERMINATED, TRUNCATED])),
                gamma=floats(0.0, 1.0))


def discounted_returns(rewards, next_values, ends, gamma):
    """G_t = r_t + gamma * (0 at a termination; V(s_{t+1}) at a truncation or the rollout's end; G_{t+1} else)."""
    returns = np.zeros(rewards.shape, np.float64)
    for t in reversed(range(rewards.shape[0])):
        following = next_values[t] if t == rewards.shape[0] - 1 else returns[t + 1]
        bootstrap = np.where(ends[t] == TERMINATED, 0.0, np.where(ends[t] == TRUNCATED, next_values[t], following))
        returns[t] = rewards[t] + gamma * bootstrap
    return returns


@given(**rollouts)
def test_gae_lambda_one_returns_are_the_discounted_returns(rewards, values, next_values, ends, gamma):
    """With lambda = 1 the value targets (advantages + values) are the discounted returns of each episode,
    bootstrapped from V(s_{t+1}) at time limits and at the rollout's end, and from nothing at terminations,
    whatever the values are (the TD errors telescope). Within an episode the value of the state reached is the
    next step's value, as in a rollout; after an episode's end the next step starts from a reset."""
    continuing = np.zeros_like(ends, bool)
    continuing[:-1] = ends[:-1] == NO_END
    next_values = np.where(continuing, np.roll(values, -1, axis=0), next_values)
    _, returns = gae_lambda_one(rewards, values, next_values, ends, gamma)
    expected = discounted_returns(rewards, next_values, ends, gamma)
    np.testing.assert_allclose(returns, expected, rtol=1e-5, atol=1e-4)


@given(**rollouts)
def test_gae_lambda_zero_advantages_are_the_one_step_td_errors(rewards, values, next_values, ends, gamma):
    """With lambda = 0 each advantage is r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)."""
    advantages, _ = gae_lambda_zero(rewards, values, next_values, ends, gamma)
    expected = rewards + np.float64(gamma) * (ends != TERMINATED) * next_values - values
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- GRPO advantages

P, G = 4, 5
grpo_centred = jax.jit(functools.partial(L.grpo_advantages, scale_by_std=False))
grpo_scaled = jax.jit(lambda rewards, eps: L.grpo_advantages(rewards, scale_by_std=True, eps=eps))


@given(rewards=arrays((P, G), -5.0, 5.0))
def test_grpo_advantages_have_zero_mean_in_every_group(rewards):
    """Group-relative advantages sum to zero within each prompt's group, with or without the std scaling (up to
    float32 rounding of the group mean, which the scaling divides by the group's std + eps)."""
    eps = 1e-4
    np.testing.assert_allclose(np.mean(np.asarray(grpo_centred(rewards), np.float64), axis=1), 0.0, atol=1e-5)
    std = np.std(rewards.astype(np.float64), axis=1)
    scaled_mean = np.mean(np.asarray(grpo_scaled(rewards, eps), np.float64), axis=1)
    assert np.all(np.abs(scaled_mean) <= 8 * F32_EPS * 5.0 / (std + eps) + 1e-5), scaled_mean


@given(rewards=arrays((P, G), -5.0, 5.0), shift=floats(-10.0, 10.0), scale=floats(0.1, 10.0))
def test_grpo_advantages_ignore_a_shift_and_follow_a_positive_scale(rewards, shift, scale):
    """A(scale * r + shift) = scale * A(r) for the centred advantages, and the std-scaled ones are unchanged
    (with eps scaled alike, so the identity is exact in real arithmetic): GRPO sees only how a completion
    ranks within its group."""
    moved = (scale * rewards.astype(np.float64) + shift).astype(np.float32)
    magnitude = (abs(shift) + scale * 5.0) * 8 * F32_EPS  # float32 rounding of the moved rewards
    np.testing.assert_allclose(grpo_centred(moved), scale * np.asarray(grpo_centred(rewards), np.float64),
                               atol=magnitude + 1e-6)
    eps = 1e-4
    std = np.std(rewards.astype(np.float64), axis=1, keepdims=True)
    tolerance = magnitude / (scale * (std + eps)) + 1e-5
    difference = np.abs(np.asarray(grpo_scaled(moved, scale * eps), np.float64) - grpo_scaled(rewards, eps))
    assert np.all(difference <= tolerance), (difference, tolerance)


# ------------------------------------------------------------------------------- advantage normalisation

normalize_biased = jax.jit(L.normalize_advantages)
normalize_unbiased = jax.jit(functools.partial(L.normalize_advantages, unbiased=True))


@given(advantages=arrays((64,)), shift=floats(-10.0, 10.0), scale=floats(0.1, 10.0))
def test_normalized_advantages_have_zero_mean_unit_std_and_ignore_affine_changes(advantages, shift, scale):
    """Normalised advantages have mean 0 and standard deviation 1 (ddof 0, or 1 when unbiased), and a positive
    affine change of the advantages leaves them unchanged."""
    assume(np.std(advantages) > 0.1)
    for normalize, ddof in ((normalize_biased, 0), (normalize_unbiased, 1)):
        normalized = np.asarray(normalize(advantages), np.float64)
        np.testing.assert_allclose(normalized.mean(), 0.0, atol=1e-5)
        np.testing.assert_allclose(normalized.std(ddof=ddof), 1.0, atol=1e-5)
        moved = (scale * advantages.astype(np.float64) + shift).astype(np.float32)
        # float32 rounding of the moved advantages, relative to their spread
        tolerance = 8 * F32_EPS * (abs(shift) + 10.0 * scale) / (scale * np.std(advantages)) + 1e-5
        np.testing.assert_allclose(normalize(moved), normalized, atol=tolerance)


# --------------------------------------------------------------------------------- trust-region objectives

N_RATIOS = 64
trust_region_values = jax.jit(lambda ratio, advantages, clip_eps: (
    L.ppo_objective(ratio, advantages, clip_eps), L.spo_objective(ratio, advantages, clip_eps),
    L.aspo_objective(ratio, advantages, clip_eps),
    jax.grad(lambda r: jnp.sum(L.ppo_objective(r, advantages, clip_eps)))(ratio)))
ratios = dict(ratio=arrays((N_RATIOS,), 0.0, 4.0), advantages=arrays((N_RATIOS,)), clip_eps=floats(0.01, 0.5))


@given(**ratios)
def test_ppo_objective_is_pessimistic_and_bounded_by_the_trust_region(ratio, advantages, clip_eps):
    """PPO's objective is at most the unclipped r A and the clipped clip(r) A, equals r A inside
    [1 - eps, 1 + eps], and can never gain more than a ratio at the region's edge would: <= (1 + eps) A where
    A > 0, <= (1 - eps) A where A < 0. Its gradient in r is A, or 0 where the clip is active and binding."""
    ppo, _, _, gradient = map(np.asarray, trust_region_values(ratio, advantages, clip_eps))
    r, a, eps = ratio.astype(np.float64), advantages.astype(np.float64), np.float64(np.float32(clip_eps))
    slack = 1e-5 * (1.0 + np.abs(r * a))
    assert np.all(ppo <= r * a + slack)
    assert np.all(ppo <= np.clip(r, 1 - eps, 1 + eps) * a + slack)
    assert np.all(ppo[a > 0] <= (1 + eps) * a[a > 0] + slack[a > 0])
    assert np.all(ppo[a < 0] <= (1 - eps) * a[a < 0] + slack[a < 0])
    inside = np.abs(r - 1.0) < eps - 1e-6
    np.testing.assert_allclose(ppo[inside], (r * a)[inside], rtol=1e-6, atol=1e-6)
    binding = ((a > 0) & (r > 1 + eps + 1e-6)) | ((a < 0) & (r < 1 - eps - 1e-6))
    np.testing.assert_array_equal(gradient[binding], 0.0)
    free = ~binding & (np.abs(np.abs(r - 1.0) - eps) > 1e-6)
    np.testing.assert_allclose(gradient[free], a[free], rtol=1e-6, atol=1e-30)  # float32 flushes subnormals


@given(**ratios)
def test_spo_is_below_the_unclipped_objective_and_aspo_splits_by_the_advantage_sign(ratio, advantages, clip_eps):
    """SPO = r A minus a non-negative penalty |A| (r - 1)^2 / (2 eps): never above r A, equal to it at r = 1;
    ASPO is PPO where A > 0 and SPO where A <= 0, element by element."""
    ppo, spo, aspo, _ = map(np.asarray, trust_region_values(ratio, advantages, clip_eps))
    r, a = ratio.astype(np.float64), advantages.astype(np.float64)
    assert np.all(spo <= r * a + 1e-5 * (1.0 + np.abs(r * a)))
    np.testing.assert_array_equal(aspo, np.where(a > 0, ppo, spo))
    ppo_at_one, spo_at_one, _, _ = trust_region_values(np.ones_like(ratio), advantages, clip_eps)
    np.testing.assert_array_equal(spo_at_one, advantages)
    np.testing.assert_array_equal(ppo_at_one, advantages)


# ------------------------------------------------------------------------------------- FPO++ log-ratios

FPP_B, FPP_N = 6, 4
LOSS_CLAMP, LOG_RATIO_CLAMP, CFM_LOSS_CLAMP = 20.0, 10.0, 5.0


def _fpo_pp_log_ratio_and_gradients(l_old, l_new, advantages, cfm_loss_clamp):
    def total(l_old, l_new):
        return jnp.sum(L.fpo_pp_log_ratio(l_old, l_new, advantages, LOSS_CLAMP, LOG_RATIO_CLAMP, cfm_loss_clamp))

    log_ratio = L.fpo_pp_log_ratio(l_old, l_new, advantages, LOSS_CLAMP, LOG_RATIO_CLAMP, cfm_loss_clamp)
    return log_ratio, *jax.grad(total, argnums=(0, 1))(l_old, l_new)


fpo_pp_unclamped_losses = jax.jit(functools.partial(_fpo_pp_log_ratio_and_gradients, cfm_loss_clamp=-1.0))
fpo_pp_clamped_losses = jax.jit(functools.partial(_fpo_pp_log_ratio_and_gradients, cfm_loss_clamp=CFM_LOSS_CLAMP))
cfm_losses = dict(l_old=arrays((FPP_B, FPP_N), 0.0, 40.0), l_new=arrays((FPP_B, FPP_N), 0.0, 40.0),
                  advantages=arrays((FPP_B,), -5.0, 5.0))


@given(**cfm_losses)
def test_fpo_pp_log_ratio_clamps_only_from_above_and_only_negative_advantage_losses(l_old, l_new, advantages):
    """Every log-ratio is at most the clamp c; where A >= 0 it is min(l_old - l_new, c); where A < 0 the loss
    clamp can only raise it (never lower it), to min(l_old - min(l_new, loss_clamp), c)."""
    log_ratio, _, _ = fpo_pp_unclamped_losses(l_old, l_new, advantages)
    log_ratio = np.asarray(log_ratio, np.float64)
    plain = np.minimum(l_old.astype(np.float64) - l_new, LOG_RATIO_CLAMP)
    assert np.all(log_ratio <= LOG_RATIO_CLAMP)
    assert np.all(log_ratio >= plain - 1e-5)
    positive = np.broadcast_to(advantages[:, None] >= 0, plain.shape)
    np.testing.assert_allclose(log_ratio[positive], plain[positive], atol=1e-5)
    clamped = np.minimum(l_old.astype(np.float64) - np.minimum(l_new, LOSS_CLAMP), LOG_RATIO_CLAMP)
    np.testing.assert_allclose(log_ratio[~positive], clamped[~positive], atol=1e-5)


@given(**cfm_losses)
def test_fpo_pp_log_ratio_clamp_is_straight_through(l_old, l_new, advantages):
    """The log-ratio clamp passes the identity's gradient (d/dl_old = 1, d/dl_new = -1, even where the forward
    value is clamped); only the negative-advantage loss clamp, where active, stops l_new's gradient."""
    _, gradient_old, gradient_new = fpo_pp_unclamped_losses(l_old, l_new, advantages)
    np.testing.assert_array_equal(gradient_old, 1.0)
    stopped = (advantages[:, None] < 0) & (l_new > LOSS_CLAMP)
    away_from_ties = l_new != LOSS_CLAMP  # where l_new equals the clamp, min splits the gradient
    expected = np.where(stopped, 0.0, -1.0)
    np.testing.assert_array_equal(np.asarray(gradient_new)[away_from_ties], expected[away_from_ties])


@given(**cfm_losses)
def test_fpo_pp_cfm_loss_clamp_treats_every_loss_above_it_as_the_clamp(l_old, l_new, advantages):
    """With cfm_loss_clamp = k, losses are read as min(l, k) on both sides: the log-ratios equal those of the
    clamped losses with the clamp off, a sample whose two losses both exceed k has log-ratio 0, and a clamped
    loss gets no gradient."""
    log_ratio, gradient_old, gradient_new = fpo_pp_clamped_losses(l_old, l_new, advantages)
    capped_old, capped_new = np.minimum(l_old, CFM_LOSS_CLAMP), np.minimum(l_new, CFM_LOSS_CLAMP)
    np.testing.assert_array_equal(log_ratio, fpo_pp_unclamped_losses(capped_old, capped_new, advantages)[0])
    np.testing.assert_array_equal(np.asarray(log_ratio)[(l_old > CFM_LOSS_CLAMP) & (l_new > CFM_LOSS_CLAMP)], 0.0)
    np.testing.assert_array_equal(np.asarray(gradient_old)[l_old > CFM_LOSS_CLAMP], 0.0)
    np.testing.assert_array_equal(np.asarray(gradient_new)[l_new > CFM_LOSS_CLAMP], 0.0)


# ------------------------------------------------------------------------- masked-diffusion estimators

M, EB, ET = 3, 4, 6
estimators = jax.jit(lambda token_logp, mask, completion_mask: (
    L.elbo_from_token_logprobs(token_logp, mask, completion_mask),
    L.spg_elbo_from_token_logprobs(token_logp, mask, completion_mask)))
spg_eubo_one_draw = jax.jit(lambda token_logp, mask, completion_mask, t_emp: L.spg_eubo_from_token_logprobs(
    token_logp, mask, completion_mask, t_emp, beta_e=1.5))


@st.composite
def completion_masks(draw):
    """[B, T] bool masks with at least one real completion token per row (the estimators' precondition)."""
    mask = draw(bools((EB, ET)))
    mask[np.arange(EB), draw(hnp.arrays(np.int64, (EB,), elements=st.integers(0, ET - 1)))] = True
    return mask


scored_draws = dict(token_logp=arrays((M, EB, ET), -20.0, 0.0), mask=bools((M, EB, ET)),
                    completion_mask=completion_masks())


@given(**scored_draws)
def test_masked_elbo_estimates_lie_between_l_times_the_worst_token_and_zero(token_logp, mask, completion_mask):
    """For log-probabilities <= 0, the d1 sequence ELBO estimate of each row [B] lies in [L * min log p, 0] (L
    real completion tokens: each draw rescales the mean of its masked tokens by L) and SPG's per-token estimate
    in [min log p, 0], the minimum over the row's real completion tokens of every draw."""
    elbo, spg_elbo = map(np.asarray, estimators(token_logp, mask, completion_mask))
    assert elbo.shape == spg_elbo.shape == (EB,)
    num_real = completion_mask.sum(axis=1)
    worst = np.where(completion_mask[None], token_logp, 0.0).min(axis=(0, 2))
    assert np.all(elbo <= 0.0) and np.all(spg_elbo <= 0.0)
    assert np.all(elbo >= num_real * worst * (1 + 1e-5))
    assert np.all(spg_elbo >= worst * (1 + 1e-5))


@given(**scored_draws, noise=arrays((M, EB, ET), -20.0, 0.0))
def test_masked_estimators_read_only_masked_real_completion_tokens(token_logp, mask, completion_mask, noise):
    """Changing the log-probabilities of positions that are not masked real completion tokens (prompt,
    padding, visible tokens) changes no estimate."""
    scored = mask & completion_mask[None]
    changed = np.where(scored, token_logp, noise)
    for before, after in zip(estimators(token_logp, mask, completion_mask),
                             estimators(changed, mask, completion_mask), strict=True):
        np.testing.assert_array_equal(before, after)


@given(token_logp=arrays((M, EB, ET), -20.0, 0.0), completion_mask=completion_masks())
def test_fully_masked_draws_give_the_exact_sequence_log_likelihood(token_logp, completion_mask):
    """When every draw masks every real token, the d1 ELBO estimate is the draws' mean of the summed token
    log-probabilities (sum_i log p(c_i | all masked)), and SPG's is their per-token mean."""
    elbo, spg_elbo = estimators(token_logp, np.ones((M, EB, ET), bool), completion_mask)
    summed = np.where(completion_mask[None], token_logp.astype(np.float64), 0.0).sum(axis=2)
    np.testing.assert_allclose(elbo, summed.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(spg_elbo, (summed / completion_mask.sum(axis=1)).mean(axis=0), rtol=1e-5, atol=1e-5)


@given(token_logp=arrays((1, EB, ET), -20.0, 0.0), mask=bools((1, EB, ET)), completion_mask=completion_masks(),
       t_emp=arrays((1, EB), 0.05, 1.0))
def test_spg_eubo_with_one_draw_is_the_elbo_minus_log_t_over_beta(token_logp, mask, completion_mask, t_emp):
    """With one draw, SPG's EUBO-type estimate of a row with a masked real token is its ELBO-type estimate
    - log(t_emp) / beta_e, so at least the ELBO-type one; a row with none gets 0."""
    eubo = np.asarray(spg_eubo_one_draw(token_logp, mask, completion_mask, t_emp), np.float64)
    elbo = np.asarray(L.spg_elbo_from_token_logprobs(token_logp, mask, completion_mask), np.float64)
    counted = (mask[0] & completion_mask).any(axis=1)
    np.testing.assert_allclose(eubo[counted], (elbo - np.log(t_emp[0].astype(np.float64)) / 1.5)[counted],
                               rtol=1e-5, atol=1e-5)
    assert np.all(eubo[counted] >= elbo[counted] - 1e-5)
    np.testing.assert_array_equal(eubo[~counted], 0.0)


uniform_count_masks = {rounding: jax.jit(lambda seed, completion_mask, rounding=rounding: L.mask_uniform_count(
    jax.random.key(seed), completion_mask, M, count_rounding=rounding)) for rounding in ("floor", "ceil")}


@given(seed=st.integers(0, 2**31 - 1), completion_mask=completion_masks())
def test_uniform_count_masks_hide_exactly_floor_or_ceil_t_l_real_tokens(seed, completion_mask):
    """mask_uniform_count hides only real completion tokens, exactly floor(t L) of them per draw (d1), or
    ceil(t L) floored at 1 with count_rounding="ceil", for the drawn t in [0, 1)."""
    num_real = completion_mask.sum(axis=1)
    for rounding, count in (("floor", np.floor), ("ceil", lambda x: np.maximum(np.ceil(x), 1))):
        mask, t = map(np.asarray, uniform_count_masks[rounding](seed, completion_mask))
        assert mask.shape == (M, EB, ET) and t.shape == (M, EB)
        assert np.all((t >= 0) & (t < 1))
        assert not np.any(mask & ~completion_mask[None])
        np.testing.assert_array_equal(mask.sum(axis=2), count(t * num_real[None].astype(np.float32)))


# ------------------------------------------------------------------------------------------ the DiPOD term

D_B, D_N = 8, 3
flow_losses = dict(l_old=arrays((D_B, D_N), 0.0, 5.0), l_new=arrays((D_B, D_N), 0.0, 5.0),
                   advantages=arrays((D_B,), -3.0, 3.0), beta=floats(0.0, 2.0))
composed_losses = {
    "ppo_loss": jax.jit(lambda l_old, l_new, advantages, beta: L.ppo_loss(-l_new[:, 0], -l_old[:, 0], advantages,
                                                                        dipod_beta=beta)),
    "fpo_loss": jax.jit(lambda l_old, l_new, advantages, beta: L.fpo_loss(l_old, l_new, advantages, dipod_beta=beta)),
    "fpo_pp_loss": jax.jit(lambda l_old, l_new, advantages, beta: L.fpo_pp_loss(l_old, l_new, advantages,
                                                                              dipod_beta=beta)),
}


@given(pg_loss=floats(-10.0, 10.0), elbo=hnp.arrays(np.float32, (D_B,), elements=st.floats(width=32)))
def test_with_dipod_at_a_python_zero_returns_the_baseline_loss_itself(pg_loss, elbo):
    """A Python beta of 0 (int or float) returns the very baseline loss object, whatever the ELBOs are, even NaN
    or infinite: the term never enters the graph."""
    pg = jnp.float32(pg_loss)
    assert L.with_dipod(pg, jnp.asarray(elbo), 0) is pg
    assert L.with_dipod(pg, jnp.asarray(elbo), 0.0) is pg


@given(**flow_losses)
def test_dipod_adds_beta_times_the_mean_negated_elbo_to_each_composed_loss(l_old, l_new, advantages, beta):
    """For ppo_loss (ELBO = log pi), fpo_loss and fpo_pp_loss (ELBO = -l_new), a traced beta gives
    loss = pg_loss - beta * mean(ELBO), with pg_loss the same as at beta = 0: the term is added, nothing else
    changes, and a traced beta of 0 gives the baseline's loss value."""
    elbo = {"ppo_loss": -l_new[:, 0].astype(np.float64)}
    for name, loss_fn in composed_losses.items():
        loss, aux = loss_fn(l_old, l_new, advantages, beta)
        baseline, baseline_aux = loss_fn(l_old, l_new, advantages, 0.0)
        mean_elbo = np.mean(elbo.get(name, -l_new.astype(np.float64)))
        # XLA may fuse the loss and its pg_loss output differently (a few ulps apart), hence the tolerances.
        tolerance = 1e-5 * (1.0 + abs(float(baseline)))
        np.testing.assert_array_equal(aux["pg_loss"], baseline_aux["pg_loss"])
        np.testing.assert_allclose(baseline, baseline_aux["pg_loss"], rtol=0, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(loss, np.float64(baseline) - np.float64(np.float32(beta)) * mean_elbo,
                                   rtol=0, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(aux["dipod_term"], np.float64(loss) - np.float64(aux["pg_loss"]), rtol=0,
                                   atol=tolerance, err_msg=name)


regularizer = jax.jit(L.dipod_regularizer)


@given(elbo=arrays((D_B,)), weights=arrays((D_B,), 0.0, 5.0), beta=floats(0.0, 2.0), constant=floats(0.1, 5.0))
def test_dipod_regularizer_is_minus_beta_times_the_weighted_mean(elbo, weights, beta, constant):
    """dipod_regularizer(elbo, beta, w) = -beta * sum(w elbo) / sum(w); equal weights give the plain mean; all
    weights 0 give 0, not NaN."""
    e, w = elbo.astype(np.float64), weights.astype(np.float64)
    beta64 = np.float64(np.float32(beta))
    expected = -beta64 * (w @ e) / w.sum() if w.sum() > 0 else 0.0
    np.testing.assert_allclose(regularizer(elbo, beta, weights), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(regularizer(elbo, beta, np.full_like(weights, constant)), -beta64 * e.mean(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(regularizer(elbo, beta, np.zeros_like(weights)), 0.0)
