"""RL steps/s and rewards of the rollout sampler variants, side by side, from a pre-trained checkpoint (JSON lines).

    python -m benchmarks.lm_rl_throughput --checkpoint_dir=/tmp/sudoku --samplers=exact,parallel,dual_parallel

Details: docs/modules.md, section benchmarks.lm_rl_throughput.
"""
from __future__ import annotations

import functools
import json
import statistics
from typing import Any

import jax
import numpy as np
from absl import flags

from benchmarks.timing import time_call
from dipod_jax.lm import data, rl
from dipod_jax.lm.pretrain import load_pretrained
from dipod_jax.lm.rl_config import ALGORITHMS, preset
from dipod_jax.lm.sampler import SAMPLERS
from dipod_jax.lm.tasks import get_task
from dipod_jax.run.program import UsageError, check_flag_bounds, check_flag_choices, run_program, user_errors

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the flags; called only when run as a program, so importing this module defines none."""
    flags.DEFINE_string("checkpoint_dir", None, "experiments.lm_pretrain output directory.")
    flags.DEFINE_list("samplers", ["exact", "parallel", "dual_parallel"], f"Variants, from {sorted(SAMPLERS)}.")
    flags.DEFINE_float("threshold", 0.9, "Confidence threshold of the *_parallel variants, in (0, 1].")
    flags.DEFINE_integer("refresh_interval", 0, "Cache refresh interval in steps of a block (0 = once per block).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (one run per variant and seed).")
    flags.DEFINE_integer("steps", 20, "RL steps per run (>= 3).")
    flags.DEFINE_enum("algo", "fpo", list(ALGORITHMS), "RL algorithm (its loss).")
    flags.DEFINE_integer("block_length", 0, "Sampler block length (0 = gen_length, as experiments.lm_rl).")
    flags.DEFINE_integer("diffusion_steps", 0, "Sampler steps (0 = gen_length, as experiments.lm_rl).")


def validate(values: dict[str, Any]) -> list[int]:
    """UsageError naming the flag for a bad setting; returns the seeds as ints."""
    if not values["checkpoint_dir"]:
        raise UsageError("--checkpoint_dir is required")
    check_flag_choices("samplers", values["samplers"], SAMPLERS)
    try:
        seeds = [int(seed) for seed in values["seeds"]]
    except ValueError as error:
        raise UsageError(f"--seeds={','.join(values['seeds'])} must be integers") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds={','.join(values['seeds'])} must be distinct integers")
    if values["steps"] < 3:
        raise UsageError(f"--steps={values['steps']} must be >= 3")
    check_flag_bounds(values, non_negative=("refresh_interval", "block_length", "diffusion_steps"))
    return seeds


def main(argv):
    del argv
    values = {name: FLAGS[name].value for name in ("checkpoint_dir", "samplers", "threshold", "refresh_interval",
                                                   "seeds", "steps", "algo", "block_length", "diffusion_steps")}
    seeds = validate(values)
    with user_errors():
        model, tokenizer, run_config = load_pretrained(values["checkpoint_dir"])
    task = get_task(run_config["task"])
    gen_length, prompt_length = run_config["gen_length"], run_config["prompt_length"]
    runs = {}
    for name in values["samplers"]:
        with user_errors():  # an RLConfig field the flags break (e.g. --threshold) is named in one line
            config = preset(run_config["task"], algo=values["algo"], gen_length=gen_length,
                            block_length=values["block_length"] or gen_length,
                            diffusion_steps=values["diffusion_steps"] or gen_length,
                            spg_block_length=min(preset(run_config["task"]).spg_block_length, gen_length),
                            sampler=name, sampler_threshold=values["threshold"],
                            sampler_refresh_interval=values["refresh_interval"])
        graphdef, params, frozen = rl.split_model(model, config.lora_only)
        sample_fn = rl.make_sample_fn(config, graphdef, tokenizer.mask_id)
        update_fn = rl.make_update_fn(config, graphdef, tokenizer.mask_id)
        for seed in seeds:
            runs[(name, seed)] = {"config": config, "state": rl.init_train_state(params, config), "frozen": frozen,
                                  "sample_fn": sample_fn, "update_fn": update_fn, "step_s": [], "sample_s": [],
                                  "rewards": []}
    for step in range(values["steps"]):
        for (_, seed), run in runs.items():
            config = run["config"]
            items = task.generate(np.random.default_rng([seed, step]), config.num_prompts)
            prompts, prompt_mask, reward_fn = data.rl_prompts_and_reward(
                task, items, tokenizer, run_config["template"], prompt_length, gen_length, config.num_generations)
            key = jax.random.fold_in(jax.random.key(seed), step)
            seconds, (run["state"], metrics, _) = time_call(
                functools.partial(rl.rl_step, run["state"], run["frozen"], prompts, prompt_mask, reward_fn, key,
                                  config=config, sample_fn=run["sample_fn"], update_fn=run["update_fn"],
                                  eos_id=tokenizer.eos_id))
            rows = (np.repeat(prompts, config.num_generations, 0), np.repeat(prompt_mask, config.num_generations, 0))
            sample_seconds, _ = time_call(run["sample_fn"], run["state"].params, run["frozen"], *rows, key)
            run["step_s"].append(seconds)
            run["sample_s"].append(sample_seconds)
            run["rewards"].append(float(metrics["reward_mean"]))
    for (name, seed), run in runs.items():
        print(json.dumps({"sampler": name, "seed": seed, "step_s": run["step_s"], "sample_s": run["sample_s"],
                          "rewards": run["rewards"], "reward_mean": statistics.mean(run["rewards"])}))
    for name in values["samplers"]:
        mine = [run for (variant, _), run in runs.items() if variant == name]
        step_s = statistics.median(s for run in mine for s in run["step_s"][1:])
        sample_s = statistics.median(s for run in mine for s in run["sample_s"][1:])
        per_seed = [statistics.mean(run["rewards"]) for run in mine]
        print(json.dumps({"sampler": name, "median_step_s": step_s, "steps_per_s": 1 / step_s,
                          "median_sample_s": sample_s, "sample_fraction": sample_s / step_s,
                          "reward_mean_per_seed": per_seed, "reward_mean": statistics.mean(per_seed),
                          "reward_seed_std": statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0,
                          "rl_config": {k: getattr(mine[0]["config"], k) for k in (
                              "algo", "num_prompts", "num_generations", "num_inner_iterations", "gen_length",
                              "block_length", "diffusion_steps", "rollout_temperature", "sampler", "sampler_threshold",
                              "sampler_refresh_interval")}}))


if __name__ == "__main__":
    define_flags()
    run_program(main)
