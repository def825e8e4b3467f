"""The RL rollout sampler option (RLConfig.sampler, experiments.lm_rl --sampler) reaches dipod_jax.lm.sampler."""
import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm import rl
from dipod_jax.lm.rl_config import RLConfig
from dipod_jax.models.llada import LLaDA, LLaDAConfig

# One layer: the key / value caches refreshed once per block are exact (see tests/test_sampler_cached.py).
MODEL_CONFIG = LLaDAConfig.tiny(8, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)
CONFIG = RLConfig(num_prompts=2, num_generations=4, gen_length=8, block_length=4, diffusion_steps=8,
                  rollout_temperature=0.0)


@pytest.mark.parametrize("overrides, message", [
    (dict(sampler="fast"), "sampler: must be one of"),
    (dict(sampler_threshold=0.0), "sampler_threshold: must be"),
    (dict(sampler_refresh_interval=-1), "sampler_refresh_interval: must be"),
    (dict(sampler="dual_parallel", remasking="random"), "sampler: must be a variant without parallel"),
])
def test_invalid_sampler_settings_name_the_field(overrides, message):
    """An unknown sampler, a threshold outside (0, 1] and parallel decoding with random remasking are refused."""
    with pytest.raises(ValueError, match=message):
        RLConfig(**overrides)


def test_sample_fn_uses_the_configured_sampler():
    """make_sample_fn with sampler "dual" / "dual_parallel" (threshold 1.0: the schedule) / "prefix" refreshed every
    2 steps runs the cached sampler: on a one-layer model, greedy, it returns the exact sampler's rows, and with
    a low threshold
    (every step unmasks all candidates above it) it fills every position too."""
    with jax.default_matmul_precision("highest"):  # full float32 on GPUs too: differently shaped matmuls agree
        _check_sample_fns()


def _check_sample_fns():
    model = LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    prompts = np.repeat(np.array([[3, 4], [0, 6]], np.int32), CONFIG.num_generations, axis=0)
    prompt_mask = prompts != 0
    def sample(config):
        return np.asarray(rl.make_sample_fn(config, graphdef, MODEL_CONFIG.mask_token_id)(
            params, frozen, prompts, prompt_mask, jax.random.key(0)))

    exact = sample(CONFIG)
    np.testing.assert_array_equal(sample(dataclasses.replace(CONFIG, sampler="dual")), exact)
    np.testing.assert_array_equal(
        sample(dataclasses.replace(CONFIG, sampler="dual_parallel", sampler_threshold=1.0)), exact)
    np.testing.assert_array_equal(sample(dataclasses.replace(CONFIG, sampler="prefix", sampler_refresh_interval=2)),
                                  exact)
    fast = sample(dataclasses.replace(CONFIG, sampler="dual_parallel", sampler_threshold=0.05))
    np.testing.assert_array_equal(fast[:, :2], prompts)
    assert not (fast == MODEL_CONFIG.mask_token_id).any()


def test_experiment_sampler_flags_reach_the_config():
    """--config.sampler, --config.sampler_threshold and --config.sampler_refresh_interval reach the RLConfig of
    experiments.lm_rl (unset: the exact sampler); with a paper preset, the preset's sampler lengths stay."""
    from experiments import lm_rl

    info = {"task": "sudoku", "template": "compact", "prompt_length": 20, "gen_length": 24}
    overrides = (("sampler", "prefix_parallel"), ("sampler_threshold", 0.8), ("sampler_refresh_interval", 2))
    config = lm_rl.build_rl_config(lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y",
                                                       config_overrides=overrides), info)
    assert (config.sampler, config.sampler_threshold, config.sampler_refresh_interval) == ("prefix_parallel", 0.8, 2)
    assert lm_rl.build_rl_config(lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y"), info).sampler == "exact"
    paper = lm_rl.build_rl_config(lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y", preset="fpo/sudoku"),
                                  {**info, "gen_length": 256})
    assert (paper.gen_length, paper.block_length, paper.diffusion_steps, paper.num_prompts) == (256, 32, 128, 16)
