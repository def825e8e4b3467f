"""experiments.double_drift: a short run writes every output, resumes without retraining, validates its flags."""
import json
import math

import numpy as np
import pytest

from dipod_jax.toys import bandit
from experiments import double_drift

pytestmark = pytest.mark.integration

NUM_SEEDS = 2
STEPS = 2
REQUIRED_METRICS = ("reward", "bound_gap", "log_ratio_error", "grad_cosine")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """Every setting, 2 seeds, 2 steps (shapes shared with tests/test_toys.py, so compiles are reused)."""
    workdir = str(tmp_path_factory.mktemp("double_drift"))
    summary = double_drift.run_experiment(list(double_drift.SETTINGS), bandit_dipod_beta=0.3, sequence_dipod_beta=0.05,
                                          num_seeds=NUM_SEEDS, steps=STEPS, workdir=workdir)
    return workdir, summary


def test_short_run_writes_every_output_with_finite_values(short_run):
    """metrics.jsonl has one finite row per (setting, variant, step, seed); summary and PNGs exist."""
    workdir, summary = short_run
    with open(f"{workdir}/metrics.jsonl") as handle:
        rows = [json.loads(line) for line in handle]
    assert len(rows) == len(double_drift.SETTINGS) * 2 * STEPS * NUM_SEEDS
    keys = {(row["setting"], row["variant"], row["step"], row["seed"]) for row in rows}
    assert len(keys) == len(rows)
    for row in rows:
        for metric in REQUIRED_METRICS:
            assert row[metric] is not None and math.isfinite(row[metric]), (row, metric)
        assert row["beta"] == (0.0 if row["variant"] == "baseline" else
                               (0.3 if row["setting"] == "bandit_fpo" else 0.05))
    with open(f"{workdir}/summary.json") as handle:
        assert json.load(handle) == json.loads(json.dumps(summary))
    for setting in double_drift.SETTINGS:
        for variant in ("baseline", "dipod"):
            entry = summary["settings"][setting][variant]
            assert entry["diverged_seeds"]["count"] == 0
            assert entry["undefined_diagnostic_steps"] == 0
            for metric in REQUIRED_METRICS:
                for period in ("final", "training"):
                    stat = entry[metric][period]
                    assert all(math.isfinite(stat[key]) for key in ("mean", "ci95", "median")), (metric, stat)
                    assert stat["num_seeds"] == NUM_SEEDS
    for name in ["double_drift"] + list(double_drift.SETTINGS):
        with open(f"{workdir}/{name}.png", "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_training(short_run, monkeypatch):
    """With the same flags and --resume, a second run loads every finished run instead of training it again;
    without --resume the directory is refused."""
    workdir, summary = short_run

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(double_drift, "train_run", must_not_train)
    with pytest.raises(ValueError, match="already holds a run"):
        double_drift.run_experiment(list(double_drift.SETTINGS), bandit_dipod_beta=0.3, sequence_dipod_beta=0.05,
                                    num_seeds=NUM_SEEDS, steps=STEPS, workdir=workdir)
    again = double_drift.run_experiment(list(double_drift.SETTINGS), bandit_dipod_beta=0.3, sequence_dipod_beta=0.05,
                                        num_seeds=NUM_SEEDS, steps=STEPS, workdir=workdir, resume=True)
    assert again == summary


@pytest.mark.parametrize("kwargs, match", [
    (dict(settings=["bandit_ppo"]), "--settings"),
    (dict(settings=[]), "--settings"),
    (dict(bandit_dipod_beta=0.0), "--bandit_dipod_beta"),
    (dict(sequence_dipod_beta=float("nan")), "--sequence_dipod_beta"),
    (dict(num_seeds=0), "--num_seeds"),
    (dict(steps=0), "--steps"),
])
def test_bad_flags_raise_before_training(kwargs, match, tmp_path):
    """Invalid flags raise ValueError naming the flag, and nothing is written."""
    arguments = dict(settings=["bandit_fpo"], bandit_dipod_beta=0.3, sequence_dipod_beta=0.05, num_seeds=2, steps=2,
                     workdir=str(tmp_path / "out"))
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        double_drift.run_experiment(**arguments)
    assert not (tmp_path / "out").exists()


def test_summary_counts_diverged_seeds_and_uses_last_tenth():
    """Seed 1's reward turns NaN at step 12: it is reported as diverged there and left out of the final mean;
    the training mean of each seed averages its finite steps; a NaN diagnostic of a healthy seed is counted."""
    steps = 20
    reward = np.tile(np.arange(steps, dtype=float)[:, None], (1, 3))
    reward[12:, 1] = np.nan
    bound_gap = reward.copy()
    bound_gap[3, 0] = np.nan
    summary = double_drift.summarize({"reward": reward, "bound_gap": bound_gap})
    assert summary["undefined_diagnostic_steps"] == 1
    assert summary["final_window_steps"] == 2
    assert summary["reward"]["final"] == {"mean": 18.5, "ci95": 0.0, "median": 18.5, "num_seeds": 2}
    assert summary["reward"]["training"]["median"] == 9.5
    assert summary["reward"]["training"]["mean"] == pytest.approx((9.5 + 5.5 + 9.5) / 3)
    assert summary["diverged_seeds"] == {"count": 1, "first_step_by_seed": {1: 12}}


def test_seed_status_separates_divergence_from_undefined_diagnostics():
    """A non-converged inversion makes the diagnostics undefined but leaves training healthy; NaN reward does not."""
    config = bandit.BanditConfig()
    metrics = {"reward": np.array([0.5, 0.5, np.nan]), "cfm_loss": np.array([1.0, 1.0, 1.0]),
               "grad_cosine": np.array([0.1, 0.2, 0.3]),
               "inversion_residual": np.array([0.0, 10 * config.inversion_tolerance, 0.0])}
    healthy, defined = double_drift._seed_status(bandit, config, metrics, np.ones(3, dtype=bool))
    np.testing.assert_array_equal(healthy, [True, True, False])
    np.testing.assert_array_equal(defined, [True, False, False])
