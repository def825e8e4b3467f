"""Greedy task accuracy and speed of the sampler variants on a pre-trained model's whole test set, as JSON lines.

    python -m experiments.lm_pretrain --task=sudoku --workdir=/tmp/sudoku --model_size=tiny --steps=3000
    python -m benchmarks.lm_sampler_accuracy --checkpoint_dir=/tmp/sudoku --samplers=exact,dual,dual_parallel

For every variant of --samplers (`dipod_jax.lm.sampler.SAMPLERS`; each *_parallel variant once per
--thresholds value) the whole test set of the checkpoint's task is sampled in one batch at temperature 0 and
scored with the task reward (`dipod_jax.lm.evaluation.evaluate`). The sampler calls are then timed (compile
excluded, interleaved across variants, median of --repeats rounds): tokens/s counts generated tokens
(items * gen_length). Block length and steps default to the checkpoint's evaluation sampler (one block, one
token a step); --block_length / --steps choose others (the same for every variant). One JSON line per
variant, then a summary line.
"""
from __future__ import annotations

import functools
import json
import statistics
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags

from benchmarks.timing import time_call
from dipod_jax.lm import data
from dipod_jax.lm.evaluation import evaluate
from dipod_jax.lm.pretrain import load_pretrained
from dipod_jax.lm.sampler import SAMPLERS, generate, sampler_options
from dipod_jax.lm.tasks import get_task
from dipod_jax.run.program import UsageError, check_flag_bounds, check_flag_choices, run_program, user_errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the flags; called only when run as a program, so importing this module defines none."""
    flags.DEFINE_string("checkpoint_dir", None, "experiments.lm_pretrain output directory.")
    flags.DEFINE_list("samplers", ["exact", "prefix", "dual", "dual_parallel"],
                      f"Sampler variants, from {sorted(SAMPLERS)}.")
    flags.DEFINE_list("thresholds", ["0.9"], "Confidence thresholds of the *_parallel variants, each in (0, 1].")
    flags.DEFINE_integer("block_length", 0, "Sampler block length (0 = the checkpoint's: gen_length).")
    flags.DEFINE_integer("steps", 0, "Sampler steps (0 = the checkpoint's).")
    flags.DEFINE_integer("refresh_interval", 0,
                         "Recompute the cache every this many steps of a block (0 = once per block).")
    flags.DEFINE_integer("repeats", 3, "Timed rounds (median reported); 0 = accuracy only.")
    flags.DEFINE_integer("seed", 0, "PRNG seed of the sampler (greedy: no effect on the tokens).")


def variants(samplers: list[str], thresholds: list[float], refresh_interval: int) -> dict[str, dict[str, Any]]:
    """{label: generate options}: one entry per sampler, per threshold for the *_parallel ones; the cached ones
    refreshed every refresh_interval steps (0: once per block)."""
    result = {}
    for name in samplers:
        labels = {f"{name}@{t:g}": t for t in thresholds} if SAMPLERS[name][1] else {name: 1.0}
        result.update({label: sampler_options(name, threshold, refresh_interval)
                       for label, threshold in labels.items()})
    return result


def validate(values: dict[str, Any]) -> list[float]:
    """UsageError naming the flag for a bad setting; returns the thresholds as floats."""
    if not values["checkpoint_dir"]:
        raise UsageError("--checkpoint_dir is required")
    check_flag_choices("samplers", values["samplers"], SAMPLERS)
    try:
        thresholds = [float(value) for value in values["thresholds"]]
    except ValueError as error:
        raise UsageError(f"--thresholds={','.join(values['thresholds'])} must be numbers") from error
    if not thresholds or not all(0 < value <= 1 for value in thresholds):
        raise UsageError(f"--thresholds={','.join(values['thresholds'])} must be numbers in (0, 1]")
    check_flag_bounds(values, non_negative=("block_length", "steps", "refresh_interval", "repeats"))
    return thresholds


def main(argv):
    del argv
    values = {name: FLAGS[name].value for name in ("checkpoint_dir", "samplers", "thresholds", "block_length",
                                                   "steps", "refresh_interval", "repeats", "seed")}
    thresholds = validate(values)
    with user_errors():
        model, tokenizer, run_config = load_pretrained(values["checkpoint_dir"])
    sampler_config = run_config["sampler"]
    gen_length = run_config["gen_length"]
    settings = dict(gen_length=gen_length, block_length=values["block_length"] or sampler_config["block_length"],
                    steps=values["steps"] or sampler_config["steps"], temperature=0.0,
                    mask_id=tokenizer.mask_id)
    task = get_task(run_config["task"])
    items = task.load_test(None)
    batch = data.task_batch(task, items, tokenizer, run_config["template"], run_config["prompt_length"], gen_length,
                            with_completions=False)
    prompt_length = run_config["prompt_length"]
    prompt = jnp.asarray(batch.tokens[:, :prompt_length])
    prompt_mask = jnp.asarray(batch.prompt_mask[:, :prompt_length])
    key = jax.random.key(values["seed"])

    samplers = {}
    for label, options in variants(values["samplers"], thresholds, values["refresh_interval"]).items():
        run = jax.jit(functools.partial(generate, model, **settings, **options, return_stats=True))
        samplers[label] = run

    results = {}
    for label, run in samplers.items():
        def tokens_only(_, prompt, prompt_mask, key, run=run):
            return run(prompt, key, prompt_mask=prompt_mask)[0]

        scores = evaluate(tokens_only, None, run_config, tokenizer, items, key)
        stats = {name: int(value) for name, value in run(prompt, key, prompt_mask=prompt_mask)[1].items()}
        results[label] = {"sampler": label, **scores, **stats, "timings": []}
    for _ in range(values["repeats"]):
        for label, run in samplers.items():
            results[label]["timings"].append(time_call(functools.partial(run, prompt, key, prompt_mask=prompt_mask))[0])
    timed = values["repeats"] > 0
    for result in results.values():
        if timed:
            seconds = statistics.median(result["timings"])
            result.update(seconds_median=seconds, tokens_per_second=len(items) * gen_length / seconds)
        if "exact" in results:
            if timed:
                result["speedup_vs_exact"] = statistics.median(results["exact"]["timings"]) / seconds
            for name in ("mean_reward", "exact_fraction"):
                result[f"{name}_change_points"] = 100 * (result[name] - results["exact"][name])
        print(json.dumps(result))
    print(json.dumps({"checkpoint_dir": values["checkpoint_dir"], "task": run_config["task"], "items": len(items),
                      "prompt_length": prompt_length, "refresh_interval": values["refresh_interval"],
                      **{k: settings[k] for k in ("gen_length", "block_length", "steps")},
                      "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    define_flags()
    run_program(main)
