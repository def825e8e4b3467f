"""Throughput of the LLaDA sampler variants and of a masked-diffusion training step, printed as one JSON line.

Details: docs/modules.md, section benchmarks.lm_throughput.
"""
from __future__ import annotations

import functools
import json
import statistics
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from benchmarks.timing import matmul_probe, time_call
from dipod_jax.lm.sampler import SAMPLERS, generate, sampler_options
from dipod_jax.losses.masked import elbo_masked, mask_uniform_count
from dipod_jax.models.llada import LLaDA, LLaDAConfig, count_params, masked_diffusion_logits_fn
from dipod_jax.run.program import UsageError, check_flag_choices, run_program

FLAGS = flags.FLAGS
POSITIVE_INT_FLAGS = ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "batch", "prompt_length",
                      "gen_length", "block_length", "steps", "num_draws")


def define_flags() -> None:
    """Register the flags; called only when run as a program, so importing this module defines none."""
    flags.DEFINE_integer("vocab_size", 512, "Vocabulary size (mask id = vocab_size - 1).", lower_bound=1)
    flags.DEFINE_integer("d_model", 256, "Model width.", lower_bound=1)
    flags.DEFINE_integer("n_layers", 4, "Number of blocks.", lower_bound=1)
    flags.DEFINE_integer("n_heads", 8, "Attention heads.", lower_bound=1)
    flags.DEFINE_integer("mlp_hidden", 704, "SwiGLU hidden width.", lower_bound=1)
    flags.DEFINE_integer("batch", 8, "Sequences per call.", lower_bound=1)
    flags.DEFINE_integer("prompt_length", 32, "Prompt tokens.", lower_bound=1)
    flags.DEFINE_integer("gen_length", 64, "Generated tokens.", lower_bound=1)
    flags.DEFINE_integer("block_length", 32, "Sampler block length.", lower_bound=1)
    flags.DEFINE_integer("steps", 64, "Sampler denoising steps.", lower_bound=1)
    flags.DEFINE_float("temperature", 1.0, "Sampling temperature (0 = greedy).")
    flags.DEFINE_list("samplers", ["exact", "prefix", "dual", "dual_parallel"],
                      f"Sampler variants to time, from {sorted(SAMPLERS)}.")
    flags.DEFINE_float("threshold", 0.9, "Confidence threshold of the *_parallel variants, in (0, 1].")
    flags.DEFINE_integer("num_draws", 2, "Forward masks per sequence in the ELBO.", lower_bound=1)
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
    flags.DEFINE_integer("repeats", 5, "Timed rounds (median reported), >= 3.", lower_bound=3)
    flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s for MFU (0 = the float32 matmul rate measured here).")
    flags.DEFINE_integer("matmul_size", 2048, "Side of the square matrices of the matmul-rate probe.", lower_bound=1)


def validate_flags(values: dict[str, Any]) -> None:
    """UsageError naming the flag for a nonsense value, before anything is built or compiled. (Positive
    integers and --repeats >= 3 are bounds of the flags themselves; they are checked here too for callers that
    pass values directly.)"""
    for name in POSITIVE_INT_FLAGS:
        if values[name] <= 0:
            raise UsageError(f"--{name}={values[name]} must be a positive integer")
    if values["vocab_size"] < 2:
        raise UsageError(f"--vocab_size={values['vocab_size']} must be >= 2 (one token plus the mask)")
    if values["repeats"] < 3:
        raise UsageError(f"--repeats={values['repeats']} must be >= 3")
    if values["gen_length"] % values["block_length"]:
        raise UsageError(f"--gen_length={values['gen_length']} must be divisible by "
                         f"--block_length={values['block_length']}")
    num_blocks = values["gen_length"] // values["block_length"]
    if values["steps"] % num_blocks:
        raise UsageError(f"--steps={values['steps']} must be a multiple of the number of blocks {num_blocks}")
    if values["d_model"] % values["n_heads"] or (values["d_model"] // values["n_heads"]) % 2:
        raise UsageError(f"--d_model={values['d_model']} must be divisible by --n_heads={values['n_heads']} "
                         "into an even head dimension")
    check_flag_choices("samplers", values["samplers"], SAMPLERS)
    if not 0 < values["threshold"] <= 1:
        raise UsageError(f"--threshold={values['threshold']} must be in (0, 1]")
    if not 0 <= values["temperature"] < float("inf"):
        raise UsageError(f"--temperature={values['temperature']} must be a finite number >= 0")
    if not 0 <= values["peak_tflops"] < float("inf"):
        raise UsageError(f"--peak_tflops={values['peak_tflops']} must be a finite number >= 0")


def pass_flops(config: LLaDAConfig, queries: int, keys: int, logits_positions: int) -> int:
    """Matmul FLOPs of one forward pass of one row (module docstring): queries Q, keys K, logits at H positions."""
    projections = sum(fan_in * fan_out for fan_in, fan_out in config.projection_shapes().values())
    per_query = config.n_layers * (2 * projections + 4 * keys * config.d_model)
    return queries * per_query + 2 * logits_positions * config.d_model * config.vocab_size


def sampler_flops(config: LLaDAConfig, batch: int, total_length: int, block_length: int, full_pass_logits: int,
                  stats: dict[str, int]) -> int:
    """FLOPs of one sampler call from its pass counts (`generate(..., return_stats=True)`). A full pass
    computes logits at full_pass_logits positions (all T without a cache, the block with one); a cached pass
    at the block's."""
    full = stats["full_passes"] * pass_flops(config, total_length, total_length, full_pass_logits)
    cached = (pass_flops(config, stats["cached_positions"], total_length, 0)
              + stats["cached_passes"] * pass_flops(config, 0, total_length, block_length))
    return batch * (full + cached)


def train_flops(config: LLaDAConfig, batch: int, total_length: int, num_draws: int) -> int:
    """FLOPs of one ELBO training step: forward + backward (3 forward passes) per draw and row."""
    return 3 * num_draws * batch * pass_flops(config, total_length, total_length, total_length)


def main(argv):
    del argv
    values = {name: FLAGS[name].value for name in FLAGS if name in {
        *POSITIVE_INT_FLAGS, "temperature", "samplers", "threshold", "dtype", "repeats", "peak_tflops",
        "matmul_size"}}
    validate_flags(values)
    config = LLaDAConfig.tiny(values["vocab_size"], d_model=values["d_model"], n_layers=values["n_layers"],
                              n_heads=values["n_heads"], mlp_hidden=values["mlp_hidden"],
                              max_seq_len=values["prompt_length"] + values["gen_length"],
                              dtype=jnp.dtype(values["dtype"]))
    model = LLaDA(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    mask_id = config.mask_token_id
    batch, total_length = values["batch"], values["prompt_length"] + values["gen_length"]
    key_prompt, key_sample, key_tokens, key_masks = jax.random.split(jax.random.key(0), 4)
    prompt = jax.random.randint(key_prompt, (batch, values["prompt_length"]), 0, mask_id)
    settings = dict(gen_length=values["gen_length"], block_length=values["block_length"], steps=values["steps"],
                    temperature=values["temperature"], mask_id=mask_id, return_stats=True)

    def make_sampler(name):
        run = functools.partial(generate, **settings, **sampler_options(name, values["threshold"]))
        return jax.jit(lambda params, prompt, key: run(nnx.merge(graphdef, params), prompt, key))

    tokens = jax.random.randint(key_tokens, (batch, total_length), 0, mask_id)
    completion_mask = jnp.broadcast_to(jnp.arange(total_length)[None, :] >= values["prompt_length"],
                                       (batch, total_length))
    masks, _ = mask_uniform_count(key_masks, completion_mask, values["num_draws"])

    @jax.jit
    def train_step(params, tokens, masks):
        def negative_elbo(params):
            logits_fn = masked_diffusion_logits_fn(nnx.merge(graphdef, params))
            return -jnp.mean(elbo_masked(logits_fn, tokens, completion_mask, masks, mask_id))
        return jax.value_and_grad(negative_elbo)(params)

    calls = {f"sampler/{name}": (make_sampler(name), (params, prompt, key_sample)) for name in values["samplers"]}
    calls["train_step"] = (train_step, (params, tokens, masks))
    if not values["peak_tflops"]:
        # The matmul-rate probe is timed in the same rounds, so a changing machine load affects it alike.
        calls["matmul_probe"] = matmul_probe(values["matmul_size"])
    compile_seconds, timings, outputs = {}, {name: [] for name in calls}, {}
    for name, (fn, args) in calls.items():
        compile_seconds[name], outputs[name] = time_call(fn, *args)
    for _ in range(values["repeats"]):
        for name, (fn, args) in calls.items():
            timings[name].append(time_call(fn, *args)[0])

    peak_tflops = values["peak_tflops"] or (
        2 * values["matmul_size"] ** 3 / statistics.median(timings["matmul_probe"]) / 1e12)
    samplers = {}
    for name in values["samplers"]:
        seconds = statistics.median(timings[f"sampler/{name}"])
        stats = {key: int(value) for key, value in outputs[f"sampler/{name}"][1].items()}
        full_pass_logits = total_length if SAMPLERS[name][0] == "none" else values["block_length"]
        flops = sampler_flops(config, batch, total_length, values["block_length"], full_pass_logits, stats)
        samplers[name] = {"seconds_median": seconds, "tokens_per_second": batch * values["gen_length"] / seconds,
                          "timings": timings[f"sampler/{name}"], "compile_s": compile_seconds[f"sampler/{name}"],
                          **stats, "tflop_per_call": flops / 1e12, "tflops_per_s": flops / seconds / 1e12,
                          "mfu": flops / seconds / 1e12 / peak_tflops}
    if "exact" in samplers:
        for result in samplers.values():
            result["speedup_vs_exact"] = result["tokens_per_second"] / samplers["exact"]["tokens_per_second"]
    train_seconds = statistics.median(timings["train_step"])
    train_tflop = train_flops(config, batch, total_length, values["num_draws"]) / 1e12
    result = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "params": count_params(config)["base"],
        "config": values,
        "peak_tflops": peak_tflops,
        "peak_source": "--peak_tflops" if values["peak_tflops"] else "measured float32 matmul",
        "samplers": samplers,
        "train_step": {"seconds_median": train_seconds, "tokens_per_second": batch * total_length / train_seconds,
                       "timings": timings["train_step"], "compile_s": compile_seconds["train_step"],
                       "tflop_per_call": train_tflop, "tflops_per_s": train_tflop / train_seconds,
                       "mfu": train_tflop / train_seconds / peak_tflops},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    run_program(main)
