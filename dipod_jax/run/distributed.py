"""Joining a multi-process (multi-host) JAX run: `jax.distributed.initialize` from the environment.

Every experiment that can span hosts calls `initialize_distributed` before any other JAX call.
"""
from __future__ import annotations

import os

import jax

COORDINATOR_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(requested: bool = False) -> bool:
    """Calls jax.distributed.initialize when the environment names a coordinator (JAX_COORDINATOR_ADDRESS with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID) or, with no coordinator named, when `requested` (a --distributed
    flag): JAX then detects the cluster itself (Cloud TPU pods, Slurm, ...). Returns whether it ran.

    Raises:
      ValueError: JAX_COORDINATOR_ADDRESS is set without the other two variables.
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        missing = [name for name in COORDINATOR_ENV[1:] if name not in os.environ]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
        jax.distributed.initialize(coordinator_address=address, num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        return True
    if requested:
        jax.distributed.initialize()
        return True
    return False
