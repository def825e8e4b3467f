"""Countdown with 3 numbers: generator, the shipped 256-item test set, prompts and the reward.

Details: docs/modules.md, section dipod_jax.lm.tasks.countdown.
"""
from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import numpy as np

from dipod_jax.lm.tasks.arith_parser import ArithmeticSyntaxError, parse_arithmetic
from dipod_jax.lm.tasks.completion_text import last_answer
from dipod_jax.lm.tasks.files import excerpt, jsonl_objects, read_task_file

SHIPPED_TEST_FILE = "countdown_cd3_test.jsonl"
NUMBER_RANGE = (1, 100)
TARGET_RANGE = (1, 100)
CORRECT_REWARD, FORMAT_REWARD = 1.0, 0.1
MAX_TEST_VALUE = 9999  # test-file numbers and targets: positive, at most 4 digits (the shipped set's are <= 100)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}


@dataclasses.dataclass(frozen=True)
class CountdownItem:
    """Three `numbers`, the `target`, and (generated items only) one `expression` reaching it."""

    numbers: tuple[int, int, int]
    target: int
    expression: str | None = None


def _apply(operator: str, left: Fraction, right: Fraction) -> Fraction | None:
    if operator == "+":
        return left + right
    if operator == "-":
        return left - right
    if operator == "*":
        return left * right
    return None if right == 0 else left / right


def _render_random_expression(rng: np.random.Generator, numbers: tuple[int, int, int]) -> tuple[str, Fraction | None]:
    """A random binary tree over a random order of `numbers`, rendered with only the needed parentheses."""
    a, b, c = (numbers[i] for i in rng.permutation(3))
    inner_op, outer_op = (str(op) for op in rng.choice(list("+-*/"), size=2))
    inner_value = _apply(inner_op, Fraction(a), Fraction(b))
    if rng.random() < 0.5:
        # (a inner b) outer c: brackets only when the inner operator binds more loosely.
        inner_text = f"{a}{inner_op}{b}"
        if _PRECEDENCE[inner_op] < _PRECEDENCE[outer_op]:
            inner_text = f"({inner_text})"
        value = None if inner_value is None else _apply(outer_op, inner_value, Fraction(c))
        return f"{inner_text}{outer_op}{c}", value
    # c outer (a inner b): brackets also when the outer operator is '-' or '/' (not associative).
    inner_text = f"{a}{inner_op}{b}"
    needs_brackets = _PRECEDENCE[inner_op] < _PRECEDENCE[outer_op] or (
        _PRECEDENCE[inner_op] == _PRECEDENCE[outer_op] and outer_op in "-/"
    )
    if needs_brackets:
        inner_text = f"({inner_text})"
    value = None if inner_value is None else _apply(outer_op, Fraction(c), inner_value)
    return f"{c}{outer_op}{inner_text}", value


@functools.lru_cache(maxsize=1)
def shipped_test_keys() -> frozenset[tuple[tuple[int, ...], int]]:
    """(sorted numbers, target) of every shipped test item; generated items avoid all of them."""
    return frozenset((tuple(sorted(item.numbers)), item.target) for item in load_test_set())


def generate_items(rng: np.random.Generator, count: int) -> list[CountdownItem]:
    """Draws `count` solvable items with numbers in [1, 100] and an integer target in [1, 100].

    Each item carries the expression it was built from (the supervised completion). Items whose
    (number multiset, target) appears in the shipped test set are skipped.
    """
    if count < 0:
        raise ValueError(f"countdown.generate_items: count={count} must be >= 0")
    excluded = shipped_test_keys()
    items: list[CountdownItem] = []
    while len(items) < count:
        first, second, third = (int(n) for n in rng.integers(NUMBER_RANGE[0], NUMBER_RANGE[1] + 1, size=3))
        numbers = (first, second, third)
        expression, value = _render_random_expression(rng, numbers)
        if value is None or value.denominator != 1 or not TARGET_RANGE[0] <= value <= TARGET_RANGE[1]:
            continue
        target = int(value)
        if (tuple(sorted(numbers)), target) in excluded:
            continue
        items.append(CountdownItem(numbers=numbers, target=target, expression=expression))
    return items


_OPERATOR_SWAP = str.maketrans("+-*/", "-+/*")
_OPERATOR_CROSS = str.maketrans("+-*/", "*/+-")


def _distractor_candidates(expression: str):
    yield expression.translate(_OPERATOR_SWAP)
    for index, char in enumerate(expression):
        if char in "+-*/":
            yield expression[:index] + char.translate(_OPERATOR_CROSS) + expression[index + 1:]


def distractor_item(item: CountdownItem) -> CountdownItem:
    """The item with a plausible wrong answer of one fixed kind: the generator's expression over the same numbers
    with every operator exchanged for its inverse (+ <-> -, * <-> /). Where that still reaches the target or
    divides by zero (identities such as 'x+y-y', 1.5% of generated items), the first single operator changed
    across precedence (+ -> *, - -> /, * -> +, / -> -) whose expression misses the target; every generated
    item has one. The answer is well formed and uses each number once, so it earns the format reward 0.1.
    ValueError for an item without an expression (test items) or with no such answer."""
    if item.expression is None:
        raise ValueError("countdown.distractor_item: this item has no expression (test items have none)")
    for candidate in _distractor_candidates(item.expression):
        value = parse_arithmetic(candidate).value
        if value is not None and value != item.target:
            return dataclasses.replace(item, expression=candidate)
    raise ValueError(f"countdown.distractor_item: no operator change of {item.expression!r} misses {item.target}")


def longest_item() -> CountdownItem:
    """An item whose prompt and supervised completion are as long as any generated one can be: three
    3-digit numbers, a 3-digit target and the generator's longest rendering (one pair of brackets)."""
    return CountdownItem(numbers=(100, 100, 100), target=100, expression="100-(100-100)")


def load_test_set(name_or_path: str = SHIPPED_TEST_FILE) -> list[CountdownItem]:
    """Reads JSONL rows {"input": "a,b,c", "output": "target"} (the shipped file name, or a path; UTF-8).

    Raises ValueError naming the file and line for bytes that are not UTF-8, invalid JSON, missing keys,
    non-integer fields, or numbers outside [1, MAX_TEST_VALUE], and naming the file when it holds no rows.
    """
    handle, path = read_task_file(name_or_path, (SHIPPED_TEST_FILE,))
    items = []
    for line_number, row in jsonl_objects(handle, path):
        if "input" not in row or "output" not in row:
            raise ValueError(f"{path}:{line_number}: expected an object with keys 'input' and 'output'")
        try:
            numbers = tuple(int(field) for field in str(row["input"]).split(","))
            target = int(str(row["output"]))
        except ValueError:
            raise ValueError(f"{path}:{line_number}: 'input' must be 3 comma-separated integers and "
                             f"'output' an integer, got {excerpt(row)}") from None
        if len(numbers) != 3:
            raise ValueError(f"{path}:{line_number}: expected 3 numbers in 'input', got {len(numbers)}")
        if not all(1 <= value <= MAX_TEST_VALUE for value in (*numbers, target)):
            raise ValueError(f"{path}:{line_number}: numbers and target must be integers in [1, {MAX_TEST_VALUE}] "
                             f"(the prompt, and so the model, grows with their length), got {excerpt(row)}")
        items.append(CountdownItem(numbers=numbers, target=target))
    if not items:
        raise ValueError(f"{path}: no items (the file is empty or blank)")
    return items


def prompt_text(item: CountdownItem, template: str = "compact") -> str:
    """The prompt for `item` in the named template ("compact" or "d1"; see the module docstring)."""
    numbers = ",".join(str(n) for n in item.numbers)
    if template == "compact":
        return f"{numbers}->{item.target}\n"
    if template == "d1":
        return (
            f"With the numbers [{', '.join(str(n) for n in item.numbers)}], write an arithmetic expression "
            f"equal to {item.target}. Use every number exactly once and only +, -, * and /, with "
            "parentheses where needed. Reason inside <reasoning> </reasoning> tags, then put only the "
            "expression (no '=' and no target) inside <answer> </answer> tags, e.g. for [2, 3, 4] and "
            "target 5: <answer>\n2*4-3\n</answer>\n"
        )
    raise ValueError(f"countdown.prompt_text: unknown template {template!r} (use 'compact' or 'd1')")


def target_completion(item: CountdownItem, template: str = "compact") -> str:
    """The supervised completion: the generator's expression in d1's answer format."""
    if item.expression is None:
        raise ValueError("countdown.target_completion: this item has no expression (test items have none)")
    if template not in ("compact", "d1"):
        raise ValueError(f"countdown.target_completion: unknown template {template!r}")
    return f"<answer>{item.expression}</answer>" if template == "compact" else f"<answer>\n{item.expression}\n</answer>"


def reward(completion: str, item: CountdownItem) -> float:
    """1.0 / 0.1 / 0.0 as in the module docstring."""
    answer = last_answer(completion)
    if answer is None:
        return 0.0
    try:
        parsed = parse_arithmetic(answer.strip())
    except ArithmeticSyntaxError:
        return 0.0
    uses_each_number_once = sorted(parsed.literals) == sorted(Fraction(n) for n in item.numbers)
    if uses_each_number_once and parsed.value is not None and parsed.value == item.target:
        return CORRECT_REWARD
    return FORMAT_REWARD
