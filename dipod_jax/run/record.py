"""Who owns an output directory: the run record, directory claims and exact names for float settings.

Details: docs/modules.md, section dipod_jax.run.record.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from absl import logging

from dipod_jax.run.files import CHECKPOINT_DIR, METRICS_FILE, read_json, write_json_atomic
from dipod_jax.run.program import UsageError

FRESH, RESTART, RESUME = "fresh", "restart", "resume"
LOCK_FILE = ".lock"


class DirectoryLock:
    """An exclusive lock on a directory, held while this object is open: `flock` on dir/LOCK_FILE, which holds
    the holder's PID for messages. The kernel releases it when the process ends, however it ends."""

    def __init__(self, directory: str, flag: str):
        path = os.path.join(directory, LOCK_FILE)
        try:
            os.makedirs(directory, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UsageError(f"{flag}={directory}: cannot create {LOCK_FILE} ({error.strerror})") from error
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise UsageError(f"{flag}={directory} is in use by process {holder} (a live run holds it); wait for "
                             "it to end or stop it, or choose another directory") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Releases the lock (closing the file releases the flock); safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_output_dir(directory: str, flag: str) -> DirectoryLock:
    """The exclusive lock of `directory` for this process; UsageError naming `flag` and the holder's PID when
    another live process holds it."""
    return DirectoryLock(directory, flag)


def value_digest(value: Any) -> str:
    """"sha256:<hex>" of a JSON-able value (e.g. a test set's items as dicts): recorded for each input, so a
    resumed run refuses one whose content changed although its path did not."""
    text = json.dumps(normalized(value), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str) -> str:
    """"sha256:<hex>" of the file's bytes: recorded for each input file, so a resumed run refuses a changed one."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def float_name(value: float) -> str:
    """A float as text that reads back as exactly the same float, and as short as possible: 0.05 -> "0.05",
    0.0 -> "0", 1e-07 -> "1e-07", 1.000001e-07 -> "1.000001e-07" (`:g` alone would give "1e-07")."""
    value = float(value)
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def has_checkpoint(out_dir: str) -> bool:
    """True when out_dir/checkpoints holds a complete (committed) Orbax step."""
    directory = os.path.join(out_dir, CHECKPOINT_DIR)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def normalized(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, dict keys strings)."""
    return json.loads(json.dumps(value))


def flatten_record(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"dotted.name": leaf} of a nested record (a non-empty dict is descended into; anything else is a leaf)."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(flatten_record(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


_ABSENT = "(absent)"


def record_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """"name: saved -> current" for every field of `current` (nested fields dotted) whose saved value differs
    or is missing. Fields only in `saved` are not differences (a setting this code no longer has)."""
    saved_flat, current_flat = flatten_record(normalized(saved)), flatten_record(normalized(current))
    differences = []
    for name, value in current_flat.items():
        old = saved_flat.get(name, _ABSENT)
        if json.dumps(old) != json.dumps(value):
            differences.append(f"{name}: {json.dumps(old)} -> {json.dumps(value)}")
    return differences


def claim_output_dir(out_dir: str, flag: str, record_file: str, record: dict[str, Any], resume: bool,
                     progress_paths: Iterable[str] = (), other_run_files: Iterable[str] = (),
                     write: bool = True) -> str:
    """Claims `out_dir` for a run whose record is `record`; returns FRESH, RESTART or RESUME.

    Args:
      out_dir: the output directory (created when missing).
      flag: the flag that named it ("--workdir"), for messages.
      record_file: file name of the record inside out_dir.
      record: this run's record (JSON-able; must contain "experiment").
      resume: the run's --resume.
      progress_paths: further paths whose existence is saved progress a --resume continues from (besides
        checkpoints), e.g. finished sub-runs.
      other_run_files: further file names that show the directory holds a run.
      write: write the record on a fresh claim (False on the non-main processes of a multi-host run).

    Raises:
      UsageError (one line naming the flag or file): the directory holds another run and --resume is not
      set; --resume with nothing to resume; --resume with a different record (all differences listed); the
      directory cannot be written.
    """
    path = os.path.join(out_dir, record_file)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        raise UsageError(f"{flag}={out_dir}: cannot create the directory ({error.strerror})") from error
    saved = read_json(path) if os.path.exists(path) else None
    if saved is not None and not isinstance(saved, dict):
        raise UsageError(f"{path}: not a run record (a JSON object expected)")
    progress = has_checkpoint(out_dir) or any(os.path.exists(p) for p in progress_paths)
    if resume:
        if not progress:
            raise UsageError(f"--resume: nothing to resume in {flag}={out_dir} (no checkpoint); "
                             "drop --resume to start a new run")
        if saved is None:
            raise UsageError(f"--resume: {flag}={out_dir} holds checkpoints but no {record_file}")
        _refuse_other_experiment(saved, record, flag, out_dir)
        differences = record_differences(saved, record)
        if differences:
            raise UsageError(f"--resume: settings differ from {path}: " + "; ".join(differences))
        return RESUME
    run_files = [name for name in (record_file, METRICS_FILE, *other_run_files)
                 if os.path.exists(os.path.join(out_dir, name))]
    if progress or run_files:
        if saved is not None and not progress:
            _refuse_other_experiment(saved, record, flag, out_dir)
            if not record_differences(saved, record):
                logging.warning("%s=%s holds this same run, which saved no checkpoint: restarting it from step 0",
                                flag, out_dir)
                return RESTART
        held = "checkpoints" if progress else ", ".join(run_files)
        raise UsageError(f"{flag}={out_dir} already holds a run ({held}); pass --resume to continue it or "
                         "choose a new directory")
    if write:
        try:
            write_json_atomic(path, normalized(record))
        except OSError as error:
            raise UsageError(f"{flag}={out_dir} is not writable ({error.strerror})") from error
    return FRESH


def _refuse_other_experiment(saved: dict[str, Any], record: dict[str, Any], flag: str, out_dir: str) -> None:
    if "experiment" not in saved:
        raise UsageError(f"{flag}={out_dir} holds a run recorded before the run harness (its record has no "
                         "\"experiment\"); continue it with the code that started it, or choose a new directory")
    if saved["experiment"] != record.get("experiment"):
        raise UsageError(f"{flag}={out_dir} holds a run of {saved['experiment']}, "
                         f"not of {record.get('experiment')}")
