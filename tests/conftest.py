"""Test configuration: 8 fake CPU devices for the sharding tests, float64 off by default."""
import os

# Must be set before JAX initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long checks that CI does not select (run with -m slow)")
