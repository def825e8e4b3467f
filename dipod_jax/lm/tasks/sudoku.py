"""Sudoku 4x4: every valid grid, a puzzle generator, the shipped test sets, prompts and the d1 reward.

A grid is a 16-character string of digits 1-4 read row by row; a puzzle is the same with '0' for an empty
cell. The 2x2 boxes are rows {0,1}/{2,3} x columns {0,1}/{2,3}. There are exactly 288 valid grids.

Prompt templates (both keep d1's answer format, the 16-digit solution inside <answer>...</answer>):
- "d1": a natural-language instruction in the spirit of d1's Sudoku prompt (our wording) followed by the
  puzzle; the model is expected to reason in <reasoning> tags and then answer.
- "compact": for the character-level tiny model, just the puzzle string and a newline; the completion is
  "<answer>" + solution + "</answer>".
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import itertools

import numpy as np

from dipod_jax.lm.tasks.completion_text import first_digits, last_answer
from dipod_jax.lm.tasks.files import excerpt, read_task_file

GRID_CELLS = 16
SHIPPED_TEST_FILES = ("sudoku_4x4_test.csv", "sudoku_4x4_test_split_new.csv")


@dataclasses.dataclass(frozen=True)
class SudokuItem:
    """One puzzle: `puzzle` (16 chars, '0' = empty) and its `solution` (16 chars, digits 1-4)."""

    puzzle: str
    solution: str


def _units() -> list[tuple[int, ...]]:
    """The 12 groups of 4 cell indices (rows, columns, boxes) that must each hold 1-4 once."""
    rows = [tuple(4 * r + c for c in range(4)) for r in range(4)]
    columns = [tuple(4 * r + c for r in range(4)) for c in range(4)]
    boxes = [
        tuple(4 * (br + r) + (bc + c) for r in range(2) for c in range(2)) for br in (0, 2) for bc in (0, 2)
    ]
    return rows + columns + boxes


UNITS = _units()


def is_valid_grid(grid: str) -> bool:
    """True when `grid` is 16 digits 1-4 with every row, column and box a permutation of 1234."""
    if len(grid) != GRID_CELLS or any(char not in "1234" for char in grid):
        return False
    return all(sorted(grid[i] for i in unit) == ["1", "2", "3", "4"] for unit in UNITS)


@functools.lru_cache(maxsize=1)
def all_valid_grids() -> tuple[str, ...]:
    """All 288 valid 4x4 grids, sorted, by enumerating row permutations (4!^4 = 331776 candidates)."""
    rows = ["".join(p) for p in itertools.permutations("1234")]
    grids = []
    for first, second in itertools.product(rows, rows):
        top = first + second
        if not all(sorted(top[i] for i in unit) == ["1", "2", "3", "4"] for unit in UNITS[8:10]):
            continue
        for third, fourth in itertools.product(rows, rows):
            grid = top + third + fourth
            if is_valid_grid(grid):
                grids.append(grid)
    return tuple(sorted(grids))


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of valid grids agreeing with the filled cells of `puzzle`, counting at most `limit`."""
    count = 0
    for grid in all_valid_grids():
        if all(p == "0" or p == g for p, g in zip(puzzle, grid, strict=True)):
            count += 1
            if count >= limit:
                break
    return count


@functools.lru_cache(maxsize=1)
def shipped_test_puzzles() -> frozenset[str]:
    """Puzzle strings of both shipped test sets (the generator never returns one of them)."""
    return frozenset(item.puzzle for name in SHIPPED_TEST_FILES for item in load_test_set(name))


def generate_puzzles(
    rng: np.random.Generator, count: int, num_blanks: int | tuple[int, int], unique: bool = True
) -> list[SudokuItem]:
    """Draws `count` training puzzles that are disjoint from the shipped test sets.

    Args:
      rng: numpy Generator (the only randomness).
      count: number of puzzles.
      num_blanks: number of empty cells, or an inclusive range (low, high) drawn uniformly per puzzle.
      unique: keep only puzzles with exactly one solution, so the supervised target is unambiguous
        (376 of the 500 shipped test puzzles are unique; the reward always scores against the stored solution).
    Returns:
      list of SudokuItem with exactly the requested number of '0' cells.
    """
    low, high = (num_blanks, num_blanks) if isinstance(num_blanks, int) else num_blanks
    if not 1 <= low <= high <= GRID_CELLS - 4:
        raise ValueError(f"generate_puzzles: num_blanks={num_blanks} must lie in [1, {GRID_CELLS - 4}]")
    if count < 0:
        raise ValueError(f"generate_puzzles: count={count} must be >= 0")
    grids = all_valid_grids()
    excluded = shipped_test_puzzles()
    items: list[SudokuItem] = []
    while len(items) < count:
        solution = grids[rng.integers(len(grids))]
        blanks = rng.choice(GRID_CELLS, size=int(rng.integers(low, high + 1)), replace=False)
        puzzle = "".join("0" if i in blanks else char for i, char in enumerate(solution))
        if puzzle in excluded or (unique and count_solutions(puzzle) != 1):
            continue
        items.append(SudokuItem(puzzle=puzzle, solution=solution))
    return items


def longest_item() -> SudokuItem:
    """An item as long as any other (all prompts and completions have the same length)."""
    return SudokuItem(puzzle="0" * GRID_CELLS, solution=all_valid_grids()[0])


DISTRACTOR_SWAP = str.maketrans("12", "21")


def distractor_item(item: SudokuItem) -> SudokuItem:
    """The item with a plausible wrong answer of one fixed kind: the solution with the digits 1 and 2 exchanged
    everywhere. It is a valid grid (exchanging two symbols keeps every unit a permutation) that contradicts every
    clue 1 or 2 of the puzzle, so its reward is the fraction of empty cells holding a 3 or a 4."""
    return dataclasses.replace(item, solution=item.solution.translate(DISTRACTOR_SWAP))


def load_test_set(name_or_path: str = SHIPPED_TEST_FILES[0]) -> list[SudokuItem]:
    """Reads a Puzzle,Solution CSV: a shipped file name (package data) or a filesystem path (UTF-8).

    Raises ValueError naming the file and line for bytes that are not UTF-8, malformed CSV (e.g. a field over
    csv.field_size_limit), a missing header, a wrong field count, a puzzle that is not 16 digits 0-4 or has no
    empty cell, a solution that is not a valid grid, or a solution that disagrees with the puzzle; and naming the
    file when it holds no puzzles. Blank lines are skipped.
    """
    handle, path = read_task_file(name_or_path, SHIPPED_TEST_FILES)
    reader = csv.reader(handle)
    try:
        return _parse_csv(reader, path)
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None


def _parse_csv(reader, path: str) -> list[SudokuItem]:
    header = next(reader, None)
    if header is None:
        raise ValueError(f"{path}: the file is empty (expected a 'Puzzle,Solution' header and puzzle rows)")
    if header != ["Puzzle", "Solution"]:
        raise ValueError(f"{path}:1: expected header 'Puzzle,Solution', got {excerpt(header)}")
    items = []
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank lines are skipped, as in the JSONL loaders
        if len(row) != 2:
            raise ValueError(f"{path}:{line}: expected 2 fields (Puzzle,Solution), got {len(row)}")
        puzzle, solution = (field.strip() for field in row)
        if len(puzzle) != GRID_CELLS or any(char not in "01234" for char in puzzle):
            raise ValueError(f"{path}:{line}: puzzle {excerpt(puzzle)} is not 16 digits in 0-4")
        if "0" not in puzzle:
            raise ValueError(f"{path}:{line}: puzzle {puzzle!r} has no empty cell (nothing to solve; it would score 0)")
        if not is_valid_grid(solution):
            raise ValueError(f"{path}:{line}: solution {excerpt(solution)} is not a valid 4x4 Sudoku grid")
        if any(p != "0" and p != s for p, s in zip(puzzle, solution, strict=True)):
            raise ValueError(f"{path}:{line}: solution {solution!r} contradicts puzzle {puzzle!r}")
        items.append(SudokuItem(puzzle=puzzle, solution=solution))
    if not items:
        raise ValueError(f"{path}: no puzzles (the file holds only the header line)")
    return items


def prompt_text(item: SudokuItem, template: str = "compact") -> str:
    """The prompt for `item` in the named template ("compact" or "d1"; see the module docstring)."""
    if template == "compact":
        return item.puzzle + "\n"
    if template == "d1":
        return (
            "Solve this 4x4 Sudoku. Fill every empty cell with a digit from 1 to 4 so that each row, each "
            "column and each of the four 2x2 boxes holds 1, 2, 3 and 4 exactly once. The puzzle is written "
            "as 16 digits, row by row from the top left, with 0 marking an empty cell. Think inside "
            "<reasoning> </reasoning> tags, then give the full 16-digit solution inside <answer> </answer> "
            "tags.\n"
            f"Puzzle: {item.puzzle}\n"
        )
    raise ValueError(f"sudoku.prompt_text: unknown template {template!r} (use 'compact' or 'd1')")


def target_completion(item: SudokuItem, template: str = "compact") -> str:
    """The supervised completion for `item`: the solution in d1's answer format (no reasoning trace)."""
    if template not in ("compact", "d1"):
        raise ValueError(f"sudoku.target_completion: unknown template {template!r}")
    return f"<answer>{item.solution}</answer>" if template == "compact" else f"<answer>\n{item.solution}\n</answer>"


def extract_answer_digits(completion: str) -> str | None:
    """The first 16 digits (str.isdigit) inside the last <answer>...</answer> of `completion`, non-digits
    dropped, or None without answer tags. Linear time in len(completion) (see `completion_text`)."""
    answer = last_answer(completion)
    return None if answer is None else first_digits(answer, GRID_CELLS)


def reward(completion: str, item: SudokuItem) -> float:
    """d1's Sudoku reward: fraction of the puzzle's empty cells whose answer digit matches the solution.

    The answer is the digit string in the last <answer> tags, cut or right-padded with '0' to 16 cells.
    No answer tags, or an empty answer, scores 0.0.
    """
    digits = extract_answer_digits(completion)
    if not digits:
        return 0.0
    digits = digits.ljust(GRID_CELLS, "0")
    empty_cells = [i for i, char in enumerate(item.puzzle) if char == "0"]
    if not empty_cells:
        return 0.0
    return sum(digits[i] == item.solution[i] for i in empty_cells) / len(empty_cells)
