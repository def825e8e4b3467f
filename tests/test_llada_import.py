"""Tests of the Hugging Face LLaDA checkpoint import (dipod_jax.models.llada_import).

A tiny random checkpoint is written in LLaDA-8B-Instruct's exact layout (tensor names under
model.transformer., PyTorch [out, in] Linear weights, config.json keys of modeling_llada.py) and the imported
model's logits are compared with an independent float64 NumPy forward pass of the same tensors, written
here from modeling_llada.py's LLaDALlamaBlock.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from dipod_jax.models.llada import count_params
from dipod_jax.models.llada_import import config_from_hf, load_llada

HF_CONFIG = {
    "activation_type": "silu", "alibi": False, "block_type": "llama", "d_model": 32, "n_layers": 2, "n_heads": 4,
    "n_kv_heads": 2, "mlp_hidden_size": 48, "vocab_size": 20, "embedding_size": 20, "mask_token_id": 19,
    "max_sequence_length": 64, "rope": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    "layer_norm_type": "rms", "weight_tying": False, "include_bias": False, "include_qkv_bias": False,
    "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False, "bias_for_layer_norm": False,
    "multi_query_attention": None,
}


def _random_hf_tensors(seed: int) -> dict[str, np.ndarray]:
    """Random float32 tensors with LLaDA's Hugging Face names and [out, in] shapes for HF_CONFIG."""
    rng = np.random.default_rng(seed)
    c = HF_CONFIG
    d, f, v = c["d_model"], c["mlp_hidden_size"], c["vocab_size"]
    kv = c["n_kv_heads"] * d // c["n_heads"]
    shapes = {"wte.weight": (v, d), "ln_f.weight": (d,), "ff_out.weight": (v, d)}
    for i in range(c["n_layers"]):
        shapes |= {f"blocks.{i}.attn_norm.weight": (d,), f"blocks.{i}.ff_norm.weight": (d,),
                   f"blocks.{i}.q_proj.weight": (d, d), f"blocks.{i}.k_proj.weight": (kv, d),
                   f"blocks.{i}.v_proj.weight": (kv, d), f"blocks.{i}.attn_out.weight": (d, d),
                   f"blocks.{i}.ff_proj.weight": (f, d), f"blocks.{i}.up_proj.weight": (f, d),
                   f"blocks.{i}.ff_out.weight": (d, f)}
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight") or name == "ln_f.weight":
            tensors["model.transformer." + name] = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors["model.transformer." + name] = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)
    return tensors


def _write_checkpoint(directory, tensors, config=HF_CONFIG, shards=2):
    """Write config.json and `shards` safetensors files (+ index json when shards > 1)."""
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"))
        return
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name] for name in names[shard::shards]}
        save_file(part, os.path.join(directory, file_name))
        weight_map |= {name: file_name for name in part}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def _numpy_llada_forward(tensors, tokens, attention_mask=None):
    """Reference forward pass in float64 NumPy following modeling_llada.py (LLaDALlamaBlock, RMSNorm,
    half-split rotary embedding, key padding bias, SiLU(ff_proj) * up_proj, untied ff_out head)."""
    c = HF_CONFIG
    t = {k[len("model.transformer."):]: v.astype(np.float64) for k, v in tensors.items()}
    n_heads, n_kv = c["n_heads"], c["n_kv_heads"]
    hd = c["d_model"] // n_heads
    batch, length = tokens.shape

    def rms(x, w):
        return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + c["rms_norm_eps"]) * w

    inv_freq = 1.0 / (c["rope_theta"] ** (np.arange(0, hd, 2) / hd))
    angles = np.arange(length)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, hd]

    def rope(x):  # [B, H, T, hd]
        half = hd // 2
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * np.cos(angles) + rotated * np.sin(angles)

    bias = np.zeros((batch, 1, 1, length))
    if attention_mask is not None:
        bias = np.where(attention_mask, 0.0, -1e30)[:, None, None, :]
    x = t["wte.weight"][tokens]
    for i in range(c["n_layers"]):
        def p(name, i=i):
            return t[f"blocks.{i}.{name}.weight"]

        h = rms(x, p("attn_norm"))
        q = (h @ p("q_proj").T).reshape(batch, length, n_heads, hd).transpose(0, 2, 1, 3)
        k = (h @ p("k_proj").T).reshape(batch, length, n_kv, hd).transpose(0, 2, 1, 3)
        v = (h @ p("v_proj").T).reshape(batch, length, n_kv, hd).transpose(0, 2, 1, 3)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, n_heads // n_kv, axis=1), np.repeat(v, n_heads // n_kv, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, -1)
        x = x + attended @ p("attn_out").T
        h = rms(x, p("ff_norm"))
        gate = h @ p("ff_proj").T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ p("up_proj").T)) @ p("ff_out").T
    return rms(x, t["ln_f.weight"]) @ t["ff_out.weight"].T


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-shard checkpoint directory and its tensors."""
    directory = tmp_path_factory.mktemp("llada_ckpt")
    tensors = _random_hf_tensors(0)
    _write_checkpoint(str(directory), tensors)
    return str(directory), tensors


def test_config_from_hf_reads_llada_options():
    """config.json keys map to LLaDAConfig fields (GQA kv heads, mlp_hidden_size, mask id, theta)."""
    config = config_from_hf(HF_CONFIG)
    assert (config.vocab_size, config.d_model, config.n_layers, config.n_heads, config.n_kv_heads) == (20, 32, 2, 4, 2)
    assert (config.mlp_hidden, config.mask_token_id, config.rope_theta, config.max_seq_len) == (48, 19, 500000.0, 64)
    with pytest.raises(ValueError, match="block_type"):
        config_from_hf(HF_CONFIG | {"block_type": "sequential"})
    with pytest.raises(ValueError, match="weight_tying"):
        config_from_hf(HF_CONFIG | {"weight_tying": True})


def test_sharded_import_matches_numpy_forward(checkpoint):
    """Logits of the imported model (two shards + index) equal the float64 NumPy forward of the same tensors
    to float32 precision, with and without a key padding mask (compared at real positions)."""
    directory, tensors = checkpoint
    model = load_llada(directory)
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model))) == count_params(model.config)["base"]
    tokens = np.random.default_rng(1).integers(0, 19, size=(2, 9))
    np.testing.assert_allclose(model(jnp.asarray(tokens)), _numpy_llada_forward(tensors, tokens), rtol=1e-4, atol=1e-4)
    attention_mask = np.ones((2, 9), bool)
    attention_mask[1, 6:] = False
    reference = _numpy_llada_forward(tensors, tokens, attention_mask)
    imported = np.asarray(model(jnp.asarray(tokens), jnp.asarray(attention_mask)))
    np.testing.assert_allclose(imported[attention_mask], reference[attention_mask], rtol=1e-4, atol=1e-4)


def test_import_with_lora_and_bfloat16_keeps_logits(checkpoint, tmp_path):
    """A single-file bfloat16 checkpoint loads; with fresh LoRA adapters (B = 0) the logits equal the
    adapter-free import, and match the float64 NumPy forward of the same bfloat16 values."""
    _, tensors = checkpoint
    bf16_tensors = {name: value.astype(jnp.bfloat16) for name, value in tensors.items()}
    _write_checkpoint(str(tmp_path), bf16_tensors, shards=1)
    tokens = np.random.default_rng(2).integers(0, 19, size=(2, 9))
    plain = load_llada(str(tmp_path))
    with_lora = load_llada(str(tmp_path), lora_rank=2, lora_alpha=4.0)
    assert plain.embedding[...].dtype == jnp.float32
    np.testing.assert_allclose(with_lora(jnp.asarray(tokens)), plain(jnp.asarray(tokens)), atol=1e-6)
    reference = _numpy_llada_forward({k: v.astype(np.float64) for k, v in bf16_tensors.items()}, tokens)
    np.testing.assert_allclose(plain(jnp.asarray(tokens)), reference, rtol=1e-4, atol=1e-4)


def test_missing_or_misshapen_tensor_is_named(checkpoint, tmp_path):
    """A checkpoint without one tensor, or with a transposed one, raises ValueError naming that tensor."""
    _, tensors = checkpoint
    missing = dict(tensors)
    del missing["model.transformer.blocks.1.up_proj.weight"]
    (tmp_path / "missing").mkdir()
    _write_checkpoint(str(tmp_path / "missing"), missing, shards=1)
    with pytest.raises(ValueError, match=r"blocks\.1\.up_proj\.weight"):
        load_llada(str(tmp_path / "missing"))
    transposed = dict(tensors)
    name = "model.transformer.blocks.0.k_proj.weight"
    transposed[name] = tensors[name].T.copy()
    (tmp_path / "transposed").mkdir()
    _write_checkpoint(str(tmp_path / "transposed"), transposed, shards=1)
    with pytest.raises(ValueError, match=r"blocks\.0\.k_proj\.weight.*shape"):
        load_llada(str(tmp_path / "transposed"))
    with pytest.raises(ValueError, match="config.json"):
        load_llada(str(tmp_path))
