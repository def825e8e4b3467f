"""Files of a run directory that are never seen half-written: atomic writes, JSON records, the metrics log.

Every whole-file write goes to a temporary file in the same directory that is renamed over the target, so a
reader (or a run killed mid-write) sees either the old or the new file. metrics.jsonl is the one file that
grows by appending; a run resumed from checkpoint step s first truncates it to the records of steps <= s (a
torn last line, from a kill mid-append, is dropped too), so no step is ever logged twice.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"  # Orbax steps (dipod_jax.run.checkpoints)


def write_atomic(path: str, write: Callable[[str], None]) -> None:
    """Calls write(tmp_path) to create a temporary file next to `path` (`write` must close what it opens), forces
    it to disk (fsync), then renames it to `path`: the target is replaced only by a complete file.

    Any error (a failed write, or one only seen at close or fsync, e.g. no space left) is raised and leaves the
    target as it was; the temporary file is removed. The parent directory is created when missing.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp_path)
        descriptor = os.open(tmp_path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically (`write_atomic`)."""
    def write(tmp_path):
        with open(tmp_path, "w", encoding="utf-8") as handle:
            handle.write(text)

    write_atomic(path, write)


def write_json_atomic(path: str, record: Any) -> None:
    """Writes `record` as indented JSON to `path` atomically."""
    def write(tmp_path):
        with open(tmp_path, "w") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")

    write_atomic(path, write)


def read_json(path: str) -> Any:
    """The JSON value stored at `path`; ValueError naming the file (and line) when it is not valid JSON."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: not UTF-8 text (byte {error.start})") from error


def _parse_lines(path: str) -> list[tuple[str, dict[str, Any] | None]]:
    """(line, record or None when the line is not a JSON object) for each non-empty line of `path`."""
    parsed = []
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            parsed.append((line, record if isinstance(record, dict) else None))
    return parsed


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, in order. ValueError naming file:line for a malformed line."""
    path = os.path.join(out_dir, METRICS_FILE)
    records = []
    for number, (_, record) in enumerate(_parse_lines(path), start=1):
        if record is None:
            raise ValueError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records


def truncate_metrics(out_dir: str, last_step: int | None, step_key: str = "step") -> int:
    """Keeps only the records of out_dir/metrics.jsonl whose `step_key` is <= last_step (None: none kept);
    lines that do not parse (a torn last line) are dropped. Each kind of removal is logged as what it is (a
    warning naming file:line for a line that is not a record). Returns the number of lines removed."""
    path = os.path.join(out_dir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    parsed = _parse_lines(path)
    kept = [line if line.endswith("\n") else line + "\n" for line, record in parsed
            if record is not None and last_step is not None and record.get(step_key, last_step + 1) <= last_step]
    not_records = [number for number, (_, record) in enumerate(parsed, start=1) if record is None]
    for number in not_records:
        logging.warning("%s:%d is not a JSON record (a torn or damaged line): dropped", path, number)
    later = len(parsed) - len(kept) - len(not_records)
    if later:
        logging.warning("%s: dropped %d records logged after step %s (this run continues from there)", path, later,
                        last_step)
    if len(kept) != len(parsed):
        write_text_atomic(path, "".join(kept))
    return len(parsed) - len(kept)


class MetricsLog:
    """Appends JSON records to out_dir/metrics.jsonl and mirrors numbers to TensorBoard (out_dir/<tb_dir>).

    Args:
      out_dir: the run directory.
      tensorboard_dir: sub-directory of the TensorBoard events.
      step_key: the record field holding the step (control logs "iteration").
      continues_after: the step a resumed (or restarted: -1) run continues after; TensorBoard then hides the
        events of later steps written before. None for a fresh directory.
      enabled: False on the non-main processes of a multi-host run (nothing is opened or written).
    """

    def __init__(self, out_dir: str, tensorboard_dir: str = "tb", step_key: str = "step",
                 continues_after: int | None = None, enabled: bool = True):
        self._enabled = enabled
        self._step_key = step_key
        if enabled:
            from tensorboardX import SummaryWriter

            self._file = open(os.path.join(out_dir, METRICS_FILE), "a")
            self._writer = SummaryWriter(
                os.path.join(out_dir, tensorboard_dir),
                purge_step=None if continues_after is None else continues_after + 1)

    def write(self, record: dict[str, Any], scalars: dict[str, float] | None = None) -> None:
        """Appends `record` and flushes. TensorBoard gets `scalars` ({tag: value}) when given, else the int /
        float fields of the record, at the record's step."""
        if not self._enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if scalars is None:
            scalars = {name: value for name, value in record.items()
                       if name != self._step_key and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, value, record[self._step_key])

    def close(self) -> None:
        if self._enabled:
            self._file.close()
            self._writer.close()
