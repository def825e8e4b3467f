"""RL post-training of a masked diffusion LM with diffu-GRPO, FPO or SPG, each with the DiPOD term.

    python -m experiments.lm_rl --init_dir=/tmp/sudoku_pretrain --workdir=/tmp/sudoku_fpo_dipod \
        --config.algo=fpo --config.dipod_beta=0.05 --steps=200 --seed=0
    python -m experiments.lm_rl --workdir=/tmp/sudoku_fpo_dipod --resume     # bit-exact continuation

The trainer is `dipod_jax.lm.rl.make_rl`; this program adds the policy's loading, the task's prompts and
rewards, the paired start / end evaluation and the run harness. What every flag and output file means, and how a
run is read: docs/modules.md (section experiments.lm_rl), docs/language-models.md and docs/running.md.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from flax import nnx

from dipod_jax.lm import data, rl
from dipod_jax.lm.evaluation import (
    item_rewards,
    paired_evaluation,
    paired_sampled_evaluation,
    reward_summary,
    sampled_item_rewards,
    sampled_summary,
)
from dipod_jax.lm.pretrain import CONFIG_FILE, load_pretrained
from dipod_jax.lm.rl_config import PAPER_PRESETS, RLConfig, preset_fields
from dipod_jax.lm.tasks import get_task
from dipod_jax.lm.tokenizer import load_hf_tokenizer
from dipod_jax.models import sharding
from dipod_jax.models.llada import LLaDA
from dipod_jax.run.config import build, define_config_flag, field_defaults, flag_overrides
from dipod_jax.run.distributed import initialize_distributed
from dipod_jax.run.files import read_json, read_metrics, write_json_atomic
from dipod_jax.run.harness import COMPLETED, TIME_BUDGET, Run, non_finite, progress_bar
from dipod_jax.run.program import UsageError, check_flag_bounds, finish_run, one_line, run_program, user_errors
from dipod_jax.run.record import file_digest, value_digest

RUN_CONFIG_FILE = "rl_config.json"
START_EVAL_FILE = "eval_start.json"
PAIRED_EVAL_FILE = "paired_eval.json"
PLOT_FILE = "curves.png"

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class RLRunSettings:
    """Everything a run depends on (the flags, as one record; these defaults are the flags'). preset: a key of
    PAPER_PRESETS, or None for the task's CPU preset; config_overrides: RLConfig fields over it, as (name,
    value) pairs (the --config.<field> flags). Checked on construction (`validate_settings`)."""

    workdir: str
    init_dir: str | None = None
    llada_dir: str | None = None
    task: str | None = None
    template: str | None = None
    prompt_length: int = 0
    gen_length: int = 0
    preset: str | None = None
    config_overrides: tuple = ()
    lora_rank: int = 0
    lora_alpha: float = 0.0
    seed: int = 0
    steps: int = 200
    eval_interval: int = 20
    eval_items: int = 64
    test_path: str | None = None
    eval_temperature: float = 0.0
    sampled_eval_k: int = 6
    checkpoint_interval: int = 0
    log_interval: int = 1
    time_budget_min: float = 0.0
    resume: bool = False
    num_devices: int = 0
    mesh_data: int = 1
    plot: bool = True

    def __post_init__(self):
        validate_settings(self)


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags. Defaults are RLRunSettings'."""
    defaults = field_defaults(RLRunSettings)
    flags.DEFINE_string("init_dir", None, "experiments.lm_pretrain output directory to start from.")
    flags.DEFINE_string("llada_dir", None, "Hugging Face LLaDA checkpoint directory (instead of --init_dir).")
    flags.DEFINE_string("workdir", None, "Output directory (config, checkpoints, metrics, TensorBoard, plot).")
    flags.DEFINE_string("task", None, "Task (default: the --init_dir run's); required with --llada_dir.")
    flags.DEFINE_string("template", None, "Prompt template (default: the --init_dir run's).")
    flags.DEFINE_integer("prompt_length", 0, "Prompt columns (--llada_dir only).")
    flags.DEFINE_integer("gen_length", 0, "Generated tokens per completion (--llada_dir only).")
    define_config_flag(RLConfig())
    flags.DEFINE_enum("preset", defaults.preset, sorted(PAPER_PRESETS), "A release configuration (PAPER_PRESETS) "
                      "instead of the task's CPU preset, under the --config.<field>s.")
    flags.DEFINE_integer("lora_rank", defaults.lora_rank, "Add LoRA adapters of this rank (0 = none).")
    flags.DEFINE_float("lora_alpha", defaults.lora_alpha, "LoRA alpha (scale alpha / rank); needed with --lora_rank.")
    flags.DEFINE_integer("seed", defaults.seed, "Seed of the training prompts, sampling, masks and LoRA init.")
    flags.DEFINE_integer("steps", defaults.steps, "Total RL steps (a resumed run continues up to this count).")
    flags.DEFINE_integer("eval_interval", defaults.eval_interval, "Evaluate every this many steps (and at 0, end).")
    flags.DEFINE_integer("eval_items", defaults.eval_items, "Test items per evaluation (0 = the whole test set).")
    flags.DEFINE_string("test_path", None, "Test file (default: the task's shipped test set).")
    flags.DEFINE_float("eval_temperature", defaults.eval_temperature,
                       "Sampling temperature at evaluation (0 = greedy); the rollouts': --config.rollout_temperature.")
    flags.DEFINE_integer("sampled_eval_k", defaults.sampled_eval_k,
                         "Completions per test item sampled at the rollout temperature at every evaluation (the "
                         "reward RL optimises: mean and pass@k beside the greedy one); 0 = greedy only.")
    flags.DEFINE_integer("checkpoint_interval", defaults.checkpoint_interval,
                         "Checkpoint every this many steps (0 = --eval_interval).")
    flags.DEFINE_integer("log_interval", defaults.log_interval, "Write train metrics every this many steps.")
    flags.DEFINE_float("time_budget_min", defaults.time_budget_min,
                       "Stop (with a checkpoint) after this many minutes; 0 = none.")
    flags.DEFINE_bool("resume", defaults.resume, "Continue from the newest checkpoint in --workdir.")
    flags.DEFINE_integer("num_devices", defaults.num_devices, "Devices to shard over (0 = all; 1 = no mesh).")
    flags.DEFINE_integer("mesh_data", defaults.mesh_data,
                         "Size of the mesh's data axis; the remaining devices form the fsdp axis.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host) before anything else.")
    flags.DEFINE_bool("plot", defaults.plot, "Write curves.png at the end.")


def validate_settings(settings: RLRunSettings) -> None:
    """ValueError naming the flag for an invalid setting (RLRunSettings' construction calls it, before anything
    is loaded or compiled)."""
    if not settings.workdir:
        raise ValueError("--workdir is required")
    if (settings.init_dir is None) == (settings.llada_dir is None):
        raise ValueError("exactly one of --init_dir and --llada_dir is required")
    if settings.llada_dir is not None:
        if not settings.task or not settings.template:
            raise ValueError("--llada_dir needs --task and --template")
        if settings.prompt_length <= 0 or settings.gen_length <= 0:
            raise ValueError("--llada_dir needs --prompt_length > 0 and --gen_length > 0")
    check_flag_bounds(settings, positive=("steps", "eval_interval", "log_interval", "mesh_data"),
                      non_negative=("eval_items", "sampled_eval_k", "checkpoint_interval", "lora_rank", "num_devices",
                                    "eval_temperature", "time_budget_min"),
                      finite=("eval_temperature", "time_budget_min", "lora_alpha"))
    if settings.lora_rank and not settings.lora_alpha > 0:
        raise ValueError(f"--lora_alpha={settings.lora_alpha} must be > 0 with --lora_rank={settings.lora_rank}")


def load_policy(settings: RLRunSettings, seed: int) -> tuple[LLaDA, Any, dict[str, Any]]:
    """(model, tokenizer, run info {task, template, prompt_length, gen_length, and init_step: the --init_dir
    checkpoint step loaded}) of the starting checkpoint, with fresh LoRA adapters (B = 0, seeded by `seed`)
    when --lora_rank > 0."""
    if settings.init_dir is not None:
        model, tokenizer, pretrain_config = load_pretrained(settings.init_dir)
        info = {key: pretrain_config[key] for key in ("task", "template", "prompt_length", "gen_length")}
        info["init_step"] = pretrain_config["checkpoint_step"]
        for key in ("task", "template"):
            if getattr(settings, key) and getattr(settings, key) != info[key]:
                # A different task of the same family (e.g. sudoku_split_new) reuses the model's template.
                if key == "template":
                    raise ValueError(f"--template={settings.template} differs from {settings.init_dir}: {info[key]}")
                info[key] = getattr(settings, key)
        if settings.lora_rank:
            adapted = LLaDA(dataclasses.replace(model.config, lora_rank=settings.lora_rank,
                                                lora_alpha=settings.lora_alpha), rngs=nnx.Rngs(seed))
            nnx.update(adapted, nnx.state(model))
            model = adapted
    else:
        from dipod_jax.models.llada_import import load_llada

        model = load_llada(settings.llada_dir, lora_seed=seed, lora_rank=settings.lora_rank,
                           lora_alpha=settings.lora_alpha)
        tokenizer = load_hf_tokenizer(settings.llada_dir)
        info = {"task": settings.task, "template": settings.template, "prompt_length": settings.prompt_length,
                "gen_length": settings.gen_length}
    get_task(info["task"])
    return model, tokenizer, info


def build_rl_config(settings: RLRunSettings, info: dict[str, Any]) -> RLConfig:
    """The run's RLConfig, built once: the preset (--preset, else the task's CPU preset, whose sampler is then
    one block of gen_length steps), the checkpoint's generation length, then the --config overrides."""
    overrides = dict(settings.config_overrides)
    fields = preset_fields(info["task"], settings.preset, overrides.get("algo"))
    gen_length = fields["gen_length"] = info["gen_length"]
    if settings.preset is None:
        fields.update(block_length=gen_length, diffusion_steps=gen_length,
                      spg_block_length=min(fields["spg_block_length"], gen_length))
    if "gen_length" in overrides:
        raise ValueError("--config.gen_length: the generation length is the checkpoint's (--gen_length with "
                         "--llada_dir)")
    return build(RLConfig, {**fields, **overrides})


_OPTIONAL_PARTS = ("ref_params", "start_params")  # empty dicts when unused, which a checkpoint cannot hold


def _state_tree(state: rl.TrainState) -> dict[str, Any]:
    tree = state._asdict()
    for part in _OPTIONAL_PARTS:
        if not jax.tree.leaves(tree[part]):
            del tree[part]
    return tree


def _from_state_tree(tree: dict[str, Any], template: rl.TrainState) -> rl.TrainState:
    return rl.TrainState(**{**{part: getattr(template, part) for part in _OPTIONAL_PARTS}, **tree})


# Panels of curves.png: (title, metrics drawn in it); a metric a run did not log is left out.
PLOT_PANELS = (("reward", ("train/reward_mean", "eval/mean_reward", "eval/sampled_mean_reward")),
               ("KL to the start", ("train/kl_to_start",)),
               ("own-sample ELBO", ("train/elbo",)),
               ("DiPOD term", ("train/dipod_term",)))


def plot_curves(workdir: str) -> str:
    """The PLOT_PANELS curves against the step, from metrics.jsonl, into workdir/curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    figure, axes = plt.subplots(1, len(PLOT_PANELS), figsize=(4 * len(PLOT_PANELS), 3.5))
    for axis, (title, names) in zip(axes, PLOT_PANELS, strict=True):
        for name in names:
            points = [(r["step"], r[name]) for r in records if name in r]
            if points:
                axis.plot(*zip(*points, strict=True), marker="." if name.startswith("eval") else None, label=name)
        axis.set_xlabel("step")
        axis.set_title(title)
        if axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    path = os.path.join(workdir, PLOT_FILE)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


# RLRunSettings fields that change a run's results (besides the RL config they resolve to); the others say where
# and how often to write, how long to run and on which devices.
# (task, template and lengths are in the record's "info", as resolved from the starting checkpoint.)
RECORD_SETTINGS = ("lora_rank", "lora_alpha", "seed", "eval_items", "eval_temperature", "sampled_eval_k")


def run_record(settings: RLRunSettings, config: RLConfig, info: dict[str, Any], test_items: list) -> dict[str, Any]:
    """The run record (rl_config.json): every setting that changes the results, and the content digests of the
    inputs (the test items, the starting run's record), so a resumed run refuses a changed input."""
    if settings.init_dir is not None:
        start = {"init_dir": os.path.abspath(settings.init_dir), "init_step": info["init_step"],
                 "init_record_digest": file_digest(os.path.join(settings.init_dir, CONFIG_FILE))}
    else:
        start = {"llada_dir": os.path.abspath(settings.llada_dir)}
    return {"settings": {**{name: getattr(settings, name) for name in RECORD_SETTINGS}, **start,
                         "test_path": os.path.abspath(settings.test_path) if settings.test_path else None,
                         "test_digest": value_digest([dataclasses.asdict(item) for item in test_items]),
                         "num_processes": jax.process_count()},
            "rl_config": dataclasses.asdict(config),
            "info": {key: value for key, value in info.items() if key != "init_step"}}


def train(settings: RLRunSettings, show_progress: bool = True) -> RLRunSummary:
    """Runs (or resumes) RL training; returns how it ended (RLRunSummary).

    Raises UsageError (a ValueError) for an invalid configuration or a refused output directory, before any
    compile (the settings checked themselves when constructed).
    """
    with user_errors():
        model, tokenizer, info = load_policy(settings, settings.seed)
        task = get_task(info["task"])
        config = build_rl_config(settings, info)
        if config.lora_only and not model.config.lora_rank:
            raise ValueError("--config.lora_only=true trains only LoRA adapters, and this model has none: pass "
                             "--lora_rank (and --lora_alpha)")
        devices = select_devices(settings)
        mesh = sharding.make_mesh(data=settings.mesh_data, devices=devices) if len(devices) > 1 else None
        num_processes = jax.process_count()
        if config.num_prompts % num_processes:
            raise ValueError(f"--config.num_prompts={config.num_prompts} must be divisible by the {num_processes} "
                             "processes")
        rl.check_batch_divisible(config.rollout_batch_size, config, mesh)
        test_items = task.load_test(settings.test_path)
        check_task_fits(task, info, tokenizer, test_items, settings)
        run = Run(settings.workdir, experiment="lm_rl", record_file=RUN_CONFIG_FILE,
                  record=run_record(settings, config, info, test_items), resume=settings.resume)
        if run.resuming:
            try:
                check_start_evaluation(os.path.join(settings.workdir, START_EVAL_FILE), len(test_items),
                                       settings.sampled_eval_k)
            except UsageError:
                run.close()
                raise
    with run:
        trainer = rl.make_rl(config, model, mesh, mask_id=tokenizer.mask_id, eos_id=tokenizer.eos_id)
        return _train(settings, run, trainer, tokenizer, info, task, test_items, show_progress)


def select_devices(settings: RLRunSettings) -> list:
    """The devices of the run (--num_devices, 0 = all); ValueError naming the flag when there are fewer, or when
    --mesh_data does not divide them (both used to be ignored silently)."""
    available = jax.devices()
    if settings.num_devices > len(available):
        raise ValueError(f"--num_devices={settings.num_devices}: only {len(available)} device(s) here")
    devices = available[: settings.num_devices] if settings.num_devices else available
    if len(devices) % settings.mesh_data:
        raise ValueError(f"--mesh_data={settings.mesh_data} does not divide the {len(devices)} device(s) of the run")
    return devices


def check_task_fits(task, info: dict[str, Any], tokenizer, test_items: list, settings: RLRunSettings) -> None:
    """ValueError, before anything compiles, when the task cannot run on the model's layout: a template the task
    does not have, a test prompt longer than the model's prompt columns, or answers of the task (its longest
    generated item) longer than the model's generation region."""
    source = f"--init_dir={settings.init_dir}" if settings.init_dir else f"--llada_dir={settings.llada_dir}"
    if info["template"] not in task.templates:
        raise ValueError(f"--task={task.name} has templates {list(task.templates)}, not the model's "
                         f"{info['template']!r} ({source})")
    for index, item in enumerate(test_items):
        length = data.required_lengths(task, [item], tokenizer, info["template"], with_completions=False)[0]
        if length > info["prompt_length"]:
            where = settings.test_path or f"the {task.name} test set"
            raise ValueError(f"{where}: item {index + 1} has a {length}-token prompt, longer than the model's "
                             f"{info['prompt_length']} prompt columns ({source})")
    if task.longest_item is not None:
        prompt, gen = data.required_lengths(task, [task.longest_item()], tokenizer, info["template"])
        if prompt > info["prompt_length"] or gen > info["gen_length"]:
            raise ValueError(f"--task={task.name} needs {prompt} prompt and {gen} generated tokens; the model in "
                             f"{source} has {info['prompt_length']} and {info['gen_length']}")


def check_start_evaluation(path: str, items: int, samples: int) -> None:
    """UsageError naming `path` unless it holds this run's start evaluation: per-item greedy rewards for the
    `items` test items and, when `samples` > 0, [items, samples] sampled rewards (a resumed run pairs its end
    evaluation with these, so a damaged file would give a wrong paired result)."""
    if not os.path.exists(path):
        raise UsageError(f"--resume: {path} is missing (the start evaluation of this run)")
    try:
        start = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"--resume: {path} is not readable ({one_line(error)}); it is the start evaluation "
                         "the end is paired with: start the run again in a new --workdir") from error
    rewards = start.get("rewards") if isinstance(start, dict) else None
    sampled = start.get("sampled_rewards") if isinstance(start, dict) else None
    if not isinstance(rewards, list) or len(rewards) != items:
        raise UsageError(f"--resume: {path} does not hold {items} per-item rewards (the test set's size)")
    if samples and np.shape(sampled) != (items, samples):
        raise UsageError(f"--resume: {path} does not hold [{items}, {samples}] sampled rewards (--sampled_eval_k)")


def make_evaluator(settings: RLRunSettings, trainer: rl.RLTrainer, info: dict[str, Any], tokenizer,
                   test_items: list):
    """evaluate(params, step, whole_test_set=False) -> (greedy rewards [n], sampled rewards [n, --sampled_eval_k]
    or None) on the first --eval_items test items (the logged curve) or on all of them: the exact sampler at
    --eval_temperature, and at the rollout temperature (what RL optimises) for the sampled rewards. The keys
    depend only on (seed, step), so a resumed run scores exactly as an uninterrupted one."""
    eval_sample = trainer.sampler_at(settings.eval_temperature)
    rollout_sample = trainer.sampler_at(trainer.config.rollout_temperature)
    base_key = jax.random.key(settings.seed)
    curve_items = settings.eval_items or len(test_items)

    def evaluate(params, step: int, whole_test_set: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        items = test_items if whole_test_set else test_items[:curve_items]
        greedy = item_rewards(eval_sample, params, info, tokenizer, items,
                              jax.random.fold_in(jax.random.fold_in(base_key, 1), step))
        if not settings.sampled_eval_k:
            return greedy, None
        sampled = sampled_item_rewards(rollout_sample, params, info, tokenizer, items,
                                       jax.random.fold_in(jax.random.fold_in(base_key, 2), step),
                                       settings.sampled_eval_k)
        return greedy, sampled

    return evaluate


def _initial_state(run: Run, trainer: rl.RLTrainer) -> rl.TrainState:
    """The train state at step 0, or restored from the newest checkpoint when resuming."""
    state = trainer.init()
    if run.resuming:
        _, restored = run.restore({"state": _state_tree(state)})
        state = _from_state_tree(restored["state"], state)
    return state


def _stored_paired_evaluation(path: str, step: int) -> dict[str, Any] | None:
    """The paired evaluation stored at `path` for `step`; None when there is none, it is of another step, or it
    cannot be read (then it is computed again, with a warning)."""
    if not os.path.exists(path):
        return None
    try:
        stored = read_json(path)
        if stored["step"] != step:
            return None
        np.asarray(stored["end_rewards"], dtype=np.float64)
        return stored
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        logging.warning("%s is damaged (%s): evaluating the end again", path, one_line(error))
        return None


def _paired_end_evaluation(settings: RLRunSettings, run: Run, step: int, evaluate, log_evaluation) -> dict[str, Any]:
    """The whole test set again at the end, paired with the start's (paired_eval.json); also when a run that
    stopped between its last checkpoint and here is resumed. paired_eval.json is written before the logged
    record, so neither is ever doubled. (Every process decides alike: process 0 writes the file only after the
    evaluation, which all share.)"""
    paired_path = os.path.join(settings.workdir, PAIRED_EVAL_FILE)
    # A run resumed at its last step may have logged this evaluation already (or died after writing the file
    # but before logging): the record is logged exactly once, from the file when there is one.
    logged = any(record.get("step") == step and "eval/mean_reward" in record
                 for record in read_metrics(settings.workdir))
    stored = _stored_paired_evaluation(paired_path, step)
    if stored is not None:
        if not logged:
            sampled = stored.get("end_sampled_rewards")
            log_evaluation(step, np.asarray(stored["end_rewards"]), None if sampled is None else np.asarray(sampled))
        return stored
    end_rewards, end_sampled = evaluate(step, whole_test_set=True)
    start = read_json(os.path.join(settings.workdir, START_EVAL_FILE))
    paired = paired_evaluation(start["rewards"], end_rewards)
    record = {"step": step, **paired, "end_rewards": end_rewards.tolist()}
    if end_sampled is not None:
        paired["sampled"] = paired_sampled_evaluation(start["sampled_rewards"], end_sampled)
        record.update(sampled=paired["sampled"], end_sampled_rewards=end_sampled.tolist())
    if run.is_main:
        write_json_atomic(paired_path, record)
    if not logged:
        log_evaluation(step, end_rewards, end_sampled)
    return paired


@dataclasses.dataclass
class RLRunSummary:
    """How a run ended: `stopped` is "completed", "time_budget", "signal" or "non_finite" after `step` steps;
    problem / newest_checkpoint / signal say why it stopped early (`dipod_jax.run.harness`); last_eval is the
    newest logged evaluation; paired_eval / paired_sampled_eval the end - start differences over the whole test
    set (greedy, sampled) of a completed run; final_params the trained pytree (not written to JSON)."""

    step: int
    stopped: str = COMPLETED
    problem: str | None = None
    newest_checkpoint: int | None = None
    signal: int | None = None
    last_eval: dict[str, Any] | None = None
    paired_eval: dict[str, Any] | None = None
    paired_sampled_eval: dict[str, Any] | None = None
    final_params: Any = None

    def end(self, stop: dict[str, Any]) -> None:
        """Take the harness's stop record ({"stopped", "step", ...}) into the summary."""
        for name, value in stop.items():
            setattr(self, name, value)

    def record(self) -> dict[str, Any]:
        """The JSON record of run_summary.json: every field that is set, final_params left out."""
        # Field by field, not dataclasses.asdict: that deep-copies final_params, whose buffers the last update
        # may have donated.
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name != "final_params" and getattr(self, field.name) is not None}


def _train(settings: RLRunSettings, run: Run, trainer: rl.RLTrainer, tokenizer, info: dict[str, Any], task,
           test_items: list, show_progress: bool) -> RLRunSummary:
    """The step loop: prompts, `trainer.step`, the non-finite check, logging, evaluations, checkpoints; then the
    paired end evaluation and the figure."""
    config = trainer.config
    state = _initial_state(run, trainer)
    score = make_evaluator(settings, trainer, info, tokenizer, test_items)
    prompt_length, local_prompts = info["prompt_length"], config.num_prompts // jax.process_count()
    base_key = jax.random.key(settings.seed)
    checkpoint_interval = settings.checkpoint_interval or settings.eval_interval
    step = int(state.step)
    log = run.start(step)
    summary = RLRunSummary(step=step)

    def evaluate(step: int, whole_test_set: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        return score(state.params, step, whole_test_set)

    log_evaluation = _evaluation_logger(log, run, summary, settings.eval_items or len(test_items))
    if step == 0:
        _start_evaluation(settings, run, evaluate, log_evaluation)
    progress = progress_bar(settings.steps, step, show_progress and run.is_main, "rl")
    while step < settings.steps:
        items = task.generate(np.random.default_rng([settings.seed, step, jax.process_index()]), local_prompts)
        prompt_tokens, prompt_mask, reward_fn = data.rl_prompts_and_reward(
            task, items, tokenizer, info["template"], prompt_length, info["gen_length"], config.num_generations)
        step_started = time.time()
        new_state, metrics, _ = trainer.step(state, prompt_tokens, prompt_mask, reward_fn,
                                             jax.random.fold_in(jax.random.fold_in(base_key, 0), step))
        metrics = {name: float(value) for name, value in metrics.items()}
        step_seconds = time.time() - step_started
        problem = non_finite(loss=metrics["loss"], gradient_norm=metrics["grad_norm"],
                             updated_parameters=new_state.params)
        if problem:
            summary.end(run.stop_non_finite(step, problem, loss_is_finite=math.isfinite(metrics["loss"])))
            break
        state, step = new_state, step + 1
        summary.step = step
        progress.update(1)
        progress.set_postfix(reward=f"{metrics['reward_mean']:.3f}")
        if step % settings.log_interval == 0:
            log.write({"step": step, **{f"train/{k}": v for k, v in metrics.items()},
                       "train/tokens_per_s": config.rollout_batch_size * config.gen_length / step_seconds,
                       "train/step_s": step_seconds, "elapsed_s": time.time() - run.started})
        stop = run.stop_reason(settings.time_budget_min)
        # Logged before saved, so a run resumed from this checkpoint logs nothing twice; a signal only saves.
        if step < settings.steps and (step % settings.eval_interval == 0 or stop == TIME_BUDGET):
            log_evaluation(step, *evaluate(step))
        stopped = run.save_or_stop(step, settings.steps, stop, step % checkpoint_interval == 0,
                                   {"state": _state_tree(state)})
        if stopped:
            summary.end(stopped)
            break
    progress.close()
    if summary.stopped == COMPLETED:
        paired = _paired_end_evaluation(settings, run, step, evaluate, log_evaluation)
        summary.paired_eval = paired["difference"]
        if "sampled" in paired:
            summary.paired_sampled_eval = paired["sampled"]["difference"]
    if settings.plot and run.is_main:
        plot_curves(settings.workdir)
    summary.final_params = state.params
    return summary


def _evaluation_logger(log, run: Run, summary: RLRunSummary, curve_items: int):
    """log_evaluation(step, greedy rewards, sampled rewards or None): eval/* on the first `curve_items` items into
    the metrics log, and into summary.last_eval."""
    def log_evaluation(step: int, rewards: np.ndarray, sampled: np.ndarray | None) -> None:
        result = reward_summary(rewards[:curve_items])
        if sampled is not None:
            result.update({f"sampled_{k}": v for k, v in sampled_summary(sampled[:curve_items]).items()
                           if k not in ("items",)})
        log.write({"step": step, **{f"eval/{k}": v for k, v in result.items()}, "elapsed_s": time.time() - run.started})
        summary.last_eval = result
    return log_evaluation


def _start_evaluation(settings: RLRunSettings, run: Run, evaluate, log_evaluation) -> None:
    """The whole test set at step 0, kept per item (eval_start.json) for the paired start / end comparison."""
    start_rewards, start_sampled = evaluate(0, whole_test_set=True)
    if run.is_main:
        write_json_atomic(os.path.join(settings.workdir, START_EVAL_FILE),
                          {"step": 0, "rewards": start_rewards.tolist(),
                           **({} if start_sampled is None else {"sampled_rewards": start_sampled.tolist()})})
    log_evaluation(0, start_rewards, start_sampled)


def settings_from_flags() -> RLRunSettings:
    """RLRunSettings from the flags registered by `define_flags`."""
    names = [field.name for field in dataclasses.fields(RLRunSettings) if field.name != "config_overrides"]
    return RLRunSettings(config_overrides=tuple(flag_overrides().items()),
                         **{name: getattr(FLAGS, name) for name in names})


def main(argv):
    with user_errors():
        settings = settings_from_flags()
        initialize_distributed(FLAGS.distributed)
    return finish_run(train(settings).record(), settings.workdir)


if __name__ == "__main__":
    define_flags()
    run_program(main)
