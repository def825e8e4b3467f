"""Tests of LLaDA's block-wise masked-diffusion sampler (dipod_jax.lm.sampler)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm.sampler import generate, generate_from_logits_fn, unmask_schedule
from dipod_jax.models.llada import LLaDA, LLaDAConfig

VOCAB = 16
MASK_ID = VOCAB - 1
PROMPT_LENGTH, GEN_LENGTH, BLOCK_LENGTH, STEPS = 3, 8, 4, 6  # 2 blocks of 3 steps: counts 2, 1, 1 per block


@pytest.fixture(scope="module")
def model():
    return LLaDA(LLaDAConfig.tiny(VOCAB), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sample():
    """Jitted generate with history, shared by the tests: (model, prompt, key, temperature) -> (tokens, history)."""
    return nnx.jit(functools.partial(generate, gen_length=GEN_LENGTH, block_length=BLOCK_LENGTH, steps=STEPS,
                                     mask_id=MASK_ID, return_history=True))


def _prompt(seed, batch=3):
    return jax.random.randint(jax.random.key(seed), (batch, PROMPT_LENGTH), 0, MASK_ID)


def test_unmask_schedule_splits_evenly_with_remainder_first():
    """Known values: 10 over 4 steps is 3, 3, 2, 2; 4 over 3 is 2, 1, 1; 0 over 2 is 0, 0."""
    np.testing.assert_array_equal(unmask_schedule(jnp.array([10, 4, 0]), 4)[:1], [[3, 3, 2, 2]])
    np.testing.assert_array_equal(unmask_schedule(jnp.array([4]), 3), [[2, 1, 1]])
    np.testing.assert_array_equal(unmask_schedule(jnp.array([0]), 2), [[0, 0]])


def test_history_keeps_unmasked_tokens_and_follows_schedule(model, sample):
    """Along the trajectory: the prompt never changes, a token once unmasked never changes, each step unmasks
    exactly the scheduled count (2, 1, 1 per block of 4 in 3 steps), only inside the current block, and
    nothing stays masked at the end."""
    prompt = _prompt(0)
    tokens, history = sample(model, prompt, jax.random.key(1), temperature=1.0)
    history = np.asarray(history)
    assert history.shape == (STEPS, 3, PROMPT_LENGTH + GEN_LENGTH)
    np.testing.assert_array_equal(history[-1], tokens)
    prompt_part = history[:, :, :PROMPT_LENGTH]
    np.testing.assert_array_equal(prompt_part, np.broadcast_to(prompt, prompt_part.shape))
    start = np.concatenate([np.asarray(prompt), np.full((3, GEN_LENGTH), MASK_ID)], axis=1)
    previous = start
    expected_counts = [2, 1, 1, 2, 1, 1]
    for step in range(STEPS):
        current = history[step]
        was_unmasked = previous != MASK_ID
        np.testing.assert_array_equal(current[was_unmasked], previous[was_unmasked])
        newly = (previous == MASK_ID) & (current != MASK_ID)
        np.testing.assert_array_equal(newly.sum(axis=1), expected_counts[step])
        block = step // 3
        block_start = PROMPT_LENGTH + block * BLOCK_LENGTH
        outside = np.ones(PROMPT_LENGTH + GEN_LENGTH, bool)
        outside[block_start:block_start + BLOCK_LENGTH] = False
        assert not newly[:, outside].any()
        previous = current
    assert not (np.asarray(tokens) == MASK_ID).any()


def test_greedy_is_deterministic_and_sampling_is_not(model, sample):
    """At temperature 0 two different keys give the same tokens; at a high temperature they differ."""
    prompt = _prompt(2, batch=4)
    greedy_a, _ = sample(model, prompt, jax.random.key(3), temperature=0.0)
    greedy_b, _ = sample(model, prompt, jax.random.key(4), temperature=0.0)
    np.testing.assert_array_equal(greedy_a, greedy_b)
    hot_a, _ = sample(model, prompt, jax.random.key(3), temperature=5.0)
    hot_b, _ = sample(model, prompt, jax.random.key(4), temperature=5.0)
    assert (np.asarray(hot_a) != np.asarray(hot_b)).any()


def _fixed_logits_fn(table):
    """A denoiser whose logits at position i are table[i] whatever the input: [T, V] -> logits_fn."""
    def logits_fn(tokens, attention_mask):
        del attention_mask
        return jnp.broadcast_to(table, tokens.shape + table.shape[-1:])
    return logits_fn


def test_low_confidence_unmasks_most_confident_first():
    """Known order: with one block of 4 and 4 steps, and position confidence increasing with position,
    the positions are unmasked right to left; "random" remasking at temperature 0 still fills the same tokens."""
    vocab = 5
    peak = jnp.array([1.0, 2.0, 3.0, 4.0])  # margin of the argmax token grows with position
    completion_logits = jnp.zeros((4, vocab)).at[jnp.arange(4), jnp.arange(4)].set(peak)
    table = jnp.concatenate([jnp.zeros((1, vocab)), completion_logits], axis=0)
    logits_fn = _fixed_logits_fn(table)
    run = functools.partial(generate_from_logits_fn, logits_fn, jnp.array([[0]]), jax.random.key(0), gen_length=4,
                            block_length=4, steps=4, temperature=0.0, mask_id=vocab - 1, return_history=True)
    tokens, history = run(remasking="low_confidence")
    np.testing.assert_array_equal(tokens, [[0, 0, 1, 2, 3]])
    first_unmasked = [int(np.argmax(np.asarray(history)[:, 0, 1 + i] != vocab - 1)) for i in range(4)]
    assert first_unmasked == [3, 2, 1, 0]
    random_tokens, _ = run(remasking="random")
    np.testing.assert_array_equal(random_tokens, tokens)


def test_temperature_one_samples_the_softmax():
    """Gumbel-max at T = 1 draws a single-token completion from softmax(logits) (mask id excluded):
    empirical frequencies of 20000 draws match within 0.015."""
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4, 1.0]))  # last id is the mask: never drawn
    fn = _fixed_logits_fn(jnp.stack([jnp.zeros(5), logits]))
    tokens = generate_from_logits_fn(fn, jnp.zeros((20000, 1), jnp.int32), jax.random.key(5), gen_length=1,
                                     block_length=1, steps=1, temperature=1.0, mask_id=4)
    frequencies = np.bincount(np.asarray(tokens[:, 1]), minlength=5) / 20000
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4, 0.0], atol=0.015)


def test_prompt_padding_is_ignored(model):
    """Left padding marked False in prompt_mask is excluded from attention: two prompts that differ only in
    their pad tokens get the same greedy completion, and the prompt (padding included) is returned unchanged."""
    prompt = _prompt(6, batch=2)
    padded_a = jnp.concatenate([jnp.zeros((2, 2), jnp.int32), prompt], axis=1)
    padded_b = jnp.concatenate([jnp.full((2, 2), 7, jnp.int32), prompt], axis=1)
    prompt_mask = jnp.concatenate([jnp.zeros((2, 2), bool), jnp.ones((2, PROMPT_LENGTH), bool)], axis=1)
    run = nnx.jit(functools.partial(generate, gen_length=4, block_length=4, steps=2, temperature=0.0,
                                    mask_id=MASK_ID))
    out_a = run(model, padded_a, jax.random.key(0), prompt_mask=prompt_mask)
    out_b = run(model, padded_b, jax.random.key(0), prompt_mask=prompt_mask)
    np.testing.assert_array_equal(out_a[:, 5:], out_b[:, 5:])
    np.testing.assert_array_equal(out_a[:, :5], padded_a)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_length=8, block_length=3, steps=4), "block_length"),
    (dict(gen_length=8, block_length=4, steps=3), "number of blocks"),
    (dict(gen_length=8, block_length=4, steps=4, remasking="top_k"), "remasking"),
    (dict(gen_length=8, block_length=4, steps=4, temperature=-1.0), "temperature"),
])
def test_bad_settings_raise_before_any_model_call(kwargs, message):
    """Inconsistent lengths / steps, an unknown remasking rule or a negative temperature raise ValueError
    naming the setting, without calling the model."""
    def never_called(tokens, attention_mask):
        raise AssertionError("model called")
    settings = dict(temperature=0.0, mask_id=MASK_ID) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(never_called, _prompt(7), jax.random.key(0), **settings)
