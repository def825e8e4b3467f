"""What every language-model training run shares (experiments.lm_pretrain, experiments.lm_rl): checks of its
count flags, the files of its output directory, its progress bar and its stopping rules.

    <out_dir>/checkpoints/<step>/  Orbax: each step is written into a temporary directory and renamed when
                                   complete (atomic); the newest two are kept
    <out_dir>/<run config>.json    written to a temporary file, then renamed (atomic)
    <out_dir>/metrics.jsonl        one JSON record per line, each with its "step"
    <out_dir>/tb/                  TensorBoard events mirroring the numbers of metrics.jsonl

A run refuses a directory that already holds checkpoints unless it resumes (`resume_step`). It stops when its
time budget runs out (`over_time_budget`) or on a non-finite loss, before that step's update is kept
(`stop_on_non_finite_loss`): when the newest checkpoint holds the parameters that produced the loss, that
checkpoint is deleted, so the newest one left is the last good one.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import orbax.checkpoint as ocp

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tb"
CHECKPOINTS_KEPT = 2


def check_flag_bounds(settings, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()) -> None:
    """ValueError naming the flag (--name=value) when a field of `settings` listed in `positive` is <= 0 or
    one listed in `non_negative` is < 0."""
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ValueError(f"--{name}={getattr(settings, name)} must be > 0")
    for name in non_negative:
        if getattr(settings, name) < 0:
            raise ValueError(f"--{name}={getattr(settings, name)} must be >= 0")


def checkpoint_manager(out_dir: str) -> ocp.CheckpointManager:
    """The Orbax manager of out_dir/checkpoints (atomic steps, the newest CHECKPOINTS_KEPT kept)."""
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR)),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=CHECKPOINTS_KEPT))


def save_checkpoint(manager: ocp.CheckpointManager, step: int, trees: dict[str, Any]) -> None:
    """Writes the named pytrees {name: pytree} as checkpoint `step` and waits until it is complete."""
    manager.save(step, args=ocp.args.Composite(**{name: ocp.args.StandardSave(tree) for name, tree in trees.items()}))
    manager.wait_until_finished()


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, templates: dict[str, Any]) -> dict[str, Any]:
    """The named pytrees of checkpoint `step`, restored with the structure, dtypes and shardings of
    `templates` ({name: pytree}); names absent from `templates` are not read."""
    restored = manager.restore(step, args=ocp.args.Composite(
        **{name: ocp.args.StandardRestore(template) for name, template in templates.items()}))
    return {name: restored[name] for name in templates}


def resume_step(manager: ocp.CheckpointManager, out_dir: str, resume: bool) -> int | None:
    """The checkpoint step a run continues from: the newest one when `resume` is set, None for a fresh run.

    Raises ValueError naming --out_dir when the directory already holds checkpoints and `resume` is not set.
    """
    newest = manager.latest_step()
    if newest is not None and not resume:
        raise ValueError(f"--out_dir={out_dir} already holds checkpoints; pass --resume or a new directory")
    return newest


def write_json_atomic(path: str, record: dict[str, Any]) -> None:
    """Writes `record` as indented JSON to path + ".tmp", then renames it to `path` (readers never see half)."""
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)


def read_json(path: str) -> dict[str, Any]:
    """The JSON object stored at `path`."""
    with open(path) as handle:
        return json.load(handle)


class MetricsLog:
    """Appends JSON records to out_dir/metrics.jsonl and mirrors their numbers to out_dir/tb (TensorBoard).

    With enabled=False (the non-main processes of a multi-host run) nothing is opened or written.
    """

    def __init__(self, out_dir: str, enabled: bool = True):
        self._enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self._file = open(os.path.join(out_dir, METRICS_FILE), "a")
            self._writer = SummaryWriter(os.path.join(out_dir, TENSORBOARD_DIR))

    def write(self, record: dict[str, Any]) -> None:
        """Appends `record` (a dict with an int "step") and flushes; int / float values go to TensorBoard."""
        if not self._enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        if self._enabled:
            self._file.close()
            self._writer.close()


def read_metrics(out_dir: str) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, in order."""
    with open(os.path.join(out_dir, METRICS_FILE)) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def stop_on_non_finite_loss(loss: float, step: int, manager: ocp.CheckpointManager, log: MetricsLog) -> bool:
    """True (the run must stop, discarding the update) when `loss`, computed from the state after `step`
    completed steps, is not finite; False otherwise, with nothing done.

    The checkpoint of `step`, if it is the newest, holds the parameters that produced the loss, so it is
    deleted: the newest checkpoint left is the last good one. The event is logged as
    {"step": step + 1, "event": "non_finite_loss", "loss", "newest_checkpoint"}.
    """
    if math.isfinite(loss):
        return False
    if manager.latest_step() == step:
        manager.delete(step)
    log.write({"step": step + 1, "event": "non_finite_loss", "loss": str(loss),
               "newest_checkpoint": manager.latest_step()})
    return True


def exit_if_stopped_on_non_finite_loss(summary: dict[str, Any]) -> None:
    """SystemExit (a failing exit status for scripts) when a run's summary says a non-finite loss stopped it."""
    if summary["stopped"] == "non_finite_loss":
        raise SystemExit(f"non-finite loss at step {summary['step'] + 1}; newest checkpoint is the last good one")


def over_time_budget(started: float, budget_min: float) -> bool:
    """True when a budget of `budget_min` minutes (0 = none) has run out since time.time() was `started`."""
    return bool(budget_min) and time.time() - started > 60 * budget_min


def progress_bar(total_steps: int, start_step: int, enabled: bool, name: str):
    """A tqdm bar over the run's steps, starting at `start_step` (a resumed run); silent when not enabled."""
    from tqdm import tqdm

    return tqdm(total=total_steps, initial=start_step, disable=not enabled, desc=name)
