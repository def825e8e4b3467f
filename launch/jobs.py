"""The jobs the cluster launchers start on every host: one program, the same command line on each.

Every host of a pod (or node of a GPU cluster) runs the same `python3 -m experiments.<program> ...`; the
processes find each other through `jax.distributed.initialize` (dipod_jax.run.distributed): on Cloud TPU with
no arguments at all (JAX reads the pod's topology from the TPU VM's metadata; "If you are using TPU, Slurm, or
Open MPI, all arguments are optional", https://docs.jax.dev/en/latest/_autosummary/jax.distributed.initialize.html),
elsewhere from JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, which the launcher exports.
"""
from __future__ import annotations

import shlex
from collections.abc import Sequence

# job name -> the experiment module it runs; both read --distributed (jax.distributed.initialize()).
JOBS: dict[str, str] = {
    "population": "experiments.control_population",
    "lm_rl": "experiments.lm_rl",
}
# The port of the JAX coordinator (process 0) on clusters that need one named (GPU clusters).
COORDINATOR_PORT = 8476


def job_command(job: str, args: Sequence[str], python: str = "python3") -> str:
    """The shell command every host runs: `python3 -m <module> --distributed <args>` (arguments quoted).

    Raises:
      ValueError: an unknown job, or an argument that is not a --flag (the launchers pass flags only).
    """
    if job not in JOBS:
        raise ValueError(f"--job={job!r} is not one of {sorted(JOBS)}")
    bad = [arg for arg in args if not arg.startswith("--")]
    if bad:
        raise ValueError(f"job arguments must be --flags, got {bad}")
    return " ".join([python, "-m", JOBS[job], "--distributed", *(shlex.quote(arg) for arg in args)])
