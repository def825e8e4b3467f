"""Tests of the RL test bed: distractor pre-training data (a start with headroom) and the sampled evaluation
(what RL optimises: mean sampled reward and pass@k, paired start / end)."""
import numpy as np
import pytest

from dipod_jax.lm.evaluation import (
    paired_sampled_evaluation,
    sampled_item_rewards,
    sampled_summary,
)
from dipod_jax.lm.pretrain import training_items
from dipod_jax.lm.tasks import countdown, get_task, sudoku
from dipod_jax.lm.tokenizer import char_tokenizer
from dipod_jax.run.statistics import paired_difference

# ------------------------------------------------------------------------------------------ distractors


def test_sudoku_distractor_is_a_valid_grid_with_1_and_2_exchanged():
    """The distractor keeps the puzzle, and its solution is the true one with every 1 and 2 exchanged: a valid
    grid that contradicts the clues, scoring exactly the fraction of empty cells that hold a 3 or a 4."""
    items = sudoku.generate_puzzles(np.random.default_rng(0), 50, (6, 10))
    for item in items:
        wrong = sudoku.distractor_item(item)
        assert wrong.puzzle == item.puzzle
        assert sudoku.is_valid_grid(wrong.solution)
        assert wrong.solution == "".join({"1": "2", "2": "1"}.get(c, c) for c in item.solution)
        empty = [i for i, c in enumerate(item.puzzle) if c == "0"]
        expected = sum(item.solution[i] in "34" for i in empty) / len(empty)
        assert sudoku.reward(sudoku.target_completion(wrong), item) == pytest.approx(expected)
        assert sudoku.reward(sudoku.target_completion(item), item) == 1.0


def test_countdown_distractor_uses_the_numbers_and_misses_the_target():
    """Every generated item's distractor is a well-formed expression over the same numbers that misses the target
    (format reward 0.1); it is the operator-inverted expression unless that still reaches the target."""
    items = countdown.generate_items(np.random.default_rng(1), 1000)
    inverted = 0
    for item in items:
        wrong = countdown.distractor_item(item)
        assert (wrong.numbers, wrong.target) == (item.numbers, item.target)
        assert countdown.reward(countdown.target_completion(wrong), item) == countdown.FORMAT_REWARD
        assert countdown.reward(countdown.target_completion(item), item) == countdown.CORRECT_REWARD
        inverted += wrong.expression == item.expression.translate(str.maketrans("+-*/", "-+/*"))
    assert inverted / len(items) > 0.95
    assert countdown.distractor_item(countdown.CountdownItem((5, 5, 17), 17, "17+5-5")).expression == "17*5-5"
    with pytest.raises(ValueError, match="no expression"):
        countdown.distractor_item(countdown.CountdownItem((1, 2, 3), 6))


@pytest.mark.parametrize("task_name, fraction", [("sudoku", 0.5), ("countdown", 0.6), ("sudoku", 0.0)])
def test_pretraining_items_carry_the_distractor_at_the_flag_fraction(task_name, fraction):
    """`training_items` replaces a --distractor_fraction share of the generated items by the task's distractor
    (binomial 99.9% bounds over 1,500 items), and at 0 returns the generator's items unchanged."""
    task = get_task(task_name)
    replaced = total = 0
    for step in range(6):
        plain = task.generate(np.random.default_rng([0, step]), 250)
        items = training_items(task, 0, step, 250, fraction)
        assert len(items) == len(plain)
        for original, item in zip(plain, items, strict=True):
            assert item == original or item == task.distractor(original)
            replaced += item != original
            total += 1
    if fraction == 0.0:
        assert replaced == 0
    else:
        assert abs(replaced / total - fraction) < 3.3 * np.sqrt(fraction * (1 - fraction) / total)


def test_distractor_fraction_is_checked_and_recorded_only_when_used(tmp_path):
    """A fraction outside [0, 1] is refused naming the flag; the run record holds it only when it is used, so the
    records of earlier runs still resume."""
    from experiments import lm_pretrain  # settings and record only: nothing runs

    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="--distractor_fraction"):
            lm_pretrain.PretrainSettings(workdir=str(tmp_path), distractor_fraction=bad)
    tokenizer = char_tokenizer()
    plain = lm_pretrain.build_run_config(lm_pretrain.PretrainSettings(workdir=str(tmp_path)), tokenizer)
    used = lm_pretrain.build_run_config(lm_pretrain.PretrainSettings(workdir=str(tmp_path), distractor_fraction=0.5),
                                        tokenizer)
    assert "distractor_fraction" not in plain["settings"]
    assert used["settings"]["distractor_fraction"] == 0.5


# ------------------------------------------------------------------------------------- sampled evaluation

SUDOKU = get_task("sudoku")
RUN_CONFIG = {"task": "sudoku", "template": "compact", "prompt_length": 17, "gen_length": 20}


def scripted_sampler(answers_per_call):
    """A fake sampler whose rows are the given completion texts, in order: the layout of a real sampler's output
    (prompt columns, then the tokenised completion), so the scoring path is the real one."""
    tokenizer = char_tokenizer()
    calls = iter(answers_per_call)

    def sample(params, prompt, prompt_mask, key):
        del params, prompt_mask, key
        texts = next(calls)
        assert len(texts) == prompt.shape[0]
        rows = [list(np.asarray(row)) + tokenizer.encode(text)[: RUN_CONFIG["gen_length"]]
                + [tokenizer.eos_id] * (RUN_CONFIG["gen_length"] - len(tokenizer.encode(text)))
                for row, text in zip(prompt, texts, strict=True)]
        return np.asarray(rows, np.int32)

    return sample, tokenizer


def test_sampled_rewards_are_items_by_samples_with_known_values():
    """k completions per item come back as [items, k] in item order, and the summary's mean, solved fraction and
    pass@k are the known values of the scripted answers."""
    items = SUDOKU.load_test(None)[:3]
    right = [sudoku.target_completion(item) for item in items]
    wrong = [sudoku.target_completion(sudoku.distractor_item(item)) for item in items]
    # item 0: right, wrong; item 1: wrong, wrong; item 2: right, right
    texts = [right[0], wrong[0], wrong[1], wrong[1], right[2], right[2]]
    sample, tokenizer = scripted_sampler([texts])
    rewards = sampled_item_rewards(sample, None, RUN_CONFIG, tokenizer, items, None, num_samples=2)
    wrong_rewards = [SUDOKU.reward(w, item) for w, item in zip(wrong, items, strict=True)]
    np.testing.assert_allclose(rewards, [[1.0, wrong_rewards[0]], [wrong_rewards[1]] * 2, [1.0, 1.0]])
    summary = sampled_summary(rewards)
    assert summary["pass_at_k"] == pytest.approx(2 / 3)
    assert summary["exact_fraction"] == pytest.approx(3 / 6)
    assert summary["mean_reward"] == pytest.approx(rewards.mean())
    assert (summary["k"], summary["items"]) == (2, 3)


def test_paired_sampled_evaluation_pairs_item_means_and_pass_indicators():
    """The paired sampled difference is the paired difference of per-item mean rewards, and pass@k's of the
    per-item 'any sample solved' indicators; shapes must agree."""
    start = np.array([[1.0, 0.5], [0.5, 0.5], [0.0, 0.25], [1.0, 1.0]])
    end = np.array([[1.0, 1.0], [1.0, 0.5], [0.5, 0.25], [1.0, 0.0]])
    paired = paired_sampled_evaluation(start, end)
    expected = paired_difference(start.mean(1), end.mean(1))
    assert paired["difference"]["mean"] == pytest.approx(expected["mean"])
    assert paired["difference"]["half_width"] == pytest.approx(expected["half_width"])
    assert paired["pass_difference"]["mean"] == pytest.approx((3 - 2) / 4)
    assert paired["start"]["pass_at_k"] == 0.5 and paired["end"]["pass_at_k"] == 0.75
    with pytest.raises(ValueError, match="differ in shape"):
        paired_sampled_evaluation(start, end[:3])
    with pytest.raises(ValueError, match="must be \\[items, k\\]"):
        sampled_summary(start.ravel())

