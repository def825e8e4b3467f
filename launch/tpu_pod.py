"""A job across a Cloud TPU pod slice with gcloud: queued resource, code on every worker, the job, teardown.

    python -m launch.tpu_pod --name=dipod-pod --project=my-project --zone=us-central2-b --accelerator_type=v4-64 \\
        --job=population --job_arg=--workdir=/mnt/shared/population --job_arg=--seeds=0,1,2,3 [--execute]

Details: docs/modules.md, section launch.tpu_pod.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

from absl import app, flags

from launch.jobs import job_command

FLAGS = flags.FLAGS

# Runtime (software) versions by TPU generation: v4 and v5e as in "Run JAX code on TPU slices" (tpu-ubuntu2204-base
# for v4-32, v2-alpha-tpuv5-lite for v5litepod-32), v5p and v6e as in Google's TPU version pages.
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
                    "v6e": "v2-alpha-tpuv6e"}
# The common name of a generation -> gcloud's accelerator-type prefix (a "v5e-32" is a v5litepod-32).
GENERATION_ALIASES = {"v5e": "v5litepod"}
# The JAX version this project is tested with (WORKSPACE.md, "Verified dependency versions"): what the launchers
# install on every worker, so a cluster runs the code as tested rather than whatever JAX is newest.
TESTED_JAX_VERSION = "0.10.2"
# The docs' JAX install on every worker (https://cloud.google.com/tpu/docs/jax-pods, "Install JAX on your TPU slice"),
# pinned to TESTED_JAX_VERSION.
JAX_TPU_INSTALL = (f'pip install "jax[tpu]=={TESTED_JAX_VERSION}" '
                   '-f https://storage.googleapis.com/jax-releases/libtpu_releases.html')
ARCHIVE = "dipod_jax.tar.gz"
REMOTE_DIR = "dipod_jax"  # relative to the workers' home directories
STEPS = ("archive", "create", "wait", "copy", "setup", "run", "logs", "teardown")
SHARED_DIR = "/mnt/shared"  # where --bucket is mounted on every worker
JOB_LOG = "~/dipod_job.log"  # a detached job's output on every worker


class Step(NamedTuple):
    name: str
    argv: list[str]


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
         repo_dir: str, archive_path: str, queued_resource: str | None = None,
         runtime_version: str | None = None, spot: bool = False, bucket: str | None = None,
         detach: bool = True) -> list[Step]:
    """Every step of a pod run (see the module docstring), each an argv list.

    Args:
      name: the TPU (node) name; queued_resource defaults to "<name>-qr".
      project, zone: where the slice is created.
      accelerator: e.g. "v4-64", "v5e-32" / "v5litepod-32" (see `accelerator_type`).
      job, job_args: the program every worker runs (launch.jobs).
      repo_dir: the local checkout to archive; archive_path: where the archive is written locally.
      runtime_version: default RUNTIME_VERSIONS[generation].
      spot: request Spot capacity.
      bucket: a Cloud Storage bucket mounted at SHARED_DIR on every worker (gcsfuse) in the setup step.
      detach: start the job detached (nohup setsid, output in JOB_LOG), so it outlives the ssh session.
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
    setup = f"tar -xzf {ARCHIVE} && {JAX_TPU_INSTALL} && pip install -e ./{REMOTE_DIR}"
    if bucket:
        setup += (f' && sudo mkdir -p {SHARED_DIR} && sudo chown "$USER" {SHARED_DIR}'
                  f" && gcsfuse --implicit-dirs {shlex.quote(bucket)} {SHARED_DIR}")
    run = f"cd {REMOTE_DIR} && {job_command(job, job_args)}"
    if detach:
        run = f"cd {REMOTE_DIR} && nohup setsid {job_command(job, job_args)} > {JOB_LOG} 2>&1 < /dev/null &"
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
        Step("logs", tpu_vm + ["ssh", name, *where, "--worker=0", f"--command=tail -n 100 -F {JOB_LOG}"]),
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


def execute(steps: Sequence[Step], selected: Sequence[str], keep: bool, detached: bool = False) -> int:
    """Runs the selected steps in order; after create (or when selected) the teardown runs even if a later step
    failed, unless `keep` or a `detached` job was started (it runs on; tear down later with --steps=teardown).
    The logs step is printed, not run (it follows the log until interrupted). Returns the exit status of the
    first failed step (0 if none)."""
    created = False
    status = 0
    started_detached = False
    try:
        for step in steps:
            if step.name not in selected or step.name == "teardown":
                continue
            if step.name == "logs":
                print("follow the job's log with: " + shlex.join(step.argv), flush=True)
                continue
            print("+ " + shlex.join(step.argv), flush=True)
            if step.name == "wait":
                wait_until_active(step.argv)
                continue
            status = subprocess.run(step.argv).returncode
            created = created or (step.name == "create" and status == 0)
            started_detached = started_detached or (detached and step.name == "run" and status == 0)
            if status:
                print(f"step {step.name} failed with exit status {status}", file=sys.stderr)
                return status
    finally:
        teardown = next(step for step in steps if step.name == "teardown")
        if not keep and not started_detached and (created or "teardown" in selected):
            print("+ " + shlex.join(teardown.argv), flush=True)
            subprocess.run(teardown.argv)
    return status


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    steps = plan(FLAGS.name, FLAGS.project, FLAGS.zone, FLAGS.accelerator_type, FLAGS.job, FLAGS.job_arg,
                 repo_dir, FLAGS.archive_path, FLAGS.queued_resource, FLAGS.runtime_version, FLAGS.spot,
                 FLAGS.bucket, FLAGS.detach)
    unknown = sorted(set(FLAGS.steps) - set(STEPS))
    if unknown:
        raise ValueError(f"--steps: {unknown} are not steps; choose from {STEPS}")
    if not FLAGS.execute:
        for step in steps:
            if step.name in FLAGS.steps:
                print(shlex.join(step.argv))
        return 0
    return execute(steps, FLAGS.steps, FLAGS.keep, FLAGS.detach)


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
    flags.DEFINE_string("bucket", None, f"Cloud Storage bucket mounted at {SHARED_DIR} on every worker (gcsfuse).")
    flags.DEFINE_bool("detach", True, f"Start the job detached on every worker (output in {JOB_LOG}); it survives "
                      "a dropped SSH session and the slice is left running for it.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
