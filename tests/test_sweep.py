"""Tests of the local sweep runner launch/sweep.py (no JAX: the launched experiment is a stub module)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from launch import sweep

# A stand-in experiment: records its argv and JAX distributed environment, fails for seed 1.
STUB = textwrap.dedent("""
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    env = {k: os.environ.get(k) for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")}
    with open(os.path.join(args["workdir"], "record.json"), "w") as handle:
        json.dump({"argv": sys.argv[1:], "env": env}, handle)
    print("stub ran", args["seed"])
    sys.exit(3 if args["seed"] == "1" else 0)
""")


def test_build_runs_is_the_full_grid_with_the_experiment_flags(tmp_path):
    """algos x betas x seeds gives one run per combination, each with its own directory and the flag names every
    experiment shares (--config.algo, --config.dipod_beta, --seed, --workdir) after the --extra arguments, the
    group being the algorithm."""
    runs = sweep.build_runs("lm_rl", ["fpo", "spg"], [0.0, 0.05], [0, 1, 2], str(tmp_path), ["--steps=5"])
    assert len(runs) == 12 and len({run["workdir"] for run in runs}) == 12
    first = runs[0]
    assert first["name"] == "fpo_beta0_seed0" and first["status"] == "pending"
    assert first["command"][1:] == ["-m", "experiments.lm_rl", "--steps=5", "--config.algo=fpo",
                                    "--config.dipod_beta=0", "--seed=0", f"--workdir={tmp_path}/fpo_beta0_seed0"]
    assert (first["group"], first["algo"]) == ("fpo", "fpo")
    assert runs[-1]["name"] == "spg_beta0.05_seed2"
    control = sweep.build_runs("control", ["fpo++"], [0.05], [7], str(tmp_path))[0]
    assert "--config.algo=fpo++" in control["command"]
    assert f"--workdir={tmp_path}/fpo++_beta0.05_seed7" in control["command"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(experiment="atari"), "--experiment"),
    (dict(algos=[]), "--algos is empty"),
    (dict(seeds=[0, 0]), "--seeds has repeated"),
    (dict(betas=[-0.1]), "--betas must all be finite and >= 0"),
    (dict(betas=[float("inf")]), "--betas must all be finite and >= 0"),
    (dict(out_root=""), "--out_root is required"),
    (dict(extra_args=["--config.dipod_beta=0.1"]), "--extra=--config.dipod_beta=0.1: the sweep sets"),
])
def test_build_runs_rejects_bad_grids(kwargs, message):
    """Unknown experiments, empty or repeated axes, negative betas and a missing root raise ValueError naming
    the flag."""
    arguments = dict(experiment="lm_rl", algos=["fpo"], betas=[0.0], seeds=[0], out_root="/tmp/sweep")
    with pytest.raises(ValueError, match=message):
        sweep.build_runs(**{**arguments, **kwargs})


def test_distributed_env_gives_each_run_its_own_port():
    """Run i of a multi-host sweep gets the coordinator port base + i and this host's id; a single host gets no
    variables; an inconsistent process id or address is refused."""
    assert sweep.distributed_env(2, None, 1, 0) == {}
    assert sweep.distributed_env(2, "node0:9000", 4, 3) == {
        "JAX_COORDINATOR_ADDRESS": "node0:9002", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    with pytest.raises(ValueError, match="--process_id"):
        sweep.distributed_env(0, "node0:9000", 2, 2)
    with pytest.raises(ValueError, match="host:port"):
        sweep.distributed_env(0, "node0", 2, 0)
    with pytest.raises(ValueError, match="--coordinator_address"):
        sweep.distributed_env(0, None, 2, 0)


def test_run_sweep_launches_every_run_and_records_outcomes(tmp_path, monkeypatch):
    """Each run's process gets its own argv and environment, writes to its log, and the manifest records
    succeeded (exit 0) or failed (exit code kept); a rerun relaunches only the failed runs."""
    (tmp_path / "stub_experiment.py").write_text(STUB)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    root = tmp_path / "sweep"
    runs = sweep.build_runs("lm_rl", ["fpo"], [0.0, 0.05], [0, 1], str(root), ["--steps=2"],
                            module="stub_experiment")
    manifest = str(tmp_path / "manifest.json")
    finished, stop_signal = sweep.run_sweep(runs, manifest, max_parallel=2,
                                            env_for_run=lambda i: sweep.distributed_env(i, "localhost:7000", 2, 1))
    assert stop_signal is None
    assert [run["status"] for run in finished] == ["succeeded", "failed", "succeeded", "failed"]
    assert [run["returncode"] for run in finished] == [0, 3, 0, 3]
    assert sweep.read_manifest(manifest) == json.loads(json.dumps(finished))
    for index, run in enumerate(finished):
        record = json.loads((root / run["name"] / "record.json").read_text())
        assert record["argv"] == run["command"][3:]
        assert record["env"] == {"JAX_COORDINATOR_ADDRESS": f"localhost:{7000 + index}", "JAX_NUM_PROCESSES": "2",
                                 "JAX_PROCESS_ID": "1"}
        assert f"stub ran {run['seed']}" in (root / run["name"] / sweep.LOG_FILE).read_text()
    (root / finished[0]["name"] / "record.json").unlink()
    rerun, _ = sweep.run_sweep(sweep.read_manifest(manifest), manifest)
    assert not (root / finished[0]["name"] / "record.json").exists()
    assert [run["returncode"] for run in rerun] == [0, 3, 0, 3]
    assert (root / finished[1]["name"] / sweep.LOG_FILE).read_text().count("stub ran 1") == 2


def test_command_line_dry_run_writes_the_manifest(tmp_path):
    """`python -m launch.sweep --dry_run` prints one command per configuration and writes a pending manifest."""
    result = subprocess.run([sys.executable, "-m", "launch.sweep", f"--out_root={tmp_path}", "--algos=fpo,spg",
                             "--betas=0,0.05", "--seeds=0", "--dry_run", "--extra=--steps=3"],
                            capture_output=True, text=True, check=True, cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4 and all("-m experiments.lm_rl --steps=3 --config.algo=" in line for line in lines)
    runs = sweep.read_manifest(str(tmp_path / sweep.MANIFEST_FILE))
    assert [run["status"] for run in runs] == ["pending"] * 4


def test_summarize_groups_seeds_with_a_t_interval(tmp_path):
    """Final values 0.2, 0.4, 0.6 of three seeds give mean 0.4 and the 95% t interval
    0.4 +- 4.3027 * 0.2 / sqrt(3); a run without metrics is reported missing; the plot is written."""
    runs = sweep.build_runs("lm_rl", ["fpo"], [0.05], [0, 1, 2, 3], str(tmp_path))
    for run, final in zip(runs[:3], (0.2, 0.4, 0.6), strict=True):
        os.makedirs(run["workdir"])
        with open(os.path.join(run["workdir"], "metrics.jsonl"), "w") as handle:
            for step, value in ((0, 0.0), (10, final / 2), (20, final)):
                handle.write(json.dumps({"step": step, "eval/mean_reward": value}) + "\n")
            handle.write(json.dumps({"step": 20, "train/loss": 1.0}) + "\n")
    summary = sweep.summarize(runs, "eval/mean_reward")
    group = summary["groups"]["fpo_beta0.05"]
    assert group["seeds"] == [0, 1, 2] and summary["missing"] == ["fpo_beta0.05_seed3"]
    assert group["mean"] == pytest.approx(0.4)
    assert group["high"] - group["mean"] == pytest.approx(4.302653 * 0.2 / np.sqrt(3), rel=1e-5)
    assert group["mean"] - group["low"] == pytest.approx(group["high"] - group["mean"])
    sweep.plot_summary(summary, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_summarize_paired_reads_each_runs_paired_evaluation(tmp_path):
    """Three seeds whose paired evaluations (written as experiments.lm_rl writes them) improved by 0.05, 0.07
    and 0.09: the group's difference is 0.07 with the t interval over seeds 4.3027 * 0.02 / sqrt(3); every
    seed's own interval lies above 0; a run without a paired evaluation is missing; the table lists the group."""
    from dipod_jax.lm.evaluation import paired_evaluation

    runs = sweep.build_runs("lm_rl", ["diffu_grpo"], [0.0], [0, 1, 2, 3], str(tmp_path))
    rng = np.random.default_rng(0)
    for run, gain in zip(runs[:3], (0.05, 0.07, 0.09), strict=True):
        os.makedirs(run["workdir"])
        start = rng.uniform(0.2, 0.6, size=200)
        end = start + gain + rng.normal(0.0, 0.01, size=200)
        end += gain - (end - start).mean()  # the exact mean difference
        with open(os.path.join(run["workdir"], sweep.PAIRED_FILE), "w") as handle:
            json.dump(paired_evaluation(start, end), handle)
    summary = sweep.summarize_paired(runs)
    group = summary["groups"]["diffu_grpo_beta0"]
    assert summary["missing"] == ["diffu_grpo_beta0_seed3"] and group["seeds"] == [0, 1, 2]
    assert [seed["difference"] for seed in group["per_seed"]] == pytest.approx([0.05, 0.07, 0.09])
    assert group["difference"]["mean"] == pytest.approx(0.07)
    assert group["difference"]["half_width"] == pytest.approx(4.302653 * 0.02 / np.sqrt(3), rel=1e-5)
    assert group["all_seeds_above_zero"]
    table = sweep.paired_table(summary)
    assert "| diffu_grpo | 0 |" in table and "+0.070 ±" in table
