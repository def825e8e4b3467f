"""`--workdir=DIR --resume` alone continues a run: the harness records the first process's arguments in
DIR/command.json and run_program parses them before the typed ones (a typed flag wins; the run record still
refuses a changed setting that alters results)."""
import json
import os
import subprocess
import sys

import pytest

from dipod_jax.run import program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_recorded_arguments_come_before_the_typed_ones_only_on_resume(tmp_path):
    (tmp_path / program.COMMAND_FILE).write_text(json.dumps({"arguments": ["--steps=2", "--batch=2"]}))
    typed = ["prog", f"--workdir={tmp_path}", "--resume", "--steps=4"]
    assert program.with_recorded_arguments(typed) == ["prog", "--steps=2", "--batch=2", *typed[1:]]
    assert program.with_recorded_arguments(["prog", "--workdir", str(tmp_path), "--resume=true"])[1:3] == [
        "--steps=2", "--batch=2"]
    for not_resuming in (["prog", f"--workdir={tmp_path}"], ["prog", f"--workdir={tmp_path}", "--resume", "--noresume"],
                         ["prog", f"--workdir={tmp_path / 'elsewhere'}", "--resume"]):
        assert program.with_recorded_arguments(not_resuming) == not_resuming
    # The flag's default workdir (double_drift has one) is used when none is typed.
    assert program.with_recorded_arguments(["prog", "--resume"], str(tmp_path))[1:3] == ["--steps=2", "--batch=2"]
    (tmp_path / program.COMMAND_FILE).write_text("{")
    with pytest.raises(program.UsageError, match="command.json is not readable"):
        program.with_recorded_arguments(typed)


@pytest.mark.integration
def test_bare_resume_restores_the_recorded_settings_and_refuses_a_typed_change(tmp_path):
    """A tiny pre-training run started with several flags continues with `--workdir=DIR --resume --steps=4` alone
    (its settings come back, or its record would refuse the resume); a typed --batch that differs is refused in
    one line naming the setting."""
    workdir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": REPO}

    def run(*arguments):
        return subprocess.run([sys.executable, "-m", "experiments.lm_pretrain", f"--workdir={workdir}", *arguments],
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=600)

    first = run("--model_size=tiny", "--steps=2", "--batch=2", "--eval_interval=2", "--eval_items=2",
                "--warmup_steps=0", "--decay_steps=10")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.load(open(os.path.join(workdir, program.COMMAND_FILE)))["arguments"][:2] == [
        "--model_size=tiny", "--steps=2"]
    resumed = run("--resume", "--steps=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.load(open(os.path.join(workdir, program.SUMMARY_FILE)))["step"] == 4
    assert "completed at step 4" in resumed.stdout and "summary: " in resumed.stdout
    changed = run("--resume", "--steps=6", "--batch=4")
    assert changed.returncode == 2 and "settings.batch: 2 -> 4" in changed.stderr, changed.stderr[-3000:]
