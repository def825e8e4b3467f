"""Training configuration for continuous control (checked on construction) and its presets.

Batch layout (Brax PPO semantics, as in the FPO reference code): one iteration collects
num_minibatches * batch_size * unroll_length transitions, i.e. rollout_length = that / num_envs steps in each of
num_envs environments; it then runs num_updates_per_batch epochs, each a reshuffle into num_minibatches
minibatches of batch_size * unroll_length transitions.

A configuration is built once, by `preset_config`: the environment's preset (ENV_PRESETS), then an algorithm
preset (ALGORITHM_PRESETS), then the fields given (a program's --config.<field>=<value> flags,
dipod_jax.run.config); TrainConfig checks every field when it is constructed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from dipod_jax.run.config import ConfigError, build

ALGORITHMS = ("ppo", "fpo", "fpo++")
CFM_VARIANTS = ("velocity", "eps")
CFM_REDUCTIONS = ("mean", "sum", "sqrt")
TAU_SCHEDULES = ("grid", "uniform", "beta")
TRUST_REGIONS = ("ppo", "spo", "aspo")
ADVANTAGE_NORMALIZATIONS = ("minibatch", "rollout", "none")
TIMEOUT_BOOTSTRAPS = ("next_value", "current_value")  # dipod_jax.losses.gae's truncation_bootstrap


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of `make_train` (hashable: it is static under jit), checked on construction (ConfigError
    naming the first invalid field, before anything is compiled).

    Defaults are the FPO reference configuration on CartpoleBalance (MuJoCo Playground).
    """

    env_name: str = "CartpoleBalance"
    algo: str = "fpo"
    dipod_beta: float = 0.0
    # Batch layout (see the module docstring).
    num_envs: int = 256
    batch_size: int = 256
    num_minibatches: int = 8
    # Not Brax's GAE segment length: our advantages run over each environment's whole rollout_length steps
    # (see the module docstring); unroll_length only multiplies the batch (a minibatch is batch_size *
    # unroll_length transitions), as in Brax's batch arithmetic.
    unroll_length: int = 30
    num_updates_per_batch: int = 4
    episode_length: int | None = None  # None: the environment's own time limit
    # Optimisation.
    learning_rate: float | None = None  # None: 1e-3 for ppo (Playground's tuned Brax PPO), 3e-4 for fpo / fpo++
    max_grad_norm: float | None = None
    discounting: float = 0.995
    gae_lambda: float = 0.95
    reward_scaling: float = 10.0
    normalize_observations: bool = True
    # The critic adds value_loss_coef * 0.5 * mean (V - R)^2 to the loss: the default 0.5 is 0.25 * MSE (Brax /
    # the FPO reference); the FPO++ release adds value_loss_coef * MSE, so its coefficient c is 2c here.
    value_loss_coef: float = 0.5
    clip_eps: float | None = None  # None: 0.3 for ppo (reference PPO), 0.05 for fpo / fpo++
    entropy_cost: float = 1e-2  # ppo only
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # > 0: AdamW (decoupled), as the FPO++ release
    # "minibatch": (A - mean) / (std + 1e-8) within each minibatch (Brax PPO, the FPO reference); "rollout": over
    # the whole rollout with the unbiased std, once per iteration (the FPO++ release); "none". None: "rollout"
    # for fpo++, "minibatch" otherwise.
    advantage_normalization: str | None = None
    # Time limits: "next_value" bootstraps from V of the observation actually reached, recorded before the
    # auto-reset (correct); "current_value" adds gamma * V(s_t) to the reward of a timed-out step and ends the
    # recursion there (the FPO++ release, rsl_rl's approximation).
    timeout_bootstrap: str = "next_value"
    # Networks.
    actor_hidden: tuple[int, ...] = (32, 32, 32, 32)
    critic_hidden: tuple[int, ...] = (256, 256, 256, 256, 256)
    # Flow policy.
    num_flow_steps: int = 10
    num_cfm_samples: int = 8
    time_embed_dim: int = 8
    output_scale: float = 0.25
    cfm_variant: str = "eps"
    cfm_reduction: str = "mean"  # over action dimensions: "mean" | "sum" | "sqrt" (sum / sqrt(D))
    cfm_huber_delta: float | None = None  # the FPO++ release's Huber error (None: squared error)
    tau_schedule: str | None = None  # None: "grid" for fpo, "beta" for fpo++
    tau_beta_b: float = 2.0
    trust_region: str | None = None  # None: "ppo" for fpo, "aspo" for fpo++
    # FPO++ clamps (fpo++ only; see dipod_jax.losses.fpo_pp_loss). advantage_clamp: c or (positive_max,
    # negative_max); loss_clamp: l_new where A < 0 (None: off); log_ratio_clamp: straight-through, from above;
    # cfm_loss_clamp: l_old and l_new for every sample (<= 0: off).
    advantage_clamp: float | tuple[float, float] | None = None
    loss_clamp: float | None = 20.0
    log_ratio_clamp: float = 10.0
    cfm_loss_clamp: float = -1.0
    # Self-distillation (release defaults); 0 iterations disables it.
    sd_init_iterations: int = 0
    sd_every: int = 0  # interleave sd_interleaved_iterations of self-distillation every k RL iterations
    sd_interleaved_iterations: int = 10
    sd_env_steps: int = 8
    sd_batch_size: int = 16384
    sd_learning_rate: float = 3e-4
    sd_weight_decay: float = 1e-4
    sd_max_grad_norm: float = 1.0
    # Evaluation.
    num_eval_envs: int = 128

    def __post_init__(self):
        validate_config(self)

    @property
    def rollout_length(self) -> int:
        """Steps per environment per iteration."""
        return self.num_minibatches * self.batch_size * self.unroll_length // self.num_envs

    @property
    def env_steps_per_iteration(self) -> int:
        return self.rollout_length * self.num_envs

    @property
    def minibatch_transitions(self) -> int:
        return self.batch_size * self.unroll_length

    @property
    def resolved_learning_rate(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 1e-3 if self.algo == "ppo" else 3e-4

    @property
    def resolved_clip_eps(self) -> float:
        if self.clip_eps is not None:
            return self.clip_eps
        return 0.3 if self.algo == "ppo" else 0.05

    @property
    def resolved_tau_schedule(self) -> str:
        if self.tau_schedule is not None:
            return self.tau_schedule
        return "beta" if self.algo == "fpo++" else "grid"

    @property
    def resolved_trust_region(self) -> str:
        if self.trust_region is not None:
            return self.trust_region
        return "aspo" if self.algo == "fpo++" else "ppo"

    @property
    def resolved_advantage_normalization(self) -> str:
        if self.advantage_normalization is not None:
            return self.advantage_normalization
        return "rollout" if self.algo == "fpo++" else "minibatch"

    @property
    def is_flow(self) -> bool:
        return self.algo in ("fpo", "fpo++")


class HyperParams(NamedTuple):
    """The settings a population may vary from member to member (dipod_jax.control.population); everything
    else in TrainConfig fixes shapes or the program and stays static.

    Each field is a scalar: a Python float in a single run (so a dipod_beta of 0 keeps the DiPOD term out of
    the graph) or a traced float32 array in a population.
    """

    learning_rate: Any
    clip_eps: Any
    dipod_beta: Any
    entropy_cost: Any
    value_loss_coef: Any


def hyper_params(config: TrainConfig) -> HyperParams:
    """The config's resolved values as Python floats (the static hyper-parameters of a single run)."""
    return HyperParams(config.resolved_learning_rate, config.resolved_clip_eps, config.dipod_beta,
                       config.entropy_cost, config.value_loss_coef)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fail(config: TrainConfig, field: str, message: str):
    raise ConfigError(field, f"{message}, got {getattr(config, field)!r}")


def _validate_types(config: TrainConfig) -> None:
    """The fields a comparison could not even check: the optional ones take any literal on the command line."""
    for field in ("episode_length", "learning_rate", "clip_eps", "max_grad_norm", "loss_clamp", "cfm_huber_delta"):
        if getattr(config, field) is not None and not _is_number(getattr(config, field)):
            _fail(config, field, "must be a number or None")
    for field in ("algo", "cfm_variant", "cfm_reduction", "timeout_bootstrap", "advantage_normalization",
                  "tau_schedule", "trust_region"):
        if getattr(config, field) is not None and not isinstance(getattr(config, field), str):
            _fail(config, field, "must be a name")
    for field in ("adam_betas", "actor_hidden", "critic_hidden"):
        if not isinstance(getattr(config, field), tuple) or not all(map(_is_number, getattr(config, field))):
            _fail(config, field, "must be a tuple of numbers")


def validate_config(config: TrainConfig) -> None:
    """ConfigError naming the first invalid field (TrainConfig's construction calls it)."""
    def fail(field, message):
        _fail(config, field, message)

    _validate_types(config)
    if config.algo not in ALGORITHMS:
        fail("algo", f"must be one of {ALGORITHMS}")
    for field in ("num_envs", "batch_size", "num_minibatches", "unroll_length", "num_updates_per_batch",
                  "num_flow_steps", "num_cfm_samples", "sd_env_steps", "sd_batch_size",
                  "sd_interleaved_iterations", "num_eval_envs", "time_embed_dim"):
        if not isinstance(getattr(config, field), int) or getattr(config, field) < 1:
            fail(field, "must be an integer >= 1")
    for field in ("sd_init_iterations", "sd_every"):
        if not isinstance(getattr(config, field), int) or getattr(config, field) < 0:
            fail(field, "must be an integer >= 0")
    if config.time_embed_dim % 2:
        fail("time_embed_dim", "must be even")
    transitions = config.num_minibatches * config.batch_size * config.unroll_length
    if transitions % config.num_envs:
        fail("num_envs", f"must divide num_minibatches * batch_size * unroll_length = {transitions}")
    if config.episode_length is not None and config.episode_length < 1:
        fail("episode_length", "must be >= 1 or None")
    for field in ("output_scale", "log_ratio_clamp", "tau_beta_b",
                  "sd_learning_rate", "sd_max_grad_norm", "reward_scaling"):
        if not getattr(config, field) > 0:
            fail(field, "must be > 0")
    for field in ("discounting", "gae_lambda"):
        if not 0.0 <= getattr(config, field) <= 1.0:
            fail(field, "must be in [0, 1]")
    for field in ("dipod_beta", "value_loss_coef", "entropy_cost", "sd_weight_decay", "weight_decay"):
        if not 0.0 <= getattr(config, field) < float("inf"):
            fail(field, "must be a finite number >= 0")
    for field in ("learning_rate", "clip_eps", "max_grad_norm", "loss_clamp", "cfm_huber_delta"):
        if getattr(config, field) is not None and not getattr(config, field) > 0:
            fail(field, "must be > 0 or None")
    if config.advantage_clamp is not None:
        bounds = config.advantage_clamp if isinstance(config.advantage_clamp, tuple) else (config.advantage_clamp,)
        if len(bounds) not in (1, 2) or not all(isinstance(b, (int, float)) and b > 0 for b in bounds):
            fail("advantage_clamp", "must be None, a number > 0 or a pair (positive_max, negative_max) of numbers > 0")
    if not isinstance(config.cfm_loss_clamp, (int, float)):
        fail("cfm_loss_clamp", "must be a number (<= 0: off)")
    if len(config.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in config.adam_betas):
        fail("adam_betas", "must be a pair of numbers in [0, 1)")
    for field in ("actor_hidden", "critic_hidden"):
        widths = getattr(config, field)
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            fail(field, f"must be a non-empty tuple of positive integer widths, got {widths!r}")
    if config.cfm_variant not in CFM_VARIANTS:
        fail("cfm_variant", f"must be one of {CFM_VARIANTS}")
    if config.cfm_reduction not in CFM_REDUCTIONS:
        fail("cfm_reduction", f"must be one of {CFM_REDUCTIONS}")
    if config.advantage_normalization is not None and config.advantage_normalization not in ADVANTAGE_NORMALIZATIONS:
        fail("advantage_normalization", f"must be one of {ADVANTAGE_NORMALIZATIONS} or None")
    if config.timeout_bootstrap not in TIMEOUT_BOOTSTRAPS:
        fail("timeout_bootstrap", f"must be one of {TIMEOUT_BOOTSTRAPS}")
    if config.tau_schedule is not None and config.tau_schedule not in TAU_SCHEDULES:
        fail("tau_schedule", f"must be one of {TAU_SCHEDULES} or None")
    if config.trust_region is not None and config.trust_region not in TRUST_REGIONS:
        fail("trust_region", f"must be one of {TRUST_REGIONS} or None")
    if config.algo == "ppo" and (config.sd_init_iterations or config.sd_every):
        fail("algo", "self-distillation (sd_init_iterations, sd_every) needs a flow policy (fpo or fpo++)")


# Settings per environment. DM Control Suite tasks use the FPO reference layout (the TrainConfig defaults, the
# benchmark's configuration on CartpoleBalance) with the per-task discount MuJoCo Playground's tuned Brax PPO
# configuration uses (dm_control_suite_params.py: 0.95 for BallInCup and FingerSpin).
ENV_PRESETS = {
    "CartpoleBalance": {},
    "BallInCup": dict(discounting=0.95),
    "FingerSpin": dict(discounting=0.95),
    "tiny/point_target": dict(num_envs=16, batch_size=8, num_minibatches=4, unroll_length=10,
                              num_updates_per_batch=2, actor_hidden=(32, 32), critic_hidden=(32, 32),
                              num_flow_steps=4, num_cfm_samples=4, num_eval_envs=16, learning_rate=3e-3,
                              discounting=0.9, reward_scaling=1.0),
}


# FPO++ as the authors run it (DiPOD release, fpo-control/isaaclab_fpo): "fpo++_base" is rl_cfg.py's defaults
# (FpoRslRlPpoAlgorithmCfg, FpoRslRlPpoActorCriticCfg) with the locomotion networks of task_cfgs.py (Go2, H1,
# G1: actor 3 x 256, critic 3 x 768; H1 / G1 / Spot raise epochs and samples to 32); "fpo++_motion_tracking" is
# G1FlatMotionTrackingFlowPPORunnerCfg. Layout: num_steps_per_env steps per environment = num_minibatches *
# unroll_length with batch_size = num_envs (override num_envs and batch_size together); 4096 environments is
# Isaac Lab's scene size for these tasks (set by the environment, not by rl_cfg.py). value_loss_coef is the
# release's 1.0 x MSE, i.e. 2.0 here. What the release has and TrainConfig lacks (ELU networks, clip_actions 2
# instead of tanh, action_perturb_std 0.02, EMA weights, motion tracking's kNN entropy bonus and KL-adaptive
# learning rate, one minibatch partition for all epochs) is listed in docs/fidelity.md.
_FPO_PP_RELEASE = dict(
    algo="fpo++", num_envs=4096, batch_size=4096, num_minibatches=4, unroll_length=6, num_updates_per_batch=16,
    learning_rate=1e-4, max_grad_norm=1.0, adam_betas=(0.9, 0.999), weight_decay=1e-4, discounting=0.99,
    gae_lambda=0.95, reward_scaling=1.0, normalize_observations=True, value_loss_coef=2.0,
    advantage_normalization="rollout", clip_eps=0.05, trust_region="aspo", actor_hidden=(256, 256, 256),
    critic_hidden=(768, 768, 768), num_flow_steps=64, num_cfm_samples=16, time_embed_dim=8, output_scale=1.0,
    cfm_variant="velocity", cfm_reduction="sqrt", cfm_huber_delta=None, tau_schedule="beta", tau_beta_b=1.0,
    advantage_clamp=(100.0, 100.0), loss_clamp=20.0, log_ratio_clamp=10.0, cfm_loss_clamp=20.0)
ALGORITHM_PRESETS = {
    "fpo++_base": _FPO_PP_RELEASE,
    "fpo++_motion_tracking": dict(
        _FPO_PP_RELEASE, num_minibatches=6, unroll_length=8, adam_betas=(0.9, 0.95), clip_eps=0.01,
        actor_hidden=(1024, 512, 256), critic_hidden=(1024, 512, 256), cfm_reduction="mean", cfm_loss_clamp=-1.0,
        log_ratio_clamp=3.0),
}


def preset_fields(env_name: str, algorithm_preset: str | None = None) -> dict:
    """TrainConfig fields: ENV_PRESETS[env_name] (the reference layout when none is listed), then
    ALGORITHM_PRESETS[algorithm_preset] when given (ValueError naming the known presets otherwise); every field
    not set there has the TrainConfig default."""
    fields = dict(ENV_PRESETS.get(env_name, {}))
    if algorithm_preset is not None:
        if algorithm_preset not in ALGORITHM_PRESETS:
            raise ValueError(f"--preset={algorithm_preset}: unknown; known: {sorted(ALGORITHM_PRESETS)}")
        fields.update(ALGORITHM_PRESETS[algorithm_preset])
    return fields


def preset_config(env_name: str = TrainConfig.env_name, algorithm_preset: str | None = None,
                  **overrides) -> TrainConfig:
    """The configuration of a run: ENV_PRESETS[env_name] (the reference layout when none is listed), then
    ALGORITHM_PRESETS[algorithm_preset] when given, then `overrides` (any TrainConfig fields).

    Raises:
      ValueError naming the field as its flag ("--config.num_envs: must divide ..., got 7"): an unknown field or
      preset, a value TrainConfig refuses, or an algo that contradicts the algorithm preset.
    """
    fields = preset_fields(env_name, algorithm_preset)
    if algorithm_preset is not None and overrides.get("algo", fields["algo"]) != fields["algo"]:
        raise ValueError(f"--config.algo={overrides['algo']} contradicts --preset={algorithm_preset} "
                         f"(algo {fields['algo']})")
    return build(TrainConfig, {**fields, **overrides, "env_name": env_name})


def config_from_flags(algorithm_preset: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """`preset_config` of the control programs: --preset and the --config.<field> overrides (env_name among
    them picks the environment preset)."""
    fields = dict(overrides)
    return preset_config(fields.pop("env_name", TrainConfig.env_name), algorithm_preset, **fields)


def validate_periods(iterations_per_call: int, checkpoint_every: int, eval_every: int, num_timesteps: int) -> None:
    """The control programs' loop settings: ValueError naming the flag unless --iterations_per_call >= 1,
    --checkpoint_every and --eval_every are positive multiples of it and --num_timesteps >= 1."""
    if iterations_per_call < 1:
        raise ValueError(f"--iterations_per_call must be >= 1, got {iterations_per_call}")
    for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
        if value < 1 or value % iterations_per_call:
            raise ValueError(f"--{name} must be a positive multiple of --iterations_per_call="
                             f"{iterations_per_call}, got {value}")
    if num_timesteps < 1:
        raise ValueError(f"--num_timesteps must be >= 1, got {num_timesteps}")
