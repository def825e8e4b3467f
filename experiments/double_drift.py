"""The double-drift laboratory: baseline vs DiPOD on two toys with exact likelihoods.

    python -m experiments.double_drift --output_dir=runs/double_drift

Settings (each run with beta = 0, the baseline exactly, and with the DiPOD beta, over --num_seeds seeds
vmapped in one jit):
- bandit_fpo: the multimodal contextual bandit with a flow policy, FPO vs FPO + DiPOD (dipod_jax.toys.bandit);
- sequence_fpo, sequence_spg: the masked-diffusion sequence toy, FPO-for-dLLMs / SPG vs + DiPOD
  (dipod_jax.toys.sequence).

Outputs in --output_dir:
- metrics.jsonl: one line per (setting, variant, step, seed) with reward, bound_gap, log_ratio_error,
  grad_cosine and the setting's extra diagnostics; null where the seed has diverged;
- summary.json: per setting, variant and metric, over seeds: mean, 95% Student-t interval and median of each
  seed's average over the last 10% of steps ("final") and over all steps ("training"), and the seeds that
  diverged (with the step);
- double_drift.png (all settings) and <setting>.png: reward, bound gap, log-ratio error and gradient cosine
  over training, mean over live seeds with a 95% band, baseline vs DiPOD.
- runs/<setting>__beta<beta>.npz: each finished run's raw metrics; a rerun with the same flags loads them
  instead of training again (resume at run granularity).

A seed "diverges" at the first step whose training metrics (toy.TRAINING_METRICS) are not finite: its state is
frozen at the last good parameters, it is not trained further, and all its later metrics are null. The exact
diagnostics of a healthy seed are null at steps where they are undefined: non-finite, or, for the flow, an
exact-likelihood inversion that did not converge (the Euler sampler is no longer invertible numerically).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Dict, List, Tuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags
from scipy import stats
from tqdm import tqdm

from dipod_jax.toys import bandit, sequence

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

SETTINGS = ("bandit_fpo", "sequence_fpo", "sequence_spg")
PLOTTED_METRICS = (("reward", "reward"), ("bound_gap", "bound gap (log pi - ELBO)"),
                   ("log_ratio_error", "|log-ratio error|"), ("grad_cosine", "cos(proxy grad, exact grad)"))

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_list("settings", list(SETTINGS), f"Which settings to run, a subset of {SETTINGS}.")
    flags.DEFINE_float("beta", 0.3, "DiPOD beta for the flow bandit (the baseline always runs at beta = 0).")
    flags.DEFINE_float("sequence_beta", 0.05, "DiPOD beta for the sequence toy (paper: 0.05 for dLLMs).")
    flags.DEFINE_integer("num_seeds", 8, "Seeds per run, vmapped in one jit.")
    flags.DEFINE_integer("steps", 150, "Training steps (rollout + inner updates) per run.")
    flags.DEFINE_string("output_dir", "runs/double_drift", "Where to write metrics, summary and figures.")
    flags.DEFINE_integer("bandit_action_dim", 2, "Action dimension of the bandit (1 or 2).")
    flags.DEFINE_bool("resume", True, "Reuse finished runs found in output_dir/runs instead of retraining them.")


def check_flags(settings: List[str], beta: float, sequence_beta: float, num_seeds: int, steps: int) -> None:
    """Raise ValueError naming the first bad flag."""
    unknown = [name for name in settings if name not in SETTINGS]
    if not settings or unknown:
        raise ValueError(f"--settings must be a non-empty subset of {SETTINGS}, got {settings}")
    for name, value in (("--beta", beta), ("--sequence_beta", sequence_beta)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0 (the baseline runs at 0 anyway), got {value}")
    if num_seeds < 1:
        raise ValueError(f"--num_seeds must be >= 1, got {num_seeds}")
    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")


def make_setting(setting: str, action_dim: int):
    """(toy module, config) of a setting; the configs are validated here, before any compile."""
    if setting == "bandit_fpo":
        config = bandit.BanditConfig(action_dim=action_dim)
        bandit.check_config(config)
        return bandit, config
    config = sequence.SequenceConfig(method=setting.split("_")[1])
    sequence.check_config(config)
    return sequence, config


def _freeze_diverged(new_state, old_state, valid: np.ndarray):
    """Keep each seed's new state where `valid` [n_seeds], its old state elsewhere."""
    def pick(new, old):
        return jnp.where(valid.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    return jax.tree_util.tree_map(pick, new_state, old_state)


def _seed_status(toy, config, metrics: Dict[str, np.ndarray], alive: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
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


def train_run(toy, config, beta: float, num_seeds: int, steps: int, progress: tqdm) -> Dict[str, np.ndarray]:
    """Train `num_seeds` seeds for `steps` steps at DiPOD coefficient `beta`.

    Returns:
      dict of [steps, num_seeds] float arrays (NaN once a seed has diverged).
    """
    state = toy.init_seed_batch(jnp.arange(num_seeds), config)
    step_fn = toy.make_seed_batched_step(config, beta)
    alive = np.ones(num_seeds, dtype=bool)
    history: Dict[str, List[np.ndarray]] = {}
    for _ in range(steps):
        new_state, metrics = step_fn(state)
        metrics = {name: np.asarray(value, dtype=np.float64) for name, value in metrics.items()}
        healthy, defined = _seed_status(toy, config, metrics, alive)
        state = _freeze_diverged(new_state, state, healthy)
        alive = healthy
        for name, value in metrics.items():
            history.setdefault(name, []).append(np.where(healthy if name in toy.TRAINING_METRICS else defined,
                                                         value, np.nan))
        progress.set_postfix(live_seeds=int(alive.sum()))
        progress.update(1)
    return {name: np.stack(values) for name, values in history.items()}


def _atomic_write(path: str, write) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see a partial file."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(handle)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def _run_file(output_dir: str, setting: str, beta: float) -> str:
    return os.path.join(output_dir, "runs", f"{setting}__beta{beta:g}.npz")


def load_or_train(output_dir: str, setting: str, toy, config, beta: float, num_seeds: int, steps: int,
                  resume: bool, progress: tqdm) -> Dict[str, np.ndarray]:
    """Load a finished run with the same configuration, or train it and store it atomically."""
    path = _run_file(output_dir, setting, beta)
    signature = json.dumps({"config": config._asdict(), "beta": beta, "num_seeds": num_seeds, "steps": steps},
                           sort_keys=True)
    if resume and os.path.exists(path):
        with np.load(path) as stored:
            if str(stored["signature"]) == signature:
                progress.update(steps)
                return {name: stored[name] for name in stored.files if name != "signature"}
    history = train_run(toy, config, beta, num_seeds, steps, progress)

    def write(tmp_path):
        with open(tmp_path, "wb") as handle:
            np.savez(handle, signature=signature, **history)

    _atomic_write(path, write)
    return history


def mean_interval(values: np.ndarray) -> Tuple[float, float, int]:
    """Mean and 95% Student-t half-width of the finite entries of `values` [n]; (nan, nan, 0) if none."""
    finite = values[np.isfinite(values)]
    count = finite.size
    if count == 0:
        return float("nan"), float("nan"), 0
    if count == 1:
        return float(finite[0]), float("nan"), 1
    half_width = stats.t.ppf(0.975, count - 1) * finite.std(ddof=1) / np.sqrt(count)
    return float(finite.mean()), float(half_width), count


def _over_seeds(per_seed: np.ndarray) -> Dict:
    mean, half_width, count = mean_interval(per_seed)
    finite = per_seed[np.isfinite(per_seed)]
    median = float(np.median(finite)) if finite.size else float("nan")
    return {"mean": _json_float(mean), "ci95": _json_float(half_width), "median": _json_float(median),
            "num_seeds": count}


def summarize(history: Dict[str, np.ndarray]) -> Dict:
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


def write_metrics_jsonl(path: str, runs: Dict[Tuple[str, str], Tuple[float, Dict[str, np.ndarray]]]) -> None:
    def write(tmp_path):
        with open(tmp_path, "w") as handle:
            for (setting, variant), (beta, history) in runs.items():
                steps, num_seeds = history["reward"].shape
                for step in range(steps):
                    for seed in range(num_seeds):
                        row = {"setting": setting, "variant": variant, "beta": beta, "step": step, "seed": seed}
                        row.update({name: _json_float(values[step, seed]) for name, values in history.items()})
                        handle.write(json.dumps(row) + "\n")

    _atomic_write(path, write)


def _band(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-step mean over live seeds and 95% half-width: values [steps, seeds] -> ([steps], [steps])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN steps: every seed diverged
        count = np.isfinite(values).sum(axis=1)
        mean = np.nanmean(values, axis=1)
        sd = np.nanstd(values, axis=1, ddof=1)
        half_width = stats.t.ppf(0.975, np.maximum(count - 1, 1)) * sd / np.sqrt(np.maximum(count, 1))
    return mean, np.where(count > 1, half_width, 0.0)


def plot_settings(path: str, settings: List[str], runs) -> None:
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
                axis.plot(steps, mean, color=colour, label=f"{variant} (beta={beta:g})")
                axis.fill_between(steps, mean - half_width, mean + half_width, color=colour, alpha=0.2)
            axis.set_title(f"{setting}: {label}", fontsize=9)
            axis.set_xlabel("step")
            if metric == "log_ratio_error":
                axis.set_yscale("log")
            if row == 0 and column == 0:
                axis.legend(fontsize=8)
    figure.tight_layout()
    _atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)


def run_experiment(settings: List[str], beta: float, sequence_beta: float, num_seeds: int, steps: int,
                   output_dir: str, bandit_action_dim: int = 2, resume: bool = True) -> Dict:
    """Run every setting at beta = 0 and at its DiPOD beta, and write all outputs. Returns the summary."""
    check_flags(settings, beta, sequence_beta, num_seeds, steps)
    toys = {setting: make_setting(setting, bandit_action_dim) for setting in settings}
    runs = {}
    with tqdm(total=2 * len(settings) * steps, desc="double drift", unit="step") as progress:
        for setting in settings:
            toy, config = toys[setting]
            dipod_beta = beta if toy is bandit else sequence_beta
            for variant, variant_beta in (("baseline", 0.0), ("dipod", dipod_beta)):
                progress.set_description(f"{setting} {variant}")
                history = load_or_train(output_dir, setting, toy, config, variant_beta, num_seeds, steps,
                                        resume, progress)
                runs[(setting, variant)] = (variant_beta, history)
    write_metrics_jsonl(os.path.join(output_dir, "metrics.jsonl"), runs)
    summary = {"num_seeds": num_seeds, "steps": steps,
               "settings": {setting: {variant: {"beta": runs[(setting, variant)][0],
                                                **summarize(runs[(setting, variant)][1])}
                                      for variant in ("baseline", "dipod")} for setting in settings}}

    def write_summary(tmp_path):
        with open(tmp_path, "w") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")

    _atomic_write(os.path.join(output_dir, "summary.json"), write_summary)
    plot_settings(os.path.join(output_dir, "double_drift.png"), settings, runs)
    for setting in settings:
        plot_settings(os.path.join(output_dir, f"{setting}.png"), [setting], runs)
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    summary = run_experiment(FLAGS.settings, FLAGS.beta, FLAGS.sequence_beta, FLAGS.num_seeds, FLAGS.steps,
                             FLAGS.output_dir, FLAGS.bandit_action_dim, FLAGS.resume)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    define_flags()
    app.run(main)
