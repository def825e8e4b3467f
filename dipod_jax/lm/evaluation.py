"""Scoring a sampler on a task's test items with the task reward (pre-training and RL evaluations)."""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from dipod_jax.lm import data
from dipod_jax.lm.tasks import get_task
from dipod_jax.lm.tokenizer import Tokenizer

# (params, prompt [B, P] int32, prompt_mask [B, P] bool, key) -> tokens [B, P + gen_length] int32
SampleFn = Callable[[Any, Any, Any, Any], Any]


def evaluate(sample_fn: SampleFn, params, run_config: dict[str, Any], tokenizer: Tokenizer, items, key,
             task_name: str | None = None) -> dict[str, float]:
    """Samples completions for `items` and scores them with the reward of `task_name` (default: the run's).

    run_config: {"task", "template", "prompt_length", "gen_length"} (the layout of the sampled rows).
    Returns {"mean_reward", "exact_fraction" (reward == 1 for Sudoku/Countdown), "items"}.
    """
    task = get_task(task_name or run_config["task"])
    prompt_length = run_config["prompt_length"]
    batch = data.task_batch(task, items, tokenizer, run_config["template"], prompt_length,
                            run_config["gen_length"], with_completions=False)
    tokens = sample_fn(params, jnp.asarray(batch.tokens[:, :prompt_length]),
                       jnp.asarray(batch.prompt_mask[:, :prompt_length]), key)
    texts = data.decode_completions(tokenizer, np.asarray(tokens), prompt_length)
    rewards = np.array([task.reward(text, item) for text, item in zip(texts, items)])
    return {"mean_reward": float(rewards.mean()), "exact_fraction": float((rewards == 1.0).mean()),
            "items": len(items)}
