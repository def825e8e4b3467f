"""Scoring a sampler on a task's test items with the task reward (pre-training and RL evaluations)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from dipod_jax.lm import data
from dipod_jax.lm.tasks import get_task
from dipod_jax.lm.tokenizer import Tokenizer
from dipod_jax.run.statistics import paired_difference

# (params, prompt [B, P] int32, prompt_mask [B, P] bool, key) -> tokens [B, P + gen_length] int32
SampleFn = Callable[[Any, Any, Any, Any], Any]


def item_rewards(sample_fn: SampleFn, params, run_config: dict[str, Any], tokenizer: Tokenizer, items, key,
                 task_name: str | None = None) -> np.ndarray:
    """Samples one completion per item and scores it with the reward of `task_name` (default: the run's).

    run_config: {"task", "template", "prompt_length", "gen_length"} (the layout of the sampled rows).
    Returns [len(items)] float64 rewards, in the order of `items`.
    """
    task = get_task(task_name or run_config["task"])
    prompt_length = run_config["prompt_length"]
    batch = data.task_batch(task, items, tokenizer, run_config["template"], prompt_length,
                            run_config["gen_length"], with_completions=False)
    tokens = sample_fn(params, jnp.asarray(batch.tokens[:, :prompt_length]),
                       jnp.asarray(batch.prompt_mask[:, :prompt_length]), key)
    texts = data.decode_completions(tokenizer, np.asarray(tokens), prompt_length)
    return np.array([task.reward(text, item) for text, item in zip(texts, items, strict=True)], dtype=np.float64)


def reward_summary(rewards: np.ndarray) -> dict[str, float]:
    """{"mean_reward", "exact_fraction" (reward == 1: solved, for Sudoku and Countdown), "items"}."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return {"mean_reward": float(rewards.mean()), "exact_fraction": float((rewards == 1.0).mean()),
            "items": int(rewards.size)}


def sampled_item_rewards(sample_fn: SampleFn, params, run_config: dict[str, Any], tokenizer: Tokenizer, items, key,
                         num_samples: int, task_name: str | None = None) -> np.ndarray:
    """`num_samples` independent completions per item (the sampler's own temperature), scored by the task reward.

    Each item is repeated `num_samples` times in one batch, so every row draws its own noise from `key`.
    Returns [len(items), num_samples] float64 rewards, items in the order of `items`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be >= 1")
    repeated = [item for item in items for _ in range(num_samples)]
    rewards = item_rewards(sample_fn, params, run_config, tokenizer, repeated, key, task_name)
    return rewards.reshape(len(items), num_samples)


def sampled_summary(rewards: np.ndarray) -> dict[str, float]:
    """What RL optimises, from [n, k] sampled rewards: {"mean_reward" (over all samples), "exact_fraction" (of
    samples with reward 1), "pass_at_k" (fraction of items with at least one sample of reward 1: the unbiased
    pass@k estimate with n = k), "k", "items"}."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2:
        raise ValueError(f"sampled rewards must be [items, k], got shape {rewards.shape}")
    solved = rewards == 1.0
    return {"mean_reward": float(rewards.mean()), "exact_fraction": float(solved.mean()),
            "pass_at_k": float(solved.any(axis=1).mean()), "k": int(rewards.shape[1]), "items": int(rewards.shape[0])}


def paired_sampled_evaluation(start_rewards: np.ndarray, end_rewards: np.ndarray) -> dict[str, Any]:
    """Sampled start and end evaluations ([n, k] each, the same items) compared item by item.

    Returns {"start": sampled_summary, "end": sampled_summary, "difference": paired_difference of the per-item
    mean sampled reward, "pass_difference": the same for the per-item pass@k indicator}.
    """
    start_rewards = np.asarray(start_rewards, dtype=np.float64)
    end_rewards = np.asarray(end_rewards, dtype=np.float64)
    if start_rewards.shape != end_rewards.shape:
        raise ValueError(f"start {start_rewards.shape} and end {end_rewards.shape} sampled rewards differ in shape")
    return {"start": sampled_summary(start_rewards), "end": sampled_summary(end_rewards),
            "difference": paired_difference(start_rewards.mean(axis=1), end_rewards.mean(axis=1)),
            "pass_difference": paired_difference((start_rewards == 1.0).any(axis=1),
                                                 (end_rewards == 1.0).any(axis=1))}


def evaluate(sample_fn: SampleFn, params, run_config: dict[str, Any], tokenizer: Tokenizer, items, key,
             task_name: str | None = None) -> dict[str, float]:
    """`reward_summary` of `item_rewards` (same arguments)."""
    return reward_summary(item_rewards(sample_fn, params, run_config, tokenizer, items, key, task_name))


def paired_evaluation(start_rewards: np.ndarray, end_rewards: np.ndarray) -> dict[str, Any]:
    """Start and end of a training run scored on the same items: both summaries and the paired difference.

    Returns {"start": reward_summary, "end": reward_summary, "difference": paired_difference of the per-item
    rewards (mean, 95% half_width, low, high, n), "exact_difference": the same for the solved indicator}.
    """
    start_rewards = np.asarray(start_rewards, dtype=np.float64)
    end_rewards = np.asarray(end_rewards, dtype=np.float64)
    return {"start": reward_summary(start_rewards), "end": reward_summary(end_rewards),
            "difference": paired_difference(start_rewards, end_rewards),
            "exact_difference": paired_difference(start_rewards == 1.0, end_rewards == 1.0)}
