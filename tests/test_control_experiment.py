"""experiments.control: the configuration from its flags, checkpoint-resume (bit-exact), logging, non-finite stop."""
import json
import os

import chex
import pytest

from dipod_jax.control.configs import ALGORITHM_PRESETS, ENV_PRESETS, config_from_flags, preset_config
from dipod_jax.control.envs import make_point_target
from dipod_jax.run.checkpoints import CheckpointStore, to_savable
from experiments import control

pytestmark = pytest.mark.integration

TINY = "tiny/point_target"


def test_config_from_flags_overrides_and_errors():
    """--config.<field> overrides reach the TrainConfig in the annotated types (env_name picks the environment
    preset); bad fields, types and values raise ValueError naming the flag --config.<field>."""
    config = config_from_flags(None, {"env_name": TINY, "algo": "fpo++", "dipod_beta": 0.1, "learning_rate": 1e-2,
                                      "actor_hidden": [4, 4]})
    assert (config.algo, config.dipod_beta, config.learning_rate, config.actor_hidden) == ("fpo++", 0.1, 1e-2,
                                                                                           (4, 4))
    assert config.num_envs == ENV_PRESETS[TINY]["num_envs"]
    with pytest.raises(ValueError, match="--config.no_such_field"):
        config_from_flags(None, {"env_name": TINY, "no_such_field": 1})
    with pytest.raises(ValueError, match="--config.learning_rate: must be a finite number > 0 or None"):
        config_from_flags(None, {"env_name": TINY, "learning_rate": "fast"})
    with pytest.raises(ValueError, match="--config.num_envs: must divide"):
        config_from_flags(None, {"env_name": TINY, "num_envs": 7})
    with pytest.raises(ValueError, match="checkpoint_every"):
        control._validate_periods(2, 3, 2, 1, 10)
    with pytest.raises(ValueError, match="--config.dipod_beta: must be a finite number"):
        config_from_flags(None, {"env_name": TINY, "dipod_beta": float("inf")})


def test_config_from_flags_with_a_release_preset():
    """--preset applies the release's FPO++ configuration over the env preset (algo from the preset), the
    --config.<field>s still override it (tuples included, None restores a field's default), and an algo
    contradicting the preset is refused."""
    config = config_from_flags("fpo++_motion_tracking", {
        "env_name": TINY, "num_envs": 16, "batch_size": 16, "advantage_clamp": (3.0, 1.0), "max_grad_norm": None})
    assert (config.algo, config.clip_eps, config.log_ratio_clamp, config.cfm_loss_clamp) == ("fpo++", 0.01, 3.0, -1.0)
    assert (config.num_envs, config.rollout_length, config.advantage_clamp) == (16, 48, (3.0, 1.0))
    assert config.max_grad_norm is None and ALGORITHM_PRESETS["fpo++_motion_tracking"]["max_grad_norm"] == 1.0
    assert config_from_flags(None, {"env_name": TINY}).algo == "fpo"
    with pytest.raises(ValueError, match="--config.algo=fpo contradicts --preset=fpo\\+\\+_base"):
        config_from_flags("fpo++_base", {"env_name": TINY, "algo": "fpo"})
    with pytest.raises(ValueError, match="--preset=fpo\\+\\+_humanoid: unknown"):
        config_from_flags("fpo++_humanoid", {"env_name": TINY})


def test_resume_is_bit_exact(tmp_path):
    """Resume: 2 iterations, stop, resume to 4 gives bit-identical parameters, optimiser, normaliser, env and
    key state to 4 uninterrupted iterations (2 seeds vmapped), the same metrics log (wall-clock speed aside) and
    a learning-curve PNG;
    an existing run without --resume is refused."""
    config = preset_config(TINY, algo="fpo", dipod_beta=0.05, num_updates_per_batch=1)
    env = make_point_target()
    per_iteration = config.env_steps_per_iteration
    kwargs = dict(seed=0, num_seeds=2, iterations_per_call=2, checkpoint_every=2, eval_every=2, progress=False,
                  env=env)
    full, summary = control.run(config, str(tmp_path / "full"), num_timesteps=4 * per_iteration, **kwargs)
    assert summary == {"step": 4, "stopped": "completed"}
    control.run(config, str(tmp_path / "split"), num_timesteps=2 * per_iteration, **kwargs)
    with pytest.raises(ValueError, match="resume"):
        control.run(config, str(tmp_path / "split"), num_timesteps=4 * per_iteration, **kwargs)
    resumed, summary = control.run(config, str(tmp_path / "split"), num_timesteps=4 * per_iteration, resume=True,
                                   **kwargs)
    assert summary["step"] == 4
    chex.assert_trees_all_equal(to_savable(full), to_savable(resumed))
    logs = []
    for name in ("full", "split"):
        records = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        logs.append([{k: v for k, v in record.items() if k != "env_steps_per_s"} for record in records])
    assert logs[0] == logs[1]  # identical apart from wall-clock speed
    assert sum(record["kind"] == "eval" for record in logs[0]) == 4  # 2 evals x 2 seeds
    assert os.path.getsize(tmp_path / "full" / "learning_curve.png") > 0
    assert os.listdir(tmp_path / "full" / "tensorboard")


def test_non_finite_loss_stops_and_keeps_no_broken_checkpoint(tmp_path):
    """A non-finite loss stops the run (summary "non_finite"); no checkpoint of the bad iteration is written."""
    config = preset_config(TINY, algo="fpo", reward_scaling=1e38, num_updates_per_batch=1)
    _, summary = control.run(config, str(tmp_path), num_timesteps=10 ** 6, checkpoint_every=1, eval_every=1,
                             progress=False, env=make_point_target())
    assert summary["stopped"] == "non_finite" and "loss" in summary["problem"]
    assert CheckpointStore(str(tmp_path), read_only=True).latest() is None
