"""Test configuration: 8 fake CPU devices for the sharding tests, float64 off by default."""
import os

import pytest

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long checks that CI does not select (run with -m slow)")


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """A one-step experiments.lm_pretrain run of the tiny Sudoku model: the checkpoint format RL starts from."""
    from experiments import lm_pretrain

    out_dir = str(tmp_path_factory.mktemp("pretrain"))
    lm_pretrain.train(lm_pretrain.PretrainSettings(workdir=out_dir, task="sudoku", steps=1, batch=2,
                                                   model_size="tiny", eval_interval=1, eval_items=2,
                                                   warmup_steps=0), show_progress=False)
    return out_dir
