"""A whole continuous-control sweep as one program: a population of (seed x hyper-parameter) members.

    python -m experiments.control_population --config.env_name=CartpoleBalance --config.algo=fpo --seeds=0,1,2 \\
        --betas=0,0.05 --num_timesteps=3000000 --workdir=/tmp/runs/fpo_population
    python -m experiments.control_population ... --vary=learning_rate=3e-4,1e-3 --vary=clip_eps=0.05,0.1
    python -m experiments.control_population ... --resume           # continue bit-exactly from the last checkpoint
    python -m experiments.control_population ... --distributed      # every host of a pod runs the same command

Details: docs/modules.md, section experiments.control_population.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags

from dipod_jax.control import population
from dipod_jax.control.configs import ALGORITHM_PRESETS, TrainConfig, config_from_flags, validate_periods
from dipod_jax.control.envs import make_environment
from dipod_jax.run import record as run_record
from dipod_jax.run.config import define_config_flag, flag_overrides
from dipod_jax.run.distributed import initialize_distributed
from dipod_jax.run.files import MetricsLog, truncate_metrics, write_json_atomic
from dipod_jax.run.harness import (
    COMPLETED,
    SIGNAL,
    Run,
    episode_returns,
    non_finite,
    progress_bar,
    rolling_episode_return,
)
from dipod_jax.run.program import UsageError, finish_run, run_program, user_errors
from launch import sweep

FLAGS = flags.FLAGS
SUMMARY_METRIC = "eval_return_mean"
MEMBERS_DIR = "members"


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program."""
    define_config_flag(TrainConfig())
    flags.DEFINE_enum("preset", None, sorted(ALGORITHM_PRESETS), "Algorithm configuration of a release "
                      "(ALGORITHM_PRESETS), applied over the environment's preset and under the --config.<field>s.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Member seeds.")
    flags.DEFINE_list("betas", [], "DiPOD betas (each with every seed); empty: the configuration's dipod_beta.")
    flags.DEFINE_multi_string("vary", [], "field=v1,v2,...: a HyperParams field other than dipod_beta, each value "
                              "with every seed and beta (repeatable).")
    flags.DEFINE_integer("num_timesteps", 5_000_000, "Environment steps per member (rounded up to whole calls).")
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_integer("iterations_per_call", 1, "Training iterations fused into one jitted host call.")
    flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_integer("eval_every", 10, "Evaluation period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_integer("data_shards", 0, "Devices splitting each member's environments (0: use every device).")
    flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host) before anything else.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _numbers(flag: str, texts: Sequence[str], kind: type) -> list:
    """The values of a list flag, given, distinct and of `kind` (ValueError naming the flag otherwise)."""
    try:
        values = [kind(text) for text in texts]
    except ValueError as error:
        raise ValueError(f"{flag} must be {kind.__name__} values, got {list(texts)}") from error
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{flag}: values must be given, without repeats, got {list(texts)}")
    return values


def build_members(seeds: Sequence[str], betas: Sequence[str], vary: Sequence[str]) -> population.Members:
    """--seeds, --betas and --vary as a Members grid (betas slowest, then --vary fields in order, seeds fastest);
    ValueError naming the flag for anything malformed."""
    values: dict[str, list[float]] = {}
    if betas:
        values["dipod_beta"] = _numbers("--betas", betas, float)
    for item in vary:
        field, sep, text = item.partition("=")
        if not sep or field not in population.HYPER_FIELDS or field == "dipod_beta":
            fields = [name for name in population.HYPER_FIELDS if name != "dipod_beta"]
            raise ValueError(f"--vary={item!r}: expected field=v1,v2,... with field one of {fields} "
                             "(dipod_beta: --betas)")
        if field in values:
            raise ValueError(f"--vary: {field} is given twice")
        values[field] = _numbers(f"--vary={field}", text.split(","), float)
    return population.grid(_numbers("--seeds", seeds, int), **values)


def member_runs(config: TrainConfig, members: population.Members, workdir: str) -> list[dict[str, Any]]:
    """The members as launch/sweep.py's manifest entries: name, group (algo + the varied fields other than beta:
    what the summary groups seeds by), algo, beta, seed, workdir, and each varied value."""
    runs = []
    for index in range(len(members)):
        values = members.values(index)
        member_config = population.member_config(config, members, index)
        group = "_".join([config.algo] + [f"{field}{run_record.float_name(values[field])}"
                                           for field in members.varied if field != "dipod_beta"])
        name = f"{group}_beta{run_record.float_name(member_config.dipod_beta)}_seed{values['seed']}"
        runs.append({"name": name, "group": group, "algo": config.algo, "beta": member_config.dipod_beta,
                     "seed": values["seed"], "workdir": os.path.join(os.path.abspath(workdir), MEMBERS_DIR, name),
                     **{field: values[field] for field in members.varied}})
    return runs


def population_record(config: TrainConfig, members: population.Members, iterations_per_call: int,
                      mesh_shape: dict[str, int]) -> dict[str, Any]:
    """The run record (config.json): every setting that changes the results; a resumed run must match it."""
    return {"train_config": dataclasses.asdict(config), "members": dataclasses.asdict(members),
            "iterations_per_call": iterations_per_call, "mesh": mesh_shape}


@functools.lru_cache(maxsize=4)
def compiled_population(config: TrainConfig, members: population.Members, env, mesh, iterations_per_call: int):
    """`make_population_train`, cached so that a resumed run in the same process reuses the compiled programs."""
    return population.make_population_train(config, members, env, mesh, iterations_per_call)


def run(config: TrainConfig, members: population.Members, workdir: str, num_timesteps: int,
        iterations_per_call: int = 1, checkpoint_every: int = 10, eval_every: int = 10, data_shards: int = 0,
        resume: bool = False, progress: bool = True, env=None) -> tuple[Any, dict[str, Any]]:
    """Train the population under `workdir` (see the module docstring).

    Returns:
      (final population TrainState, summary {"step", "stopped", ...} as experiments.control's run).

    Raises:
      UsageError before anything is compiled: bad periods, members or mesh, a workdir holding another run
        without `resume`, `resume` with nothing to resume or with other settings.
    """
    with user_errors():
        validate_periods(iterations_per_call, checkpoint_every, eval_every, num_timesteps)
        population.validate_members(config, members)
        data = data_shards or population.default_data_shards(len(members), jax.device_count())
        mesh = population.make_mesh(len(members), data)
        harness_run = Run(workdir, experiment="control_population", record_file="config.json",
                          record=population_record(config, members, iterations_per_call, dict(mesh.shape)),
                          resume=resume, flag="--workdir", keep=3, step_key="step", tensorboard_dir="tensorboard")
    with harness_run:
        trainer = compiled_population(config, members, env or make_environment(config.env_name), mesh,
                                      iterations_per_call)
        return _train(harness_run, trainer, member_runs(config, members, workdir), workdir, num_timesteps,
                      checkpoint_every, eval_every, progress)


def _member_logs(harness_run: Run, runs: list[dict[str, Any]], step: int) -> list[MetricsLog]:
    """One metrics log per member directory, truncated as the harness truncates the run's own log."""
    continues_after = None
    if harness_run.mode != run_record.FRESH:
        continues_after = step if harness_run.resuming else -1
    logs = []
    for member in runs:
        if harness_run.is_main:
            os.makedirs(member["workdir"], exist_ok=True)
            if continues_after is not None:
                truncate_metrics(member["workdir"], continues_after, "step")
        logs.append(MetricsLog(member["workdir"], "tensorboard", "step", continues_after, harness_run.is_main))
    return logs


def _train(harness_run: Run, trainer: population.PopulationTrainer, runs: list[dict[str, Any]], workdir: str,
           num_timesteps: int, checkpoint_every: int, eval_every: int, progress: bool) -> tuple[Any, dict[str, Any]]:
    config, per_call = trainer.config, trainer.iterations_per_call
    call_start = time.perf_counter()  # the first record's call_s includes the init (and its distillation)
    state = trainer.init()
    done, restored = harness_run.restore_if_resuming({"state": state})
    state = restored["state"]
    log = harness_run.start(done)
    member_logs = _member_logs(harness_run, runs, done)
    manifest_path = os.path.join(workdir, sweep.MANIFEST_FILE)
    if harness_run.is_main:
        sweep.write_manifest(manifest_path, [dict(member, status="running") for member in runs])
    total = per_call * math.ceil(num_timesteps / (config.env_steps_per_iteration * per_call))
    bar = progress_bar(total, done, progress and harness_run.is_main, None, unit="it")
    returns_history: list[tuple[float, float]] = []  # (mean return, episodes ended) per iteration
    summary: dict[str, Any] = {"step": done, "stopped": COMPLETED}
    while done < total:
        start = time.perf_counter()
        new_state, metrics = trainer.iterate(state)
        metrics = population.to_host(metrics)  # [P, per_call]
        steps_per_s = per_call * config.env_steps_per_iteration * len(runs) / (time.perf_counter() - start)
        problem = non_finite(loss=np.max(np.abs(metrics["total_loss"])),
                             gradient_norm=np.max(metrics["grad_norm"]), updated_parameters=new_state.params)
        if problem:
            first_losses_finite = bool(np.isfinite(metrics["total_loss"][:, 0]).all())
            summary.update(harness_run.stop_non_finite(done, problem, first_losses_finite))
            break
        state = new_state
        # Every member's env steps after the call; a member's self-distillation init counts its own steps. Earlier
        # iterations of the call are placed one iteration's steps apart (exact unless sd_every interleaves
        # distillation inside the call, whose steps then land on the call's last record).
        env_steps = population.to_host(state.env_steps)
        for offset in range(per_call):
            steps_before_end = (per_call - 1 - offset) * config.env_steps_per_iteration
            for index, member_log in enumerate(member_logs):
                member_log.write({"step": done + offset + 1, "kind": "train",
                                  "env_steps": int(env_steps[index]) - steps_before_end,
                                  **{name: float(value[index, offset]) for name, value in metrics.items()}})
        done += per_call
        # call_s: seconds since the previous record (the call, its evaluation and checkpoint); their sum over a
        # run (compiles included) is its wall time.
        now = time.perf_counter()
        log.write({"step": done, "env_steps_per_s": steps_per_s, "call_s": now - call_start})
        call_start = now
        summary["step"] = done
        returns_history.extend(episode_returns(metrics))
        postfix = {"steps/s": f"{steps_per_s:.0f}", "train_return": rolling_episode_return(returns_history)}
        if done % eval_every == 0 or done == total:
            evaluation = population.to_host(trainer.evaluate(state, done))
            for index, member_log in enumerate(member_logs):
                member_log.write({"step": done, "kind": "eval", "env_steps": int(env_steps[index]),
                                  **{name: float(value[index]) for name, value in evaluation.items()}})
            postfix["eval_return"] = f"{evaluation[SUMMARY_METRIC].mean():.1f}"
        bar.set_postfix(postfix)
        bar.update(per_call)
        stopped = harness_run.save_or_stop(done, total, harness_run.stop_reason(), done % checkpoint_every == 0,
                                           {"state": state})
        if stopped:
            summary.update(stopped)
            break
    bar.close()
    for member_log in member_logs:
        member_log.close()
    if harness_run.is_main:
        # launch/sweep.py's statuses: a stop signal leaves the members "interrupted" (continue with --resume).
        status = {COMPLETED: "succeeded", SIGNAL: "interrupted"}.get(summary["stopped"], "failed")
        sweep.write_manifest(manifest_path, [dict(member, status=status) for member in runs])
        write_summary(workdir, runs)
    return state, summary


def write_summary(workdir: str, runs: list[dict[str, Any]], metric: str = SUMMARY_METRIC) -> dict[str, Any]:
    """launch/sweep.py's summary of `metric` over the members: summary_<metric>.json and curves_<metric>.png."""
    summary = sweep.summarize(runs, metric)
    write_json_atomic(os.path.join(workdir, f"summary_{metric}.json"), summary)
    sweep.plot_summary(summary, os.path.join(workdir, f"curves_{metric}.png"))
    return summary


def main(argv):
    if not FLAGS.workdir:
        raise UsageError("--workdir is required")
    with user_errors():
        initialize_distributed(FLAGS.distributed)
        overrides = flag_overrides()
        if FLAGS.betas and "dipod_beta" in overrides:
            raise UsageError("--betas and --config.dipod_beta both set the members' DiPOD beta: give one")
        config = config_from_flags(FLAGS.preset, overrides)
        members = build_members(FLAGS.seeds, FLAGS.betas, FLAGS.vary)
        env = make_environment(config.env_name)
    state, summary = run(config, members, FLAGS.workdir, FLAGS.num_timesteps, FLAGS.iterations_per_call,
                         FLAGS.checkpoint_every, FLAGS.eval_every, FLAGS.data_shards, FLAGS.resume, FLAGS.progress,
                         env)
    return finish_run(summary, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    run_program(main)
