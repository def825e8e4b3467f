"""experiments.lm_pretrain on a tiny model: the SFT loss (dipod_jax.lm.pretrain) has its known value, the loss
goes down, outputs are written (dipod_jax.run), resume is exact, a non-finite loss stops the run,
load_pretrained rebuilds the model, evaluate (dipod_jax.lm.evaluation) scores with the task reward."""
import dataclasses
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dipod_jax.lm import data, pretrain
from dipod_jax.lm.evaluation import evaluate
from dipod_jax.lm.tasks import get_task
from dipod_jax.lm.tokenizer import char_tokenizer
from dipod_jax.losses.masked import mask_uniform_count
from dipod_jax.models.llada import LLaDA, LLaDAConfig
from dipod_jax.run.files import CHECKPOINT_DIR, read_metrics
from experiments import lm_pretrain

pytestmark = pytest.mark.integration

TINY = dict(task="sudoku", model_size="tiny", batch=16, learning_rate=3e-3, warmup_steps=5, decay_steps=30,
            eval_items=8, extra_eval_tasks="sudoku_split_new", log_interval=5)


def _checkpoint_params(out_dir, step=None):
    model, _, _ = pretrain.load_pretrained(out_dir, step)
    return nnx.to_pure_dict(nnx.split(model)[1])


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """30 uninterrupted steps, checkpoint/eval every 10."""
    out_dir = str(tmp_path_factory.mktemp("straight"))
    settings = lm_pretrain.PretrainSettings(workdir=out_dir, steps=30, eval_interval=10, **TINY)
    return out_dir, lm_pretrain.train(settings, show_progress=False)


def test_loss_decreases_and_outputs_written(straight_run):
    """The logged training loss falls by more than a third within 30 steps, and the run writes config.json,
    metrics.jsonl (loss and eval records for both Sudoku test sets), TensorBoard events and Orbax
    checkpoints (newest two kept)."""
    out_dir, summary = straight_run
    assert summary["stopped"] == "completed" and summary["step"] == 30
    losses = [r["train/loss"] for r in read_metrics(out_dir) if "train/loss" in r]
    assert len(losses) == 6 and losses[-1] < 0.66 * losses[0]
    evals = [r for r in read_metrics(out_dir) if "eval/mean_reward" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert all(0.0 <= r["eval/mean_reward"] <= 1.0 and r["eval/items"] == 8 for r in evals)
    assert all(0.0 <= r["eval_sudoku_split_new/mean_reward"] <= 1.0 for r in evals)
    assert sorted(os.listdir(os.path.join(out_dir, CHECKPOINT_DIR))) == ["20", "30"]
    assert any(name.startswith("events") for name in os.listdir(os.path.join(out_dir, "tb")))
    with open(os.path.join(out_dir, pretrain.CONFIG_FILE)) as handle:
        config = json.load(handle)
    assert (config["prompt_length"], config["gen_length"]) == (17, 19)
    assert config["model"]["mask_token_id"] == char_tokenizer().mask_id


def test_resume_matches_uninterrupted_run(straight_run, tmp_path):
    """20 steps, then --resume to 30, gives bit-identical parameters to 30 straight steps (same data and
    masking per step, optimizer state restored), and metrics continue from step 21."""
    straight_dir, _ = straight_run
    out_dir = str(tmp_path)
    first = lm_pretrain.PretrainSettings(workdir=out_dir, steps=20, eval_interval=10, **TINY)
    assert lm_pretrain.train(first, show_progress=False)["step"] == 20
    with pytest.raises(ValueError, match="--resume"):
        lm_pretrain.train(first, show_progress=False)
    resumed = lm_pretrain.train(dataclasses.replace(first, steps=30, resume=True), show_progress=False)
    assert resumed["step"] == 30
    jax.tree.map(np.testing.assert_array_equal, _checkpoint_params(out_dir), _checkpoint_params(straight_dir))
    loss_steps = [r["step"] for r in read_metrics(out_dir) if "train/loss" in r]
    assert loss_steps == [5, 10, 15, 20, 25, 30]


def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path):
    """With an absurd learning rate training diverges; the run stops, logs the event once, and the newest
    checkpoint left holds finite parameters."""
    settings = lm_pretrain.PretrainSettings(workdir=str(tmp_path), steps=20, eval_interval=1,
                                            **dict(TINY, learning_rate=1e30, warmup_steps=3, eval_items=2))
    summary = lm_pretrain.train(settings, show_progress=False)
    assert summary["stopped"] == "non_finite" and summary["step"] < 20
    event = [r for r in read_metrics(str(tmp_path)) if r.get("event") == "non_finite"]
    assert len(event) == 1 and event[0]["newest_checkpoint"] == summary["newest_checkpoint"] is not None
    params = _checkpoint_params(str(tmp_path))
    assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(params))


def test_load_pretrained_rebuilds_model(straight_run):
    """load_pretrained gives a model with the config's vocabulary and the tokenizer it was trained with;
    its logits on a batch equal those of the stored parameters bound by the training code."""
    out_dir, _ = straight_run
    model, tokenizer, config = pretrain.load_pretrained(out_dir)
    task = get_task(config["task"])
    items = task.load_test()[:2]
    batch = data.task_batch(task, items, tokenizer, config["template"], config["prompt_length"],
                            config["gen_length"], with_completions=False)
    logits = model(jnp.asarray(batch.tokens), jnp.asarray(batch.attention_mask))
    assert logits.shape == (2, 36, tokenizer.vocab_size) and bool(jnp.isfinite(logits).all())
    with pytest.raises(ValueError, match="no checkpoint 7"):
        pretrain.load_pretrained(out_dir, step=7)
    with pytest.raises(ValueError, match="config.json does not exist"):
        pretrain.load_pretrained(os.path.join(out_dir, "missing"))


class SftLossTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_uniform_model_known_value(self):
        """With a zero output head every token has log-prob -log V, so each draw's ELBO / L is -log V when at
        least one token is masked and 0 otherwise: the loss is log V times the fraction of rows with a mask."""
        tokenizer, task = char_tokenizer(), get_task("sudoku")
        model_config = LLaDAConfig.tiny(vocab_size=tokenizer.vocab_size, max_seq_len=36,
                                                    mask_token_id=tokenizer.mask_id)
        graphdef, state = nnx.split(LLaDA(model_config, rngs=nnx.Rngs(0)))
        params = nnx.to_pure_dict(state)
        params["head"] = jnp.zeros_like(params["head"])
        batch = data.task_batch(task, task.generate(np.random.default_rng(0), 6), tokenizer, "compact", 17, 19)
        key = jax.random.key(3)
        loss_fn = self.variant(lambda p, k: pretrain.sft_loss(
            p, graphdef, state, batch.tokens, batch.attention_mask, batch.response_mask, k, tokenizer.mask_id, 1))
        mask, _ = mask_uniform_count(key, jnp.asarray(batch.response_mask), 1)
        expected = math.log(tokenizer.vocab_size) * float(jnp.mean(mask[0].any(axis=-1)))
        self.assertAlmostEqual(float(loss_fn(params, key)), expected, places=4)
        self.assertFalse(bool((mask[0] & ~batch.response_mask).any()))


def test_evaluate_scores_an_oracle_sampler():
    """evaluate() decodes the generation region and applies the task reward: a sampler that writes the
    true solutions scores 1.0, one that writes nothing scores 0.0."""
    tokenizer, task = char_tokenizer(), get_task("sudoku")
    items = task.load_test()[:3]
    config = {"task": "sudoku", "template": "compact", "prompt_length": 17, "gen_length": 19}
    solved = data.task_batch(task, items, tokenizer, "compact", 17, 19).tokens

    def oracle(params, prompt, prompt_mask, key):
        return jnp.asarray(solved)

    def silent(params, prompt, prompt_mask, key):
        return jnp.concatenate([prompt, jnp.full((3, 19), tokenizer.eos_id, prompt.dtype)], axis=1)

    key = jax.random.key(0)
    assert evaluate(oracle, None, config, tokenizer, items, key) == {
        "mean_reward": 1.0, "exact_fraction": 1.0, "items": 3}
    assert evaluate(silent, None, config, tokenizer, items, key)["mean_reward"] == 0.0


@pytest.mark.parametrize("change,flag", [
    (dict(task="gsm8k"), "--task"), (dict(template="fancy"), "--template"), (dict(steps=0), "--steps"),
    (dict(learning_rate=float("nan")), "--learning_rate"), (dict(model_size="huge"), "--model_size"),
    (dict(workdir=""), "--workdir"),
    (dict(task="chess"), "--task"), (dict(extra_eval_tasks="sudoku_split_new,gsm8k"), "--extra_eval_tasks"),
])
def test_bad_settings_name_the_flag(change, flag, tmp_path):
    """Invalid settings raise ValueError naming the flag when the settings are constructed, before anything is
    built."""
    with pytest.raises(ValueError, match=flag):
        dataclasses.replace(lm_pretrain.PretrainSettings(workdir=str(tmp_path)), **change)
