"""Test configuration: 8 fake CPU devices for the sharding tests, float64 off by default, the markers, and the
hypothesis profiles.

Two markers split the suite (CI, the README's test command, runs everything that is not `slow`):
- `integration`: a test that runs a program end to end (an experiment's `train`, a benchmark as a subprocess),
  several processes, a real environment (MuJoCo Playground, brax.envs), or that compiles whole trainers or
  models (the control trainer and population, the RL step, LLaDA and its samplers, the toys). A test file made
  only of such tests says so at its top with `pytestmark = pytest.mark.integration`; a single test carries the
  decorator. Tests that use the `pretrained_dir` fixture (it runs experiments.lm_pretrain) are marked here
  automatically.
  The unit suite, seconds to a minute on one core: `python -m pytest -m "not integration and not slow"`.
- `slow`: long checks CI does not select (`python -m pytest -m slow`).

Hypothesis: the default profile is derandomized (the same examples on every run, so CI cannot flake) with no
deadline (the first example of a property compiles). `HYPOTHESIS_PROFILE=explore` draws fresh random examples,
more of them, for a developer looking for counterexamples.
"""
import os

import pytest
from hypothesis import settings

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

settings.register_profile("default", max_examples=25, deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("explore", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long checks that CI does not select (run with -m slow)")
    config.addinivalue_line("markers", "integration: runs a program, several processes or a real environment, or "
                                       "compiles whole trainers (the unit suite is -m 'not integration and not slow')")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "pretrained_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def pretrained_dir(tmp_path_factory):
    """A one-step experiments.lm_pretrain run of the tiny Sudoku model: the checkpoint format RL starts from."""
    from experiments import lm_pretrain

    out_dir = str(tmp_path_factory.mktemp("pretrain"))
    lm_pretrain.train(lm_pretrain.PretrainSettings(workdir=out_dir, task="sudoku", steps=1, batch=2,
                                                   model_size="tiny", eval_interval=1, eval_items=2,
                                                   warmup_steps=0), show_progress=False)
    return out_dir
