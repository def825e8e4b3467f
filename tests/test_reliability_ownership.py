"""Reliability, second round (issue 21): one owner per run directory, nothing erased on a full disk, no hang after
a failed save, no orphaned sweep runs, inputs checked by content, the final evaluation never lost.

Each test reproduces a defect the issue lists (the class number is in its docstring) and fails on the code before
the fix. The tests that need no experiment run here in seconds; those that run an experiment are `integration`.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax.run import files, harness, program, record
from launch import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


# ------------------------------------------------------------------------------------ 1. one owner per directory


def test_a_locked_directory_admits_one_holder_at_a_time(tmp_path):
    """Class 1: while one holder has the directory, a second claim (another open file, as another process
    would make) is refused naming the holder's PID; after release it is admitted."""
    first = record.lock_output_dir(str(tmp_path), "--workdir")
    with pytest.raises(program.UsageError, match=f"--workdir={tmp_path} is in use by process {os.getpid()}"):
        record.lock_output_dir(str(tmp_path), "--workdir")
    first.release()
    record.lock_output_dir(str(tmp_path), "--workdir").release()


def test_the_lock_dies_with_its_process(tmp_path):
    """Class 1: a holder killed by SIGKILL leaves no stale claim (the kernel drops the lock)."""
    script = textwrap.dedent(f"""
        import sys, time
        from dipod_jax.run import record
        lock = record.lock_output_dir({str(tmp_path)!r}, "--workdir")
        print("locked", flush=True)
        time.sleep(600)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(program.UsageError, match=f"in use by process {holder.pid}"):
            record.lock_output_dir(str(tmp_path), "--workdir")
    finally:
        holder.kill()
        holder.wait()
    record.lock_output_dir(str(tmp_path), "--workdir").release()


def test_a_second_run_on_a_live_run_directory_is_refused(tmp_path):
    """Class 1: a second Run on a directory a live Run holds is refused before it reads or writes anything,
    with or without --resume; once the first closes, --resume is admitted."""
    first = harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={"x": 1}, resume=False)
    metrics_before = os.listdir(tmp_path)
    for resume in (False, True):
        with pytest.raises(program.UsageError, match="in use by process"):
            harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={"x": 1}, resume=resume)
    assert os.listdir(tmp_path) == metrics_before
    first.save(1, {"state": {"w": np.ones(3, np.float32)}})
    first.close()
    with harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={"x": 1},
                     resume=True) as second:
        assert second.resuming


# ------------------------------------------------------------------------------ 2. nothing erased on a full disk


def test_a_full_disk_while_truncating_metrics_keeps_every_line(tmp_path, monkeypatch):
    """Class 2: when the rewrite of metrics.jsonl fails where only a flush or close would report it (no space
    left), the error is raised and the 90 lines stay; no temporary file is left behind."""
    lines = "".join(json.dumps({"step": step, "train/loss": 1.0 / step}) + "\n" for step in range(1, 91))
    (tmp_path / files.METRICS_FILE).write_text(lines)

    def full_disk(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.truncate_metrics(str(tmp_path), 45)
    assert (tmp_path / files.METRICS_FILE).read_text() == lines
    assert sorted(os.listdir(tmp_path)) == [files.METRICS_FILE]


# ---------------------------------------------------------------------------- 3. no hang after a failed save


def test_checkpoints_path_that_is_a_file_is_refused_before_anything_runs(tmp_path):
    """Class 3: `checkpoints` being a file is a one-line user error when the run is set up (it used to hang
    after the first save failed)."""
    (tmp_path / files.CHECKPOINT_DIR).write_text("x")
    with pytest.raises(program.UsageError, match="checkpoints is a file, not a directory"):
        harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={}, resume=False)
    record.lock_output_dir(str(tmp_path), "--workdir").release()  # the refused run released its lock


FAILING_SAVE = textwrap.dedent("""
    import errno, os, threading
    import numpy as np
    from dipod_jax.run import harness, program
    from dipod_jax.run.checkpoints import CheckpointStore

    real_save = CheckpointStore.save

    def save(self, step, trees):
        if step == 1:
            return real_save(self, step, trees)
        # What Orbax leaves after a failed write: a non-daemon worker that never finishes.
        threading.Thread(target=threading.Event().wait).start()
        raise OSError(errno.ENOSPC, "No space left on device")

    CheckpointStore.save = save

    def main(argv):
        with harness.Run(os.environ["RUN_DIR"], experiment="demo", record_file="config.json", record={},
                         resume=False) as run:
            for step in (1, 2):
                run.save(step, {"state": {"w": np.full(3, step, np.float32)}})
        return 0

    program.run_program(main)
""")


@pytest.mark.integration
def test_a_failed_checkpoint_save_ends_the_run_at_once_with_status_3(tmp_path):
    """Class 3: a save that fails (here: no space, with a writer thread left blocked, as Orbax leaves it) ends the
    process within seconds with exit status 3 and one line naming the newest complete checkpoint, which stays."""
    workdir = tmp_path / "run"
    started = time.time()
    result = subprocess.run([sys.executable, "-c", FAILING_SAVE], capture_output=True, text=True, cwd=REPO,
                            env={**_env(), "RUN_DIR": str(workdir)}, timeout=120)
    assert result.returncode == program.EXIT_CHECKPOINT, result.stderr[-3000:]
    assert time.time() - started < 100
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "cannot write checkpoint 2" in errors[0] and "newest complete checkpoint is 1" \
        in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(workdir / files.CHECKPOINT_DIR)) == ["1"]


# ----------------------------------------------------------------------------------- 4. no orphaned sweep runs


def test_stop_signals_include_sighup():
    """Class 4 / 10: a hang-up (a closed terminal, a dropped SSH session) requests a clean stop like SIGTERM."""
    # Without SIGHUP among the stop signals this no-op handler would get it (and the test fail, not the process).
    previous = signal.signal(signal.SIGHUP, lambda *args: None)
    with harness.StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.time() + 5
        while signals.received is None and time.time() < deadline:
            time.sleep(0.01)
    signal.signal(signal.SIGHUP, previous)
    assert signals.received == signal.SIGHUP


def test_sweep_refuses_to_relaunch_a_run_whose_recorded_process_is_alive(tmp_path):
    """Class 4: a manifest entry still "running" whose recorded PID is alive and is that run is not launched
    again beside it (one line naming the PID); a dead PID, or a PID reused by another program, is no obstacle."""
    workdir = str(tmp_path / "fpo_beta0_seed0")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", f"--workdir={workdir}"])
    deadline = time.time() + 30
    while workdir not in open(f"/proc/{alive.pid}/cmdline", "rb").read().decode(errors="replace"):
        assert time.time() < deadline  # until the child has exec'd its own command line
        time.sleep(0.01)
    try:
        runs = [{"name": "fpo_beta0_seed0", "workdir": workdir, "command": [sys.executable, "-c", "pass"],
                 "status": "running", "pid": alive.pid}]
        with pytest.raises(program.UsageError, match=f"still running as process {alive.pid}"):
            sweep.run_sweep(runs, str(tmp_path / "manifest.json"))
        assert sweep.live_holder(dict(runs[0], pid=os.getpid())) is None  # alive, but not this run
    finally:
        alive.kill()
        alive.wait()
    assert sweep.live_holder(runs[0]) is None
    finished, _ = sweep.run_sweep(runs, str(tmp_path / "manifest.json"))
    assert finished[0]["status"] == "succeeded"


ORPHAN_CHILD = """
import os, signal, sys, time
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
os.makedirs(args["workdir"], exist_ok=True)
signal.signal(signal.SIGTERM, lambda *a: (open(os.path.join(args["workdir"], "stopped"), "w").close(), sys.exit(143)))
with open(os.path.join(args["workdir"], "pid"), "w") as handle:
    handle.write(str(os.getpid()))
time.sleep(600)
"""


@pytest.mark.integration
def test_sweep_children_are_stopped_when_the_sweep_is_killed(tmp_path):
    """Class 4: SIGKILL to the sweep (no chance to pass anything on) still stops its running experiment, which
    receives SIGTERM (and so would save and exit); nothing runs on as an orphan."""
    (tmp_path / "orphan_child.py").write_text(ORPHAN_CHILD)
    root = tmp_path / "sweep"
    args = [f"--out_root={root}", "--algos=fpo", "--betas=0", "--seeds=0"]
    env = {**_env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{_env()['PYTHONPATH']}"}
    script = (f"import sys; sys.argv = ['sweep'] + {args!r}; from launch import sweep; "
              "sweep.EXPERIMENTS['lm_rl'] = 'orphan_child'; sweep.define_flags(); sweep.run_program(sweep.main)")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env)
    run_dir = root / "fpo_beta0_seed0"
    deadline = time.time() + 120
    while not (run_dir / "pid").exists():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.2)
    child = int((run_dir / "pid").read_text())
    process.kill()
    process.wait()
    deadline = time.time() + 30
    while not (run_dir / "stopped").exists():
        assert time.time() < deadline, "the experiment outlived its sweep without a stop signal"
        time.sleep(0.05)
    deadline = time.time() + 30
    while os.path.exists(f"/proc/{child}") and "zombie" not in open(f"/proc/{child}/status").read().lower():
        assert time.time() < deadline
        time.sleep(0.05)


def test_two_sweeps_cannot_share_an_out_root(tmp_path):
    """Class 1 for sweeps: a second sweep on the same --out_root is refused (it would duplicate records)."""
    held = record.lock_output_dir(str(tmp_path), "--out_root")
    try:
        result = subprocess.run([sys.executable, "-m", "launch.sweep", f"--out_root={tmp_path}", "--algos=fpo",
                                 "--betas=0", "--seeds=0"], capture_output=True, text=True, cwd=REPO, env=_env(),
                                timeout=120)
    finally:
        held.release()
    assert result.returncode == 2 and "--out_root" in result.stderr and "in use by process" in result.stderr
    assert "Traceback" not in result.stderr


def test_max_parallel_zero_is_a_one_line_error(tmp_path):
    """Class 7: --max_parallel=0 is one line with exit status 2, not a traceback."""
    result = subprocess.run([sys.executable, "-m", "launch.sweep", f"--out_root={tmp_path}", "--algos=fpo",
                             "--betas=0", "--seeds=0", "--max_parallel=0"], capture_output=True, text=True, cwd=REPO,
                            env=_env(), timeout=120)
    assert result.returncode == 2 and "--max_parallel=0 must be >= 1" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------- 5. inputs checked by content


def test_value_digest_changes_with_content_not_with_key_order():
    """Class 5: the digest recorded for an input changes when any item changes, not when keys are reordered."""
    items = [{"puzzle": "1000", "solution": "1234"}, {"puzzle": "0200", "solution": "4231"}]
    same = [{"solution": "1234", "puzzle": "1000"}, {"solution": "4231", "puzzle": "0200"}]
    assert record.value_digest(items) == record.value_digest(same)
    assert record.value_digest(items) != record.value_digest([items[0], dict(items[1], solution="4213")])
    assert record.value_digest(items).startswith("sha256:")


# ------------------------------------------------------------------------- 9. a failed resume changes nothing


def test_checkpoints_of_another_model_are_left_in_place(tmp_path):
    """Class 9: when no checkpoint fits the run's template (another model's shapes), none is moved to
    checkpoints_unreadable/ (a later --resume with the right model still finds them) and the error says why."""
    from dipod_jax.run.checkpoints import CheckpointStore

    store = CheckpointStore(str(tmp_path))
    for step in (1, 2):
        store.save(step, {"state": {"w": np.full(3, step, np.float32)}})
    step, trees = store.restore_newest({"state": {"w": jnp.zeros(4, jnp.float32)}})
    assert step is None and trees is None
    assert store.steps() == [1, 2] and not os.path.exists(tmp_path / "checkpoints_unreadable")
    assert store.last_error.startswith("checkpoint 2: ")
    step, trees = store.restore_newest({"state": {"w": jnp.zeros(3, jnp.float32)}})
    assert step == 2 and trees["state"]["w"].tolist() == [2.0, 2.0, 2.0]
    store.close()


def test_messages_name_what_happened(tmp_path, caplog):
    """Class 9: a damaged middle line of metrics.jsonl is reported as such (file:line), not as a record logged
    after the checkpoint; a run record that is not UTF-8 is named in the error."""
    path = tmp_path / files.METRICS_FILE
    path.write_text('{"step": 1}\n{"step": 2, "x"\n{"step": 3}\n{"step": 4}\n')
    with caplog.at_level("WARNING"):
        assert files.truncate_metrics(str(tmp_path), 3) == 2
    assert f"{path}:2 is not a JSON record" in caplog.text and "dropped 1 records logged after step 3" in caplog.text
    assert [r["step"] for r in files.read_metrics(str(tmp_path))] == [1, 3]
    (tmp_path / "config.json").write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.json'}: not UTF-8"):
        files.read_json(str(tmp_path / "config.json"))


# --------------------------------------------------------------- 7. user errors are one line, never a traceback


def test_fractional_network_widths_are_refused_naming_the_field():
    """Class 7: --config.actor_hidden="(1.5,)" is a ConfigError naming the field (it used to fail in Flax)."""
    from dipod_jax.control.configs import TrainConfig
    from dipod_jax.run.config import ConfigError

    with pytest.raises(ConfigError, match="actor_hidden: must be a non-empty tuple of ints >= 1"):
        TrainConfig(actor_hidden=(1.5,))
    with pytest.raises(ConfigError, match="critic_hidden"):
        TrainConfig(critic_hidden=(64, 0))


def test_metrics_path_that_is_a_directory_is_refused(tmp_path):
    """Class 7: a `metrics.jsonl` that is a directory is a one-line error when a resumed run is set up (it used
    to be a traceback when the log was opened)."""
    with harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={}, resume=False) as run:
        run.save(1, {"state": {"w": np.ones(2, np.float32)}})
    (tmp_path / files.METRICS_FILE).mkdir()
    with pytest.raises(program.UsageError, match="metrics.jsonl is not a file"):
        harness.Run(str(tmp_path), experiment="demo", record_file="config.json", record={}, resume=True)


def _manifest_run(tmp_path, name, seed, final, paired=None, metrics_text=None):
    workdir = tmp_path / name
    workdir.mkdir()
    text = metrics_text if metrics_text is not None else json.dumps({"step": 1, "eval/mean_reward": final}) + "\n"
    (workdir / files.METRICS_FILE).write_text(text)
    if paired is not None:
        (workdir / "paired_eval.json").write_text(paired)
    return {"name": name, "group": "fpo", "beta": 0.0, "seed": seed, "workdir": str(workdir)}


def test_sweep_summaries_name_damaged_inputs_and_the_seeds_they_leave_out(tmp_path):
    """Classes 7 and 10 for `launch.sweep --summarize`: a damaged middle line of metrics.jsonl, a paired_eval.json
    without its fields and a manifest entry without a workdir are ValueErrors naming the file; a torn last line
    (a run still writing) is skipped; a seed whose final is NaN is listed as left out, not among the seeds."""
    runs = [_manifest_run(tmp_path, "s0", 0, 0.5), _manifest_run(tmp_path, "s1", 1, float("nan")),
            _manifest_run(tmp_path, "s2", 2, 0.7, metrics_text=json.dumps({"step": 1, "eval/mean_reward": 0.7})
                          + '\n{"step": 2, "eval/me')]
    summary = sweep.summarize(runs, "eval/mean_reward")
    group = summary["groups"]["fpo_beta0"]
    assert group["seeds"] == [0, 2] and group["left_out"] == [1] and group["mean"] == pytest.approx(0.6)
    bad = _manifest_run(tmp_path, "s3", 3, 0.1, metrics_text='{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=f"{bad['workdir']}/metrics.jsonl:2: not a JSON record"):
        sweep.summarize([bad], "eval/mean_reward")
    partial = _manifest_run(tmp_path, "s4", 4, 0.1, paired='{"difference": {"mean": 0.1}}')
    with pytest.raises(ValueError, match="paired_eval.json: not a complete paired evaluation"):
        sweep.summarize_paired([partial])
    (tmp_path / "manifest.json").write_text(json.dumps({"runs": [{"name": "x", "group": "fpo", "beta": 0, "seed": 0}]}))
    with pytest.raises(ValueError, match="manifest.json: entry 1 has no workdir"):
        sweep.read_manifest(str(tmp_path / "manifest.json"))


def test_a_read_only_directory_is_a_one_line_error(tmp_path, monkeypatch):
    """Class 7: `--resume` (or a fresh run) on a read-only file system is one line naming the flag, not a
    traceback: the lock file cannot be created."""
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(record.LOCK_FILE):
            raise OSError(30, "Read-only file system")
        return real_open(path, flags, *args)

    monkeypatch.setattr(record.os, "open", read_only)
    expected = f"--workdir={tmp_path}: cannot create .lock \\(Read-only file system\\)"
    with pytest.raises(program.UsageError, match=expected):
        record.lock_output_dir(str(tmp_path), "--workdir")
