"""Import LLaDA checkpoints saved in the Hugging Face layout of GSAI-ML/LLaDA-8B-Instruct.

Details: docs/modules.md, section dipod_jax.models.llada_import.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from dipod_jax.models.llada import BASE_FILTER, LORA_FILTER, LLaDA, LLaDAConfig

HF_PREFIX = "model.transformer."

# this model's block variable -> the Hugging Face block module name.
_BLOCK_NAMES = {
    "attn_norm": "attn_norm", "ff_norm": "ff_norm",
    "w_q": "q_proj", "w_k": "k_proj", "w_v": "v_proj", "w_o": "attn_out",
    "w_gate": "ff_proj", "w_up": "up_proj", "w_down": "ff_out",
}

# config.json options this implementation supports, with the only value accepted.
_REQUIRED_OPTIONS = {
    "block_type": "llama", "rope": True, "alibi": False, "layer_norm_type": "rms", "activation_type": "silu",
    "weight_tying": False, "include_bias": False, "include_qkv_bias": False, "attention_layer_norm": False,
    "input_emb_norm": False, "scale_logits": False, "bias_for_layer_norm": False,
}


def config_from_hf(hf_config: dict[str, Any], **overrides) -> LLaDAConfig:
    """LLaDA config.json contents -> LLaDAConfig (overrides: e.g. dtype, lora_rank, lora_alpha, remat).

    ValueError naming the option when the checkpoint uses an architecture variant this model lacks.
    """
    for option, required in _REQUIRED_OPTIONS.items():
        value = hf_config.get(option, required)
        if value != required and not (required is False and value is None):
            raise ValueError(f"config.json option {option}={value!r} is not supported (need {required!r})")
    for option in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "vocab_size", "mask_token_id"):
        if option not in hf_config:
            raise ValueError(f"config.json lacks the option {option!r}")
    n_kv_heads = hf_config.get("n_kv_heads") or hf_config["n_heads"]
    vocab_size = hf_config.get("embedding_size") or hf_config["vocab_size"]
    return LLaDAConfig(vocab_size=vocab_size, d_model=hf_config["d_model"], n_layers=hf_config["n_layers"],
                       n_heads=hf_config["n_heads"], n_kv_heads=n_kv_heads,
                       mlp_hidden=hf_config["mlp_hidden_size"],
                       max_seq_len=hf_config.get("max_sequence_length", 4096),
                       rope_theta=float(hf_config.get("rope_theta", 10000.0)),
                       mask_token_id=hf_config["mask_token_id"],
                       rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-5)), **overrides)


def read_safetensors_dir(path: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory (single `model.safetensors` or a sharded index) as NumPy arrays."""
    index_path = os.path.join(path, "model.safetensors.index.json")
    single_path = os.path.join(path, "model.safetensors")
    if os.path.exists(index_path):
        with open(index_path) as index_file:
            weight_map = json.load(index_file).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index_path} has no 'weight_map' object")
        shard_names = sorted(set(weight_map.values()))
    elif os.path.exists(single_path):
        weight_map, shard_names = None, ["model.safetensors"]
    else:
        raise ValueError(f"checkpoint directory {path!r} has neither model.safetensors nor "
                         "model.safetensors.index.json")
    tensors: dict[str, np.ndarray] = {}
    for shard_name in shard_names:
        shard_path = os.path.join(path, shard_name)
        if not os.path.exists(shard_path):
            raise ValueError(f"shard {shard_path!r} listed in the index does not exist")
        with safe_open(shard_path, framework="numpy") as shard:
            for name in shard.keys():
                tensors[name] = shard.get_tensor(name)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"tensors listed in {index_path} but absent from the shards: {missing[:5]}")
    return tensors


def _take(tensors: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    key = HF_PREFIX + name
    if key not in tensors:
        raise ValueError(f"checkpoint lacks tensor {key!r}")
    array = tensors[key]
    if tuple(array.shape) != shape:
        raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(array.shape)}, expected {shape}")
    return array


def convert_hf_tensors(tensors: dict[str, np.ndarray], config: LLaDAConfig) -> dict[str, np.ndarray]:
    """Hugging Face tensors {name: array} -> this model's base variables {name: array} (layers stacked).

    Output shapes are those of `LLaDA(config)`; dtypes are kept (cast later). ValueError on a missing tensor
    or a shape mismatch, naming the tensor.
    """
    c = config
    shapes = c.projection_shapes()
    converted = {
        "embedding": _take(tensors, "wte.weight", (c.vocab_size, c.d_model)),
        "final_norm": _take(tensors, "ln_f.weight", (c.d_model,)),
        "head": _take(tensors, "ff_out.weight", (c.vocab_size, c.d_model)).T,
    }
    for ours, theirs in _BLOCK_NAMES.items():
        per_layer = []
        for layer in range(c.n_layers):
            name = f"blocks.{layer}.{theirs}.weight"
            if ours in ("attn_norm", "ff_norm"):
                per_layer.append(_take(tensors, name, (c.d_model,)))
            else:
                fan_in, fan_out = shapes[ours[2:]]
                per_layer.append(_take(tensors, name, (fan_out, fan_in)).T)
        converted[ours] = np.stack(per_layer)
    return converted


def load_llada(path: str, *, lora_seed: int = 0, **config_overrides) -> LLaDA:
    """Build a LLaDA model from a Hugging Face LLaDA checkpoint directory (config.json + safetensors).

    config_overrides go to LLaDAConfig (dtype, param_dtype, lora_rank, lora_alpha, remat, max_seq_len).
    Base weights are cast to param_dtype; LoRA adapters (when lora_rank > 0) are freshly initialised from
    lora_seed with B = 0, so the loaded model reproduces the checkpoint's logits. The random base
    initialisation is never materialised.
    """
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"checkpoint directory {path!r} has no config.json")
    with open(config_path) as config_file:
        config = config_from_hf(json.load(config_file), **config_overrides)
    converted = convert_hf_tensors(read_safetensors_dir(path), config)
    abstract_model = nnx.eval_shape(lambda: LLaDA(config, rngs=nnx.Rngs(lora_seed)))
    graphdef, abstract_base, abstract_lora = nnx.split(abstract_model, BASE_FILTER, ...)

    def fill(path_keys, variable):
        name = path_keys[-1].key if hasattr(path_keys[-1], "key") else str(path_keys[-1])
        return variable.replace(jnp.asarray(converted[name], dtype=config.param_dtype))

    base_state = jax.tree_util.tree_map_with_path(fill, abstract_base, is_leaf=lambda v: isinstance(v, nnx.Variable))
    if config.lora_rank:
        # Only the adapters are returned, so XLA drops the base initialisation as dead code.
        lora_state = jax.jit(lambda: nnx.state(LLaDA(config, rngs=nnx.Rngs(lora_seed)), LORA_FILTER))()
    else:
        lora_state = abstract_lora
    return nnx.merge(graphdef, base_state, lora_state)
