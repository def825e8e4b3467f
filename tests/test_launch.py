"""Cluster launchers (launch/tpu_pod.py, launch/skypilot_task.py): the generated commands, offline.

The expected gcloud commands are written out from Google's documentation:
- "Run JAX code on TPU slices", https://cloud.google.com/tpu/docs/jax-pods: a v5litepod-32 slice uses runtime
  v2-alpha-tpuv5-lite and a v4-32 slice tpu-ubuntu2204-base; JAX is installed on every host with
  `gcloud compute tpus tpu-vm ssh ${TPU_NAME} --zone=${ZONE} --project=${PROJECT_ID} --worker=all
  --command='pip install -U "jax[tpu]" -f https://storage.googleapis.com/jax-releases/libtpu_releases.html'`, the
  program is copied with `gcloud compute tpus tpu-vm scp <file> ${TPU_NAME}: --worker=all ...` and started on
  every host with `gcloud compute tpus tpu-vm ssh ${TPU_NAME} ... --worker=all --command="python3 <program>"`.
- "Manage queued resources", https://cloud.google.com/tpu/docs/queued-resources, and the gcloud reference
  (https://cloud.google.com/sdk/gcloud/reference/compute/tpus/queued-resources/create): `gcloud compute tpus
  queued-resources create QUEUED_RESOURCE_ID --node-id=NODE_ID --project --zone --accelerator-type
  --runtime-version`, `... describe`, and `... delete QUEUED_RESOURCE_ID --project --zone --force` (force:
  "all running nodes belonging to this queued resource will be deleted first", REST reference).
- jax.distributed.initialize: "If you are using TPU, Slurm, or Open MPI, all arguments are optional"
  (https://docs.jax.dev/en/latest/_autosummary/jax.distributed.initialize.html), so every worker runs the
  program with --distributed and no coordinator variables.
"""
import shlex
import subprocess

import pytest
import yaml

from launch import skypilot_task, tpu_pod
from launch.jobs import job_command

PROJECT, ZONE = "my-project", "us-central2-b"


def test_v5e_32_population_pod_commands_are_the_documented_ones():
    """v5e-32 = gcloud's v5litepod-32 with runtime v2-alpha-tpuv5-lite; every worker command has --worker=all;
    the run step starts the population program with --distributed in the unpacked checkout."""
    steps = tpu_pod.plan("dipod-pod", PROJECT, "us-west4-a", "v5e-32", "population",
                         ["--workdir=/mnt/shared/pop", "--seeds=0,1,2,3"], "/src/dipod_jax", "/tmp/dipod_jax.tar.gz",
                         detach=False)
    where = ["--project=my-project", "--zone=us-west4-a"]
    assert dict(steps) == {
        "archive": ["git", "-C", "/src/dipod_jax", "archive", "--format=tar.gz", "--prefix=dipod_jax/", "-o",
                    "/tmp/dipod_jax.tar.gz", "HEAD"],
        "create": ["gcloud", "compute", "tpus", "queued-resources", "create", "dipod-pod-qr", "--node-id=dipod-pod",
                   *where, "--accelerator-type=v5litepod-32", "--runtime-version=v2-alpha-tpuv5-lite"],
        "wait": ["gcloud", "compute", "tpus", "queued-resources", "describe", "dipod-pod-qr", *where,
                 "--format=value(state.state)"],
        "copy": ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/dipod_jax.tar.gz", "dipod-pod:",
                 "--worker=all", *where],
        "setup": ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "dipod-pod", *where, "--worker=all",
                  '--command=tar -xzf dipod_jax.tar.gz && pip install "jax[tpu]==0.10.2" -f '
                  'https://storage.googleapis.com/jax-releases/libtpu_releases.html && pip install -e ./dipod_jax'],
        "run": ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "dipod-pod", *where, "--worker=all",
                "--command=cd dipod_jax && python3 -m experiments.control_population --distributed "
                "--workdir=/mnt/shared/pop --seeds=0,1,2,3"],
        "logs": ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "dipod-pod", *where, "--worker=0",
                 "--command=tail -n 100 -F ~/dipod_job.log"],
        "teardown": ["gcloud", "compute", "tpus", "queued-resources", "delete", "dipod-pod-qr", *where, "--force",
                     "--quiet"],
    }
    assert [name for name, _ in steps] == list(tpu_pod.STEPS)


def test_v4_64_lm_rl_pod_commands():
    """v4-64 keeps its name and gets tpu-ubuntu2204-base; a Spot request adds --spot; lm_rl runs with
    --distributed on every worker, its arguments shell-quoted."""
    steps = dict(tpu_pod.plan("rl-pod", PROJECT, ZONE, "v4-64", "lm_rl",
                              ["--init_dir=/mnt/shared/pretrain", "--workdir=/mnt/shared/rl run"], "/src", "/tmp/a.tgz",
                              queued_resource="rl-queue", spot=True, detach=False))
    assert steps["create"][-3:] == ["--accelerator-type=v4-64", "--runtime-version=tpu-ubuntu2204-base", "--spot"]
    assert steps["create"][5:7] == ["rl-queue", "--node-id=rl-pod"]
    command = steps["run"][-1]
    assert steps["run"][-2] == "--worker=all" and command.startswith("--command=")
    assert shlex.split(command[len("--command="):]) == [
        "cd", "dipod_jax", "&&", "python3", "-m", "experiments.lm_rl", "--distributed",
        "--init_dir=/mnt/shared/pretrain", "--workdir=/mnt/shared/rl run"]


def test_pod_job_runs_detached_on_a_mounted_bucket_by_default():
    """Issue 20: by default the job starts detached on every worker (nohup setsid, output in ~/dipod_job.log), so a
    dropped SSH session does not end it, and the logs step follows worker 0's log; --bucket mounts the bucket at
    /mnt/shared on every worker in the setup step (the shared workdir the plan assumes)."""
    steps = dict(tpu_pod.plan("rl-pod", PROJECT, ZONE, "v4-64", "lm_rl", ["--workdir=/mnt/shared/rl"], "/src",
                              "/tmp/a.tgz", bucket="my-bucket"))
    assert steps["run"][-1] == ("--command=cd dipod_jax && nohup setsid python3 -m experiments.lm_rl --distributed "
                                "--workdir=/mnt/shared/rl > ~/dipod_job.log 2>&1 < /dev/null &")
    assert steps["setup"][-1].endswith(' && sudo mkdir -p /mnt/shared && sudo chown "$USER" /mnt/shared'
                                       " && gcsfuse --implicit-dirs my-bucket /mnt/shared")
    assert steps["logs"][-2:] == ["--worker=0", "--command=tail -n 100 -F ~/dipod_job.log"]


def test_bad_launch_settings_are_refused():
    """Unknown generations, missing names, non-flag job arguments and unknown jobs raise ValueError naming them."""
    with pytest.raises(ValueError, match="--accelerator_type='v9-8'"):
        tpu_pod.accelerator_type("v9-8")
    with pytest.raises(ValueError, match="--accelerator_type='v4'"):
        tpu_pod.accelerator_type("v4")
    with pytest.raises(ValueError, match="--project is required"):
        tpu_pod.plan("pod", "", ZONE, "v4-64", "population", [], "/src", "/tmp/a")
    with pytest.raises(ValueError, match="must be --flags"):
        job_command("population", ["workdir=/tmp"])
    with pytest.raises(ValueError, match="--job='sweep'"):
        job_command("sweep", [])


def test_execute_tears_down_after_a_failed_run(monkeypatch):
    """--execute runs the steps in order, polls the queued resource until ACTIVE, stops at the first failure and
    still deletes the slice it created (unless --keep)."""
    calls = []
    states = iter(["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])

    def fake_run(argv, **kwargs):
        calls.append(argv)
        if "describe" in argv:
            return subprocess.CompletedProcess(argv, 0, stdout=next(states) + "\n")
        return subprocess.CompletedProcess(argv, 1 if "--command=cd" in " ".join(argv) else 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(tpu_pod.time, "sleep", lambda seconds: None)
    steps = tpu_pod.plan("pod", PROJECT, ZONE, "v4-64", "population", [], "/src", "/tmp/a.tgz")
    assert tpu_pod.execute(steps, tpu_pod.STEPS, keep=False) == 1
    names = [next(name for name, argv in steps if argv == call) for call in calls]
    assert names == ["archive", "create", "wait", "wait", "wait", "copy", "setup", "run", "teardown"]
    calls.clear()
    states = iter(["ACTIVE"])
    assert tpu_pod.execute(steps, tpu_pod.STEPS, keep=True) == 1
    assert "delete" not in [word for call in calls for word in call]
    # A detached job that started is left running with its slice; the logs step is printed, not run.
    monkeypatch.setattr(subprocess, "run", lambda argv, **kwargs: calls.append(argv) or subprocess.CompletedProcess(
        argv, 0, stdout="ACTIVE\n"))
    calls.clear()
    assert tpu_pod.execute(steps, tpu_pod.STEPS, keep=False, detached=True) == 0
    ran = [word for call in calls for word in call]
    assert "delete" not in ran and "tail -n 100 -F ~/dipod_job.log" not in " ".join(ran)


def test_skypilot_gpu_task_exports_the_coordinator_environment():
    """GPU nodes: the run exports JAX_COORDINATOR_ADDRESS (head node = first of SKYPILOT_NODE_IPS),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID before the job; the setup installs the package and CUDA JAX; --bucket
    mounts /outputs; the YAML reads back as the same task."""
    spec = skypilot_task.task("population", ["--workdir=/outputs/pop"], "H100:8", num_nodes=2, bucket="my-bucket")
    assert spec["resources"] == {"accelerators": "H100:8"} and spec["num_nodes"] == 2 and spec["workdir"] == "."
    run_lines = spec["run"].splitlines()
    assert run_lines == [
        'export JAX_COORDINATOR_ADDRESS="$(echo "$SKYPILOT_NODE_IPS" | head -n1):8476"',
        'export JAX_NUM_PROCESSES="$SKYPILOT_NUM_NODES"',
        'export JAX_PROCESS_ID="$SKYPILOT_NODE_RANK"',
        "python3 -m experiments.control_population --distributed --workdir=/outputs/pop"]
    assert spec["setup"] == 'pip install -e . && pip install "jax[cuda12]==0.10.2"\n'
    assert spec["file_mounts"] == {"/outputs": {"name": "my-bucket", "mode": "MOUNT"}}
    assert yaml.safe_load(skypilot_task.to_yaml(spec)) == spec
    assert skypilot_task.launch_command("t.yaml", "dipod", down=True) == ["sky", "launch", "-c", "dipod", "-y",
                                                                           "--down", "t.yaml"]


def test_skypilot_tpu_pod_task():
    """A TPU slice is one SkyPilot node whose hosts all run the job (no coordinator variables: JAX detects the
    pod); v5e is spelled v5litepod; more than one node is refused."""
    spec = skypilot_task.task("lm_rl", ["--workdir=/outputs/rl"], "tpu-v5e-32")
    assert spec["resources"] == {"accelerators": "tpu-v5litepod-32",
                                 "accelerator_args": {"runtime_version": "v2-alpha-tpuv5-lite"}}
    assert spec["num_nodes"] == 1
    assert spec["run"] == "python3 -m experiments.lm_rl --distributed --workdir=/outputs/rl\n"
    assert "jax[tpu]==0.10.2" in spec["setup"]
    with pytest.raises(ValueError, match="num_nodes must be 1"):
        skypilot_task.task("lm_rl", [], "tpu-v4-64", num_nodes=2)


@pytest.mark.parametrize("accelerators, num_nodes", [("H100:8", 2), ("tpu-v4-64", 1)])
def test_skypilot_parses_the_task(tmp_path, accelerators, num_nodes):
    """SkyPilot's own loader (sky.Task.from_yaml) accepts the YAML: nodes, accelerators, run and setup as
    written (skipped without the `launch` extra)."""
    sky = pytest.importorskip("sky")
    path = tmp_path / "task.yaml"
    path.write_text(skypilot_task.to_yaml(skypilot_task.task("population", ["--workdir=/outputs/p"], accelerators,
                                                             num_nodes)))
    task = sky.Task.from_yaml(str(path))
    assert task.num_nodes == num_nodes
    (resources,) = list(task.resources)
    assert list(resources.accelerators) == [accelerators.split(":")[0]]
    assert "experiments.control_population --distributed" in task.run and "pip install -e ." in task.setup
