"""Exact flow log-likelihoods (dipod_jax.diagnostics.flow_exact) and drift metrics (dipod_jax.diagnostics.drift)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from dipod_jax.diagnostics import drift, flow_exact
from dipod_jax.models.flow_policy import VelocityMLP, euler_sample

NUM_STEPS = 5
OBS_DIM = 1
ACTION_DIM = 2
BATCH = 4

A_MATRIX = jnp.array([[0.8, -0.3], [0.5, 1.2]])
B_TIME = jnp.array([0.3, -0.2])
W_OBS = jnp.array([[0.7, -0.4]])


def affine_velocity(a_matrix):
    """v(x, t, s) = A x + t b + W s: the Euler sampler is then an affine (Gaussian) map of the noise."""
    return lambda obs, x, t: x @ a_matrix.T + t[..., None] * B_TIME + obs @ W_OBS


def affine_closed_form_log_prob(a_matrix, obs, actions):
    """log N(a; c(s), M M^T) with M = prod_k (I - dt A) and c(s) the image of zero noise (jnp, differentiable)."""
    dt = 1.0 / NUM_STEPS
    step = jnp.eye(ACTION_DIM) - dt * a_matrix
    gain = jnp.eye(ACTION_DIM)
    offset = jnp.zeros((obs.shape[0], ACTION_DIM))
    for k in range(NUM_STEPS):
        gain = step @ gain
        offset = offset @ step.T - dt * ((1.0 - k / NUM_STEPS) * B_TIME + obs @ W_OBS)
    cov = gain @ gain.T
    diff = actions - offset
    mahalanobis = jnp.sum(diff * jnp.linalg.solve(cov, diff.T).T, axis=-1)
    return -0.5 * mahalanobis - 0.5 * jnp.linalg.slogdet(cov)[1] - 0.5 * ACTION_DIM * jnp.log(2.0 * jnp.pi)


def mlp_velocity(params):
    """A smooth nonlinear velocity with small weights (dt * Lip < 1), parameters closed over."""
    w1, w2 = params

    def velocity(obs, x, t):
        h = jnp.tanh(jnp.concatenate([obs, x, t[..., None]], axis=-1) @ w1)
        return h @ w2

    return velocity


def make_mlp_params(key, action_dim, hidden=16, scale=0.8):
    k1, k2 = jax.random.split(key)
    w1 = scale * jax.random.normal(k1, (OBS_DIM + action_dim + 1, hidden)) / np.sqrt(OBS_DIM + action_dim + 1)
    w2 = scale * jax.random.normal(k2, (hidden, action_dim)) / np.sqrt(hidden)
    return w1, w2


@pytest.fixture(scope="module")
def batch():
    key_obs, key_noise = jax.random.split(jax.random.PRNGKey(0))
    return jax.random.normal(key_obs, (BATCH, OBS_DIM)), jax.random.normal(key_noise, (BATCH, ACTION_DIM))


class AffineFlowTest(chex.TestCase):
    """With an affine velocity the sampler is a Gaussian map, so log pi has a closed form."""

    def setUp(self):
        super().setUp()
        key_obs, key_noise, key_act = jax.random.split(jax.random.PRNGKey(1), 3)
        self.obs = jax.random.normal(key_obs, (BATCH, OBS_DIM))
        self.noise = jax.random.normal(key_noise, (BATCH, ACTION_DIM))
        self.free_actions = 2.0 * jax.random.normal(key_act, (BATCH, ACTION_DIM))

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_prob_from_noise_matches_gaussian(self):
        """Change of variables with the jacfwd Jacobian equals the closed-form Gaussian log-density."""
        fn = self.variant(lambda obs, noise: flow_exact.log_prob_from_noise(
            affine_velocity(A_MATRIX), obs, noise, NUM_STEPS))
        actions, log_prob = fn(self.obs, self.noise)
        np.testing.assert_allclose(log_prob, affine_closed_form_log_prob(A_MATRIX, self.obs, actions),
                                   rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_exact_log_prob_by_inversion_matches_gaussian(self):
        """Inverting the sampler at arbitrary actions gives the closed-form log-density there."""
        fn = self.variant(lambda obs, actions: flow_exact.exact_log_prob(
            affine_velocity(A_MATRIX), obs, actions, NUM_STEPS, tolerance=1e-6))
        log_prob, residual = fn(self.obs, self.free_actions)
        np.testing.assert_allclose(log_prob, affine_closed_form_log_prob(A_MATRIX, self.obs, self.free_actions),
                                   rtol=1e-4, atol=1e-4)
        self.assertLessEqual(float(jnp.max(residual)), 1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradient_through_inversion_matches_closed_form(self):
        """Implicit differentiation of the inversion gives the closed-form d log pi / d A at fixed actions."""
        grad_fn = self.variant(jax.grad(lambda a_matrix: jnp.sum(flow_exact.exact_log_prob(
            affine_velocity(a_matrix), self.obs, self.free_actions, NUM_STEPS, tolerance=1e-6)[0])))
        expected = jax.grad(lambda a_matrix: jnp.sum(
            affine_closed_form_log_prob(a_matrix, self.obs, self.free_actions)))(A_MATRIX)
        np.testing.assert_allclose(grad_fn(A_MATRIX), expected, rtol=1e-3, atol=1e-3)


def test_inverse_round_trips(batch):
    """invert(sample(noise)) recovers the noise and sample(invert(a)) recovers the actions, for a nonlinear flow."""
    obs, noise = batch
    velocity = mlp_velocity(make_mlp_params(jax.random.PRNGKey(2), ACTION_DIM))
    actions = euler_sample(velocity, obs, noise, NUM_STEPS)
    recovered, residual = flow_exact.invert_euler_sampler(velocity, obs, actions, NUM_STEPS, tolerance=1e-6)
    np.testing.assert_allclose(recovered, noise, atol=1e-5)
    assert float(jnp.max(residual)) <= 1e-6
    arbitrary = actions[::-1] + 0.5
    back = euler_sample(velocity, obs, flow_exact.invert_euler_sampler(velocity, obs, arbitrary, NUM_STEPS)[0],
                        NUM_STEPS)
    np.testing.assert_allclose(back, arbitrary, atol=1e-4)


def test_policy_model_samples_and_inverts(batch):
    """On the policy's own model (VelocityMLP, sinusoidal time features), log_prob_from_noise returns the actions
    of models.flow_policy.euler_sample from the same noise, and inverting them recovers that noise."""
    obs, noise = batch
    model = VelocityMLP((16, 16), ACTION_DIM)
    params = model.init(jax.random.PRNGKey(5), obs, noise, jnp.ones((BATCH,)))
    velocity = lambda o, x, t: model.apply(params, o, x, t)  # noqa: E731
    actions, _ = flow_exact.log_prob_from_noise(velocity, obs, noise, NUM_STEPS)
    np.testing.assert_allclose(actions, euler_sample(velocity, obs, noise, NUM_STEPS), atol=1e-6)
    recovered, _ = flow_exact.invert_euler_sampler(velocity, obs, actions, NUM_STEPS, tolerance=1e-6)
    np.testing.assert_allclose(recovered, noise, atol=1e-5)


def test_inverted_log_prob_equals_forward_log_prob(batch):
    """At actions the sampler produced, log pi by inversion equals log pi from the known noise."""
    obs, noise = batch
    velocity = mlp_velocity(make_mlp_params(jax.random.PRNGKey(3), ACTION_DIM))
    actions, log_prob_forward = flow_exact.log_prob_from_noise(velocity, obs, noise, NUM_STEPS)
    log_prob_inverted, _ = flow_exact.exact_log_prob(velocity, obs, actions, NUM_STEPS, tolerance=1e-6)
    np.testing.assert_allclose(log_prob_inverted, log_prob_forward, atol=1e-4)


def test_exact_density_integrates_to_one():
    """For a nonlinear 1-D flow, exp(exact log pi) integrated over a fine grid is 1 (it is a density)."""
    grid = jnp.linspace(-8.0, 8.0, 1601)[:, None]
    obs = jnp.full((grid.shape[0], OBS_DIM), 0.3)
    velocity = mlp_velocity(make_mlp_params(jax.random.PRNGKey(4), 1, scale=1.5))
    log_prob, _ = jax.jit(lambda a: flow_exact.exact_log_prob(velocity, obs, a, NUM_STEPS))(grid)
    mass = float(jnp.sum(jnp.exp(log_prob)) * (grid[1, 0] - grid[0, 0]))
    assert abs(mass - 1.0) < 1e-3, mass


def test_non_contracting_step_raises(batch):
    """When dt * Lip(v) >= 1 the fixed-point inversion diverges: eager calls raise, jitted calls report it."""
    obs, noise = batch
    velocity = affine_velocity(20.0 * A_MATRIX)
    with pytest.raises(flow_exact.SamplerInversionError, match="did not converge"):
        flow_exact.invert_euler_sampler(velocity, obs, noise, NUM_STEPS)
    _, residual = jax.jit(lambda a: flow_exact.invert_euler_sampler(velocity, obs, a, NUM_STEPS))(noise)
    assert not np.all(np.asarray(residual) <= 1e-5)
    with pytest.raises(flow_exact.SamplerInversionError):
        flow_exact.check_inversion_converged(residual, 1e-5)
    flow_exact.check_inversion_converged(jnp.zeros(3), 1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_flow_steps=0), "num_flow_steps"),
    (dict(actions=jnp.zeros((BATCH, 9))), "action dimension 9"),
    (dict(actions=jnp.zeros((BATCH + 1, ACTION_DIM))), "same B"),
    (dict(tolerance=0.0), "tolerance"),
    (dict(max_iterations=0), "max_iterations"),
])
def test_bad_arguments_raise(kwargs, match):
    """Invalid arguments raise ValueError naming the argument, before anything is traced."""
    arguments = dict(velocity_fn=affine_velocity(A_MATRIX), obs=jnp.zeros((BATCH, OBS_DIM)),
                     actions=jnp.zeros((BATCH, ACTION_DIM)), num_flow_steps=NUM_STEPS)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        flow_exact.invert_euler_sampler(**arguments)


class DriftMetricsTest(parameterized.TestCase):

    @parameterized.parameters((1.0, 1.0), (-2.0, -1.0))
    def test_gradient_cosine_of_scaled_copy(self, scale, expected):
        """cos(g, c g) = sign(c) for a multi-leaf pytree."""
        grads = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.4])}
        scaled = jax.tree_util.tree_map(lambda g: scale * g, grads)
        self.assertAlmostEqual(float(drift.gradient_cosine(grads, scaled)), expected, places=6)

    def test_gradient_cosine_known_value(self):
        """cos between (1, 0 | 0) and (1, 1 | 0) split over two leaves is 1 / sqrt(2); zero gradients give 0."""
        a = (jnp.array([1.0, 0.0]), jnp.array([0.0]))
        b = (jnp.array([1.0, 1.0]), jnp.array([0.0]))
        self.assertAlmostEqual(float(drift.gradient_cosine(a, b)), 1.0 / np.sqrt(2.0), places=6)
        zeros = (jnp.zeros(2), jnp.zeros(1))
        self.assertEqual(float(drift.gradient_cosine(zeros, zeros)), 0.0)

    def test_log_ratio_error_is_change_of_bound_gap(self):
        """(ELBO_new - ELBO_old) - (log pi_new - log pi_old) = -(gap_new - gap_old), and is free of constants."""
        rng = np.random.default_rng(0)
        log_pi_old, log_pi_new = rng.normal(size=(2, 6))
        l_old, l_new = rng.uniform(0.0, 3.0, size=(2, 6, 4))
        error = drift.log_ratio_error(drift.flow_fpo_elbo(l_new) - drift.flow_fpo_elbo(l_old),
                                      log_pi_new - log_pi_old)
        gap_change = (drift.bound_gap(log_pi_new, drift.flow_fpo_elbo(l_new))
                      - drift.bound_gap(log_pi_old, drift.flow_fpo_elbo(l_old)))
        np.testing.assert_allclose(error, -gap_change, atol=1e-6)
        shifted = drift.log_ratio_error(drift.flow_fpo_elbo(l_new + 7.0) - drift.flow_fpo_elbo(l_old + 7.0),
                                        log_pi_new - log_pi_old)
        np.testing.assert_allclose(shifted, error, atol=1e-5)
        np.testing.assert_allclose(drift.flow_fpo_elbo(l_old), -l_old.mean(-1), atol=1e-6)

    def test_score_function_gradient_of_gaussian(self):
        """grad_mu mean(A log N(a; mu, 1)) = mean(A (a - mu)) and advantages get no gradient."""
        actions = jnp.array([0.5, -1.0, 2.0])
        advantages = jnp.array([1.0, -0.5, 0.25])

        def objective(mu, adv):
            return drift.score_function_objective(-0.5 * jnp.square(actions - mu), adv)

        grad_mu, grad_adv = jax.grad(objective, argnums=(0, 1))(0.3, advantages)
        self.assertAlmostEqual(float(grad_mu), float(jnp.mean(advantages * (actions - 0.3))), places=6)
        np.testing.assert_array_equal(grad_adv, jnp.zeros(3))
