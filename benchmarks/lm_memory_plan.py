"""Per-device memory of an FPO/GRPO-style LoRA training step of LLaDA-8B, without allocating anything.

Details: docs/modules.md, section benchmarks.lm_memory_plan.
"""
import os

# Fake CPU devices must be requested before JAX starts; an explicit XLA_FLAGS from the caller wins.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=32")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402
from flax import nnx  # noqa: E402

from dipod_jax.losses.lm import fpo_dllm_loss  # noqa: E402
from dipod_jax.losses.masked import elbo_masked  # noqa: E402
from dipod_jax.models import sharding  # noqa: E402
from dipod_jax.models.llada import (  # noqa: E402
    BASE_FILTER,
    LORA_FILTER,
    LLaDA,
    LLaDAConfig,
    count_params,
    masked_diffusion_logits_fn,
)
from dipod_jax.run.program import UsageError, run_program  # noqa: E402

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_list("devices", ["8", "32"], "Mesh sizes (number of fake CPU devices, all on the fsdp axis).")
    flags.DEFINE_integer("per_device_batch", 1, "Sequences per device.", lower_bound=1)
    flags.DEFINE_integer("seq_len", 512, "Prompt + completion length (paper: completions of 256 tokens).",
                         lower_bound=1)
    flags.DEFINE_integer("num_draws", 4, "Forward masks M per sequence (d1-FPO: 4).", lower_bound=1)
    flags.DEFINE_integer("lora_rank", 128, "LoRA rank r.", lower_bound=1)
    flags.DEFINE_float("lora_alpha", 64.0, "LoRA alpha.")
    flags.DEFINE_integer("n_layers", 32, "Number of layers (LLaDA-8B: 32).", lower_bound=1)
    flags.DEFINE_bool("remat", True, "Recompute each block in the backward pass.")

GIB = 2.0 ** 30


def _abstract(state, shardings, dtype=None):
    """Abstract arrays (ShapeDtypeStruct with sharding) for an abstract nnx.State and its shardings."""
    return jax.tree.map(lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, dtype or leaf.dtype, sharding=s),
                        state, shardings)


def plan_for_mesh(config: LLaDAConfig, num_devices: int, per_device_batch: int = 1, seq_len: int = 512,
                  num_draws: int = 4) -> dict:
    """Compile the training step for `num_devices` fake devices and return its memory analysis (bytes).

    The global batch is per_device_batch * num_devices sequences of `seq_len` tokens, each scored under
    `num_draws` forward masks.
    """
    if num_devices > len(jax.devices()):
        raise UsageError(f"--devices={num_devices} exceeds the {len(jax.devices())} devices XLA_FLAGS provides")
    mesh = sharding.make_mesh(data=1, fsdp=num_devices, tensor=1, devices=jax.devices()[:num_devices])
    abstract_model = nnx.eval_shape(lambda: LLaDA(config, rngs=nnx.Rngs(0)))
    graphdef, base_state, lora_state = nnx.split(abstract_model, BASE_FILTER, LORA_FILTER)
    base = _abstract(base_state, sharding.state_shardings(base_state, mesh), jnp.bfloat16)
    lora_shardings = sharding.state_shardings(lora_state, mesh)
    lora = _abstract(lora_state, lora_shardings, jnp.float32)
    optimizer = optax.chain(optax.clip_by_global_norm(0.2),
                            optax.adamw(3e-6, b1=0.9, b2=0.99, weight_decay=0.1))
    # Adam moments are sharded like the adapters they follow; scalars (step counts) are replicated.
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_state_shapes = jax.eval_shape(optimizer.init, lora)
    opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, opt_state_shapes, lora_shardings,
                                          transform_non_params=lambda _: replicated)
    opt_state = _abstract(opt_state_shapes, opt_shardings)

    batch = per_device_batch * num_devices
    rows = sharding.batch_sharding(mesh)
    draws = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, ("data", "fsdp"), None))
    vector = sharding.batch_sharding(mesh, ndim=1)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=rows)
    completion_mask = jax.ShapeDtypeStruct((batch, seq_len), jnp.bool_, sharding=rows)
    masks = jax.ShapeDtypeStruct((num_draws, batch, seq_len), jnp.bool_, sharding=draws)
    elbo_old = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=vector)
    advantages = jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=vector)

    def train_step(lora_params, opt_state, base_params, tokens, completion_mask, masks, elbo_old, advantages):
        def loss_fn(adapters):
            model = nnx.merge(graphdef, base_params, adapters)
            elbo = elbo_masked(masked_diffusion_logits_fn(model), tokens, completion_mask, masks,
                               config.mask_token_id)
            loss, _ = fpo_dllm_loss(elbo, elbo_old, advantages, clip_eps=0.5, dipod_beta=0.05)
            return loss
        loss, grads = jax.value_and_grad(loss_fn)(lora_params)
        updates, opt_state = optimizer.update(grads, opt_state, lora_params)
        return optax.apply_updates(lora_params, updates), opt_state, loss

    start = time.perf_counter()
    with jax.set_mesh(mesh):  # the model pins its activations to be batch-sharded on this mesh
        compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(
            lora, opt_state, base, tokens, completion_mask, masks, elbo_old, advantages).compile()
    compile_seconds = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    counts = count_params(config)
    peak = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes - analysis.alias_size_in_bytes
            + analysis.temp_size_in_bytes)
    return {
        "devices": num_devices,
        "global_batch": batch,
        "compile_seconds": round(compile_seconds, 1),
        "argument_bytes": analysis.argument_size_in_bytes,
        "output_bytes": analysis.output_size_in_bytes,
        "alias_bytes": analysis.alias_size_in_bytes,
        "temp_bytes": analysis.temp_size_in_bytes,
        "peak_bytes_estimate": peak,
        "peak_gib_estimate": round(peak / GIB, 3),
        "analytic_base_weight_bytes_per_device": 2 * counts["base"] // num_devices,
        "analytic_lora_and_adam_bytes_per_device": 3 * 4 * counts["lora"] // num_devices,
    }


def main(argv):
    del argv
    if not all(n.isdigit() and int(n) >= 1 for n in FLAGS.devices):
        raise UsageError(f"--devices={','.join(FLAGS.devices)} must be positive integers")
    if not FLAGS.lora_alpha > 0:
        raise UsageError(f"--lora_alpha={FLAGS.lora_alpha} must be > 0")
    config = LLaDAConfig.llada_8b(n_layers=FLAGS.n_layers, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                  lora_rank=FLAGS.lora_rank, lora_alpha=FLAGS.lora_alpha, remat=FLAGS.remat)
    counts = count_params(config)
    settings = {name: getattr(FLAGS, name) for name in
                ("per_device_batch", "seq_len", "num_draws", "lora_rank", "lora_alpha", "n_layers", "remat")}
    result = {
        "model": "LLaDA-8B" if FLAGS.n_layers == 32 else f"LLaDA-8B with {FLAGS.n_layers} layers",
        "config": {k: jnp.dtype(v).name if k.endswith("dtype") else v for k, v in dataclasses.asdict(config).items()},
        "base_params": counts["base"],
        "lora_params": counts["lora"],
        "settings": settings | {"base_weight_dtype": "bfloat16", "adapter_and_adam_dtype": "float32",
                                "mesh": "data=1, fsdp=devices, tensor=1"},
        "backend": jax.default_backend(),
        "meshes": [plan_for_mesh(config, int(n), FLAGS.per_device_batch, FLAGS.seq_len, FLAGS.num_draws)
                   for n in FLAGS.devices],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    define_flags()
    run_program(main)
