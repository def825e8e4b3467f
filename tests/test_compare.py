"""Tests of launch.compare: runs grouped by their record without the seed, curves with bands, the table."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from launch import compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(directory, seed, placebo, rewards, paired=None):
    """A run directory as lm_rl leaves it: the record, metrics (eval every 10 steps, train every step)."""
    os.makedirs(directory)
    record = {"experiment": "lm_rl", "settings": {"seed": seed, "test_digest": f"sha256:{seed}"},
              "rl_config": {"algo": "diffu_grpo", "placebo": placebo, "dipod_beta": 0.0}}
    with open(os.path.join(directory, "rl_config.json"), "w") as handle:
        json.dump(record, handle)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as handle:
        for index, reward in enumerate(rewards):
            handle.write(json.dumps({"step": 10 * index, "eval/mean_reward": reward}) + "\n")
            handle.write(json.dumps({"step": 10 * index + 1, "train/kl_to_start": 0.1 * index}) + "\n")
    if paired is not None:
        with open(os.path.join(directory, "paired_eval.json"), "w") as handle:
            json.dump({"difference": {"mean": paired}, "sampled": {"difference": {"mean": paired / 2}}}, handle)
    return str(directory)


def test_runs_group_by_setting_with_bands_and_a_table(tmp_path):
    """Seeds of one setting form a group (digests ignored), labelled by the field that differs (or by the fields
    asked for); the group curve is the mean over seeds at shared steps with the 95% t half-width; the table gives
    the last values (or each run's mean of its last N), the step reached and the paired changes over seeds, and
    says n = 1 instead of a NaN interval."""
    runs = [compare.load_run(write_run(tmp_path / "a0", 0, False, [0.5, 0.6, 0.7], paired=0.2)),
            compare.load_run(write_run(tmp_path / "a1", 1, False, [0.5, 0.8, 0.9], paired=0.4)),
            compare.load_run(write_run(tmp_path / "p0", 0, True, [0.5, 0.5], paired=0.0))]
    groups = compare.group_runs(runs)
    assert sorted(groups) == ["placebo=False", "placebo=True"]
    assert [run["seed"] for run in groups["placebo=False"]] == [0, 1]
    steps, mean, half_width = compare.group_curve(groups["placebo=False"], "eval/mean_reward")
    assert steps == [0, 10, 20]
    np.testing.assert_allclose(mean, [0.5, 0.7, 0.8])
    np.testing.assert_allclose(half_width[1], 12.7062047 * np.std([0.6, 0.8], ddof=1) / np.sqrt(2), rtol=1e-6)
    table = compare.summary_table(groups, ["eval/mean_reward"])
    assert table["placebo=False"]["paired"]["mean"] == pytest.approx(0.3)
    assert table["placebo=False"]["paired_sampled"]["mean"] == pytest.approx(0.15)
    text = compare.table_text(table, ["eval/mean_reward"])
    assert "| placebo=False | 0,1 | 20 | 0.800 ± " in text and "+0.300 ± " in text
    assert "| placebo=True | 0 | 10 | 0.500 (n = 1) | +0.000 (n = 1) | +0.000 (n = 1) |" in text and "nan" not in text
    assert compare.summary_table(groups, ["eval/mean_reward"], last=2)["placebo=False"]["eval/mean_reward"][
        "mean"] == pytest.approx((0.65 + 0.85) / 2)
    assert sorted(compare.group_runs(runs, ["dipod_beta", "placebo"])) == ["dipod_beta=0.0, placebo=False",
                                                                            "dipod_beta=0.0, placebo=True"]
    path = str(tmp_path / "figure.png")
    assert compare.plot_groups(groups, ["eval/mean_reward", "train/kl_to_start", "train/absent"], path, 3) == [
        "eval/mean_reward", "train/kl_to_start"]
    assert os.path.getsize(path) > 0
    assert [compare.y_scale(metric, ["grad_norm"]) for metric in ["train/kl_to_start", "grad_norm", "cfm_loss"]] == [
        "symlog", "log", "linear"]
    assert compare.plot_groups(groups, ["eval/mean_reward"], path, log_y=["eval/mean_reward"]) == ["eval/mean_reward"]
    # On a log axis the curve is the geometric mean: the logs of 0.5 / 0.5 and 0.8 / 0.6 at steps 1 and 2.
    steps, log_mean, _ = compare.group_curve(groups["placebo=False"], "eval/mean_reward", log=True)
    np.testing.assert_allclose(np.exp(log_mean), [0.5, np.sqrt(0.6 * 0.8), np.sqrt(0.7 * 0.9)])
    with pytest.raises(compare.UsageError, match="--log_y=eval/mean_reward"):
        compare.group_curve([compare.load_run(write_run(tmp_path / "z", 2, False, [0.0, 1.0]))], "eval/mean_reward",
                            log=True)


def test_moving_average_is_a_trailing_mean():
    np.testing.assert_allclose(compare.moving_average(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(compare.moving_average(np.array([1.0, 3.0]), 1), [1.0, 3.0])


def test_command_line_writes_figure_and_table_and_refuses_a_non_run(tmp_path):
    """The program on two run directories prints the table and the paths it wrote; a directory without a run
    record is one line with exit status 2."""
    first = write_run(tmp_path / "r0", 0, False, [0.1, 0.2])
    second = write_run(tmp_path / "r1", 1, False, [0.1, 0.4])
    out = str(tmp_path / "cmp.png")
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-m", "launch.compare", first, second, f"--out={out}"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| lm_rl | 0,1 | 10 | 0.300 ± " in result.stdout and f"figure: {out}" in result.stdout
    assert os.path.exists(out) and json.load(open(str(tmp_path / "cmp.json")))["lm_rl"]["seeds"] == [0, 1]
    result = subprocess.run([sys.executable, "-m", "launch.compare", str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=120)
    assert result.returncode == 2 and "no run record" in result.stderr and "Traceback" not in result.stderr
