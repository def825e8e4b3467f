"""LLaDA: the bidirectional masked-diffusion transformer (Nie et al., 2025) in Flax NNX.

Details: docs/modules.md, section dipod_jax.models.llada.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from dipod_jax.models.sharding import shard_activation

# Large finite negative bias for masked keys: -inf would give NaN on rows with no valid key.
_MASKED_SCORE = -1e9

# The weight matrices of every block (also the LoRA targets).
PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


# A LoRA adapter weight (A or B) is Flax's own nnx.LoRAParam, a subclass of nnx.Param (so `nnx.Param` selects
# it too); these filters split the adapters from the base weights.
LORA_FILTER = nnx.LoRAParam
BASE_FILTER = nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
    """Hyper-parameters of the LLaDA transformer.

    dtype is the compute dtype (activations and matmul inputs; RMSNorm statistics, rotary embeddings, the
    attention softmax and the returned logits are float32); param_dtype is the storage dtype of the weights.
    lora_rank = 0 turns LoRA off. remat recomputes each block's activations in the backward pass (jax.checkpoint).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    max_seq_len: int
    rope_theta: float = 500000.0
    mask_token_id: int = 126336
    rms_norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    lora_rank: int = 0
    lora_alpha: float = 0.0
    remat: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LLaDAConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"LLaDAConfig.d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"LLaDAConfig head dim d_model/n_heads={self.d_model // self.n_heads} must be even (RoPE)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"LLaDAConfig.n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(f"LLaDAConfig.mask_token_id={self.mask_token_id} must lie in "
                             f"[0, vocab_size={self.vocab_size})")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(f"LLaDAConfig.rope_theta and rms_norm_eps must be > 0, "
                             f"got {self.rope_theta}, {self.rms_norm_eps}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(f"LLaDAConfig.lora_rank must be an int >= 0, got {self.lora_rank!r}")
        if self.lora_rank > 0 and self.lora_alpha <= 0:
            raise ValueError(f"LLaDAConfig.lora_alpha must be > 0 when lora_rank > 0, got {self.lora_alpha}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in features, out features) of each block projection, keyed by PROJECTIONS."""
        kv_width = self.n_kv_heads * self.head_dim
        return {
            "q": (self.d_model, self.d_model),
            "k": (self.d_model, kv_width),
            "v": (self.d_model, kv_width),
            "o": (self.d_model, self.d_model),
            "gate": (self.d_model, self.mlp_hidden),
            "up": (self.d_model, self.mlp_hidden),
            "down": (self.mlp_hidden, self.d_model),
        }

    @classmethod
    def llada_8b(cls, **overrides) -> LLaDAConfig:
        """LLaDA-8B-Instruct (its config.json: d_model 4096, 32 layers, 32 heads = kv heads, mlp_hidden_size
        12288, vocab/embedding 126464, mask_token_id 126336, rope_theta 500000, rms_norm_eps 1e-5,
        max_sequence_length 4096, no weight tying, no biases)."""
        base = cls(vocab_size=126464, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden=12288,
                   max_seq_len=4096, rope_theta=500000.0, mask_token_id=126336, rms_norm_eps=1e-5)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def llada_1b(cls, **overrides) -> LLaDAConfig:
        """A 1.34B-parameter model with LLaDA's tokenizer (vocab 126464, mask 126336): d_model 2048, 16 layers,
        16 heads of 128, mlp 5632. Not a released checkpoint: a mid-size configuration for experiments."""
        base = cls(vocab_size=126464, d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, mlp_hidden=5632,
                   max_seq_len=4096, rope_theta=500000.0, mask_token_id=126336, rms_norm_eps=1e-5)
        return dataclasses.replace(base, **overrides)

    @classmethod
    def tiny(cls, vocab_size: int = 16, *, d_model: int = 32, n_layers: int = 2, n_heads: int = 4,
             n_kv_heads: int | None = None, mlp_hidden: int = 64, max_seq_len: int = 128,
             mask_token_id: int | None = None, rope_theta: float = 10000.0, **overrides) -> LLaDAConfig:
        """A tiny model for tests and toy tasks; the mask token defaults to the last vocabulary id."""
        return cls(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                   n_kv_heads=n_heads if n_kv_heads is None else n_kv_heads, mlp_hidden=mlp_hidden,
                   max_seq_len=max_seq_len, rope_theta=rope_theta,
                   mask_token_id=vocab_size - 1 if mask_token_id is None else mask_token_id, **overrides)


def count_params(config: LLaDAConfig) -> dict[str, int]:
    """Exact parameter counts {"base": ..., "lora": ...} of LLaDA(config), from the shapes alone."""
    per_layer = 2 * config.d_model + sum(i * o for i, o in config.projection_shapes().values())
    lora_per_layer = sum(config.lora_rank * (i + o) for i, o in config.projection_shapes().values())
    base = 2 * config.vocab_size * config.d_model + config.d_model + config.n_layers * per_layer
    return {"base": base, "lora": config.n_layers * lora_per_layer}


def _truncated_normal(key: jax.Array, shape: tuple[int, ...], std: float | jax.Array, dtype) -> jax.Array:
    """Normal(0, std) truncated at +-3 std (LLaDA's "mitchell" init); std may broadcast against shape."""
    return (jax.random.truncated_normal(key, -3.0, 3.0, shape, jnp.float32) * std).astype(dtype)


def _param(value: jax.Array, axes: tuple[str | None, ...], kind=nnx.Param) -> nnx.Param:
    """A variable of type `kind` holding value [...] with one logical axis name per dimension."""
    chex.assert_rank(value, len(axes))
    return kind(value, out_sharding=axes, eager_sharding=False)


# Logical axis names of each projection's (input, output) feature axes.
_PROJECTION_AXES = {
    "q": ("embed", "heads"), "k": ("embed", "kv_heads"), "v": ("embed", "kv_heads"), "o": ("heads", "embed"),
    "gate": ("embed", "mlp"), "up": ("embed", "mlp"), "down": ("mlp", "embed"),
}


class LLaDA(nnx.Module):
    """The LLaDA transformer. `LLaDA(config, rngs=nnx.Rngs(seed))`; see the module docstring for the call.

    Variables: embedding [V, D]; blocks: attn_norm, ff_norm [L, D]; w_q, w_o [L, D, D]; w_k, w_v [L, D, KV*hd];
    w_gate, w_up [L, D, F]; w_down [L, F, D]; final_norm [D]; head [D, V]; with LoRA, lora_a_<p> [L, in, r] and
    lora_b_<p> [L, r, out] for every projection p.
    """

    def __init__(self, config: LLaDAConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        shapes = c.projection_shapes()
        self.embedding = _param(_truncated_normal(rngs.params(), (c.vocab_size, c.d_model), c.d_model ** -0.5,
                                                  c.param_dtype), ("vocab", "embed"))
        self.attn_norm = _param(jnp.ones((c.n_layers, c.d_model), c.param_dtype), ("layers", "norm"))
        self.ff_norm = _param(jnp.ones((c.n_layers, c.d_model), c.param_dtype), ("layers", "norm"))
        # Output projections of the residual branches are scaled down with depth, as LLaDA's init does.
        depth_scale = (2.0 * jnp.arange(1, c.n_layers + 1, dtype=jnp.float32)) ** -0.5
        for name in PROJECTIONS:
            fan_in, fan_out = shapes[name]
            std = fan_in ** -0.5 * (depth_scale[:, None, None] if name in ("o", "down") else 1.0)
            weight = _truncated_normal(rngs.params(), (c.n_layers, fan_in, fan_out), std, c.param_dtype)
            setattr(self, f"w_{name}", _param(weight, ("layers",) + _PROJECTION_AXES[name]))
            if c.lora_rank:
                in_axis, out_axis = _PROJECTION_AXES[name]
                lora_a = jax.random.normal(rngs.params(), (c.n_layers, fan_in, c.lora_rank), jnp.float32)
                setattr(self, f"lora_a_{name}", _param((lora_a * fan_in ** -0.5).astype(c.param_dtype),
                                                       ("layers", in_axis, "lora_rank"), nnx.LoRAParam))
                setattr(self, f"lora_b_{name}", _param(jnp.zeros((c.n_layers, c.lora_rank, fan_out), c.param_dtype),
                                                       ("layers", "lora_rank", out_axis), nnx.LoRAParam))
        self.final_norm = _param(jnp.ones((c.d_model,), c.param_dtype), ("norm",))
        self.head = _param(_truncated_normal(rngs.params(), (c.d_model, c.vocab_size), c.d_model ** -0.5,
                                             c.param_dtype), ("embed", "vocab"))

    def block_params(self) -> dict[str, jax.Array]:
        """The stacked per-layer arrays, each with leading axis n_layers, keyed by variable name."""
        names = ["attn_norm", "ff_norm"] + [f"w_{p}" for p in PROJECTIONS]
        if self.config.lora_rank:
            names += [f"lora_{ab}_{p}" for p in PROJECTIONS for ab in ("a", "b")]
        return {name: getattr(self, name)[...] for name in names}

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """tokens [B, T] int, attention_mask [B, T] bool (True = real token) or None -> logits [B, T, V] float32."""
        return transformer_forward(self.config, self.embedding[...], self.block_params(), self.final_norm[...],
                                   self.head[...], tokens, attention_mask)

    def forward_with_cache(self, tokens: jax.Array, attention_mask: jax.Array | None, logits_start: int | jax.Array,
                           logits_length: int) -> tuple[jax.Array, KVCache]:
        """(logits [B, logits_length, V] of positions [logits_start, +logits_length), KVCache of every position);
        see `transformer_forward_with_cache`."""
        return transformer_forward_with_cache(self.config, self.embedding[...], self.block_params(),
                                              self.final_norm[...], self.head[...], tokens, attention_mask,
                                              logits_start, logits_length)

    def forward_cached(self, window_tokens: jax.Array, window_start: int | jax.Array, cache: KVCache,
                       attention_mask: jax.Array | None, logits_length: int) -> jax.Array:
        """Logits [B, logits_length, V] of a window of positions that attends to cached keys / values
        elsewhere; see `transformer_forward_cached`."""
        return transformer_forward_cached(self.config, self.embedding[...], self.block_params(),
                                          self.final_norm[...], self.head[...], window_tokens, window_start,
                                          cache, attention_mask, logits_length)


def masked_diffusion_logits_fn(model: LLaDA, attention_mask: jax.Array | None = None
                               ) -> Callable[[jax.Array], jax.Array]:
    """The closure `logits_fn(tokens [B, T]) -> logits [B, T, V]` that dipod_jax.losses.masked expects.

    attention_mask [B, T] bool (or None) is fixed for every call (the padding of the batch does not change
    when tokens are re-masked). Inside `nnx.jit` / `nnx.grad` pass the (traced) model in as an argument and
    build the closure inside the transformed function.
    """
    def logits_fn(tokens: jax.Array) -> jax.Array:
        return model(tokens, attention_mask)
    return logits_fn


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """x [..., D] (any dtype), weight [D] -> [..., D] in x.dtype; the statistics are computed in float32."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
    return normed.astype(x.dtype) * weight.astype(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each [T, head_dim] float32, for positions 0..T-1: frequency j of theta^(-2j/head_dim),
    repeated for the two halves of the head."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, T, H, hd], cos/sin [T, hd] -> [B, T, H, hd] in x.dtype (rotation of the half-split pairs in float32)."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos[None, :, None, :] + rotated * sin[None, :, None, :]).astype(x.dtype)


def _project(config: LLaDAConfig, params: dict[str, jax.Array], name: str, x: jax.Array) -> jax.Array:
    """x [B, T, in] -> [B, T, out]: x W (+ scale * x A B with LoRA), in the compute dtype."""
    dtype = config.dtype
    out = x @ params[f"w_{name}"].astype(dtype)
    if config.lora_rank:
        low_rank = x @ params[f"lora_a_{name}"].astype(dtype)
        out = out + (config.lora_scale * low_rank) @ params[f"lora_b_{name}"].astype(dtype)
    return out


def _attention_inputs(config: LLaDAConfig, x: jax.Array, params: dict[str, jax.Array], cos: jax.Array,
                      sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Queries, keys and values of x [B, S, D] at the positions of cos/sin [S, hd]: q [B, S, H, hd] and
    k, v [B, S, KV, hd] (q and k rotated)."""
    batch, seq_len, _ = x.shape
    c = config
    normed = rms_norm(x, params["attn_norm"], c.rms_norm_eps)
    q = _project(c, params, "q", normed).reshape(batch, seq_len, c.n_heads, c.head_dim)
    k = _project(c, params, "k", normed).reshape(batch, seq_len, c.n_kv_heads, c.head_dim)
    v = _project(c, params, "v", normed).reshape(batch, seq_len, c.n_kv_heads, c.head_dim)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


def _attend_and_mlp(config: LLaDAConfig, x: jax.Array, params: dict[str, jax.Array], q: jax.Array, k: jax.Array,
                    v: jax.Array, key_bias: jax.Array) -> jax.Array:
    """The rest of a block: x [B, S, D] with queries q [B, S, H, hd] attending to keys / values k, v
    [B, T, KV, hd] (key_bias [B, 1, 1, T]), then the residual and the MLP -> [B, S, D]."""
    batch, seq_len, _ = x.shape
    c = config
    group = c.n_heads // c.n_kv_heads
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c.head_dim)
    weights = jax.nn.softmax(scores + key_bias, axis=-1).astype(c.dtype)
    attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, seq_len, c.d_model)
    x = x + _project(c, params, "o", attended)
    normed = rms_norm(x, params["ff_norm"], c.rms_norm_eps)
    hidden = jax.nn.silu(_project(c, params, "gate", normed)) * _project(c, params, "up", normed)
    return x + _project(c, params, "down", hidden)


# Logical axis names of the activations (mapped to mesh axes by dipod_jax.models.sharding.DEFAULT_RULES).
HIDDEN_AXES = ("batch", "length", "activation_embed")  # hidden states [B, T, D]
KV_AXES = ("batch", "length", "kv_heads", "head_dim")  # one layer's keys or values [B, T, KV, hd]
LOGITS_AXES = ("batch", "length", "activation_vocab")  # logits [B, T, V]


class KVCache(NamedTuple):
    """Keys and values of every layer at every position of a sequence, as a full forward pass computed them:
    keys, values [L, B, T, KV, hd] in the compute dtype (keys already rotated)."""

    keys: jax.Array
    values: jax.Array


def _check_tokens(config: LLaDAConfig, tokens: jax.Array) -> None:
    chex.assert_rank(tokens, 2)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be an integer array, got dtype {tokens.dtype}")


def _key_bias(attention_mask: jax.Array | None, batch: int, seq_len: int) -> jax.Array:
    """[B, 1, 1, T] additive attention bias: 0 for attended keys, _MASKED_SCORE for padding."""
    if attention_mask is None:
        return jnp.zeros((batch, 1, 1, seq_len), jnp.float32)
    chex.assert_shape(attention_mask, (batch, seq_len))
    return jnp.where(attention_mask.astype(bool), 0.0, _MASKED_SCORE)[:, None, None, :]


def _output_logits(config: LLaDAConfig, final_norm: jax.Array, head: jax.Array, x: jax.Array) -> jax.Array:
    """Final hidden states x [B, S, D] -> logits [B, S, V] float32."""
    x = rms_norm(x, final_norm, config.rms_norm_eps)
    logits = jnp.einsum("btd,dv->btv", x, head.astype(config.dtype), preferred_element_type=jnp.float32)
    return shard_activation(logits, LOGITS_AXES)


def _full_pass(config: LLaDAConfig, embedding: jax.Array, block_params: dict[str, jax.Array], tokens: jax.Array,
               attention_mask: jax.Array | None, keep_cache: bool) -> tuple[jax.Array, KVCache | None]:
    """Every layer over every position: (final hidden states [B, T, D], KVCache or None)."""
    _check_tokens(config, tokens)
    batch, seq_len = tokens.shape
    if seq_len > config.max_seq_len:
        raise ValueError(f"tokens length {seq_len} exceeds LLaDAConfig.max_seq_len={config.max_seq_len}")
    key_bias = _key_bias(attention_mask, batch, seq_len)
    cos, sin = rotary_tables(seq_len, config.head_dim, config.rope_theta)
    x = shard_activation(jnp.take(embedding, tokens, axis=0).astype(config.dtype), HIDDEN_AXES)

    def layer(carry: jax.Array, layer_params: dict[str, jax.Array]):
        q, k, v = _attention_inputs(config, carry, layer_params, cos, sin)
        out = shard_activation(_attend_and_mlp(config, carry, layer_params, q, k, v, key_bias), HIDDEN_AXES)
        return out, ((shard_activation(k, KV_AXES), shard_activation(v, KV_AXES)) if keep_cache else None)

    if config.remat:
        layer = jax.checkpoint(layer)
    x, kv = jax.lax.scan(layer, x, block_params)
    return x, (KVCache(*kv) if keep_cache and kv is not None else None)


def transformer_forward(config: LLaDAConfig, embedding: jax.Array, block_params: dict[str, jax.Array],
                        final_norm: jax.Array, head: jax.Array, tokens: jax.Array,
                        attention_mask: jax.Array | None) -> jax.Array:
    """The whole forward pass on raw arrays. embedding [V, D], block_params {name: [L, ...]}, final_norm [D],
    head [D, V], tokens [B, T] int, attention_mask [B, T] bool or None -> logits [B, T, V] float32."""
    x, _ = _full_pass(config, embedding, block_params, tokens, attention_mask, keep_cache=False)
    logits = _output_logits(config, final_norm, head, x)
    chex.assert_shape(logits, tokens.shape + (config.vocab_size,))
    return logits


def transformer_forward_with_cache(config: LLaDAConfig, embedding: jax.Array, block_params: dict[str, jax.Array],
                                   final_norm: jax.Array, head: jax.Array, tokens: jax.Array,
                                   attention_mask: jax.Array | None, logits_start: int | jax.Array,
                                   logits_length: int) -> tuple[jax.Array, KVCache]:
    """A full forward pass that also returns every layer's keys and values, and the logits of only the
    positions [logits_start, logits_start + logits_length) (the head is the most expensive matmul of a
    large-vocabulary model, and a sampler needs it only where it decodes).

    tokens [B, T] int, attention_mask [B, T] bool or None; logits_start a Python int or a traced int scalar,
    logits_length a Python int -> (logits [B, logits_length, V] float32, KVCache [L, B, T, KV, hd]).
    """
    x, cache = _full_pass(config, embedding, block_params, tokens, attention_mask, keep_cache=True)
    x = jax.lax.dynamic_slice_in_dim(x, logits_start, logits_length, axis=1)
    return _output_logits(config, final_norm, head, x), cast(KVCache, cache)


def transformer_forward_cached(config: LLaDAConfig, embedding: jax.Array, block_params: dict[str, jax.Array],
                               final_norm: jax.Array, head: jax.Array, window_tokens: jax.Array,
                               window_start: int | jax.Array, cache: KVCache, attention_mask: jax.Array | None,
                               logits_length: int) -> jax.Array:
    """The forward pass of a window of positions, reusing cached keys and values for every other position.

    window_tokens [B, S] int are the tokens at positions [window_start, window_start + S) of a sequence of
    T = cache.keys.shape[2] positions. In every layer the window's fresh keys and values replace the cache's
    at those positions, and the window's queries attend to all T positions; positions outside the window
    contribute the cached keys / values (stale if their inputs changed since the cache was computed: the
    Fast-dLLM approximation). With a cache computed from the same tokens, the result equals the full
    forward pass's logits at the window's positions (up to float rounding).

    attention_mask [B, T] bool or None (padding of the whole sequence). Returns the logits of the window's
    first logits_length positions, [B, logits_length, V] float32.
    """
    _check_tokens(config, window_tokens)
    batch, window_length = window_tokens.shape
    seq_len = cache.keys.shape[2]
    chex.assert_shape([cache.keys, cache.values],
                      (config.n_layers, batch, seq_len, config.n_kv_heads, config.head_dim))
    if window_length > seq_len or logits_length > window_length:
        raise ValueError(f"window of {window_length} positions (logits of {logits_length}) does not fit the "
                         f"cached sequence of {seq_len}")
    key_bias = _key_bias(attention_mask, batch, seq_len)
    cos, sin = rotary_tables(seq_len, config.head_dim, config.rope_theta)
    cos = jax.lax.dynamic_slice_in_dim(cos, window_start, window_length, axis=0)
    sin = jax.lax.dynamic_slice_in_dim(sin, window_start, window_length, axis=0)
    x = shard_activation(jnp.take(embedding, window_tokens, axis=0).astype(config.dtype), HIDDEN_AXES)

    def layer(carry: jax.Array, inputs) -> tuple[jax.Array, None]:
        layer_params, cached_keys, cached_values = inputs
        q, k, v = _attention_inputs(config, carry, layer_params, cos, sin)
        keys = jax.lax.dynamic_update_slice_in_dim(cached_keys, k.astype(cached_keys.dtype), window_start, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(cached_values, v.astype(cached_values.dtype), window_start,
                                                     axis=1)
        keys, values = shard_activation(keys, KV_AXES), shard_activation(values, KV_AXES)
        out = shard_activation(_attend_and_mlp(config, carry, layer_params, q, keys, values, key_bias), HIDDEN_AXES)
        return out, None

    x, _ = jax.lax.scan(layer, x, (block_params, cache.keys, cache.values))
    return _output_logits(config, final_norm, head, x[:, :logits_length])


def lora_optax_mask(params: Any) -> Any:
    """A pytree of bools with the structure of `params` (an nnx.State or nnx.State-derived pytree of
    variables, e.g. `nnx.state(model, nnx.Param)`): True exactly at LoRA adapters.

    For LoRA-only training use it as labels of `optax.multi_transform({True: tx, False: optax.set_to_zero()},
    mask)` (plain `optax.masked` would pass the frozen weights' raw gradients through), or skip optax masks
    and use `nnx.Optimizer(model, tx, wrt=LORA_FILTER)` with `nnx.DiffState(0, LORA_FILTER)` gradients."""
    return jax.tree.map(lambda leaf: isinstance(leaf, nnx.LoRAParam), params,
                        is_leaf=lambda leaf: isinstance(leaf, nnx.Variable))
