"""The processes of one multi-process JAX run started on this machine (the slow multi-process tests)."""
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_processes(module: str, argv: Sequence[str], num_processes: int, log_prefix: str, timeout_s: float,
                     devices_per_process: int | None = None) -> list[tuple[int, str]]:
    """Runs `python -m module argv` as the `num_processes` processes of one jax.distributed run (coordinator on
    127.0.0.1, CPU backend, `devices_per_process` fake CPU devices each, default one); returns [(returncode,
    output)] by process.

    A process that fails stops the others at once (they would wait on it in a collective until the
    coordinator's heartbeat timeout). Each process's output goes to <log_prefix>.process<id>.log (a file, not a
    pipe, so that a long traceback cannot block the process)."""
    port = free_port()
    processes, log_paths = [], []
    for process_id in range(num_processes):
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id))
        env.pop("XLA_FLAGS", None)  # not conftest's 8 devices
        if devices_per_process:
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices_per_process}"
        log_paths.append(f"{log_prefix}.process{process_id}.log")
        with open(log_paths[-1], "w") as log_file:
            processes.append(subprocess.Popen([sys.executable, "-m", module, *argv], cwd=REPO_ROOT, env=env,
                                              stdout=log_file, stderr=subprocess.STDOUT))
    deadline = time.time() + timeout_s
    while any(p.poll() is None for p in processes) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in processes):
            break
        time.sleep(0.5)
    for process in processes:
        if process.poll() is None:
            process.kill()
    returncodes = [process.wait() for process in processes]
    outputs = []
    for log_path in log_paths:
        with open(log_path) as log_file:
            outputs.append(log_file.read())
    return list(zip(returncodes, outputs, strict=True))
