"""Population training: a whole (seed x hyper-parameter) sweep of one algorithm as one sharded program.

    members = grid(seeds=(0, 1, 2), dipod_beta=(0.0, 0.05))            # 6 members, beta-major
    population = make_population_train(config, members, mesh=make_mesh(len(members), data=1))
    state = population.init()                                           # TrainState, leading axis [P]
    state, metrics = population.iterate(state)                          # metrics [P, iterations_per_call]
    eval_metrics = population.evaluate(state, step)                     # [P]

Details: docs/modules.md, section dipod_jax.control.population.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dipod_jax.control.configs import HyperParams, TrainConfig, hyper_params
from dipod_jax.control.envs import Environment, make_environment
from dipod_jax.control.train import Metrics, TrainState, make_train

MEMBER_AXIS = "member"
DATA_AXIS = "data"
# Evaluation episodes of member seed s at step k use fold_in(key(s + EVAL_SEED_OFFSET), k), as experiments.control.
EVAL_SEED_OFFSET = 1_000_003
HYPER_FIELDS = HyperParams._fields


@dataclasses.dataclass(frozen=True)
class Members:
    """The members of a population: one seed each, and per-member values of any `HyperParams` field.

    Attributes:
      seeds: one int seed per member (repeats allowed: the same seed under other hyper-parameters).
      learning_rate, clip_eps, dipod_beta, entropy_cost, value_loss_coef: None (every member uses the config's
        value, static) or one value per member (traced).
    """

    seeds: tuple[int, ...]
    learning_rate: tuple[float, ...] | None = None
    clip_eps: tuple[float, ...] | None = None
    dipod_beta: tuple[float, ...] | None = None
    entropy_cost: tuple[float, ...] | None = None
    value_loss_coef: tuple[float, ...] | None = None

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def varied(self) -> tuple[str, ...]:
        """The HyperParams fields given per member (the traced ones), in HyperParams order."""
        return tuple(name for name in HYPER_FIELDS if getattr(self, name) is not None)

    def values(self, index: int) -> dict[str, Any]:
        """Member `index` as {"seed": ..., field: value for each varied field}."""
        return {"seed": self.seeds[index], **{name: getattr(self, name)[index] for name in self.varied}}


def grid(seeds: Sequence[int], **values: Sequence[float]) -> Members:
    """Every combination of `values` (HyperParams fields -> lists) with every seed; the first field varies
    slowest and the seed fastest: grid((0, 1), dipod_beta=(0, .05)) = beta 0 seeds 0, 1, then beta .05."""
    unknown = sorted(set(values) - set(HYPER_FIELDS))
    if unknown:
        raise ValueError(f"grid: {unknown} are not population fields; choose from {HYPER_FIELDS}")
    names = list(values)
    rows = list(itertools.product(*(tuple(values[name]) for name in names), tuple(seeds)))
    return Members(seeds=tuple(int(row[-1]) for row in rows),
                   **{name: tuple(float(row[i]) for row in rows) for i, name in enumerate(names)})


def member_config(config: TrainConfig, members: Members, index: int) -> TrainConfig:
    """The single-run TrainConfig of member `index` (its varied values written into `config`)."""
    values = members.values(index)
    values.pop("seed")
    return dataclasses.replace(config, **values)


def validate_members(config: TrainConfig, members: Members) -> None:
    """ValueError naming the field (and member) when `members` is empty, has lists of different lengths, a
    non-integer seed or a value its TrainConfig field refuses (TrainConfig checks itself on construction)."""
    if not len(members):
        raise ValueError("Members.seeds: a population needs at least one member")
    if not all(isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) for seed in members.seeds):
        raise ValueError(f"Members.seeds must be integers, got {members.seeds!r}")
    for name in members.varied:
        if len(getattr(members, name)) != len(members):
            raise ValueError(f"Members.{name} has {len(getattr(members, name))} values for {len(members)} seeds")
    for index in range(len(members)):
        try:
            member_config(config, members, index)
        except ValueError as error:
            raise ValueError(f"member {index} ({members.values(index)}): {error}") from error


def make_mesh(num_members: int, data: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A (MEMBER_AXIS, DATA_AXIS) mesh over `devices` (default: every device of every process).

    The member axis gets len(devices) / data devices, which must divide `num_members`. Devices are taken in
    `jax.devices()` order, so a member's data shards sit on consecutive devices (one host's, when data divides
    the devices per host), where the gradient reductions are cheapest.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or len(devices) % data:
        raise ValueError(f"data={data} must be >= 1 and divide the {len(devices)} devices")
    member_shards = len(devices) // data
    if num_members % member_shards:
        raise ValueError(f"{num_members} members cannot be split over {member_shards} member shards "
                         f"({len(devices)} devices / data={data}); choose a data size or member count that divides")
    return Mesh(np.array(devices).reshape(member_shards, data), (MEMBER_AXIS, DATA_AXIS))


def default_data_shards(num_members: int, num_devices: int) -> int:
    """Data shards per member that use every device: num_devices / gcd(num_members, num_devices)."""
    return num_devices // math.gcd(num_members, num_devices)


def state_shardings(mesh: Mesh, state: TrainState) -> TrainState:
    """NamedShardings of a population state: the member axis over MEMBER_AXIS everywhere; the rollout state's
    environment axis (axis 1) also over DATA_AXIS."""
    member = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
    member_and_data = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS, DATA_AXIS))
    shardings = jax.tree.map(lambda _: member, state)
    return shardings._replace(rollout_state=jax.tree.map(lambda _: member_and_data, state.rollout_state))


def put_member_values(values: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """A [P, ...] host array as a global array sharded over MEMBER_AXIS (each process builds only its own
    shards); on the default device when `mesh` is None."""
    values = np.asarray(values)
    if mesh is None:
        return jnp.asarray(values)
    sharding = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
    return jax.make_array_from_callback(values.shape, sharding, lambda index: values[index])


def to_host(tree: Any) -> Any:
    """Numpy copies of a pytree of (possibly multi-host sharded) arrays, whole on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


class PopulationTrainer(NamedTuple):
    """The jitted functions of `make_population_train` and what they were built from.

    init() -> TrainState [P]; iterate(state) -> (state, metrics [P, iterations_per_call]);
    evaluate(state, step) -> metrics [P] (member seed s evaluates with fold_in(key(s + EVAL_SEED_OFFSET), step)).
    """

    init: Callable[[], TrainState]
    iterate: Callable[[TrainState], tuple[TrainState, Metrics]]
    evaluate: Callable[[TrainState, int], Metrics]
    members: Members
    config: TrainConfig
    mesh: Mesh | None
    state_shardings: TrainState | None
    iterations_per_call: int


def make_population_train(config: TrainConfig, members: Members, env: Environment | None = None,
                          mesh: Mesh | None = None, iterations_per_call: int = 1) -> PopulationTrainer:
    """Jitted init / iterate / evaluate of `members` trained with `config`'s algorithm, over a leading member axis.

    Args:
      config: the static configuration (a member's varied fields replace its values, see `member_config`).
      members: who trains (validated first: errors name the field and the member).
      env: defaults to `make_environment(config.env_name)`.
      mesh: a `make_mesh` mesh to shard over, or None (one device, no sharding annotations).
      iterations_per_call: training iterations fused into one `iterate` call (one lax.scan).

    Returns:
      a PopulationTrainer.
    """
    validate_members(config, members)
    if iterations_per_call < 1:
        raise ValueError(f"iterations_per_call must be >= 1, got {iterations_per_call}")
    if mesh is not None:
        if len(members) % mesh.shape[MEMBER_AXIS]:
            raise ValueError(f"{len(members)} members do not split over the mesh's {mesh.shape[MEMBER_AXIS]} "
                             f"member shards")
        if config.num_envs % mesh.shape[DATA_AXIS]:
            raise ValueError(f"TrainConfig.num_envs={config.num_envs} does not split over the mesh's "
                             f"{mesh.shape[DATA_AXIS]} data shards")
    minibatch_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))
    trainer = make_train(config, env if env is not None else make_environment(config.env_name), minibatch_sharding)
    static = hyper_params(config)
    seeds = put_member_values(np.asarray(members.seeds, np.int32), mesh)
    varied = {name: put_member_values(np.asarray(getattr(members, name), np.float32), mesh)
              for name in members.varied}
    vmap = _member_vmap(mesh)

    def init_all(seeds):
        return vmap(lambda seed: trainer.init(jax.random.key(seed)))(seeds)

    def iterate_all(state, varied):
        def iterate_one(state, values):
            return trainer.train_iterations(state, iterations_per_call, static._replace(**values))
        return vmap(iterate_one)(state, varied)

    def evaluate_all(state, seeds, step):
        def evaluate_one(state, seed):
            return trainer.evaluate(state, jax.random.fold_in(jax.random.key(seed + EVAL_SEED_OFFSET), step))
        return vmap(evaluate_one)(state, seeds)

    if mesh is None:
        init_fn, iterate_fn, evaluate_fn, shardings = jax.jit(init_all), jax.jit(iterate_all), \
            jax.jit(evaluate_all), None
    else:
        member = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
        shardings = state_shardings(mesh, jax.eval_shape(init_all, seeds))
        init_fn = jax.jit(init_all, in_shardings=member, out_shardings=shardings)
        iterate_fn = jax.jit(iterate_all, in_shardings=(shardings, member), out_shardings=(shardings, member))
        evaluate_fn = jax.jit(evaluate_all, in_shardings=(shardings, member, None), out_shardings=member)

    return PopulationTrainer(
        init=lambda: init_fn(seeds),
        iterate=lambda state: iterate_fn(state, varied),
        evaluate=lambda state, step: evaluate_fn(state, seeds, jnp.int32(step)),
        members=members, config=config, mesh=mesh, state_shardings=shardings,
        iterations_per_call=iterations_per_call)


def _member_vmap(mesh: Mesh | None):
    """jax.vmap over the member axis; with a mesh, sharding constraints inside map that axis to MEMBER_AXIS."""
    if mesh is None:
        return jax.vmap
    return lambda fn: jax.vmap(fn, spmd_axis_name=MEMBER_AXIS)
