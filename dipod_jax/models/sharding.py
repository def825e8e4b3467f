"""Device mesh and logical-axis rules for the LLaDA transformer: its parameters and its activations.

Details: docs/modules.md, section dipod_jax.models.sharding.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    # Inputs and activations are split along their batch; parameters never have a batch axis.
    ("batch", ("data", "fsdp")),
    ("length", None),
    # Parameters.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("lora_rank", "fsdp"),
    # Activations whose axis a weight shards differently: the hidden features and the logits' vocabulary
    # stay whole on every device (fsdp already splits the batch; the head's tensor-split vocabulary is
    # gathered once, for the softmax).
    ("activation_embed", None),
    ("activation_vocab", None),
    ("head_dim", None),
)

# Parameters of at most this many elements may end up replicated (norm scales, biases, small adapters of
# tiny models): a few hundred KiB per device at most, not worth refusing a mesh for.
MAX_REPLICATED_PARAM_SIZE = 2 ** 16


def make_mesh(data: int = 1, fsdp: int | None = None, tensor: int = 1,
              devices: Sequence[Any] | None = None) -> Mesh:
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


def _rule_axes(table: dict, name: str | None) -> tuple[str, ...]:
    """The mesh axes a logical name may use, in order; ValueError for a name without a rule."""
    if name is None:
        return ()
    if name not in table:
        raise ValueError(f"logical axis {name!r} has no sharding rule (known: {sorted(table)})")
    target = table[name]
    return () if target is None else ((target,) if isinstance(target, str) else tuple(target))


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules=DEFAULT_RULES,
                         shape: Sequence[int] | None = None, mesh: Mesh | AbstractMesh | None = None) -> PartitionSpec:
    """Logical axis names (one per array dimension) -> a PartitionSpec over mesh axes.

    With `mesh` (a Mesh or an AbstractMesh), mesh axes it does not have are skipped; with `shape` too, mesh
    axes whose combined size does not divide the dimension are dropped (the dimension is then sharded over
    the dividing prefix, or replicated). ValueError for a logical name that has no rule.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        chosen = []
        size = 1
        for axis in _rule_axes(table, name):
            if axis in used or (mesh is not None and axis not in mesh.axis_names):
                continue
            axis_size = mesh.shape[axis] if mesh is not None else 1
            if shape is not None and mesh is not None and shape[dim] % (size * axis_size):
                break
            chosen.append(axis)
            size *= axis_size
        used.update(chosen)
        spec.append(None if not chosen else (chosen[0] if len(chosen) == 1 else tuple(chosen)))
    return PartitionSpec(*spec)


def _spec_axes(spec: PartitionSpec) -> list[str]:
    """The mesh axes a PartitionSpec uses, in order."""
    return [axis for entry in spec if entry is not None
            for axis in ((entry,) if isinstance(entry, str) else entry)]


def shard_activation(x: jax.Array, logical_axes: Sequence[str | None], rules=DEFAULT_RULES) -> jax.Array:
    """Pin the activation x to the sharding its logical axes (one per dimension) give on the mesh set with
    `jax.set_mesh`; the identity without a mesh, and when no dimension would be split (the partitioner then
    stays free). Without these pins the partitioner may gather the whole batch of activations to keep
    FSDP-sharded weights in place."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    if len(logical_axes) != x.ndim:
        raise ValueError(f"{len(logical_axes)} logical axes {tuple(logical_axes)} for an array of shape {x.shape}")
    spec = logical_to_mesh_spec(logical_axes, rules, x.shape, mesh)
    if all(mesh.shape[axis] == 1 for axis in _spec_axes(spec)):
        return x
    return jax.lax.with_sharding_constraint(x, spec)


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


def _path_name(path) -> str:
    return "/".join(str(getattr(entry, "key", getattr(entry, "name", entry))) for entry in path)


def _replication_by_division(variable: nnx.Variable, mesh: Mesh, rules) -> list[str]:
    """Why `variable` is replicated over a mesh axis (size > 1) that its rules give it: one line per mesh
    axis dropped because the dimension's size is not divisible; empty when none was dropped."""
    logical = variable.get_metadata().get("out_sharding")
    if logical is None:
        return []
    shape = variable.get_value().shape
    placed = set(_spec_axes(logical_to_mesh_spec(logical, rules, shape, mesh)))
    intended = logical_to_mesh_spec(logical, rules, None, mesh)
    reasons = []
    for dim, entry in enumerate(intended):
        for axis in _spec_axes(PartitionSpec(entry)):
            if axis not in placed and mesh.shape[axis] > 1:
                reasons.append(f"dimension {dim} ({logical[dim]!r}, size {shape[dim]}) is not divisible over mesh "
                               f"axis {axis!r} (size {mesh.shape[axis]})")
    return reasons


def assert_params_sufficiently_sharded(state: Any, mesh: Mesh, rules=DEFAULT_RULES,
                                       max_replicated_size: int = MAX_REPLICATED_PARAM_SIZE) -> None:
    """ValueError when a variable of `state` (an nnx.State, concrete or abstract) larger than
    `max_replicated_size` elements would be replicated over a mesh axis its logical axes ask for, because
    that axis's size does not divide the dimension (`logical_to_mesh_spec` then silently drops it, and every
    device holds the whole dimension). The message names each such parameter's path, shape and mesh axis.

    Replication by design passes: logical axes whose rule is None (norm scales), variables without logical
    axes, mesh axes of size 1, and a mesh axis already taken by another dimension of the same array.
    """
    problems = []
    for path, variable in jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_variable)[0]:
        shape = tuple(variable.get_value().shape) if _is_variable(variable) else ()
        if not _is_variable(variable) or math.prod(shape) <= max_replicated_size:
            continue
        problems += [f"  {_path_name(path)} {shape}: {reason}"
                     for reason in _replication_by_division(variable, mesh, rules)]
    if problems:
        raise ValueError(
            f"parameters of more than max_replicated_size={max_replicated_size} elements would be replicated on "
            f"mesh {dict(mesh.shape)}, because a dimension is not divisible by the mesh axis that shards it "
            f"(choose mesh axis sizes that divide them, or give their logical axis the rule None to replicate "
            f"it by design):\n" + "\n".join(problems))
