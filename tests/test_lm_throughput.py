"""benchmarks.lm_throughput on a tiny configuration: prints one JSON object whose rates follow from its timings."""
import json
import subprocess
import sys

TINY = ["--vocab_size=16", "--d_model=16", "--n_layers=1", "--n_heads=2", "--mlp_hidden=32", "--batch=2",
        "--prompt_length=4", "--gen_length=8", "--block_length=8", "--steps=8"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.lm_throughput", *TINY, *args], capture_output=True,
                          text=True, timeout=300)


def test_throughput_json_rates_are_tokens_over_median_seconds():
    """The JSON reports the median of the timed calls and tokens/s = counted tokens / that median, for the sampler
    (batch x gen_length) and the ELBO training step (batch x (prompt + gen) tokens); --repeats < 3 is refused."""
    result = _run("--repeats=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert len(report["sampler_timings"]) == len(report["train_timings"]) == 3
    assert report["sampler_seconds_median"] == sorted(report["sampler_timings"])[1]
    assert report["train_step_seconds_median"] == sorted(report["train_timings"])[1]
    assert abs(report["sampler_tokens_per_second"] * report["sampler_seconds_median"] - 2 * 8) < 1e-6
    assert abs(report["train_tokens_per_second"] * report["train_step_seconds_median"] - 2 * 12) < 1e-6
    refused = _run("--repeats=2")
    assert refused.returncode != 0 and "--repeats must be >= 3" in refused.stderr
