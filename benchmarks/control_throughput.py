"""Throughput of the full continuous-control training loop (rollout + every update epoch), compile excluded.

    python -m benchmarks.control_throughput [--env=CartpoleBalance] [--timed_iterations=5]
    python -m benchmarks.control_throughput --layout=paper --variants=fpo,fpo_dipod    # the GPU comparison

Details: docs/modules.md, section benchmarks.control_throughput.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from benchmarks.timing import matmul_gflops_per_s, time_call
from dipod_jax.control.configs import TrainConfig, preset_config
from dipod_jax.control.envs import make_environment
from dipod_jax.control.train import make_train
from dipod_jax.run.program import UsageError, check_flag_choices, run_program, user_errors

FLAGS = flags.FLAGS

VARIANTS = {"ppo": dict(algo="ppo"), "fpo": dict(algo="fpo"), "fpo_dipod": dict(algo="fpo"),
            "fpo++": dict(algo="fpo++")}
LAYOUT_FIELDS = ("num_envs", "batch_size", "num_minibatches", "unroll_length", "num_updates_per_batch")
LAYOUTS = {
    "reference": dict(num_envs=256, batch_size=256, num_minibatches=8, unroll_length=30, num_updates_per_batch=4),
    "paper": dict(num_envs=2048, batch_size=1024, num_minibatches=32, unroll_length=30, num_updates_per_batch=16),
}


def define_flags() -> None:
    """Register the flags; called only when run as a program, so importing this module defines none."""
    flags.DEFINE_string("env", "CartpoleBalance", "Environment name (see dipod_jax.control.envs).")
    flags.DEFINE_enum("layout", "reference", sorted(LAYOUTS), "Batch layout (module docstring).")
    for field in LAYOUT_FIELDS:
        flags.DEFINE_integer(field, 0, f"Override the layout's {field} (0 = the layout's).", lower_bound=0)
    flags.DEFINE_list("variants", list(VARIANTS), f"Variants to time, from {list(VARIANTS)}.")
    flags.DEFINE_integer("timed_iterations", 5, "Timed iterations per algorithm (median reported; >= 3).",
                         lower_bound=3)
    flags.DEFINE_float("dipod_beta", 0.05, "beta of the fpo_dipod variant.")
    flags.DEFINE_bool("split", True, "Also time one-epoch iterations to split rollout and update time.")
    flags.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of one iteration per variant here.")
    flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matrices of the matmul-rate probe.",
                         lower_bound=1)


def layout_fields(layout: str, overrides: dict[str, int]) -> dict[str, int]:
    """The layout's batch fields with the non-zero overrides applied; UsageError naming a bad flag."""
    if layout not in LAYOUTS:
        raise UsageError(f"--layout={layout} must be one of {sorted(LAYOUTS)}")
    fields = dict(LAYOUTS[layout])
    for name, value in overrides.items():
        if value < 0:
            raise UsageError(f"--{name}={value} must be >= 0 (0 = the layout's)")
        if value:
            fields[name] = value
    return fields


def variant_configs(env_name: str, fields: dict[str, int], variants: Sequence[str],
                    dipod_beta: float) -> dict[str, TrainConfig]:
    """{variant: TrainConfig} on the layout; UsageError naming the flag for bad variants or beta, or the
    TrainConfig field a layout breaks."""
    check_flag_choices("variants", variants, VARIANTS)
    if "fpo_dipod" in variants and not 0 < dipod_beta < float("inf"):
        raise UsageError(f"--dipod_beta={dipod_beta} must be > 0 (it defines the fpo_dipod variant)")
    with user_errors():
        return {name: preset_config(env_name, dipod_beta=dipod_beta if name == "fpo_dipod" else 0.0,
                                    **VARIANTS[name], **fields) for name in variants}


def mlp_flops(widths: Sequence[int]) -> int:
    """Forward multiply-add FLOPs of one sample through dense layers widths[0] -> ... -> widths[-1]."""
    return sum(2 * fan_in * fan_out for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True))


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


def compile_variant(config: TrainConfig, env):
    """(jitted train_iteration, state after one compile-and-warm-up call, seconds of that first call)."""
    trainer = make_train(config, env)
    state = jax.jit(trainer.init)(jax.random.key(0))
    step = jax.jit(trainer.train_iteration)
    seconds, (state, _) = time_call(step, state)
    return step, state, seconds


def time_variants(configs: dict[str, TrainConfig], env, timed_iterations: int) -> dict[str, dict[str, float]]:
    """Median seconds of an iteration of each configuration; the timed iterations are interleaved (one round
    times each configuration once) so that a drifting machine load affects all of them alike."""
    compiled = {name: compile_variant(config, env) for name, config in configs.items()}
    states = {name: state for name, (_, state, _) in compiled.items()}
    durations = {name: [] for name in configs}
    for _ in range(timed_iterations):
        for name, (step, _, _) in compiled.items():
            seconds, (states[name], _) = time_call(step, states[name])
            durations[name].append(seconds)
    return {name: {"median_iteration_s": statistics.median(durations[name]), "iteration_s": durations[name],
                   "first_call_s": compiled[name][2]} for name in configs}


def split_seconds(full_s: float, one_epoch_s: float, epochs: int) -> dict[str, float]:
    """Rollout and update seconds of an iteration from its time with `epochs` and with one epoch:
    t_E = R + E U and t_1 = R + U."""
    update_epoch_s = (full_s - one_epoch_s) / (epochs - 1)
    rollout_s = full_s - epochs * update_epoch_s
    return {"rollout_s": rollout_s, "update_s": epochs * update_epoch_s, "update_epoch_s": update_epoch_s,
            "rollout_fraction": rollout_s / full_s}


def profile(configs: dict[str, TrainConfig], env, directory: str) -> None:
    """A jax.profiler trace of one (compiled) iteration of each configuration, under directory/<variant>."""
    for name, config in configs.items():
        step, state, _ = compile_variant(config, env)
        with jax.profiler.trace(os.path.join(directory, name)):
            jax.block_until_ready(step(state))


def main(argv):
    del argv
    fields = layout_fields(FLAGS.layout, {name: FLAGS[name].value for name in LAYOUT_FIELDS})
    configs = variant_configs(FLAGS.env, fields, FLAGS.variants, FLAGS.dipod_beta)
    epochs = fields["num_updates_per_batch"]
    if FLAGS.split and epochs < 2:
        raise UsageError(f"--split needs --num_updates_per_batch >= 2 (it compares with a one-epoch iteration), "
                         f"got {epochs}")
    with user_errors():
        env = make_environment(FLAGS.env)
    timed = dict(configs)
    if FLAGS.split:
        timed.update({f"{name}/one_epoch": dataclasses.replace(config, num_updates_per_batch=1)
                      for name, config in configs.items()})
    timings = time_variants(timed, env, FLAGS.timed_iterations)
    results: dict[str, Any] = {}
    for name, config in configs.items():
        median_s = timings[name]["median_iteration_s"]
        flops = iteration_flops(config, env.observation_size, env.action_size)
        results[name] = {"env_steps_per_s": config.env_steps_per_iteration / median_s,
                         "gflops_per_s": flops / median_s / 1e9, "gflop_per_iteration": flops / 1e9,
                         **timings[name]}
        if FLAGS.split:
            results[name].update(split_seconds(median_s, timings[f"{name}/one_epoch"]["median_iteration_s"], epochs))
            results[name]["one_epoch_iteration_s"] = timings[f"{name}/one_epoch"]["iteration_s"]
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if FLAGS.profile_dir:
        profile(configs, env, FLAGS.profile_dir)
    results["matmul_gflops_per_s"] = matmul_gflops_per_s(FLAGS.matmul_size)
    if "fpo" in results and "fpo_dipod" in results:
        results["dipod_overhead_fraction"] = (results["fpo"]["env_steps_per_s"]
                                              / results["fpo_dipod"]["env_steps_per_s"] - 1.0)
    reference = next(iter(configs.values()))
    results["config"] = {
        "env": FLAGS.env, "layout": FLAGS.layout, **fields, "num_flow_steps": reference.num_flow_steps,
        "num_cfm_samples": reference.num_cfm_samples, "actor_hidden": list(reference.actor_hidden),
        "critic_hidden": list(reference.critic_hidden), "env_steps_per_iteration": reference.env_steps_per_iteration,
        "timed_iterations": FLAGS.timed_iterations, "dipod_beta": FLAGS.dipod_beta,
        "device": str(jax.devices()[0]), "os_cpu_count": os.cpu_count(), "machine": platform.machine(),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    define_flags()
    run_program(main)
