"""A SkyPilot task (YAML) that runs a job across a GPU cluster or a TPU pod, and `sky launch` for it.

    python -m launch.skypilot_task --accelerators=H100:8 --num_nodes=2 --job=population \\
        --job_arg=--workdir=/outputs/population --bucket=my-bucket --out=population.yaml [--execute]
    python -m launch.skypilot_task --accelerators=tpu-v5litepod-32 --job=lm_rl --job_arg=... [--execute]

Details: docs/modules.md, section launch.skypilot_task.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from typing import Any

import yaml
from absl import app, flags

from launch.jobs import COORDINATOR_PORT, job_command
from launch.tpu_pod import JAX_TPU_INSTALL, RUNTIME_VERSIONS, TESTED_JAX_VERSION, accelerator_type

FLAGS = flags.FLAGS
JAX_CUDA_INSTALL = f'pip install "jax[cuda12]=={TESTED_JAX_VERSION}"'
OUTPUTS_MOUNT = "/outputs"


def coordinator_exports(port: int = COORDINATOR_PORT) -> str:
    """Shell lines that export the JAX coordinator environment from SkyPilot's node variables."""
    return "\n".join([
        f'export JAX_COORDINATOR_ADDRESS="$(echo "$SKYPILOT_NODE_IPS" | head -n1):{port}"',
        'export JAX_NUM_PROCESSES="$SKYPILOT_NUM_NODES"',
        'export JAX_PROCESS_ID="$SKYPILOT_NODE_RANK"',
    ])


def task(job: str, job_args: Sequence[str], accelerators: str, num_nodes: int = 1, name: str | None = None,
         bucket: str | None = None, runtime_version: str | None = None) -> dict[str, Any]:
    """The SkyPilot task as a dict (the YAML's content).

    Args:
      job, job_args: the program every host runs (launch.jobs).
      accelerators: SkyPilot's accelerator string: "tpu-<type>" for a TPU slice (e.g. tpu-v4-64,
        tpu-v5litepod-32), else GPUs per node (e.g. "H100:8").
      num_nodes: GPU nodes; must be 1 for a TPU slice (its hosts are one SkyPilot node).
      name: the task's name (default "dipod-<job>").
      bucket: a bucket mounted at /outputs on every node.
      runtime_version: TPU software version (default by generation, launch.tpu_pod.RUNTIME_VERSIONS).
    """
    if num_nodes < 1:
        raise ValueError(f"--num_nodes must be >= 1, got {num_nodes}")
    is_tpu = accelerators.startswith("tpu-")
    resources: dict[str, Any] = {"accelerators": accelerators}
    if is_tpu:
        if num_nodes != 1:
            raise ValueError("--num_nodes must be 1 for a TPU slice: SkyPilot runs the job on each of its hosts")
        tpu_type = accelerator_type(accelerators[len("tpu-"):])
        resources["accelerators"] = f"tpu-{tpu_type}"
        resources["accelerator_args"] = {
            "runtime_version": runtime_version or RUNTIME_VERSIONS[tpu_type.split("-")[0]]}
        run = job_command(job, job_args)
    else:
        run = coordinator_exports() + "\n" + job_command(job, job_args)
    spec: dict[str, Any] = {
        "name": name or f"dipod-{job}",
        "resources": resources,
        "num_nodes": num_nodes,
        "workdir": ".",
        "setup": f"pip install -e . && {JAX_TPU_INSTALL if is_tpu else JAX_CUDA_INSTALL}\n",
        "run": run + "\n",
    }
    if bucket:
        spec["file_mounts"] = {OUTPUTS_MOUNT: {"name": bucket, "mode": "MOUNT"}}
    return spec


def to_yaml(spec: dict[str, Any]) -> str:
    """The task as YAML text (block style, keys in the order written)."""
    return yaml.safe_dump(spec, sort_keys=False, default_flow_style=False)


def launch_command(yaml_path: str, cluster: str, down: bool) -> list:
    """`sky launch -c <cluster> -y [--down] <yaml>`: provision, sync, set up, run (and tear down with --down)."""
    return ["sky", "launch", "-c", cluster, "-y", *(["--down"] if down else []), yaml_path]


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    spec = task(FLAGS.job, FLAGS.job_arg, FLAGS.accelerators, FLAGS.num_nodes, FLAGS.task_name, FLAGS.bucket,
                FLAGS.runtime_version)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as handle:
        handle.write(to_yaml(spec))
    command = launch_command(FLAGS.out, FLAGS.cluster, FLAGS.down)
    print(f"wrote {FLAGS.out}\n{shlex.join(command)}")
    return subprocess.run(command).returncode if FLAGS.execute else 0


def define_flags() -> None:
    """Register the command-line flags (only when run as a program)."""
    flags.DEFINE_enum("job", "population", ["population", "lm_rl"], "Program every host runs.")
    flags.DEFINE_multi_string("job_arg", [], "A --flag=value for the job (repeatable).")
    flags.DEFINE_string("accelerators", "H100:8", "SkyPilot accelerators: GPU:count per node, or tpu-<type>.")
    flags.DEFINE_integer("num_nodes", 1, "GPU nodes (1 for a TPU slice).")
    flags.DEFINE_string("task_name", None, "Task name (default dipod-<job>).")
    flags.DEFINE_string("bucket", None, "Bucket mounted at /outputs on every node.")
    flags.DEFINE_string("runtime_version", None, "TPU software version (default by generation).")
    flags.DEFINE_string("out", "runs/launch/dipod_task.yaml", "Where the task YAML is written (runs/ is ignored by "
                        "git, so generated files stay out of the repository).")
    flags.DEFINE_string("cluster", "dipod", "SkyPilot cluster name.")
    flags.DEFINE_bool("down", True, "Tear the cluster down when the job ends.")
    flags.DEFINE_bool("execute", False, "Run sky launch (default: only write the YAML and print the command).")


if __name__ == "__main__":
    define_flags()
    app.run(main)
