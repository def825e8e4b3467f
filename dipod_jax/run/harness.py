"""One training run: its claimed directory, checkpoints, metrics log, stop signals and stopping rules.

Details: docs/modules.md, section dipod_jax.run.harness.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from dipod_jax.run import program
from dipod_jax.run import record as run_record
from dipod_jax.run.checkpoints import CheckpointStore
from dipod_jax.run.files import CHECKPOINT_DIR, METRICS_FILE, MetricsLog, truncate_metrics, write_json_atomic
from dipod_jax.run.program import CheckpointWriteError, UsageError

COMPLETED, TIME_BUDGET, NON_FINITE, SIGNAL = "completed", "time_budget", "non_finite", "signal"
# SIGHUP too: a closed terminal or a dropped SSH session stops a run as cleanly as SIGTERM.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def check_writable_directory(path: str, flag: str) -> None:
    """UsageError naming `flag` unless `path` is (or can be created as) a directory this process can write to."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe.{os.getpid()}")
        with open(probe, "w") as handle:
            handle.write("probe\n")
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"{flag}: cannot write in {path} ({error.strerror})") from error


@jax.jit
def _all_finite(leaves: list) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def non_finite(**values: Any) -> str | None:
    """None when every value is finite, else a description such as "non-finite loss (nan), updated parameters".

    Each keyword is a number (loss=..., gradient_norm=...) or a pytree of arrays (updated_parameters=...), whose
    floating leaves are checked in one jitted reduction; underscores in names become spaces.
    """
    problems = []
    for name, value in values.items():
        label = name.replace("_", " ")
        if np.isscalar(value) or isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
            scalar = float(np.asarray(value))
            if not math.isfinite(scalar):
                problems.append(f"{label} ({scalar})")
            continue
        leaves = [leaf for leaf in jax.tree.leaves(value) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
        if leaves and not bool(_all_finite(leaves)):
            problems.append(label)
    return "non-finite " + ", ".join(problems) if problems else None


def over_time_budget(started: float, budget_min: float) -> bool:
    """True when a budget of `budget_min` minutes (0 = none) has run out since time.time() was `started`."""
    return bool(budget_min) and time.time() - started > 60 * budget_min


def progress_bar(total_steps: int, start_step: int, enabled: bool, name: str | None, **kwargs):
    """A tqdm bar over the run's steps, starting at `start_step` (a resumed run); silent when not enabled.

    The first update includes compilation: until it, the bar says "compiling"; after it, the clock restarts, so
    the rate and the time left come from measured steps only (a 3-minute run no longer shows 40 minutes left)."""
    from tqdm import tqdm

    class StepBar(tqdm):
        _compiled = False

        def update(self, n=1):
            shown = super().update(n)
            if not self._compiled and not self.disable:
                self._compiled = True
                self.set_description(name)
                # Forget the first step's time: the overall and the smoothed rate start from here.
                self.initial, self.start_t = self.n, time.time()
                self.last_print_n, self.last_print_t = self.n, self.start_t
                ema = type(self._ema_dn)  # tqdm's smoothing average, fresh
                self._ema_dn, self._ema_dt = ema(self.smoothing), ema(self.smoothing)
            return shown

    label = f"{name} (compiling)" if name else "compiling"
    return StepBar(total=total_steps, initial=start_step, disable=not enabled, desc=label, **kwargs)


def episode_returns(metrics: dict[str, Any]) -> list[tuple[float, float]]:
    """[(mean return of the episodes that ended, how many ended)] per iteration of a control host call, from its
    metrics "episode_return" and "episodes_ended" ([seeds or members, iterations]), pooled over seeds."""
    returns, counts = np.asarray(metrics["episode_return"]), np.asarray(metrics["episodes_ended"])
    pooled = []
    for offset in range(returns.shape[1]):
        ended = float(counts[:, offset].sum())
        pooled.append((float((returns[:, offset] * counts[:, offset]).sum() / ended) if ended else 0.0, ended))
    return pooled


def rolling_episode_return(history: list[tuple[float, float]], window: int = 10) -> str:
    """The mean return of the episodes that ended in the last `window` entries of `history` ([(mean return of the
    episodes ended in an iteration, how many ended)]), as progress text: "-" while none has ended (not 0.0)."""
    recent = history[-window:]
    ended = sum(count for _, count in recent)
    if not ended:
        return "-"
    return f"{sum(value * count for value, count in recent) / ended:.1f}"


class StopSignals:
    """While entered, SIGTERM and SIGINT only record that a stop was requested (the first one); a second
    signal ends the process at once with the default action. Handlers are installed only in the main
    thread, and the previous ones come back on exit."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signum
        logging.warning("received %s: stopping after the current step (a second signal stops at once)",
                        signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, *flags: bool) -> tuple[int | None, ...]:
        """(the stop signal, then each of `flags`), the same on every process of a multi-host run: the largest
        signal received anywhere (or None), and each flag true if it is true anywhere."""
        local = np.array([self.received or 0, *flags], np.int32)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            local = np.max(multihost_utils.process_allgather(local), axis=0)
        return (int(local[0]) or None, *(bool(flag) for flag in local[1:]))


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Run:
    """A training run's directory (claimed on construction), checkpoints, metrics log and stop signals.

    Args:
      out_dir: the run directory.
      experiment: the experiment's name (stored in the record; a directory of another experiment is refused).
      record_file: file name of the run record inside out_dir.
      record: every setting that changes the run's results (JSON-able); "experiment" is added.
      resume: the --resume flag.
      flag: the flag naming out_dir, for messages.
      keep: checkpoints kept (>= 2, so deleting the newest never leaves none).
      step_key: the metrics field holding the step.
      tensorboard_dir: sub-directory of the TensorBoard events.
      progress_paths, other_run_files: see `dipod_jax.run.record.claim_output_dir`.

    Stop signals are caught from construction until `close`.

    Raises:
      UsageError: the claim is refused (see `claim_output_dir`).
    """

    def __init__(self, out_dir: str, *, experiment: str, record_file: str, record: dict[str, Any], resume: bool,
                 flag: str = "--workdir", keep: int = 2, step_key: str = "step", tensorboard_dir: str = "tb",
                 progress_paths: Iterable[str] = (), other_run_files: Iterable[str] = ()):
        if keep < 2:
            raise ValueError(f"keep={keep} must be >= 2")
        self.out_dir = out_dir
        self.flag = flag
        self.is_main = jax.process_index() == 0
        self.record = {"experiment": experiment, **record}
        # Stop signals are caught before the record is written: a signal that arrives once the directory shows
        # the claim (also during compilation) ends the run after its next step, never mid-way by default action.
        self.signals = StopSignals().__enter__()
        self.lock = None
        try:
            if self.is_main:
                self.lock = run_record.lock_output_dir(out_dir, flag)
            self.mode = run_record.claim_output_dir(out_dir, flag, record_file, self.record, resume,
                                                    tuple(progress_paths), tuple(other_run_files), write=False)
            _sync("claim checked")
            if self.mode == run_record.FRESH and self.is_main:
                try:
                    write_json_atomic(os.path.join(out_dir, record_file), run_record.normalized(self.record))
                except OSError as error:
                    raise UsageError(f"{flag}={out_dir} is not writable ({error.strerror})") from error
            arguments = program.recorded_arguments()
            if self.mode != run_record.RESUME and self.is_main and arguments is not None:
                # What a bare `--workdir=DIR --resume` replays (run.program.with_recorded_arguments).
                write_json_atomic(os.path.join(out_dir, program.COMMAND_FILE), {"arguments": arguments})
            _sync("record written")
            if self.is_main:
                check_writable_directory(os.path.join(out_dir, CHECKPOINT_DIR), flag)
                metrics_path = os.path.join(out_dir, METRICS_FILE)
                if os.path.exists(metrics_path) and not os.path.isfile(metrics_path):
                    raise UsageError(f"{flag}: {metrics_path} is not a file")
            self.checkpoints = CheckpointStore(out_dir, keep)
        except BaseException:
            self.signals.__exit__()
            if self.lock is not None:
                self.lock.release()
            raise
        self.step_key = step_key
        self.tensorboard_dir = tensorboard_dir
        self.log: MetricsLog | None = None
        self.stopped_by: int | None = None
        self._checkpoint_failed = False
        self.started = time.time()

    @property
    def resuming(self) -> bool:
        return self.mode == run_record.RESUME

    def restore(self, templates: dict[str, Any], candidates: Sequence[int] | None = None
                ) -> tuple[int, dict[str, Any]]:
        """(step, trees) of the newest readable checkpoint (among `candidates`), see
        `CheckpointStore.restore_newest`; UsageError when no checkpoint can be read."""
        step, trees = self.checkpoints.restore_newest(templates, candidates)
        if step is None or trees is None:
            raise UsageError(f"--resume: no checkpoint in {self.checkpoints.directory} restores for this run "
                             f"(newest {self.checkpoints.last_error}); nothing was moved")
        return step, trees

    def restore_if_resuming(self, templates: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """`restore(templates)` for a resumed run; (0, templates) for a fresh or restarted one."""
        if not self.resuming:
            return 0, templates
        step, trees = self.restore(templates)
        logging.info("resumed from step %d", step)
        return step, trees

    def start(self, step: int) -> MetricsLog:
        """Begins (or continues after `step`) the logged part of the run: metrics.jsonl keeps only the records
        of steps <= `step` (none for a restarted run) and is opened for appending (returned)."""
        continues_after = None
        if self.mode != run_record.FRESH:
            continues_after = step if self.resuming else -1
            if self.is_main:
                truncate_metrics(self.out_dir, continues_after, self.step_key)
        self.log = MetricsLog(self.out_dir, self.tensorboard_dir, self.step_key, continues_after, self.is_main)
        return self.log

    def save(self, step: int, trees: dict[str, Any]) -> None:
        """Checkpoint `step` (atomic; the oldest beyond `keep` are deleted). CheckpointWriteError when it cannot
        be written; the newest complete checkpoint stays."""
        try:
            self.checkpoints.save(step, trees)
        except Exception as error:  # noqa: BLE001 - any failure to write ends the run the same way
            self._checkpoint_failed = True
            newest = self.checkpoints.latest()
            raise CheckpointWriteError(f"cannot write checkpoint {step} in {self.checkpoints.directory} "
                                       f"({type(error).__name__}: {error}); the newest complete checkpoint is "
                                       f"{newest}") from error

    def stop_reason(self, time_budget_min: float = 0.0) -> str | None:
        """SIGNAL when a stop signal was received, TIME_BUDGET when the budget ran out (on any process: all
        processes of a multi-host run decide alike), else None. Call it at the same point of every step on every
        process."""
        self.stopped_by, over_budget = self.signals.agreed(over_time_budget(self.started, time_budget_min))
        if self.stopped_by is not None:
            return SIGNAL
        return TIME_BUDGET if over_budget else None

    def save_or_stop(self, step: int, total: int, stop: str | None, periodic: bool, trees: dict[str, Any]
                     ) -> dict[str, Any] | None:
        """The end of a step: checkpoints `step` when `periodic`, at the last step (`total`) or on a stop; returns
        the stop summary fields when the run stops before `total` (the caller ends its loop), else None."""
        if periodic or step == total or stop:
            self.save(step, trees)
        if stop and step < total:
            return self.stop_summary(stop, step)
        return None

    def stop_summary(self, reason: str, step: int) -> dict[str, Any]:
        """The summary fields of a stop: {"stopped", "step"} and, for a signal, "signal"."""
        summary = {"stopped": reason, "step": step}
        if reason == SIGNAL:
            summary["signal"] = self.stopped_by
        return summary

    def stop_non_finite(self, step: int, problem: str, loss_is_finite: bool) -> dict[str, Any]:
        """Ends the run on a non-finite value met in the step after `step` completed steps; the update is not
        kept. When the loss itself is non-finite and the newest checkpoint is of step `step` (it holds the
        parameters that produced the loss) and this process wrote it, it is deleted. The event is logged as
        {step: step + 1, "event": "non_finite", "problem", "newest_checkpoint"}; returns the summary fields
        {"stopped": NON_FINITE, "step", "problem", "newest_checkpoint"}."""
        if not loss_is_finite and self.checkpoints.latest() == step:
            self.checkpoints.delete_own(step)
        newest = self.checkpoints.latest()
        if self.log is not None:
            self.log.write({self.step_key: step + 1, "event": "non_finite", "problem": problem,
                            "newest_checkpoint": newest}, scalars={})
        logging.error("%s at step %d: stopping; the newest checkpoint is %s", problem, step + 1, newest)
        return {"stopped": NON_FINITE, "step": step, "problem": problem, "newest_checkpoint": newest}

    def close(self) -> None:
        self.signals.__exit__()
        if self.log is not None:
            self.log.close()
            self.log = None
        # After a failed save Orbax's writer threads may never finish: closing the manager would wait for them.
        if not self._checkpoint_failed:
            self.checkpoints.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
