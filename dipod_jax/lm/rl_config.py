"""Configuration of dLLM RL post-training (diffu-GRPO, FPO, SPG, each with the DiPOD term): fields, checks, presets.

`RLConfig` is a frozen dataclass checked on construction: every bad value raises ConfigError (a ValueError)
naming the field, before anything is compiled. `preset(task)` gives the paper's settings (docs/algorithms.md,
section 4) scaled down for a CPU and a tiny character-level model; `paper_preset(name)` gives the authors' release
configurations (`PAPER_PRESETS`, built on the shared `PAPER_SETTINGS`); `preset_fields` gives either as fields,
which experiments.lm_rl completes with the --config.<field>=<value> flags (dipod_jax.run.config) and builds once.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Literal

from dipod_jax.lm.sampler import SAMPLERS
from dipod_jax.run.config import bounded, build, check_fields, require

Algorithm = Literal["diffu_grpo", "fpo", "spg"]
SpgEstimator = Literal["elbo", "eubo", "mix"]
Remasking = Literal["low_confidence", "random"]
ALGORITHMS = typing.get_args(Algorithm)


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Hyper-parameters of one RL training run.

    Algorithm: algo in ALGORITHMS; spg_estimator (SPG only); dipod_beta >= 0 (0 = baseline).
    Groups: num_prompts P prompts per step, num_generations G >= 2 completions each; advantages
      r - mean_group(r), divided by the group std when scale_rewards_by_std.
    Inner loop: num_inner_iterations mu >= 1 updates per generation batch, each averaging the gradients of
      grad_accum_steps micro-batches (P * G must divide evenly).
    Trust region / KL: clip_eps > 0 (diffu-GRPO, FPO); kl_beta >= 0 against a reference copy of the trainable
      parameters, re-synchronised to the current ones every ref_sync_every steps (0 = never).
    Optimiser: AdamW(learning_rate with linear warm-up over warmup_steps, adam_b1, adam_b2, weight_decay) after
      global-norm clipping at max_grad_norm; lora_only trains only the LoRA adapters.
    Estimators: num_elbo_draws M masks per completion for the sequence ELBO (FPO ratio, DiPOD term of
      diffu-GRPO); p_mask_prompt for diffu-GRPO's one-step estimate; spg_num_draws, spg_block_length,
      spg_min_t, spg_max_t, spg_beta_e, spg_mix_weight for SPG's block-random masks and EUBO (a fresh draw per
      inner iteration; the blocks cut the gen_length window, at most ceil(gen_length / spg_block_length) draws);
      spg_use_mask_prompt masks SPG's prompt and earlier-block tokens with probability p_mask_prompt too.
    Sampler: gen_length, block_length, diffusion_steps, rollout_temperature, remasking (dipod_jax.lm.sampler);
      sampler names the rollout sampler variant in dipod_jax.lm.sampler.SAMPLERS ("exact", or Fast-dLLM's
      "prefix" / "dual" key-value caches, refreshed every sampler_refresh_interval steps of a block, 0 = once
      per block; "*_parallel" with confidence threshold sampler_threshold in (0, 1]).
    Controls and monitoring: placebo shuffles the rewards within each group before the advantages are formed
      (the same update machinery driven by uninformative advantages: the drift a real result must overcome);
      log_kl_to_start keeps a copy of the starting trainable parameters and logs the KL of each step's rollout
      policy to it.
    """

    algo: Algorithm = "diffu_grpo"
    spg_estimator: SpgEstimator = "mix"
    dipod_beta: float = bounded(0.0, ge=0)
    num_prompts: int = bounded(4, ge=1)
    num_generations: int = bounded(6, ge=2)  # group advantages need at least two completions per prompt
    scale_rewards_by_std: bool = False
    num_inner_iterations: int = bounded(8, ge=1)
    grad_accum_steps: int = bounded(1, ge=1)
    clip_eps: float = bounded(0.5, gt=0)
    kl_beta: float = bounded(0.0, ge=0)
    ref_sync_every: int = bounded(0, ge=0)
    learning_rate: float = bounded(3e-6, gt=0)
    warmup_steps: int = bounded(0, ge=0)
    adam_b1: float = bounded(0.9, ge=0, lt=1)
    adam_b2: float = bounded(0.99, ge=0, lt=1)
    weight_decay: float = bounded(0.1, ge=0)
    max_grad_norm: float = bounded(0.2, gt=0)
    lora_only: bool = False
    num_elbo_draws: int = bounded(4, ge=1)
    p_mask_prompt: float = bounded(0.15, ge=0, le=1)
    spg_num_draws: int = bounded(2, ge=1)
    spg_block_length: int = bounded(32, ge=1)
    spg_min_t: float = bounded(0.0, ge=0, le=1)
    spg_max_t: float = bounded(1.0, ge=0, le=1)
    spg_beta_e: float = bounded(1.0, gt=0)
    spg_mix_weight: float = bounded(0.5, ge=0, le=1)
    spg_use_mask_prompt: bool = True
    gen_length: int = bounded(256, ge=1)
    block_length: int = bounded(32, ge=1)
    diffusion_steps: int = bounded(128, ge=1)
    rollout_temperature: float = bounded(0.3, ge=0)
    remasking: Remasking = "low_confidence"
    placebo: bool = False
    log_kl_to_start: bool = True
    sampler: str = "exact"  # a key of dipod_jax.lm.sampler.SAMPLERS
    sampler_threshold: float = bounded(0.9, gt=0, le=1)
    sampler_refresh_interval: int = bounded(0, ge=0)

    def __post_init__(self):
        validate_config(self)

    @property
    def rollout_batch_size(self) -> int:
        """N = P * G completions per step."""
        return self.num_prompts * self.num_generations


def validate_config(config: RLConfig) -> None:
    """ConfigError naming the first invalid field: every field against its annotation and bounds
    (`check_fields`), then the rules that tie fields together."""
    check_fields(config)
    require(config.sampler in SAMPLERS, "sampler", config.sampler, f"one of {sorted(SAMPLERS)}")
    require(not SAMPLERS[config.sampler][1] or config.remasking == "low_confidence", "sampler", config.sampler,
            "a variant without parallel decoding when remasking is 'random' (thresholds compare confidences)")
    require(config.algo != "spg" or config.kl_beta == 0, "kl_beta", config.kl_beta,
            "0 for algo 'spg' (SPG has no reference-model KL term)")
    require(config.spg_min_t <= config.spg_max_t, "spg_min_t", config.spg_min_t,
            f"<= spg_max_t={config.spg_max_t}")
    if config.algo == "spg":
        window_blocks = -(-config.gen_length // config.spg_block_length)
        require(config.spg_num_draws <= window_blocks, "spg_num_draws", config.spg_num_draws,
                f"<= ceil(gen_length / spg_block_length) = {window_blocks} (as the release asserts num_t <= blocks)")
    require(config.rollout_batch_size % config.grad_accum_steps == 0, "grad_accum_steps",
            config.grad_accum_steps, f"a divisor of num_prompts * num_generations = {config.rollout_batch_size}")
    require(config.gen_length % config.block_length == 0, "block_length", config.block_length,
            f"a divisor of gen_length={config.gen_length}")
    num_blocks = config.gen_length // config.block_length
    require(config.diffusion_steps % num_blocks == 0, "diffusion_steps", config.diffusion_steps,
            f"a multiple of gen_length / block_length = {num_blocks}")


# The authors' release (Astro-Eric/DiPOD-release: LLaDA-8B-Instruct, LoRA r = 128, alpha = 64, bf16, 8 GPUs), read
# from its train.yaml files and launch scripts. Every paper run: 16 prompts x 6 completions per optimizer step
# (6 rows per GPU x 8 GPUs x 2 accumulation steps, SPG Sudoku 3 x 8 x 4), AdamW lr 3e-6 (constant after a
# negligible warm-up), betas (0.9, 0.99), weight decay 0.1, gradient clip 0.2, 256 tokens in blocks of 32,
# 128 sampler steps, low-confidence remasking, p_mask_prompt 0.15.
PAPER_SETTINGS = dict(num_prompts=16, num_generations=6, learning_rate=3e-6, adam_b1=0.9, adam_b2=0.99,
                      weight_decay=0.1, max_grad_norm=0.2, gen_length=256, block_length=32, diffusion_steps=128,
                      remasking="low_confidence", p_mask_prompt=0.15, lora_only=True)
# d1-FPO (language/d1/diffu-grpo: train.yaml with fpo true, NUM_ITER=8 in the launch scripts): clip 0.5, ELBO KL
# 0.04 to a reference (train.yaml: ref_model_sync_steps 64), 4 ELBO draws, DiPOD beta 0.05. The scripts set
# no temperature, so the config default 0.9 samples; the Sudoku scripts' `--temperature 0.3` sits on a line
# after one without its continuation backslash, so it never reached the trainer: "fpo/sudoku" is what ran
# (0.9), "fpo/sudoku@t0.3" what the script meant.
_PAPER_FPO = dict(PAPER_SETTINGS, algo="fpo", num_inner_iterations=8, clip_eps=0.5, kl_beta=0.04,
                  ref_sync_every=64, num_elbo_draws=4, dipod_beta=0.05, rollout_temperature=0.9)
# SPG (language/SPG/spg/slurm_scripts/spg_mix): NUM_ITER=4, block_random masks with num_t 2, min_t 0, max_t 1,
# prompt masking on, "mix" with weight 0.5, EUBO beta 1.0 (Sudoku) / 1.5 (Countdown, GSM8K, MATH), no KL,
# DiPOD beta 0.05; temperature 0.9 (config default) except Sudoku's 0.3.
_PAPER_SPG = dict(PAPER_SETTINGS, algo="spg", spg_estimator="mix", num_inner_iterations=4, kl_beta=0.0,
                  spg_num_draws=2, spg_block_length=32, spg_min_t=0.0, spg_max_t=1.0, spg_mix_weight=0.5,
                  spg_use_mask_prompt=True, dipod_beta=0.05, rollout_temperature=0.9)
PAPER_PRESETS = {
    "fpo/sudoku": _PAPER_FPO,
    "fpo/sudoku@t0.3": dict(_PAPER_FPO, rollout_temperature=0.3),
    "fpo/countdown": _PAPER_FPO,
    "fpo/gsm8k": _PAPER_FPO,
    "fpo/math": _PAPER_FPO,
    "spg/sudoku_split_new": dict(_PAPER_SPG, spg_beta_e=1.0, rollout_temperature=0.3),
    "spg/countdown": dict(_PAPER_SPG, spg_beta_e=1.5),
    "spg/gsm8k": dict(_PAPER_SPG, spg_beta_e=1.5),
    "spg/math": dict(_PAPER_SPG, spg_beta_e=1.5),
}


# CPU-scale presets for the tiny character-level models of experiments/lm_pretrain.py. The structure (G, mu,
# clip, betas, masks, estimators) is the paper's; lengths, the learning rate (a tiny fully fine-tuned model,
# not LoRA on 8B) and the batch are scaled. 32 prompts x 6 at temperature 0.9: with the paper's 16 x 6 (or 4 x 6)
# the noise of a step's group advantages out-votes the signal on the tiny models (docs: RL test bed).
_CPU_COMMON = dict(num_prompts=32, num_generations=6, num_inner_iterations=4, clip_eps=0.5, learning_rate=1e-4,
                   warmup_steps=2, adam_b1=0.9, adam_b2=0.99, weight_decay=0.1, max_grad_norm=0.2,
                   num_elbo_draws=4, p_mask_prompt=0.15, spg_num_draws=2, rollout_temperature=0.9, lora_only=False)
# Per algorithm, the learning rate (and KL) measured on the tiny Sudoku headroom start, 2026-12-06 (32 x 6, T 0.9):
# diffu-GRPO's clipped per-token ratio with its k3 KL learns at 3e-4; FPO's sequence ratio and SPG's surrogate
# drift away at 3e-4 and at 3e-5 alike (KL to the start 264 and 0.6 after 20 steps, greedy reward 0.50 -> 0.32
# and 0.49; pass@6 to 0), so they get the paper's 3e-6 (docs: RL test bed).
_CPU_ALGORITHMS = {
    "diffu_grpo": dict(learning_rate=3e-4, kl_beta=0.04),
    "fpo": dict(learning_rate=3e-6, kl_beta=0.04),
    "spg": dict(learning_rate=3e-6, kl_beta=0.0),
}
_TASK_PRESETS = {
    # "<answer>" + 16 digits + "</answer>" + eos = 19 tokens; SPG's EUBO exponent 1.0 for Sudoku.
    "sudoku": dict(gen_length=24, block_length=8, diffusion_steps=12, spg_block_length=8, spg_beta_e=1.0),
    "sudoku_split_new": dict(gen_length=24, block_length=8, diffusion_steps=12, spg_block_length=8,
                             spg_beta_e=1.0),
    "countdown": dict(gen_length=32, block_length=8, diffusion_steps=16, spg_block_length=8, spg_beta_e=1.5),
    "gsm8k": dict(gen_length=128, block_length=32, diffusion_steps=64, spg_block_length=32, spg_beta_e=1.5),
}


def preset_fields(task: str | None, paper_preset_name: str | None = None, algo: str | None = None) -> dict:
    """RLConfig fields of a preset: PAPER_PRESETS[paper_preset_name] when given, else the CPU-scale preset of
    `task` (a key of _TASK_PRESETS) for `algo` (default RLConfig's; its learning rate and KL); ValueError naming
    the known ones otherwise."""
    if paper_preset_name is not None:
        if paper_preset_name not in PAPER_PRESETS:
            raise ValueError(f"--preset={paper_preset_name}: no such paper preset; known: {sorted(PAPER_PRESETS)}")
        return dict(PAPER_PRESETS[paper_preset_name])
    if task not in _TASK_PRESETS:
        raise ValueError(f"no RL preset for task {task!r}; known: {sorted(_TASK_PRESETS)}")
    # An unknown algo gets the common fields; RLConfig's check then names --config.algo.
    return {**_CPU_COMMON, **_CPU_ALGORITHMS.get(RLConfig.algo if algo is None else algo, {}), **_TASK_PRESETS[task]}


def preset(task: str, **overrides) -> RLConfig:
    """The CPU-scale RLConfig for `task` (a key of _TASK_PRESETS) and overrides.get("algo") with `overrides`
    (ValueError naming the field as its flag, --config.<field>, for an unknown field or a refused value)."""
    return build(RLConfig, {**preset_fields(task, algo=overrides.get("algo")), **overrides})


def paper_preset(name: str, **overrides) -> RLConfig:
    """The release's configuration `name` ("<algo>/<task>", a key of PAPER_PRESETS) with `overrides`
    (e.g. dipod_beta=0.0 for the baseline runs)."""
    return build(RLConfig, {**preset_fields(None, name), **overrides})
