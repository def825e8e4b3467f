"""Continuous-control training: PPO, FPO, FPO++ with the DiPOD term, several seeds vmapped in one program.

    python -m experiments.control --config.env_name=CartpoleBalance --config.algo=fpo --config.dipod_beta=0.05 \\
        --seed=0 --num_seeds=3 --num_timesteps=5000000 --workdir=/tmp/runs/fpo_dipod
    python -m experiments.control ... --resume          # continue bit-exactly from the last checkpoint
    python -m experiments.control ... --config.learning_rate=1e-3 --config.actor_hidden="(64, 64)"
    python -m experiments.control --preset=fpo++_base ...   # FPO++ as the release runs it

Details: docs/modules.md, section experiments.control.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import jax
import numpy as np
from absl import flags

from dipod_jax.control.configs import ALGORITHM_PRESETS, TrainConfig, config_from_flags, validate_periods
from dipod_jax.control.envs import make_environment
from dipod_jax.control.train import make_train
from dipod_jax.run.config import define_config_flag, flag_overrides
from dipod_jax.run.files import METRICS_FILE
from dipod_jax.run.harness import (
    COMPLETED,
    Run,
    episode_returns,
    non_finite,
    progress_bar,
    rolling_episode_return,
)
from dipod_jax.run.program import UsageError, finish_run, run_program, user_errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    define_config_flag(TrainConfig())
    flags.DEFINE_enum("preset", None, sorted(ALGORITHM_PRESETS), "Algorithm configuration of a release "
                      "(ALGORITHM_PRESETS), applied over the environment's preset and under the --config.<field>s.")
    flags.DEFINE_integer("seed", 0, "First seed; seeds seed .. seed + num_seeds - 1 are trained together.")
    flags.DEFINE_integer("num_seeds", 1, "Seeds vmapped in one program.")
    flags.DEFINE_integer("num_timesteps", 5_000_000, "Environment steps per seed (rounded up to whole calls).")
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_integer("iterations_per_call", 1, "Training iterations fused into one jitted host call.")
    flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_integer("eval_every", 10, "Evaluation period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _validate_periods(iterations_per_call: int, checkpoint_every: int, eval_every: int, num_seeds: int,
                      num_timesteps: int) -> None:
    """validate_periods (dipod_jax.control.configs) and --num_seeds >= 1."""
    validate_periods(iterations_per_call, checkpoint_every, eval_every, num_timesteps)
    if num_seeds < 1:
        raise UsageError(f"--num_seeds must be >= 1, got {num_seeds}")


def _host_metrics(metrics: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in metrics.items()}


def plot_learning_curve(jsonl_path: str, png_path: str, title: str) -> None:
    """Eval return against env steps: mean over seeds with a min-max band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step: dict[int, list[float]] = {}
    with open(jsonl_path) as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("kind") == "eval":
                by_step.setdefault(record["env_steps"], []).append(record["eval_return_mean"])
    if not by_step:
        return
    steps = np.array(sorted(by_step))
    returns = [np.array(by_step[s]) for s in steps]
    mean = np.array([r.mean() for r in returns])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, mean, label="mean over seeds")
    axis.fill_between(steps, [r.min() for r in returns], [r.max() for r in returns], alpha=0.3, label="min-max")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("eval return (deterministic policy)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


@functools.lru_cache(maxsize=4)
def compiled_functions(config: TrainConfig, env, iterations_per_call: int):
    """Jitted, seed-vmapped (init, train_chunk, evaluate) for a config; cached so that a resumed run in the same
    process (and the resume test) reuses the compiled programs."""
    trainer = make_train(config, env)
    init = jax.jit(jax.vmap(trainer.init))
    train_chunk = jax.jit(jax.vmap(lambda s: trainer.train_iterations(s, iterations_per_call)))
    evaluate = jax.jit(jax.vmap(trainer.evaluate))
    return init, train_chunk, evaluate


def run_record(config: TrainConfig, seed: int, num_seeds: int, iterations_per_call: int) -> dict[str, Any]:
    """The run record (config.json): every setting that changes the results; a resumed run must match it."""
    return {"train_config": dataclasses.asdict(config), "seed": seed, "num_seeds": num_seeds,
            "iterations_per_call": iterations_per_call}


def run(config: TrainConfig, workdir: str, seed: int = 0, num_seeds: int = 1, num_timesteps: int = 1,
        iterations_per_call: int = 1, checkpoint_every: int = 10, eval_every: int = 10, resume: bool = False,
        progress: bool = True, env=None) -> tuple[Any, dict[str, Any]]:
    """Train `num_seeds` seeds of `config` together, logging and checkpointing under `workdir`.

    Returns:
      (final batched TrainState with leading axis num_seeds, summary {"step": iterations done, "stopped":
      "completed", "signal" or "non_finite", and the stop's fields (`dipod_jax.run.harness`)}). A non-finite
      loss, gradient norm or parameters stop the run before that host call's state is kept.

    Raises:
      UsageError (a ValueError), before anything is compiled: bad periods, a workdir holding
        another run without `resume`, `resume` with nothing to resume or with a different config.
    """
    with user_errors():
        _validate_periods(iterations_per_call, checkpoint_every, eval_every, num_seeds, num_timesteps)
        harness_run = Run(workdir, experiment="control", record_file="config.json",
                          record=run_record(config, seed, num_seeds, iterations_per_call), resume=resume,
                          flag="--workdir", keep=3, step_key="iteration", tensorboard_dir="tensorboard")
    with harness_run:
        return _train(harness_run, config, workdir, seed, num_seeds, num_timesteps, iterations_per_call,
                      checkpoint_every, eval_every, progress, env)


def _train(harness_run: Run, config: TrainConfig, workdir: str, seed: int, num_seeds: int, num_timesteps: int,
           iterations_per_call: int, checkpoint_every: int, eval_every: int, progress: bool,
           env) -> tuple[Any, dict[str, Any]]:
    seeds = np.arange(seed, seed + num_seeds)
    init, train_chunk, evaluate = compiled_functions(config, env or make_environment(config.env_name),
                                                     iterations_per_call)
    state = init(jax.vmap(jax.random.key)(seeds))
    done_iterations, restored = harness_run.restore_if_resuming({"state": state})
    state = restored["state"]
    log = harness_run.start(done_iterations)

    total_iterations = iterations_per_call * math.ceil(
        num_timesteps / (config.env_steps_per_iteration * iterations_per_call))
    bar = progress_bar(total_iterations, done_iterations, progress, None, unit="it")
    returns_history: list[tuple[float, float]] = []  # (mean return, episodes ended) per iteration
    start_time = time.perf_counter()
    iterations_at_start = done_iterations
    summary: dict[str, Any] = {"step": done_iterations, "stopped": COMPLETED}
    while done_iterations < total_iterations:
        chunk_start = time.perf_counter()
        new_state, metrics = train_chunk(state)
        metrics = _host_metrics(metrics)  # [num_seeds, iterations_per_call]
        chunk_steps_per_s = (iterations_per_call * config.env_steps_per_iteration * num_seeds
                             / (time.perf_counter() - chunk_start))
        problem = non_finite(loss=metrics["total_loss"], gradient_norm=metrics["grad_norm"],
                             updated_parameters=new_state.params)
        if problem:
            # The checkpoint of done_iterations produced the chunk's first losses.
            first_losses_finite = bool(np.isfinite(metrics["total_loss"][:, 0]).all())
            summary.update(harness_run.stop_non_finite(done_iterations, problem, first_losses_finite))
            break
        state = new_state
        env_steps = np.asarray(state.env_steps)
        for offset in range(iterations_per_call):
            iteration = done_iterations + offset + 1
            for index, run_seed in enumerate(seeds):
                record = {name: float(value[index, offset]) for name, value in metrics.items()}
                record.update(kind="train", iteration=iteration, seed=int(run_seed),
                              env_steps_per_s=chunk_steps_per_s)
                log.write(record, {f"seed{run_seed}/train/{name}": value for name, value in record.items()
                                   if isinstance(value, float)})
        done_iterations += iterations_per_call
        summary["step"] = done_iterations
        elapsed = time.perf_counter() - start_time
        steps_per_s = (done_iterations - iterations_at_start) * config.env_steps_per_iteration * num_seeds / elapsed
        returns_history.extend(episode_returns(metrics))
        postfix = {"steps/s": f"{steps_per_s:.0f}",
                   "train_return": rolling_episode_return(returns_history)}
        if done_iterations % eval_every == 0 or done_iterations == total_iterations:
            eval_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(
                jax.vmap(jax.random.key)(seeds + 1_000_003), done_iterations)
            eval_metrics = _host_metrics(evaluate(state, eval_keys))
            for index, run_seed in enumerate(seeds):
                record = {name: float(value[index]) for name, value in eval_metrics.items()}
                record.update(kind="eval", iteration=done_iterations, seed=int(run_seed),
                              env_steps=int(env_steps[index]))
                log.write(record, {f"seed{run_seed}/eval/return": record["eval_return_mean"]})
            postfix["eval_return"] = f"{eval_metrics['eval_return_mean'].mean():.1f}"
        bar.set_postfix(postfix)
        bar.update(iterations_per_call)
        stopped = harness_run.save_or_stop(done_iterations, total_iterations, harness_run.stop_reason(),
                                           done_iterations % checkpoint_every == 0, {"state": state})
        if stopped:
            summary.update(stopped)
            break
    bar.close()
    log.close()
    plot_learning_curve(os.path.join(workdir, METRICS_FILE), os.path.join(workdir, "learning_curve.png"),
                        f"{config.env_name} {config.algo} beta={config.dipod_beta}")
    return state, summary


def main(argv):
    if not FLAGS.workdir:
        raise UsageError("--workdir is required")
    with user_errors():
        _validate_periods(FLAGS.iterations_per_call, FLAGS.checkpoint_every, FLAGS.eval_every, FLAGS.num_seeds,
                          FLAGS.num_timesteps)
        config = config_from_flags(FLAGS.preset, flag_overrides())
        env = make_environment(config.env_name)
    _, summary = run(config, FLAGS.workdir, FLAGS.seed, FLAGS.num_seeds, FLAGS.num_timesteps,
                     FLAGS.iterations_per_call, FLAGS.checkpoint_every, FLAGS.eval_every, FLAGS.resume,
                     FLAGS.progress, env)
    return finish_run(summary, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    run_program(main)
