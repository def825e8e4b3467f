"""The double-drift toys: rewards, the random-order sampler, and one training step of each method.

The train-step tests use the default configurations with 2 seeds, the same shapes as tests/test_double_drift.py,
so the memoised jitted steps (`make_seed_batched_step`) are compiled once per pytest process.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax.diagnostics.masked_exact import exact_logprob_random_order
from dipod_jax.toys import bandit, sequence

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

NUM_SEEDS = 2


def _max_abs_param_difference(params_a, params_b):
    return max(float(jnp.max(jnp.abs(a - b))) for a, b in
               zip(jax.tree_util.tree_leaves(params_a), jax.tree_util.tree_leaves(params_b), strict=True))


def test_bandit_reward_known_values():
    """The reward is 1 at every mode, exp(-R^2 / (2 w^2)) at the origin, and modes follow the context."""
    config = bandit.BanditConfig()
    radius, width = config.mode_radius, config.mode_width
    contexts = jnp.array([[0.0], [0.0], [1.0], [0.0]])
    modes_at_zero = radius * np.array([[1.0, 1.0], [-1.0, -1.0]]) / math.sqrt(2.0)
    # At s = 1 the modes have turned by pi / 4: the first sits on the y axis.
    actions = jnp.array([modes_at_zero[0], modes_at_zero[1], [0.0, radius], [0.0, 0.0]])
    np.testing.assert_allclose(bandit.bandit_reward(contexts, actions, config),
                               [1.0, 1.0, 1.0, math.exp(-radius ** 2 / (2 * width ** 2))], rtol=1e-5)
    config_1d = bandit.BanditConfig(action_dim=1)
    np.testing.assert_allclose(
        bandit.bandit_reward(jnp.array([[1.0], [1.0]]), jnp.array([[radius + 0.5], [-radius + 0.5]]), config_1d),
        [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize("field, value", [("action_dim", 3), ("num_flow_steps", 0), ("learning_rate", 0.0)])
def test_bandit_bad_config_raises(field, value):
    """An invalid bandit configuration raises ValueError naming the field when it is constructed."""
    with pytest.raises(ValueError, match=f"^{field}: must"):
        bandit.BanditConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("algo", "ppo"), ("completion_length", 6), ("vocab_size", 9),
                                          ("group_size", 1)])
def test_sequence_bad_config_raises(field, value):
    """An invalid sequence configuration raises ValueError naming the field when it is constructed."""
    with pytest.raises(ValueError, match=f"^{field}: must"):
        sequence.SequenceConfig(**{field: value})


def _population_beta_zero_is_baseline(toy, config, beta):
    """Population step with member betas (0, beta) on seeds (0, 1), against the baseline step on the same
    states: member 0 (traced beta 0, the term times a traced zero) is bit-identical in state and metrics;
    returns (baseline state, baseline metrics, population state) for the caller's checks of member 1."""
    state = toy.init_seed_batch(jnp.arange(NUM_SEEDS), config)
    baseline_state, metrics = toy.make_seed_batched_step(config, 0.0)(state)
    population_state, population_metrics = toy.make_population_step(config)(state, jnp.array([0.0, beta]))
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[0], (baseline_state.params, baseline_state.opt_state,
                                                              metrics)),
                                jax.tree.map(lambda x: x[0], (population_state.params, population_state.opt_state,
                                                              population_metrics)))
    return baseline_state, metrics, population_state


def test_bandit_step_beta_zero_is_baseline_and_beta_moves_params():
    """In a population step, a member at traced beta 0 is bit-for-bit the baseline step of its seed; a member
    at beta > 0 moves its parameters elsewhere.

    Also: every metric is finite, the cosine lies in [-1, 1] and the exact-likelihood inversion converged.
    """
    config = bandit.BanditConfig()
    baseline_state, metrics, population_state = _population_beta_zero_is_baseline(bandit, config, 0.3)
    second = lambda tree: jax.tree.map(lambda x: x[1], tree)  # noqa: E731
    assert _max_abs_param_difference(second(baseline_state.params), second(population_state.params)) > 1e-4
    for name, value in metrics.items():
        assert np.all(np.isfinite(value)), name
    assert np.all(np.abs(metrics["grad_cosine"]) <= 1.0 + 1e-6)
    assert np.all(metrics["inversion_residual"] <= config.inversion_tolerance)


def test_sequence_targets_and_reward():
    """Targets of prompt 0 with V = 6, L = 4 are (0,1,2,3) and (0,5,4,3); the reward is the best match fraction."""
    config = sequence.SequenceConfig()
    prompts = jnp.array([0, 0, 0, 2])
    np.testing.assert_array_equal(sequence.target_completions(prompts[:1], config)[0], [[0, 1, 2, 3], [0, 5, 4, 3]])
    completions = jnp.array([[0, 1, 2, 3], [0, 5, 4, 3], [0, 1, 4, 0], [0, 0, 3, 0]])
    np.testing.assert_allclose(sequence.sequence_reward(prompts, completions, config), [1.0, 1.0, 0.5, 0.0])


def test_random_order_sampler_matches_exact_likelihood():
    """Completion frequencies of the toy's sampler match exp(exact log-likelihood) of the random-order sampler."""
    config = sequence.SequenceConfig(vocab_size=3, completion_length=2, hidden_size=16)
    model, logits_fn_of = sequence.make_logits_fn(config)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 3), jnp.int32))
    # Sharpen the random init so that the distribution is far from uniform.
    params = jax.tree_util.tree_map(lambda p: 3.0 * p, params)
    num_samples = 20000
    prompts = jnp.full((num_samples,), 1, jnp.int32)
    tokens = jax.jit(lambda key: sequence.sample_random_order(key, logits_fn_of(params), prompts, config))(
        jax.random.PRNGKey(1))
    assert np.all(np.asarray(tokens[:, 0]) == 1)
    assert np.all((np.asarray(tokens[:, 1:]) >= 0) & (np.asarray(tokens[:, 1:]) < config.vocab_size))
    codes = np.asarray(tokens[:, 1] * config.vocab_size + tokens[:, 2])
    frequencies = np.bincount(codes, minlength=9) / num_samples
    every_completion = jnp.array([[1, a, b] for a in range(3) for b in range(3)], jnp.int32)
    row_mask = np.array([[False, True, True]] * 9)
    probabilities = np.exp(exact_logprob_random_order(logits_fn_of(params), every_completion, row_mask,
                                                      sequence.mask_id(config)))
    np.testing.assert_allclose(probabilities.sum(), 1.0, atol=1e-5)
    assert np.max(np.abs(frequencies - probabilities)) < 0.012, (frequencies, probabilities)
    assert np.max(probabilities) > 0.2  # the check is not against a near-uniform distribution


def test_sequence_fpo_step_beta_zero_is_baseline_and_beta_moves_params():
    """FPO-for-dLLMs in a population step: a member at traced beta 0 is bit-for-bit the baseline step of its
    seed, a member at beta > 0 moves its parameters elsewhere; metrics finite.

    The bound gap is the Jensen gap of the exact ELBO, so it is >= 0 for every seed.
    """
    config = sequence.SequenceConfig(algo="fpo")
    baseline_state, metrics, population_state = _population_beta_zero_is_baseline(sequence, config, 0.05)
    second = lambda tree: jax.tree.map(lambda x: x[1], tree)  # noqa: E731
    assert _max_abs_param_difference(second(baseline_state.params), second(population_state.params)) > 1e-5
    for name, value in metrics.items():
        assert np.all(np.isfinite(value)), name
    assert np.all(metrics["bound_gap"] >= -1e-5)


def test_sequence_spg_step_dipod_moves_params():
    """SPG: the DiPOD term changes the update (beta = 0.05 vs 0), and the metrics are finite."""
    config = sequence.SequenceConfig(algo="spg")
    state = sequence.init_seed_batch(jnp.arange(NUM_SEEDS), config)
    baseline_state, metrics = sequence.make_seed_batched_step(config, 0.0)(state)
    dipod_state, _ = sequence.make_seed_batched_step(config, 0.05)(state)
    assert _max_abs_param_difference(baseline_state.params, dipod_state.params) > 1e-5
    for name, value in metrics.items():
        assert np.all(np.isfinite(value)), name
