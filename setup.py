"""dipod_jax: DiPOD (Diffusion Policy Optimization without Drifting Apart) in JAX/Flax; metadata in pyproject.toml."""
from setuptools import setup

setup()
