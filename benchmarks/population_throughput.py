"""Throughput of a population vmapped on one device against the same members trained one after the other.

    python -m benchmarks.population_throughput [--config.env_name=CartpoleBalance] [--population_sizes=4,8]
    python -m benchmarks.population_throughput --config.num_envs=256 --population_sizes=16   # e.g. on a GPU

Details: docs/modules.md, section benchmarks.population_throughput.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax
from absl import flags

from dipod_jax.control.configs import TrainConfig, config_from_flags
from dipod_jax.control.envs import make_environment
from dipod_jax.control.population import Members, make_population_train, member_config
from dipod_jax.control.train import make_train
from dipod_jax.run.config import define_config_flag, flag_overrides
from dipod_jax.run.program import UsageError, run_program, user_errors

FLAGS = flags.FLAGS
BETAS = (0.0, 0.05)


def population_members(size: int) -> Members:
    """Seeds 0 .. size - 1, beta alternating over BETAS."""
    return Members(seeds=tuple(range(size)), dipod_beta=tuple(BETAS[index % 2] for index in range(size)))


def measure(config: TrainConfig, env, size: int, timed_rounds: int) -> dict[str, object]:
    """Median seconds of one population iteration and of P sequential single-run iterations, and the rates."""
    members = population_members(size)
    population = make_population_train(config, members, env)
    population_state = population.init()
    single = {}  # one compiled single run per distinct member config
    states = []
    for index, seed in enumerate(members.seeds):
        config_i = member_config(config, members, index)
        if config_i not in single:
            trainer = make_train(config_i, env)
            single[config_i] = (jax.jit(trainer.init), jax.jit(trainer.train_iteration))
        init, step = single[config_i]
        states.append((step, init(jax.random.key(seed))))
    population_state, _ = population.iterate(population_state)  # compile
    jax.block_until_ready(population_state)
    states = [(step, step(state)[0]) for step, state in states]  # compile
    jax.block_until_ready([state for _, state in states])
    vmapped, sequential = [], []
    for _ in range(timed_rounds):
        start = time.perf_counter()
        population_state, metrics = population.iterate(population_state)
        jax.block_until_ready(metrics)
        vmapped.append(time.perf_counter() - start)
        start = time.perf_counter()
        new_states = []
        for step, state in states:
            state, metrics = step(state)
            jax.block_until_ready(metrics)
            new_states.append((step, state))
        states = new_states
        sequential.append(time.perf_counter() - start)
    steps = size * config.env_steps_per_iteration
    vmapped_rate = steps / statistics.median(vmapped)
    sequential_rate = steps / statistics.median(sequential)
    return {"population_size": size, "vmapped_member_env_steps_per_s": vmapped_rate,
            "sequential_member_env_steps_per_s": sequential_rate,
            "vmapped_over_sequential": vmapped_rate / sequential_rate,
            "vmapped_round_s": vmapped, "sequential_round_s": sequential}


def main(argv):
    del argv
    sizes = [int(size) for size in FLAGS.population_sizes]
    if not sizes or min(sizes) < 1:
        raise UsageError(f"--population_sizes must be integers >= 1, got {FLAGS.population_sizes}")
    if FLAGS.timed_rounds < 3:
        raise UsageError(f"--timed_rounds must be >= 3, got {FLAGS.timed_rounds}")
    with user_errors():
        config = config_from_flags(None, {"algo": "fpo", **flag_overrides()})
    env = make_environment(config.env_name)
    results = []
    for size in sizes:
        results.append(measure(config, env, size, FLAGS.timed_rounds))
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"results": results, "config": {
        "env": config.env_name, "num_envs": config.num_envs, "env_steps_per_iteration": config.env_steps_per_iteration,
        "overrides": flag_overrides(), "betas": list(BETAS), "timed_rounds": FLAGS.timed_rounds,
        "device": str(jax.devices()[0]), "os_cpu_count": os.cpu_count(), "machine": platform.machine()}}))
    return 0


def define_flags() -> None:
    """Register the command-line flags (only when run as a program)."""
    flags.DEFINE_list("population_sizes", ["4", "8"], "Population sizes P to measure.")
    flags.DEFINE_integer("timed_rounds", 3, "Timed rounds per size (median reported; >= 3).")
    define_config_flag(TrainConfig())


if __name__ == "__main__":
    define_flags()
    run_program(main)
