"""Tasks, generators, data loaders and rewards (pure Python: no JAX compile)."""
import os
from fractions import Fraction

import numpy as np
import pytest

from dipod_jax.lm.tasks import countdown, get_task, gsm8k, sudoku
from dipod_jax.lm.tasks.arith_parser import ArithmeticSyntaxError, parse_arithmetic

# ---- Sudoku ---------------------------------------------------------------------------------------------

def test_all_valid_grids_count_and_validity():
    """There are exactly 288 distinct valid 4x4 grids, each passing the row/column/box check."""
    grids = sudoku.all_valid_grids()
    assert len(grids) == 288 and len(set(grids)) == 288
    assert all(sudoku.is_valid_grid(g) for g in grids)


def test_is_valid_grid_rejects_broken_box():
    """A grid whose rows and columns are permutations but whose 2x2 boxes are not is rejected."""
    latin_not_sudoku = "1234" "2341" "3412" "4123"
    assert not sudoku.is_valid_grid(latin_not_sudoku)
    assert sudoku.is_valid_grid("1234" "3412" "2143" "4321")


@pytest.mark.parametrize("num_blanks", [4, 8, (6, 10)])
def test_generated_puzzles_valid_and_disjoint(num_blanks):
    """Generated puzzles agree with a valid solution, have the requested blank count, a unique solution,
    and never equal a puzzle of either shipped test set."""
    items = sudoku.generate_puzzles(np.random.default_rng(1), 300, num_blanks)
    low, high = (num_blanks, num_blanks) if isinstance(num_blanks, int) else num_blanks
    test_puzzles = {i.puzzle for f in sudoku.SHIPPED_TEST_FILES for i in sudoku.load_test_set(f)}
    for item in items:
        assert sudoku.is_valid_grid(item.solution)
        assert low <= item.puzzle.count("0") <= high
        assert all(p in ("0", s) for p, s in zip(item.puzzle, item.solution, strict=True))
        assert sudoku.count_solutions(item.puzzle) == 1
        assert item.puzzle not in test_puzzles


def test_generator_excludes_test_puzzles_even_when_forced():
    """With 8 blanks and uniqueness off, many draws would hit the 500 shipped 8-blank puzzles; none is returned."""
    test_puzzles = {i.puzzle for i in sudoku.load_test_set()}
    items = sudoku.generate_puzzles(np.random.default_rng(0), 3000, 8, unique=False)
    assert not test_puzzles & {i.puzzle for i in items}


def test_shipped_sets_load():
    """The shipped CSVs load with their documented sizes (500 and 256) and valid solutions."""
    assert len(get_task("sudoku").load_test()) == 500
    assert len(get_task("sudoku_split_new").load_test()) == 256


def test_sudoku_reward_known_values():
    """Perfect answer scores 1.0; 3 of 4 blanks right scores 0.75; no tags / empty answer score 0."""
    item = sudoku.SudokuItem(puzzle="0234341221430300", solution="1234341221434321")
    assert sudoku.reward(f"<answer>{item.solution}</answer>", item) == 1.0
    wrong_one = "2234341221434321"  # blank 0 wrong; blanks 12, 14, 15 right
    assert sudoku.reward(f"thinking <answer>\n{wrong_one}\n</answer>", item) == 0.75
    assert sudoku.reward(item.solution, item) == 0.0
    assert sudoku.reward("<answer></answer>", item) == 0.0
    # Digits are read from the LAST answer, short answers are padded with '0' (wrong).
    assert sudoku.reward(f"<answer>{item.solution}</answer><answer>1</answer>", item) == 0.25
    assert sudoku.reward(f"<answer>{' '.join(item.solution)}</answer>", item) == 1.0


def test_sudoku_reward_ignores_given_cells():
    """Changing the given (non-blank) cells in the answer does not change the reward."""
    item = sudoku.SudokuItem(puzzle="0234341221430300", solution="1234341221434321")
    assert sudoku.reward("<answer>1111111111114341</answer>", item) == 0.75


def test_sudoku_csv_errors_name_file_and_line(tmp_path):
    """Malformed CSV rows raise ValueError with 'path:line'."""
    good = "1234341221434321"
    cases = {
        "header.csv": ("Puzle,Solution\n", ":1:"),
        "fields.csv": (f"Puzzle,Solution\n0234341221430320,{good}\n0234341221430320\n", ":3:"),
        "badgrid.csv": ("Puzzle,Solution\n0234341221430320,1234341221434322\n", ":2:"),
        "contradicts.csv": (f"Puzzle,Solution\n4234341221430320,{good}\n", ":2:"),
        "baddigit.csv": (f"Puzzle,Solution\n0234341221430325,{good}\n", ":2:"),
    }
    for name, (text, where) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{name}{where}"):
            sudoku.load_test_set(str(path))


# ---- Arithmetic parser ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("2+3*4", 14), ("(2+3)*4", 20), ("2*3+4", 10), ("10-4-3", 3), ("10-(4-3)", 9),
    ("8/4/2", 1), ("8/(4/2)", 4), ("7/2", Fraction(7, 2)), ("6/4*2", 3), ("-3+5", 2), ("2*-3", -6),
    ("-(2+3)", -5), (" 1 + 2 ", 3), ("1.5*2", 3),
])
def test_parser_precedence_and_division(text, value):
    """Known values: * and / bind tighter than + and -, both left-associative; division is exact."""
    assert parse_arithmetic(text).value == value


def test_parser_literals_and_division_by_zero():
    """Literals come back in reading order; dividing by zero gives value None without raising."""
    parsed = parse_arithmetic("(100-93)*30")
    assert parsed.literals == (100, 93, 30)
    assert parse_arithmetic("5/(3-3)").value is None


@pytest.mark.parametrize("text", ["", "2+", "(2+3", "2+3)", "2 3", "2**3", "1..2", "3.", "x+1", "2^3",
                                  "__import__('os').system('x')", "1_000", "\u0663+1", "(" * 40 + "1" + ")" * 40])
def test_parser_rejects_non_arithmetic(text):
    """Anything outside the grammar (names, calls, power, unicode digits, deep nesting) is a syntax error."""
    with pytest.raises(ArithmeticSyntaxError):
        parse_arithmetic(text)


# ---- Countdown ------------------------------------------------------------------------------------------

def test_countdown_reward_known_values():
    """1.0 correct, 0.1 well-formed but wrong (value / numbers / reuse / division by zero), 0 malformed."""
    item = countdown.CountdownItem(numbers=(30, 100, 93), target=23)
    assert countdown.reward("<answer>30-(100-93)</answer>", item) == 1.0
    assert countdown.reward("<answer>\n30 - 100 + 93\n</answer>", item) == 1.0
    assert countdown.reward("<answer>30+100-93</answer>", item) == 0.1          # wrong value
    assert countdown.reward("<answer>30-7</answer>", item) == 0.1               # numbers not used
    assert countdown.reward("<answer>30-(100-93)+0</answer>", item) == 0.1      # extra number
    assert countdown.reward("<answer>30-(100-93)*(30/30)</answer>", item) == 0.1  # 30 used thrice
    assert countdown.reward("<answer>30/(100-100)</answer>", item) == 0.1       # division by zero
    assert countdown.reward("30-(100-93)", item) == 0.0                         # no tags
    assert countdown.reward("<answer>30-(100-93)=23</answer>", item) == 0.0     # not an expression
    item_fraction = countdown.CountdownItem(numbers=(3, 4, 6), target=8)
    assert countdown.reward("<answer>4/3*6</answer>", item_fraction) == 1.0     # exact, not float


def test_countdown_injection_scores_zero_and_runs_nothing(tmp_path, monkeypatch):
    """An answer that is Python code scores 0 and executes nothing (no file is created, no os.system call)."""
    marker = tmp_path / "pwned"
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    item = countdown.CountdownItem(numbers=(1, 2, 3), target=6)
    for code in ["__import__('os').system('x')", f"open('{marker}', 'w').write('1')",
                 f"__import__('os').system('touch {marker}')"]:
        assert countdown.reward(f"<answer>{code}</answer>", item) == 0.0
    assert calls == [] and not marker.exists()


def test_countdown_generator_solvable_and_disjoint():
    """Generated items carry an expression scoring 1.0, targets in [1, 100], none in the test set."""
    items = countdown.generate_items(np.random.default_rng(3), 500)
    test_keys = {(tuple(sorted(i.numbers)), i.target) for i in countdown.load_test_set()}
    for item in items:
        assert countdown.reward(countdown.target_completion(item), item) == 1.0
        assert 1 <= item.target <= 100 and all(1 <= n <= 100 for n in item.numbers)
        assert (tuple(sorted(item.numbers)), item.target) not in test_keys
    assert any("(" in item.expression for item in items)


def test_countdown_shipped_set_and_jsonl_errors(tmp_path):
    """The shipped file has 256 items; malformed JSONL rows raise ValueError with 'path:line'."""
    assert len(get_task("countdown").load_test()) == 256
    cases = {
        "json.jsonl": ('{"input": "1,2,3", "output": "6"}\n{"input": \n', ":2:"),
        "keys.jsonl": ('{"input": "1,2,3"}\n', ":1:"),
        "ints.jsonl": ('{"input": "1,2,3", "output": "6"}\n\n{"input": "1,x,3", "output": "6"}\n', ":3:"),
        "count.jsonl": ('{"input": "1,2", "output": "3"}\n', ":1:"),
    }
    for name, (text, where) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{name}{where}"):
            countdown.load_test_set(str(path))


# ---- GSM8K ----------------------------------------------------------------------------------------------

def test_gsm8k_sample_and_reference_completion_scores_maximum():
    """The bundled sample has 10 rows; each reference completion gets the full 4.0 (2 + 0.5 * 4)."""
    items = gsm8k.load_jsonl()
    assert len(items) == 10
    for item in items:
        components = gsm8k.reward_components(gsm8k.target_completion(item), item)
        assert components == {"correctness": 2.0, "integer": 0.5, "strict_format": 0.5, "soft_format": 0.5,
                              "xml_count": 0.5}


def test_gsm8k_reward_known_values():
    """Correct bare answer: 2.0 + 0.5 integer + xml terms; wrong number: no correctness; commas normalised."""
    item = gsm8k.Gsm8kItem(question="q", solution="#### 1200", answer="1200")
    assert gsm8k.reward("<answer>1200</answer>", item) == 2.5
    assert gsm8k.reward("<answer>1,200</answer>", item) == 2.0          # correct, but not digits only
    assert gsm8k.reward("<answer>1201</answer>", item) == 0.5
    assert gsm8k.reward("", item) == 0.0
    trailing = "<reasoning>\nr\n</reasoning>\n<answer>\n1200\n</answer>\nextra"
    components = gsm8k.reward_components(trailing, item)
    assert components["strict_format"] == 0.0 and components["soft_format"] == 0.5
    assert components["xml_count"] == pytest.approx(0.5 - 0.001 * 5 - 0.001 * 5)


def test_gsm8k_jsonl_errors_name_file_and_line(tmp_path):
    """Malformed GSM8K rows (bad JSON, missing key, no '####') raise ValueError with 'path:line'."""
    good = '{"question": "q", "answer": "a #### 1"}\n'
    for name, text, where in [("a.jsonl", good + "{oops\n", ":2:"), ("b.jsonl", '{"question": "q"}\n', ":1:"),
                              ("c.jsonl", good + good + '{"question": "q", "answer": "1"}\n', ":3:")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{name}{where}"):
            gsm8k.load_jsonl(str(path))


# ---- Registry -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sudoku", "sudoku_split_new", "countdown"])
def test_registry_generated_targets_score_one(name):
    """For every generating task and template, the supervised completion of a generated item scores 1.0."""
    task = get_task(name)
    for template in task.templates:
        for item in task.generate(np.random.default_rng(0), 20):
            assert task.reward(task.target_completion(item, template), item) == 1.0
            assert task.prompt_text(item, template).endswith("\n")


def test_registry_unknown_names():
    """Unknown task and template names raise ValueError naming them."""
    with pytest.raises(ValueError, match="'chess'"):
        get_task("chess")
    with pytest.raises(ValueError, match="'fancy'"):
        sudoku.prompt_text(sudoku.SudokuItem("0" * 16, "1234341221434321"), "fancy")


@pytest.mark.parametrize("name", ["sudoku", "countdown"])
def test_longest_item_bounds_generated_lengths(name):
    """No generated item has a longer prompt or completion than the task's longest_item (which sizes the
    token arrays of pre-training)."""
    task = get_task(name)
    longest = task.longest_item()
    max_prompt = len(task.prompt_text(longest, "compact"))
    max_completion = len(task.target_completion(longest, "compact"))
    for item in task.generate(np.random.default_rng(5), 3000):
        assert len(task.prompt_text(item, "compact")) <= max_prompt
        assert len(task.target_completion(item, "compact")) <= max_completion
