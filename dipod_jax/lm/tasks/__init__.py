"""Task registry: each language task as a record of plain functions.

Details: docs/modules.md, section dipod_jax.lm.tasks.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from dipod_jax.lm.tasks import countdown, gsm8k, sudoku


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    templates: tuple[str, ...]
    load_test: Callable[[str | None], list[Any]]
    generate: Callable[[np.random.Generator, int], list[Any]] | None
    prompt_text: Callable[[Any, str], str]
    target_completion: Callable[[Any, str], str]
    reward: Callable[[str, Any], float]
    longest_item: Callable[[], Any] | None
    distractor: Callable[[Any], Any] | None = None


def _sudoku_generate(rng: np.random.Generator, count: int, num_blanks: int | tuple[int, int] = (6, 10)) -> list:
    # Blanks 6-10 cover the shipped sets (8 blanks; the "split new" set has 7-12 with most at 7-9).
    return sudoku.generate_puzzles(rng, count, num_blanks)


def _sudoku_task(name: str, test_file: str) -> Task:
    """Sudoku 4x4 evaluated on one of the shipped test sets (training data is generated either way)."""
    return Task(
        name=name,
        templates=("compact", "d1"),
        load_test=lambda path=None: sudoku.load_test_set(path or test_file),
        generate=_sudoku_generate,
        prompt_text=sudoku.prompt_text,
        target_completion=sudoku.target_completion,
        reward=sudoku.reward,
        longest_item=sudoku.longest_item,
        distractor=sudoku.distractor_item,
    )


TASKS: dict[str, Task] = {
    "sudoku": _sudoku_task("sudoku", sudoku.SHIPPED_TEST_FILES[0]),
    "sudoku_split_new": _sudoku_task("sudoku_split_new", sudoku.SHIPPED_TEST_FILES[1]),
    "countdown": Task(
        name="countdown",
        templates=("compact", "d1"),
        load_test=lambda path=None: countdown.load_test_set(path or countdown.SHIPPED_TEST_FILE),
        generate=countdown.generate_items,
        prompt_text=countdown.prompt_text,
        target_completion=countdown.target_completion,
        reward=countdown.reward,
        longest_item=countdown.longest_item,
        distractor=countdown.distractor_item,
    ),
    "gsm8k": Task(
        name="gsm8k",
        templates=("d1",),
        load_test=lambda path=None: gsm8k.load_jsonl(path or gsm8k.SAMPLE_FILE),
        generate=None,
        prompt_text=gsm8k.prompt_text,
        target_completion=gsm8k.target_completion,
        reward=gsm8k.reward,
        longest_item=None,
    ),
}


def get_task(name: str) -> Task:
    """The registered task `name`; ValueError listing the known names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASKS)}")
    return TASKS[name]
