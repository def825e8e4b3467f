"""Tests of the dLLM RL step (dipod_jax.lm.rl) and its configuration (dipod_jax.lm.rl_config).

One tiny LLaDA (vocabulary 8, one layer) is shared by every test; jitted functions are built once per config.
"""
import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm import rl
from dipod_jax.lm.rl_config import PAPER_PRESETS, RLConfig, paper_preset, preset
from dipod_jax.losses.lm import diffu_grpo_loss, fpo_dllm_loss
from dipod_jax.losses.masked import apply_mask, elbo_masked, token_log_probs
from dipod_jax.models.llada import LLaDA, LLaDAConfig
from dipod_jax.run.checkpoints import CheckpointStore
from dipod_jax.run.config import ConfigError
from dipod_jax.run.files import read_json, read_metrics

pytestmark = pytest.mark.integration  # compiles whole trainers / models: not in the unit suite

MODEL_CONFIG = LLaDAConfig.tiny(8, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)
MASK_ID = MODEL_CONFIG.mask_token_id
EOS_ID = 1
TARGET_TOKEN = 5
TINY = dict(num_prompts=2, num_generations=4, num_inner_iterations=2, gen_length=4, block_length=4,
            diffusion_steps=4, num_elbo_draws=2, spg_block_length=2, spg_num_draws=2)


@pytest.fixture(scope="module")
def model():
    return LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0))


def target_fraction_reward(tokens, completion_mask):
    """Fraction of each row's completion tokens equal to TARGET_TOKEN: [N, T], [N, T] -> [N]."""
    return ((tokens == TARGET_TOKEN) & completion_mask).sum(-1) / completion_mask.sum(-1)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("overrides, field", [
    (dict(num_generations=1), "num_generations"),
    (dict(num_inner_iterations=0), "num_inner_iterations"),
    (dict(dipod_beta=-0.05), "dipod_beta"),
    (dict(dipod_beta=float("nan")), "dipod_beta"),
    (dict(algo="ppo"), "algo"),
    (dict(algo="spg", spg_estimator="upper"), "spg_estimator"),
    (dict(algo="spg", kl_beta=0.04), "kl_beta"),
    (dict(num_prompts=2, num_generations=3, grad_accum_steps=4), "grad_accum_steps"),
    (dict(gen_length=24, block_length=7), "block_length"),
    (dict(gen_length=24, block_length=8, diffusion_steps=4), "diffusion_steps"),
    (dict(clip_eps=0.0), "clip_eps"),
    (dict(spg_min_t=0.8, spg_max_t=0.2), "spg_min_t"),
    (dict(num_generations=2.0), "num_generations"),
    (dict(algo="spg", gen_length=16, block_length=16, diffusion_steps=16, spg_block_length=16, spg_num_draws=2),
     "spg_num_draws"),
    (dict(spg_use_mask_prompt=1), "spg_use_mask_prompt"),
])
def test_invalid_config_raises_naming_the_field(overrides, field):
    """Each invalid value raises ConfigError (a ValueError) at construction, naming the offending field; through
    `preset` (the programs' path) the message names its flag --config.<field>."""
    with pytest.raises(ConfigError, match=f"^{field}: must be") as raised:
        RLConfig(**overrides)
    assert raised.value.field == field
    with pytest.raises(ValueError, match=f"^--config.{field}: must be"):
        preset("sudoku", **{"gen_length": 24, "block_length": 8, "diffusion_steps": 12, **overrides})


def test_presets_are_valid_and_keep_the_paper_structure():
    """Every task preset validates, keeps G = 6 and clip 0.5, sets SPG's beta_e (1.0 Sudoku, 1.5 others), and
    unknown tasks or fields are refused."""
    assert preset("sudoku").spg_beta_e == 1.0 and preset("countdown").spg_beta_e == 1.5
    for task in ("sudoku", "sudoku_split_new", "countdown", "gsm8k"):
        config = preset(task, algo="spg", dipod_beta=0.05)
        assert config.num_generations == 6 and config.clip_eps == 0.5 and config.dipod_beta == 0.05
    with pytest.raises(ValueError, match="no RL preset"):
        preset("chess")
    with pytest.raises(ValueError, match="--config.beta: not a field of RLConfig"):
        preset("sudoku", beta=0.1)


def test_cpu_presets_carry_each_algorithms_measured_settings():
    """The CPU preset: 32 prompts x 6 at temperature 0.9 for every method; diffu-GRPO (the default algorithm) at
    learning rate 3e-4 with KL 0.04, FPO and SPG at 3e-6 (they drift at 3e-5), SPG without KL; a --config field
    given overrides the preset's."""
    default = preset("sudoku")
    assert default.algo == "diffu_grpo" and default.learning_rate == 3e-4 and default.kl_beta == 0.04
    assert (default.num_prompts, default.num_generations, default.rollout_temperature) == (32, 6, 0.9)
    assert preset("sudoku", algo="fpo").learning_rate == 3e-6 and preset("sudoku", algo="fpo").kl_beta == 0.04
    spg = preset("countdown", algo="spg")
    assert spg.learning_rate == 3e-6 and spg.kl_beta == 0.0 and spg.num_prompts == 32
    assert preset("sudoku", algo="spg", learning_rate=1e-5).learning_rate == 1e-5


def test_paper_presets_carry_the_release_values():
    """The release's launch settings: 16 prompts x 6 completions; d1-FPO (language/d1/diffu-grpo train.yaml +
    slurm_scripts: NUM_ITER=8, beta 0.04, epsilon 0.5, 4 ELBO draws, dipod_beta 0.05, temperature 0.9 because
    the Sudoku scripts' --temperature line is cut off, 0.3 in the "@t0.3" variant); SPG (spg_mix/*.sbatch:
    NUM_ITER=4, block_random num_t 2, min_t 0, max_t 1, mix 0.5, eubo beta 1.0 Sudoku / 1.5 otherwise, prompt
    masking with p 0.15, temperature 0.3 only for Sudoku). Unknown names are refused."""
    for name in PAPER_PRESETS:
        config = paper_preset(name)
        assert (config.num_prompts, config.num_generations, config.learning_rate, config.max_grad_norm) == \
            (16, 6, 3e-6, 0.2)
        assert (config.gen_length, config.block_length, config.diffusion_steps, config.dipod_beta) == \
            (256, 32, 128, 0.05)
        assert config.lora_only and config.p_mask_prompt == 0.15
    fpo = paper_preset("fpo/sudoku")
    assert (fpo.algo, fpo.num_inner_iterations, fpo.kl_beta, fpo.clip_eps, fpo.num_elbo_draws) == \
        ("fpo", 8, 0.04, 0.5, 4)
    assert fpo.rollout_temperature == 0.9 and paper_preset("fpo/sudoku@t0.3").rollout_temperature == 0.3
    spg = paper_preset("spg/countdown")
    assert (spg.algo, spg.spg_estimator, spg.num_inner_iterations, spg.kl_beta) == ("spg", "mix", 4, 0.0)
    assert (spg.spg_num_draws, spg.spg_min_t, spg.spg_max_t, spg.spg_mix_weight, spg.spg_block_length) == \
        (2, 0.0, 1.0, 0.5, 32)
    assert spg.spg_use_mask_prompt and spg.spg_beta_e == 1.5 and spg.rollout_temperature == 0.9
    sudoku = paper_preset("spg/sudoku_split_new")
    assert sudoku.spg_beta_e == 1.0 and sudoku.rollout_temperature == 0.3
    assert paper_preset("spg/gsm8k", dipod_beta=0.0).dipod_beta == 0.0
    with pytest.raises(ValueError, match="--preset=grpo/sudoku: no such paper preset"):
        paper_preset("grpo/sudoku")
    with pytest.raises(ValueError, match="--config.beta: not a field of RLConfig"):
        paper_preset("fpo/gsm8k", beta=0.04)


# ------------------------------------------------------------------------------------------ model split


def test_split_model_lora_only_trains_exactly_the_adapters():
    """lora_only selects every LoRA adapter and nothing else (the base weights are frozen); a model without
    adapters is refused."""
    lora_model = LLaDA(LLaDAConfig.tiny(8, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, lora_rank=2,
                                        lora_alpha=4.0), rngs=nnx.Rngs(1))
    _, trainable, frozen = rl.split_model(lora_model, lora_only=True)
    assert trainable and all(name.startswith("lora_") for name in trainable)
    assert len(trainable) == 14 and "w_q" in frozen and not any(name.startswith("lora_") for name in frozen)
    _, everything, nothing = rl.split_model(lora_model, lora_only=False)
    assert set(everything) == set(trainable) | set(frozen) and not jax.tree.leaves(nothing)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        rl.split_model(LLaDA(MODEL_CONFIG, rngs=nnx.Rngs(0)), lora_only=True)


# ------------------------------------------------------------------------------------------- host side


def test_rollout_batch_masks_and_reward_shape():
    """Known masks for a hand-written row: left padding is not attended, the completion runs up to and
    including the first EOS; a reward_fn of the wrong shape is refused."""
    tokens = np.array([[0, 3, 4, EOS_ID, 5, 6]], np.int32)
    prompt_mask = np.array([[False, True]])
    batch = rl.rollout_batch_from_tokens(tokens, prompt_mask, EOS_ID, target_fraction_reward)
    np.testing.assert_array_equal(batch.completion_mask, [[0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(batch.attention_mask, [[0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(batch.prompt_mask, [[0, 1, 0, 0, 0, 0]])
    np.testing.assert_allclose(batch.rewards, [0.0])
    with pytest.raises(ValueError, match="reward_fn returned shape"):
        rl.rollout_batch_from_tokens(tokens, prompt_mask, EOS_ID, lambda t, m: np.zeros((2,)))


# ---------------------------------------------------------------------------- controls and monitoring


def test_shuffle_within_groups_permutes_each_group_and_nothing_across():
    """The placebo keeps every group's multiset of rewards (so its mean and spread), moves rewards only within
    their group, is reproducible for a key, and actually reorders."""
    rewards = jnp.arange(24, dtype=jnp.float32)
    shuffled = np.asarray(rl.shuffle_within_groups(jax.random.key(0), rewards, 6)).reshape(4, 6)
    np.testing.assert_array_equal(np.sort(shuffled, axis=-1), np.arange(24).reshape(4, 6))
    assert not np.array_equal(shuffled, np.arange(24).reshape(4, 6))
    np.testing.assert_array_equal(shuffled.ravel(), rl.shuffle_within_groups(jax.random.key(0), rewards, 6))


def test_group_reward_statistics_known_values():
    """Groups (1, 1, 1) and (0, 1, 0.5): one of two has all-equal rewards; mean within-group std is
    (0 + std(0, 1, 0.5)) / 2."""
    result = rl.group_reward_statistics(jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.5]), 3)
    assert float(result["zero_advantage_group_fraction"]) == 0.5
    assert float(result["reward_std_within_group"]) == pytest.approx(np.std([0.0, 1.0, 0.5]) / 2)


def test_distinct_completions_per_group_ignores_tokens_outside_the_completion():
    """Two groups of three rows: the first has two different completions (rows 0 and 1 differ only after their
    EOS, outside the completion mask, so they count once); the second has three."""
    tokens = np.array([[3, 4, 1, 5], [3, 4, 1, 6], [3, 5, 1, 0], [3, 3, 3, 1], [4, 3, 3, 1], [5, 3, 3, 1]])
    completion_mask = np.array([[1, 1, 1, 0]] * 3 + [[1, 1, 1, 1]] * 3, bool)
    assert rl.distinct_completions_per_group(tokens, completion_mask, 3) == pytest.approx(2.5)


def test_kl_to_start_is_zero_at_the_start_and_equals_the_k3_estimate(model):
    """With the start parameters themselves the KL is exactly 0; with perturbed parameters it equals the
    per-token k3 estimate exp(s - c) - (s - c) - 1 averaged over the real completion tokens, recomputed here
    from one forward pass per model with the whole generation region masked."""
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    batch = jax.tree.map(jnp.asarray, _hand_batch())
    assert float(rl.kl_to_start(graphdef, params, params, frozen, batch, MASK_ID)) == 0.0
    moved = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), params)
    noised = apply_mask(batch.tokens, batch.attention_mask & ~batch.prompt_mask, MASK_ID)

    def logp(trainable):
        logits = nnx.merge(graphdef, trainable, frozen)(noised, batch.attention_mask)
        return np.asarray(token_log_probs(logits, batch.tokens), np.float64)

    log_ratio = logp(params) - logp(moved)
    mask = np.asarray(batch.completion_mask)
    expected = np.sum((np.exp(log_ratio) - log_ratio - 1.0) * mask) / mask.sum()
    result = float(rl.kl_to_start(graphdef, moved, params, frozen, batch, MASK_ID))
    assert result > 0 and result == pytest.approx(expected, rel=1e-4)


# ------------------------------------------------------------------------------------ loss composition


def _hand_batch(num_rows=8, prompt_length=2, gen_length=4, seed=0):
    """A scored batch without the sampler: random non-mask tokens, EOS in some rows, random rewards."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, MASK_ID, size=(num_rows, prompt_length + gen_length)).astype(np.int32)
    tokens[::3, prompt_length + 2] = EOS_ID
    prompt_mask = np.ones((num_rows, prompt_length), bool)
    batch = rl.rollout_batch_from_tokens(tokens, prompt_mask, EOS_ID, target_fraction_reward)
    return batch._replace(rewards=rng.uniform(size=num_rows).astype(np.float32))


LOSS_CASES = [("fpo", "mix"), ("diffu_grpo", "mix"), ("spg", "elbo"), ("spg", "eubo"), ("spg", "mix")]


@pytest.fixture(scope="module")
def composition_inputs(model):
    """Per method: the prepared inputs (first inner iteration) of one batch, computed once with beta > 0."""
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    batch = jax.tree.map(jnp.asarray, _hand_batch())
    prepared = {}
    for method, estimator in LOSS_CASES:
        config = RLConfig(algo=method, spg_estimator=estimator, dipod_beta=0.05,
                          kl_beta=0.0 if method == "spg" else 0.04, **TINY)
        state = rl.init_train_state(params, config)
        advantages = jnp.asarray(np.linspace(-1.0, 1.0, 8), jnp.float32)
        fixed, per_iteration = rl.prepare_inputs(config, graphdef, MASK_ID, state, frozen, batch, advantages,
                                                 jax.random.key(3))
        prepared[method, estimator] = {**fixed, **jax.tree.map(lambda x: x[0], per_iteration)}
    return graphdef, params, frozen, prepared


@pytest.mark.parametrize("method, estimator", LOSS_CASES)
def test_loss_composition_baseline_and_dipod_term(composition_inputs, method, estimator):
    """For every method: at the start of the batch the ratio is exactly 1 (old = current parameters); beta = 0
    gives the loss of dipod_jax.losses.lm evaluated on independently computed log-likelihoods; and
    loss(beta) - loss(0) = -beta * mean ELBO, with the ELBO recomputed by `elbo_masked` (fpo; diffu_grpo as a
    token mean, sum ELBO / sum L) or per draw by hand (spg, length-weighted)."""
    graphdef, params, frozen, prepared = composition_inputs
    inputs = prepared[method, estimator]
    model = nnx.merge(graphdef, params, frozen)
    logits_fn = functools.partial(model, attention_mask=inputs["attention_mask"])
    tokens, completion_mask, advantages = inputs["tokens"], inputs["completion_mask"], inputs["advantages"]
    kl_beta = 0.0 if method == "spg" else 0.04
    losses = {}
    for beta in (0.0, 0.05):
        config = RLConfig(algo=method, spg_estimator=estimator, dipod_beta=beta, kl_beta=kl_beta, **TINY)
        losses[beta] = jax.jit(functools.partial(rl.rl_loss, config, graphdef, MASK_ID))(params, frozen, inputs)

    if method == "spg":
        masks = jnp.swapaxes(inputs["spg_masks"], 0, 1)
        scored = masks & completion_mask[None]
        per_draw = []
        for draw in range(masks.shape[0]):
            logp = token_log_probs(logits_fn(apply_mask(tokens, masks[draw], MASK_ID)), tokens)
            per_draw.append(jnp.sum(jnp.where(scored[draw], logp, 0), -1) / jnp.maximum(scored[draw].sum(-1), 1))
        elbo = jnp.mean(jnp.stack(per_draw), axis=0)
        lengths = completion_mask.sum(-1)
        dipod_mean = jnp.sum(elbo * lengths) / jnp.sum(lengths)
        if estimator == "elbo":
            expected_baseline = -jnp.sum(advantages * elbo * lengths) / jnp.sum(lengths)
            np.testing.assert_allclose(losses[0.0][0], expected_baseline, rtol=1e-5, atol=1e-6)
        else:
            # The upper side only replaces the non-positive-advantage rows; the positive rows use the ELBO.
            positive = advantages > 0
            positive_part = -jnp.sum(jnp.where(positive, advantages * elbo * lengths, 0)) / jnp.sum(lengths)
            assert float(losses[0.0][1]["positive_fraction"]) == pytest.approx(float(jnp.mean(positive)))
            assert np.isfinite(float(losses[0.0][0])) and float(losses[0.0][0]) != pytest.approx(
                float(positive_part))
    else:
        elbo_masks = jnp.swapaxes(inputs["elbo_masks"], 0, 1)
        elbo = elbo_masked(logits_fn, tokens, completion_mask, elbo_masks, MASK_ID)
        # FPO: the mean sequence ELBO; diffu-GRPO: its token mean, the scale of its token-mean loss.
        dipod_mean = jnp.mean(elbo) if method == "fpo" else jnp.sum(elbo) / jnp.sum(completion_mask)
        if method == "fpo":
            expected = fpo_dllm_loss(elbo, elbo, advantages, 0.5, elbo_ref=elbo, kl_beta=kl_beta, dipod_beta=0.0)[0]
        else:
            one_step = token_log_probs(logits_fn(apply_mask(tokens, inputs["one_step_mask"], MASK_ID)), tokens)
            expected = diffu_grpo_loss(one_step, one_step, advantages, completion_mask, 0.5,
                                       token_logp_ref=one_step, kl_beta=kl_beta, dipod_beta=0.0)[0]
        np.testing.assert_allclose(losses[0.0][0], expected, rtol=1e-5, atol=1e-6)
        assert float(losses[0.0][1]["ratio_mean"]) == pytest.approx(1.0, abs=1e-6)
        assert float(losses[0.0][1]["clip_fraction"]) == 0.0
    assert float(losses[0.0][1]["dipod_term"]) == 0.0
    np.testing.assert_allclose(losses[0.05][0] - losses[0.0][0], -0.05 * dipod_mean, rtol=1e-4, atol=1e-6)


def test_spg_draws_fresh_block_random_masks_per_inner_iteration(model):
    """As the release (one mask seed per inner iteration): SPG's masks and t_emp are per-iteration inputs
    [mu, N, M, T] / [mu, N, M], different between iterations; each hides the window's padding after the EOS and
    satisfies t_emp = masked real tokens / L; prompt positions are hidden only with spg_use_mask_prompt."""
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    batch = jax.tree.map(jnp.asarray, _hand_batch())
    advantages = jnp.asarray(np.linspace(-1.0, 1.0, 8), jnp.float32)
    completion = np.asarray(batch.completion_mask)
    prompt_region = np.zeros_like(completion)
    prompt_region[:, :2] = True
    hidden_prompt = {}
    for use_mask_prompt in (True, False):
        config = RLConfig(algo="spg", spg_use_mask_prompt=use_mask_prompt, **TINY)
        fixed, per_iteration = rl.prepare_inputs(config, graphdef, MASK_ID, rl.init_train_state(params, config),
                                                 frozen, batch, advantages, jax.random.key(4))
        assert "spg_masks" not in fixed
        masks, t_emp = np.asarray(per_iteration["spg_masks"]), np.asarray(per_iteration["t_emp"])
        assert masks.shape == (2, 8, 2, 6) and t_emp.shape == (2, 8, 2)
        assert not np.array_equal(masks[0], masks[1])
        padding = ~completion & ~prompt_region
        assert np.all(masks[:, padding[:, None].repeat(2, 1)])
        real = completion[None, :, None]
        np.testing.assert_allclose(t_emp, (masks & real).sum(-1) / real.sum(-1))
        hidden_prompt[use_mask_prompt] = masks[..., :2].any()
    assert hidden_prompt == {True: True, False: False}


# ------------------------------------------------------------------------------------ training dynamics


# FPO + DiPOD with a reference KL synced every 3 steps.
TRIVIAL_TASK_CONFIG = RLConfig(algo="fpo", dipod_beta=0.05, kl_beta=0.01, ref_sync_every=3, learning_rate=3e-2,
                               rollout_temperature=1.0, max_grad_norm=1.0, weight_decay=0.0, **TINY)


@pytest.fixture(scope="module")
def trivial_task_run(model):
    """Eight steps of TRIVIAL_TASK_CONFIG on the target-token task."""
    config = TRIVIAL_TASK_CONFIG
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    state = rl.init_train_state(params, config)
    sample_fn = rl.make_sample_fn(config, graphdef, MASK_ID)
    update_fn = rl.make_update_fn(config, graphdef, MASK_ID)
    prompts = np.array([[3, 4], [6, 4]], np.int32)
    history = []
    for step in range(8):
        before = jax.tree.map(np.asarray, state)
        state, metrics, _ = rl.rl_step(state, frozen, prompts, np.ones_like(prompts, bool), target_fraction_reward,
                                       jax.random.key(step), config=config, sample_fn=sample_fn,
                                       update_fn=update_fn, eos_id=EOS_ID)
        history.append((before, jax.tree.map(np.asarray, state), jax.tree.map(float, metrics)))
    return params, history


def test_make_rl_record_repeats_the_free_functions(model, trivial_task_run):
    """make_rl's init and step are the split model, init_train_state and rl_step with the cached sampler and
    update: its first step gives the trivial-task run's first state and metrics exactly, and sampler_at binds the
    frozen part to the exact sampler at another temperature."""
    trainer = rl.make_rl(TRIVIAL_TASK_CONFIG, model, mask_id=MASK_ID, eos_id=EOS_ID)
    params, history = trivial_task_run
    state = trainer.init()
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, params))
    prompts = np.array([[3, 4], [6, 4]], np.int32)
    state, metrics, batch = trainer.step(state, prompts, np.ones_like(prompts, bool), target_fraction_reward,
                                         jax.random.key(0))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, state), history[0][1])
    assert jax.tree.map(float, metrics) == history[0][2]
    rows = np.repeat(prompts, TRIVIAL_TASK_CONFIG.num_generations, axis=0)
    tokens = trainer.sampler_at(TRIVIAL_TASK_CONFIG.rollout_temperature)(
        state.params, rows, np.ones_like(rows, bool), jax.random.key(1))
    assert tokens.shape == batch.tokens.shape


def test_rl_steps_raise_the_reward_on_a_trivial_task(trivial_task_run):
    """Rewarding the fraction of completion tokens equal to one target token, a few RL steps take the batch
    reward from near chance (1/6 of the non-special tokens) to near 1."""
    _, history = trivial_task_run
    rewards = [metrics["reward_mean"] for _, _, metrics in history]
    assert rewards[0] < 0.4
    assert np.mean(rewards[-2:]) > 0.8, rewards
    assert all(np.isfinite(metrics["loss"]) for _, _, metrics in history)


def test_step_metrics_monitor_the_signal_and_the_distance_to_the_start(trivial_task_run):
    """Every step logs the group statistics, distinct completions and the pre-clip gradient norm; the KL of the
    rollout policy to the start model is exactly 0 at the first step (nothing has moved) and positive once the
    parameters have moved; the start copy never changes."""
    initial, history = trivial_task_run
    for _, after, metrics in history:
        assert 0.0 <= metrics["zero_advantage_group_fraction"] <= 1.0 and metrics["reward_std_within_group"] >= 0
        assert 1.0 <= metrics["distinct_completions_per_group"] <= TRIVIAL_TASK_CONFIG.num_generations
        assert metrics["grad_norm"] > 0
        chex.assert_trees_all_equal(after.start_params, jax.tree.map(np.asarray, initial))
    assert history[0][2]["kl_to_start"] == 0.0
    assert all(metrics["kl_to_start"] > 0 for _, _, metrics in history[1:])


def test_placebo_update_is_the_update_on_rewards_shuffled_within_groups(model, trivial_task_run):
    """The placebo switch changes nothing but the rewards the advantages are formed from: its update equals the
    plain update on the batch whose rewards were shuffled within groups by the same key, it differs from the
    plain update on the true rewards, and the logged rewards are the true ones.
    (Uses the trivial-task fixture so that the plain update is already compiled.)"""
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    batch = jax.tree.map(jnp.asarray, _hand_batch())
    key = jax.random.key(5)
    config = TRIVIAL_TASK_CONFIG
    plain = rl.make_update_fn(config, graphdef, MASK_ID)
    placebo = rl.make_update_fn(dataclasses.replace(config, placebo=True), graphdef, MASK_ID)
    shuffled = batch._replace(rewards=rl.shuffle_within_groups(jax.random.fold_in(key, 1), batch.rewards,
                                                               config.num_generations))
    placebo_state, placebo_metrics = placebo(rl.init_train_state(params, config), frozen, batch, key)
    shuffled_state, _ = plain(rl.init_train_state(params, config), frozen, shuffled, key)
    true_state, true_metrics = plain(rl.init_train_state(params, config), frozen, batch, key)
    chex.assert_trees_all_close(placebo_state.params, shuffled_state.params, rtol=1e-6, atol=1e-7)
    assert not np.allclose(placebo_state.params["w_q"], true_state.params["w_q"])
    for name in ("reward_mean", "reward_std", "reward_std_within_group"):
        assert float(placebo_metrics[name]) == pytest.approx(float(true_metrics[name]))


def test_reference_model_syncs_every_ref_sync_every_steps(trivial_task_run):
    """The reference copy equals the initial parameters until step 3, then equals the parameters right after
    steps 3 and 6, and is untouched by the steps in between."""
    initial, history = trivial_task_run
    for step, (before, after, _) in enumerate(history, start=1):
        assert int(after.step) == step
        expected = after.params if step % 3 == 0 else before.ref_params
        chex.assert_trees_all_equal(after.ref_params, expected)
    chex.assert_trees_all_equal(history[0][1].ref_params, jax.tree.map(np.asarray, initial))
    assert not np.allclose(history[0][1].params["w_q"], history[0][1].ref_params["w_q"])


def test_gradient_accumulation_matches_the_full_batch_update(model, trivial_task_run):
    """FPO's loss (with its ELBO KL and DiPOD terms) is a plain mean over rows, so averaging the gradients of two
    equal micro-batches gives the full-batch gradient: the updated parameters agree to float tolerance.
    (Uses the trivial-task fixture so that the accumulation-1 update is already compiled.)"""
    graphdef, params, frozen = rl.split_model(model, lora_only=False)
    batch = jax.tree.map(jnp.asarray, _hand_batch())
    updated = []
    for accumulation in (1, 2):
        config = dataclasses.replace(TRIVIAL_TASK_CONFIG, grad_accum_steps=accumulation)
        state, _ = rl.make_update_fn(config, graphdef, MASK_ID)(
            rl.init_train_state(params, config), frozen, batch, jax.random.key(5))
        updated.append(state.params)
    chex.assert_trees_all_close(updated[0], updated[1], rtol=1e-4, atol=1e-6)
    assert not np.allclose(updated[0]["w_q"], params["w_q"])


# ------------------------------------------------------------------------------------------- experiment


TEST_ITEMS = 24  # the experiment tests' test set: the shipped Sudoku set's first items, scored whole at start and end


@pytest.fixture(scope="module")
def small_test_path(tmp_path_factory):
    from dipod_jax.lm.tasks import sudoku

    path = tmp_path_factory.mktemp("test_set") / "test.csv"
    items = sudoku.load_test_set()[:TEST_ITEMS]
    path.write_text("Puzzle,Solution\n" + "".join(f"{item.puzzle},{item.solution}\n" for item in items))
    return str(path)


def _rl_settings(pretrained_dir, test_path, out_dir, steps, resume=False):
    from experiments import lm_rl

    overrides = (("algo", "fpo"), ("dipod_beta", 0.05), ("num_prompts", 2), ("num_generations", 2),
                 ("num_inner_iterations", 2), ("kl_beta", 0.04), ("ref_sync_every", 3), ("learning_rate", 1e-3),
                 ("num_elbo_draws", 2), ("rollout_temperature", 1.0))
    return lm_rl.RLRunSettings(workdir=str(out_dir), init_dir=pretrained_dir, config_overrides=overrides,
                               steps=steps, eval_interval=2, eval_items=4, test_path=test_path,
                               sampled_eval_k=2, resume=resume, num_devices=1, plot=False)


def _without_timing(records):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "train/step_s", "train/tokens_per_s")}
            for r in records]


def test_experiment_resume_is_bit_exact(pretrained_dir, small_test_path, tmp_path):
    """Four steps in one go and two steps + a resume to four give identical parameters, optimizer-driven
    metrics and evaluations; the run writes checkpoints, rl_config.json and the logged metric names; and
    an existing output directory is refused without --resume."""
    from experiments import lm_rl

    straight = lm_rl.train(_rl_settings(pretrained_dir, small_test_path, tmp_path / "straight", 4), show_progress=False)
    lm_rl.train(_rl_settings(pretrained_dir, small_test_path, tmp_path / "resumed", 2), show_progress=False)
    with pytest.raises(ValueError, match="pass --resume"):
        lm_rl.train(_rl_settings(pretrained_dir, small_test_path, tmp_path / "resumed", 4), show_progress=False)
    resumed = lm_rl.train(_rl_settings(pretrained_dir, small_test_path, tmp_path / "resumed", 4, resume=True),
                          show_progress=False)
    assert straight.step == resumed.step == 4 and resumed.stopped == "completed"
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, straight.final_params),
                                jax.tree.map(np.asarray, resumed.final_params))
    straight_records = read_metrics(str(tmp_path / "straight"))
    assert _without_timing(straight_records) == _without_timing(read_metrics(str(tmp_path / "resumed")))
    train_record = next(r for r in straight_records if "train/loss" in r)
    for name in ("reward_mean", "elbo", "dipod_term", "kl", "clip_fraction", "ratio_mean", "tokens_per_s",
                 "kl_to_start", "zero_advantage_group_fraction", "reward_std_within_group",
                 "distinct_completions_per_group", "grad_norm"):
        assert np.isfinite(train_record[f"train/{name}"]), name
    assert [r["step"] for r in straight_records if "eval/mean_reward" in r] == [0, 2, 4]
    assert (tmp_path / "straight" / "rl_config.json").exists()
    # The paired evaluation scores the whole test set at the start and the end, also across a resume; the
    # logged curve (first 4 items) is the first 4 of those per-item rewards.
    paired = {name: read_json(str(tmp_path / name / "paired_eval.json")) for name in ("straight", "resumed")}
    assert paired["straight"] == paired["resumed"]
    result = paired["straight"]
    assert result["start"]["items"] == result["end"]["items"] == result["difference"]["n"] == TEST_ITEMS
    end_rewards = np.asarray(result["end_rewards"])
    assert result["end"]["mean_reward"] == pytest.approx(end_rewards.mean())
    assert straight_records[-1]["eval/mean_reward"] == pytest.approx(end_rewards[:4].mean())
    paired_mean = result["end"]["mean_reward"] - result["start"]["mean_reward"]
    assert straight.paired_eval["mean"] == pytest.approx(paired_mean)


def test_experiment_settings_are_validated():
    """Bad run settings raise ValueError naming the flag when constructed, before any checkpoint is read; a
    --config field that is none, or the generation length (the checkpoint's), is refused naming its flag."""
    from experiments import lm_rl

    with pytest.raises(ValueError, match="exactly one of --init_dir and --llada_dir"):
        lm_rl.RLRunSettings(workdir="/tmp/x")
    with pytest.raises(ValueError, match="--steps"):
        lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y", steps=0)
    with pytest.raises(ValueError, match="--lora_alpha"):
        lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y", lora_rank=4)
    info = {"task": "sudoku", "template": "compact", "prompt_length": 20, "gen_length": 24}
    with pytest.raises(ValueError, match="--config.beta: not a field of RLConfig"):
        lm_rl.build_rl_config(lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y",
                                                  config_overrides=(("beta", 1.0),)), info)
    with pytest.raises(ValueError, match="--config.gen_length: the generation length is the checkpoint's"):
        lm_rl.build_rl_config(lm_rl.RLRunSettings(workdir="/tmp/x", init_dir="/tmp/y",
                                                  config_overrides=(("gen_length", 8),)), info)


def test_experiment_non_finite_stops_and_keeps_last_good_checkpoint(pretrained_dir, small_test_path, tmp_path):
    """With an absurd learning rate after a zero-rate first update (warm-up) training diverges within a few
    steps: the run stops, logs the event once, and the newest checkpoint left holds finite parameters; when
    the loss itself was non-finite, the checkpoint of the parameters that produced it was deleted (this run
    wrote it), so the loss logged at the step after the newest checkpoint is finite."""
    from experiments import lm_rl

    settings = _rl_settings(pretrained_dir, small_test_path, tmp_path, 6)
    overrides = dict(settings.config_overrides, num_inner_iterations=1, learning_rate=1e30, warmup_steps=4)
    settings = dataclasses.replace(settings, config_overrides=tuple(overrides.items()), checkpoint_interval=1,
                                   eval_interval=10)
    summary = lm_rl.train(settings, show_progress=False)
    assert summary.stopped == "non_finite" and 1 < summary.step < 6
    records = read_metrics(str(tmp_path))
    events = [r for r in records if r.get("event") == "non_finite"]
    assert len(events) == 1 and events[0]["step"] == summary.step + 1
    store = CheckpointStore(str(tmp_path), read_only=True)
    newest = store.latest()
    assert events[0]["newest_checkpoint"] == summary.newest_checkpoint == newest
    kept = store.restore(newest, {"state": None})["state"]
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(kept["params"]))
    if "loss" in summary.problem:
        assert newest == summary.step - 1 and store.steps() == [newest]
        assert np.isfinite(next(r["train/loss"] for r in records if r["step"] == newest + 1 and "train/loss" in r))
    else:
        assert newest == summary.step
