"""Compare finished or running runs: curves of any run directories in one figure, and their table.

    python -m launch.compare runs/sweep_a/*/ runs/sweep_b/*/ --out=runs/compare.png

Runs are grouped by their run record (rl_config.json or config.json) with the seed left out, so the seeds of one
setting form a group whatever sweep or directory they came from; each group is labelled by the fields in which
it differs from the others (e.g. "placebo=True", "dipod_beta=0.05"). For each metric (--metrics) the figure
draws the mean over the group's seeds at the steps all of them logged, with a 95% Student-t band (none for one
seed). The table (printed, and written beside the figure as JSON) gives per group the seeds, the last value of
each metric (mean with its 95% interval over seeds, "n = 1" where a single seed leaves no spread) and, for lm_rl
runs that finished, the paired start / end change of the greedy and the sampled reward (paired_eval.json).
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from absl import flags

from dipod_jax.run.files import read_json, read_metrics, write_json_atomic
from dipod_jax.run.program import UsageError, run_program, user_errors
from dipod_jax.run.record import flatten_record
from dipod_jax.run.statistics import interval_text, t_interval

RECORD_FILES = ("rl_config.json", "config.json")
PAIRED_FILE = "paired_eval.json"
DEFAULT_METRICS = ("eval/mean_reward", "eval/sampled_mean_reward", "train/kl_to_start", "train/elbo",
                   "train/dipod_term")
# Record fields that differ between the seeds of one setting (or only say where inputs are): not part of a group.
_PER_SEED_FIELDS = ("seed",)

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("metrics", list(DEFAULT_METRICS), "Metrics of metrics.jsonl to draw, one panel each; a "
                      "metric no run logged is left out.")
    flags.DEFINE_integer("smooth", 10, "Steps in the moving average drawn for train/* metrics (logged every step, "
                         "noisy); 1 = raw. Evaluations are drawn as logged.")
    flags.DEFINE_string("out", "runs/compare.png", "Figure path (PNG); the table goes beside it as <out>.json.")


def load_run(directory: str) -> dict[str, Any]:
    """{"dir", "record" (flattened, seed removed), "seed", "metrics", "paired" (or None)} of one run directory;
    UsageError naming it when it holds no run record or metrics."""
    for name in RECORD_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            flat = flatten_record(read_json(path))
            break
    else:
        raise UsageError(f"{directory}: no run record ({' or '.join(RECORD_FILES)}); pass run directories")
    if not os.path.exists(os.path.join(directory, "metrics.jsonl")):
        raise UsageError(f"{directory}: no metrics.jsonl yet")
    seed = next((value for key, value in flat.items() if key.split(".")[-1] in _PER_SEED_FIELDS), None)
    # Input digests are left out too: the same setting recorded by code from before they existed still groups.
    record = {key: value for key, value in flat.items()
              if key.split(".")[-1] not in _PER_SEED_FIELDS and not key.endswith("_digest")}
    paired_path = os.path.join(directory, PAIRED_FILE)
    return {"dir": directory, "record": record, "seed": seed, "metrics": read_metrics(directory),
            "paired": read_json(paired_path) if os.path.exists(paired_path) else None}


def group_runs(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{label: runs} grouping runs whose records agree apart from the seed; labels name the fields in which the
    groups differ ("field=value, ..." with the field's last name), or the experiment when there is one group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run["record"], sort_keys=True), []).append(run)
    records = [members[0]["record"] for members in groups.values()]
    keys = sorted({key for record in records for key in record})
    differing = [key for key in keys if len({json.dumps(record.get(key)) for record in records}) > 1]
    labelled = {}
    for members in groups.values():
        record = members[0]["record"]
        label = ", ".join(f"{key.split('.')[-1]}={record.get(key)}" for key in differing) or str(
            record.get("experiment", "runs"))
        while label in labelled:  # differing only in fields whose last names coincide
            label += "'"
        labelled[label] = sorted(members, key=lambda run: (run["seed"] is None, run["seed"]))
    return labelled


def curve(run: dict[str, Any], metric: str) -> dict[int, float]:
    """{step: value} of `metric` in the run's metrics (the step field is "step", or "iteration" for control)."""
    points = {}
    for record in run["metrics"]:
        if metric in record and isinstance(record[metric], (int, float)):
            points[int(record.get("step", record.get("iteration", 0)))] = float(record[metric])
    return points


def group_curve(members: list[dict[str, Any]], metric: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(steps every member logged, mean over members, 95% half-width over members, NaN for one member)."""
    curves = [curve(run, metric) for run in members]
    steps = sorted(set.intersection(*[set(points) for points in curves])) if curves else []
    values = np.array([[points[step] for step in steps] for points in curves]).reshape(len(curves), len(steps))
    intervals = [t_interval(values[:, index]) for index in range(len(steps))]
    return steps, np.array([i["mean"] for i in intervals]), np.array([i["half_width"] for i in intervals])


def summary_table(groups: dict[str, list[dict[str, Any]]], metrics: list[str]) -> dict[str, Any]:
    """Per group: seeds, the last value of each metric (t-interval over seeds), and the paired changes of the
    finished lm_rl runs (greedy "paired", sampled "paired_sampled"; t-interval over seeds of each seed's mean)."""
    table = {}
    for label, members in groups.items():
        row: dict[str, Any] = {"seeds": [run["seed"] for run in members], "dirs": [run["dir"] for run in members]}
        for metric in metrics:
            last = [points[max(points)] for points in (curve(run, metric) for run in members) if points]
            if last:
                row[metric] = t_interval(last)
        paired = [run["paired"] for run in members if run["paired"] is not None]
        if paired:
            row["paired"] = t_interval([p["difference"]["mean"] for p in paired])
            sampled = [p["sampled"]["difference"]["mean"] for p in paired if "sampled" in p]
            if sampled:
                row["paired_sampled"] = t_interval(sampled)
        table[label] = row
    return table


def table_text(table: dict[str, Any], metrics: list[str]) -> str:
    """The summary table as markdown."""
    columns = [metric for metric in metrics if any(metric in row for row in table.values())]
    extra = [name for name in ("paired", "paired_sampled") if any(name in row for row in table.values())]
    header = ["group", "seeds", *[f"last {metric}" for metric in columns],
              *[{"paired": "greedy end - start", "paired_sampled": "sampled end - start"}[name] for name in extra]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.items():
        cells = [label, ",".join(str(seed) for seed in row["seeds"])]
        cells += [interval_text(row[metric]) if metric in row else "-" for metric in columns]
        cells += [interval_text(row[name], signed=True) if name in row else "-" for name in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to `window` points (the first points average what there is): [n] -> [n]."""
    if window <= 1 or values.size == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, values.size + 1), window)
    return (sums[1:] - sums[np.arange(values.size) + 1 - counts]) / counts


def plot_groups(groups: dict[str, list[dict[str, Any]]], metrics: list[str], path: str, smooth: int = 1
                ) -> list[str]:
    """One panel per metric that some run logged: each group's mean curve with its 95% band (train/* metrics as a
    `smooth`-step moving average of both). Returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [metric for metric in metrics if any(curve(run, metric) for members in groups.values()
                                                  for run in members)]
    if not drawn:
        raise UsageError(f"none of the runs logged any of --metrics={','.join(metrics)}")
    figure, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], drawn, strict=True):
        for label, members in groups.items():
            steps, mean, half_width = group_curve(members, metric)
            if not steps:
                continue
            if metric.startswith("train/"):
                mean, half_width = moving_average(mean, smooth), moving_average(half_width, smooth)
            line, = axis.plot(steps, mean, label=f"{label} (n={len(members)})")
            if len(members) > 1:
                axis.fill_between(steps, mean - half_width, mean + half_width, alpha=0.2, color=line.get_color())
        axis.set_title(metric + (f" ({smooth}-step mean)" if metric.startswith("train/") and smooth > 1 else ""))
        if "kl" in metric.split("/")[-1]:
            axis.set_yscale("symlog", linthresh=1e-2)  # KLs span orders of magnitude when a run drifts
        axis.set_xlabel("step")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return drawn


def main(argv):
    directories = argv[1:]
    with user_errors():
        if not directories:
            raise UsageError("pass one or more run directories, e.g. python -m launch.compare runs/sweep/*/")
        runs = [load_run(directory) for directory in directories]
        groups = group_runs(runs)
        out = FLAGS.out
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if FLAGS.smooth < 1:
            raise ValueError(f"--smooth={FLAGS.smooth} must be >= 1")
        drawn = plot_groups(groups, list(FLAGS.metrics), out, FLAGS.smooth)
        table = summary_table(groups, drawn)
        write_json_atomic(os.path.splitext(out)[0] + ".json", table)
    print(table_text(table, drawn))
    print(f"figure: {out}\ntable: {os.path.splitext(out)[0] + '.json'}")
    return 0


if __name__ == "__main__":
    define_flags()
    run_program(main, positional=True)
