"""Smoke tests of the trainer on real environments: MuJoCo Playground (CartpoleBalance, impl jax) and brax.envs
(mjx)."""
import chex
import jax
import pytest

from dipod_jax.control.configs import preset_config
from dipod_jax.control.envs import make_environment
from dipod_jax.control.train import make_train

pytestmark = pytest.mark.integration


def test_cartpole_balance_fpo_iteration_and_evaluation():
    """On Playground's CartpoleBalance (5 observations, 1 action): one FPO + DiPOD iteration with tiny sizes
    gives finite metrics, takes the configured number of env steps, ends every episode at the time limit
    and sees per-step rewards within the task's [0, 1] range (evaluation is covered on the tiny env)."""
    env = make_environment("CartpoleBalance")
    assert (env.observation_size, env.action_size) == (5, 1)
    config = preset_config("CartpoleBalance", algo="fpo", dipod_beta=0.05, num_envs=4, batch_size=4,
                           num_minibatches=2, unroll_length=4, num_updates_per_batch=1, episode_length=6,
                           actor_hidden=(8,), critic_hidden=(8,), num_flow_steps=2, num_cfm_samples=2,
                           num_eval_envs=2)
    trainer = make_train(config, env)
    state = jax.jit(trainer.init)(jax.random.key(0))
    state, metrics = jax.jit(trainer.train_iteration)(state)
    chex.assert_tree_all_finite(metrics)
    assert int(state.env_steps) == 32
    assert float(metrics["episodes_ended"]) == 4.0  # 8 steps per env, time limit 6
    assert 0.0 <= float(metrics["reward_mean"]) <= 1.0
    assert 0.0 <= float(metrics["episode_return"]) <= 6.0


def test_brax_inverted_pendulum_ppo_iteration():
    """On brax.envs' inverted_pendulum (backend mjx; 4 observations, 1 action): one PPO + DiPOD iteration with
    tiny sizes gives finite metrics, takes the configured number of env steps, and the pendulum's alive reward
    (1 per step) shows up as the per-step reward mean."""
    env = make_environment("brax/inverted_pendulum")
    assert (env.observation_size, env.action_size) == (4, 1)
    config = preset_config("brax/inverted_pendulum", algo="ppo", dipod_beta=0.05, num_envs=4, batch_size=4,
                           num_minibatches=2, unroll_length=4, num_updates_per_batch=1, episode_length=6,
                           actor_hidden=(8,), critic_hidden=(8,), num_eval_envs=2)
    trainer = make_train(config, env)
    state = jax.jit(trainer.init)(jax.random.key(0))
    state, metrics = jax.jit(trainer.train_iteration)(state)
    chex.assert_tree_all_finite(metrics)
    assert int(state.env_steps) == 32
    assert 0.0 < float(metrics["reward_mean"]) <= 1.0
