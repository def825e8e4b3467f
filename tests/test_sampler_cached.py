"""Tests of the cached and parallel-decoding options of the sampler (dipod_jax.lm.sampler, Fast-dLLM family)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm.sampler import generate, generate_from_logits_fn, unmask_schedule
from dipod_jax.models import sharding
from dipod_jax.models.llada import LLaDA, LLaDAConfig

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

VOCAB = 16
MASK_ID = VOCAB - 1
PROMPT_LENGTH, GEN_LENGTH, BLOCK_LENGTH, STEPS = 3, 8, 4, 6  # 2 blocks of 3 steps: counts 2, 1, 1 per block
SETTINGS = dict(gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, steps=STEPS, mask_id=MASK_ID)
# (cache, refresh_interval, threshold) of the fast variants.
VARIANTS = {"prefix": ("prefix", None, None), "dual": ("dual", None, None), "dual_parallel": ("dual", None, 0.1),
            "parallel": ("none", None, 0.1), "prefix_parallel_refresh2": ("prefix", 2, 0.1)}


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """The cached and exact samplers compute the same logits through differently shaped matmuls; at full float32
    precision (also on GPUs, whose default is TF32) they agree to rounding, so greedy tokens can be compared."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def model():
    return LLaDA(LLaDAConfig.tiny(VOCAB), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def one_layer_model():
    return LLaDA(LLaDAConfig.tiny(VOCAB, n_layers=1), rngs=nnx.Rngs(1))


@functools.cache
def sampler(cache="none", refresh_interval=None, threshold=None, output=None):
    """Jitted generate with the fast options; output None, "history" or "stats"."""
    extra = dict(return_history=output == "history", return_stats=output == "stats")
    if cache != "none":
        extra.update(cache=cache, refresh_interval=refresh_interval)
    if threshold is not None:
        extra["threshold"] = threshold
    return nnx.jit(functools.partial(generate, **SETTINGS, **extra))


def _prompt(seed, batch=4):
    prompt = jax.random.randint(jax.random.key(seed), (batch, PROMPT_LENGTH), 0, MASK_ID)
    prompt_mask = jnp.arange(PROMPT_LENGTH)[None] >= (jnp.arange(batch) % PROMPT_LENGTH)[:, None]
    return prompt, prompt_mask


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cache_refreshed_every_step_equals_exact_sampler(model, cache):
    """With the cache recomputed at every step (refresh_interval=1) every step is a full pass, and the cached
    sampler returns the exact sampler's greedy tokens (left-padded prompts, three seeds); it ran steps full
    passes and no cached one."""
    for seed in range(3):
        prompt, prompt_mask = _prompt(seed)
        exact = sampler()(model, prompt, jax.random.key(seed), temperature=0.0, prompt_mask=prompt_mask)
        cached, stats = sampler(cache, 1, None, "stats")(model, prompt, jax.random.key(seed), temperature=0.0,
                                                         prompt_mask=prompt_mask)
        np.testing.assert_array_equal(cached, exact)
        assert (int(stats["full_passes"]), int(stats["cached_passes"])) == (STEPS, 0)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_unreachable_threshold_falls_back_to_the_schedule(model, cache):
    """A threshold no probability exceeds (1.0) unmasks exactly the scheduled counts (2, 1, 1 per block) at every
    step, also when sampling (temperature 1); greedy, without a cache or with one refreshed every step, it
    returns the exact sampler's tokens."""
    prompt, prompt_mask = _prompt(3)
    refresh = None if cache == "none" else 1
    _, history = sampler(cache, refresh, 1.0, "history")(model, prompt, jax.random.key(4), temperature=1.0,
                                                         prompt_mask=prompt_mask)
    masked = np.concatenate([np.zeros((4, PROMPT_LENGTH), bool), np.ones((4, GEN_LENGTH), bool)], 1)[None]
    masked = np.concatenate([masked, np.asarray(history) == MASK_ID])
    np.testing.assert_array_equal((masked[:-1] & ~masked[1:]).sum(-1), np.tile([[2], [1], [1]], (2, 4)))
    exact = sampler()(model, prompt, jax.random.key(5), temperature=0.0, prompt_mask=prompt_mask)
    fast = sampler(cache, refresh, 1.0)(model, prompt, jax.random.key(5), temperature=0.0, prompt_mask=prompt_mask)
    np.testing.assert_array_equal(fast, exact)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_layer_cache_is_exact(one_layer_model, cache):
    """In a one-layer model the cached keys / values of a position depend only on its own token, and within a
    block only the block's tokens change: the cache refreshed once per block is then exact, and the cached
    sampler (4 cached passes of 6) returns the exact sampler's greedy tokens."""
    prompt, prompt_mask = _prompt(6)
    exact = sampler()(one_layer_model, prompt, jax.random.key(0), temperature=0.0, prompt_mask=prompt_mask)
    cached, stats = sampler(cache, None, None, "stats")(one_layer_model, prompt, jax.random.key(0),
                                                        temperature=0.0, prompt_mask=prompt_mask)
    np.testing.assert_array_equal(cached, exact)
    # Cached windows: prefix 8 then 4 positions (block and what follows), dual 4 (the block), two passes a block.
    window_positions = {"prefix": 2 * 8 + 2 * 4, "dual": 4 * 4}[cache]
    counts = tuple(int(stats[k]) for k in ("full_passes", "cached_passes", "cached_positions"))
    assert counts == (2, 4, window_positions)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_variants_never_change_an_unmasked_token(model, variant):
    """Along the trajectory at temperature 1 (two-layer model, stale caches, low thresholds): the prompt never
    changes, a token once unmasked never changes, only the current block is unmasked, each step unmasks at
    least its scheduled count (or what was left), a block finishes within its steps, and nothing stays masked."""
    prompt, prompt_mask = _prompt(7)
    tokens, history = sampler(*VARIANTS[variant], "history")(model, prompt, jax.random.key(8), temperature=1.0,
                                                             prompt_mask=prompt_mask)
    history = np.asarray(history)
    np.testing.assert_array_equal(history[-1], tokens)
    previous = np.concatenate([np.asarray(prompt), np.full((4, GEN_LENGTH), MASK_ID)], axis=1)
    schedule = np.asarray(unmask_schedule(jnp.full((4,), BLOCK_LENGTH), STEPS // 2))
    for step, current in enumerate(history):
        np.testing.assert_array_equal(current[:, :PROMPT_LENGTH], prompt)
        unmasked = previous != MASK_ID
        np.testing.assert_array_equal(current[unmasked], previous[unmasked])
        block, step_in_block = divmod(step, STEPS // 2)
        start = PROMPT_LENGTH + block * BLOCK_LENGTH
        newly = (previous == MASK_ID) & (current != MASK_ID)
        assert not newly[:, :start].any() and not newly[:, start + BLOCK_LENGTH:].any()
        left = (previous[:, start:start + BLOCK_LENGTH] == MASK_ID).sum(-1)
        assert (newly.sum(-1) >= np.minimum(schedule[:, step_in_block], left)).all()
        if step_in_block == STEPS // 2 - 1:
            assert not (current[:, start:start + BLOCK_LENGTH] == MASK_ID).any()
        previous = current
    assert not (np.asarray(tokens) == MASK_ID).any()


def test_threshold_unmasks_every_confident_position_at_once():
    """Known trajectory: one block of 4 in 4 steps, confidences of positions 0..3 about 0.99, 0.4, 0.97, 0.5.
    With threshold 0.9 the first step unmasks positions 0 and 2 together, then 3, then 1, and the fourth step
    is skipped (3 passes); without a threshold one position per step, most confident first (4 passes)."""
    vocab = 6
    margins = jnp.array([6.0, 0.5, 5.0, 1.0])  # logit of token i at position i above 0 elsewhere (5 others)
    completion = jnp.zeros((4, vocab)).at[jnp.arange(4), jnp.arange(4)].set(margins)
    table = jnp.concatenate([jnp.zeros((1, vocab)), completion])

    def logits_fn(tokens, attention_mask):
        del attention_mask
        return jnp.broadcast_to(table, tokens.shape + (vocab,))

    run = functools.partial(generate_from_logits_fn, logits_fn, jnp.array([[0]]), jax.random.key(0), gen_length=4,
                            block_length=4, steps=4, temperature=0.0, mask_id=vocab - 1)
    tokens, history = run(threshold=0.9, return_history=True)
    np.testing.assert_array_equal(tokens, [[0, 0, 1, 2, 3]])
    unmasked = np.asarray(history)[:, 0, 1:] != vocab - 1
    np.testing.assert_array_equal(unmasked, [[1, 0, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
    _, stats = run(threshold=0.9, return_stats=True)
    assert int(stats["full_passes"]) == 3
    _, history = run(return_history=True)
    np.testing.assert_array_equal(np.asarray(history)[:, 0, 1:] != vocab - 1,
                                  [[1, 0, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]])


def test_cached_parallel_sampler_is_shardable(model):
    """The dual-cache parallel sampler jitted with batch-sharded prompts on a (data 4, fsdp 2) mesh of fake devices
    and fsdp-sharded weights (under jax.set_mesh, as the RL step runs) returns the single-device tokens."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    mesh = sharding.make_mesh(data=4, fsdp=2)
    graphdef, state = nnx.split(model)
    prompt, prompt_mask = _prompt(9, batch=8)
    sample = jax.jit(lambda state, prompt, prompt_mask, key: generate(
        nnx.merge(graphdef, state), prompt, key, temperature=0.0, prompt_mask=prompt_mask, cache="dual",
        threshold=0.1, **SETTINGS))
    single = sample(state, prompt, prompt_mask, jax.random.key(0))
    placed = sharding.shard_state(state, mesh)
    batch_sharding = sharding.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        sharded = sample(placed, jax.device_put(prompt, batch_sharding), jax.device_put(prompt_mask, batch_sharding),
                         jax.random.key(0))
    assert sharded.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_array_equal(sharded, single)


@pytest.mark.parametrize("kwargs, message", [
    (dict(cache="paged"), "cache must be one of"),
    (dict(refresh_interval=2), "refresh_interval needs a cache"),
    (dict(cache="dual", refresh_interval=0), "refresh_interval must be"),
    (dict(threshold=0.0), "threshold must be"),
    (dict(threshold=1.5), "threshold must be"),
    (dict(threshold=0.9, remasking="random"), "needs remasking='low_confidence'"),
    (dict(cache="dual"), "forward_with_cache"),
    (dict(return_history=True, return_stats=True), "cannot both"),
])
def test_bad_fast_settings_raise_before_any_model_call(kwargs, message):
    """Unknown cache, refresh without a cache, thresholds outside (0, 1], a threshold with random remasking, a
    cache for a model without cached passes, and history with stats raise ValueError naming the setting."""
    def never_called(tokens, attention_mask):
        raise AssertionError("model called")
    with pytest.raises(ValueError, match=message):
        generate(never_called, _prompt(0)[0], jax.random.key(0), temperature=0.0, **SETTINGS, **kwargs)
