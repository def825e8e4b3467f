"""The double-drift laboratory: baseline vs DiPOD on two toys with exact likelihoods.

    python -m experiments.double_drift --workdir=runs/double_drift

Details: docs/modules.md, section experiments.double_drift.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import flags, logging
from tqdm import tqdm

from dipod_jax.run.files import METRICS_FILE, write_atomic, write_json_atomic
from dipod_jax.run.harness import COMPLETED, SIGNAL, Run
from dipod_jax.run.program import finish_run, one_line, run_program, user_errors
from dipod_jax.run.record import float_name
from dipod_jax.run.statistics import t_interval
from dipod_jax.toys import bandit, sequence

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

SETTINGS = ("bandit_fpo", "sequence_fpo", "sequence_spg")
RUNS_DIR = "runs"
PLOTTED_METRICS = (("reward", "reward"), ("bound_gap", "bound gap (log pi - ELBO)"),
                   ("log_ratio_error", "|log-ratio error|"), ("grad_cosine", "cos(proxy grad, exact grad)"))

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_list("settings", list(SETTINGS), f"Which settings to run, a subset of {SETTINGS}.")
    flags.DEFINE_float("bandit_dipod_beta", 0.3,
                       "DiPOD beta for the flow bandit (the baseline always runs at beta = 0).")
    flags.DEFINE_float("sequence_dipod_beta", 0.05, "DiPOD beta for the sequence toy (paper: 0.05 for dLLMs).")
    flags.DEFINE_integer("num_seeds", 8, "Seeds per run, vmapped in one jit.")
    flags.DEFINE_integer("steps", 150, "Training steps (rollout + inner updates) per run.")
    flags.DEFINE_string("workdir", "runs/double_drift", "Where to write metrics, summary and figures.")
    flags.DEFINE_integer("bandit_action_dim", 2, "Action dimension of the bandit (1 or 2).")
    flags.DEFINE_bool("resume", False, "Continue the run in --workdir: finished runs are loaded from "
                      "workdir/runs, a run stopped part-way continues from its checkpoint.")


def check_flags(settings: list[str], bandit_dipod_beta: float, sequence_dipod_beta: float, num_seeds: int,
                steps: int) -> None:
    """Raise ValueError naming the first bad flag."""
    unknown = [name for name in settings if name not in SETTINGS]
    if not settings or unknown:
        raise ValueError(f"--settings must be a non-empty subset of {SETTINGS}, got {settings}")
    for name, value in (("--bandit_dipod_beta", bandit_dipod_beta), ("--sequence_dipod_beta", sequence_dipod_beta)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (the baseline runs at 0 anyway), got {value}")
    if num_seeds < 1:
        raise ValueError(f"--num_seeds must be >= 1, got {num_seeds}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")


def make_setting(setting: str, action_dim: int):
    """(toy module, config) of a setting; the configs check themselves when constructed, before any compile."""
    if setting == "bandit_fpo":
        return bandit, bandit.BanditConfig(action_dim=action_dim)
    return sequence, sequence.SequenceConfig(algo=setting.split("_")[1])


def _freeze_diverged(new_state, old_state, valid: np.ndarray):
    """Keep each seed's new state where `valid` [n_seeds], its old state elsewhere."""
    def pick(new, old):
        return jnp.where(valid.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    return jax.tree_util.tree_map(pick, new_state, old_state)


def _seed_status(toy, config, metrics: dict[str, np.ndarray], alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per seed [n_seeds]: (training is healthy, exact diagnostics are defined) after this step."""
    healthy = alive.copy()
    for name in toy.TRAINING_METRICS:
        healthy &= np.isfinite(metrics[name])
    defined = healthy.copy()
    for values in metrics.values():
        defined &= np.isfinite(values)
    if toy is bandit:
        # Same criterion as flow_exact.check_inversion_converged, per seed instead of raising: an
        # unconverged inversion means the sampler is not (numerically) invertible and log pi is undefined.
        defined &= metrics["inversion_residual"] <= config.inversion_tolerance
    return healthy, defined


class RunProgress(NamedTuple):
    """A run part-way: the seed-batched toy state, which seeds are alive [n_seeds] bool, the history
    {metric: [steps, n_seeds] float64, NaN beyond `done` and where a seed has diverged} and the steps done."""
    state: Any
    alive: np.ndarray
    history: dict[str, np.ndarray]
    done: int


def initial_progress(toy, config, beta: float, num_seeds: int, steps: int) -> RunProgress:
    """A run at step 0 (the metric names come from the step's abstract evaluation, nothing is run)."""
    state = toy.init_seed_batch(jnp.arange(num_seeds), config)
    _, metric_shapes = jax.eval_shape(toy.make_seed_batched_step(config, beta), state)
    history = {name: np.full((steps, num_seeds), np.nan) for name in metric_shapes}
    return RunProgress(state, np.ones(num_seeds, dtype=bool), history, 0)


def train_run(toy, config, beta: float, run: RunProgress, progress: tqdm,
              stop_requested: Callable[[], bool] = lambda: False) -> RunProgress:
    """Train a run from `run.done` up to its last step at DiPOD coefficient `beta`, or until
    `stop_requested()` (asked after every step) is true. A seed whose training metrics turn non-finite is
    frozen at its last good state and its later metrics are NaN."""
    step_fn = toy.make_seed_batched_step(config, beta)
    state, alive, history, done = run.state, run.alive.copy(), {k: v.copy() for k, v in run.history.items()}, run.done
    steps = next(iter(history.values())).shape[0]
    while done < steps:
        new_state, metrics = step_fn(state)
        metrics = {name: np.asarray(value, dtype=np.float64) for name, value in metrics.items()}
        healthy, defined = _seed_status(toy, config, metrics, alive)
        state = _freeze_diverged(new_state, state, healthy)
        alive = healthy
        for name, value in metrics.items():
            history[name][done] = np.where(healthy if name in toy.TRAINING_METRICS else defined, value, np.nan)
        done += 1
        progress.set_postfix(live_seeds=int(alive.sum()))
        progress.update(1)
        if done < steps and stop_requested():
            break
    return RunProgress(state, alive, history, done)


def _run_file(workdir: str, setting: str, beta: float) -> str:
    return os.path.join(workdir, RUNS_DIR, f"{setting}__beta{float_name(beta)}.npz")


def _signature(config, beta: float, num_seeds: int, steps: int) -> str:
    return json.dumps({"config": dataclasses.asdict(config), "beta": beta, "num_seeds": num_seeds, "steps": steps},
                      sort_keys=True)


def load_finished(path: str, signature: str) -> dict[str, np.ndarray] | None:
    """The history stored in a finished run's file, or None when there is none. A file that cannot be read
    or belongs to other settings is reported (a warning naming it), moved to <path>.unreadable and not used."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as stored:
            if str(stored["signature"]) != signature:
                raise ValueError("stored for other settings")
            return {name: stored[name] for name in stored.files if name != "signature"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logging.warning("%s is unreadable (%s); moved to %s.unreadable, the run is trained again", path,
                        one_line(error), path)
        os.replace(path, path + ".unreadable")
        return None


def _store_finished(path: str, signature: str, history: dict[str, np.ndarray]) -> None:
    def write(tmp_path):
        with open(tmp_path, "wb") as handle:
            np.savez(handle, signature=signature, **history)

    write_atomic(path, write)


def _over_seeds(per_seed: np.ndarray) -> dict:
    interval = t_interval(per_seed)
    finite = per_seed[np.isfinite(per_seed)]
    median = float(np.median(finite)) if finite.size else float("nan")
    return {"mean": _json_float(interval["mean"]), "ci95": _json_float(interval["half_width"]),
            "median": _json_float(median), "num_seeds": interval["n"]}


def summarize(history: dict[str, np.ndarray]) -> dict:
    """Per metric, over seeds (mean, 95% interval, median): "final" is each seed's mean over the last 10% of
    steps, "training" its mean over all steps. NaN entries (diverged seeds, undefined diagnostics) are skipped."""
    steps = next(iter(history.values())).shape[0]
    window = max(1, steps // 10)
    summary = {"final_window_steps": window}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: diverged seeds
        for name, values in history.items():
            summary[name] = {"final": _over_seeds(np.nanmean(values[-window:], axis=0)),
                             "training": _over_seeds(np.nanmean(values, axis=0))}
    reward = history["reward"]
    diverged = {int(seed): int(np.argmax(~np.isfinite(reward[:, seed])))
                for seed in range(reward.shape[1]) if not np.isfinite(reward[:, seed]).all()}
    summary["diverged_seeds"] = {"count": len(diverged), "first_step_by_seed": diverged}
    # (step, seed) pairs where training was healthy but the exact diagnostics were undefined.
    summary["undefined_diagnostic_steps"] = int(np.sum(np.isfinite(reward) & ~np.isfinite(history["bound_gap"])))
    return summary


def _json_float(value: float):
    return float(value) if np.isfinite(value) else None


def write_metrics_jsonl(path: str, runs: dict[tuple[str, str], tuple[float, dict[str, np.ndarray]]]) -> None:
    def write(tmp_path):
        with open(tmp_path, "w") as handle:
            for (setting, variant), (beta, history) in runs.items():
                steps, num_seeds = history["reward"].shape
                for step in range(steps):
                    for seed in range(num_seeds):
                        row = {"setting": setting, "variant": variant, "beta": beta, "step": step, "seed": seed}
                        row.update({name: _json_float(values[step, seed]) for name, values in history.items()})
                        handle.write(json.dumps(row) + "\n")

    write_atomic(path, write)


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step mean over live seeds and 95% half-width (0 with fewer than two live seeds):
    values [steps, seeds] -> ([steps], [steps])."""
    intervals = [t_interval(row) for row in values]
    mean = np.array([interval["mean"] for interval in intervals])
    half_width = np.array([interval["half_width"] for interval in intervals])
    return mean, np.nan_to_num(half_width, nan=0.0)


def plot_settings(path: str, settings: list[str], runs) -> None:
    """One row per setting, one column per plotted metric, baseline vs DiPOD with 95% bands."""
    figure, axes = plt.subplots(len(settings), len(PLOTTED_METRICS), figsize=(4.2 * len(PLOTTED_METRICS),
                                                                             3.0 * len(settings)), squeeze=False)
    for row, setting in enumerate(settings):
        for column, (metric, label) in enumerate(PLOTTED_METRICS):
            axis = axes[row, column]
            for variant, colour in (("baseline", "tab:red"), ("dipod", "tab:blue")):
                beta, history = runs[(setting, variant)]
                mean, half_width = _band(history[metric])
                steps = np.arange(mean.size)
                axis.plot(steps, mean, color=colour, label=f"{variant} (beta={float_name(beta)})")
                axis.fill_between(steps, mean - half_width, mean + half_width, color=colour, alpha=0.2)
            axis.set_title(f"{setting}: {label}", fontsize=9)
            axis.set_xlabel("step")
            if metric == "log_ratio_error":
                axis.set_yscale("log")
            if row == 0 and column == 0:
                axis.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def run_record(settings: list[str], toys, bandit_dipod_beta: float, sequence_dipod_beta: float, num_seeds: int,
               steps: int) -> dict:
    """The run record (config.json): every setting that changes the results; --resume must match it."""
    return {"settings": list(settings), "bandit_dipod_beta": bandit_dipod_beta,
            "sequence_dipod_beta": sequence_dipod_beta, "num_seeds": num_seeds, "steps": steps,
            "configs": {setting: dataclasses.asdict(config) for setting, (_, config) in toys.items()}}


def run_experiment(settings: list[str], bandit_dipod_beta: float, sequence_dipod_beta: float, num_seeds: int,
                   steps: int, workdir: str, bandit_action_dim: int = 2, resume: bool = False) -> dict:
    """Run every setting at beta = 0 and at its DiPOD beta, and write all outputs.

    Returns the summary (also written to summary.json) with "stopped": "completed"; or, when SIGTERM /
    SIGINT stopped the run (its progress saved), {"stopped": "signal", "signal", "step"}. Raises UsageError
    (a ValueError), before any training: invalid flags, an output directory holding another run without
    `resume` or that cannot be written, `resume` with nothing to resume or other settings.
    """
    with user_errors():
        check_flags(settings, bandit_dipod_beta, sequence_dipod_beta, num_seeds, steps)
        toys = {setting: make_setting(setting, bandit_action_dim) for setting in settings}
        plan = [(setting, variant, variant_beta) for setting in settings
                for variant, variant_beta in (
                    ("baseline", 0.0),
                    ("dipod", bandit_dipod_beta if toys[setting][0] is bandit else sequence_dipod_beta))]
        harness_run = Run(workdir, experiment="double_drift", record_file="config.json",
                          record=run_record(settings, toys, bandit_dipod_beta, sequence_dipod_beta, num_seeds, steps),
                          resume=resume,
                          flag="--workdir", other_run_files=("summary.json", RUNS_DIR),
                          progress_paths=[_run_file(workdir, setting, b) for setting, _, b in plan])
    with harness_run:
        return _run_plan(harness_run, plan, toys, num_seeds, steps, workdir, settings)


def _run_plan(harness_run: Run, plan, toys, num_seeds: int, steps: int, workdir: str,
              settings: list[str]) -> dict:
    # A run part-way is checkpointed (on a stop signal) at the global step index * steps + steps done.
    runs = {}
    with tqdm(total=len(plan) * steps, desc="double drift", unit="step") as progress:
        for index, (setting, variant, variant_beta) in enumerate(plan):
            progress.set_description(f"{setting} {variant}")
            toy, config = toys[setting]
            path = _run_file(workdir, setting, variant_beta)
            signature = _signature(config, variant_beta, num_seeds, steps)
            history = load_finished(path, signature)
            if history is not None:
                progress.update(steps)
            else:
                run = initial_progress(toy, config, variant_beta, num_seeds, steps)
                if harness_run.resuming:
                    saved_at, trees = harness_run.checkpoints.restore_newest(
                        {"state": run.state, "alive": run.alive, "history": run.history},
                        candidates=range(index * steps + 1, (index + 1) * steps))
                    if saved_at is not None:
                        run = RunProgress(trees["state"], np.asarray(trees["alive"]),
                                          {name: np.asarray(value) for name, value in trees["history"].items()},
                                          saved_at - index * steps)
                        progress.update(run.done)
                run = train_run(toy, config, variant_beta, run, progress,
                                lambda: harness_run.stop_reason() is not None)
                if run.done < steps:
                    harness_run.save(index * steps + run.done,
                                     {"state": run.state, "alive": run.alive, "history": run.history})
                    return harness_run.stop_summary(SIGNAL, index * steps + run.done)
                history = run.history
                _store_finished(path, signature, history)
            runs[(setting, variant)] = (variant_beta, history)
    write_metrics_jsonl(os.path.join(workdir, METRICS_FILE), runs)
    summary = {"stopped": COMPLETED, "num_seeds": num_seeds, "steps": steps,
               "settings": {setting: {variant: {"beta": runs[(setting, variant)][0],
                                                **summarize(runs[(setting, variant)][1])}
                                      for variant in ("baseline", "dipod")} for setting in settings}}
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    plot_settings(os.path.join(workdir, "double_drift.png"), settings, runs)
    for setting in settings:
        plot_settings(os.path.join(workdir, f"{setting}.png"), [setting], runs)
    return summary


def main(argv):
    summary = run_experiment(FLAGS.settings, FLAGS.bandit_dipod_beta, FLAGS.sequence_dipod_beta, FLAGS.num_seeds,
                             FLAGS.steps, FLAGS.workdir, FLAGS.bandit_action_dim, FLAGS.resume)
    return finish_run(summary, FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    run_program(main)
