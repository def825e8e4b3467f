"""benchmarks.lm_throughput: the FLOP formula on known values, bad flags refused, and a tiny run whose JSON rates
follow from its timings."""
import json
import re
import subprocess
import sys

import pytest

from benchmarks.lm_throughput import pass_flops, sampler_flops
from dipod_jax.models.llada import LLaDAConfig

pytestmark = pytest.mark.integration

TINY = ["--vocab_size=16", "--d_model=16", "--n_layers=1", "--n_heads=2", "--mlp_hidden=32", "--batch=2",
        "--prompt_length=4", "--gen_length=8", "--block_length=4", "--steps=8", "--samplers=exact,dual",
        "--matmul_size=64"]


def _run(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.lm_throughput", *TINY, *args], capture_output=True,
                          text=True, timeout=300)


def test_pass_flops_known_values():
    """One layer, d_model 16, 2 heads (kv width 16), mlp 32, vocab 16: projections 4 * 16 * 16 + 3 * 16 * 32 = 2560
    weights, so a query costs 2 * 2560 + 4 * K * 16 FLOPs and a logit position 2 * 16 * 16; a sampler call adds
    its full and cached passes (cached windows counted by position)."""
    config = LLaDAConfig.tiny(16, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32)
    assert pass_flops(config, 12, 12, 12) == 12 * (5120 + 4 * 12 * 16) + 12 * 512
    assert pass_flops(config, 4, 12, 0) == 4 * (5120 + 4 * 12 * 16)
    stats = {"full_passes": 2, "cached_passes": 6, "cached_positions": 24}
    expected = 3 * (2 * pass_flops(config, 12, 12, 4) + 6 * pass_flops(config, 4, 12, 4))
    assert sampler_flops(config, 3, 12, 4, 4, stats) == expected


def test_batch_zero_is_refused_by_the_program():
    """--batch=0 and a block length that does not divide gen_length stop the program with one line naming the
    flag and exit status 2, before anything is compiled."""
    for flag, fragment in (("--batch=0", "--batch=0"), ("--block_length=3", "--block_length=3")):
        result = _run(flag)
        errors = [line for line in result.stderr.splitlines() if ": error: " in line]
        assert result.returncode == 2 and len(errors) == 1 and fragment in errors[0], result.stderr[-2000:]


VALID = dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, batch=2, prompt_length=4, gen_length=8,
             block_length=4, steps=8, num_draws=2, temperature=1.0, samplers=["exact", "dual"], threshold=0.9,
             dtype="float32", repeats=3, peak_tflops=0.0, matmul_size=64)


@pytest.mark.parametrize("overrides, message", [
    (dict(batch=0), "--batch=0 must be a positive integer"),
    (dict(block_length=3), "--gen_length=8 must be divisible by --block_length=3"),
    (dict(repeats=2), "--repeats=2 must be >= 3"),
    (dict(n_heads=3), "--d_model=16 must be divisible by --n_heads=3"),
    (dict(steps=3), "--steps=3 must be a multiple of the number of blocks 2"),
    (dict(samplers=["exact", "fast"]), "--samplers=exact,fast must be distinct names"),
    (dict(samplers=[]), "--samplers= must be distinct names"),
    (dict(threshold=1.5), "--threshold=1.5 must be in (0, 1]"),
    (dict(temperature=-1.0), "--temperature=-1.0 must be a finite number >= 0"),
])
def test_nonsense_flags_are_refused(overrides, message):
    """Each nonsense flag value raises a UsageError (a ValueError) naming the flag; the valid set passes."""
    from benchmarks.lm_throughput import validate_flags

    validate_flags(VALID)
    with pytest.raises(ValueError, match=re.escape(message)):
        validate_flags({**VALID, **overrides})


def test_throughput_json_rates_are_tokens_over_median_seconds():
    """One JSON line: for each sampler variant and the ELBO training step, the median of the timed rounds and
    tokens/s = counted tokens / that median (batch x gen_length generated tokens; batch x (prompt + gen) for the
    training step), the speed-up over the exact sampler, the pass counts (exact: steps full passes; dual: one full
    pass a block, the other steps cached over the 4-position block) and MFU = TFLOP/s / peak."""
    result = _run("--repeats=3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    exact, dual, train = report["samplers"]["exact"], report["samplers"]["dual"], report["train_step"]
    for entry, tokens in ((exact, 2 * 8), (dual, 2 * 8), (train, 2 * 12)):
        assert len(entry["timings"]) == 3 and entry["seconds_median"] == sorted(entry["timings"])[1]
        assert abs(entry["tokens_per_second"] * entry["seconds_median"] - tokens) < 1e-6
        assert abs(entry["mfu"] * report["peak_tflops"] - entry["tflops_per_s"]) < 1e-9
    assert (exact["full_passes"], exact["cached_passes"]) == (8, 0)
    assert (dual["full_passes"], dual["cached_passes"], dual["cached_positions"]) == (2, 6, 24)
    assert abs(dual["speedup_vs_exact"] - exact["seconds_median"] / dual["seconds_median"]) < 1e-9
