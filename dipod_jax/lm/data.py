"""Task text -> fixed-shape token arrays with prompt / completion masks, and generated tokens -> text.

Details: docs/modules.md, section dipod_jax.lm.data.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from dipod_jax.lm.tokenizer import Tokenizer


class TokenBatch(NamedTuple):
    """Token ids int32 [B, T] and the bool [B, T] masks described in the module docstring."""

    tokens: np.ndarray
    attention_mask: np.ndarray
    prompt_mask: np.ndarray
    completion_mask: np.ndarray
    response_mask: np.ndarray


def encode_batch(
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str] | None,
    prompt_length: int,
    gen_length: int,
) -> TokenBatch:
    """Encodes prompts (and completions, for supervised data) into one TokenBatch.

    Args:
      tokenizer: any `Tokenizer`.
      prompts: B prompt strings.
      completions: B completion strings (eos is appended here), or None for prompts to be completed by the
        sampler: the generation region is then filled with the mask id and completion_mask is all False.
      prompt_length: P, columns reserved for the prompt.
      gen_length: G, columns of the generation region.
    Returns:
      TokenBatch with arrays of shape [B, P + G].
    Raises:
      ValueError naming the item index when a prompt is longer than P or a completion plus its eos is
      longer than G, or when the argument lengths disagree.
    """
    if prompt_length <= 0 or gen_length <= 0:
        raise ValueError(f"encode_batch: prompt_length={prompt_length} and gen_length={gen_length} must be > 0")
    if completions is not None and len(completions) != len(prompts):
        raise ValueError(f"encode_batch: {len(prompts)} prompts but {len(completions)} completions")
    batch_size, total_length = len(prompts), prompt_length + gen_length
    tokens = np.full((batch_size, total_length), tokenizer.pad_id, dtype=np.int32)
    attention_mask = np.zeros((batch_size, total_length), dtype=bool)
    prompt_mask = np.zeros((batch_size, total_length), dtype=bool)
    completion_mask = np.zeros((batch_size, total_length), dtype=bool)
    response_mask = np.zeros((batch_size, total_length), dtype=bool)
    response_mask[:, prompt_length:] = True
    attention_mask[:, prompt_length:] = True
    for row, prompt in enumerate(prompts):
        prompt_ids = tokenizer.encode(prompt)
        if len(prompt_ids) > prompt_length:
            raise ValueError(f"encode_batch: prompt {row} has {len(prompt_ids)} tokens > prompt_length={prompt_length}")
        start = prompt_length - len(prompt_ids)
        tokens[row, start:prompt_length] = prompt_ids
        prompt_mask[row, start:prompt_length] = True
        attention_mask[row, start:prompt_length] = True
        if completions is None:
            tokens[row, prompt_length:] = tokenizer.mask_id
            continue
        completion_ids = tokenizer.encode(completions[row]) + [tokenizer.eos_id]
        if len(completion_ids) > gen_length:
            raise ValueError(
                f"encode_batch: completion {row} has {len(completion_ids)} tokens with eos > gen_length={gen_length}"
            )
        tokens[row, prompt_length:] = tokenizer.eos_id
        tokens[row, prompt_length:prompt_length + len(completion_ids)] = completion_ids
        completion_mask[row, prompt_length:prompt_length + len(completion_ids)] = True
    return TokenBatch(tokens, attention_mask, prompt_mask, completion_mask, response_mask)


def completion_mask_from_tokens(tokens: np.ndarray, prompt_length: int, eos_id: int) -> np.ndarray:
    """The RL completion mask of generated rows: bool [B, T], True from column prompt_length up to and
    including the first eos (to the end of the row when there is no eos).

    tokens: int [B, T] (prompt followed by the generated region).
    """
    tokens = np.asarray(tokens)
    generated = tokens[:, prompt_length:]
    is_eos = generated == eos_id
    # A position is real when no eos occurred strictly before it.
    eos_before = np.cumsum(is_eos, axis=1) - is_eos
    mask = np.zeros(tokens.shape, dtype=bool)
    mask[:, prompt_length:] = eos_before == 0
    return mask


def decode_completions(tokenizer: Tokenizer, tokens: np.ndarray, prompt_length: int) -> list[str]:
    """Text of each row's generation region up to its first eos (special tokens dropped).

    tokens: int [B, T] with the generation region starting at column prompt_length.
    """
    texts = []
    for row in np.asarray(tokens)[:, prompt_length:]:
        ids = row.tolist()
        if tokenizer.eos_id in ids:
            ids = ids[: ids.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(ids))
    return texts


def task_batch(task, items: Sequence, tokenizer: Tokenizer, template: str, prompt_length: int, gen_length: int,
               with_completions: bool = True) -> TokenBatch:
    """`encode_batch` of a task's prompts (and supervised completions) for `items`."""
    prompts = [task.prompt_text(item, template) for item in items]
    completions = [task.target_completion(item, template) for item in items] if with_completions else None
    return encode_batch(tokenizer, prompts, completions, prompt_length, gen_length)


def rl_prompts_and_reward(task, items: Sequence, tokenizer: Tokenizer, template: str, prompt_length: int,
                          gen_length: int, num_generations: int):
    """The RL step's host-side inputs for `items`: prompt tokens [P, prompt_length], prompt mask
    [P, prompt_length], and `reward_fn(tokens [P * G, T], completion_mask) -> rewards [P * G]`, which decodes
    each generated row (rows grouped p * G + g) and scores it against its item with the task reward."""
    prompts = task_batch(task, items, tokenizer, template, prompt_length, gen_length, with_completions=False)
    item_rows = [item for item in items for _ in range(num_generations)]

    def reward_fn(tokens, completion_mask):
        texts = decode_completions(tokenizer, tokens, prompt_length)
        return np.array([task.reward(text, item) for text, item in zip(texts, item_rows, strict=True)])

    return prompts.tokens[:, :prompt_length], prompts.prompt_mask[:, :prompt_length], reward_fn


def required_lengths(task, items: Sequence, tokenizer: Tokenizer, template: str,
                     with_completions: bool = True) -> tuple[int, int]:
    """(longest prompt, longest completion + eos) in tokens over `items`: the smallest valid P and G."""
    prompt_length = max(len(tokenizer.encode(task.prompt_text(item, template))) for item in items)
    if not with_completions:
        return prompt_length, 0
    gen_length = max(len(tokenizer.encode(task.target_completion(item, template))) + 1 for item in items)
    return prompt_length, gen_length
