"""The RL step sharded over 8 fake CPU devices (tests/conftest.py) equals the single-device step."""
import chex
import jax
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm import rl
from dipod_jax.lm.rl_config import RLConfig
from dipod_jax.models import sharding
from dipod_jax.models.llada import LLaDA, LLaDAConfig

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

MODEL_CONFIG = LLaDAConfig.tiny(8, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)
MASK_ID = MODEL_CONFIG.mask_token_id
EOS_ID = 1
# diffu-GRPO with every optional part on: DiPOD ELBO, reference KL with sync, gradient accumulation.
CONFIG = RLConfig(algo="diffu_grpo", dipod_beta=0.05, kl_beta=0.04, ref_sync_every=1, grad_accum_steps=2,
                  num_prompts=4, num_generations=4, num_inner_iterations=2, gen_length=4, block_length=4,
                  diffusion_steps=4, num_elbo_draws=2, learning_rate=1e-2, rollout_temperature=1.0)
PROMPTS = np.array([[3, 4], [6, 4], [0, 5], [0, 3]], np.int32)
PROMPT_MASK = PROMPTS != 0


def reward(tokens, completion_mask):
    """Fraction of completion tokens equal to 5: [N, T], [N, T] -> [N]."""
    return ((tokens == 5) & completion_mask).sum(-1) / completion_mask.sum(-1)


def run_steps(mesh, num_steps=2):
    """`num_steps` RL steps from the same initial model and keys, on `mesh` (None: one device)."""
    assert len(jax.devices()) == 8, "tests/conftest.py must provide 8 fake CPU devices"
    model = LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, frozen = rl.split_model(model, CONFIG.lora_only)
    if mesh is not None:
        params_sharding, frozen_sharding = rl.param_shardings(model, CONFIG.lora_only, mesh)
        params, frozen = jax.device_put(params, params_sharding), jax.device_put(frozen, frozen_sharding)
    state = rl.init_train_state(params, CONFIG, mesh)
    sample_fn = rl.make_sample_fn(CONFIG, graphdef, MASK_ID)
    update_fn = rl.make_update_fn(CONFIG, graphdef, MASK_ID, mesh)
    batches, metrics = [], []
    for step in range(num_steps):
        state, step_metrics, batch = rl.rl_step(state, frozen, PROMPTS, PROMPT_MASK, reward, jax.random.key(step),
                                                config=CONFIG, sample_fn=sample_fn, update_fn=update_fn,
                                                eos_id=EOS_ID, mesh=mesh)
        batches.append(batch)
        metrics.append(jax.tree.map(float, step_metrics))
    return state, batches, metrics


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(data=4, fsdp=2)


def test_sharded_step_equals_single_device_step(mesh):
    """Two diffu-GRPO + DiPOD + KL steps with the batch split over data x fsdp = 4 x 2 devices and parameters
    sharded over fsdp sample the same completions and reach the same parameters, reference copy and metrics
    as on one device, up to float reduction order."""
    single_state, single_batches, single_metrics = run_steps(None)
    sharded_state, sharded_batches, sharded_metrics = run_steps(mesh)
    # The sharded run really is sharded: parameters split over fsdp, all 8 devices hold state.
    embedding = sharded_state.params["embedding"]
    assert "fsdp" in jax.tree.leaves(tuple(embedding.sharding.spec))
    assert len(embedding.sharding.device_set) == 8
    # Every output sits where the update's jit contract puts it (the next step's in_shardings).
    graphdef, _, frozen = rl.split_model(LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0)), CONFIG.lora_only)
    _, (state_sharding, _) = rl.update_shardings(sharded_state, frozen, CONFIG, graphdef, mesh)
    assert jax.tree.leaves(jax.tree.map(lambda array, expected: array.sharding.is_equivalent_to(expected, array.ndim),
                                        sharded_state, state_sharding)) == [True] * len(jax.tree.leaves(sharded_state))
    for single, sharded in zip(single_batches, sharded_batches, strict=True):
        chex.assert_trees_all_equal(single, sharded)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, single_state),
                                jax.tree.map(np.asarray, sharded_state), rtol=1e-4, atol=1e-5)
    for single, sharded in zip(single_metrics, sharded_metrics, strict=True):
        assert single.keys() == sharded.keys()
        np.testing.assert_allclose([single[k] for k in single], [sharded[k] for k in single], rtol=1e-4, atol=1e-5)
    assert not np.allclose(np.asarray(single_state.params["w_q"]),
                           np.asarray(LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0)).w_q[...]))


def test_batch_not_divisible_by_devices_is_refused(mesh):
    """3 prompts x 4 completions = 12 rows cannot be split over 8 batch shards x 2 micro-batches: rl_step
    refuses before compiling, and so does the update itself on an indivisible batch."""
    model = LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, frozen = rl.split_model(model, False)
    state = rl.init_train_state(params, CONFIG)
    with pytest.raises(ValueError, match=r"12 rows .* not divisible by 8 batch shards"):
        rl.rl_step(state, frozen, PROMPTS[:3], PROMPT_MASK[:3], reward, jax.random.key(0), config=CONFIG,
                   sample_fn=None, update_fn=None, eos_id=EOS_ID, mesh=mesh)
    with pytest.raises(ValueError, match="not divisible"):
        rl.check_batch_divisible(8, CONFIG, mesh)
    rl.check_batch_divisible(16, CONFIG, mesh)


def test_update_refuses_inputs_placed_outside_its_contract(mesh):
    """The sharded update's jit has explicit in_shardings: a state left on one device is refused (ValueError)
    instead of being silently moved."""
    model = LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0))
    graphdef, params, frozen = rl.split_model(model, CONFIG.lora_only)
    state = rl.init_train_state(params, CONFIG)
    tokens = np.tile(np.array([[3, 4, 5, 5, 1, 1]], np.int32), (16, 1))
    batch = rl.to_global(rl.RolloutBatch(tokens, tokens > 0, tokens == 3, tokens == 5, np.ones(16, np.float32)), mesh)
    with pytest.raises(ValueError, match="does not match the sharding"):
        rl.make_update_fn(CONFIG, graphdef, MASK_ID, mesh)(state, frozen, batch, jax.random.key(0))
