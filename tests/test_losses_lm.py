"""Tests of dipod_jax.losses.lm: GRPO / diffu-GRPO, FPO for dLLMs and SPG losses with the DiPOD term."""
import functools

import chex
import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import numpy as np

from dipod_jax.losses import lm

BATCH, SEQ_LEN = 6, 7


def make_inputs(seed=0):
    """Random float64 inputs: per-token log-probs, advantages of both signs, ragged completion masks."""
    rng = np.random.default_rng(seed)
    new = np.log(rng.uniform(0.05, 1.0, (BATCH, SEQ_LEN)))
    old = new + rng.normal(0.0, 0.6, new.shape)  # ratios well inside and outside [1 - eps, 1 + eps]
    ref = new + rng.normal(0.0, 0.3, new.shape)
    completion = np.zeros((BATCH, SEQ_LEN), bool)
    for row in range(BATCH):
        completion[row, 1:2 + row] = True
    advantages = rng.normal(size=BATCH)
    elbo = rng.normal(-5.0, 1.0, BATCH)
    return dict(new=new, old=old, ref=ref, completion=completion, advantages=advantages, elbo=elbo)


def np_ppo(ratio, advantages, eps):
    return np.minimum(ratio * advantages, np.clip(ratio, 1 - eps, 1 + eps) * advantages)


def np_grpo(x, eps, kl_beta, dipod_beta):
    """d1's diffu-GRPO loss re-derived in NumPy: one mean over all real completion tokens of the batch."""
    ratio = np.exp(x["new"] - x["old"])
    per_token = -np_ppo(ratio, x["advantages"][:, None], eps)
    log_ref_ratio = x["ref"] - x["new"]
    per_token = per_token + kl_beta * (np.exp(log_ref_ratio) - log_ref_ratio - 1)
    # The DiPOD term on the loss's token-mean scale: sum_b ELBO_b / sum_b L_b.
    return ((per_token * x["completion"]).sum() / x["completion"].sum()
            - dipod_beta * x["elbo"].sum() / x["completion"].sum())


def np_fpo(elbo_new, elbo_old, elbo_ref, advantages, eps, kl_beta, dipod_beta):
    ratio = np.exp(elbo_new - elbo_old)
    return (-np_ppo(ratio, advantages, eps).mean() + kl_beta * (elbo_new - elbo_ref).mean()
            - dipod_beta * elbo_new.mean())


def np_spg(lower, upper, advantages, lengths, estimator, weight, dipod_beta):
    side = {"elbo": lower, "eubo": upper, "mix": weight * upper + (1 - weight) * lower}[estimator]
    logp = np.where(advantages > 0, lower, side)
    return (-(advantages * logp * lengths).sum() / lengths.sum()
            - dipod_beta * (lower * lengths).sum() / lengths.sum())


class LossValuesTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_grpo_matches_numpy(self):
        """grpo_loss (PPO clip + k3 KL + DiPOD) equals the NumPy re-derivation in float64."""
        x = make_inputs()
        with jax.enable_x64(True):
            fn = self.variant(functools.partial(lm.grpo_loss, clip_eps=0.2, kl_beta=0.04, dipod_beta=0.05))
            loss, aux = fn(x["new"], x["old"], x["advantages"], x["completion"], token_logp_ref=x["ref"],
                           elbo=x["elbo"])
            np.testing.assert_allclose(loss, np_grpo(x, 0.2, 0.04, 0.05), rtol=1e-12)
            np.testing.assert_allclose(aux["dipod_term"], -0.05 * x["elbo"].sum() / x["completion"].sum(),
                                       rtol=1e-10)
            self.assertGreater(float(aux["clip_fraction"]), 0.0)

    def test_grpo_averages_over_tokens_not_sequences(self):
        """With advantages only on the longest row, the loss is its token share, not 1/B of it (d1 averaging)."""
        x = make_inputs()
        with jax.enable_x64(True):
            advantages = np.zeros(BATCH)
            advantages[-1] = 1.0
            loss, _ = lm.grpo_loss(x["new"], x["new"], advantages, x["completion"], 0.2, dipod_beta=0.0)
            lengths = x["completion"].sum(-1)
            np.testing.assert_allclose(loss, -lengths[-1] / lengths.sum(), rtol=1e-12)

    def test_diffu_grpo_is_grpo_with_d1_defaults(self):
        """diffu_grpo_loss equals grpo_loss with eps = 0.5 and kl_beta = 0.04."""
        x = make_inputs(1)
        got, _ = lm.diffu_grpo_loss(x["new"], x["old"], x["advantages"], x["completion"], token_logp_ref=x["ref"],
                                    dipod_beta=0.0)
        want, _ = lm.grpo_loss(x["new"], x["old"], x["advantages"], x["completion"], 0.5,
                               token_logp_ref=x["ref"], kl_beta=0.04, dipod_beta=0.0)
        np.testing.assert_array_equal(got, want)

    @chex.variants(with_jit=True, without_jit=True)
    def test_fpo_dllm_matches_numpy(self):
        """fpo_dllm_loss (sequence ratio, PPO clip, ELBO KL, DiPOD) equals the NumPy re-derivation."""
        rng = np.random.default_rng(2)
        new, advantages = rng.normal(-6, 1, 8), rng.normal(size=8)
        old, ref = new + rng.normal(0, 0.7, 8), new + rng.normal(0, 0.3, 8)
        with jax.enable_x64(True):
            fn = self.variant(functools.partial(lm.fpo_dllm_loss, clip_eps=0.5, kl_beta=0.1, dipod_beta=0.05))
            loss, aux = fn(new, old, advantages, elbo_ref=ref)
            np.testing.assert_allclose(loss, np_fpo(new, old, ref, advantages, 0.5, 0.1, 0.05), rtol=1e-12)
            np.testing.assert_allclose(aux["kl"], (new - ref).mean(), rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_spg_matches_numpy_for_each_estimator(self):
        """spg_loss's sandwich (lower for A > 0, chosen upper side otherwise), length weights and DiPOD term."""
        rng = np.random.default_rng(3)
        lower = rng.normal(-1.5, 0.3, 8)
        upper = lower + rng.uniform(0, 1, 8)
        advantages, lengths = rng.normal(size=8), rng.integers(1, 40, 8).astype(np.float64)
        advantages[0] = 0.0  # SPG puts A = 0 on the upper side (it contributes 0 either way)
        with jax.enable_x64(True):
            for estimator in lm.SPG_ESTIMATORS:
                fn = self.variant(functools.partial(lm.spg_loss, estimator=estimator, mix_weight=0.3,
                                                    dipod_beta=0.05))
                loss, _ = fn(lower, upper, advantages, lengths)
                np.testing.assert_allclose(loss, np_spg(lower, upper, advantages, lengths, estimator, 0.3, 0.05),
                                           rtol=1e-12, err_msg=estimator)


def grpo_total(new, elbo, x, dipod_beta):
    return lm.grpo_loss(new, x["old"], x["advantages"], x["completion"], 0.2, token_logp_ref=x["ref"],
                        kl_beta=0.04, elbo=elbo, dipod_beta=dipod_beta)[0]


def fpo_total(new, elbo, x, dipod_beta):
    del elbo  # FPO's DiPOD term reuses elbo_new
    return lm.fpo_dllm_loss(new[:, 0], x["old"][:, 0], x["advantages"], 0.5, dipod_beta=dipod_beta)[0]


def spg_total(new, elbo, x, dipod_beta):
    return lm.spg_loss(new[:, 0], new[:, 1] + 1.0, x["advantages"], x["completion"].sum(-1), "mix",
                       elbo=elbo, dipod_beta=dipod_beta)[0]


class DipodAndGradientTest(chex.TestCase):

    def test_beta_zero_is_the_baseline_bit_for_bit_and_beta_positive_adds_the_term(self):
        """beta = 0 (a Python number): the DiPOD term does not enter the computation at all. The traced program
        of the loss and its gradient with an ELBO given is identical to the one without (so the compiled
        program, and its bits, are the same on every backend), the compiled values agree bit for bit and the
        ELBO's gradient is exactly 0. beta > 0 adds -beta * (token or length-weighted) mean ELBO (tolerances: a
        different program)."""
        x = {k: jnp.asarray(v, jnp.float32) if v.dtype != bool else jnp.asarray(v) for k, v in make_inputs(4).items()}
        for total in (grpo_total, fpo_total, spg_total):
            with_elbo = jax.value_and_grad(lambda new, inputs, total=total: total(new, inputs["elbo"], inputs, 0.0))
            without_elbo = jax.value_and_grad(lambda new, inputs, total=total: total(new, None, inputs, 0.0))
            self.assertEqual(str(jax.make_jaxpr(with_elbo)(x["new"], x)),
                             str(jax.make_jaxpr(without_elbo)(x["new"], x)), total.__name__)
            value, grad_new = jax.jit(with_elbo)(x["new"], x)
            base_value, base_grad = jax.jit(without_elbo)(x["new"], x)
            np.testing.assert_array_equal(value, base_value, err_msg=total.__name__)
            np.testing.assert_array_equal(grad_new, base_grad, err_msg=total.__name__)
            grad_fn = jax.jit(jax.value_and_grad(total, argnums=(0, 1)), static_argnums=(3,))
            np.testing.assert_array_equal(grad_fn(x["new"], x["elbo"], x, 0.0)[1][1], 0.0)
            value_beta, (grad_new_beta, grad_elbo_beta) = grad_fn(x["new"], x["elbo"], x, 0.5)
            self.assertFalse(np.allclose(value_beta, value), total.__name__)
            if total is fpo_total:  # the term reuses elbo_new, so it moves the policy gradient
                self.assertFalse(np.allclose(grad_new_beta, grad_new), total.__name__)
                # ... and at beta = 0 the loss is the PPO loss itself (the same traced value, no added term).
                pg_only = jax.value_and_grad(lambda new, inputs: lm.fpo_dllm_loss(
                    new[:, 0], inputs["old"][:, 0], inputs["advantages"], 0.5, dipod_beta=0.0)[1]["pg_loss"])
                self.assertEqual(str(jax.make_jaxpr(with_elbo)(x["new"], x)), str(jax.make_jaxpr(pg_only)(x["new"], x)))
                continue
            # GRPO: token mean, sum_b ELBO_b / sum_b L_b; SPG: weighted by completion lengths.
            lengths = np.asarray(x["completion"].sum(-1), np.float64)
            weights = np.full(BATCH, 1.0 / lengths.sum()) if total is grpo_total else lengths / lengths.sum()
            np.testing.assert_allclose(value_beta - value, -0.5 * weights @ np.asarray(x["elbo"]), rtol=1e-5)
            np.testing.assert_allclose(grad_elbo_beta, -0.5 * weights, rtol=1e-6)
            np.testing.assert_allclose(grad_new_beta, grad_new, rtol=1e-6, atol=1e-7)

    def test_dipod_term_diagnostic_adds_nothing_at_python_zero(self):
        """At a Python beta of 0 the aux "dipod_term" is a constant 0 (no operation on the baseline's loss); at a
        traced beta of 0 the term is computed and is 0 too."""
        x = {k: jnp.asarray(v, jnp.float32) if v.dtype != bool else jnp.asarray(v) for k, v in make_inputs(6).items()}
        _, aux = lm.fpo_dllm_loss(x["new"][:, 0], x["old"][:, 0], x["advantages"], 0.5, dipod_beta=0.0)
        self.assertIsInstance(aux["dipod_term"], jax.Array)
        jaxpr = jax.make_jaxpr(lambda n: lm.fpo_dllm_loss(n, x["old"][:, 0], x["advantages"], 0.5,
                                                          dipod_beta=0.0)[1]["dipod_term"])
        self.assertIsInstance(jaxpr(x["new"][:, 0]).jaxpr.outvars[0], jax_core.Literal)
        traced = jax.jit(lambda beta: lm.fpo_dllm_loss(x["new"][:, 0], x["old"][:, 0], x["advantages"], 0.5,
                                                       dipod_beta=beta)[1]["dipod_term"])(jnp.float32(0.0))
        self.assertEqual(float(traced), 0.0)

    def test_ppo_clipping_zeroes_gradients_where_it_should(self):
        """d loss / d logp_new is 0 exactly where the clip is active (A > 0, r > 1 + eps or A < 0, r < 1 - eps)."""
        x = make_inputs(5)
        x["advantages"][:3] = np.abs(x["advantages"][:3]) + 0.1
        x["advantages"][3:] = -np.abs(x["advantages"][3:]) - 0.1
        new, old = jnp.asarray(x["new"], jnp.float32), jnp.asarray(x["old"], jnp.float32)
        grad = np.asarray(jax.grad(lambda n: lm.grpo_loss(n, old, x["advantages"], x["completion"], 0.2,
                                                          dipod_beta=0.0)[0])(new))
        ratio = np.exp(np.asarray(new) - np.asarray(old))
        positive = x["advantages"][:, None] > 0
        clipped = (positive & (ratio > 1.2)) | (~positive & (ratio < 0.8))
        live = x["completion"] & ~clipped
        self.assertTrue(np.any(x["completion"] & clipped) and np.any(live))
        np.testing.assert_array_equal(grad[x["completion"] & clipped], 0.0)
        np.testing.assert_array_equal(grad[~x["completion"]], 0.0)
        self.assertTrue(np.all(grad[live] != 0.0))
        elbo_new = jnp.asarray([0.0, 0.0, -1.0, 1.0])
        elbo_old = jnp.asarray([-1.0, 0.0, 0.0, 0.0])
        fpo_grad = jax.grad(lambda e: lm.fpo_dllm_loss(e, elbo_old, jnp.asarray([1.0, 1.0, -1.0, -1.0]), 0.5,
                                                       dipod_beta=0.0)[0])(
            elbo_new)
        np.testing.assert_array_equal(np.asarray(fpo_grad) == 0.0, [True, False, True, False])

    def test_empty_completion_mask_under_jit_is_finite(self):
        """Under jit an all-empty completion mask (or zero lengths) gives a finite 0 loss, not NaN."""
        x = make_inputs(6)
        empty = np.zeros_like(x["completion"])
        grpo = jax.jit(lambda m: lm.grpo_loss(x["new"], x["old"], x["advantages"], m, 0.2, dipod_beta=0.0)[0])
        self.assertEqual(float(grpo(empty)), 0.0)
        spg = jax.jit(lambda lengths: lm.spg_loss(x["elbo"], x["elbo"], x["advantages"], lengths, "eubo",
                                                  dipod_beta=0.0)[0])
        self.assertEqual(float(spg(np.zeros(BATCH))), 0.0)

    def test_invalid_arguments_raise(self):
        """Bad hyper-parameters, missing inputs and shape mismatches raise ValueError naming the argument."""
        x = make_inputs(7)
        args = (x["new"], x["old"], x["advantages"], x["completion"])
        cases = [
            ("clip_eps", lambda: lm.grpo_loss(*args, 0.0, dipod_beta=0.0)),
            ("kl_beta", lambda: lm.grpo_loss(*args, 0.2, token_logp_ref=x["ref"], kl_beta=-1.0, dipod_beta=0.0)),
            ("dipod_beta", lambda: lm.grpo_loss(*args, 0.2, elbo=x["elbo"], dipod_beta=-0.1)),
            ("elbo", lambda: lm.grpo_loss(*args, 0.2, dipod_beta=0.1)),
            ("token_logp_ref", lambda: lm.grpo_loss(*args, 0.2, kl_beta=0.1, dipod_beta=0.0)),
            ("advantages", lambda: lm.grpo_loss(x["new"], x["old"], x["advantages"][:4], x["completion"], 0.2,
                                                dipod_beta=0.0)),
            ("completion_mask", lambda: lm.grpo_loss(*args[:3], np.zeros_like(x["completion"]), 0.2, dipod_beta=0.0)),
            ("clip_eps", lambda: lm.fpo_dllm_loss(x["elbo"], x["elbo"], x["advantages"], -0.5, dipod_beta=0.0)),
            ("elbo_ref", lambda: lm.fpo_dllm_loss(x["elbo"], x["elbo"], x["advantages"], kl_beta=0.1, dipod_beta=0.0)),
            ("elbo_old", lambda: lm.fpo_dllm_loss(x["elbo"], x["elbo"][:3], x["advantages"], dipod_beta=0.0)),
            ("estimator", lambda: lm.spg_loss(x["elbo"], x["elbo"], x["advantages"], x["elbo"], "upper",
                                              dipod_beta=0.0)),
            ("logp_upper", lambda: lm.spg_loss(x["elbo"], None, x["advantages"], x["elbo"], "mix", dipod_beta=0.0)),
            ("lengths", lambda: lm.spg_loss(x["elbo"], x["elbo"], x["advantages"], x["elbo"][:2], "mix",
                                            dipod_beta=0.0)),
            ("weight", lambda: lm.spg_loss(x["elbo"], x["elbo"], x["advantages"], x["elbo"], "mix", 1.5,
                                           dipod_beta=0.0)),
        ]
        for name, call in cases:
            with self.assertRaisesRegex(ValueError, name):
                call()
