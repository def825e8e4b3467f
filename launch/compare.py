"""Compare finished or running runs: curves of any run directories in one figure, and their table.

    python -m launch.compare runs/sweep_a/*/ runs/sweep_b/*/ --out=runs/compare.png
    python -m launch.compare runs/control/CartpoleBalance/*/ --x=env_steps --last=3 \\
        --labels=algo,sd_init_iterations,dipod_beta --metrics=eval_return_mean,cfm_loss,grad_norm,dipod_term

Details: docs/modules.md, section launch.compare.
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
from launch.sweep import MANIFEST_FILE, read_manifest

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
    flags.DEFINE_integer("smooth", 10, "Points in the moving average drawn for metrics other than eval* (logged "
                         "every step, noisy); 1 = raw. Evaluations are drawn as logged.")
    flags.DEFINE_string("out", "runs/compare.png", "Figure path (PNG); the table goes beside it as <out>.json.")
    flags.DEFINE_string("x", "step", "Record field on the x axis (control populations: env_steps).")
    flags.DEFINE_integer("last", 1, "The table's value of a run: the mean of its last N values of a metric.")
    flags.DEFINE_list("labels", [], "Record fields (last names) that label the groups; empty: every field in "
                      "which the groups differ.")
    flags.DEFINE_list("log_y", [], "Positive metrics that span orders of magnitude across the groups (grad_norm "
                      "across PPO and FPO++), drawn on a log y axis as the geometric mean over seeds with its "
                      "95% band computed on the logs. KL metrics are always drawn on a symmetric-log axis.")


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


def load_runs(directory: str) -> list[dict[str, Any]]:
    """[load_run(directory)], or, for a population workdir (config.json with "members", manifest.json), one run
    per member: the population's record without "members" and "mesh" and with the member's varied values, the
    member's seed and metrics, and "wall_s" the population's wall time (the sum of its metrics' call_s)."""
    record_path = os.path.join(directory, "config.json")
    record = read_json(record_path) if os.path.exists(record_path) else {}
    if "members" not in record:
        return [load_run(directory)]
    manifest = os.path.join(directory, MANIFEST_FILE)
    if not os.path.exists(manifest):
        raise UsageError(f"{directory}: a population workdir without {MANIFEST_FILE} (it has not started yet)")
    varied = [name for name, values in record["members"].items() if name != "seeds" and values is not None]
    shared = flatten_record({key: value for key, value in record.items() if key not in ("members", "mesh")})
    wall_s = sum(entry.get("call_s", 0.0) for entry in read_metrics(directory))
    runs = []
    for member in read_manifest(manifest):
        if not os.path.exists(os.path.join(member["workdir"], "metrics.jsonl")):
            raise UsageError(f"{member['workdir']}: no metrics.jsonl yet")
        values = {f"train_config.{name}": member[name] for name in varied}
        runs.append({"dir": member["workdir"], "record": {**shared, **values},
                     "seed": member["seed"], "metrics": read_metrics(member["workdir"]), "paired": None,
                     "population": directory, "wall_s": wall_s})
    return runs


def group_runs(runs: list[dict[str, Any]], labels: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """{label: runs} grouping runs whose records agree apart from the seed; labels name the fields in which the
    groups differ ("field=value, ..." with the field's last name), or only the fields whose last names are in
    `labels` when given, or the experiment when there is one group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(json.dumps(run["record"], sort_keys=True), []).append(run)
    records = [members[0]["record"] for members in groups.values()]
    keys = sorted({key for record in records for key in record})
    differing = [key for key in keys if len({json.dumps(record.get(key)) for record in records}) > 1]
    if labels:
        differing = sorted((key for key in keys if key.split(".")[-1] in labels),
                           key=lambda key: labels.index(key.split(".")[-1]))
    labelled = {}
    for members in groups.values():
        record = members[0]["record"]
        label = ", ".join(f"{key.split('.')[-1]}={record.get(key)}" for key in differing) or str(
            record.get("experiment", "runs"))
        while label in labelled:  # differing only in fields whose last names coincide
            label += "'"
        labelled[label] = sorted(members, key=lambda run: (run["seed"] is None, run["seed"]))
    return labelled


def curve(run: dict[str, Any], metric: str, x: str = "step") -> dict[int, float]:
    """{x: value} of `metric` in the run's metrics records that hold field `x` (x "step" also reads control's
    "iteration")."""
    points = {}
    for record in run["metrics"]:
        position = record.get(x, record.get("iteration")) if x == "step" else record.get(x)
        if metric in record and isinstance(record[metric], (int, float)) and position is not None:
            points[int(position)] = float(record[metric])
    return points


def group_curve(members: list[dict[str, Any]], metric: str, x: str = "step", log: bool = False
                ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(x values every member logged, mean over members, 95% half-width over members, NaN for one member); with
    `log`, both of the natural logs of the values (a geometric mean and a band that stays positive)."""
    curves = [curve(run, metric, x) for run in members]
    steps = sorted(set.intersection(*[set(points) for points in curves])) if curves else []
    values = np.array([[points[step] for step in steps] for points in curves]).reshape(len(curves), len(steps))
    if log:
        if (values <= 0).any():
            raise UsageError(f"--log_y={metric}: the runs logged values <= 0, which have no log")
        values = np.log(values)
    intervals = [t_interval(values[:, index]) for index in range(len(steps))]
    return steps, np.array([i["mean"] for i in intervals]), np.array([i["half_width"] for i in intervals])


def last_mean(points: dict[int, float], last: int) -> float:
    """The mean of the `last` values at the largest x of a curve."""
    return float(np.mean([points[x] for x in sorted(points)[-last:]]))


def summary_table(groups: dict[str, list[dict[str, Any]]], metrics: list[str], last: int = 1, x: str = "step"
                  ) -> dict[str, Any]:
    """Per group: seeds, each run's mean of its `last` values of each metric (t-interval over seeds), the x it
    reached (the least over seeds), the wall hours of the population(s) behind it, and the paired changes of the
    finished lm_rl runs (greedy "paired", sampled "paired_sampled"; t-interval over seeds of each seed's mean)."""
    table = {}
    for label, members in groups.items():
        row: dict[str, Any] = {"seeds": [run["seed"] for run in members], "dirs": [run["dir"] for run in members]}
        for metric in metrics:
            curves = [points for points in (curve(run, metric, x) for run in members) if points]
            if curves:
                row[metric] = t_interval([last_mean(points, last) for points in curves])
                row.setdefault("x_reached", min(max(points) for points in curves))
        walls = {run["population"]: run["wall_s"] for run in members if "population" in run}
        if walls:
            row["wall_hours"] = sum(walls.values()) / 3600
        paired = [run["paired"] for run in members if run["paired"] is not None]
        if paired:
            row["paired"] = t_interval([p["difference"]["mean"] for p in paired])
            sampled = [p["sampled"]["difference"]["mean"] for p in paired if "sampled" in p]
            if sampled:
                row["paired_sampled"] = t_interval(sampled)
        table[label] = row
    return table


def table_text(table: dict[str, Any], metrics: list[str], last: int = 1, x: str = "step") -> str:
    """The summary table as markdown."""
    columns = [metric for metric in metrics if any(metric in row for row in table.values())]
    extra = [name for name in ("paired", "paired_sampled") if any(name in row for row in table.values())]
    wall = any("wall_hours" in row for row in table.values())
    value_name = "last" if last == 1 else f"mean of last {last}"
    header = ["group", "seeds", f"{x} reached", *[f"{value_name} {metric}" for metric in columns],
              *(["wall hours"] if wall else []),
              *[{"paired": "greedy end - start", "paired_sampled": "sampled end - start"}[name] for name in extra]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in table.items():
        cells = [label, ",".join(str(seed) for seed in row["seeds"]), str(row.get("x_reached", "-"))]
        cells += [interval_text(row[metric]) if metric in row else "-" for metric in columns]
        cells += [f"{row['wall_hours']:.2f}" if "wall_hours" in row else "-"] if wall else []
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


def y_scale(metric: str, log_y: tuple[str, ...] | list[str] = ()) -> str:
    """The panel's y scale: log for a metric in `log_y`, symlog for a KL (spans orders of magnitude when a run
    drifts, and a k3 estimate can dip below 0), linear otherwise."""
    if metric in log_y:
        return "log"
    return "symlog" if "kl" in metric.split("/")[-1] else "linear"


def plot_groups(groups: dict[str, list[dict[str, Any]]], metrics: list[str], path: str, smooth: int = 1,
                x: str = "step", log_y: tuple[str, ...] | list[str] = ()) -> list[str]:
    """One panel per metric that some run logged: each group's mean curve against `x` with its 95% band
    (metrics other than eval* as a `smooth`-point moving average of both), on the y scale of `y_scale` (a log
    scale draws the geometric mean and the band of the logs). Returns the metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [metric for metric in metrics if any(curve(run, metric, x) for members in groups.values()
                                                  for run in members)]
    if not drawn:
        raise UsageError(f"none of the runs logged any of --metrics={','.join(metrics)}")
    figure, axes = plt.subplots(1, len(drawn), figsize=(4.2 * len(drawn), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], drawn, strict=True):
        scale = y_scale(metric, log_y)
        for label, members in groups.items():
            steps, mean, half_width = group_curve(members, metric, x, log=scale == "log")
            if not steps:
                continue
            if not metric.startswith("eval"):
                mean, half_width = moving_average(mean, smooth), moving_average(half_width, smooth)
            low, centre, high = mean - half_width, mean, mean + half_width
            if scale == "log":
                low, centre, high = np.exp(low), np.exp(centre), np.exp(high)
            line, = axis.plot(steps, centre, label=f"{label} (n={len(members)})")
            if len(members) > 1:
                axis.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
        smoothed = not metric.startswith("eval") and smooth > 1
        axis.set_title(metric + (f" ({smooth}-point mean)" if smoothed else ""), fontsize=9)
        if scale == "symlog":
            axis.set_yscale("symlog", linthresh=1e-2)
        elif scale == "log":
            axis.set_yscale("log")
        axis.set_xlabel(x)
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
        runs = [run for directory in directories for run in load_runs(directory)]
        groups = group_runs(runs, list(FLAGS.labels))
        out = FLAGS.out
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        if FLAGS.smooth < 1:
            raise ValueError(f"--smooth={FLAGS.smooth} must be >= 1")
        if FLAGS.last < 1:
            raise ValueError(f"--last={FLAGS.last} must be >= 1")
        drawn = plot_groups(groups, list(FLAGS.metrics), out, FLAGS.smooth, FLAGS.x, list(FLAGS.log_y))
        table = summary_table(groups, drawn, FLAGS.last, FLAGS.x)
        write_json_atomic(os.path.splitext(out)[0] + ".json", table)
    print(table_text(table, drawn, FLAGS.last, FLAGS.x))
    print(f"figure: {out}\ntable: {os.path.splitext(out)[0] + '.json'}")
    return 0


if __name__ == "__main__":
    define_flags()
    run_program(main, positional=True)
