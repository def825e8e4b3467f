"""dipod_jax: DiPOD (Diffusion Policy Optimization without Drifting Apart) in JAX/Flax."""
from setuptools import find_packages, setup

DOCS = ["mkdocs>=1.6.1", "mkdocs-material>=9.8.2", "mkdocstrings[python]>=1.0.8"]

setup(
    name="dipod_jax",
    version="0.1.0",
    description="DiPOD and diffusion/flow policy-gradient baselines in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["dipod_jax", "dipod_jax.*", "experiments", "launch", "benchmarks"]),
    package_data={"dipod_jax.lm.tasks": ["data/*.csv", "data/*.jsonl"]},
    # Lower bounds verified together on 2026-11-26 (CPU, Python 3.11); see WORKSPACE.md.
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "chex>=0.1.92",
        "brax>=0.14.2",
        "mujoco>=4.0.0",
        "mujoco-mjx>=3.17.0",
        "playground>=0.2.0",
        "orbax-checkpoint>=0.12.8",
        "absl-py>=2.5.1",
        "ml-collections>=1.1.0",
        "matplotlib>=3.11.2",
        "tqdm>=4.70.1",
        "tensorboardX>=2.6.5",
        "safetensors>=0.8.0",
        "tokenizers>=0.23.3",
        "numpy>=2.4",
        "pyyaml>=6.0.4",
    ],
    # "launch": SkyPilot for launch/skypilot_task.py (the gcloud commands of launch/tpu_pod.py need only gcloud).
    # "docs": the MkDocs site (docs/, mkdocs.yml); CI builds it strictly, so the test extra includes it.
    extras_require={"test": ["pytest>=9.2.0", "hypothesis>=6.170", "pytest-xdist>=3.8.0", *DOCS],
                    "docs": DOCS,
                    # TensorBoard itself, to read the events every run writes to <workdir>/tb.
                    "tensorboard": ["tensorboard>=2.20.0"],
                    "launch": ["skypilot>=0.14.1"]},
)
