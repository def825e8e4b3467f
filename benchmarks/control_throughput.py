"""Throughput of the full continuous-control training loop (rollout + every update epoch), compile excluded.

    python -m benchmarks.control_throughput [--env=CartpoleBalance] [--timed_iterations=5]

For ppo, fpo, fpo with dipod_beta > 0 and fpo++ at the FPO reference configuration (256 envs, batch 256,
8 minibatches, unroll 30, 4 updates per batch, 10 flow steps, 8 (tau, eps) samples, actor 4x32, critic 5x256),
times single jitted `train_iteration` calls (interleaved across variants) and reports the median env-steps/s.
It counts the dense-layer (matrix-multiply) FLOPs of one iteration analytically and reports the GFLOP/s
achieved beside the float32 matrix-multiply rate measured on this machine. The last line of output is one JSON object.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from typing import Dict, Sequence

import jax
import jax.numpy as jnp
from absl import flags

from dipod_jax.control.configs import TrainConfig, preset_config
from dipod_jax.control.envs import make_environment
from dipod_jax.control.train import make_train
from dipod_jax.run.program import UsageError, run_program, user_errors

FLAGS = flags.FLAGS
flags.DEFINE_string("env", "CartpoleBalance", "Environment name (see dipod_jax.control.envs).")
flags.DEFINE_integer("timed_iterations", 5, "Timed iterations per algorithm (median reported; >= 3).")
flags.DEFINE_float("dipod_beta", 0.05, "beta of the fpo_dipod variant.")
flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matrices of the matmul-rate probe.",
                     lower_bound=1)

VARIANTS = {"ppo": dict(algo="ppo"), "fpo": dict(algo="fpo"), "fpo_dipod": dict(algo="fpo"),
            "fpo++": dict(algo="fpo++")}


def mlp_flops(widths: Sequence[int]) -> int:
    """Forward multiply-add FLOPs of one sample through dense layers widths[0] -> ... -> widths[-1]."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:]))


def iteration_flops(config: TrainConfig, obs_size: int, action_size: int) -> int:
    """Dense-layer FLOPs of one training iteration (a backward pass counted as twice its forward).

    Rollout: K sampler steps plus N stored-sample CFM losses per flow action (one forward for a Gaussian).
    Advantages: one critic forward per transition (the reached s'), plus 2 per environment (start, reset).
    Updates: per transition and epoch, N actor forward+backward passes (one for a Gaussian) and one critic
    forward+backward pass. Elementwise work and the physics are not counted.
    """
    critic = mlp_flops((obs_size,) + config.critic_hidden + (1,))
    transitions = config.env_steps_per_iteration
    if config.is_flow:
        actor = mlp_flops((obs_size + action_size + config.time_embed_dim,) + config.actor_hidden
                          + (action_size,))
        rollout = (config.num_flow_steps + config.num_cfm_samples) * actor
        update = 3 * config.num_cfm_samples * actor + 3 * critic
    else:
        actor = mlp_flops((obs_size,) + config.actor_hidden + (2 * action_size,))
        rollout = actor
        update = 3 * actor + 3 * critic
    return transitions * (rollout + critic + config.num_updates_per_batch * update) + 2 * config.num_envs * critic


def matmul_gflops_per_s(size: int, repeats: int = 5) -> float:
    """Median float32 GFLOP/s of a jitted size x size matrix product on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def compile_variant(config: TrainConfig, env):
    """(jitted train_iteration, state after one compile-and-warm-up call, seconds of that first call)."""
    trainer = make_train(config, env)
    state = jax.jit(trainer.init)(jax.random.key(0))
    step = jax.jit(trainer.train_iteration)
    start = time.perf_counter()
    state, metrics = step(state)
    jax.block_until_ready(metrics)
    return step, state, time.perf_counter() - start


def time_variants(configs: Dict[str, TrainConfig], env, timed_iterations: int) -> Dict[str, Dict[str, float]]:
    """Median env-steps/s of each variant; the timed iterations are interleaved across variants (one round
    times each variant once) so that a drifting machine load affects all of them alike."""
    compiled = {name: compile_variant(config, env) for name, config in configs.items()}
    states = {name: state for name, (_, state, _) in compiled.items()}
    durations = {name: [] for name in configs}
    for _ in range(timed_iterations):
        for name, (step, _, _) in compiled.items():
            start = time.perf_counter()
            states[name], metrics = step(states[name])
            jax.block_until_ready(metrics)
            durations[name].append(time.perf_counter() - start)
    results = {}
    for name, config in configs.items():
        median_s = statistics.median(durations[name])
        flops = iteration_flops(config, env.observation_size, env.action_size)
        results[name] = {"env_steps_per_s": config.env_steps_per_iteration / median_s,
                         "gflops_per_s": flops / median_s / 1e9, "gflop_per_iteration": flops / 1e9,
                         "median_iteration_s": median_s, "iteration_s": durations[name],
                         "first_call_s": compiled[name][2]}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    return results


def main(argv):
    del argv
    if FLAGS.timed_iterations < 3:
        raise UsageError(f"--timed_iterations must be >= 3, got {FLAGS.timed_iterations}")
    if not 0 < FLAGS.dipod_beta < float("inf"):
        raise UsageError(f"--dipod_beta must be > 0 (it defines the fpo_dipod variant), got {FLAGS.dipod_beta}")
    with user_errors():
        env = make_environment(FLAGS.env)
    configs = {name: preset_config(FLAGS.env, dipod_beta=FLAGS.dipod_beta if name == "fpo_dipod" else 0.0,
                                   **overrides) for name, overrides in VARIANTS.items()}
    results = time_variants(configs, env, FLAGS.timed_iterations)
    reference = preset_config(FLAGS.env)
    results["matmul_gflops_per_s"] = matmul_gflops_per_s(FLAGS.matmul_size)
    results["dipod_overhead_fraction"] = (results["fpo"]["env_steps_per_s"]
                                          / results["fpo_dipod"]["env_steps_per_s"] - 1.0)
    results["config"] = {
        "env": FLAGS.env, "num_envs": reference.num_envs, "batch_size": reference.batch_size,
        "num_minibatches": reference.num_minibatches, "unroll_length": reference.unroll_length,
        "num_updates_per_batch": reference.num_updates_per_batch, "num_flow_steps": reference.num_flow_steps,
        "num_cfm_samples": reference.num_cfm_samples, "actor_hidden": list(reference.actor_hidden),
        "critic_hidden": list(reference.critic_hidden), "env_steps_per_iteration": reference.env_steps_per_iteration,
        "timed_iterations": FLAGS.timed_iterations, "dipod_beta": FLAGS.dipod_beta,
        "device": str(jax.devices()[0]), "os_cpu_count": os.cpu_count(), "machine": platform.machine(),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    run_program(main)
