"""Supervised pre-training of a small LLaDA-style masked diffusion model on a synthetic task, from scratch.

    python -m experiments.lm_pretrain --task=sudoku --workdir=/tmp/sudoku_pretrain \\
        --extra_eval_tasks=sudoku_split_new             \\
        # the default recipe: ~0.7 test reward
    python -m experiments.lm_pretrain --task=sudoku --workdir=/tmp/sudoku_pretrain --resume   # after a stop
    python -m experiments.lm_pretrain --task=countdown --workdir=/tmp/countdown_pretrain --steps=1500

Details: docs/modules.md, section experiments.lm_pretrain.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import jax
from absl import flags

from dipod_jax.lm import data
from dipod_jax.lm.evaluation import evaluate
from dipod_jax.lm.pretrain import (
    CONFIG_FILE,
    MODEL_SIZES,
    SAMPLER_FIELDS,
    model_config_from_dict,
    model_config_to_dict,
    sampling_function,
    sized_model_config,
    training_functions,
    training_items,
)
from dipod_jax.lm.tasks import TASKS, get_task
from dipod_jax.lm.tokenizer import Tokenizer, char_tokenizer, tokenizer_config
from dipod_jax.run.config import field_defaults
from dipod_jax.run.harness import COMPLETED, TIME_BUDGET, Run, non_finite, progress_bar
from dipod_jax.run.program import UsageError, check_flag_bounds, finish_run, run_program, user_errors
from dipod_jax.run.record import value_digest


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Everything a run depends on (the flags, as one record; these defaults are the flags' defaults), checked on
    construction (`validate_settings`: ValueError naming the flag).

    The defaults are the CPU recipe for Sudoku: about 0.8 mean cell accuracy on the 500-puzzle test set, so
    that RL has room to improve (docs/language-models.md has the measured numbers)."""

    workdir: str
    task: str = "sudoku"
    template: str = "compact"
    steps: int = 300
    batch: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    decay_steps: int = 0
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    num_draws: int = 1
    model_size: str = "small"
    seed: int = 0
    distractor_fraction: float = 0.0
    eval_interval: int = 100
    eval_items: int = 0
    test_path: str | None = None
    extra_eval_tasks: str = ""
    gen_steps: int = 0
    eval_temperature: float = 0.0
    log_interval: int = 20
    time_budget_min: float = 0.0
    resume: bool = False

    def __post_init__(self):
        validate_settings(self)


_DEFAULTS = field_defaults(PretrainSettings)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_string("task", _DEFAULTS.task, "Task to train on: sudoku or countdown (generated training data).")
    flags.DEFINE_string("template", _DEFAULTS.template,
                        "Prompt template of the task (compact for the char-level model).")
    flags.DEFINE_integer("steps", _DEFAULTS.steps,
                         "Total optimisation steps (a resumed run continues up to this count).")
    flags.DEFINE_integer("batch", _DEFAULTS.batch, "Training items per step.")
    flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate,
                       "Peak AdamW learning rate (linear warm-up, then cosine decay to 10%).")
    flags.DEFINE_integer("warmup_steps", _DEFAULTS.warmup_steps, "Linear learning-rate warm-up steps.")
    flags.DEFINE_integer("decay_steps", _DEFAULTS.decay_steps,
                         "Length of the warm-up + cosine schedule (0 = --steps); fix it when a "
                         "resumed run will raise --steps, so the schedule does not change.")
    flags.DEFINE_float("weight_decay", _DEFAULTS.weight_decay, "AdamW weight decay.")
    flags.DEFINE_float("max_grad_norm", _DEFAULTS.max_grad_norm, "Global gradient-norm clip.")
    flags.DEFINE_integer("num_draws", _DEFAULTS.num_draws, "Masking draws per item per step (M of mask_uniform_count).")
    flags.DEFINE_enum("model_size", _DEFAULTS.model_size, list(MODEL_SIZES),
                      "Model size preset (d_model, layers, heads, mlp).")
    flags.DEFINE_string("workdir", None, "Output directory (config, checkpoints, metrics, TensorBoard).")
    flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the model initialisation, data generation and masking.")
    flags.DEFINE_float("distractor_fraction", _DEFAULTS.distractor_fraction,
                       "Fraction q of training items whose completion is the task's distractor, a plausible wrong "
                       "answer of one fixed kind (Sudoku: digits 1 and 2 exchanged; Countdown: operators "
                       "inverted): a start with headroom for RL (docs: RL test bed). 0 = none.")
    flags.DEFINE_integer("eval_interval", _DEFAULTS.eval_interval,
                         "Evaluate and checkpoint every this many steps (and at the end).")
    flags.DEFINE_integer("eval_items", _DEFAULTS.eval_items, "Test items per evaluation (0 = the whole test set).")
    flags.DEFINE_string("test_path", _DEFAULTS.test_path, "Test file (default: the task's shipped test set).")
    flags.DEFINE_string("extra_eval_tasks", _DEFAULTS.extra_eval_tasks,
                        "Comma-separated further tasks whose shipped test sets are also evaluated "
                        "(e.g. sudoku_split_new); each is scored with its own reward.")
    flags.DEFINE_integer("gen_steps", _DEFAULTS.gen_steps, "Sampler denoising steps (0 = one token per step).")
    flags.DEFINE_float("eval_temperature", _DEFAULTS.eval_temperature,
                       "Sampler temperature at evaluation (0 = greedy).")
    flags.DEFINE_integer("log_interval", _DEFAULTS.log_interval, "Write the training loss every this many steps.")
    flags.DEFINE_float("time_budget_min", _DEFAULTS.time_budget_min,
                       "Stop (with an evaluation and checkpoint) after this many minutes; 0 = none.")
    flags.DEFINE_bool("resume", _DEFAULTS.resume, "Continue from the newest checkpoint in --workdir.")


def validate_settings(settings: PretrainSettings) -> None:
    """Raises ValueError naming the flag for any invalid setting (PretrainSettings' construction calls it)."""
    if not settings.workdir:
        raise ValueError("--workdir is required")
    if settings.task not in TASKS:
        raise ValueError(f"--task={settings.task!r} is not one of {sorted(TASKS)}")
    task = get_task(settings.task)
    if task.generate is None:
        raise ValueError(f"--task={settings.task} has no generator; pre-training needs sudoku or countdown")
    if settings.template not in task.templates:
        raise ValueError(f"--template={settings.template!r} is not one of {task.templates} for --task={settings.task}")
    if settings.model_size not in MODEL_SIZES:
        raise ValueError(f"--model_size={settings.model_size!r} is not one of {sorted(MODEL_SIZES)}")
    check_flag_bounds(settings, positive=("steps", "batch", "num_draws", "eval_interval", "log_interval",
                                          "learning_rate", "max_grad_norm"),
                      non_negative=("warmup_steps", "decay_steps", "eval_items", "gen_steps", "weight_decay",
                                    "eval_temperature", "time_budget_min"),
                      finite=("learning_rate", "max_grad_norm", "weight_decay", "eval_temperature", "time_budget_min"))
    if not 0.0 <= settings.distractor_fraction <= 1.0:
        raise ValueError(f"--distractor_fraction={settings.distractor_fraction} must be in [0, 1]")
    for name in _extra_eval_names(settings):
        if name not in TASKS or settings.template not in TASKS[name].templates:
            raise ValueError(f"--extra_eval_tasks: {name!r} is not a task with template {settings.template!r}")


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
    """The run record (config.json): task, lengths, model, tokenizer, sampler and every other setting that
    changes the run's results (the optimiser's resolved schedule, batch, seed, evaluation sets); a resumed
    run must have the same record."""
    task = get_task(settings.task)
    longest_prompt, gen_length = data.required_lengths(task, [task.longest_item()], tokenizer, settings.template)
    eval_sets = evaluation_sets(settings)
    prompt_length = max([longest_prompt] + [
        data.required_lengths(get_task(name), items, tokenizer, settings.template, False)[0]
        for name, items in eval_sets.items()])
    model_config = sized_model_config(settings.model_size, tokenizer.vocab_size, prompt_length + gen_length,
                                      tokenizer.mask_id)
    learning_rate, warmup_steps, decay_steps, weight_decay, max_grad_norm = optimizer_hyperparameters(settings)
    return {
        "task": settings.task,
        "template": settings.template,
        "prompt_length": prompt_length,
        "gen_length": gen_length,
        "model": model_config_to_dict(model_config),
        "tokenizer": tokenizer_config(tokenizer),
        "sampler": {"gen_length": gen_length, "block_length": gen_length,
                    "steps": settings.gen_steps or gen_length, "temperature": settings.eval_temperature,
                    "remasking": "low_confidence"},
        "settings": {"model_size": settings.model_size, "seed": settings.seed, "batch": settings.batch,
                     "num_draws": settings.num_draws, "learning_rate": learning_rate, "warmup_steps": warmup_steps,
                     "decay_steps": decay_steps, "weight_decay": weight_decay, "max_grad_norm": max_grad_norm,
                     "eval_items": settings.eval_items,
                     # Recorded only when used, so that the records of earlier runs still resume.
                     **({"distractor_fraction": settings.distractor_fraction} if settings.distractor_fraction else {}),
                     "test_path": os.path.abspath(settings.test_path) if settings.test_path else None,
                     "extra_eval_tasks": _extra_eval_names(settings),
                     # Content of each evaluation set: a resumed run refuses a test file changed in place.
                     "eval_digests": {name: value_digest([dataclasses.asdict(item) for item in items])
                                      for name, items in eval_sets.items()}},
    }


def optimizer_hyperparameters(settings: PretrainSettings) -> tuple:
    """(learning_rate, warmup_steps, decay_steps, weight_decay, max_grad_norm): the hashable key of `make_optimizer`."""
    decay_steps = max(settings.decay_steps or settings.steps, settings.warmup_steps + 1)
    return settings.learning_rate, settings.warmup_steps, decay_steps, settings.weight_decay, settings.max_grad_norm


def _training_batch(task, settings: PretrainSettings, run_config: dict[str, Any], tokenizer: Tokenizer,
                    step: int) -> data.TokenBatch:
    """The token batch of `training_items` of `step` (the --distractor_fraction share replaced)."""
    items = training_items(task, settings.seed, step, settings.batch, settings.distractor_fraction)
    return data.task_batch(task, items, tokenizer, settings.template, run_config["prompt_length"],
                           run_config["gen_length"])


def train(settings: PretrainSettings, show_progress: bool = True) -> dict[str, Any]:
    """Runs (or resumes) pre-training; returns {"step", "stopped", "last_eval", "final_loss"} and, for the
    stops of `dipod_jax.run.harness`, their fields ("signal"; "problem", "newest_checkpoint").

    "stopped" is "completed", "time_budget", "signal" or "non_finite". Raises UsageError (a ValueError) for
    a refused output directory before anything is compiled (the settings checked themselves when constructed).
    """
    with user_errors():
        tokenizer = char_tokenizer()
        task = get_task(settings.task)
        run_config = build_run_config(settings, tokenizer)
        eval_sets = evaluation_sets(settings)
        try:
            run = Run(settings.workdir, experiment="lm_pretrain", record_file=CONFIG_FILE, record=run_config,
                      resume=settings.resume)
        except UsageError as error:
            if settings.decay_steps == 0 and "settings.decay_steps:" in str(error):
                raise UsageError(f"{error} (--decay_steps=0 follows --steps, so a longer run changes the schedule: "
                                 "pass --decay_steps=<the recorded value> to extend the run with the same one)"
                                 ) from error
            raise
    with run:
        return _train(settings, run, run_config, tokenizer, task, eval_sets, show_progress)


def _train(settings: PretrainSettings, run: Run, run_config: dict[str, Any], tokenizer: Tokenizer, task,
           eval_sets: dict[str, list], show_progress: bool) -> dict[str, Any]:
    model_config = model_config_from_dict(run_config["model"])
    init_params, optimizer, train_step = training_functions(model_config, optimizer_hyperparameters(settings),
                                                            settings.num_draws)
    sample_fn = sampling_function(model_config, tuple(run_config["sampler"][name] for name in SAMPLER_FIELDS))
    params = init_params(jax.random.key(settings.seed))
    opt_state = optimizer.init(params)
    step, restored = run.restore_if_resuming({"params": params, "opt_state": opt_state})
    params, opt_state = restored["params"], restored["opt_state"]

    base_key = jax.random.key(settings.seed)
    log = run.start(step)
    summary = {"step": step, "stopped": COMPLETED, "last_eval": None, "final_loss": None}

    def evaluate_and_log(step: int) -> dict[str, Any]:
        record = {"step": step}
        for index, (name, items) in enumerate(eval_sets.items()):
            result = evaluate(sample_fn, params, run_config, tokenizer, items,
                              jax.random.fold_in(jax.random.fold_in(base_key, 1 + index), step), name)
            prefix = "eval" if name == settings.task else f"eval_{name}"
            record.update({f"{prefix}/{k}": v for k, v in result.items()})
            summary["last_eval" if name == settings.task else f"last_eval_{name}"] = result
        record["elapsed_s"] = time.time() - run.started
        log.write(record)
        return record

    progress = progress_bar(settings.steps, step, show_progress, "pretrain")
    while step < settings.steps:
        batch = _training_batch(task, settings, run_config, tokenizer, step)
        key = jax.random.fold_in(jax.random.fold_in(base_key, 0), step)
        new_params, new_opt_state, loss, grad_norm = train_step(params, opt_state, batch.tokens,
                                                                batch.attention_mask, batch.response_mask, key)
        loss = float(loss)
        problem = non_finite(loss=loss, gradient_norm=float(grad_norm), updated_parameters=new_params)
        if problem:
            summary.update(run.stop_non_finite(step, problem, loss_is_finite=math.isfinite(loss)))
            break
        params, opt_state, step = new_params, new_opt_state, step + 1
        summary["step"], summary["final_loss"] = step, loss
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}")
        if step % settings.log_interval == 0:
            log.write({"step": step, "train/loss": loss, "train/grad_norm": float(grad_norm),
                       "elapsed_s": time.time() - run.started})
        stop = run.stop_reason(settings.time_budget_min)
        # Evaluation and checkpoint every --eval_interval steps, at the end and at a time-budget stop; a signal
        # only saves (a preemption leaves little time). Logged before saved: a resumed run logs nothing twice.
        if step % settings.eval_interval == 0 or step == settings.steps or stop == TIME_BUDGET:
            record = evaluate_and_log(step)
            if show_progress:
                progress.write(json.dumps(record))
        stopped = run.save_or_stop(step, settings.steps, stop, step % settings.eval_interval == 0,
                                   {"params": params, "opt_state": opt_state})
        if stopped:
            summary.update(stopped)
            break
    progress.close()
    return summary


def main(argv):
    with user_errors():
        settings = PretrainSettings(**{field.name: getattr(FLAGS, field.name)
                                       for field in dataclasses.fields(PretrainSettings)})
    summary = train(settings)
    return finish_run(summary, settings.workdir)


if __name__ == "__main__":
    define_flags()
    run_program(main)
