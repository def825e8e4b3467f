"""Reliability of every run (issue 11): the run harness (dipod_jax.run) as the four experiments and the sweep
use it. Each test reproduces an observation of the issue and checks the fixed behaviour:

1. a non-finite final update is never saved and the run exits non-zero;
2. a non-finite stop never deletes a checkpoint this process did not write;
3. --resume refuses any changed setting (listing it) and an empty directory;
4. a directory holding another run is refused, never overwritten or appended to;
5. SIGTERM / Ctrl-C save and exit 128 + signal, and --resume then ends bit-identical to an uninterrupted run
   (control, lm_pretrain, lm_rl, double_drift); the sweep stops its children and marks them;
6. a corrupt newest checkpoint (truncated file, missing item) or double_drift .npz falls back with a warning;
8. user errors are one line with exit status 2 (no traceback), checked before any compile; --help exits 0;
   Orbax's INFO lines stay off the console; sweep betas are named exactly.
(Observation 7 and the loader errors of 8 are tests/test_reliability_rewards.py.)

The signal tests run the interrupted part as a subprocess (real signals, real exit status) and the
uninterrupted and resumed parts in this process, on tiny configurations; one tiny pre-training run is the
starting checkpoint of every RL test.
"""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax.control.configs import config_from_flags
from dipod_jax.control.envs import make_environment
from dipod_jax.run import files, harness, program, record
from dipod_jax.run.checkpoints import CheckpointStore, to_savable
from experiments import control, double_drift, lm_pretrain, lm_rl
from launch import sweep

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_ENV = "tiny/point_target"
TIMING = ("elapsed_s", "train/step_s", "train/tokens_per_s", "env_steps_per_s")


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _command(module, *args):
    return [sys.executable, "-m", module, *args]


def run_command(module, *args, timeout=600):
    """(exit status, stdout, stderr) of `python -m module args` from the repository root."""
    result = subprocess.run(_command(module, *args), capture_output=True, text=True, cwd=REPO, env=_env(),
                            timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def run_until(module, args, ready, signum, timeout=600):
    """Starts `python -m module args`, sends `signum` once ready() is true, and returns (status, stdout,
    stderr) when it has exited."""
    process = subprocess.Popen(_command(module, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO, env=_env())
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "the run never became ready"
        time.sleep(0.05)
    process.send_signal(signum)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def metrics_has(out_dir, field):
    """A readiness test: out_dir/metrics.jsonl holds a complete record with `field`."""
    def ready():
        path = os.path.join(out_dir, files.METRICS_FILE)
        if not os.path.exists(path):
            return False
        with open(path) as handle:
            return any(line.endswith("\n") and field in json.loads(line) for line in handle)
    return ready


def _printed_summary(out, workdir):
    """The summary a program wrote to workdir/run_summary.json, after checking that its printed table names the
    stop and the file (issue 20: the JSON goes to the file, the terminal gets a short table and the paths)."""
    summary = files.read_json(os.path.join(workdir, program.SUMMARY_FILE))
    assert f"{summary['stopped']} at step {summary['step']}" in out and program.SUMMARY_FILE in out, out[-2000:]
    return summary


def without_timing(records):
    return [{key: value for key, value in r.items() if key not in TIMING} for r in records]


def assert_one_line_usage_error(status, err, *fragments):
    """Exit status 2, no traceback, and the error is one line naming every fragment."""
    assert status == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------------- harness units


def test_non_finite_checks_numbers_and_parameter_trees():
    """non_finite names each non-finite value: a NaN loss (with its value), an infinite gradient norm, a
    parameter tree with one inf; integer leaves are not checked; all finite gives None."""
    params = {"w": jnp.ones((3,)), "count": jnp.int32(4)}
    assert harness.non_finite(loss=1.0, gradient_norm=np.float32(2.0), updated_parameters=params) is None
    bad = {"w": jnp.array([1.0, jnp.inf, 0.0]), "count": jnp.int32(4)}
    assert harness.non_finite(loss=float("nan"), gradient_norm=np.float32(np.inf), updated_parameters=bad) == (
        "non-finite loss (nan), gradient norm (inf), updated parameters")
    assert harness.non_finite(loss=np.array([[0.5, np.nan]])) == "non-finite loss"


def test_atomic_json_write_keeps_the_old_file_when_writing_fails(tmp_path):
    """write_json_atomic replaces the file whole; a value that cannot be written leaves the old file intact and
    no temporary file behind."""
    path = str(tmp_path / "record.json")
    files.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        files.write_json_atomic(path, {"a": object()})
    assert files.read_json(path) == {"a": 1} and os.listdir(tmp_path) == ["record.json"]


def test_metrics_truncation_drops_later_steps_and_a_torn_line(tmp_path):
    """truncate_metrics keeps the records of steps <= the checkpoint step in order and drops later ones and a
    half-written last line (a kill mid-append)."""
    with open(tmp_path / files.METRICS_FILE, "w") as handle:
        for step in (0, 1, 2, 3):
            handle.write(json.dumps({"step": step, "x": step}) + "\n")
        handle.write('{"step": 4, "x"')
    assert files.truncate_metrics(str(tmp_path), 2) == 2
    assert [r["step"] for r in files.read_metrics(str(tmp_path))] == [0, 1, 2]


def test_checkpoint_round_trip_with_keys_and_empty_arrays(tmp_path):
    """A state with a typed PRNG key and a zero-size array (as in MJX data) is restored exactly."""
    state = {"key": jax.random.key(3), "empty": jnp.zeros((4, 0)), "params": jnp.arange(6.0).reshape(2, 3),
             "count": jnp.int32(7)}
    store = CheckpointStore(str(tmp_path))
    store.save(5, {"state": state})
    template = {"key": jax.random.key(0), "empty": jnp.zeros((4, 0)), "params": jnp.zeros((2, 3)),
                "count": jnp.int32(0)}
    restored = store.restore(5, {"state": template})["state"]
    chex.assert_trees_all_equal(to_savable(restored), to_savable(state))
    chex.assert_shape(restored["empty"], (4, 0))
    store.close()


def _data_files(step_dir):
    """The array data files of a checkpoint step's "state" item (Orbax OCDBT: state/d/<hash>)."""
    data_dir = os.path.join(step_dir, "state", "d")
    return [os.path.join(data_dir, name) for name in os.listdir(data_dir)]


@pytest.mark.parametrize("damage", ["truncated file", "missing item"])
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path, damage, caplog):
    """Observation 6: the newest checkpoint damaged (a data file truncated, or its item directory gone) is
    reported in a warning naming it, moved to checkpoints_unreadable/, and the next older one is restored;
    the run can then write that step again."""
    store = CheckpointStore(str(tmp_path), keep=3)
    for step in (1, 2):
        store.save(step, {"state": {"w": jnp.full((64,), float(step))}})
    newest = os.path.join(store.directory, "2")
    if damage == "truncated file":
        data = _data_files(newest)
        assert data
        for path in data:
            with open(path, "r+b") as handle:
                handle.truncate(8)
    else:
        import shutil

        shutil.rmtree(os.path.join(newest, "state"))
    store.close()
    store = CheckpointStore(str(tmp_path), keep=3)
    with caplog.at_level(logging.WARNING):
        step, trees = store.restore_newest({"state": {"w": jnp.zeros((64,))}})
    assert step == 1 and float(trees["state"]["w"][0]) == 1.0
    assert any(newest in message and "unreadable" in message for message in caplog.messages), caplog.messages
    assert store.steps() == [1] and os.path.isdir(tmp_path / "checkpoints_unreadable" / "2")
    store.save(2, {"state": {"w": jnp.full((64,), 5.0)}})
    assert store.steps() == [1, 2]
    store.close()


def _tiny_run(out_dir, resume=False, record_=None):
    return harness.Run(str(out_dir), experiment="unit", record_file="config.json", record=record_ or {"lr": 0.1},
                       resume=resume)


def test_non_finite_stop_never_deletes_a_checkpoint_it_did_not_write(tmp_path):
    """Observation 2: a non-finite loss right after a resume, computed from the parameters of the resumed
    checkpoint, stops the run but leaves that checkpoint (another process wrote it); a checkpoint this process
    wrote is deleted in the same situation, and the one before it stays."""
    with _tiny_run(tmp_path) as first:
        first.start(0)
        first.save(3, {"state": {"w": jnp.ones(2)}})
    with _tiny_run(tmp_path, resume=True) as resumed:
        step, _ = resumed.restore({"state": {"w": jnp.zeros(2)}})
        resumed.start(step)
        summary = resumed.stop_non_finite(step, "non-finite loss (nan)", loss_is_finite=False)
        assert summary["newest_checkpoint"] == 3 and resumed.checkpoints.steps() == [3]
    with _tiny_run(tmp_path, resume=True) as resumed:
        step, _ = resumed.restore({"state": {"w": jnp.zeros(2)}})
        resumed.start(step)
        resumed.save(4, {"state": {"w": jnp.ones(2)}})
        summary = resumed.stop_non_finite(4, "non-finite loss (nan)", loss_is_finite=False)
        assert summary["newest_checkpoint"] == 3 and resumed.checkpoints.steps() == [3]


def test_directory_claims(tmp_path, caplog):
    """Observations 3 and 4 at the harness level: --resume with nothing to resume is an error; a directory
    holding another run is refused without --resume; --resume with other settings lists every difference;
    another experiment's directory is refused; the same run that never saved a checkpoint restarts from 0
    with its metrics emptied (not appended to)."""
    with pytest.raises(program.UsageError, match="nothing to resume"):
        _tiny_run(tmp_path / "empty", resume=True)
    with _tiny_run(tmp_path / "a", record_={"lr": 0.1, "seed": 0}) as run:
        run.start(0).write({"step": 1, "loss": 1.0})
    with pytest.raises(program.UsageError, match="already holds a run"):
        _tiny_run(tmp_path / "a", record_={"lr": 0.2, "seed": 0})
    with caplog.at_level(logging.WARNING):
        with _tiny_run(tmp_path / "a", record_={"lr": 0.1, "seed": 0}) as run:
            assert run.mode == record.RESTART
            run.start(0).write({"step": 1, "loss": 2.0})
    assert files.read_metrics(str(tmp_path / "a")) == [{"step": 1, "loss": 2.0}]
    with _tiny_run(tmp_path / "a", record_={"lr": 0.1, "seed": 0}) as run:
        run.start(0)
        run.save(1, {"state": {"w": jnp.ones(2)}})
    with pytest.raises(program.UsageError, match="already holds a run .checkpoints.; pass --resume"):
        _tiny_run(tmp_path / "a", record_={"lr": 0.1, "seed": 0})
    with pytest.raises(program.UsageError) as refused:
        _tiny_run(tmp_path / "a", resume=True, record_={"lr": 0.2, "seed": 1})
    assert "lr: 0.1 -> 0.2" in str(refused.value) and "seed: 0 -> 1" in str(refused.value)
    with pytest.raises(program.UsageError, match="holds a run of unit, not of other"):
        harness.Run(str(tmp_path / "a"), experiment="other", record_file="config.json", record={"lr": 0.1},
                    resume=True)


def test_float_names_are_exact():
    """Observation 8: betas 1e-7 and 1.000001e-7 get different names that read back exactly; short names
    stay as before (0 -> "0", 0.05 -> "0.05")."""
    for value in (0.0, 0.05, 1e-7, 1.000001e-7, 0.1 + 0.2, 3.0):
        assert float(record.float_name(value)) == value
    assert (record.float_name(0.0), record.float_name(0.05), record.float_name(1e-7)) == ("0", "0.05", "1e-07")
    assert record.float_name(1.000001e-7) == "1.000001e-07"


# --------------------------------------------------------------------------------------- the sweep runner


def test_sweep_betas_are_exact_and_a_changed_command_is_an_error(tmp_path):
    """Observations 5 and 8: close betas are two runs with exact --config.dipod_beta values; a rerun whose --extra
    changed is refused naming the runs (never skipped); --extra=--resume is refused (the sweep resumes)."""
    runs = sweep.build_runs("lm_rl", ["fpo"], [1e-7, 1.000001e-7], [0], str(tmp_path), ["--steps=5"])
    assert len({run["workdir"] for run in runs}) == 2
    assert [c for c in runs[1]["command"] if c.startswith("--config.dipod_beta")] == [
        "--config.dipod_beta=1.000001e-07"]
    done = [dict(run, status="succeeded") for run in runs]
    changed = sweep.build_runs("lm_rl", ["fpo"], [1e-7, 1.000001e-7], [0], str(tmp_path), ["--steps=6"])
    with pytest.raises(program.UsageError, match="another command.*--steps=5 .* --steps=6"):
        sweep.merge_previous(changed, done)
    assert [run["status"] for run in sweep.merge_previous(runs, done)] == ["succeeded", "succeeded"]
    with pytest.raises(ValueError, match="--extra=--resume"):
        sweep.build_runs("lm_rl", ["fpo"], [0.0], [0], str(tmp_path), ["--resume"])


# A stand-in experiment: saves a "checkpoint" directory, records its argv, then waits to be stopped; on
# SIGTERM it exits like an experiment that saved (143).
SLEEPER = """
import json, os, signal, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
os.makedirs(os.path.join(args["workdir"], "checkpoints", "1"), exist_ok=True)
with open(os.path.join(args["workdir"], "argv.json"), "w") as handle:
    json.dump(sys.argv[1:], handle)
if "--resume" in sys.argv:
    sys.exit(0)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(128 + signal.SIGTERM))
time.sleep(600)
"""


def test_sweep_sigterm_stops_children_and_marks_the_manifest(tmp_path):
    """Observation 5: SIGTERM to the sweep reaches its running experiment (no orphan), the manifest marks it
    interrupted (not running) and the sweep exits 143; a rerun relaunches it with --resume (its directory
    holds a checkpoint) and it succeeds."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    root = tmp_path / "sweep"
    args = [f"--out_root={root}", "--algos=fpo", "--betas=0", "--seeds=0"]
    manifest = root / sweep.MANIFEST_FILE
    env = {**_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{_env()['PYTHONPATH']}"}
    script = (f"import sys; sys.argv = ['sweep'] + {args!r}; from launch import sweep; "
              "sweep.EXPERIMENTS['lm_rl'] = 'sleeper'; sweep.define_flags(); "
              "sweep.run_program(sweep.main)")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    argv_file = root / "fpo_beta0_seed0" / "argv.json"
    deadline = time.time() + 120
    while not argv_file.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    child_pid = sweep.read_manifest(str(manifest))[0]["pid"]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    entry = sweep.read_manifest(str(manifest))[0]
    assert (entry["status"], entry["returncode"]) == ("interrupted", 128 + signal.SIGTERM)
    argv_file.unlink()
    rerun = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(argv_file.read_text())[-1] == "--resume"
    assert sweep.read_manifest(str(manifest))[0]["status"] == "succeeded"


# ------------------------------------------------------------------------------- control (Ctrl-C, SIGINT)

CONTROL_ITERATIONS = 400
CONTROL_OVERRIDES = dict(env_name=TINY_ENV, algo="fpo", dipod_beta=0.05, num_updates_per_batch=1)


@pytest.fixture(scope="module")
def control_env():
    return make_environment(TINY_ENV)


def _control_config():
    return config_from_flags(None, CONTROL_OVERRIDES)


def _control_run(out_dir, env, resume=False, iterations=CONTROL_ITERATIONS):
    config = _control_config()
    return control.run(config, str(out_dir), seed=0, num_seeds=1,
                       num_timesteps=iterations * config.env_steps_per_iteration, iterations_per_call=1,
                       checkpoint_every=100, eval_every=100, resume=resume, progress=False, env=env)


def test_control_ctrl_c_then_resume_is_bit_identical(tmp_path, control_env):
    """Observations 5 and 8 for experiments.control: Ctrl-C (SIGINT) mid-run saves the current iteration and
    exits 130 without a traceback, and no Orbax INFO line reaches the console; --resume then ends with the
    state and metrics (wall-clock speed aside) of an uninterrupted run."""
    split = str(tmp_path / "split")
    config = _control_config()
    status, out, err = run_until("experiments.control", [
        *[f"--config.{name}={value}" for name, value in CONTROL_OVERRIDES.items()],
        f"--num_timesteps={CONTROL_ITERATIONS * config.env_steps_per_iteration}", "--checkpoint_every=100",
        "--eval_every=100", f"--workdir={split}", "--noprogress"], metrics_has(split, "iteration"), signal.SIGINT)
    assert status == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGINT" in err
    assert not [line for line in err.splitlines() if line.startswith("I1") or "orbax" in line.lower()], err[-3000:]
    summary = _printed_summary(out, split)
    stopped_at = summary["step"]
    assert summary["stopped"] == "signal" and 0 < stopped_at < CONTROL_ITERATIONS
    assert CheckpointStore(split, read_only=True).latest() == stopped_at

    straight_state, _ = _control_run(tmp_path / "straight", control_env)
    resumed_state, resumed = _control_run(split, control_env, resume=True)
    assert resumed == {"step": CONTROL_ITERATIONS, "stopped": "completed"}
    chex.assert_trees_all_equal(to_savable(straight_state), to_savable(resumed_state))
    assert without_timing(files.read_metrics(split)) == without_timing(files.read_metrics(str(tmp_path / "straight")))


def test_control_refuses_an_old_run_and_restarts_the_same_one(tmp_path, control_env):
    """Observation 4 for experiments.control: a workdir holding another run's config.json and metrics but no
    checkpoint is refused (no appending, no overwritten config.json); the same run restarts with its
    metrics.jsonl replaced, so each iteration is logged once."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"experiment": "control", "seed": 7}))
    (workdir / files.METRICS_FILE).write_text(json.dumps({"iteration": 1, "kind": "train"}) + "\n")
    with pytest.raises(ValueError, match="already holds a run .config.json, metrics.jsonl."):
        _control_run(workdir, control_env, iterations=2)
    assert json.loads((workdir / "config.json").read_text())["seed"] == 7
    config = _control_config()
    files.write_json_atomic(str(workdir / "config.json"), record.normalized(
        {"experiment": "control", **control.run_record(config, 0, 1, 1)}))
    _, summary = _control_run(workdir, control_env, iterations=2)
    assert summary["stopped"] == "completed"
    iterations = [r["iteration"] for r in files.read_metrics(str(workdir)) if r["kind"] == "train"]
    assert iterations == [1, 2]


# ------------------------------------------------------------------------------------ lm_pretrain (SIGTERM)

PRETRAIN = dict(task="sudoku", model_size="tiny", batch=2, steps=6, eval_interval=3, eval_items=2, log_interval=1,
                warmup_steps=0)


def _pretrain_flags(out_dir):
    return [f"--{name}={value}" for name, value in PRETRAIN.items()] + [f"--workdir={out_dir}"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """An uninterrupted tiny pre-training run: the reference of the lm_pretrain tests and the starting
    checkpoint of every RL test here."""
    out_dir = str(tmp_path_factory.mktemp("pretrain_straight"))
    summary = lm_pretrain.train(lm_pretrain.PretrainSettings(workdir=out_dir, **PRETRAIN), show_progress=False)
    assert summary["stopped"] == "completed"
    return out_dir


def _params(out_dir):
    store = CheckpointStore(out_dir, read_only=True)
    return store.restore(store.latest(), {"params": None})["params"]


def test_lm_pretrain_sigterm_then_resume_is_bit_identical(pretrained, tmp_path):
    """Observation 5 for experiments.lm_pretrain: SIGTERM mid-run saves the current step and exits 143;
    --resume then ends with the parameters and metrics (timing aside) of the uninterrupted run."""
    split = str(tmp_path / "split")
    status, out, err = run_until("experiments.lm_pretrain", _pretrain_flags(split), metrics_has(split, "train/loss"),
                                 signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    summary = _printed_summary(out, split)
    assert summary["stopped"] == "signal" and 0 < summary["step"] < PRETRAIN["steps"]
    assert CheckpointStore(split, read_only=True).latest() == summary["step"]
    resumed = lm_pretrain.train(lm_pretrain.PretrainSettings(workdir=split, resume=True, **PRETRAIN),
                                show_progress=False)
    assert resumed["stopped"] == "completed"
    jax.tree.map(np.testing.assert_array_equal, _params(split), _params(pretrained))
    assert without_timing(files.read_metrics(split)) == without_timing(files.read_metrics(pretrained))


@pytest.mark.parametrize("change, listed", [
    (dict(learning_rate=2e-3), "settings.learning_rate: 0.001 -> 0.002"), (dict(batch=4), "settings.batch: 2 -> 4"),
    (dict(seed=1), "settings.seed: 0 -> 1"), (dict(steps=9), "settings.decay_steps: 6 -> 9")])
def test_lm_pretrain_resume_refuses_changed_settings(pretrained, change, listed):
    """Observation 3 for experiments.lm_pretrain: --resume with a new --learning_rate, --batch or --seed (or a --steps
    that moves the learning-rate schedule) is refused, the difference listed; config.json is untouched."""
    before = files.read_json(os.path.join(pretrained, "config.json"))
    with pytest.raises(ValueError, match="settings differ") as refused:
        lm_pretrain.train(lm_pretrain.PretrainSettings(workdir=pretrained, resume=True, **{**PRETRAIN, **change}),
                          show_progress=False)
    assert listed in str(refused.value)
    # A --steps that moves the schedule says how to extend the run with the same one (issue 21, class 9).
    assert ("pass --decay_steps=<the recorded value>" in str(refused.value)) == ("steps" in change)
    assert files.read_json(os.path.join(pretrained, "config.json")) == before


def test_lm_pretrain_non_finite_update_is_not_saved(tmp_path):
    """Observation 1 for experiments.lm_pretrain: a learning rate that is finite as a flag but infinite in
    float32 makes the (final) update non-finite while its loss is finite: the run stops with exit status 1
    and saves nothing, instead of saving NaN parameters and exiting 0."""
    settings = lm_pretrain.PretrainSettings(workdir=str(tmp_path), **{**PRETRAIN, "steps": 1, "eval_interval": 1,
                                                                     "learning_rate": 1e39})
    summary = lm_pretrain.train(settings, show_progress=False)
    assert summary["stopped"] == "non_finite" and summary["step"] == 0
    assert "updated parameters" in summary["problem"] and "loss" not in summary["problem"]
    assert program.exit_code(summary) == 1
    assert CheckpointStore(str(tmp_path), read_only=True).steps() == []


# ---------------------------------------------------------------------------------------- lm_rl (SIGTERM)

RL_OVERRIDES = dict(algo="fpo", dipod_beta=0.05, num_prompts=2, num_generations=2, num_inner_iterations=2,
                    kl_beta=0.04, ref_sync_every=3, learning_rate=1e-3, num_elbo_draws=2, rollout_temperature=1.0)
RL_RUN = dict(steps=4, eval_interval=2, eval_items=4, num_devices=1)


def _rl_settings(init_dir, out_dir, **changes):
    overrides = {**RL_OVERRIDES, **changes.pop("overrides", {})}
    return lm_rl.RLRunSettings(workdir=str(out_dir), init_dir=init_dir, config_overrides=tuple(overrides.items()),
                               plot=False, **{**RL_RUN, **changes})


def _rl_flags(init_dir, out_dir):
    return ([f"--init_dir={init_dir}", f"--workdir={out_dir}", "--noplot"]
            + [f"--{name}={value}" for name, value in RL_RUN.items()]
            + [f"--config.{field}={value}" for field, value in RL_OVERRIDES.items()])


@pytest.fixture(scope="module")
def rl_straight(pretrained, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("rl_straight")
    return out_dir, lm_rl.train(_rl_settings(pretrained, out_dir), show_progress=False)


def test_lm_rl_sigterm_then_resume_is_bit_identical(pretrained, rl_straight, tmp_path):
    """Observations 4 and 5 for experiments.lm_rl: SIGTERM mid-run saves the current step and exits 143;
    --resume then ends with the parameters, metrics (each step once, timing aside) and paired start / end
    evaluation (paired_eval.json) of the uninterrupted run."""
    straight_dir, straight = rl_straight
    split = str(tmp_path / "split")
    status, out, err = run_until("experiments.lm_rl", _rl_flags(pretrained, split), metrics_has(split, "train/loss"),
                                 signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    summary = _printed_summary(out, split)
    assert summary["stopped"] == "signal" and 0 < summary["step"] < RL_RUN["steps"]
    resumed = lm_rl.train(_rl_settings(pretrained, split, resume=True), show_progress=False)
    assert resumed.stopped == "completed" and resumed.step == RL_RUN["steps"]
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, straight.final_params),
                                jax.tree.map(np.asarray, resumed.final_params))
    assert without_timing(files.read_metrics(split)) == without_timing(files.read_metrics(str(straight_dir)))
    assert files.read_json(os.path.join(split, "paired_eval.json")) == files.read_json(
        str(straight_dir / "paired_eval.json"))


def test_lm_rl_resume_refuses_changed_settings_and_another_init_dir(pretrained, rl_straight, tmp_path):
    """Observations 2 and 3 for experiments.lm_rl: --resume with a new --seed or --config.dipod_beta, or from
    another --init_dir (here the same weights under another path), is refused naming the field and
    rl_config.json keeps its values; --resume in an empty directory is an error instead of a fresh start."""
    straight_dir, _ = rl_straight
    before = files.read_json(str(straight_dir / "rl_config.json"))
    with pytest.raises(ValueError, match="settings.seed: 0 -> 1"):
        lm_rl.train(_rl_settings(pretrained, straight_dir, seed=1, resume=True), show_progress=False)
    with pytest.raises(ValueError, match="rl_config.dipod_beta: 0.05 -> 0.1"):
        lm_rl.train(_rl_settings(pretrained, straight_dir, overrides=dict(dipod_beta=0.1), resume=True),
                    show_progress=False)
    other_path = str(tmp_path / "same_weights_elsewhere")
    os.symlink(pretrained, other_path)
    with pytest.raises(ValueError, match="settings.init_dir: "):
        lm_rl.train(_rl_settings(other_path, straight_dir, resume=True), show_progress=False)
    assert files.read_json(str(straight_dir / "rl_config.json")) == before
    with pytest.raises(ValueError, match="nothing to resume"):
        lm_rl.train(_rl_settings(pretrained, tmp_path / "empty", resume=True), show_progress=False)


def test_lm_rl_resume_refuses_a_test_file_changed_in_place(pretrained, tmp_path):
    """Issue 21, class 5: the run record holds the test set's content digest, so a test file rewritten with other
    puzzles of the same count under the same path is refused on --resume (it used to resume and pair different
    items), naming the field."""
    from dipod_jax.lm.tasks import sudoku

    items = sudoku.load_test_set()
    test_file = tmp_path / "test.csv"

    def write_items(chosen):
        test_file.write_text("Puzzle,Solution\n" + "".join(f"{i.puzzle},{i.solution}\n" for i in chosen))

    write_items(items[:4])
    out_dir = tmp_path / "run"
    lm_rl.train(_rl_settings(pretrained, out_dir, steps=2, test_path=str(test_file)), show_progress=False)
    write_items(items[4:8])
    with pytest.raises(ValueError, match="settings.test_digest: "):
        lm_rl.train(_rl_settings(pretrained, out_dir, steps=4, test_path=str(test_file), resume=True),
                    show_progress=False)


def test_lm_rl_damaged_evaluation_files_and_a_lost_final_record(pretrained, rl_straight, tmp_path):
    """Issue 21, classes 5 and 8, on a copy of a finished run resumed at its last step: a final evaluation
    record missing from metrics.jsonl (a death between paired_eval.json and the log) is logged again from the
    file; a damaged paired_eval.json is evaluated again (same result); a damaged eval_start.json is refused in
    one line before anything runs."""
    import shutil

    straight_dir, _ = rl_straight
    copy = tmp_path / "copy"
    shutil.copytree(straight_dir, copy)
    records = files.read_metrics(str(copy))
    final = [r for r in records if r["step"] == RL_RUN["steps"] and "eval/mean_reward" in r]
    assert len(final) == 1
    (copy / files.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records if r is not final[0]))
    lm_rl.train(_rl_settings(pretrained, copy, resume=True), show_progress=False)
    assert without_timing(files.read_metrics(str(copy))) == without_timing(records)
    paired = files.read_json(str(copy / "paired_eval.json"))
    (copy / "paired_eval.json").write_text("{")
    summary = lm_rl.train(_rl_settings(pretrained, copy, resume=True), show_progress=False)
    assert files.read_json(str(copy / "paired_eval.json")) == paired
    assert summary.paired_eval == paired["difference"]
    (copy / "eval_start.json").write_text('{"step": 0, "rewards": [0.5')
    with pytest.raises(ValueError, match="eval_start.json is not readable"):
        lm_rl.train(_rl_settings(pretrained, copy, resume=True), show_progress=False)


@pytest.mark.parametrize("changes, message", [
    (dict(task="gsm8k"), "--task=gsm8k has templates ['d1'], not the model's 'compact'"),
    (dict(num_devices=99), "--num_devices=99: only 8 device(s) here"),
    (dict(mesh_data=3), "--mesh_data=3 does not divide the 1 device(s) of the run"),
    (dict(overrides=dict(lora_only=True)),
     "--config.lora_only=true trains only LoRA adapters, and this model has none"),
])
def test_lm_rl_impossible_settings_are_refused_before_anything_runs(pretrained, tmp_path, changes, message):
    """Issue 21, classes 6 and 7: a task whose template the model lacks, more devices than there are, a mesh that
    does not divide them, and LoRA-only training without adapters are one-line errors before any compile and
    before the directory is claimed (they used to run silently or end in a traceback)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        lm_rl.train(_rl_settings(pretrained, tmp_path / "run", **changes), show_progress=False)
    assert not os.path.exists(tmp_path / "run")


def test_lm_rl_test_prompts_longer_than_the_model_are_refused(pretrained):
    """Issue 21, class 7: a test prompt longer than the model's prompt columns is named (item and file) before
    compiling, instead of failing inside the first evaluation."""
    from dipod_jax.lm.tasks import get_task
    from dipod_jax.lm.tokenizer import char_tokenizer

    task = get_task("sudoku")
    info = {"task": "sudoku", "template": "compact", "prompt_length": 16, "gen_length": 24}
    settings = _rl_settings(pretrained, "unused", test_path="puzzles.csv")
    with pytest.raises(ValueError, match="puzzles.csv: item 1 has a 17-token prompt, longer than the model's 16"):
        lm_rl.check_task_fits(task, info, char_tokenizer(), task.load_test(None)[:3], settings)


def test_lm_rl_non_finite_final_update_exits_non_zero(pretrained, tmp_path):
    """Observation 1 for experiments.lm_rl (the issue's command: --steps=2 --checkpoint_interval=1
    --max_grad_norm=1e30 --learning_rate=1e30): the final update is non-finite; it is not saved, the run stops
    with exit status 1, and the newest checkpoint holds finite parameters."""
    settings = _rl_settings(pretrained, tmp_path, steps=2, checkpoint_interval=1, eval_interval=10,
                            overrides=dict(learning_rate=1e30, max_grad_norm=1e30, warmup_steps=0,
                                           num_inner_iterations=1))
    summary = lm_rl.train(settings, show_progress=False)
    assert summary.stopped == "non_finite" and program.exit_code(summary.record()) == 1
    assert not os.path.exists(tmp_path / "paired_eval.json")
    store = CheckpointStore(str(tmp_path), read_only=True)
    assert store.latest() == summary.newest_checkpoint is not None and store.latest() < 2
    kept = store.restore(store.latest(), {"state": None})["state"]
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(kept["params"]))


# ----------------------------------------------------------------------------------- double_drift (SIGTERM)

DRIFT = dict(settings=["bandit_fpo"], bandit_dipod_beta=0.3, sequence_dipod_beta=0.05, num_seeds=2, steps=6)


def test_double_drift_sigterm_then_resume_is_bit_identical(tmp_path, caplog):
    """Observations 4, 5 and 6 for experiments.double_drift: SIGTERM as soon as the run has claimed its
    directory (while it compiles) stops it after its first step, saved, with exit status 143; another run in
    that directory is refused (no overwriting); --resume continues from the checkpoint and ends with the
    metrics and summary of an uninterrupted run; a truncated finished-run file is reported by path and
    trained again."""
    straight = str(tmp_path / "straight")
    straight_summary = double_drift.run_experiment(workdir=straight, **DRIFT)
    split = str(tmp_path / "split")
    first_run = os.path.join(split, "runs", "bandit_fpo__beta0.npz")
    flags = ["--settings=bandit_fpo", "--bandit_dipod_beta=0.3", "--sequence_dipod_beta=0.05", "--num_seeds=2",
             "--steps=6", f"--workdir={split}"]
    status, out, err = run_until("experiments.double_drift", flags,
                                 lambda: os.path.exists(os.path.join(split, "config.json")), signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err[-3000:]
    assert _printed_summary(out, split) == {"stopped": "signal", "step": 1, "signal": signal.SIGTERM}
    assert CheckpointStore(split, read_only=True).steps() == [1] and not os.path.exists(first_run)
    with pytest.raises(ValueError, match="already holds a run"):
        double_drift.run_experiment(workdir=split, **{**DRIFT, "bandit_dipod_beta": 0.5})
    resumed = double_drift.run_experiment(workdir=split, resume=True, **DRIFT)
    assert resumed == straight_summary
    for name in ("metrics.jsonl", "summary.json"):
        with open(os.path.join(split, name)) as a, open(os.path.join(straight, name)) as b:
            assert a.read() == b.read(), name
    with open(first_run, "r+b") as handle:
        handle.truncate(100)
    with caplog.at_level(logging.WARNING):
        again = double_drift.run_experiment(workdir=split, resume=True, **DRIFT)
    assert again == straight_summary and os.path.exists(first_run + ".unreadable")
    assert any(first_run in message and "unreadable" in message for message in caplog.messages)


# ------------------------------------------------------------------------------ user errors on the console


@pytest.fixture(scope="module")
def a_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "a_file"
    path.write_text("not a directory")
    return str(path)


def test_user_errors_are_one_line_with_status_2(a_file, pretrained, tmp_path):
    """Observation 8: errors our code catches are one line naming the flag, exit status 2, no traceback, and
    come before anything is compiled or trained: control's --config.dipod_beta=inf and a misspelt
    --config.<field>, lm_rl's --config.num_prompts=0, lm_pretrain's
    --weight_decay=nan, double_drift's unwritable --workdir, lm_rl's --resume with nothing to resume, a
    benchmark's --batch=0; --help exits 0."""
    cases = [
        (("experiments.control", f"--config.env_name={TINY_ENV}", "--config.dipod_beta=inf",
          f"--workdir={tmp_path}/c"), ("--config.dipod_beta: must be a finite number >= 0, got inf",)),
        (("experiments.control", "--config.lerning_rate=0.1", f"--workdir={tmp_path}/c"),
         ("--config.lerning_rate is not a setting (did you mean --config.learning_rate?)",)),
        (("experiments.lm_rl", f"--init_dir={pretrained}", f"--workdir={tmp_path}/r2", "--config.num_prompts=0"),
         ("--config.num_prompts: must be an int >= 1, got 0",)),
        (("experiments.lm_pretrain", "--weight_decay=nan", f"--workdir={tmp_path}/p"), ("--weight_decay=nan",)),
        (("experiments.double_drift", "--steps=1", "--num_seeds=1", f"--workdir={a_file}/out"),
         ("--workdir", "a_file")),
        (("experiments.lm_rl", f"--init_dir={pretrained}", f"--workdir={tmp_path}/r", "--resume"),
         ("--resume", "nothing to resume", f"{tmp_path}/r")),
        (("benchmarks.lm_throughput", "--batch=0"), ("--batch=0",)),
    ]
    processes = [subprocess.Popen(_command(*command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=REPO, env=_env()) for command, _ in cases]
    for (_, fragments), process in zip(cases, processes, strict=True):
        _, err = process.communicate(timeout=600)
        assert_one_line_usage_error(process.returncode, err, *fragments)
    assert not os.path.exists(f"{tmp_path}/c/checkpoints") and not os.path.exists(f"{tmp_path}/p")
    status, out, _ = run_command("experiments.lm_pretrain", "--help")
    assert status == 0 and "--weight_decay" in out


def test_lm_rl_answers_longer_than_the_generation_region_are_refused(pretrained):
    """Issue 21, class 6: a task whose longest answer needs more generated tokens than the model has (here a
    Countdown run on a layout with 12 generation columns; Countdown needs 16) is refused naming both."""
    from dipod_jax.lm.tasks import get_task
    from dipod_jax.lm.tokenizer import char_tokenizer

    task = get_task("countdown")
    info = {"task": "countdown", "template": "compact", "prompt_length": 17, "gen_length": 12}
    with pytest.raises(ValueError, match="--task=countdown needs 17 prompt and 16 generated tokens; the model in "
                                         "--init_dir=.* has 17 and 12"):
        lm_rl.check_task_fits(task, info, char_tokenizer(), task.load_test(None)[:2], _rl_settings(pretrained, "x"))
