"""benchmarks.lm_sampler_accuracy and benchmarks.lm_rl_throughput: variant labels and flag validation (no runs)."""
import pytest

from benchmarks import lm_rl_throughput, lm_sampler_accuracy

ACCURACY_FLAGS = dict(checkpoint_dir="/tmp/x", samplers=["exact", "dual_parallel"], thresholds=["0.9", "0.5"],
                      block_length=0, steps=0, refresh_interval=0, repeats=3, seed=0)
RL_FLAGS = dict(checkpoint_dir="/tmp/x", samplers=["exact", "parallel"], threshold=0.9, refresh_interval=0,
                seeds=["0", "1"], steps=20, algo="fpo", block_length=0, diffusion_steps=0)


def test_accuracy_variants_expand_thresholds_and_refresh():
    """Each *_parallel sampler appears once per threshold with that threshold; caches get the refresh interval,
    the exact sampler gets no options."""
    variants = lm_sampler_accuracy.variants(["exact", "dual", "parallel", "prefix_parallel"], [0.9, 0.5], 2)
    assert variants == {"exact": {}, "dual": {"cache": "dual", "refresh_interval": 2},
                        "parallel@0.9": {"threshold": 0.9}, "parallel@0.5": {"threshold": 0.5},
                        "prefix_parallel@0.9": {"cache": "prefix", "refresh_interval": 2, "threshold": 0.9},
                        "prefix_parallel@0.5": {"cache": "prefix", "refresh_interval": 2, "threshold": 0.5}}
    assert lm_sampler_accuracy.validate(ACCURACY_FLAGS) == [0.9, 0.5]


@pytest.mark.parametrize("module, base, overrides, message", [
    (lm_sampler_accuracy, ACCURACY_FLAGS, dict(checkpoint_dir=None), "--checkpoint_dir"),
    (lm_sampler_accuracy, ACCURACY_FLAGS, dict(samplers=["fast"]), "--samplers"),
    (lm_sampler_accuracy, ACCURACY_FLAGS, dict(thresholds=["1.5"]), "--thresholds"),
    (lm_sampler_accuracy, ACCURACY_FLAGS, dict(thresholds=["high"]), "--thresholds"),
    (lm_sampler_accuracy, ACCURACY_FLAGS, dict(refresh_interval=-1), "--refresh_interval"),
    (lm_rl_throughput, RL_FLAGS, dict(samplers=["exact", "exact"]), "--samplers"),
    (lm_rl_throughput, RL_FLAGS, dict(seeds=["a"]), "--seeds"),
    (lm_rl_throughput, RL_FLAGS, dict(steps=2), "--steps"),
    (lm_rl_throughput, RL_FLAGS, dict(block_length=-8), "--block_length"),
])
def test_bad_flags_raise_naming_the_flag(module, base, overrides, message):
    """Missing checkpoint, unknown or repeated samplers, thresholds outside (0, 1] or not numbers, negative
    intervals and lengths, bad seeds and too few steps raise ValueError naming the flag."""
    with pytest.raises(ValueError, match=message):
        module.validate({**base, **overrides})
