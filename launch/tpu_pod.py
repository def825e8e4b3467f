"""A job across a Cloud TPU pod slice with gcloud: queued resource, code on every worker, the job, teardown.

    python -m launch.tpu_pod --name=dipod-pod --project=my-project --zone=us-central2-b --accelerator_type=v4-64 \
        --job=population --job_arg=--workdir=/mnt/shared/population --job_arg=--seeds=0,1,2,3 [--execute]

prints (or, with --execute, runs in order) the commands of Google's "Run JAX code on TPU slices"
(https://cloud.google.com/tpu/docs/jax-pods) and "Manage queued resources"
(https://cloud.google.com/tpu/docs/queued-resources):

  archive    git archive of the checked-out commit (the code every worker runs)
  create     gcloud compute tpus queued-resources create QR --node-id=NAME ... --accelerator-type --runtime-version
  wait       gcloud compute tpus queued-resources describe QR ... (polled until the state is ACTIVE)
  copy       gcloud compute tpus tpu-vm scp ARCHIVE NAME: --worker=all ...
  setup      gcloud compute tpus tpu-vm ssh NAME --worker=all --command="<unpack, install jax[tpu] and the package>"
  run        gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd dipod_jax && python3 -m ... --distributed"
  teardown   gcloud compute tpus queued-resources delete QR ... --force --quiet

`--worker=all` runs the same command on every host of the slice, as the docs prescribe; each process then calls
jax.distributed.initialize() without arguments and JAX finds the coordinator (worker 0) and its own index in the
TPU VM metadata (launch/jobs.py). The job's output directory must be one file system all workers see (a
gcsfuse or Filestore mount): Orbax writes each process's shards there. With --execute a failed step stops the
plan, and teardown runs after anything created unless --keep.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import List, NamedTuple, Optional, Sequence

from absl import app, flags

from launch.jobs import job_command

FLAGS = flags.FLAGS

# Runtime (software) versions by TPU generation: v4 and v5e as in "Run JAX code on TPU slices" (tpu-ubuntu2204-base
# for v4-32, v2-alpha-tpuv5-lite for v5litepod-32), v5p and v6e as in Google's TPU version pages.
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}
# The common name of a generation -> gcloud's accelerator-type prefix (a "v5e-32" is a v5litepod-32).
GENERATION_ALIASES = {"v5e": "v5litepod"}
# The docs' JAX install on every worker (https://cloud.google.com/tpu/docs/jax-pods, "Install JAX on your TPU slice").
JAX_TPU_INSTALL = 'pip install -U "jax[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html'
ARCHIVE = "dipod_jax.tar.gz"
REMOTE_DIR = "dipod_jax"  # relative to the workers' home directories
STEPS = ("archive", "create", "wait", "copy", "setup", "run", "teardown")


class Step(NamedTuple):
    name: str
    argv: List[str]


def accelerator_type(name: str) -> str:
    """gcloud's accelerator type for `name` ("v5e-32" -> "v5litepod-32", "v4-64" unchanged); ValueError for a
    generation without a known runtime version."""
    generation, sep, size = name.partition("-")
    generation = GENERATION_ALIASES.get(generation, generation)
    if not sep or not size.isdigit() or generation not in RUNTIME_VERSIONS:
        raise ValueError(f"--accelerator_type={name!r}: expected <generation>-<size> with a generation in "
                         f"{sorted(RUNTIME_VERSIONS) + sorted(GENERATION_ALIASES)}")
    return f"{generation}-{size}"


def plan(name: str, project: str, zone: str, accelerator: str, job: str, job_args: Sequence[str],
         repo_dir: str, archive_path: str, queued_resource: Optional[str] = None,
         runtime_version: Optional[str] = None, spot: bool = False) -> List[Step]:
    """Every step of a pod run (see the module docstring), each an argv list.

    Args:
      name: the TPU (node) name; queued_resource defaults to "<name>-qr".
      project, zone: where the slice is created.
      accelerator: e.g. "v4-64", "v5e-32" / "v5litepod-32" (see `accelerator_type`).
      job, job_args: the program every worker runs (launch.jobs).
      repo_dir: the local checkout to archive; archive_path: where the archive is written locally.
      runtime_version: default RUNTIME_VERSIONS[generation].
      spot: request Spot capacity.
    """
    for flag, value in (("--name", name), ("--project", project), ("--zone", zone)):
        if not value:
            raise ValueError(f"{flag} is required")
    accelerator = accelerator_type(accelerator)
    runtime_version = runtime_version or RUNTIME_VERSIONS[accelerator.split("-")[0]]
    queued_resource = queued_resource or f"{name}-qr"
    where = [f"--project={project}", f"--zone={zone}"]
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    setup = (f"tar -xzf {ARCHIVE} && {JAX_TPU_INSTALL} && pip install -e ./{REMOTE_DIR}")
    run = f"cd {REMOTE_DIR} && {job_command(job, job_args)}"
    return [
        Step("archive", ["git", "-C", repo_dir, "archive", "--format=tar.gz", f"--prefix={REMOTE_DIR}/",
                         "-o", archive_path, "HEAD"]),
        Step("create", queued + ["create", queued_resource, f"--node-id={name}", *where,
                                 f"--accelerator-type={accelerator}", f"--runtime-version={runtime_version}"]
             + (["--spot"] if spot else [])),
        Step("wait", queued + ["describe", queued_resource, *where, "--format=value(state.state)"]),
        Step("copy", tpu_vm + ["scp", archive_path, f"{name}:", "--worker=all", *where]),
        Step("setup", tpu_vm + ["ssh", name, *where, "--worker=all", f"--command={setup}"]),
        Step("run", tpu_vm + ["ssh", name, *where, "--worker=all", f"--command={run}"]),
        Step("teardown", queued + ["delete", queued_resource, *where, "--force", "--quiet"]),
    ]


def wait_until_active(argv: Sequence[str], poll_seconds: float = 30.0, timeout_seconds: float = 6 * 3600) -> None:
    """Polls the queued resource's state until ACTIVE; RuntimeError on FAILED / SUSPENDED or after the timeout."""
    deadline = time.time() + timeout_seconds
    while True:
        state = subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout.strip()
        print(f"queued resource state: {state}", flush=True)
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED") or time.time() > deadline:
            raise RuntimeError(f"the queued resource is {state or 'unknown'}; see: {shlex.join(argv)}")
        time.sleep(poll_seconds)


def execute(steps: Sequence[Step], selected: Sequence[str], keep: bool) -> int:
    """Runs the selected steps in order; after create (or when selected) the teardown runs even if a later step
    failed, unless `keep`. Returns the exit status of the first failed step (0 if none)."""
    created = False
    status = 0
    try:
        for step in steps:
            if step.name not in selected or step.name == "teardown":
                continue
            print("+ " + shlex.join(step.argv), flush=True)
            if step.name == "wait":
                wait_until_active(step.argv)
                continue
            status = subprocess.run(step.argv).returncode
            created = created or (step.name == "create" and status == 0)
            if status:
                print(f"step {step.name} failed with exit status {status}", file=sys.stderr)
                return status
    finally:
        teardown = next(step for step in steps if step.name == "teardown")
        if not keep and (created or "teardown" in selected):
            print("+ " + shlex.join(teardown.argv), flush=True)
            subprocess.run(teardown.argv)
    return status


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    steps = plan(FLAGS.name, FLAGS.project, FLAGS.zone, FLAGS.accelerator_type, FLAGS.job, FLAGS.job_arg,
                 repo_dir, FLAGS.archive_path, FLAGS.queued_resource, FLAGS.runtime_version, FLAGS.spot)
    unknown = sorted(set(FLAGS.steps) - set(STEPS))
    if unknown:
        raise ValueError(f"--steps: {unknown} are not steps; choose from {STEPS}")
    if not FLAGS.execute:
        for step in steps:
            if step.name in FLAGS.steps:
                print(shlex.join(step.argv))
        return 0
    return execute(steps, FLAGS.steps, FLAGS.keep)


def define_flags() -> None:
    """Register the command-line flags (only when run as a program)."""
    flags.DEFINE_string("name", None, "TPU (node) name.")
    flags.DEFINE_string("queued_resource", None, "Queued resource id (default <name>-qr).")
    flags.DEFINE_string("project", None, "Google Cloud project.")
    flags.DEFINE_string("zone", None, "Zone, e.g. us-central2-b (v4) or us-west4-a (v5e).")
    flags.DEFINE_string("accelerator_type", "v4-64", "Slice type: v4-64, v5e-32 (= v5litepod-32), v5p-..., v6e-...")
    flags.DEFINE_string("runtime_version", None, "TPU software version (default by generation).")
    flags.DEFINE_bool("spot", False, "Request Spot capacity.")
    flags.DEFINE_enum("job", "population", ["population", "lm_rl"], "Program every worker runs.")
    flags.DEFINE_multi_string("job_arg", [], "A --flag=value for the job (repeatable).")
    flags.DEFINE_list("steps", list(STEPS), f"Steps to print or run, of {STEPS}.")
    flags.DEFINE_string("archive_path", "/tmp/" + ARCHIVE, "Where the code archive is written locally.")
    flags.DEFINE_bool("execute", False, "Run the steps (default: print them).")
    flags.DEFINE_bool("keep", False, "With --execute: do not delete the slice at the end.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
