"""Pinned results of the control trainer: restructuring make_train must not change a single bit.

The pins were computed with the trainer as it was before the policy record (dipod_jax/control/policies.py)
replaced its algorithm branches: three iterations of ppo, fpo (+ DiPOD), fpo++ (the release's base preset,
shrunk) and fpo with self-distillation (initial and interleaved) on the tiny environment, then one evaluation.
The SHA-256 of every byte of the final state (parameters, optimiser, normaliser, environments, key), of the
metrics of the three iterations and of the evaluation's metrics must be the pinned ones. XLA's CPU results
depend on the JAX version and on the CPU's vector instructions, so the bytes are compared only on the kind of
machine the pins come from; elsewhere the pinned loss and evaluation return must agree to float tolerance.
"""
import hashlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax.control.configs import preset_config
from dipod_jax.control.train import make_train

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

TINY = "tiny/point_target"
RELEASE_FPO_PP_TINY = dict(num_envs=16, batch_size=16, num_updates_per_batch=2, actor_hidden=(32, 32),
                           critic_hidden=(32, 32), num_flow_steps=4, num_cfm_samples=4, num_eval_envs=16)
CONFIGS = {
    "ppo": dict(algo="ppo", dipod_beta=0.05),
    "fpo": dict(algo="fpo", dipod_beta=0.05),
    "fpo++": dict(algorithm_preset="fpo++_base", dipod_beta=0.05, **RELEASE_FPO_PP_TINY),
    "fpo_sd": dict(algo="fpo", sd_init_iterations=2, sd_every=2, sd_interleaved_iterations=2, sd_batch_size=64,
                   sd_env_steps=2),
}
# Computed on x86-64 with AVX-512, JAX 0.10.2, CPU backend (commit b95c8b7, before the policy record).
PINNED_PLATFORM = ("0.10.2", "cpu", "x86_64", True)
PINS = {
    "ppo": ("f8e60c52623b4bb8b11766e2abd9c39c0d60a965b630cacda9f5500c5ed6d36d",
            "fee76c449062e336244a18b99a8b1f61d1dd015d517c1a975a604fdde0c61fa6",
            "54e01c5b058e645c4a8ea50b32850ef3201d1dc2813d06cc173162d8ada443a2", 5.2340216636657715, 26.00855255126953),
    "fpo": ("6f3e2b2972f4ddd67945eef62e6a62c52f994373e6478f847ffc8d0241e4b5a7",
            "7f425c8a974f98af6ca1c4ec75bc05a182262b917caf29e76e0dfb019cd3891c",
            "bbd15eb71157a756686cfcc9b27226e1c1d8b789c373d38d59cf9197bd74ddac", 1.279377818107605, 39.520145416259766),
    "fpo++": ("9014fe3bdc521d01397d1e4624c76b528f8d55b64e1e03806468ddc93f768f4d",
              "1356c68ecf9d1a75106dfb30cb7addf8eb6045c49323ffa3200f435e6fbf52b3",
              "1b6a97177ec541940ce24a069a1e0f1b22bb5c6a18f6c3614958b0cfa47afb02", 27.848617553710938,
              26.064321517944336),
    "fpo_sd": ("559126a57fa31880ed5897a91ab6c063f80ebea3c8d64cc9e975081c90208f1f",
               "7a7819ff6a9a4b813ea4487981503e9d9eb9db8ec68c68c1a4a5ea5c18c8a208",
               "dbee6c85d2ef2bbf7cd89da6c83c2a0aa3bec16219e083e288abe35890e70182", 2.1480777263641357,
               37.90815734863281),
}


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as handle:
            return " avx512f" in handle.read()
    except OSError:
        return False


def _platform():
    return (jax.__version__, jax.default_backend(), platform.machine(), _has_avx512())


def _sha256(tree) -> str:
    """SHA-256 over each leaf's dtype, shape and bytes (typed PRNG keys as their key data)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        digest.update(str(array.dtype).encode())
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_three_iterations_reproduce_the_pinned_bits(name):
    """Three iterations from key 3 and an evaluation with key 4 hash to the pinned state, metrics and evaluation
    (float tolerance on another platform)."""
    fields = dict(CONFIGS[name])
    trainer = make_train(preset_config(TINY, fields.pop("algorithm_preset", None), **fields))
    state = jax.jit(trainer.init)(jax.random.key(3))
    step = jax.jit(trainer.train_iteration)
    metrics = []
    for _ in range(3):
        state, iteration_metrics = step(state)
        metrics.append(iteration_metrics)
    evaluation = jax.jit(trainer.evaluate)(state, jax.random.key(4))
    state_hash, metrics_hash, eval_hash, loss, eval_return = PINS[name]
    if _platform() == PINNED_PLATFORM:
        assert (_sha256(state), _sha256(metrics), _sha256(evaluation)) == (state_hash, metrics_hash, eval_hash)
    else:
        np.testing.assert_allclose([float(metrics[-1]["total_loss"]), float(evaluation["eval_return_mean"])],
                                   [loss, eval_return], rtol=1e-3)
