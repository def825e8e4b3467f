"""Command-line programs: user errors as one line with exit code 2, --help with 0, the exit code of a run.

    if __name__ == "__main__":
        define_flags()
        run_program(main)

Details: docs/modules.md, section dipod_jax.run.program.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

from absl import app, flags, logging

EXIT_USAGE = 2
EXIT_NON_FINITE = 1
EXIT_CHECKPOINT = 3  # a checkpoint could not be written (CheckpointWriteError)
COMMAND_FILE = "command.json"  # in a run's directory: {"arguments": the first process's command-line arguments}
_HELP = {"help", "helpshort", "?", "h"}
_HELP_FULL = {"helpfull"}
_verbosity_given = False
_arguments: list[str] | None = None  # this program's command-line arguments as typed, once parsed


class UsageError(ValueError):
    """A user error (a flag, a field, a file) stated in one line; programs exit with status 2 on it."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (no space, no inodes, a file where a directory should be): the program
    ends at once with EXIT_CHECKPOINT and one line, the newest complete checkpoint kept."""


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (whitespace runs collapsed)."""
    return " ".join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def user_errors():
    """Re-raises ValueError and OSError (bad flag values, unreadable or malformed files) as UsageError.

    Wrap the part of a program that validates its inputs (before anything is compiled or trained), so those
    errors become one line and exit status 2, while errors during training keep their traceback.
    """
    try:
        yield
    except UsageError:
        raise
    except (ValueError, OSError) as error:
        raise UsageError(one_line(error)) from error


def check_flag_bounds(settings: Any, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = (),
                      finite: tuple[str, ...] = ()) -> None:
    """UsageError naming the flag (--name=value) when a field of `settings` (an object, or a dict of flag values)
    listed in `positive` is not > 0, one in `non_negative` is not >= 0, or one in `finite` is NaN or infinite (NaN
    fails every bound)."""
    for names, test, requirement in ((finite, math.isfinite, "a finite number"),
                                     (positive, lambda value: value > 0, "> 0"),
                                     (non_negative, lambda value: value >= 0, ">= 0")):
        for name in names:
            value = settings[name] if isinstance(settings, Mapping) else getattr(settings, name)
            if not test(value):
                raise UsageError(f"--{name}={value} must be {requirement}")


def check_flag_choices(name: str, values: Sequence[str], choices: Iterable[str]) -> None:
    """UsageError naming the list flag (--name=a,b) unless `values` are distinct, non-empty and all in `choices`."""
    choices = sorted(choices)
    if not values or len(set(values)) != len(values) or any(value not in choices for value in values):
        raise UsageError(f"--{name}={','.join(values)} must be distinct names from {choices}")


def _program_name() -> str:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else sys.argv[0]


def _report(message: str, status: int) -> int:
    print(f"{_program_name()}: error: {message}", file=sys.stderr)
    return status


def exit_usage_error(error: BaseException) -> NoReturn:
    """Prints "<program>: error: <message>" (`one_line`) and exits with status 2: for a user error found before
    app.run, e.g. while a flag is registered."""
    sys.exit(_report(one_line(error), EXIT_USAGE))


def _typed_value(argv: Sequence[str], name: str) -> str | None:
    """The value of --name=value or --name value in `argv` (the last one given), else None."""
    value = None
    for index, argument in enumerate(argv):
        if argument == "--":
            break
        if argument.startswith(f"--{name}="):
            value = argument.split("=", 1)[1]
        elif argument == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
    return value


def resume_requested(argv: Sequence[str]) -> bool:
    """True when `argv` asks for --resume (the last of --resume, --resume=<bool>, --noresume decides)."""
    requested = False
    for argument in argv:
        if argument == "--":
            break
        if argument == "--resume":
            requested = True
        elif argument == "--noresume":
            requested = False
        elif argument.startswith("--resume="):
            requested = argument.split("=", 1)[1].lower() in ("true", "1", "t", "yes")
    return requested


def with_recorded_arguments(argv: list[str], default_workdir: str | None = None) -> list[str]:
    """`argv` with the recorded arguments of the run in its --workdir (default `default_workdir`) put before the
    typed ones, when --resume is asked for and DIR/COMMAND_FILE exists; else `argv` unchanged."""
    if not resume_requested(argv[1:]):
        return argv
    workdir = _typed_value(argv[1:], "workdir") or default_workdir
    path = os.path.join(workdir, COMMAND_FILE) if workdir else None
    if path is None or not os.path.exists(path):
        return argv
    try:
        with open(path) as handle:
            recorded = json.load(handle)["arguments"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"--resume: {path} is not readable ({one_line(error)}); type the run's flags again") from error
    return [argv[0], *recorded, *argv[1:]]


def recorded_arguments() -> list[str] | None:
    """The arguments to record in a new run's COMMAND_FILE: this program's typed arguments without --resume and
    --workdir; None when flags were not parsed by `run_program` (a run started from Python, e.g. a test)."""
    if _arguments is None:
        return None
    kept, skip = [], False
    for argument in _arguments:
        if skip:
            skip = False
            continue
        name = argument.split("=", 1)[0]
        if name in ("--resume", "--noresume") or name.startswith("--resume="):
            continue
        if name == "--workdir":
            skip = "=" not in argument
            continue
        kept.append(argument)
    return kept


def _parse_flags(argv: list[str]) -> list[str]:
    global _verbosity_given, _arguments
    for argument in argv[1:]:
        if argument == "--":
            break
        name = argument.lstrip("-").split("=", 1)[0]
        if argument.startswith("-") and name in _HELP | _HELP_FULL:
            app.usage(shorthelp=name in _HELP, writeto_stdout=True)
            sys.exit(0)
    typed = list(argv[1:])
    try:
        default_workdir = flags.FLAGS["workdir"].default if "workdir" in flags.FLAGS else None
        argv = with_recorded_arguments(argv, default_workdir)
        remaining = flags.FLAGS(argv)
    except (flags.Error, UsageError) as error:
        sys.exit(_report(one_line(error), EXIT_USAGE))
    _arguments = typed
    _verbosity_given = not flags.FLAGS["verbosity"].using_default_value
    return remaining


def run_program(main: Callable[[list[str]], Any], positional: bool = False) -> None:
    """app.run(main) with the behaviour described in the module docstring; `positional` programs take
    positional arguments (main gets them in argv[1:]), the others refuse them."""
    def wrapped(argv: list[str]) -> Any:
        if not _verbosity_given:
            logging.set_verbosity(logging.WARNING)
        if len(argv) > 1 and not positional:
            return _report(f"unexpected positional arguments {argv[1:]}", EXIT_USAGE)
        try:
            return main(argv)
        except (UsageError, app.UsageError) as error:
            return _report(one_line(error), EXIT_USAGE)
        except KeyboardInterrupt:
            return _report("interrupted", 128 + signal.SIGINT)
        except CheckpointWriteError as error:
            # Orbax's writer threads may be blocked for good after a failed save, and the interpreter would wait
            # for them at exit: report and end the process now.
            _report(one_line(error), EXIT_CHECKPOINT)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_CHECKPOINT)

    app.run(wrapped, flags_parser=_parse_flags)


SUMMARY_FILE = "run_summary.json"  # in a run's directory: the summary finish_run reports
_TABLE_LINES = 16


def _headline_lines(summary: dict[str, Any]) -> list[str]:
    """"name: value" for the summary's numbers and words, one level of nesting deep ("last_eval.mean_reward"),
    an interval as "mean ± half_width", at most _TABLE_LINES lines."""
    lines = []

    def add(name: str, value: Any) -> None:
        if isinstance(value, float):
            lines.append(f"  {name}: {value:.4g}")
        elif isinstance(value, (int, str)) and not isinstance(value, bool):
            lines.append(f"  {name}: {value}")

    for name, value in summary.items():
        if name in ("stopped", "step"):  # the table's first line says them
            continue
        if isinstance(value, dict) and {"mean", "half_width", "n"} <= set(value):
            spread = f" ± {value['half_width']:.3f}" if value["n"] > 1 and math.isfinite(value["half_width"]) else ""
            lines.append(f"  {name}: {value['mean']:+.4f}{spread} (n = {value['n']})")
        elif isinstance(value, dict):
            for inner, item in value.items():
                if not isinstance(item, dict):
                    add(f"{name}.{inner}", item)
        else:
            add(name, value)
    if len(lines) > _TABLE_LINES:
        lines = lines[:_TABLE_LINES] + [f"  ... ({len(lines) - _TABLE_LINES} more in the summary file)"]
    return lines


def finish_run(summary: dict[str, Any], workdir: str) -> int:
    """An experiment's last act: writes its summary as JSON to workdir/SUMMARY_FILE, prints a short table of its
    headline numbers and the paths of what it wrote (process 0 of a multi-host run only), and returns the exit
    status `exit_code` gives it."""
    import jax  # here, not at the top: programs without JAX (the sweep) use this module too

    from dipod_jax.run.files import write_json_atomic

    if jax.process_index() == 0:
        path = os.path.join(workdir, SUMMARY_FILE)
        write_json_atomic(path, summary)
        figures = sorted(name for name in os.listdir(workdir) if name.endswith(".png"))
        at_step = f" at step {summary['step']}" if "step" in summary else ""
        print("\n".join([f"{_program_name()}: {summary['stopped']}{at_step}",
                         *_headline_lines(summary), f"summary: {path}", f"outputs: {workdir}",
                         *[f"figure: {os.path.join(workdir, name)}" for name in figures]]), flush=True)
    return exit_code(summary)


def exit_code(summary: dict[str, Any]) -> int:
    """The exit status of a run from its summary (dipod_jax.run.harness): 0 when it completed or used up its
    time budget, 1 when a non-finite value stopped it, 128 + signal number when a signal did; the reason is
    printed to stderr."""
    stopped = summary["stopped"]
    if stopped == "non_finite":
        return _report(f"{summary['problem']} at step {summary['step'] + 1}; the newest checkpoint "
                       f"({summary['newest_checkpoint']}) is the last finite state", EXIT_NON_FINITE)
    if stopped == "signal":
        name = signal.Signals(summary["signal"]).name
        print(f"{_program_name()}: stopped by {name} after step {summary['step']}, checkpoint saved; "
              "continue with --resume", file=sys.stderr)
        return 128 + summary["signal"]
    return 0
