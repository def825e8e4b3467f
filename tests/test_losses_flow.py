"""Continuous-control losses: each checked against an independent NumPy derivation, its gradient, and jit/vmap."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from jax.test_util import check_grads

import dipod_jax.losses as L

RNG = np.random.default_rng(0)
B, N, D, S = 5, 4, 3, 2


def _np_cfm(v, a, eps, tau, variant):
    x = tau[..., None] * eps + (1 - tau[..., None]) * a
    if variant == "velocity":
        r = v - (eps - a)
    else:
        r = x + (1 - tau[..., None]) * v - eps
    return (r ** 2).mean(-1)


def _np_ppo_obj(r, a, e):
    return np.minimum(r * a, np.clip(r, 1 - e, 1 + e) * a)


def _np_spo_obj(r, a, e):
    return r * a - np.abs(a) / (2 * e) * (r - 1) ** 2


def _np_gae(rewards, values, next_values, term, trunc, gamma, lam):
    T, nb = rewards.shape
    adv = np.zeros_like(rewards)
    for b in range(nb):
        running = 0.0
        for t in reversed(range(T)):
            delta = rewards[t, b] + gamma * (1 - term[t, b]) * next_values[t, b] - values[t, b]
            if term[t, b] or trunc[t, b]:
                running = delta
            else:
                running = delta + gamma * lam * running
            adv[t, b] = running
    return adv, adv + values


def _linear_velocity_fn(w_obs, w_x, w_t):
    """A velocity field linear in (obs, x, t), so a NumPy re-derivation is simple."""
    def fn(obs, x, t):
        return obs @ w_obs + x @ w_x + t[..., None] * w_t
    return fn


class CfmTest(parameterized.TestCase):
    @parameterized.parameters("velocity", "eps")
    def test_cfm_loss_matches_numpy(self, variant):
        """cfm_loss [B, N] equals the NumPy per-sample loss of the same linear velocity field (float64)."""
        with jax.enable_x64(True):
            w_obs, w_x, w_t = RNG.normal(size=(S, D)), RNG.normal(size=(D, D)), RNG.normal(size=(D,))
            obs, act = RNG.normal(size=(B, S)), RNG.normal(size=(B, D))
            tau, eps = RNG.uniform(size=(B, N)), RNG.normal(size=(B, N, D))
            got = L.cfm_loss(_linear_velocity_fn(*map(jnp.asarray, (w_obs, w_x, w_t))), jnp.asarray(obs),
                             jnp.asarray(act), jnp.asarray(tau), jnp.asarray(eps), variant)
            a_n = np.broadcast_to(act[:, None], eps.shape)
            x = tau[..., None] * eps + (1 - tau[..., None]) * a_n
            v = obs[:, None] @ w_obs + x @ w_x + tau[..., None] * w_t
            np.testing.assert_allclose(np.asarray(got), _np_cfm(v, a_n, eps, tau, variant), rtol=1e-12)

    def test_eps_variant_is_velocity_variant_times_one_minus_tau_squared(self):
        """Identity: the eps-supervised residual is (1 - tau) times the velocity residual."""
        v, a, eps = (jnp.asarray(RNG.normal(size=(B, N, D)), jnp.float32) for _ in range(3))
        tau = jnp.asarray(RNG.uniform(size=(B, N)), jnp.float32)
        lv = L.cfm_loss_from_velocity(v, a, eps, tau, "velocity")
        le = L.cfm_loss_from_velocity(v, a, eps, tau, "eps")
        np.testing.assert_allclose(le, (1 - tau) ** 2 * lv, rtol=1e-5, atol=1e-6)

    def test_cfm_loss_zero_for_exact_velocity(self):
        """A velocity field equal to the conditional target eps - a gives zero loss."""
        obs = jnp.zeros((B, S))
        act = jnp.asarray(RNG.normal(size=(B, D)), jnp.float32)
        tau, eps = L.draw_tau_eps(jax.random.PRNGKey(0), B, N, D, "uniform")
        # x_tau - a = tau (eps - a), so (x - a) / tau recovers eps - a on this path.
        def fn(o, x, t):
            return (x - act[:, None]) / t[..., None]

        np.testing.assert_allclose(L.cfm_loss(fn, obs, act, tau, eps), 0.0, atol=1e-8)

    def test_cfm_gradients(self):
        """check_grads: the CFM loss is smooth in the velocity prediction (first and second order)."""
        with jax.enable_x64(True):
            a, eps = jnp.asarray(RNG.normal(size=(B, D))), jnp.asarray(RNG.normal(size=(B, D)))
            tau = jnp.asarray(RNG.uniform(size=(B,)))
            for variant in L.flow.CFM_VARIANTS:
                check_grads(lambda v, variant=variant: L.cfm_loss_from_velocity(v, a, eps, tau, variant).sum(),
                            (jnp.asarray(RNG.normal(size=(B, D))),), order=2)

    def test_bad_variant_and_shapes_raise(self):
        """Invalid arguments raise clear errors instead of broadcasting silently."""
        v = jnp.zeros((B, N, D))
        with self.assertRaisesRegex(ValueError, "variant"):
            L.cfm_loss_from_velocity(v, v, v, jnp.zeros((B, N)), "score")
        with self.assertRaises(AssertionError):
            L.cfm_loss_from_velocity(v, jnp.zeros((B, N, D + 1)), v, jnp.zeros((B, N)))


class DrawTauEpsTest(parameterized.TestCase):
    def test_grid_schedule_hits_exactly_the_sampler_grid(self):
        """'grid' draws only {1, 1-1/K, ..., 1/K} and every grid point appears."""
        k = 5
        tau, eps = L.draw_tau_eps(jax.random.PRNGKey(1), 400, 8, D, "grid", num_flow_steps=k)
        self.assertEqual(tau.shape, (400, 8))
        self.assertEqual(eps.shape, (400, 8, D))
        np.testing.assert_allclose(np.unique(np.asarray(tau)), np.arange(1, k + 1) / k, rtol=1e-6)

    def test_beta_schedule_matches_beta_cdf(self):
        """'beta' follows the affine Beta(1, b) law: P(tau <= x) = 1 - (1 - (x - .005)/.99)^b, within [.005, .995]."""
        b = 2.0
        tau, _ = L.draw_tau_eps(jax.random.PRNGKey(2), 20000, 4, 1, "beta", beta_b=b)
        tau = np.asarray(tau).ravel()
        self.assertTrue(tau.min() >= 0.005 - 1e-6 and tau.max() <= 0.995 + 1e-6)
        for x in (0.1, 0.3, 0.6):
            expected = 1 - (1 - (x - 0.005) / 0.99) ** b
            self.assertAlmostEqual(float(np.mean(tau <= x)), expected, delta=0.01)

    def test_uniform_schedule_moments(self):
        """'uniform' has mean 1/2 and eps is standard normal (mean 0, var 1)."""
        tau, eps = L.draw_tau_eps(jax.random.PRNGKey(3), 5000, 4, 2, "uniform")
        self.assertAlmostEqual(float(tau.mean()), 0.5, delta=0.01)
        self.assertAlmostEqual(float(eps.mean()), 0.0, delta=0.02)
        self.assertAlmostEqual(float(eps.var()), 1.0, delta=0.03)

    def test_invalid_schedule_raises(self):
        """Unknown schedule names and non-positive sizes are refused with the argument's name."""
        with self.assertRaisesRegex(ValueError, "schedule"):
            L.draw_tau_eps(jax.random.PRNGKey(0), 2, 2, 2, "cosine")
        with self.assertRaisesRegex(ValueError, "num_samples"):
            L.draw_tau_eps(jax.random.PRNGKey(0), 2, 0, 2)


class RatioTest(parameterized.TestCase):
    def test_fpo_log_ratio_averages_before_exp(self):
        """FPO's log-ratio is mean_n l_old - mean_n l_new (not a mean of per-sample log-ratios of exp)."""
        lo, ln = RNG.uniform(size=(B, N)), RNG.uniform(size=(B, N))
        np.testing.assert_allclose(L.fpo_log_ratio(jnp.asarray(lo), jnp.asarray(ln)),
                                   lo.mean(-1) - ln.mean(-1), rtol=1e-5)

    def test_fpo_pp_clamps_forward_values(self):
        """FPO++: l_new is capped at loss_clamp only where A < 0; the log-ratio is capped from above only (a
        sample whose loss rose keeps its true ratio, as fpo.py's `clamp_ste(log_ratio, max=c)`, line 478)."""
        lo = jnp.array([[0.0, 0.0], [0.0, 50.0]])
        ln = jnp.array([[30.0, 0.0], [30.0, 0.0]])
        adv = jnp.array([-1.0, 1.0])
        got = L.fpo_pp_log_ratio(lo, ln, adv, loss_clamp=20.0, log_ratio_clamp=10.0)
        np.testing.assert_allclose(got, [[-20.0, 0.0], [-30.0, 10.0]])
        got_unclamped = L.fpo_pp_log_ratio(lo, ln, adv, loss_clamp=None, log_ratio_clamp=100.0)
        np.testing.assert_allclose(got_unclamped, [[-30.0, 0.0], [-30.0, 50.0]])
        got_cfm_clamped = L.fpo_pp_log_ratio(lo, ln, adv, loss_clamp=None, log_ratio_clamp=100.0,
                                             cfm_loss_clamp=25.0)
        np.testing.assert_allclose(got_cfm_clamped, [[-25.0, 0.0], [-25.0, 25.0]])

    def test_straight_through_clamp_has_identity_gradient(self):
        """The log-ratio clamp passes the identity gradient even where the forward value is clamped."""
        lo = jnp.array([[0.0, 0.0]])
        adv = jnp.array([1.0])
        grad = jax.grad(lambda ln: L.fpo_pp_log_ratio(lo, ln, adv, log_ratio_clamp=1.0).sum())(jnp.array([[5.0, 0.5]]))
        np.testing.assert_allclose(grad, [[-1.0, -1.0]])

    def test_negative_advantage_loss_clamp_stops_gradient(self):
        """Where A < 0 and l_new exceeds loss_clamp, the sample's gradient is zero (it cannot be pushed further)."""
        lo = jnp.zeros((1, 2))
        grad = jax.grad(lambda ln: L.fpo_pp_log_ratio(lo, ln, jnp.array([-1.0]), loss_clamp=20.0).sum())(
            jnp.array([[25.0, 5.0]]))
        np.testing.assert_allclose(grad, [[0.0, -1.0]])


class TrustRegionTest(parameterized.TestCase):
    def test_objectives_match_numpy(self):
        """PPO, SPO and ASPO objectives equal their NumPy definitions elementwise (float64)."""
        with jax.enable_x64(True):
            r, a = RNG.uniform(0.5, 1.5, size=64), RNG.normal(size=64)
            e = 0.1
            np.testing.assert_allclose(L.ppo_objective(jnp.asarray(r), jnp.asarray(a), e), _np_ppo_obj(r, a, e))
            np.testing.assert_allclose(L.spo_objective(jnp.asarray(r), jnp.asarray(a), e), _np_spo_obj(r, a, e))
            np.testing.assert_allclose(L.aspo_objective(jnp.asarray(r), jnp.asarray(a), e),
                                       np.where(a > 0, _np_ppo_obj(r, a, e), _np_spo_obj(r, a, e)))

    def test_ppo_clip_zeroes_gradient_outside_the_region(self):
        """PPO: the gradient w.r.t. r vanishes where r A is clipped (r > 1+eps, A > 0; r < 1-eps, A < 0) only."""
        r = jnp.array([1.5, 0.5, 1.5, 0.5, 1.0])
        a = jnp.array([1.0, -1.0, -1.0, 1.0, 2.0])
        grad = jax.grad(lambda x: L.ppo_objective(x, a, 0.2).sum())(r)
        np.testing.assert_allclose(grad, [0.0, 0.0, -1.0, 1.0, 2.0])

    def test_spo_gradient_pulls_ratio_back(self):
        """SPO keeps a restoring gradient outside the region: d/dr = A - |A| (r - 1) / eps."""
        r, a = jnp.array([1.5, 0.5]), jnp.array([1.0, -1.0])
        grad = jax.grad(lambda x: L.spo_objective(x, a, 0.2).sum())(r)
        np.testing.assert_allclose(grad, [1.0 - 0.5 / 0.2, -1.0 + 0.5 / 0.2], rtol=1e-6)

    def test_invalid_clip_eps_and_kind_raise(self):
        """clip_eps <= 0 and an unknown trust region raise ValueError naming the argument."""
        r = jnp.ones(3)
        with self.assertRaisesRegex(ValueError, "clip_eps"):
            L.ppo_objective(r, r, 0.0)
        with self.assertRaisesRegex(ValueError, "trust_region"):
            L.trust_region_objective(r, r, 0.1, "trpo")


class GaeTest(parameterized.TestCase):
    def test_gae_matches_hand_loop_with_termination_and_truncation(self):
        """GAE equals a hand-written backward loop, with terminations (no bootstrap) and truncations
        (bootstrap from the pre-reset next value, no carry across the boundary)."""
        with jax.enable_x64(True):
            T, nb = 12, 4
            rewards, values, next_values = (RNG.normal(size=(T, nb)) for _ in range(3))
            term = (RNG.uniform(size=(T, nb)) < 0.15).astype(np.float64)
            trunc = ((RNG.uniform(size=(T, nb)) < 0.15) & (term == 0)).astype(np.float64)
            adv, ret = L.gae(*(jnp.asarray(x) for x in (rewards, values, next_values, term, trunc)), 0.97, 0.9)
            want_adv, want_ret = _np_gae(rewards, values, next_values, term, trunc, 0.97, 0.9)
            np.testing.assert_allclose(adv, want_adv, rtol=1e-12)
            np.testing.assert_allclose(ret, want_ret, rtol=1e-12)

    def test_release_time_out_bootstrap_matches_the_release(self):
        """truncation_bootstrap="current_value" equals the FPO++ release: fpo.py `process_env_step` adds
        gamma * V(s_t) to a timed-out step's reward (lines 269-276), rollout_storage.py `compute_returns` (lines
        181-200) recurses with dones = terminated or timed out and bootstraps the last step from last_values.
        Our default differs exactly at time-outs (it bootstraps from the pre-reset V(s_{t+1}))."""
        with jax.enable_x64(True):
            T, nb, gamma, lam = 12, 4, 0.97, 0.9
            rewards = RNG.normal(size=(T, nb))
            values_ext = RNG.normal(size=(T + 1, nb))  # V(s_0) .. V(s_T) as stored by the release
            term = (RNG.uniform(size=(T, nb)) < 0.15).astype(np.float64)
            trunc = ((RNG.uniform(size=(T, nb)) < 0.2) & (term == 0)).astype(np.float64)
            ended = np.maximum(term, trunc)
            # Where a step ended, the next stored value is a reset state's; the pre-reset one is another number.
            next_values = np.where(ended > 0, RNG.normal(size=(T, nb)), values_ext[1:])
            values = values_ext[:T]

            release_rewards = rewards + gamma * values * trunc
            advantage, want_returns = 0.0, np.zeros((T, nb))
            for step in reversed(range(T)):
                following = values_ext[T] if step == T - 1 else values[step + 1]
                not_terminal = 1.0 - ended[step]
                delta = release_rewards[step] + not_terminal * gamma * following - values[step]
                advantage = delta + not_terminal * gamma * lam * advantage
                want_returns[step] = advantage + values[step]

            args = [jnp.asarray(x) for x in (rewards, values, next_values, term, trunc)]
            adv, ret = L.gae(*args, gamma, lam, truncation_bootstrap="current_value")
            np.testing.assert_allclose(ret, want_returns, rtol=1e-12)
            np.testing.assert_allclose(adv, want_returns - values, rtol=1e-10, atol=1e-12)
            ours, _ = L.gae(*args, gamma, lam)
            ours, adv = np.asarray(ours), np.asarray(adv)
            self.assertFalse(np.any(np.isclose(ours, adv)[trunc > 0]))
            np.testing.assert_allclose(ours[term > 0], adv[term > 0], rtol=1e-12)
        with self.assertRaisesRegex(ValueError, "truncation_bootstrap"):
            L.gae(*args, gamma, lam, truncation_bootstrap="previous")

    def test_gae_lambda_one_no_boundaries_is_discounted_return(self):
        """Identity: with lambda = 1 and no episode ends, returns are the discounted sums bootstrapped at T."""
        T = 6
        r = jnp.ones((T, 1))
        v = jnp.zeros((T, 1))
        nv = jnp.zeros((T, 1)).at[-1].set(10.0)
        z = jnp.zeros((T, 1))
        _, ret = L.gae(r, v, nv, z, z, 0.5, 1.0)
        want = [sum(0.5 ** k for k in range(T - t)) + 0.5 ** (T - t) * 10.0 for t in range(T)]
        np.testing.assert_allclose(ret[:, 0], want, rtol=1e-6)

    def test_gae_rejects_bad_gamma(self):
        """gamma outside [0, 1] raises ValueError naming gamma."""
        z = jnp.zeros((2, 2))
        with self.assertRaisesRegex(ValueError, "gamma"):
            L.gae(z, z, z, z, z, 1.5, 0.9)

    def test_grpo_advantages(self):
        """GRPO advantages are centred per group (sum to 0) and, with std-scaling, have unit group std."""
        r = jnp.asarray(RNG.uniform(size=(3, 6)), jnp.float32)
        a = L.grpo_advantages(r)
        np.testing.assert_allclose(a.sum(1), 0.0, atol=1e-6)
        np.testing.assert_allclose(a, r - r.mean(1, keepdims=True), rtol=1e-6)
        s = L.grpo_advantages(r, scale_by_std=True, eps=0.0)
        np.testing.assert_allclose(s.std(1), 1.0, rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "G must be >= 2"):
            L.grpo_advantages(r[:, :1])

    def test_normalize_advantages(self):
        """Normalised advantages have mean 0 and std 1."""
        a = L.normalize_advantages(jnp.asarray(RNG.normal(3.0, 5.0, size=100), jnp.float32))
        self.assertAlmostEqual(float(a.mean()), 0.0, delta=1e-5)
        self.assertAlmostEqual(float(a.std()), 1.0, delta=1e-5)


class ValueLossTest(parameterized.TestCase):
    def test_value_loss_plain_and_clipped_match_numpy(self):
        """Plain: 0.5 mean (V-R)^2; clipped: 0.5 mean max((V-R)^2, (V_old + clip(V-V_old) - R)^2)."""
        v, r, vo = RNG.normal(size=32), RNG.normal(size=32), RNG.normal(size=32)
        self.assertAlmostEqual(float(L.value_loss(jnp.asarray(v), jnp.asarray(r))), 0.5 * np.mean((v - r) ** 2),
                               places=5)
        vc = vo + np.clip(v - vo, -0.2, 0.2)
        want = 0.5 * np.mean(np.maximum((v - r) ** 2, (vc - r) ** 2))
        got = L.value_loss(jnp.asarray(v), jnp.asarray(r), jnp.asarray(vo), 0.2)
        self.assertAlmostEqual(float(got), want, places=5)
        with self.assertRaisesRegex(ValueError, "old_values"):
            L.value_loss(jnp.asarray(v), jnp.asarray(r), clip_eps=0.2)


def _fpo_inputs(seed=0):
    rng = np.random.default_rng(seed)
    l_old = jnp.asarray(rng.uniform(0.5, 1.5, size=(B, N)), jnp.float32)
    l_new = l_old + jnp.asarray(rng.normal(0, 0.05, size=(B, N)), jnp.float32)
    adv = jnp.asarray(rng.normal(size=(B,)), jnp.float32)
    return l_old, l_new, adv


class PolicyGradientTest(chex.TestCase, parameterized.TestCase):
    def test_fpo_loss_matches_numpy(self):
        """fpo_loss = -mean PPO(exp(mean l_old - mean l_new), A) + beta * mean l_new (float64)."""
        with jax.enable_x64(True):
            lo, ln = RNG.uniform(0.5, 1.5, size=(B, N)), RNG.uniform(0.5, 1.5, size=(B, N))
            a = RNG.normal(size=B)
            r = np.exp(lo.mean(-1) - ln.mean(-1))
            for beta in (0.0, 0.3):
                want = -np.mean(_np_ppo_obj(r, a, 0.05)) + beta * ln.mean()
                got, aux = L.fpo_loss(jnp.asarray(lo), jnp.asarray(ln), jnp.asarray(a), 0.05, dipod_beta=beta)
                self.assertAlmostEqual(float(got), want, places=12)
                self.assertAlmostEqual(float(aux["dipod_term"]), beta * ln.mean(), places=12)

    def test_fpo_pp_loss_matches_numpy(self):
        """fpo_pp_loss = -mean over (b, n) ASPO(exp(l_old,n - l_new,n), A_b) + beta * mean l_new (float64)."""
        with jax.enable_x64(True):
            lo, ln = RNG.uniform(0.5, 1.5, size=(B, N)), RNG.uniform(0.5, 1.5, size=(B, N))
            a = RNG.normal(size=B)
            r = np.exp(lo - ln)
            ab = np.broadcast_to(a[:, None], r.shape)
            want = -np.mean(np.where(ab > 0, _np_ppo_obj(r, ab, 0.05), _np_spo_obj(r, ab, 0.05))) + 0.1 * ln.mean()
            got, _ = L.fpo_pp_loss(jnp.asarray(lo), jnp.asarray(ln), jnp.asarray(a), 0.05, dipod_beta=0.1)
            self.assertAlmostEqual(float(got), want, places=12)

    def test_ppo_loss_matches_numpy(self):
        """Gaussian PPO loss = -mean PPO(exp(logp_new - logp_old), A) - c_ent mean(H) - beta mean(logp_new)."""
        with jax.enable_x64(True):
            lpn, lpo, a, h = RNG.normal(size=B), RNG.normal(size=B), RNG.normal(size=B), RNG.uniform(size=B)
            want = -np.mean(_np_ppo_obj(np.exp(lpn - lpo), a, 0.2)) - 0.01 * h.mean() - 0.05 * lpn.mean()
            got, _ = L.ppo_loss(*(jnp.asarray(x) for x in (lpn, lpo, a)), 0.2, jnp.asarray(h), 0.01, dipod_beta=0.05)
            self.assertAlmostEqual(float(got), want, places=12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_beta_zero_reproduces_baseline_bit_for_bit(self):
        """dipod_beta = 0 gives exactly the baseline loss and gradient (fpo, fpo++, ppo), jitted or not."""
        l_old, l_new, adv = _fpo_inputs()

        def total(loss_fn, beta):
            return self.variant(jax.value_and_grad(lambda ln: loss_fn(l_old, ln, adv, dipod_beta=beta)[0]))(l_new)

        def baseline(loss_fn):
            # The unregularised PG loss the aux reports beside a non-zero term: the surrogate alone.
            return self.variant(jax.value_and_grad(lambda ln: loss_fn(l_old, ln, adv, dipod_beta=0.05)[1]["pg_loss"]))(
                l_new)

        for loss_fn in (L.fpo_loss, L.fpo_pp_loss):
            v0, g0 = total(loss_fn, 0.0)
            vb, gb = baseline(loss_fn)
            np.testing.assert_array_equal(v0, vb)
            np.testing.assert_array_equal(g0, gb)
            v1, g1 = total(loss_fn, 0.05)
            self.assertFalse(np.array_equal(g1, g0))
            np.testing.assert_allclose(g1 - g0, 0.05 / l_new.size, rtol=1e-4)

    def test_traced_beta_zero_equals_baseline(self):
        """A traced beta (e.g. vmapped over a sweep) of 0 gives the baseline loss and gradient."""
        l_old, l_new, adv = _fpo_inputs(1)
        f = jax.jit(jax.value_and_grad(lambda ln, beta: L.fpo_loss(l_old, ln, adv, dipod_beta=beta)[0]))
        v, g = f(l_new, jnp.float32(0.0))
        vb, gb = jax.value_and_grad(lambda ln: L.fpo_loss(l_old, ln, adv, dipod_beta=0.0)[0])(l_new)
        np.testing.assert_allclose(v, vb, rtol=1e-7)
        np.testing.assert_allclose(g, gb, rtol=1e-6, atol=1e-9)

    def test_vmap_over_beta_sweep(self):
        """vmap over a beta sweep: each loss equals the loss computed with that beta alone."""
        l_old, l_new, adv = _fpo_inputs(2)
        betas = jnp.array([0.0, 0.05, 0.5])
        swept = jax.vmap(lambda b: L.fpo_loss(l_old, l_new, adv, dipod_beta=b)[0])(betas)
        single = [float(L.fpo_loss(l_old, l_new, adv, dipod_beta=float(b))[0]) for b in betas]
        np.testing.assert_allclose(swept, single, rtol=1e-6)

    def test_fpo_gradients_check(self):
        """check_grads on FPO (SPO trust region, smooth) and the self-distillation loss."""
        with jax.enable_x64(True):
            lo, ln = RNG.uniform(0.5, 1.5, size=(B, N)), RNG.uniform(0.5, 1.5, size=(B, N))
            a = jnp.asarray(RNG.normal(size=B))
            check_grads(lambda x: L.fpo_loss(jnp.asarray(lo), x, a, 0.1, "spo", dipod_beta=0.1)[0],
                        (jnp.asarray(ln),), order=2)
            check_grads(L.self_distillation_loss, (jnp.asarray(ln),), order=1)

    def test_negative_beta_and_bad_shapes_raise(self):
        """Negative dipod_beta, clip_eps <= 0 and mismatched shapes raise before any computation."""
        l_old, l_new, adv = _fpo_inputs()
        with self.assertRaisesRegex(ValueError, "dipod_beta"):
            L.fpo_loss(l_old, l_new, adv, dipod_beta=-0.1)
        with self.assertRaisesRegex(ValueError, "clip_eps"):
            L.fpo_pp_loss(l_old, l_new, adv, clip_eps=-1.0, dipod_beta=0.0)
        with self.assertRaisesRegex(ValueError, "dipod_beta"):
            L.with_dipod(jnp.float32(0.0), l_new, float("nan"))
        with self.assertRaises(AssertionError):
            L.fpo_loss(l_old, l_new[:, :2], adv, dipod_beta=0.0)
        with self.assertRaises(AssertionError):
            L.fpo_loss(l_old, l_new, adv[:2], dipod_beta=0.0)

    def test_dipod_regularizer_weighted_mean(self):
        """dipod_regularizer = -beta * sum(w * elbo) / sum(w); zero weights give 0, not NaN."""
        elbo = jnp.array([1.0, 2.0, 4.0])
        w = jnp.array([1.0, 0.0, 3.0])
        self.assertAlmostEqual(float(L.dipod_regularizer(elbo, 0.5, w)), -0.5 * 13.0 / 4.0, places=6)
        self.assertEqual(float(L.dipod_regularizer(elbo, 0.5, jnp.zeros(3))), 0.0)


# ------------------------------------------------------------------------------------------------------------
# The FPO++ release (Astro-Eric/DiPOD-release, fpo-control/fpo_rsl_rl/fpo_rsl_rl) transcribed in NumPy.


def _np_release_cfm_error(predictions, targets, use_huber, huber_delta, reduction):
    """modules/actor_critic.py `ActorCritic._compute_squared_error`, lines 316-343."""
    diff = predictions - targets
    if use_huber:
        error = np.where(np.abs(diff) <= huber_delta, diff ** 2, 2 * huber_delta * np.abs(diff) - huber_delta ** 2)
    else:
        error = diff ** 2
    if reduction == "mean":
        return error.mean(-1)
    if reduction == "sum":
        return error.sum(-1)
    return error.sum(-1) / error.shape[-1] ** 0.5


def _np_release_surrogate(old_cfm, cfm, advantages, clip, mode, cfm_loss_clamp=-1.0, negative_clamp=True,
                          negative_clamp_max=20.0, diff_clamp_max=10.0, advantage_clamp=(100.0, 100.0)):
    """algorithms/fpo.py `FPO.update`: advantage clamp (lines 350-355), CFM-loss clamps and the per-sample
    straight-through log-ratio (457-479), surrogate (485-516). Returns (loss, d loss / d cfm): the gradient
    follows the code's autograd (clamps cut it, clamp_ste passes the identity)."""
    positive_clamp, negative_clamp_value = advantage_clamp
    adv = np.clip(advantages, -negative_clamp_value, positive_clamp)[:, None]
    dcfm = np.ones_like(cfm)
    if cfm_loss_clamp > 0:
        old_cfm = np.minimum(old_cfm, cfm_loss_clamp)
        dcfm = dcfm * (cfm < cfm_loss_clamp)
        cfm = np.minimum(cfm, cfm_loss_clamp)
    if negative_clamp:
        clamped = (adv < 0) & (cfm > negative_clamp_max)
        dcfm = dcfm * ~clamped
        cfm = np.where(adv < 0, np.minimum(cfm, negative_clamp_max), cfm)
    ratio = np.exp(np.minimum(old_cfm - cfm, diff_clamp_max))  # clamp_ste: forward value clamped
    ppo = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip))
    ppo_dratio = np.where(-adv * ratio >= -adv * np.clip(ratio, 1 - clip, 1 + clip), -adv, 0.0)
    spo = -(ratio * adv - np.abs(adv) / (2 * clip) * (ratio - 1) ** 2)
    spo_dratio = -(adv - np.abs(adv) / clip * (ratio - 1))
    if mode == "ppo":
        per_sample, dratio = ppo, ppo_dratio
    elif mode == "spo":
        per_sample, dratio = spo, spo_dratio
    else:
        per_sample, dratio = np.where(adv > 0, ppo, spo), np.where(adv > 0, ppo_dratio, spo_dratio)
    # d ratio / d cfm = ratio * d log_ratio / d cfm = -ratio (identity through clamp_ste).
    return per_sample.mean(), dratio * ratio * -dcfm / per_sample.size


def _release_case(seed):
    """Per-sample losses and advantages that exercise every clamp: log-ratios far below -c and above c,
    losses above the CFM clamp, and advantages beyond an asymmetric advantage clamp."""
    rng = np.random.default_rng(seed)
    l_old = rng.uniform(0.0, 6.0, size=(8, 6))
    l_new = l_old + rng.normal(0.0, 2.5, size=l_old.shape)
    l_new[0, :3] = [30.0, 0.2, 12.0]
    l_old[1, :2] = [26.0, 4.0]
    advantages = rng.normal(0.0, 1.5, size=8)
    advantages[:3] = [-3.0, 2.5, -0.5]
    return l_old, l_new, advantages


class ReleaseFpoPlusPlusTest(parameterized.TestCase):

    @parameterized.product(reduction=["mean", "sum", "sqrt"], huber=[None, 0.7])
    def test_cfm_loss_reduction_and_huber_match_the_release(self, reduction, huber):
        """Per-sample CFM loss ("u" mode = our velocity variant) with each reduction over action dimensions and
        the Huber option equals actor_critic.py's get_cfm_loss (lines 227-256) / _compute_squared_error."""
        with jax.enable_x64(True):
            w_obs, w_x, w_t = RNG.normal(size=(S, D)), RNG.normal(size=(D, D)), RNG.normal(size=(D,))
            obs, act = RNG.normal(size=(B, S)), 2.0 * RNG.normal(size=(B, D))
            tau, eps = RNG.uniform(size=(B, N)), RNG.normal(size=(B, N, D))
            got = L.cfm_loss(_linear_velocity_fn(*map(jnp.asarray, (w_obs, w_x, w_t))), jnp.asarray(obs),
                             jnp.asarray(act), jnp.asarray(tau), jnp.asarray(eps), "velocity", reduction, huber)
            x_t = tau[..., None] * eps + (1.0 - tau[..., None]) * act[:, None, :]
            velocity_pred = obs[:, None] @ w_obs + x_t @ w_x + tau[..., None] * w_t
            want = _np_release_cfm_error(velocity_pred, eps - act[:, None, :], huber is not None, huber, reduction)
            if huber is not None:
                self.assertTrue(np.any(np.abs(velocity_pred - (eps - act[:, None, :])) > huber))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)

    @parameterized.parameters(
        dict(mode="aspo", clip=0.01, diff_clamp_max=3.0, cfm_loss_clamp=-1.0, advantage_clamp=(100.0, 100.0)),
        dict(mode="aspo", clip=0.05, diff_clamp_max=10.0, cfm_loss_clamp=20.0, advantage_clamp=(100.0, 100.0)),
        dict(mode="ppo", clip=0.2, diff_clamp_max=1.0, cfm_loss_clamp=5.0, advantage_clamp=(2.0, 0.25)),
        dict(mode="spo", clip=0.05, diff_clamp_max=2.0, cfm_loss_clamp=-1.0, advantage_clamp=(1.0, 2.0)),
    )
    def test_fpo_pp_loss_and_gradient_match_the_release(self, mode, clip, diff_clamp_max, cfm_loss_clamp,
                                                         advantage_clamp):
        """fpo_pp_loss's value and its gradient in l_new equal fpo.py's surrogate (release clamps: CFM-loss clamp
        on old and new, negative-advantage clamp at 20, upper-only straight-through log-ratio clamp,
        asymmetric advantage clamp) in float64; the first case is the motion-tracking setting (c = 3, clip
        0.01, ASPO) where the old two-sided clamp was off by about 9% in loss."""
        l_old, l_new, advantages = _release_case(0)
        want, want_grad = _np_release_surrogate(l_old, l_new, advantages, clip, mode, cfm_loss_clamp,
                                                diff_clamp_max=diff_clamp_max, advantage_clamp=advantage_clamp)
        self.assertTrue(np.any(l_old - l_new < -diff_clamp_max) and np.any(l_old - l_new > diff_clamp_max))
        with jax.enable_x64(True):
            def loss(ln):
                return L.fpo_pp_loss(jnp.asarray(l_old), ln, jnp.asarray(advantages), clip, mode,
                                     advantage_clamp=advantage_clamp, loss_clamp=20.0,
                                     log_ratio_clamp=diff_clamp_max, cfm_loss_clamp=cfm_loss_clamp, dipod_beta=0.0)[0]
            value, grad = jax.value_and_grad(loss)(jnp.asarray(l_new))
            np.testing.assert_allclose(float(value), want, rtol=1e-12)
            np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-10, atol=1e-15)

    def test_disabled_negative_advantage_clamp_matches_the_release(self):
        """loss_clamp=None is the release's cfm_loss_clamp_negative_advantages=False."""
        l_old, l_new, advantages = _release_case(1)
        want, _ = _np_release_surrogate(l_old, l_new, advantages, 0.05, "aspo", negative_clamp=False)
        with jax.enable_x64(True):
            got, _ = L.fpo_pp_loss(jnp.asarray(l_old), jnp.asarray(l_new), jnp.asarray(advantages), 0.05,
                                   advantage_clamp=(100.0, 100.0), loss_clamp=None, dipod_beta=0.0)
            np.testing.assert_allclose(float(got), want, rtol=1e-12)

    def test_advantage_clamp_forms_and_errors(self):
        """A number c clips to [-c, c]; a pair (positive_max, negative_max) to [-negative_max, positive_max];
        non-positive bounds are refused naming the argument."""
        adv = jnp.array([-5.0, -1.0, 0.5, 4.0])
        np.testing.assert_allclose(L.clamp_advantages(adv, 2.0), [-2.0, -1.0, 0.5, 2.0])
        np.testing.assert_allclose(L.clamp_advantages(adv, (3.0, 0.5)), [-0.5, -0.5, 0.5, 3.0])
        for bad in (0.0, (1.0, -1.0), (1.0, 2.0, 3.0)):
            with self.assertRaisesRegex(ValueError, "advantage_clamp"):
                L.clamp_advantages(adv, bad)

    def test_release_advantage_normalization_is_unbiased_over_the_rollout(self):
        """normalize_advantages(unbiased=True) is rollout_storage.py's (A - mean) / (std + 1e-8) with torch's
        unbiased std (lines 201-204)."""
        adv = RNG.normal(1.0, 3.0, size=(7, 5))
        with jax.enable_x64(True):
            got = L.normalize_advantages(jnp.asarray(adv), unbiased=True)
            np.testing.assert_allclose(got, (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8), rtol=1e-12)
