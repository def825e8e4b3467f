"""Throughput of the LLaDA sampler and of a masked-diffusion training step, printed as JSON.

Sampler: `dipod_jax.lm.sampler.generate` (low-confidence remasking) from a prompt of --prompt_length tokens;
tokens/s counts generated tokens (batch * gen_length) per second. Training step: value and gradient (all
parameters) of -mean ELBO, the d1-FPO estimator over --num_draws forward masks (`mask_uniform_count`,
`elbo_masked`); tokens/s counts sequence tokens (batch * (prompt_length + gen_length)) per step, each of
which goes through num_draws forward and backward passes. Both functions are jitted; the first call
(compilation) is excluded and the median of --repeats timed calls is reported.

    python -m benchmarks.lm_throughput            # the fixed small CPU configuration
"""
import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags
from flax import nnx

from dipod_jax.lm.sampler import generate
from dipod_jax.losses.masked import elbo_masked, mask_uniform_count
from dipod_jax.models.llada import LLaDA, LLaDAConfig, count_params, masked_diffusion_logits_fn
from dipod_jax.run.program import UsageError, run_program

FLAGS = flags.FLAGS
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
flags.DEFINE_integer("num_draws", 2, "Forward masks per sequence in the ELBO.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("repeats", 5, "Timed calls (median reported), >= 3.")


def _median_seconds(fn, *args) -> tuple[float, list[float]]:
    """Call fn(*args) once to compile, then FLAGS.repeats times; (median seconds, all timings)."""
    jax.block_until_ready(fn(*args))
    timings = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        timings.append(time.perf_counter() - start)
    return statistics.median(timings), timings


def main(argv):
    del argv
    if FLAGS.repeats < 3:
        raise UsageError(f"--repeats must be >= 3, got {FLAGS.repeats}")
    config = LLaDAConfig.tiny(FLAGS.vocab_size, d_model=FLAGS.d_model, n_layers=FLAGS.n_layers,
                              n_heads=FLAGS.n_heads, mlp_hidden=FLAGS.mlp_hidden,
                              max_seq_len=FLAGS.prompt_length + FLAGS.gen_length, dtype=jnp.dtype(FLAGS.dtype))
    model = LLaDA(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    mask_id = config.mask_token_id
    key_prompt, key_sample, key_tokens, key_masks = jax.random.split(jax.random.key(0), 4)
    prompt = jax.random.randint(key_prompt, (FLAGS.batch, FLAGS.prompt_length), 0, mask_id)

    @jax.jit
    def sample(params, prompt, key):
        return generate(nnx.merge(graphdef, params), prompt, key, gen_length=FLAGS.gen_length,
                        block_length=FLAGS.block_length, steps=FLAGS.steps, temperature=1.0, mask_id=mask_id)

    total_length = FLAGS.prompt_length + FLAGS.gen_length
    tokens = jax.random.randint(key_tokens, (FLAGS.batch, total_length), 0, mask_id)
    completion_mask = jnp.arange(total_length)[None, :] >= FLAGS.prompt_length
    completion_mask = jnp.broadcast_to(completion_mask, (FLAGS.batch, total_length))
    masks, _ = mask_uniform_count(key_masks, completion_mask, FLAGS.num_draws)

    @jax.jit
    def train_step(params, tokens, masks):
        def negative_elbo(params):
            logits_fn = masked_diffusion_logits_fn(nnx.merge(graphdef, params))
            return -jnp.mean(elbo_masked(logits_fn, tokens, completion_mask, masks, mask_id))
        return jax.value_and_grad(negative_elbo)(params)

    sample_seconds, sample_timings = _median_seconds(sample, params, prompt, key_sample)
    train_seconds, train_timings = _median_seconds(train_step, params, tokens, masks)
    result = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "params": count_params(config)["base"],
        "config": {name: FLAGS[name].value for name in (
            "vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "batch", "prompt_length", "gen_length",
            "block_length", "steps", "num_draws", "dtype", "repeats")},
        "sampler_seconds_median": sample_seconds,
        "sampler_tokens_per_second": FLAGS.batch * FLAGS.gen_length / sample_seconds,
        "sampler_timings": sample_timings,
        "train_step_seconds_median": train_seconds,
        "train_tokens_per_second": FLAGS.batch * total_length / train_seconds,
        "train_timings": train_timings,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    run_program(main)
