"""Logical-axis sharding (dipod_jax.models.sharding): activations pinned by their logical names, and the check that
refuses parameters a mesh would leave replicated because a dimension does not divide. 8 fake CPU devices
(tests/conftest.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dipod_jax.lm import rl
from dipod_jax.models import sharding
from dipod_jax.models.llada import KV_AXES, LLaDA, LLaDAConfig


@pytest.fixture(autouse=True)
def eight_devices():
    assert len(jax.devices()) == 8, "tests/conftest.py must provide 8 fake CPU devices"


def _laid_out(array_sharding, mesh, spec: P, ndim: int) -> bool:
    """Whether a sharding places an ndim array as `spec` does on `mesh` (size-1 axes and trailing Nones aside)."""
    return array_sharding.is_equivalent_to(NamedSharding(mesh, spec), ndim)


def _abstract_state(config: LLaDAConfig):
    return nnx.split(nnx.eval_shape(lambda: LLaDA(config, rngs=nnx.Rngs(0))))[1]


def test_params_whose_dims_divide_pass():
    """d_model 32, mlp 64, vocab 16, LoRA rank 8: every dimension a rule shards divides fsdp = 8 and
    (data 2, fsdp 2, tensor 2), so even with no allowance for small parameters nothing is reported; the
    norms (rule None) and a LoRA rank that finds fsdp already taken by its embed axis are replicated by design."""
    state = _abstract_state(LLaDAConfig.tiny(16, lora_rank=8, lora_alpha=16.0))
    for mesh in (sharding.make_mesh(data=1, fsdp=8), sharding.make_mesh(data=2, fsdp=2, tensor=2)):
        sharding.assert_params_sufficiently_sharded(state, mesh, max_replicated_size=0)
    assert sharding.state_partition_specs(state, sharding.make_mesh(fsdp=8))["lora_a_q"].get_value() == \
        P(None, "fsdp", None)


def test_fsdp_dim_that_does_not_divide_is_refused_naming_the_param():
    """d_model 36 on fsdp = 8: every weight with an embed axis would be silently replicated over fsdp. The error
    names the parameter path, its shape, the dimension and the mesh axis; norm scales (rule None) are not
    listed; the default allowance for small parameters lets this tiny model through, and so does a mesh
    whose fsdp size divides 36."""
    config = LLaDAConfig.tiny(16, d_model=36, n_heads=2, mlp_hidden=64)
    state = _abstract_state(config)
    mesh = sharding.make_mesh(data=1, fsdp=8)
    assert sharding.state_partition_specs(state, mesh)["w_up"].get_value() == P(None, None, "tensor")  # no fsdp
    with pytest.raises(ValueError) as error:
        sharding.assert_params_sufficiently_sharded(state, mesh, max_replicated_size=0)
    message = str(error.value)
    assert "w_up (2, 36, 64): dimension 1 ('embed', size 36) is not divisible over mesh axis 'fsdp' (size 8)" \
        in message
    assert "w_down (2, 64, 36): dimension 2 ('embed', size 36)" in message
    assert "embedding (16, 36)" in message
    assert "attn_norm" not in message and "final_norm" not in message
    sharding.assert_params_sufficiently_sharded(state, mesh)  # every array is under MAX_REPLICATED_PARAM_SIZE
    with pytest.raises(ValueError, match="w_up"):
        sharding.assert_params_sufficiently_sharded(state, mesh, max_replicated_size=36 * 64)
    sharding.assert_params_sufficiently_sharded(state, sharding.make_mesh(data=2, fsdp=4), max_replicated_size=0)


def test_rl_param_placement_runs_the_check():
    """rl.param_shardings, where the RL trainer places its parameters on the mesh, refuses a mesh that would
    replicate the embedding and head of a 2048-token vocabulary (73,728 elements each, over the default
    allowance) because d_model 36 does not divide over fsdp = 8; fsdp = 4 is accepted."""
    model = LLaDA(LLaDAConfig.tiny(2048, d_model=36, n_heads=2, mlp_hidden=64), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"embedding \(2048, 36\): dimension 1 \('embed', size 36\)") as error:
        rl.param_shardings(model, False, sharding.make_mesh(data=1, fsdp=8))
    assert "head (36, 2048)" in str(error.value) and "w_q" not in str(error.value)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    params_sharding, _ = rl.param_shardings(model, False, mesh)
    assert _laid_out(params_sharding["embedding"], mesh, P(None, "fsdp"), 2)


def test_activations_follow_their_logical_axes():
    """Under jax.set_mesh((data 2, fsdp 2, tensor 2)), keys / values [B, T, KV, hd] are split over batch
    (data x fsdp) and heads (tensor); a batch that does not divide is left to the partitioner; without a
    mesh shard_activation is the identity; a wrong number of names is refused. The model's cache comes out
    with the same layout: [L, B, T, KV, hd]."""
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    pin = jax.jit(lambda x: sharding.shard_activation(x, KV_AXES))
    x = jnp.arange(8 * 3 * 4 * 2, dtype=jnp.float32).reshape(8, 3, 4, 2)
    with jax.set_mesh(mesh):
        assert _laid_out(pin(x).sharding, mesh, P(("data", "fsdp"), None, "tensor", None), 4)
        assert _laid_out(pin(jnp.ones((3, 3, 4, 2))).sharding, mesh, P(None, None, "tensor", None), 4)
        with pytest.raises(ValueError, match="3 logical axes"):
            sharding.shard_activation(x, KV_AXES[:3])
    assert sharding.shard_activation(x, KV_AXES) is x
    config = LLaDAConfig.tiny(16)
    graphdef, state = nnx.split(LLaDA(config, rngs=nnx.Rngs(1)))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 15, (4, 6)), jnp.int32)
    with jax.set_mesh(mesh):
        logits, cache = jax.jit(lambda s, t: nnx.merge(graphdef, s).forward_with_cache(t, None, 2, 4))(
            sharding.shard_state(state, mesh), jax.device_put(tokens, sharding.batch_sharding(mesh)))
    assert _laid_out(cache.keys.sharding, mesh, P(None, ("data", "fsdp"), None, "tensor", None), 5)
    assert _laid_out(logits.sharding, mesh, P(("data", "fsdp"), None, None), 3)
    full_logits = nnx.merge(graphdef, state)(tokens)
    np.testing.assert_allclose(logits, full_logits[:, 2:6], atol=1e-5)
