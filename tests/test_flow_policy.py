"""Flow policy, Gaussian policy and critic models (dipod_jax.models)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from dipod_jax.models.critic import CriticMLP
from dipod_jax.models.flow_policy import VelocityMLP, euler_sample, sample_actions, sinusoidal_time_embedding
from dipod_jax.models.gaussian_policy import (
    GaussianPolicyMLP,
    gaussian_log_prob,
    squashed_entropy_estimate,
    tanh_log_det_jacobian,
)


def test_time_embedding_known_values():
    """Known values: features are [cos(t 2^j), sin(t 2^j)] for j = 0..3."""
    t = jnp.array([0.0, 0.5])
    features = sinusoidal_time_embedding(t, 8)
    chex.assert_shape(features, (2, 8))
    scaled = np.array([0.5, 1.0, 2.0, 4.0])
    np.testing.assert_allclose(features[0], [1, 1, 1, 1, 0, 0, 0, 0], atol=1e-7)
    np.testing.assert_allclose(features[1], np.concatenate([np.cos(scaled), np.sin(scaled)]), rtol=1e-6)
    with pytest.raises(ValueError, match="embed_dim"):
        sinusoidal_time_embedding(t, 7)


class EulerSamplerTest(chex.TestCase, parameterized.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(1, 4, 10)
    def test_constant_and_linear_fields(self, num_steps):
        """Known solutions: v = c gives x0 = x1 - c; v = x gives x0 = (1 - 1/K)^K x1 (K Euler steps, t: 1 -> 0)."""
        obs = jnp.zeros((3, 2))
        x1 = jnp.array([[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
        shift = jnp.array([0.3, -0.7])
        constant = self.variant(lambda x: euler_sample(lambda o, x, t: jnp.broadcast_to(shift, x.shape), obs, x,
                                                         num_steps))
        np.testing.assert_allclose(constant(x1), x1 - shift, rtol=1e-5, atol=1e-6)
        linear = self.variant(lambda x: euler_sample(lambda o, x, t: x, obs, x, num_steps))
        np.testing.assert_allclose(linear(x1), (1.0 - 1.0 / num_steps) ** num_steps * x1, rtol=1e-5, atol=1e-6)

    def test_time_grid(self):
        """The velocity is evaluated at t = 1, 1 - 1/K, ..., 1/K (v = t integrates to x1 - mean of the grid)."""
        obs, x1 = jnp.zeros((1, 1)), jnp.zeros((1, 1))
        x0 = euler_sample(lambda o, x, t: t[:, None], obs, x1, 4)
        np.testing.assert_allclose(x0, [[-(1.0 + 0.75 + 0.5 + 0.25) / 4]], rtol=1e-6)


def _velocity_model(scale=0.25):
    model = VelocityMLP((16, 16), action_dim=2, time_embed_dim=8, output_scale=scale)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)), jnp.zeros((1, 2)), jnp.zeros((1,)))
    return model, params


def test_velocity_mlp_shapes_and_output_scale():
    """Shapes over extra leading axes [B, N]; the output is exactly output_scale times the unscaled output."""
    model, params = _velocity_model(0.25)
    unscaled, _ = _velocity_model(1.0)
    obs = jax.random.normal(jax.random.key(1), (4, 5, 3))
    x = jax.random.normal(jax.random.key(2), (4, 5, 2))
    t = jax.random.uniform(jax.random.key(3), (4, 5))
    velocity = model.apply(params, obs, x, t)
    chex.assert_shape(velocity, (4, 5, 2))
    chex.assert_tree_all_finite(velocity)
    np.testing.assert_allclose(velocity, 0.25 * unscaled.apply(params, obs, x, t), rtol=1e-6)


def test_sample_actions_zero_noise_is_deterministic():
    """Zero-noise mode ignores the key and equals the Euler sampler from x1 = 0; stochastic mode depends on it."""
    model, params = _velocity_model()
    velocity = lambda o, x, t: model.apply(params, o, x, t)  # noqa: E731
    obs = jax.random.normal(jax.random.key(1), (6, 3))
    a = sample_actions(velocity, obs, jax.random.key(2), 2, 5, deterministic=True)
    b = sample_actions(velocity, obs, jax.random.key(3), 2, 5, deterministic=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, euler_sample(velocity, obs, jnp.zeros((6, 2)), 5))
    c = sample_actions(velocity, obs, jax.random.key(2), 2, 5)
    d = sample_actions(velocity, obs, jax.random.key(3), 2, 5)
    chex.assert_shape(c, (6, 2))
    assert not np.allclose(c, d)


def test_gaussian_policy_log_prob_and_entropy():
    """log-prob equals the sum of scipy-style normal log-densities; the tanh Jacobian equals log(1 - tanh^2);
    the entropy estimate averages to the squashed entropy (Gaussian entropy + E log|tanh'|)."""
    model = GaussianPolicyMLP((8,), action_dim=3)
    obs = jax.random.normal(jax.random.key(0), (5, 4))
    params = model.init(jax.random.key(1), obs)
    mean, std = model.apply(params, obs)
    chex.assert_shape([mean, std], (5, 3))
    assert np.all(std > 0)
    actions = jax.random.normal(jax.random.key(2), (5, 3))
    expected = jnp.sum(jax.scipy.stats.norm.logpdf(actions, mean, std), axis=-1)
    np.testing.assert_allclose(gaussian_log_prob(actions, mean, std), expected, rtol=1e-5)
    u = jnp.linspace(-3.0, 3.0, 13)
    np.testing.assert_allclose(tanh_log_det_jacobian(u), jnp.log(1.0 - jnp.tanh(u) ** 2), rtol=1e-4, atol=1e-5)
    entropy = squashed_entropy_estimate(mean, std, jax.random.key(3))
    chex.assert_shape(entropy, (5,))
    # With std -> MIN_STD the tanh correction is log(1 - tanh(mean)^2): compare on a near-deterministic policy.
    tiny_std = jnp.full_like(mean, 1e-3)
    gaussian_part = jnp.sum(0.5 + 0.5 * jnp.log(2 * jnp.pi) + jnp.log(tiny_std), axis=-1)
    np.testing.assert_allclose(squashed_entropy_estimate(mean, tiny_std, jax.random.key(4)),
                               gaussian_part + jnp.sum(jnp.log(1 - jnp.tanh(mean) ** 2), axis=-1), rtol=1e-3)


def test_critic_shape_and_gradient():
    """V(s) has the batch shape and a finite, non-zero parameter gradient."""
    critic = CriticMLP((16, 16))
    obs = jax.random.normal(jax.random.key(0), (7, 4))
    params = critic.init(jax.random.key(1), obs)
    chex.assert_shape(critic.apply(params, obs), (7,))
    grads = jax.grad(lambda p: jnp.sum(critic.apply(p, obs) ** 2))(params)
    chex.assert_tree_all_finite(grads)
    assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree.leaves(grads))) > 0
