"""Learning regression test: RL post-training with this code raises the reward it optimises, and a placebo does not.

The guard that PPO trainers get from "CartPole reaches N": a tiny Sudoku model pre-trained with half of its
completions replaced by the distractor (digits 1 and 2 exchanged), so that its samples solve cells sometimes and
its greedy answer is often the wrong mode (the RL test bed of docs/results), then a short diffu-GRPO run with the
CPU preset, beside the same run on rewards shuffled within groups. Measured when written (2026-12-06, 2-core
CPU): see the README's RL section; the margins below sit well inside the measured gap.
"""
import numpy as np
import pytest

pytestmark = pytest.mark.integration

PRETRAIN_STEPS = 1000
RL_STEPS = 60
TEST_ITEMS = 200
SAMPLES = 4


@pytest.fixture(scope="module")
def headroom_runs(tmp_path_factory):
    from dipod_jax.lm.tasks import sudoku
    from experiments import lm_pretrain, lm_rl

    root = tmp_path_factory.mktemp("learns")
    test_path = root / "test.csv"
    items = sudoku.load_test_set()[:TEST_ITEMS]
    test_path.write_text("Puzzle,Solution\n" + "".join(f"{item.puzzle},{item.solution}\n" for item in items))
    start_dir = str(root / "start")
    lm_pretrain.train(lm_pretrain.PretrainSettings(
        workdir=start_dir, task="sudoku", model_size="tiny", steps=PRETRAIN_STEPS, distractor_fraction=0.5,
        eval_interval=PRETRAIN_STEPS, eval_items=8), show_progress=False)
    results = {}
    for name, placebo in (("real", False), ("placebo", True)):
        results[name] = lm_rl.train(lm_rl.RLRunSettings(
            workdir=str(root / name), init_dir=start_dir, test_path=str(test_path), steps=RL_STEPS,
            eval_interval=RL_STEPS, eval_items=8, sampled_eval_k=SAMPLES, num_devices=1, plot=False,
            config_overrides=(("algo", "diffu_grpo"), ("placebo", placebo))), show_progress=False)
    return results


def test_rl_raises_the_sampled_reward_and_the_placebo_does_not(headroom_runs):
    """The real run's paired change of the mean sampled reward (what RL optimises) has its 95% interval above
    +0.02 and exceeds the placebo's by at least 0.03."""
    real, placebo = headroom_runs["real"], headroom_runs["placebo"]
    assert real.stopped == placebo.stopped == "completed"
    real_change, placebo_change = real.paired_sampled_eval, placebo.paired_sampled_eval
    assert real_change["n"] == placebo_change["n"] == TEST_ITEMS
    assert real_change["low"] > 0.02, real_change
    assert real_change["mean"] - placebo_change["mean"] > 0.03, (real_change, placebo_change)


def test_rl_raises_the_greedy_reward_above_the_placebo(headroom_runs):
    """The greedy answer moves too: the real run's paired greedy change exceeds the placebo's by at least 0.03."""
    real, placebo = headroom_runs["real"].paired_eval, headroom_runs["placebo"].paired_eval
    assert np.isfinite(real["mean"]) and np.isfinite(placebo["mean"])
    assert real["mean"] - placebo["mean"] > 0.03, (real, placebo)
