"""Local sweep runner: one `python -m experiments.<name>` process per (algorithm, DiPOD beta, seed), with a manifest.

    python -m launch.sweep --experiment=lm_rl --out_root=/tmp/sudoku_sweep \\
        --algos=fpo,spg --betas=0,0.05 --seeds=0,1,2 --max_parallel=2 \\
        --extra=--init_dir=/tmp/sudoku_pretrain --extra=--steps=100

Details: docs/modules.md, section launch.sweep.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import flags

from dipod_jax.run.files import read_json, write_json_atomic
from dipod_jax.run.program import UsageError, run_program, user_errors
from dipod_jax.run.record import float_name, has_checkpoint, lock_output_dir
from dipod_jax.run.statistics import interval_text, t_interval

MANIFEST_FILE = "manifest.json"
LOG_FILE = "log.txt"
# experiment name -> its program; every one takes --config.algo, --config.dipod_beta, --seed and --workdir.
EXPERIMENTS = {"lm_rl": "experiments.lm_rl", "control": "experiments.control"}

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_enum("experiment", "lm_rl", list(EXPERIMENTS), "Which experiment entry point to launch.")
    flags.DEFINE_string("out_root", None, "Root directory of the sweep (manifest.json and one folder per run).")
    flags.DEFINE_list("algos", ["fpo"], "Algorithms (the experiment's --config.algo).")
    flags.DEFINE_list("betas", ["0", "0.05"], "DiPOD betas.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
    flags.DEFINE_multi_string("extra", [], "Argument passed to every run, e.g. --extra=--steps=100 (repeatable).")
    flags.DEFINE_integer("max_parallel", 1, "Runs at the same time on this machine.")
    flags.DEFINE_bool("dry_run", False, "Write the manifest and print the commands without launching anything.")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-host runs (see docstring).")
    flags.DEFINE_integer("num_processes", 1, "Hosts taking part in every run (multi-host).")
    flags.DEFINE_integer("process_id", 0, "Index of this host among --num_processes.")
    flags.DEFINE_string("summarize", None, "Instead of launching: summarise this metric (e.g. eval/mean_reward) of the "
                        "runs in --out_root's manifest into summary.json and curves.png; 'paired': lm_rl's paired "
                        "start / end evaluations into summary_paired.json and a markdown table.")


def build_runs(experiment: str, algos: Sequence[str], betas: Sequence[float], seeds: Sequence[int],
               out_root: str, extra_args: Sequence[str] = (), module: str | None = None,
               python: str = sys.executable) -> list[dict[str, Any]]:
    """The grid algos x betas x seeds as pending manifest entries, each with its command line.

    Args:
      experiment: a key of EXPERIMENTS (`module` may replace its program).
      algos, betas, seeds: non-empty, without repeats; betas >= 0.
      out_root: root directory; run directories are out_root/<algo>_beta<beta>_seed<seed>.
      extra_args: arguments of every command, before the grid's own.
      python: interpreter of the launched processes.

    Returns:
      list of dicts {name, group, algo, beta, seed, workdir, command (argv list), status "pending",
      returncode None}.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"--experiment={experiment!r} is not one of {sorted(EXPERIMENTS)}")
    for name, values in (("algos", algos), ("betas", betas), ("seeds", seeds)):
        if not values:
            raise ValueError(f"--{name} is empty")
        if len(set(values)) != len(values):
            raise ValueError(f"--{name} has repeated values: {list(values)}")
    if any(not 0 <= beta < float("inf") for beta in betas):
        raise ValueError(f"--betas must all be finite and >= 0, got {list(betas)}")
    if not out_root:
        raise ValueError("--out_root is required")
    if any(argument.split("=", 1)[0] in ("--resume", "--noresume") for argument in extra_args):
        raise ValueError("--extra=--resume: the sweep adds --resume itself to runs that hold a checkpoint")
    grid_flags = ("--config.algo", "--config.dipod_beta", "--seed", "--workdir")
    clashing = [argument for argument in extra_args if argument.split("=", 1)[0] in grid_flags]
    if clashing:
        raise ValueError(f"--extra={clashing[0]}: the sweep sets {', '.join(grid_flags)} itself (--algos, --betas, "
                         "--seeds, --out_root)")
    runs = []
    for algo in algos:
        for beta in betas:
            for seed in seeds:
                name = f"{algo}_beta{float_name(beta)}_seed{seed}"
                workdir = os.path.join(os.path.abspath(out_root), name)
                command = [python, "-m", module or EXPERIMENTS[experiment], *extra_args, f"--config.algo={algo}",
                           f"--config.dipod_beta={float_name(beta)}", f"--seed={seed}", f"--workdir={workdir}"]
                runs.append({"name": name, "group": algo, "algo": algo, "beta": beta, "seed": seed,
                             "workdir": workdir, "command": command, "status": "pending", "returncode": None})
    return runs


def write_manifest(path: str, runs: list[dict[str, Any]]) -> None:
    """Atomically (write + rename) store the manifest {"runs": runs} as JSON."""
    write_json_atomic(path, {"runs": runs})


MANIFEST_FIELDS = ("name", "group", "beta", "seed", "workdir")


def read_manifest(path: str) -> list[dict[str, Any]]:
    """The runs of a manifest written by `write_manifest`; ValueError naming the file for one that is not JSON
    or whose entries lack a field the summaries need."""
    manifest = read_json(path)
    runs = manifest.get("runs") if isinstance(manifest, dict) else None
    if not isinstance(runs, list):
        raise ValueError(f"{path}: not a sweep manifest (no \"runs\" list)")
    for index, run in enumerate(runs):
        missing = [field for field in MANIFEST_FIELDS if not isinstance(run, dict) or field not in run]
        if missing:
            raise ValueError(f"{path}: entry {index + 1} has no {', '.join(missing)}")
    return runs


def merge_previous(runs: list[dict[str, Any]], previous: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid `runs` with the entries of a previous manifest of the same names (their status, times).

    Raises:
      UsageError listing every run whose command (interpreter aside) differs from the previous manifest's: a
      changed --extra is another run, which must not be mixed with (or skipped for) the results on disk.
    """
    by_name = {run["name"]: run for run in previous}
    changed = [f"{run['name']}: {' '.join(by_name[run['name']]['command'][1:])} -> {' '.join(run['command'][1:])}"
               for run in runs if run["name"] in by_name and by_name[run["name"]]["command"][1:] != run["command"][1:]]
    if changed:
        raise UsageError("runs already in the manifest have another command (use a new --out_root): "
                         + "; ".join(changed))
    return [{**by_name[run["name"]], "command": run["command"]} if run["name"] in by_name else run for run in runs]


def distributed_env(run_index: int, coordinator_address: str | None, num_processes: int,
                    process_id: int) -> dict[str, str]:
    """Environment variables that make run `run_index` one multi-host JAX job (empty for a single host).

    Each run gets its own coordinator port (base port + run_index), so consecutive jobs never collide.
    """
    if coordinator_address is None:
        if num_processes != 1:
            raise ValueError("--num_processes > 1 needs --coordinator_address")
        return {}
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address must be host:port, got {coordinator_address!r}")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id={process_id} must be in [0, --num_processes={num_processes})")
    return {"JAX_COORDINATOR_ADDRESS": f"{host}:{int(port) + run_index}", "JAX_NUM_PROCESSES": str(num_processes),
            "JAX_PROCESS_ID": str(process_id)}


def _checkout_on_path() -> dict[str, str]:
    """PYTHONPATH with this checkout first: the runs are `python -m experiments.<name>` of the checkout (only
    dipod_jax is installed), wherever the sweep itself was started."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH", "")]))}


def run_sweep(runs: list[dict[str, Any]], manifest_path: str, max_parallel: int = 1,
              env_for_run=lambda index: {}, poll_seconds: float = 0.2) -> tuple[list[dict[str, Any]], int | None]:
    """Launch every run not yet succeeded, at most `max_parallel` at a time, keeping the manifest current.

    A run whose directory holds a checkpoint is launched with --resume. SIGTERM / SIGINT received meanwhile is
    passed on to the running experiments (each in its own process group) and nothing new starts; the sweep
    waits for them to save and exit (a second signal kills them) and marks them interrupted.

    Args:
      runs: entries from `build_runs` (or a previous manifest; succeeded ones are skipped).
      manifest_path: where the manifest is rewritten after every change.
      max_parallel: >= 1.
      env_for_run: run index -> extra environment variables (e.g. `distributed_env`).
      poll_seconds: how often finished processes are looked for.

    Returns:
      (the final runs, each "succeeded", "failed" or, after a stop signal, "interrupted" / still "pending";
      the stop signal's number or None).
    """
    if max_parallel < 1:
        raise ValueError(f"--max_parallel={max_parallel} must be >= 1")
    queue = [index for index, run in enumerate(runs) if run["status"] != "succeeded"]
    for index in queue:
        holder = live_holder(runs[index])
        if holder is not None:
            raise UsageError(f"run {runs[index]['name']} is still running as process {holder} (its workdir "
                             f"{runs[index]['workdir']}): stop it or wait for it before running the sweep again")
    for index in queue:
        runs[index].update(status="pending", returncode=None)
    queue_total, finished_count = list(queue), 0
    running: dict[int, Any] = {}
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        for process, _ in running.values():
            process.send_signal(signal.SIGKILL if len(received) > 1 else signum)

    previous_handlers = {signum: signal.signal(signum, on_signal)
                         for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        write_manifest(manifest_path, runs)
        while (queue and not received) or running:
            while queue and not received and len(running) < max_parallel:
                index = queue.pop(0)
                run = runs[index]
                os.makedirs(run["workdir"], exist_ok=True)
                resume = has_checkpoint(run["workdir"])
                log = open(os.path.join(run["workdir"], LOG_FILE), "a")
                process = subprocess.Popen(run["command"] + (["--resume"] if resume else []), stdout=log,
                                           stderr=subprocess.STDOUT,
                                           env={**os.environ, **_checkout_on_path(), **env_for_run(index)},
                                           start_new_session=True, preexec_fn=_stop_with_parent)
                running[index] = (process, log)
                run.update(status="running", returncode=None, started=time.time(), pid=process.pid, resumed=resume)
                write_manifest(manifest_path, runs)
                _report(f"[{len(queue_total) - len(queue) - len(running) + 1}/{len(queue_total)}] started "
                        f"{run['name']}{' (resumed)' if resume else ''}: log {os.path.join(run['workdir'], LOG_FILE)}")
            for index, (process, log) in list(running.items()):
                returncode = process.poll()
                if returncode is None:
                    continue
                log.close()
                del running[index]
                status = "succeeded" if returncode == 0 else "interrupted" if received else "failed"
                runs[index].update(status=status, returncode=returncode, finished=time.time())
                write_manifest(manifest_path, runs)
                finished_count += 1
                minutes = (runs[index]["finished"] - runs[index]["started"]) / 60
                _report(f"[{finished_count}/{len(queue_total)} done] {runs[index]['name']} {status} "
                        f"(exit {returncode}) after {minutes:.1f} min")
            if running:
                time.sleep(poll_seconds)
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
    return runs, received[0] if received else None


def _report(line: str) -> None:
    """A progress line of the sweep (a run started or ended), shown at once."""
    print(line, flush=True)


def _stop_with_parent() -> None:
    """In a launched experiment before it starts (Linux): SIGTERM it when the sweep dies, however the sweep dies
    (SIGKILL included), so that it saves and exits instead of running on as an orphan."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def live_holder(run: dict[str, Any]) -> int | None:
    """The PID recorded for a "running" manifest entry when that process is alive and is this run (its command
    line names the run's workdir), else None."""
    pid = run.get("pid")
    if run.get("status") != "running" or not pid:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command_line = handle.read().decode(errors="replace")
    except OSError:
        return None
    return pid if run["workdir"] in command_line else None


def read_curve(workdir: str, metric: str) -> list[tuple]:
    """[(step, value)] of `metric` in workdir/metrics.jsonl (records without it are skipped)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        lines = [(number, line) for number, line in enumerate(handle, start=1) if line.strip()]
    records = []
    for position, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if position == len(lines) - 1 and not line.endswith("\n"):
                break  # a line being written (or torn by a kill): the run's resume drops it too
            raise ValueError(f"{path}:{number}: not a JSON record") from None
        if isinstance(record, dict) and metric in record and "step" in record:
            records.append((record["step"], record[metric]))
    return records


def summarize(runs: list[dict[str, Any]], metric: str, confidence: float = 0.95) -> dict[str, Any]:
    """Final value of `metric` per run, grouped by (group, beta) over seeds: mean and Student-t interval.

    Args:
      runs: manifest entries; runs without the metric are listed under "missing".
      metric: a key of the runs' metrics.jsonl records.
      confidence: two-sided level of the interval on the mean.

    Returns:
      {"metric", "groups": {"<group>_beta<beta>": {"group", "beta", "seeds", "finals", "mean", "low", "high",
      "curves"}}, "missing": [run names]}; mean and interval are `dipod_jax.run.statistics.t_interval`'s over
      the finite finals (low / high NaN with one seed).
    """
    groups: dict[str, dict[str, Any]] = {}
    missing = []
    for run in runs:
        curve = read_curve(run["workdir"], metric)
        if not curve:
            missing.append(run["name"])
            continue
        group = groups.setdefault(f"{run['group']}_beta{float_name(run['beta'])}", {
            "group": run["group"], "beta": run["beta"], "seeds": [], "finals": [], "curves": []})
        group["seeds"].append(run["seed"])
        group["finals"].append(curve[-1][1])
        group["curves"].append(curve)
    for group in groups.values():
        interval = t_interval(group["finals"], confidence)
        finite = [bool(np.isfinite(final)) for final in group["finals"]]
        # The interval is over the finite finals: name only those seeds, and the others apart.
        group["left_out"] = [seed for seed, ok in zip(group["seeds"], finite, strict=True) if not ok]
        group["seeds"] = [seed for seed, ok in zip(group["seeds"], finite, strict=True) if ok]
        group.update(mean=interval["mean"], low=interval["low"], high=interval["high"])
    return {"metric": metric, "confidence": confidence, "groups": groups, "missing": missing}


PAIRED = "paired"
PAIRED_FILE = "paired_eval.json"  # written by experiments.lm_rl at its last step


def summarize_paired(runs: list[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """The paired start / end evaluations of lm_rl runs (PAIRED_FILE), grouped by (group, beta) over seeds.

    Args:
      runs: manifest entries; runs without PAIRED_FILE (unfinished) are listed under "missing".
      confidence: two-sided level of the interval over seeds.

    Returns:
      {"groups": {"<group>_beta<beta>": {"group", "beta", "seeds", "per_seed": [{"seed", "start", "end",
      "difference", "half_width", "exact_start", "exact_end"}], "difference": t_interval over the seeds' mean
      differences, "exact_difference": the same for the solved fraction, "all_seeds_above_zero": whether
      every seed's own interval lies above 0}}, "missing": [run names]}.
    """
    groups: dict[str, dict[str, Any]] = {}
    missing = []
    for run in runs:
        path = os.path.join(run["workdir"], PAIRED_FILE)
        if not os.path.exists(path):
            missing.append(run["name"])
            continue
        paired = read_json(path)
        try:
            seed_fields = {
                "seed": run["seed"], "start": paired["start"]["mean_reward"], "end": paired["end"]["mean_reward"],
                "difference": paired["difference"]["mean"], "half_width": paired["difference"]["half_width"],
                "low": paired["difference"]["low"], "exact_start": paired["start"]["exact_fraction"],
                "exact_end": paired["end"]["exact_fraction"],
                "exact_difference": paired["exact_difference"]["mean"],
                **_sampled_fields(paired.get("sampled"))}
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a complete paired evaluation (missing {error})") from None
        group = groups.setdefault(f"{run['group']}_beta{float_name(run['beta'])}", {
            "group": run["group"], "beta": run["beta"], "seeds": [], "per_seed": []})
        group["seeds"].append(run["seed"])
        group["per_seed"].append(seed_fields)
    for group in groups.values():
        seeds = group["per_seed"]
        group["difference"] = t_interval([seed["difference"] for seed in seeds], confidence)
        group["exact_difference"] = t_interval([seed["exact_difference"] for seed in seeds], confidence)
        if all("sampled_difference" in seed for seed in seeds):
            group["sampled_start"] = float(np.mean([seed["sampled_start"] for seed in seeds]))
            group["sampled_end"] = float(np.mean([seed["sampled_end"] for seed in seeds]))
            group["sampled_difference"] = t_interval([seed["sampled_difference"] for seed in seeds], confidence)
            group["pass_difference"] = t_interval([seed["pass_difference"] for seed in seeds], confidence)
        group["start"] = float(np.mean([seed["start"] for seed in seeds]))
        group["end"] = float(np.mean([seed["end"] for seed in seeds]))
        group["all_seeds_above_zero"] = all(seed["low"] > 0 for seed in seeds)
    return {"confidence": confidence, "groups": groups, "missing": missing}


def _sampled_fields(sampled: dict[str, Any] | None) -> dict[str, Any]:
    """One seed's sampled evaluation (lm_rl's --sampled_eval_k) for the summary; {} when the run had none."""
    if not sampled:
        return {}
    return {"sampled_start": sampled["start"]["mean_reward"], "sampled_end": sampled["end"]["mean_reward"],
            "sampled_difference": sampled["difference"]["mean"],
            "sampled_half_width": sampled["difference"]["half_width"],
            "pass_start": sampled["start"]["pass_at_k"], "pass_end": sampled["end"]["pass_at_k"],
            "pass_difference": sampled["pass_difference"]["mean"], "k": sampled["start"]["k"]}


def paired_table(summary: dict[str, Any]) -> str:
    """A markdown table of `summarize_paired`'s groups: start, end, paired difference (mean over seeds with its
    interval), each seed's difference with its own interval, solved-fraction change."""
    lines = ["| group | beta | start | end | end - start (seeds) | per seed: end - start (95% over items) "
             "| solved: start -> end | sampled: start -> end | sampled end - start (seeds) | pass@k end - start |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for _, group in sorted(summary["groups"].items()):
        difference = group["difference"]
        per_seed = ", ".join(f"{seed['difference']:+.3f} ± {seed['half_width']:.3f}" for seed in group["per_seed"])
        exact_start = np.mean([seed["exact_start"] for seed in group["per_seed"]])
        exact_end = np.mean([seed["exact_end"] for seed in group["per_seed"]])
        if "sampled_difference" in group:
            sampled = (f"{group['sampled_start']:.3f} -> {group['sampled_end']:.3f} "
                       f"| {interval_text(group['sampled_difference'], signed=True)} "
                       f"| {interval_text(group['pass_difference'], signed=True)}")
        else:
            sampled = "- | - | -"
        lines.append(f"| {group['group']} | {float_name(group['beta'])} | {group['start']:.3f} | {group['end']:.3f} "
                     f"| {interval_text(difference, signed=True)} | {per_seed} "
                     f"| {exact_start:.3f} -> {exact_end:.3f} | {sampled} |")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: str) -> None:
    """Mean curve over seeds (steps shared by all seeds) with min-max band, one line per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, group in sorted(summary["groups"].items()):
        steps = sorted(set.intersection(*[{step for step, _ in curve} for curve in group["curves"]]))
        values = np.array([[dict(curve)[step] for step in steps] for curve in group["curves"]])
        axis.plot(steps, values.mean(0), label=f"{name} (n={len(group['curves'])})")
        axis.fill_between(steps, values.min(0), values.max(0), alpha=0.2)
    axis.set_xlabel("step")
    axis.set_ylabel(summary["metric"])
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv):
    with user_errors():
        try:
            betas = [float(beta) for beta in FLAGS.betas]
            seeds = [int(seed) for seed in FLAGS.seeds]
        except ValueError as error:
            raise ValueError(f"--betas must be numbers and --seeds integers: {error}") from error
        if not FLAGS.out_root:
            raise ValueError("--out_root is required")
        manifest_path = os.path.join(FLAGS.out_root, MANIFEST_FILE)
        if FLAGS.summarize:
            runs = read_manifest(manifest_path)
        else:
            runs = build_runs(FLAGS.experiment, FLAGS.algos, betas, seeds, FLAGS.out_root, FLAGS.extra)
            distributed_env(0, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
            os.makedirs(FLAGS.out_root, exist_ok=True)
            if os.path.exists(manifest_path):
                runs = merge_previous(runs, read_manifest(manifest_path))
    if FLAGS.summarize == PAIRED:
        with user_errors():
            summary = summarize_paired(runs)
        write_json_atomic(os.path.join(FLAGS.out_root, f"summary_{PAIRED}.json"), summary)
        print(paired_table(summary))
        return 0
    if FLAGS.summarize:
        with user_errors():
            summary = summarize(runs, FLAGS.summarize)
        suffix = FLAGS.summarize.replace("/", "_")
        plot_summary(summary, os.path.join(FLAGS.out_root, f"curves_{suffix}.png"))
        write_json_atomic(os.path.join(FLAGS.out_root, f"summary_{suffix}.json"), summary)
        for name, group in sorted(summary["groups"].items()):
            interval = (f"[{group['low']:.4f}, {group['high']:.4f}]" if len(group["seeds"]) > 1
                        else f"(n = {len(group['seeds'])}: no interval)")
            left_out = f"; left out (not finite): {group['left_out']}" if group["left_out"] else ""
            print(f"{name}: {group['mean']:.4f} {interval} over seeds {group['seeds']}{left_out}")
        return 0
    if FLAGS.dry_run:
        write_manifest(manifest_path, runs)
        for run in runs:
            print(" ".join(run["command"]))
        return 0
    with user_errors():
        if FLAGS.max_parallel < 1:
            raise ValueError(f"--max_parallel={FLAGS.max_parallel} must be >= 1")
        # One sweep per --out_root at a time (the lock is released when this process ends, however it ends).
        lock = lock_output_dir(FLAGS.out_root, "--out_root")
    try:
        runs, stop_signal = run_sweep(runs, manifest_path, FLAGS.max_parallel, lambda index: distributed_env(
            index, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id))
    finally:
        lock.release()
    unfinished = [run["name"] for run in runs if run["status"] != "succeeded"]
    print(json.dumps({"manifest": manifest_path, "runs": len(runs), "not_succeeded": unfinished}))
    if stop_signal is not None:
        return 128 + stop_signal
    return 1 if unfinished else 0


if __name__ == "__main__":
    define_flags()
    run_program(main)
