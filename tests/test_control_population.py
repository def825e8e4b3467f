"""Population training (dipod_jax.control.population): members, the traced-beta contract, single-run equality,
sharding over a (member, data) mesh of 8 fake CPU devices."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from dipod_jax.control.configs import preset_config
from dipod_jax.control.population import (
    DATA_AXIS,
    EVAL_SEED_OFFSET,
    MEMBER_AXIS,
    Members,
    default_data_shards,
    grid,
    make_mesh,
    make_population_train,
    member_config,
    to_host,
    validate_members,
)
from dipod_jax.control.train import make_train

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

TINY = "tiny/point_target"
FPO = preset_config(TINY, algo="fpo")
PPO = preset_config(TINY, algo="ppo")
ITERATIONS = 2
# Seeds 0 and 1 at beta 0 (traced) and at beta 0.05.
MIXED = Members(seeds=(0, 1, 0, 1), dipod_beta=(0.0, 0.0, 0.05, 0.05))
# Every population field varied, for PPO (the only family with an entropy term).
PPO_MEMBERS = Members(seeds=(0, 1), learning_rate=(1e-3, 3e-3), clip_eps=(0.2, 0.3), dipod_beta=(0.05, 0.0),
                      entropy_cost=(0.0, 0.02), value_loss_coef=(0.5, 0.25))


def without_keys(tree):
    """Typed PRNG keys as their raw data, so trees compare with chex."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
                        tree)


def member(tree, index):
    return jax.tree.map(lambda x: np.asarray(x)[index], without_keys(tree))


def assert_state_close(population_member, single):
    """States equal up to rounding: Adam's moments get a larger absolute tolerance, since a moment of a
    near-zero gradient keeps the rounding differences of every minibatch's gradient."""
    chex.assert_trees_all_close(population_member._replace(opt_state=()), without_keys(single)._replace(opt_state=()),
                                rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(population_member.opt_state, single.opt_state, rtol=1e-3, atol=1e-4)


def run_population(config, members, mesh=None):
    population = make_population_train(config, members, mesh=mesh, iterations_per_call=ITERATIONS)
    state, metrics = population.iterate(population.init())
    return population, state, metrics, population.evaluate(state, ITERATIONS)


def run_single(config, seed):
    """The member's own single run: unbatched make_train, same seed, same evaluation key."""
    trainer = make_train(config)
    state, metrics = jax.jit(lambda s: trainer.train_iterations(s, ITERATIONS))(jax.jit(trainer.init)(
        jax.random.key(seed)))
    key = jax.random.fold_in(jax.random.key(seed + EVAL_SEED_OFFSET), ITERATIONS)
    return state, metrics, jax.jit(trainer.evaluate)(state, key)


@pytest.fixture(scope="module")
def mixed():
    return run_population(FPO, MIXED)


def test_grid_order_member_configs_and_validation():
    """grid: first field slowest, seed fastest; member_config writes a member's values into the config; bad
    members raise ValueError naming the field and the member before anything compiles."""
    members = grid((0, 1, 2), dipod_beta=(0.0, 0.05), learning_rate=(1e-3,))
    assert members.seeds == (0, 1, 2, 0, 1, 2) and members.dipod_beta == (0.0,) * 3 + (0.05,) * 3
    assert members.varied == ("learning_rate", "dipod_beta") and len(members) == 6
    config = member_config(FPO, members, 4)
    assert (config.dipod_beta, config.learning_rate, config.clip_eps) == (0.05, 1e-3, FPO.clip_eps)
    with pytest.raises(ValueError, match="not population fields"):
        grid((0,), gamma=(0.9,))
    with pytest.raises(ValueError, match="Members.dipod_beta has 1 values for 2 seeds"):
        validate_members(FPO, Members(seeds=(0, 1), dipod_beta=(0.0,)))
    with pytest.raises(ValueError, match=r"member 1 .*dipod_beta: must be a finite number >= 0"):
        validate_members(FPO, Members(seeds=(0, 1), dipod_beta=(0.0, -1.0)))
    with pytest.raises(ValueError, match="seeds must be integers"):
        validate_members(FPO, Members(seeds=(0.5,)))
    with pytest.raises(ValueError, match="at least one member"):
        validate_members(FPO, Members(seeds=()))


def test_mesh_layout_and_errors():
    """make_mesh: (member, data) axes over the devices in order; members and devices must divide;
    default_data_shards uses every device."""
    devices = jax.devices()[:8]
    if len(devices) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    mesh = make_mesh(4, data=2, devices=devices)
    assert mesh.axis_names == (MEMBER_AXIS, DATA_AXIS) and dict(mesh.shape) == {MEMBER_AXIS: 4, DATA_AXIS: 2}
    assert [d.id for d in mesh.devices[1]] == [devices[2].id, devices[3].id]
    with pytest.raises(ValueError, match="cannot be split"):
        make_mesh(6, data=2, devices=devices)
    with pytest.raises(ValueError, match="divide the 8 devices"):
        make_mesh(4, data=3, devices=devices)
    assert (default_data_shards(4, 8), default_data_shards(6, 8), default_data_shards(16, 8)) == (2, 4, 1)
    with pytest.raises(ValueError, match="num_envs=5 does not split over the mesh's 2 data shards"):
        make_population_train(preset_config(TINY, num_envs=5), Members(seeds=(0, 1, 2, 3)), mesh=mesh)


def test_traced_zero_beta_member_is_bitwise_the_plain_baseline(mixed):
    """A member whose traced dipod_beta is 0 adds -0 * mean(ELBO): its state, every metric (dipod_term
    included: exactly 0) and its evaluation are bit-identical to the plain baseline of the same seed, i.e. the
    seed-vmapped make_train program experiments.control runs (DiPOD term out of the graph). Members at
    beta 0.05 take other updates."""
    _, state, metrics, evaluation = mixed
    trainer = make_train(FPO)
    seeds = jnp.array(MIXED.seeds)
    plain_state, plain_metrics = jax.jit(jax.vmap(lambda s: trainer.train_iterations(s, ITERATIONS)))(
        jax.jit(jax.vmap(trainer.init))(jax.vmap(jax.random.key)(seeds)))
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, ITERATIONS))(
        jax.vmap(jax.random.key)(seeds + EVAL_SEED_OFFSET))
    plain_evaluation = jax.jit(jax.vmap(trainer.evaluate))(plain_state, eval_keys)
    for index in (0, 1):
        chex.assert_trees_all_equal(member(state, index), member(plain_state, index))
        chex.assert_trees_all_equal(member(metrics, index), member(plain_metrics, index))
        chex.assert_trees_all_equal(member(evaluation, index), member(plain_evaluation, index))
        assert np.all(np.asarray(metrics["dipod_term"])[index] == 0.0)
    for index in (2, 3):
        assert np.all(np.asarray(metrics["dipod_term"])[index] != 0.0)
        assert not np.array_equal(member(state.params, index)["actor"]["params"]["Dense_0"]["kernel"],
                                  member(plain_state.params, index)["actor"]["params"]["Dense_0"]["kernel"])


def test_a_dipod_member_equals_its_own_single_run(mixed):
    """Member 2 (seed 0, traced beta 0.05) equals make_train with dipod_beta=0.05 run alone on seed 0: state,
    metrics and evaluation, up to the rounding of a batched matrix product."""
    _, state, metrics, evaluation = mixed
    single_state, single_metrics, single_evaluation = run_single(member_config(FPO, MIXED, 2), 0)
    assert_state_close(member(state, 2), single_state)
    chex.assert_trees_all_close(member(metrics, 2), single_metrics, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(member(evaluation, 2), single_evaluation, rtol=1e-4, atol=1e-4)


def test_every_population_field_reaches_its_member():
    """PPO members differing in every HyperParams field (learning rate, clip eps, beta, entropy and value
    coefficients) and seed each equal their own single run; the two members differ from each other."""
    _, state, metrics, evaluation = run_population(PPO, PPO_MEMBERS)
    for index, seed in enumerate(PPO_MEMBERS.seeds):
        single_state, single_metrics, single_evaluation = run_single(member_config(PPO, PPO_MEMBERS, index), seed)
        assert_state_close(member(state, index), single_state)
        chex.assert_trees_all_close(member(metrics, index), single_metrics, rtol=1e-4, atol=1e-5)
        chex.assert_trees_all_close(member(evaluation, index), single_evaluation, rtol=1e-4, atol=1e-4)
    assert not np.allclose(np.asarray(metrics["clip_fraction"])[0], np.asarray(metrics["clip_fraction"])[1])


def test_a_member_with_self_distillation_init_equals_its_single_run():
    """With sd_init_iterations > 0 every member's init distils its actor (the release's control DiPOD): member 1
    (seed 1) of the population's init equals make_train's init run alone on seed 1 with the same config (what
    follows the init is the path the tests above check), its env steps count the distillation's rollouts, and
    its actor differs from the plain (no distillation) init of the same seed."""
    config = preset_config(TINY, algo="fpo++", sd_init_iterations=3, sd_env_steps=2, sd_batch_size=64)
    initial = make_population_train(config, Members(seeds=(0, 1))).init()
    single_initial = jax.jit(make_train(config).init)(jax.random.key(1))
    chex.assert_trees_all_close(member(initial, 1), without_keys(single_initial), rtol=1e-5, atol=1e-6)
    distill_steps = config.sd_init_iterations * config.sd_env_steps * config.num_envs
    assert to_host(initial.env_steps).tolist() == [distill_steps] * 2
    plain_initial = jax.jit(make_train(preset_config(TINY, algo="fpo++")).init)(jax.random.key(1))
    kernel = lambda tree: np.asarray(tree.params["actor"]["params"]["Dense_0"]["kernel"])  # noqa: E731
    assert not np.allclose(kernel(member(initial, 1)), kernel(plain_initial))


def test_sharded_over_members_and_data_equals_unsharded(mixed):
    """On a 4 (members) x 2 (data) mesh of 8 CPU devices: each device holds one member's parameters and half of
    its environments, and state, metrics and evaluation equal the unsharded program (up to the order of the
    cross-device gradient sums)."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    mesh = make_mesh(len(MIXED), data=2, devices=jax.devices()[:8])
    population, state, metrics, evaluation = run_population(FPO, MIXED, mesh)
    kernel = state.params["actor"]["params"]["Dense_0"]["kernel"]
    assert kernel.sharding.spec == PartitionSpec(MEMBER_AXIS)
    assert {shard.data.shape[0] for shard in kernel.addressable_shards} == {1}
    episode_step = state.rollout_state.episode_step
    assert episode_step.sharding.spec == PartitionSpec(MEMBER_AXIS, DATA_AXIS)
    assert {shard.data.shape for shard in episode_step.addressable_shards} == {(1, FPO.num_envs // 2)}
    _, reference_state, reference_metrics, reference_evaluation = mixed
    assert_state_close(to_host(without_keys(state)), reference_state)
    chex.assert_trees_all_close(to_host(metrics), reference_metrics, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(to_host(evaluation), reference_evaluation, rtol=1e-4, atol=1e-4)
