"""Supervised pre-training of a small LLaDA-style masked diffusion model on a synthetic task, from scratch.

    python -m experiments.lm_pretrain --task=sudoku --out_dir=/tmp/sudoku_pretrain \
        --extra_eval_tasks=sudoku_split_new                     # the default recipe: ~0.7 test reward
    python -m experiments.lm_pretrain --task=sudoku --out_dir=/tmp/sudoku_pretrain --resume   # after a stop
    python -m experiments.lm_pretrain --task=countdown --out_dir=/tmp/countdown_pretrain --steps=1500

Objective: LLaDA's SFT loss. The prompt stays visible; of the L positions of the generation region (the
completion and its eos padding) k ~ U{0, ..., L-1} are masked (`mask_uniform_count`), and the loss is
-ELBO / L = -(1/k) * sum_{masked} log p(token | noised sequence), i.e. the 1/t-weighted cross-entropy with
t = k / L (`elbo_masked`). (`mask_uniform_count` never masks all L positions; the sampler's first step,
where all are masked, is one token away from the k = L - 1 states it is trained on.) Training items are
generated afresh every step from a generator seeded by (seed, step), so a resumed run sees exactly the data
an uninterrupted run would.

Evaluation: the LLaDA sampler (`dipod_jax.lm.sampler.generate`, one block, one token per step by default,
low-confidence remasking, greedy) on the held-out test set(s); reported as the mean task reward (Sudoku:
mean fraction of empty cells right) and the fraction of items with reward 1.

Outputs in --out_dir: config.json (everything `load_pretrained` needs to rebuild model and tokenizer),
checkpoints/<step>/ (Orbax, written atomically; the newest two kept), metrics.jsonl, tb/ (TensorBoard).
A non-finite loss stops the run before its update is applied; if the newest checkpoint holds the parameters
that produced it, that checkpoint is deleted, so the newest one left is the last good one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import app, flags, logging
from flax import nnx

from dipod_jax.lm import data
from dipod_jax.lm.sampler import generate
from dipod_jax.lm.tasks import TASKS, get_task
from dipod_jax.lm.tokenizer import Tokenizer, char_tokenizer, tokenizer_config, tokenizer_from_config
from dipod_jax.losses.masked import elbo_masked, mask_uniform_count
from dipod_jax.models.llada import LLaDA, LLaDAConfig

# (d_model, n_layers, n_heads, mlp_hidden)
MODEL_SIZES = {
    "tiny": (32, 2, 4, 64),
    "small": (128, 4, 4, 384),
    "base": (256, 6, 8, 768),
}
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Everything a run depends on (the flags, as one record; these defaults are the flags' defaults).

    The defaults are the CPU recipe for Sudoku: about 0.8 mean cell accuracy on the 500-puzzle test set, so
    that RL has room to improve (see the README for measured numbers)."""

    out_dir: str
    task: str = "sudoku"
    template: str = "compact"
    steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    decay_steps: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    num_draws: int = 1
    model_size: str = "small"
    seed: int = 0
    eval_interval: int = 100
    eval_items: int = 0
    test_path: str | None = None
    extra_eval_tasks: str = ""
    gen_steps: int = 0
    temperature: float = 0.0
    log_interval: int = 20
    time_budget_min: float = 0.0
    resume: bool = False


_DEFAULTS = PretrainSettings(out_dir="")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_string("task", _DEFAULTS.task, "Task to train on: sudoku or countdown (generated training data).")
    flags.DEFINE_string("template", _DEFAULTS.template, "Prompt template of the task (compact for the char-level model).")
    flags.DEFINE_integer("steps", _DEFAULTS.steps, "Total optimisation steps (a resumed run continues up to this count).")
    flags.DEFINE_integer("batch", _DEFAULTS.batch, "Training items per step.")
    flags.DEFINE_float("lr", _DEFAULTS.lr, "Peak AdamW learning rate (linear warm-up, then cosine decay to 10%).")
    flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Linear learning-rate warm-up steps.")
    flags.DEFINE_integer("decay_steps", _DEFAULTS.decay_steps,
                         "Length of the warm-up + cosine schedule (0 = --steps); fix it when a "
                         "resumed run will raise --steps, so the schedule does not change.")
    flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW weight decay.")
    flags.DEFINE_float("grad_clip", _DEFAULTS.grad_clip, "Global gradient-norm clip.")
    flags.DEFINE_integer("num_draws", _DEFAULTS.num_draws, "Masking draws per item per step (M of mask_uniform_count).")
    flags.DEFINE_enum("model_size", _DEFAULTS.model_size, list(MODEL_SIZES),
                      "Model size preset (d_model, layers, heads, mlp).")
    flags.DEFINE_string("out_dir", None, "Output directory (config, checkpoints, metrics, TensorBoard).")
    flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the model initialisation, data generation and masking.")
    flags.DEFINE_integer("eval_interval", _DEFAULTS.eval_interval,
                         "Evaluate and checkpoint every this many steps (and at the end).")
    flags.DEFINE_integer("eval_items", _DEFAULTS.eval_items, "Test items per evaluation (0 = the whole test set).")
    flags.DEFINE_string("test_path", _DEFAULTS.test_path, "Test file (default: the task's shipped test set).")
    flags.DEFINE_string("extra_eval_tasks", _DEFAULTS.extra_eval_tasks,
                        "Comma-separated further tasks whose shipped test sets are also evaluated "
                        "(e.g. sudoku_split_new); each is scored with its own reward.")
    flags.DEFINE_integer("gen_steps", _DEFAULTS.gen_steps, "Sampler denoising steps (0 = one token per step).")
    flags.DEFINE_float("temperature", _DEFAULTS.temperature, "Sampler temperature at evaluation (0 = greedy).")
    flags.DEFINE_integer("log_interval", _DEFAULTS.log_interval, "Write the training loss every this many steps.")
    flags.DEFINE_float("time_budget_min", _DEFAULTS.time_budget_min,
                       "Stop (with an evaluation and checkpoint) after this many minutes; 0 = none.")
    flags.DEFINE_bool("resume", _DEFAULTS.resume, "Continue from the newest checkpoint in --out_dir.")


def validate_settings(settings: PretrainSettings) -> None:
    """Raises ValueError naming the flag for any invalid setting (before anything is compiled)."""
    if not settings.out_dir:
        raise ValueError("--out_dir is required")
    if settings.task not in TASKS:
        raise ValueError(f"--task={settings.task!r} is not one of {sorted(TASKS)}")
    task = get_task(settings.task)
    if task.generate is None:
        raise ValueError(f"--task={settings.task} has no generator; pre-training needs sudoku or countdown")
    if settings.template not in task.templates:
        raise ValueError(f"--template={settings.template!r} is not one of {task.templates} for --task={settings.task}")
    if settings.model_size not in MODEL_SIZES:
        raise ValueError(f"--model_size={settings.model_size!r} is not one of {sorted(MODEL_SIZES)}")
    for name in ("steps", "batch", "num_draws", "eval_interval", "log_interval"):
        if getattr(settings, name) <= 0:
            raise ValueError(f"--{name}={getattr(settings, name)} must be > 0")
    for name in ("warmup_steps", "decay_steps", "eval_items", "gen_steps"):
        if getattr(settings, name) < 0:
            raise ValueError(f"--{name}={getattr(settings, name)} must be >= 0")
    if not (math.isfinite(settings.lr) and settings.lr > 0):
        raise ValueError(f"--lr={settings.lr} must be a finite number > 0")
    for name in _extra_eval_names(settings):
        if name not in TASKS or settings.template not in TASKS[name].templates:
            raise ValueError(f"--extra_eval_tasks: {name!r} is not a task with template {settings.template!r}")
    if settings.weight_decay < 0 or settings.grad_clip <= 0 or settings.temperature < 0 or settings.time_budget_min < 0:
        raise ValueError("--weight_decay, --temperature and --time_budget_min must be >= 0 and --grad_clip > 0")


def _extra_eval_names(settings: PretrainSettings) -> list[str]:
    return [name.strip() for name in settings.extra_eval_tasks.split(",") if name.strip()]


def evaluation_sets(settings: PretrainSettings) -> dict[str, list]:
    """{task name: test items} evaluated during the run: the task's test set (or --test_path), then the
    shipped sets of --extra_eval_tasks; each cut to --eval_items when that is > 0."""
    sets = {settings.task: get_task(settings.task).load_test(settings.test_path)}
    for name in _extra_eval_names(settings):
        sets[name] = get_task(name).load_test(None)
    return {name: items[: settings.eval_items] if settings.eval_items else items for name, items in sets.items()}


def build_run_config(settings: PretrainSettings, tokenizer: Tokenizer) -> dict[str, Any]:
    """The JSON config of a run: task, lengths, model, tokenizer and sampler settings."""
    task = get_task(settings.task)
    longest_prompt, gen_length = data.required_lengths(task, [task.longest_item()], tokenizer, settings.template)
    prompt_length = max([longest_prompt] + [
        data.required_lengths(get_task(name), items, tokenizer, settings.template, False)[0]
        for name, items in evaluation_sets(settings).items()])
    d_model, n_layers, n_heads, mlp_hidden = MODEL_SIZES[settings.model_size]
    model_config = LLaDAConfig.tiny(
        vocab_size=tokenizer.vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        mlp_hidden=mlp_hidden, max_seq_len=prompt_length + gen_length, mask_token_id=tokenizer.mask_id,
    )
    return {
        "task": settings.task,
        "template": settings.template,
        "prompt_length": prompt_length,
        "gen_length": gen_length,
        "model": model_config_to_dict(model_config),
        "tokenizer": tokenizer_config(tokenizer),
        "sampler": {"gen_length": gen_length, "block_length": gen_length,
                    "steps": settings.gen_steps or gen_length, "temperature": settings.temperature,
                    "remasking": "low_confidence"},
        "settings": dataclasses.asdict(settings),
    }


def model_config_to_dict(config: LLaDAConfig) -> dict[str, Any]:
    """LLaDAConfig -> JSON-ready dict (dtypes as names)."""
    fields = dataclasses.asdict(config)
    fields["dtype"] = jnp.dtype(config.dtype).name
    fields["param_dtype"] = jnp.dtype(config.param_dtype).name
    return fields


def model_config_from_dict(fields: dict[str, Any]) -> LLaDAConfig:
    """Inverse of `model_config_to_dict`."""
    fields = dict(fields, dtype=jnp.dtype(fields["dtype"]), param_dtype=jnp.dtype(fields["param_dtype"]))
    return LLaDAConfig(**fields)


def _bind(graphdef, state_template, params) -> LLaDA:
    """The model with `params` (a pure dict, possibly traced) put into a copy of `state_template`."""
    state = jax.tree.map(lambda leaf: leaf, state_template)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def sft_loss(params, graphdef, state_template, tokens, attention_mask, response_mask, key, mask_id: int,
             num_draws: int) -> jax.Array:
    """LLaDA SFT loss, a scalar: mean over items of -ELBO / L on the generation region.

    tokens int32 [B, T]; attention_mask, response_mask bool [B, T]; key: PRNG key for the forward masks.
    """
    chex.assert_rank(tokens, 2)
    chex.assert_equal_shape([tokens, attention_mask, response_mask])
    model = _bind(graphdef, state_template, params)
    mask, _ = mask_uniform_count(key, response_mask, num_draws)
    elbo = elbo_masked(lambda noised: model(noised, attention_mask), tokens, response_mask, mask, mask_id)
    return -jnp.mean(elbo / jnp.sum(response_mask, axis=-1))


def optimizer_hyperparameters(settings: PretrainSettings) -> tuple:
    """(lr, warmup_steps, decay_steps, weight_decay, grad_clip): the hashable key of `make_optimizer`."""
    decay_steps = max(settings.decay_steps or settings.steps, settings.warmup_steps + 1)
    return settings.lr, settings.warmup_steps, decay_steps, settings.weight_decay, settings.grad_clip


def make_optimizer(lr: float, warmup_steps: int, decay_steps: int, weight_decay: float,
                   grad_clip: float) -> optax.GradientTransformation:
    """AdamW (betas 0.9, 0.99) after global-norm clipping; linear warm-up, cosine decay to 10% of lr."""
    schedule = optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
                                                  decay_steps=decay_steps, end_value=0.1 * lr)
    return optax.chain(optax.clip_by_global_norm(grad_clip),
                       optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=weight_decay))


def _abstract_split(model_config: LLaDAConfig):
    """(graphdef, abstract state) of LLaDA(model_config), without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: LLaDA(model_config, rngs=nnx.Rngs(0))))


@functools.lru_cache(maxsize=8)
def training_functions(model_config: LLaDAConfig, optimizer_key: tuple, num_draws: int):
    """Jitted training functions of one configuration, cached so repeated runs (resume, sweeps) compile once.

    Returns (init_params, optimizer, train_step): init_params(PRNG key) -> pure-dict parameters (one compiled
    initialisation instead of one eager dispatch per weight); the optax transformation of `optimizer_key`;
    the step of `make_train_step`.
    """
    graphdef, state_template = _abstract_split(model_config)
    optimizer = make_optimizer(*optimizer_key)
    init_params = jax.jit(lambda key: nnx.to_pure_dict(nnx.split(LLaDA(model_config, rngs=nnx.Rngs(key)))[1]))
    train_step = make_train_step(graphdef, state_template, optimizer, model_config.mask_token_id, num_draws)
    return init_params, optimizer, train_step


@functools.lru_cache(maxsize=8)
def sampling_function(model_config: LLaDAConfig, sampler_key: tuple):
    """Cached `make_sampler` for sampler_key = (gen_length, block_length, steps, temperature, remasking)."""
    graphdef, state_template = _abstract_split(model_config)
    sampler_config = dict(zip(("gen_length", "block_length", "steps", "temperature", "remasking"), sampler_key))
    return make_sampler(graphdef, state_template, sampler_config, model_config.mask_token_id)


def make_train_step(graphdef, state_template, optimizer, mask_id: int, num_draws: int):
    """Jitted (params, opt_state, tokens, attention_mask, response_mask, key) -> (params, opt_state, loss).

    The update is computed but the caller keeps the old parameters when the loss is not finite.
    """
    def train_step(params, opt_state, tokens, attention_mask, response_mask, key):
        loss, grads = jax.value_and_grad(sft_loss)(params, graphdef, state_template, tokens, attention_mask,
                                                   response_mask, key, mask_id, num_draws)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_opt_state, loss

    return jax.jit(train_step)


def make_sampler(graphdef, state_template, sampler_config: dict[str, Any], mask_id: int):
    """Jitted (params, prompt [B, P], prompt_mask [B, P], key) -> tokens [B, P + gen_length]."""
    def sample(params, prompt, prompt_mask, key):
        return generate(_bind(graphdef, state_template, params), prompt, key,
                        gen_length=sampler_config["gen_length"], block_length=sampler_config["block_length"],
                        steps=sampler_config["steps"], temperature=sampler_config["temperature"],
                        remasking=sampler_config["remasking"], mask_id=mask_id, prompt_mask=prompt_mask)

    return jax.jit(sample)


def evaluate(sample_fn, params, run_config: dict[str, Any], tokenizer: Tokenizer, items, key,
             task_name: str | None = None) -> dict[str, float]:
    """Samples completions for `items` and scores them with the reward of `task_name` (default: the run's).

    Returns {"mean_reward", "exact_fraction" (reward == 1 for Sudoku/Countdown), "items"}.
    """
    task = get_task(task_name or run_config["task"])
    prompt_length = run_config["prompt_length"]
    batch = data.task_batch(task, items, tokenizer, run_config["template"], prompt_length,
                            run_config["gen_length"], with_completions=False)
    tokens = sample_fn(params, jnp.asarray(batch.tokens[:, :prompt_length]),
                       jnp.asarray(batch.prompt_mask[:, :prompt_length]), key)
    texts = data.decode_completions(tokenizer, np.asarray(tokens), prompt_length)
    rewards = np.array([task.reward(text, item) for text, item in zip(texts, items)])
    return {"mean_reward": float(rewards.mean()), "exact_fraction": float((rewards == 1.0).mean()),
            "items": len(items)}


def _checkpoint_manager(out_dir: str) -> ocp.CheckpointManager:
    # Orbax writes each step into a temporary directory and renames it when complete (atomic).
    return ocp.CheckpointManager(os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR)),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=2))


def _save(manager: ocp.CheckpointManager, step: int, params, opt_state) -> None:
    manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                               opt_state=ocp.args.StandardSave(opt_state)))
    manager.wait_until_finished()


def load_pretrained(out_dir: str, step: int | None = None) -> tuple[LLaDA, Tokenizer, dict[str, Any]]:
    """Rebuilds (model, tokenizer, run config) from a pre-training --out_dir (the newest step by default).

    Raises ValueError naming the directory when config.json or the checkpoint is missing.
    """
    config_path = os.path.join(out_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise ValueError(f"load_pretrained: {config_path} does not exist")
    with open(config_path) as handle:
        run_config = json.load(handle)
    tokenizer = tokenizer_from_config(run_config["tokenizer"])
    model_config = model_config_from_dict(run_config["model"])
    graphdef, state = _abstract_split(model_config)
    params = nnx.to_pure_dict(state)
    manager = _checkpoint_manager(out_dir)
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise ValueError(f"load_pretrained: no checkpoint {'' if step is None else step} in {out_dir}/{CHECKPOINT_DIR}")
    restored = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(params)))
    return _bind(graphdef, state, restored["params"]), tokenizer, run_config


def _training_batch(task, settings: PretrainSettings, run_config: dict[str, Any], tokenizer: Tokenizer,
                    step: int) -> data.TokenBatch:
    """Generated supervised items of `step`, drawn from a generator seeded by (seed, step)."""
    items = task.generate(np.random.default_rng([settings.seed, step]), settings.batch)
    return data.task_batch(task, items, tokenizer, settings.template, run_config["prompt_length"],
                           run_config["gen_length"])


class _MetricsLog:
    """Appends JSON lines to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str):
        from tensorboardX import SummaryWriter

        self._file = open(os.path.join(out_dir, METRICS_FILE), "a")
        self._writer = SummaryWriter(os.path.join(out_dir, "tb"))

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._writer.add_scalar(name, value, record["step"])

    def close(self) -> None:
        self._file.close()
        self._writer.close()


def train(settings: PretrainSettings, show_progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) pre-training; returns {"step", "stopped", "last_eval", "final_loss"}.

    "stopped" is "completed", "time_budget" or "non_finite_loss".
    """
    from tqdm import tqdm

    validate_settings(settings)
    os.makedirs(settings.out_dir, exist_ok=True)
    tokenizer = char_tokenizer()
    task = get_task(settings.task)
    config_path = os.path.join(settings.out_dir, CONFIG_FILE)
    run_config = build_run_config(settings, tokenizer)
    manager = _checkpoint_manager(settings.out_dir)
    if settings.resume and manager.latest_step() is not None:
        with open(config_path) as handle:
            saved = json.load(handle)
        for key in ("task", "template", "prompt_length", "gen_length", "model", "tokenizer"):
            if saved[key] != run_config[key]:
                raise ValueError(f"--resume: {key} of this run differs from {config_path}: "
                                 f"{saved[key]} != {run_config[key]}")
    elif manager.latest_step() is not None:
        raise ValueError(f"--out_dir={settings.out_dir} already holds checkpoints; pass --resume or a new directory")
    with open(config_path + ".tmp", "w") as handle:
        json.dump(run_config, handle, indent=2)
    os.replace(config_path + ".tmp", config_path)

    model_config = model_config_from_dict(run_config["model"])
    sampler = run_config["sampler"]
    init_params, optimizer, train_step = training_functions(model_config, optimizer_hyperparameters(settings),
                                                            settings.num_draws)
    sample_fn = sampling_function(model_config, (sampler["gen_length"], sampler["block_length"], sampler["steps"],
                                                 sampler["temperature"], sampler["remasking"]))
    params = init_params(jax.random.key(settings.seed))
    opt_state = optimizer.init(params)
    start_step = 0
    if settings.resume and manager.latest_step() is not None:
        start_step = manager.latest_step()
        restored = manager.restore(start_step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), opt_state=ocp.args.StandardRestore(opt_state)))
        params, opt_state = restored["params"], restored["opt_state"]

    eval_sets = evaluation_sets(settings)
    base_key = jax.random.key(settings.seed)
    log = _MetricsLog(settings.out_dir)
    started = time.time()
    summary = {"step": start_step, "stopped": "completed", "last_eval": None, "final_loss": None}

    def checkpoint_and_evaluate(step: int) -> dict[str, Any]:
        _save(manager, step, params, opt_state)
        record = {"step": step}
        for index, (name, items) in enumerate(eval_sets.items()):
            result = evaluate(sample_fn, params, run_config, tokenizer, items,
                              jax.random.fold_in(jax.random.fold_in(base_key, 1 + index), step), name)
            prefix = "eval" if name == settings.task else f"eval_{name}"
            record.update({f"{prefix}/{k}": v for k, v in result.items()})
            summary["last_eval" if name == settings.task else f"last_eval_{name}"] = result
        record["elapsed_s"] = time.time() - started
        log.write(record)
        return record

    progress = tqdm(total=settings.steps, initial=start_step, disable=not show_progress, desc="pretrain")
    step = start_step
    while step < settings.steps:
        batch = _training_batch(task, settings, run_config, tokenizer, step)
        key = jax.random.fold_in(jax.random.fold_in(base_key, 0), step)
        new_params, new_opt_state, loss = train_step(params, opt_state, batch.tokens, batch.attention_mask,
                                                     batch.response_mask, key)
        loss = float(loss)
        if not math.isfinite(loss):
            # The parameters of `step` produced it: a checkpoint of them is not a good one.
            if manager.latest_step() == step:
                manager.delete(step)
            log.write({"step": step + 1, "event": "non_finite_loss", "loss": str(loss),
                       "newest_checkpoint": manager.latest_step()})
            summary["stopped"] = "non_finite_loss"
            break
        params, opt_state, step = new_params, new_opt_state, step + 1
        summary["step"], summary["final_loss"] = step, loss
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}")
        if step % settings.log_interval == 0:
            log.write({"step": step, "train/loss": loss, "elapsed_s": time.time() - started})
        over_budget = settings.time_budget_min and time.time() - started > 60 * settings.time_budget_min
        if step % settings.eval_interval == 0 or step == settings.steps or over_budget:
            record = checkpoint_and_evaluate(step)
            if show_progress:
                progress.write(json.dumps(record))
        if over_budget and step < settings.steps:
            summary["stopped"] = "time_budget"
            break
    progress.close()
    log.close()
    manager.close()
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    # Orbax reports every save at INFO level; keep the console for the progress bar.
    logging.set_verbosity(logging.WARNING)
    settings = PretrainSettings(**{field.name: getattr(FLAGS, field.name)
                                   for field in dataclasses.fields(PretrainSettings)})
    summary = train(settings)
    print(json.dumps(summary))
    if summary["stopped"] == "non_finite_loss":
        raise SystemExit(f"non-finite loss at step {summary['step'] + 1}; newest checkpoint is the last good one")


if __name__ == "__main__":
    define_flags()
    app.run(main)
