"""Tests of the LLaDA transformer (dipod_jax.models.llada) and its sharding rules (dipod_jax.models.sharding)."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dipod_jax.models import sharding
from dipod_jax.models.llada import (
    BASE_FILTER,
    LORA_FILTER,
    LLaDA,
    LLaDAConfig,
    count_params,
    lora_optax_mask,
    masked_diffusion_logits_fn,
)

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

VOCAB = 16
CONFIG = LLaDAConfig.tiny(VOCAB)
LORA_CONFIG = dataclasses.replace(CONFIG, lora_rank=4, lora_alpha=8.0)


@pytest.fixture(scope="module")
def model():
    return LLaDA(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def forward():
    """One jitted forward shared by the tests: (graphdef, state, tokens, mask) -> logits."""
    return jax.jit(lambda graphdef, state, tokens, mask: nnx.merge(graphdef, state)(tokens, mask),
                   static_argnums=0)


def _tokens(seed, batch=2, length=10):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB - 1)


def test_llada_8b_preset_matches_config_json():
    """The 8B preset has LLaDA-8B-Instruct's config.json numbers and exactly the checkpoint's parameter count
    (its safetensors index reports total_size 16031162368 bytes in bfloat16 = 8015581184 parameters); the 1B
    preset has 2*126464*2048 + 2048 + 16*(2*2048 + 4*2048^2 + 3*2048*5632) = 1340147712."""
    config = LLaDAConfig.llada_8b()
    assert (config.d_model, config.n_layers, config.n_heads, config.n_kv_heads, config.mlp_hidden) == (
        4096, 32, 32, 32, 12288)
    assert (config.vocab_size, config.mask_token_id, config.rope_theta) == (126464, 126336, 500000.0)
    assert count_params(config)["base"] == 16031162368 // 2
    assert count_params(LLaDAConfig.llada_1b())["base"] == 1340147712


def test_bad_config_raises_named_value_error():
    """Inconsistent hyper-parameters raise ValueError naming the field."""
    with pytest.raises(ValueError, match="n_heads"):
        LLaDAConfig.tiny(VOCAB, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="mask_token_id"):
        LLaDAConfig.tiny(VOCAB, mask_token_id=VOCAB)
    with pytest.raises(ValueError, match="lora_alpha"):
        LLaDAConfig.tiny(VOCAB, lora_rank=2)


def test_forward_shapes_and_parameter_count(model, forward):
    """Logits are [B, T, V] float32 and finite; the variables hold exactly count_params parameters."""
    graphdef, state = nnx.split(model)
    logits = forward(graphdef, state, _tokens(0), None)
    chex.assert_shape(logits, (2, 10, VOCAB))
    assert logits.dtype == jnp.float32
    chex.assert_tree_all_finite(logits)
    assert sum(x.size for x in jax.tree.leaves(state)) == count_params(CONFIG)["base"]


def test_padding_does_not_change_real_positions(model, forward):
    """With right padding masked out, the logits of the real positions equal those of the unpadded sequence,
    whatever tokens sit in the padding."""
    graphdef, state = nnx.split(model)
    real = _tokens(1, length=7)
    ones = jnp.ones((2, 7), bool)
    reference = forward(graphdef, state, jnp.pad(real, ((0, 0), (0, 3))),
                        jnp.concatenate([ones, jnp.zeros((2, 3), bool)], axis=1))[:, :7]
    unpadded = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(state, real)
    np.testing.assert_allclose(reference, unpadded, atol=1e-5)
    other_padding = jnp.concatenate([real, _tokens(2, length=3)], axis=1)
    changed = forward(graphdef, state, other_padding, jnp.concatenate([ones, jnp.zeros((2, 3), bool)], axis=1))
    np.testing.assert_allclose(changed[:, :7], reference, atol=1e-5)


def test_attention_is_bidirectional(model, forward):
    """Changing the last token changes the logits at the first position (no causal mask)."""
    graphdef, state = nnx.split(model)
    tokens = _tokens(3)
    flipped = tokens.at[:, -1].set((tokens[:, -1] + 1) % (VOCAB - 1))
    first = forward(graphdef, state, tokens, None)[:, 0]
    first_flipped = forward(graphdef, state, flipped, None)[:, 0]
    assert float(jnp.max(jnp.abs(first - first_flipped))) > 1e-4


def test_lora_starts_as_the_base_model_and_mask_selects_adapters():
    """A fresh LoRA model (B = 0) gives the base model's logits; after moving B off zero it does not.
    LORA_FILTER / lora_optax_mask select exactly the 2 * 7 adapter arrays, BASE_FILTER the rest, and an
    optax.multi_transform update labelled by the mask changes only adapters."""
    base_model = LLaDA(CONFIG, rngs=nnx.Rngs(0))
    lora_model = LLaDA(LORA_CONFIG, rngs=nnx.Rngs(0))
    # Adapters change the order of random draws, so copy the base weights over.
    nnx.update(lora_model, nnx.state(base_model, nnx.Param))
    tokens = _tokens(4)
    np.testing.assert_allclose(lora_model(tokens), base_model(tokens), atol=1e-6)

    lora_state = nnx.state(lora_model, LORA_FILTER)
    assert len(jax.tree.leaves(lora_state)) == 14
    assert sum(x.size for x in jax.tree.leaves(lora_state)) == count_params(LORA_CONFIG)["lora"]
    assert len(jax.tree.leaves(nnx.state(lora_model, BASE_FILTER))) == len(jax.tree.leaves(nnx.state(base_model)))

    params = nnx.state(lora_model, nnx.Param)
    mask = lora_optax_mask(params)
    flags = jax.tree.leaves(mask)
    assert sum(flags) == 14 and len(flags) == len(jax.tree.leaves(params))
    raw = nnx.to_pure_dict(params)
    optimizer = optax.multi_transform({True: optax.sgd(1.0), False: optax.set_to_zero()}, nnx.to_pure_dict(mask))
    ones = jax.tree.map(jnp.ones_like, raw)
    updates, _ = optimizer.update(ones, optimizer.init(raw), raw)
    new_raw = optax.apply_updates(raw, updates)
    for name, value in new_raw.items():
        changed = not np.allclose(value, raw[name])
        assert changed == name.startswith("lora_"), name
    nnx.update(lora_model, new_raw)
    assert float(jnp.max(jnp.abs(lora_model(tokens) - base_model(tokens)))) > 1e-3


def test_lora_only_gradient_is_nonzero_and_base_frozen():
    """nnx.grad over DiffState(LORA_FILTER) returns gradients only for adapters, and the B matrices get a
    non-zero gradient at initialisation (A is random)."""
    model = LLaDA(LORA_CONFIG, rngs=nnx.Rngs(1))
    tokens = _tokens(5)

    def loss_fn(m):
        return jnp.mean(jax.nn.log_softmax(masked_diffusion_logits_fn(m)(tokens))[..., 0])

    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, LORA_FILTER))(model)
    leaves = jax.tree.leaves(grads, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert len(leaves) == 14 and all(isinstance(v, nnx.LoRAParam) for v in leaves)
    assert float(jnp.abs(grads["lora_b_q"][...]).max()) > 0


class BFloat16Test(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_bfloat16_compute_runs_close_to_float32(self):
        """dtype=bfloat16 gives finite float32 logits within bf16 rounding of the float32 model's logits
        (same weights), and they are not bit-identical (the compute dtype is really used)."""
        model32 = LLaDA(CONFIG, rngs=nnx.Rngs(2))
        model16 = LLaDA(dataclasses.replace(CONFIG, dtype=jnp.bfloat16), rngs=nnx.Rngs(2))
        graphdef16, state16 = nnx.split(model16)
        tokens = _tokens(6)
        logits16 = self.variant(lambda s, t: nnx.merge(graphdef16, s)(t))(state16, tokens)
        logits32 = model32(tokens)
        assert logits16.dtype == jnp.float32
        chex.assert_tree_all_finite(logits16)
        scale = float(jnp.max(jnp.abs(logits32)))
        np.testing.assert_allclose(logits16, logits32, atol=0.05 * scale)
        assert float(jnp.max(jnp.abs(logits16 - logits32))) > 0


def test_sharding_rules_map_logical_axes_to_mesh():
    """On a (data 2, fsdp 2, tensor 2) mesh of 8 fake devices: projections are sharded (embed -> fsdp,
    heads/mlp -> tensor), norms replicated, a vocabulary the tensor axis does not divide is replicated,
    placed arrays have the expected shard shapes, and the sharded forward under jax.set_mesh returns
    batch-sharded logits equal to the unsharded forward's."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    config = LLaDAConfig.tiny(15, lora_rank=2, lora_alpha=4.0)
    model = LLaDA(config, rngs=nnx.Rngs(3))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    graphdef, state = nnx.split(model)
    specs = sharding.state_partition_specs(state, mesh)
    P = jax.sharding.PartitionSpec
    assert specs["w_q"].get_value() == P(None, "fsdp", "tensor")
    assert specs["w_down"].get_value() == P(None, "tensor", "fsdp")
    assert specs["attn_norm"].get_value() == P(None, None)
    assert specs["embedding"].get_value() == P(None, "fsdp")  # vocab 15 is odd: replicated
    assert specs["lora_a_gate"].get_value() == P(None, "fsdp", None)
    placed = sharding.shard_state(state, mesh)
    w_up = placed["w_up"].get_value()
    assert w_up.sharding.shard_shape(w_up.shape) == (2, 16, 32)
    tokens = jax.device_put(_tokens(7, batch=4), sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        sharded_logits = jax.jit(lambda s, t: nnx.merge(graphdef, s)(t))(placed, tokens)
    assert sharded_logits.sharding.spec[0] == ("data", "fsdp")  # activations pinned batch-sharded
    np.testing.assert_allclose(sharded_logits, model(np.asarray(tokens)), atol=1e-5)
    with pytest.raises(ValueError, match="device count"):
        sharding.make_mesh(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_mesh_spec(("unknown_axis",))


def test_cached_forward_equals_full_forward_with_a_fresh_cache():
    """With keys / values cached from a full pass over the same tokens (GQA, LoRA, left padding), the
    window forward equals the full forward at the window's positions: for a "dual" window (one block, traced
    start under jit) and a "prefix" window (block and everything after it); forward_with_cache returns the
    full logits of its window and a cache of shape [L, B, T, KV, hd]."""
    with jax.default_matmul_precision("highest"):  # full float32 on GPUs too: differently shaped matmuls agree
        _check_cached_forward()


def _check_cached_forward():
    config = LLaDAConfig.tiny(VOCAB, n_kv_heads=2, lora_rank=2, lora_alpha=4.0)
    model = LLaDA(config, rngs=nnx.Rngs(5))
    nnx.update(model, jax.tree.map(lambda x: x + 0.1, nnx.state(model, LORA_FILTER)))  # non-zero adapters
    tokens = _tokens(8, batch=3, length=12)
    attention_mask = jnp.arange(12)[None] >= jnp.array([[0], [2], [3]])
    # A stale cache: changing a token outside the window changes the full forward, not the cached window's.
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % (VOCAB - 1))

    @nnx.jit
    def passes(model, start):
        full = model(tokens, attention_mask)
        logits, cache = model.forward_with_cache(tokens, attention_mask, 4, 3)
        dual = model.forward_cached(jax.lax.dynamic_slice_in_dim(tokens, start, 3, axis=1), start, cache,
                                    attention_mask, 3)
        prefix = model.forward_cached(tokens[:, 4:], 4, cache, attention_mask, 3)
        stale = model.forward_cached(changed[:, 4:7], 4, cache, attention_mask, 3)
        return full, logits, cache, dual, prefix, stale, model(changed, attention_mask)

    full, logits, cache, dual, prefix, stale, changed_full = passes(model, jnp.int32(4))
    assert cache.keys.shape == cache.values.shape == (config.n_layers, 3, 12, 2, config.head_dim)
    for window in (logits, dual, prefix, stale):
        np.testing.assert_allclose(window, full[:, 4:7], atol=1e-5)
    assert float(jnp.max(jnp.abs(changed_full[:, 4:7] - full[:, 4:7]))) > 1e-4
