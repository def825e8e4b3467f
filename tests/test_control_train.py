"""Continuous-control trainer on the tiny pure-JAX environment: envs, normalisation, rollout, make_train."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax import losses
from dipod_jax.control import normalization
from dipod_jax.control.configs import TrainConfig, preset_config
from dipod_jax.control.envs import TINY_POINT_TARGET, make_environment, make_point_target
from dipod_jax.control.rollout import init_rollout_state, rollout
from dipod_jax.control.train import make_train, values_from_next_values
from dipod_jax.run.config import ConfigError

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

TINY = TINY_POINT_TARGET


def tiny_config(**overrides):
    return preset_config(TINY, **overrides)


def test_running_stats_merge_equals_full_batch():
    """Identity: merging two batches gives the mean / variance of their concatenation; normalised data has
    zero mean and unit variance; empty statistics normalise as the identity."""
    data = jax.random.normal(jax.random.key(0), (50, 3)) * jnp.array([1.0, 5.0, 0.1]) + 2.0
    stats = normalization.init_running_stats(3)
    np.testing.assert_array_equal(normalization.normalize(stats, data), data)
    stats = normalization.update_running_stats(stats, data[:20].reshape(4, 5, 3))
    stats = normalization.update_running_stats(stats, data[20:])
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats.m2 / stats.count, data.var(0), rtol=1e-4)
    normalized = normalization.normalize(stats, data)
    np.testing.assert_allclose(normalized.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalized.std(0), 1.0, rtol=1e-4)


def test_point_target_env_dynamics_and_termination():
    """Known dynamics: position moves by speed * action, reward = 1 - mean squared distance, done outside radius."""
    env = make_point_target(action_size=2, speed=0.5, termination_radius=1.0)
    state = env.reset(jax.random.key(0))
    chex.assert_shape(state.obs, (4,))
    next_state = env.step(state, jnp.array([1.0, -1.0]))
    np.testing.assert_allclose(next_state.position, state.position + jnp.array([0.5, -0.5]), rtol=1e-6)
    np.testing.assert_allclose(next_state.reward, 1.0 - jnp.mean((state.target - next_state.position) ** 2),
                               rtol=1e-6)
    far = env.step(next_state._replace(position=jnp.array([0.9, 0.0])), jnp.array([1.0, 0.0]))
    assert float(far.done) == 1.0 and float(next_state.done) == 0.0


def test_unknown_env_lists_valid_names():
    """An unknown name fails at once, naming the valid environments."""
    with pytest.raises(ValueError, match="CartpoleBalance"):
        make_environment("NoSuchEnv")


def test_config_validation_names_the_field():
    """Bad settings raise ConfigError (a ValueError) naming the field when the TrainConfig is constructed, so
    no invalid configuration exists; dataclasses.replace checks again."""
    for fields, field in ((dict(algo="sac"), "algo"), (dict(num_envs=7), "num_envs"),
                          (dict(dipod_beta=-0.1), "dipod_beta"), (dict(algo="ppo", sd_init_iterations=3), "algo"),
                          (dict(cfm_reduction="max"), "cfm_reduction"), (dict(cfm_huber_delta=0.0), "cfm_huber_delta"),
                          (dict(advantage_clamp=(1.0, -1.0)), "advantage_clamp"),
                          (dict(advantage_normalization="batch"), "advantage_normalization"),
                          (dict(timeout_bootstrap="zero"), "timeout_bootstrap"),
                          (dict(adam_betas=(0.9, 1.0)), "adam_betas"),
                          (dict(weight_decay=-1e-4), "weight_decay"), (dict(loss_clamp=0.0), "loss_clamp"),
                          (dict(clip_eps="wide"), "clip_eps"), (dict(actor_hidden=("a",)), "actor_hidden")):
        with pytest.raises(ConfigError, match=f"^{field}: ") as raised:
            TrainConfig(**fields)
        assert raised.value.field == field
    with pytest.raises(ConfigError, match="num_envs"):
        dataclasses.replace(TrainConfig(), num_envs=7)


def test_algorithm_presets_carry_the_release_values():
    """ALGORITHM_PRESETS are the FPO++ release's IsaacLab configurations: rl_cfg.py's defaults (16 epochs,
    4 minibatches, 24 steps per env, lr 1e-4, AdamW 1e-4, gamma 0.99, lambda 0.95, clip 0.05, ASPO, 16 samples,
    sqrt reduction, CFM-loss clamp 20, negative-advantage clamp 20, log-ratio clamp 10, advantage clamp
    (100, 100), Beta(1, 1) tau, 64 sampling steps, value_loss_coef 1 x MSE, advantages normalised over the
    rollout) with the locomotion networks, and task_cfgs.py's G1 motion tracking (48 steps, 6 minibatches, clip
    0.01, betas (0.9, 0.95), mean reduction, no CFM-loss clamp, log-ratio clamp 3, 1024-512-256 networks)."""
    base = preset_config(TINY, "fpo++_base")
    assert (base.algo, base.num_updates_per_batch, base.num_minibatches, base.rollout_length) == ("fpo++", 16, 4, 24)
    assert (base.learning_rate, base.weight_decay, base.adam_betas, base.max_grad_norm) == (1e-4, 1e-4,
                                                                                           (0.9, 0.999), 1.0)
    assert (base.discounting, base.gae_lambda, base.reward_scaling, base.value_loss_coef) == (0.99, 0.95, 1.0, 2.0)
    assert (base.clip_eps, base.trust_region, base.num_cfm_samples, base.cfm_variant) == (0.05, "aspo", 16,
                                                                                       "velocity")
    assert (base.cfm_reduction, base.cfm_loss_clamp, base.loss_clamp, base.log_ratio_clamp) == ("sqrt", 20.0,
                                                                                               20.0, 10.0)
    assert (base.advantage_clamp, base.tau_schedule, base.tau_beta_b, base.num_flow_steps) == ((100.0, 100.0),
                                                                                           "beta", 1.0, 64)
    assert base.resolved_advantage_normalization == "rollout" and base.output_scale == 1.0
    assert (base.actor_hidden, base.critic_hidden) == ((256, 256, 256), (768, 768, 768))
    tracking = preset_config(TINY, "fpo++_motion_tracking")
    assert (tracking.rollout_length, tracking.num_minibatches, tracking.clip_eps, tracking.adam_betas) == \
        (48, 6, 0.01, (0.9, 0.95))
    assert (tracking.cfm_reduction, tracking.cfm_loss_clamp, tracking.log_ratio_clamp) == ("mean", -1.0, 3.0)
    assert tracking.actor_hidden == tracking.critic_hidden == (1024, 512, 256)
    # The release's algorithm at the FPO reference layout (the control comparison's CPU preset): every field that
    # is neither layout nor network size is fpo++_base's, every layout / network field the TrainConfig default's.
    layout = preset_config("CartpoleBalance", "fpo++_reference_layout")
    reference, release = TrainConfig(), preset_config("CartpoleBalance", "fpo++_base")
    layout_fields = {"num_envs", "batch_size", "num_minibatches", "unroll_length", "num_updates_per_batch",
                     "actor_hidden", "critic_hidden", "num_flow_steps", "num_cfm_samples"}
    for field in dataclasses.fields(TrainConfig):
        expected = reference if field.name in layout_fields else release
        assert getattr(layout, field.name) == getattr(expected, field.name), field.name
    assert (layout.num_envs, layout.actor_hidden, layout.num_flow_steps) == (256, (32, 32, 32, 32), 10)
    with pytest.raises(ValueError, match="--preset=fpo\\+\\+_spot: unknown"):
        preset_config(TINY, "fpo++_spot")


@pytest.mark.parametrize("algo, normalization, bootstrap", [
    ("fpo", None, "next_value"), ("fpo++", None, "current_value"), ("fpo++", "minibatch", "next_value"),
    ("fpo", "none", "next_value")])
def test_release_switches_reach_gae_and_advantage_normalization(monkeypatch, algo, normalization, bootstrap):
    """The switches are wired as documented (traced only, nothing compiled): "rollout" (fpo++'s default)
    normalises the [T, E] advantages once with the unbiased std, "minibatch" (fpo's) each minibatch with the
    biased one, "none" never; timeout_bootstrap reaches GAE."""
    calls = []
    real_gae, real_normalize = losses.gae, losses.normalize_advantages

    def recording_gae(*args, **kwargs):
        calls.append(("gae", kwargs["truncation_bootstrap"]))
        return real_gae(*args, **kwargs)

    def recording_normalize(advantages, **kwargs):
        calls.append(("normalize", advantages.shape, kwargs.get("unbiased", False)))
        return real_normalize(advantages, **kwargs)

    monkeypatch.setattr(losses, "gae", recording_gae)
    monkeypatch.setattr(losses, "normalize_advantages", recording_normalize)
    config = tiny_config(algo=algo, advantage_normalization=normalization, timeout_bootstrap=bootstrap)
    trainer = make_train(config)
    jax.eval_shape(trainer.train_iteration, jax.eval_shape(trainer.init, jax.random.key(0)))
    expected = {"rollout": [("normalize", (config.rollout_length, config.num_envs), True)],
                "minibatch": [("normalize", (config.minibatch_transitions,), False)],
                "none": []}[config.resolved_advantage_normalization]
    assert calls == [("gae", bootstrap)] + expected


def test_rollout_auto_reset_truncation_and_episode_stats():
    """Time limits: every 3rd step is truncated and followed by the environment's first state; next_obs equals
    the following obs except at resets; completed-episode statistics count every ended episode."""
    env = make_point_target()
    state = init_rollout_state(env, jax.random.key(0), 4)
    act = lambda obs, key: (0.1 * jnp.ones((obs.shape[0], 2)), ())  # noqa: E731
    state, transitions, stats = jax.jit(lambda s, k: rollout(env, act, s, k, 7, 3))(state, jax.random.key(1))
    chex.assert_shape(transitions.obs, (7, 4, 4))
    expected_truncation = np.zeros((7, 4))
    expected_truncation[[2, 5]] = 1.0
    np.testing.assert_array_equal(transitions.truncation, expected_truncation)
    np.testing.assert_array_equal(transitions.termination, 0.0)
    first_obs = init_rollout_state(env, jax.random.key(0), 4).env_state.obs
    np.testing.assert_array_equal(transitions.obs[3], first_obs)
    np.testing.assert_array_equal(transitions.next_obs[:2], transitions.obs[1:3])
    assert not np.allclose(transitions.next_obs[2], transitions.obs[3])
    assert float(stats.count) == 8.0 and float(stats.length_sum) == 24.0
    np.testing.assert_allclose(stats.return_sum, jnp.sum(transitions.reward[:6]), rtol=1e-5)
    np.testing.assert_array_equal(state.episode_step, 1)


def test_values_from_next_values_matches_direct_evaluation():
    """Identity: V(s_t) rebuilt from V(s'_t), V(s_0) and V(reset obs) equals V evaluated on s_t directly,
    on a real auto-resetting rollout with terminations and truncations."""
    env = make_point_target(speed=1.0, termination_radius=1.2)
    state0 = init_rollout_state(env, jax.random.key(0), 5)
    act = lambda obs, key: (jax.random.normal(key, (obs.shape[0], 2)) * 2.0, ())  # noqa: E731
    _, transitions, _ = rollout(env, act, state0, jax.random.key(1), 12, 4)
    assert float(jnp.sum(transitions.termination)) > 0 and float(jnp.sum(transitions.truncation)) > 0
    value = lambda obs: jnp.sin(obs @ jnp.array([1.0, -2.0, 0.5, 3.0]))  # noqa: E731
    ended = jnp.maximum(transitions.termination, transitions.truncation)
    rebuilt = values_from_next_values(value(transitions.next_obs), value(transitions.obs[0]),
                                      value(state0.first_env_state.obs), ended)
    # The same function on the same observations, batched differently (tolerance for a GPU's kernel choice).
    np.testing.assert_allclose(rebuilt, value(transitions.obs), rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def fpo_runs():
    """Per beta in (0, 0.05): (trainer, jitted train_iteration, initial state, state and metrics after one FPO
    iteration), all from seed 0 (compiled once, shared by the tests below)."""
    results = {}
    for beta in (0.0, 0.05):
        trainer = make_train(tiny_config(algo="fpo", dipod_beta=beta))
        step = jax.jit(trainer.train_iteration)
        state = jax.jit(trainer.init)(jax.random.key(0))
        results[beta] = (trainer, step, state) + step(state)
    return results


# FPO++ at the release's base configuration (every loss option as the release sets it), shrunk to the tiny env.
RELEASE_FPO_PP_TINY = dict(num_envs=16, batch_size=16, num_updates_per_batch=2, actor_hidden=(32, 32),
                           critic_hidden=(32, 32), num_flow_steps=4, num_cfm_samples=4, num_eval_envs=16)


@pytest.mark.parametrize("algo", ["ppo", "fpo++"])
def test_train_iteration_shapes_and_finiteness(algo):
    """One iteration of ppo / fpo++ (the release's base preset, shrunk): finite scalar metrics, the env-step
    count advances by one batch, the first minibatch's ratio is 1 (so the mean ratio stays near 1), parameters
    change."""
    if algo == "ppo":
        config = tiny_config(algo=algo, dipod_beta=0.05)
    else:
        config = preset_config(TINY, "fpo++_base", dipod_beta=0.05, **RELEASE_FPO_PP_TINY)
    trainer = make_train(config)
    state = jax.jit(trainer.init)(jax.random.key(0))
    new_state, metrics = jax.jit(trainer.train_iteration)(state)
    for name, value in metrics.items():
        chex.assert_shape(value, (), custom_message=name)
        chex.assert_tree_all_finite(value)
    assert int(new_state.env_steps) == config.env_steps_per_iteration
    assert abs(float(metrics["ratio_mean"]) - 1.0) < 0.2
    assert float(metrics["dipod_term"]) != 0.0
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert all(jax.tree.leaves(changed))


def test_fpo_dipod_term_and_baseline(fpo_runs):
    """beta = 0: the DiPOD metric is exactly 0. beta > 0: the rollout is the same (same keys), the term equals
    beta times the on-policy CFM loss (identity per minibatch, so also of the means), and the update differs."""
    state0, metrics0 = fpo_runs[0.0][3:]
    state1, metrics1 = fpo_runs[0.05][3:]
    assert float(metrics0["dipod_term"]) == 0.0
    np.testing.assert_allclose(metrics1["dipod_term"], 0.05 * metrics1["cfm_loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics0["reward_mean"], metrics1["reward_mean"], rtol=1e-6)
    assert not np.allclose(jax.tree.leaves(state0.params["actor"])[0], jax.tree.leaves(state1.params["actor"])[0])


def test_fpo_beta_zero_is_bitwise_baseline(fpo_runs, monkeypatch):
    """beta = 0 equals the baseline bit for bit: the trainer with dipod_beta = 0 gives the same parameters as
    one whose FPO loss is the baseline call (a Python 0.0, which keeps the term out of the program)."""
    initial, expected_state = fpo_runs[0.0][2:4]
    baseline_fpo_loss = losses.fpo_loss

    def fpo_loss_without_dipod(l_old, l_new, advantages, clip_eps, trust_region, dipod_beta):
        assert dipod_beta == 0.0
        return baseline_fpo_loss(l_old, l_new, advantages, clip_eps, trust_region, dipod_beta=0.0)

    monkeypatch.setattr(losses, "fpo_loss", fpo_loss_without_dipod)
    trainer = make_train(tiny_config(algo="fpo", dipod_beta=0.0))
    state, _ = jax.jit(trainer.train_iteration)(initial)
    chex.assert_trees_all_equal(state.params, expected_state.params)


def test_fpo_dipod_improves_reward_on_tiny_env(fpo_runs):
    """Learning: FPO + DiPOD raises the zero-noise evaluation return on the point-target task by a wide margin
    (initial policy ~27 of a maximum 50; a policy that reaches the targets scores > 45)."""
    trainer, step, state = fpo_runs[0.05][:3]
    evaluate = jax.jit(trainer.evaluate)
    before = float(evaluate(state, jax.random.key(2))["eval_return_mean"])
    for _ in range(25):
        state, metrics = step(state)
    after = float(evaluate(state, jax.random.key(2))["eval_return_mean"])
    assert int(state.iteration) == 25
    assert after > before + 10.0 and after > 45.0, (before, after)


def test_vmap_over_seeds_matches_single_seed_runs(fpo_runs):
    """make_train's functions vmap over seeds: vmapped seed 0 reproduces the single-seed run of seed 0, and
    seed 1 differs from it."""
    trainer, _, _, expected_state, _ = fpo_runs[0.0]
    states = jax.jit(jax.vmap(trainer.init))(jax.vmap(jax.random.key)(jnp.array([0, 1])))
    states, metrics = jax.jit(jax.vmap(trainer.train_iteration))(states)
    chex.assert_shape(metrics["total_loss"], (2,))
    chex.assert_trees_all_close(expected_state.params, jax.tree.map(lambda x: x[0], states.params),
                                rtol=1e-4, atol=1e-5)
    first_leaf = jax.tree.leaves(states.params)[0]
    assert not np.allclose(first_leaf[0], first_leaf[1])


def test_interleaved_self_distillation():
    """Interleaved self-distillation runs exactly every sd_every iterations (sd_loss > 0 only there), lowers the
    student's CFM loss on the teacher's own samples over its steps, and counts its env steps."""
    config = tiny_config(algo="fpo", sd_every=2, sd_interleaved_iterations=30, sd_batch_size=1024,
                         sd_env_steps=2, sd_learning_rate=3e-3)
    trainer = make_train(config)
    step = jax.jit(trainer.train_iteration)
    state, first = step(jax.jit(trainer.init)(jax.random.key(0)))
    state, second = step(state)
    assert float(first["sd_loss"]) == 0.0 and float(second["sd_loss"]) > 0.0
    assert float(second["sd_loss"]) < float(second["sd_loss_first"])
    assert int(state.env_steps) == 2 * config.env_steps_per_iteration + 30 * 2 * config.num_envs
