"""Tests of dipod_jax.losses.masked (masking schemes, estimators) and dipod_jax.diagnostics.masked_exact."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from dipod_jax.diagnostics import masked_exact
from dipod_jax.losses import masked

VOCAB = 3
MASK_ID = VOCAB
SEQ_LEN = 5
# Two rows: a one-token prompt, a three-token completion, one padding position.
TOKENS = np.array([[1, 0, 2, 1, 0], [2, 2, 1, 0, 1]], np.int32)
COMPLETION = np.array([[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]], bool)
_MODEL_WEIGHTS = np.random.default_rng(0).normal(size=(SEQ_LEN * (VOCAB + 1), SEQ_LEN * VOCAB))


def toy_logits(noised, xp=jnp):
    """A fixed random bidirectional 'model': logits = one_hot(noised sequence) @ W. [B, T] -> [B, T, V].

    The product runs at full float32 precision on every backend (a GPU would otherwise use TF32), so the tests
    that compare it with float64 NumPy check the estimators, not the hardware's matmul precision."""
    one_hot = (noised[..., None] == xp.arange(VOCAB + 1)).astype(xp.float32 if xp is jnp else np.float64)
    flat = one_hot.reshape(noised.shape[0], -1)
    weights = xp.asarray(_MODEL_WEIGHTS, flat.dtype)
    product = jnp.matmul(flat, weights, precision=jax.lax.Precision.HIGHEST) if xp is jnp else flat @ weights
    return product.reshape(noised.shape[0], SEQ_LEN, VOCAB)


def np_log_softmax(logits):
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def random_masks(rng, num_draws, completion_mask):
    """Random [M, B, T] masks with arbitrary extra True entries outside the completion."""
    return rng.random((num_draws,) + completion_mask.shape) < 0.5


# ----------------------------------------------------------------------------------------------- masking


class MaskingTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_count_masks_exactly_floor_t_times_length_real_tokens(self):
        """Each draw masks exactly floor(t * L) tokens, all of them real completion tokens."""
        completion = np.zeros((3, 12), bool)
        completion[0, 2:9] = True
        completion[1, 0:12] = True
        completion[2, 5:6] = True
        draw = self.variant(functools.partial(masked.mask_uniform_count, num_draws=64))
        mask, t = draw(jax.random.PRNGKey(1), jnp.asarray(completion))
        mask, t = np.asarray(mask), np.asarray(t)
        lengths = completion.sum(-1)
        np.testing.assert_array_equal(mask.sum(-1), np.floor(t * lengths[None]).astype(int))
        self.assertFalse(np.any(mask & ~completion[None]))
        self.assertTrue(np.all((t >= 0) & (t < 1)))

    def test_uniform_count_positions_are_exchangeable(self):
        """Every real token is masked with probability E[floor(t L)] / L = (L - 1) / (2 L) (uniform choice)."""
        completion = np.zeros((1, 8), bool)
        completion[0, 1:7] = True
        mask, _ = masked.mask_uniform_count(jax.random.PRNGKey(2), jnp.asarray(completion), 20000)
        rate = np.asarray(mask)[:, 0, 1:7].mean(0)
        np.testing.assert_allclose(rate, 5 / 12, atol=0.02)

    @chex.variants(with_jit=True, without_jit=True)
    def test_block_random_structure(self):
        """Release structure (spg_trainer.py forward_process "block_random", lines 338-382) without prompt
        masking: in each draw the window blocks after the chosen one and the window's padding after the
        completion are fully masked, earlier blocks and the prompt region visible, the chosen block's masked
        count in SPG's range; t_emp is the release's empirical_t (line 538)."""
        block_length, min_t, max_t, prompt_length, window = 4, 0.3, 0.8, 3, 16
        lengths = [13, 16, 3, 8]  # blocks of 4, 4, 4, 1 | four full | one short | two full
        completion = np.zeros((4, prompt_length + window), bool)
        for row, length in enumerate(lengths):
            completion[row, prompt_length:prompt_length + length] = True
        num_draws = 3
        draw = self.variant(functools.partial(masked.mask_block_random, num_draws=num_draws,
                                              block_length=block_length, window_length=window, min_t=min_t,
                                              max_t=max_t, p_mask_prompt=0.0))
        for seed in range(2):
            mask, t_emp = draw(jax.random.PRNGKey(seed), jnp.asarray(completion))
            mask, t_emp = np.asarray(mask), np.asarray(t_emp)
            for row, length in enumerate(lengths):
                window_block = np.arange(window) // block_length
                for m in range(num_draws):
                    hidden = mask[m, row, prompt_length:]
                    chosen = window_block[np.argmax(hidden)]
                    self.assertFalse(np.any(mask[m, row, :prompt_length]))
                    self.assertTrue(np.all(hidden[window_block > chosen]))
                    self.assertTrue(np.all(hidden[length:]))
                    self.assertFalse(np.any(hidden[window_block < chosen]))
                    in_block = (window_block == chosen) & (np.arange(window) < length)
                    n, count = in_block.sum(), hidden[in_block].sum()
                    low = max(1, int(np.floor(min_t * n)))
                    high = max(low, min(int(np.floor(max_t * n)), n))
                    self.assertTrue(low <= count <= high, (count, low, high))
                    real = completion[row]
                    np.testing.assert_allclose(t_emp[m, row], (mask[m, row] & real).sum() / real.sum(), rtol=1e-6)

    def test_block_random_block_choice_follows_the_release_permutation(self):
        """The joint law of the two draws' blocks is the release's (spg_trainer.py lines 344-349): a random
        permutation of the W = 4 window blocks, reduced modulo the completion's n_b blocks, first num_t = 2
        entries. Exact law by enumerating the 24 permutations; for n_b < W it is not uniform and repeats blocks."""
        block_length, window, prompt_length, copies = 2, 8, 1, 4000
        lengths = [2, 3, 5, 8]  # n_b = 1, 2, 3, 4
        completion = np.zeros((len(lengths), prompt_length + window), bool)
        for row, length in enumerate(lengths):
            completion[row, prompt_length:prompt_length + length] = True
        # min_t = max_t = 1: the chosen block and everything after it are fully masked.
        draw = jax.jit(functools.partial(masked.mask_block_random, num_draws=2, block_length=block_length,
                                         window_length=window, min_t=1.0, max_t=1.0, p_mask_prompt=0.0))
        mask, _ = draw(jax.random.PRNGKey(6), jnp.asarray(np.repeat(completion, copies, 0)))
        chosen = np.argmax(np.asarray(mask)[:, :, prompt_length:], axis=-1) // block_length  # [2, rows]
        for row, length in enumerate(lengths):
            num_blocks = (length - 1) // block_length + 1
            exact = np.zeros((4, 4))
            for permutation in itertools.permutations(range(window // block_length)):
                indices = np.array(permutation) % num_blocks
                exact[indices[0], indices[1]] += 1 / 24
            picks = chosen[:, row * copies:(row + 1) * copies]
            empirical = np.zeros((4, 4))
            np.add.at(empirical, (picks[0], picks[1]), 1 / copies)
            np.testing.assert_allclose(empirical, exact, atol=0.035, err_msg=f"n_b = {num_blocks}")
        self.assertAlmostEqual(exact[0, 0], 0.0)  # n_b = 4 = W: two distinct blocks

    def test_block_random_prompt_masking(self):
        """use_mask_prompt (release lines 375-379): every position before the chosen block (prompt region,
        left padding included, and earlier blocks' real tokens) is masked with probability p_mask_prompt,
        independently; masked earlier-block tokens count in t_emp (line 538), masked prompt positions do not."""
        block_length, window, prompt_length, copies = 2, 6, 3, 3000
        completion = np.zeros((1, prompt_length + window), bool)
        completion[0, prompt_length:prompt_length + 6] = True
        # min_t = max_t = 0.5: exactly one of the chosen block's two tokens is masked, so a last block with one
        # masked token identifies draws that chose it, whatever was masked before it.
        draw = jax.jit(functools.partial(masked.mask_block_random, num_draws=2, block_length=block_length,
                                         window_length=window, min_t=0.5, max_t=0.5, p_mask_prompt=0.15))
        completion_rows = np.repeat(completion, copies, 0)
        mask, t_emp = draw(jax.random.PRNGKey(8), jnp.asarray(completion_rows))
        mask, t_emp = np.asarray(mask), np.asarray(t_emp)
        np.testing.assert_allclose(mask[:, :, :prompt_length].mean(), 0.15, atol=0.01)
        chose_last = mask[:, :, prompt_length + 4:].sum(-1) == 1
        earlier = mask[:, :, prompt_length:prompt_length + 4][chose_last]
        self.assertGreater(earlier.shape[0], 1500)
        np.testing.assert_allclose(earlier.mean(), 0.15, atol=0.015)
        np.testing.assert_allclose(t_emp, (mask & completion_rows[None]).sum(-1) / 6, rtol=1e-6)
        self.assertTrue(np.any(t_emp[chose_last] > 1 / 6))

    @chex.variants(with_jit=True, without_jit=True)
    def test_completion_and_prompt_masking_rate(self):
        """Everything outside the prompt is masked; prompt tokens are masked at rate p_mask_prompt."""
        prompt = np.zeros((64, 300), bool)
        prompt[:, :200] = True
        completion = np.zeros_like(prompt)
        completion[:, 200:260] = True
        draw = self.variant(functools.partial(masked.mask_completion_and_prompt, p_mask_prompt=0.15))
        mask = np.asarray(draw(jax.random.PRNGKey(3), jnp.asarray(prompt), jnp.asarray(completion)))
        self.assertTrue(np.all(mask[:, 200:]))
        self.assertAlmostEqual(mask[:, :200].mean(), 0.15, delta=0.01)

    def test_masking_rejects_bad_arguments(self):
        """Invalid arguments raise ValueError naming the argument."""
        key = jax.random.PRNGKey(0)
        completion = jnp.asarray(COMPLETION)
        with self.assertRaisesRegex(ValueError, "num_draws"):
            masked.mask_uniform_count(key, completion, 0)
        with self.assertRaisesRegex(ValueError, "completion_mask"):
            masked.mask_uniform_count(key, completion.at[1].set(False), 2)
        with self.assertRaisesRegex(ValueError, "block_length"):
            masked.mask_block_random(key, completion, 2, 0, 4)
        with self.assertRaisesRegex(ValueError, "min_t"):
            masked.mask_block_random(key, completion, 2, 2, 4, min_t=0.9, max_t=0.5)
        with self.assertRaisesRegex(ValueError, "max_t"):
            masked.mask_block_random(key, completion, 2, 2, 4, max_t=1.5)
        with self.assertRaisesRegex(ValueError, "p_mask_prompt"):
            masked.mask_block_random(key, completion, 2, 2, 4, p_mask_prompt=-0.1)
        with self.assertRaisesRegex(ValueError, "window_length"):
            masked.mask_block_random(key, completion, 2, 2, 6)
        with self.assertRaisesRegex(ValueError, "first position of the generation window"):
            masked.mask_block_random(key, completion, 2, 2, 3)
        with self.assertRaisesRegex(ValueError, "num_draws"):
            masked.mask_block_random(key, completion, 3, 2, 4)
        with self.assertRaisesRegex(ValueError, "p_mask_prompt"):
            masked.mask_completion_and_prompt(key, ~completion, completion, 1.5)
        with self.assertRaisesRegex(ValueError, "overlap"):
            masked.mask_completion_and_prompt(key, completion, completion, 0.1)


# ----------------------------------------------------------------------------------------------- estimators


def np_elbo(token_logp, mask, completion):
    """NumPy re-derivation of the d1 estimator, draw by draw and row by row."""
    num_draws, batch, _ = token_logp.shape
    out = np.zeros(batch)
    for b in range(batch):
        length = completion[b].sum()
        for m in range(num_draws):
            hit = mask[m, b] & completion[b]
            out[b] += length / max(hit.sum(), 1) * token_logp[m, b][hit].sum() / num_draws
    return out


def np_spg_elbo(token_logp, mask, completion):
    num_draws, batch, _ = token_logp.shape
    out = np.zeros(batch)
    for b in range(batch):
        for m in range(num_draws):
            hit = mask[m, b] & completion[b]
            out[b] += (token_logp[m, b][hit].mean() if hit.any() else 0.0) / num_draws
    return out


def np_spg_eubo(token_logp, mask, completion, t_emp, beta_e):
    num_draws, batch, seq_len = token_logp.shape
    out = np.zeros(batch)
    for b in range(batch):
        logs = []
        for i in range(seq_len):
            value = sum(np.exp(beta_e * token_logp[m, b, i]) / t_emp[m, b]
                        for m in range(num_draws) if mask[m, b, i] and completion[b, i]) / num_draws
            if value > 0:
                logs.append(np.log(value))
        out[b] = np.mean(logs) / beta_e if logs else 0.0
    return out


class EstimatorTest(chex.TestCase):

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(7)
        self.completion = np.zeros((4, 10), bool)
        for row, (start, stop) in enumerate([(2, 9), (0, 10), (4, 5), (3, 7)]):
            self.completion[row, start:stop] = True
        self.mask = random_masks(rng, 5, self.completion)
        self.mask[0, 2] = False  # a draw with no masked real token
        self.token_logp = np.log(rng.uniform(0.05, 1.0, self.mask.shape))
        self.t_emp = (self.mask & self.completion[None]).sum(-1) / self.completion.sum(-1)[None]
        self.t_emp[0, 2] = 0.3  # unused: that draw masks nothing real

    @chex.variants(with_jit=True, without_jit=True)
    def test_elbo_matches_numpy(self):
        """elbo_from_token_logprobs equals the NumPy re-derivation (float64, rtol 1e-12)."""
        with jax.enable_x64(True):
            got = self.variant(masked.elbo_from_token_logprobs)(self.token_logp, self.mask, self.completion)
            np.testing.assert_allclose(got, np_elbo(self.token_logp, self.mask, self.completion), rtol=1e-12)

    @chex.variants(with_jit=True, without_jit=True)
    def test_spg_estimators_match_numpy(self):
        """SPG's ELBO-, EUBO-type estimates and mix equal their NumPy re-derivations (float64)."""
        with jax.enable_x64(True):
            elbo = self.variant(masked.spg_elbo_from_token_logprobs)(self.token_logp, self.mask, self.completion)
            np.testing.assert_allclose(elbo, np_spg_elbo(self.token_logp, self.mask, self.completion), rtol=1e-12)
            eubo_fn = self.variant(functools.partial(masked.spg_eubo_from_token_logprobs, beta_e=1.5))
            eubo = eubo_fn(self.token_logp, self.mask, self.completion, self.t_emp)
            expected = np_spg_eubo(self.token_logp, self.mask, self.completion, self.t_emp, 1.5)
            np.testing.assert_allclose(eubo, expected, rtol=1e-12)
            np.testing.assert_allclose(masked.spg_mix(elbo, eubo, 0.3), 0.3 * expected + 0.7 * np.asarray(elbo),
                                       rtol=1e-12)

    def test_eubo_gradient_is_finite_where_nothing_is_counted(self):
        """A row whose draws mask no real token has EUBO 0 and a finite (zero) gradient, not NaN."""
        mask = self.mask.copy()
        mask[:, 2] = False
        grad = jax.grad(lambda lp: jnp.sum(masked.spg_eubo_from_token_logprobs(
            lp, mask, self.completion, jnp.asarray(self.t_emp, jnp.float32), 1.0)))(
                jnp.asarray(self.token_logp, jnp.float32))
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(np.asarray(grad)[:, 2], 0.0)

    def test_token_log_probs_and_apply_mask_match_numpy(self):
        """token_log_probs is log_softmax gathered at the target; apply_mask writes mask_id exactly where masked."""
        rng = np.random.default_rng(3)
        logits = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
        targets = rng.integers(0, 7, size=(2, 3, 5))
        expected = np.take_along_axis(np_log_softmax(logits.astype(np.float64)), targets[..., None], -1)[..., 0]
        got = masked.token_log_probs(jnp.asarray(logits, jnp.bfloat16), targets)
        self.assertEqual(got.dtype, jnp.float32)
        np.testing.assert_allclose(masked.token_log_probs(logits, targets), expected, rtol=1e-5, atol=1e-6)
        draw_mask = rng.random((4, 2, 5)) < 0.5
        noised = np.asarray(masked.apply_mask(jnp.asarray(TOKENS), draw_mask, MASK_ID))
        np.testing.assert_array_equal(noised, np.where(draw_mask, MASK_ID, TOKENS[None]))

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_token_log_probs_equals_one_forward_pass_per_draw(self):
        """Draw m of masked_token_log_probs is the NumPy log-softmax of one forward pass on the tokens with
        mask m hidden, gathered at the true tokens, at every position (masked or not); wrong ranks are refused."""
        mask = random_masks(np.random.default_rng(5), 4, COMPLETION)
        got = self.variant(functools.partial(masked.masked_token_log_probs, toy_logits, mask_id=MASK_ID))(
            jnp.asarray(TOKENS), jnp.asarray(mask))
        self.assertEqual(got.shape, (4,) + TOKENS.shape)
        self.assertEqual(got.dtype, jnp.float32)
        for draw in range(4):
            logits = np.asarray(toy_logits(np.where(mask[draw], MASK_ID, TOKENS), np), np.float64)
            expected = np.take_along_axis(np_log_softmax(logits), TOKENS[..., None], -1)[..., 0]
            np.testing.assert_allclose(got[draw], expected, rtol=1e-5, atol=1e-5)
        with self.assertRaises(AssertionError):
            masked.masked_token_log_probs(toy_logits, jnp.asarray(TOKENS), jnp.asarray(mask[0]), MASK_ID)

    def test_elbo_masked_equals_per_draw_forward_passes(self):
        """elbo_masked equals the estimator applied to log-probs from one forward pass per draw."""
        mask, _ = masked.mask_uniform_count(jax.random.PRNGKey(4), jnp.asarray(COMPLETION), 6)
        got = masked.elbo_masked(toy_logits, jnp.asarray(TOKENS), jnp.asarray(COMPLETION), mask, MASK_ID)
        per_draw = np.stack([np_log_softmax(np.asarray(toy_logits(np.where(m, MASK_ID, TOKENS), np), np.float64))
                             for m in np.asarray(mask)])
        token_logp = np.take_along_axis(per_draw, np.broadcast_to(TOKENS, per_draw.shape[:3])[..., None], -1)[..., 0]
        np.testing.assert_allclose(got, np_elbo(token_logp, np.asarray(mask), COMPLETION), rtol=1e-5, atol=1e-5)

    def test_estimators_reject_bad_arguments(self):
        """beta_e <= 0, mix weight outside [0, 1] and mismatched shapes are rejected."""
        with self.assertRaisesRegex(ValueError, "beta_e"):
            masked.spg_eubo_from_token_logprobs(self.token_logp, self.mask, self.completion, self.t_emp, 0.0)
        with self.assertRaisesRegex(ValueError, "weight"):
            masked.spg_mix(jnp.zeros(3), jnp.zeros(3), 1.5)
        with self.assertRaises(AssertionError):
            masked.elbo_from_token_logprobs(self.token_logp, self.mask[:, :2], self.completion)


# ----------------------------------------------------------------------------------------------- exactness


def np_random_order_sample(rng, num_samples, tokens_row, completion_row):
    """Brute-force random-order sampler in NumPy: unmask one completion token per step in a random order."""
    positions = np.flatnonzero(completion_row)
    state = np.repeat(tokens_row[None], num_samples, 0)
    state[:, positions] = MASK_ID
    orders = np.argsort(rng.random((num_samples, len(positions))), axis=1)
    rows = np.arange(num_samples)
    for step in range(len(positions)):
        target = positions[orders[:, step]]
        probs = np.exp(np_log_softmax(toy_logits(state, np)))[rows, target]  # [N, V]
        cumulative = np.cumsum(probs, axis=-1)
        draws = (rng.random((num_samples, 1)) > cumulative).sum(-1)
        state[rows, target] = np.minimum(draws, VOCAB - 1)
    return state[:, positions]


class ExactLikelihoodTest(chex.TestCase, parameterized.TestCase):

    def all_completions(self):
        """Every completion of length 3 of the first row: [V^3, T] tokens."""
        rows = []
        for completion in itertools.product(range(VOCAB), repeat=3):
            row = TOKENS[0].copy()
            row[1:4] = completion
            rows.append(row)
        return np.stack(rows)

    def test_exact_likelihood_normalises_and_matches_sampling_frequencies(self):
        """pi sums to 1 over all V^L completions and matches the brute-force sampler's frequencies."""
        candidates = self.all_completions()
        completion = np.repeat(COMPLETION[:1], len(candidates), 0)
        log_pi = np.asarray(masked_exact.exact_logprob_random_order(
            toy_logits, jnp.asarray(candidates), completion, MASK_ID), np.float64)
        pi = np.exp(log_pi)
        self.assertAlmostEqual(pi.sum(), 1.0, places=5)
        num_samples = 30000
        samples = np_random_order_sample(np.random.default_rng(11), num_samples, TOKENS[0], COMPLETION[0])
        codes = samples @ (VOCAB ** np.arange(2, -1, -1))
        frequency = np.bincount(codes, minlength=VOCAB ** 3) / num_samples
        tolerance = 5 * np.sqrt(pi * (1 - pi) / num_samples) + 1e-3
        self.assertTrue(np.all(np.abs(frequency - pi) <= tolerance), np.abs(frequency - pi) / tolerance)

    def test_elbo_is_below_exact_loglik_and_d1_mean_drops_the_full_mask_term(self):
        """ELBO <= log pi (Jensen) and E[d1 estimator] = ELBO - (1/L) sum_i log p(c_i | all masked)."""
        candidates = self.all_completions()
        completion = np.repeat(COMPLETION[:1], len(candidates), 0)
        table = masked_exact.subset_token_log_probs(toy_logits, jnp.asarray(candidates), completion, MASK_ID)
        log_pi = masked_exact.logprob_from_subset_table(table)
        elbo = masked_exact.elbo_from_subset_table(table)
        d1_mean = masked_exact.uniform_count_estimate_mean_from_subset_table(table)
        self.assertTrue(np.all(np.asarray(elbo) <= np.asarray(log_pi) + 1e-5))
        self.assertTrue(np.any(np.asarray(elbo) < np.asarray(log_pi) - 1e-2))
        np.testing.assert_allclose(d1_mean, elbo - np.asarray(table)[:, -1, :].sum(-1) / 3, rtol=1e-5, atol=1e-5)

    @parameterized.parameters(("floor",), ("ceil",))
    def test_uniform_count_estimator_is_unbiased_for_its_exact_expectation(self, rounding):
        """The MC mean of elbo_masked under mask_uniform_count matches the mask-set enumeration (5 sigma):
        d1's floor rounding its own (biased-upward) expectation, ceil rounding exactly the ELBO."""
        num_draws = 6000
        tokens, completion = jnp.asarray(TOKENS), jnp.asarray(COMPLETION)

        @jax.jit
        def estimates(key):
            mask, _ = masked.mask_uniform_count(key, completion, num_draws, rounding)
            token_logp = jax.vmap(lambda m: masked.token_log_probs(
                toy_logits(masked.apply_mask(tokens, m, MASK_ID)), tokens))(mask)
            per_draw = jax.vmap(lambda lp, m: masked.elbo_from_token_logprobs(lp[None], m[None], completion))(
                token_logp, mask)  # [M, B]
            return per_draw, masked.elbo_from_token_logprobs(token_logp, mask, completion)

        per_draw, pooled = estimates(jax.random.PRNGKey(9))
        per_draw = np.asarray(per_draw, np.float64)
        exact_fn = {"floor": masked_exact.exact_uniform_count_estimate_mean, "ceil": masked_exact.exact_elbo}[rounding]
        exact = np.asarray(exact_fn(toy_logits, tokens, COMPLETION, MASK_ID))
        standard_error = per_draw.std(0) / np.sqrt(num_draws)
        self.assertTrue(np.all(np.abs(per_draw.mean(0) - exact) < 5 * standard_error),
                        (per_draw.mean(0), exact, standard_error))
        np.testing.assert_allclose(per_draw.mean(0), pooled, rtol=1e-4)

    def test_spg_eubo_type_exceeds_elbo_type_for_one_draw(self):
        """With one draw, EUBO-type = ELBO-type - log(t_emp) / beta_e exactly, so it is never below it.

        (With SPG's two draws the 1/M average over draws that leave a token visible can pull the EUBO-type
        estimate below the ELBO-type one; it does so on this toy model, so only M = 1 is an identity.)
        """
        # 32 copies of each row: independent draws in one call.
        tokens, completion = jnp.asarray(np.tile(TOKENS, (32, 1))), jnp.asarray(np.tile(COMPLETION, (32, 1)))

        @jax.jit
        def both(key):
            mask, t_emp = masked.mask_block_random(key, completion, 1, 2, window_length=4)
            token_logp = masked.token_log_probs(toy_logits(masked.apply_mask(tokens, mask[0], MASK_ID)), tokens)
            return (masked.spg_elbo_from_token_logprobs(token_logp[None], mask, completion),
                    masked.spg_eubo_from_token_logprobs(token_logp[None], mask, completion, t_emp, 1.5), t_emp[0])

        elbo, eubo, t_emp = both(jax.random.PRNGKey(12))
        np.testing.assert_allclose(eubo, elbo - np.log(t_emp) / 1.5, rtol=1e-5, atol=1e-6)
        self.assertTrue(np.all(np.asarray(eubo) >= np.asarray(elbo) - 1e-6))
        self.assertTrue(np.any(np.asarray(t_emp) < 1.0))

    def test_exact_rejects_long_or_ragged_completions(self):
        """More than 5 completion tokens, or rows of different lengths, raise ValueError."""
        with self.assertRaisesRegex(ValueError, "<= 5"):
            masked_exact.completion_positions(np.ones((1, 6), bool))
        ragged = COMPLETION.copy()
        ragged[1, 3] = False
        with self.assertRaisesRegex(ValueError, "same number"):
            masked_exact.completion_positions(ragged)

