"""benchmarks.population_throughput on the tiny environment: one JSON object whose rates follow from its timings."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _run(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.population_throughput",
                           "--config.env_name=tiny/point_target",
                           *args], capture_output=True, text=True, timeout=600)


def test_rates_are_member_steps_over_median_round_seconds():
    """For each P: member-env-steps/s = P * env steps per iteration / the median of the timed rounds, for the
    vmapped population and for the P sequential single runs, and their ratio; bad sizes are refused."""
    result = _run("--population_sizes=2", "--timed_rounds=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (entry,) = report["results"]
    steps = 2 * report["config"]["env_steps_per_iteration"]
    for kind in ("vmapped", "sequential"):
        rounds = sorted(entry[f"{kind}_round_s"])
        assert len(rounds) == 3
        assert abs(entry[f"{kind}_member_env_steps_per_s"] * rounds[1] - steps) < 1e-6 * steps
    ratio = entry["vmapped_member_env_steps_per_s"] / entry["sequential_member_env_steps_per_s"]
    assert abs(entry["vmapped_over_sequential"] - ratio) < 1e-9
    refused = _run("--population_sizes=0")
    assert refused.returncode == 2 and "--population_sizes" in refused.stderr
