"""Device mesh and logical-axis rules for the LLaDA transformer.

Mesh axes: "data" (pure data parallelism: parameters replicated), "fsdp" (data parallelism with parameters
sharded along their "embed" axis, gathered per layer by XLA), "tensor" (Megatron-style: heads, MLP hidden
and vocabulary split across devices). Model variables carry logical axis names (see
dipod_jax.models.llada); `DEFAULT_RULES` says which mesh axes each logical name may use. A mesh axis is used
at most once per array, and a dimension that the mesh axis size does not divide is left replicated, so
every rule set gives a valid sharding for every shape.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dipod_jax.models.llada import BATCH_MESH_AXES

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_MESH_AXES),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", "fsdp"),
    ("length", None),
)


def make_mesh(data: int = 1, fsdp: int | None = None, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor") of the given sizes over `devices` (default: all devices);
    fsdp=None takes every device that data and tensor leave. ValueError when the sizes do not multiply to
    the device count."""
    devices = list(jax.devices() if devices is None else devices)
    for name, size in (("data", data), ("tensor", tensor)):
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"mesh axis {name} must be a positive int, got {size!r}")
    if fsdp is None:
        if len(devices) % (data * tensor):
            raise ValueError(f"data*tensor={data * tensor} does not divide the device count {len(devices)}")
        fsdp = len(devices) // (data * tensor)
    if not isinstance(fsdp, int) or fsdp <= 0:
        raise ValueError(f"mesh axis fsdp must be a positive int, got {fsdp!r}")
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh data*fsdp*tensor={data}*{fsdp}*{tensor} != device count {len(devices)}")
    return Mesh(np.asarray(devices).reshape(data, fsdp, tensor), MESH_AXES)


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules=DEFAULT_RULES,
                         shape: Sequence[int] | None = None, mesh: Mesh | None = None) -> PartitionSpec:
    """Logical axis names (one per array dimension) -> a PartitionSpec over mesh axes.

    With `shape` and `mesh`, mesh axes whose combined size does not divide the dimension are dropped
    (the dimension is then sharded over the dividing prefix, or replicated). ValueError for a logical
    name that has no rule.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is None:
            spec.append(None)
            continue
        if name not in table:
            raise ValueError(f"logical axis {name!r} has no sharding rule (known: {sorted(table)})")
        target = table[name]
        candidates = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        chosen = []
        size = 1
        for axis in candidates:
            if axis in used:
                continue
            axis_size = mesh.shape[axis] if mesh is not None else 1
            if shape is not None and mesh is not None and shape[dim] % (size * axis_size):
                break
            chosen.append(axis)
            size *= axis_size
        used.update(chosen)
        spec.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
    return PartitionSpec(*spec)


def _is_variable(leaf) -> bool:
    return isinstance(leaf, nnx.Variable)


def state_partition_specs(state: Any, mesh: Mesh | None = None, rules=DEFAULT_RULES) -> Any:
    """An nnx.State (concrete or abstract) -> the same structure with a mesh PartitionSpec per variable,
    from each variable's `out_sharding` logical names (variables without names are replicated)."""
    def spec_of(variable: nnx.Variable):
        logical = variable.get_metadata().get("out_sharding")
        shape = variable.get_value().shape
        if logical is None:
            return variable.replace(PartitionSpec())
        return variable.replace(logical_to_mesh_spec(logical, rules, shape, mesh))
    return jax.tree.map(spec_of, state, is_leaf=_is_variable)


def state_shardings(state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Like state_partition_specs but with NamedShardings on `mesh` (for jax.device_put / jit shardings)."""
    specs = state_partition_specs(state, mesh, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def shard_state(state: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
    """Place every array of an nnx.State on `mesh` according to its logical axes."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def batch_sharding(mesh: Mesh, ndim: int = 2, rules=DEFAULT_RULES) -> NamedSharding:
    """Sharding of a batch-major array [B, ...] (tokens, masks): batch over ("data", "fsdp")."""
    return NamedSharding(mesh, logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1), rules))
