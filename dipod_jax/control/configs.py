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
import typing
from typing import Any, Literal, NamedTuple

from dipod_jax.run.config import ConfigError, bounded, build, check_fields

Algorithm = Literal["ppo", "fpo", "fpo++"]
CfmVariant = Literal["velocity", "eps"]
CfmReduction = Literal["mean", "sum", "sqrt"]
TauSchedule = Literal["grid", "uniform", "beta"]
TrustRegion = Literal["ppo", "spo", "aspo"]
AdvantageNormalization = Literal["minibatch", "rollout", "none"]
TimeoutBootstrap = Literal["next_value", "current_value"]  # dipod_jax.losses.gae's truncation_bootstrap
ALGORITHMS = typing.get_args(Algorithm)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of `make_train` (hashable: it is static under jit), checked on construction (ConfigError
    naming the first invalid field, before anything is compiled).

    Defaults are the FPO reference configuration on CartpoleBalance (MuJoCo Playground).
    """

    env_name: str = "CartpoleBalance"
    algo: Algorithm = "fpo"
    dipod_beta: float = bounded(0.0, ge=0)
    # Batch layout (see the module docstring).
    num_envs: int = bounded(256, ge=1)
    batch_size: int = bounded(256, ge=1)
    num_minibatches: int = bounded(8, ge=1)
    # Not Brax's GAE segment length: our advantages run over each environment's whole rollout_length steps
    # (see the module docstring); unroll_length only multiplies the batch (a minibatch is batch_size *
    # unroll_length transitions), as in Brax's batch arithmetic.
    unroll_length: int = bounded(30, ge=1)
    num_updates_per_batch: int = bounded(4, ge=1)
    episode_length: int | None = bounded(None, ge=1)  # None: the environment's own time limit
    # Optimisation.
    # None: 1e-3 for ppo (Playground's tuned Brax PPO), 3e-4 for fpo / fpo++.
    learning_rate: float | None = bounded(None, gt=0)
    max_grad_norm: float | None = bounded(None, gt=0)
    discounting: float = bounded(0.995, ge=0, le=1)
    gae_lambda: float = bounded(0.95, ge=0, le=1)
    reward_scaling: float = bounded(10.0, gt=0)
    normalize_observations: bool = True
    # The critic adds value_loss_coef * 0.5 * mean (V - R)^2 to the loss: the default 0.5 is 0.25 * MSE (Brax /
    # the FPO reference); the FPO++ release adds value_loss_coef * MSE, so its coefficient c is 2c here.
    value_loss_coef: float = bounded(0.5, ge=0)
    clip_eps: float | None = bounded(None, gt=0)  # None: 0.3 for ppo (reference PPO), 0.05 for fpo / fpo++
    entropy_cost: float = bounded(1e-2, ge=0)  # ppo only
    adam_betas: tuple[float, float] = bounded((0.9, 0.999), ge=0, lt=1)
    weight_decay: float = bounded(0.0, ge=0)  # > 0: AdamW (decoupled), as the FPO++ release
    # "minibatch": (A - mean) / (std + 1e-8) within each minibatch (Brax PPO, the FPO reference); "rollout": over
    # the whole rollout with the unbiased std, once per iteration (the FPO++ release); "none". None: "rollout"
    # for fpo++, "minibatch" otherwise.
    advantage_normalization: AdvantageNormalization | None = None
    # Time limits: "next_value" bootstraps from V of the observation actually reached, recorded before the
    # auto-reset (correct); "current_value" adds gamma * V(s_t) to the reward of a timed-out step and ends the
    # recursion there (the FPO++ release, rsl_rl's approximation).
    timeout_bootstrap: TimeoutBootstrap = "next_value"
    # Networks.
    actor_hidden: tuple[int, ...] = bounded((32, 32, 32, 32), ge=1)
    critic_hidden: tuple[int, ...] = bounded((256, 256, 256, 256, 256), ge=1)
    # Flow policy.
    num_flow_steps: int = bounded(10, ge=1)
    num_cfm_samples: int = bounded(8, ge=1)
    time_embed_dim: int = bounded(8, ge=1)  # even
    output_scale: float = bounded(0.25, gt=0)
    cfm_variant: CfmVariant = "eps"
    cfm_reduction: CfmReduction = "mean"  # over action dimensions: "mean" | "sum" | "sqrt" (sum / sqrt(D))
    cfm_huber_delta: float | None = bounded(None, gt=0)  # the FPO++ release's Huber error (None: squared error)
    tau_schedule: TauSchedule | None = None  # None: "grid" for fpo, "beta" for fpo++
    tau_beta_b: float = bounded(2.0, gt=0)
    trust_region: TrustRegion | None = None  # None: "ppo" for fpo, "aspo" for fpo++
    # FPO++ clamps (fpo++ only; see dipod_jax.losses.fpo_pp_loss). advantage_clamp: c or (positive_max,
    # negative_max); loss_clamp: l_new where A < 0 (None: off); log_ratio_clamp: straight-through, from above;
    # cfm_loss_clamp: l_old and l_new for every sample (<= 0: off).
    advantage_clamp: float | tuple[float, float] | None = bounded(None, gt=0)
    loss_clamp: float | None = bounded(20.0, gt=0)
    log_ratio_clamp: float = bounded(10.0, gt=0)
    cfm_loss_clamp: float = -1.0
    # Self-distillation (release defaults); 0 iterations disables it.
    sd_init_iterations: int = bounded(0, ge=0)
    sd_every: int = bounded(0, ge=0)  # interleave sd_interleaved_iterations of self-distillation every k RL iterations
    sd_interleaved_iterations: int = bounded(10, ge=1)
    sd_env_steps: int = bounded(8, ge=1)
    sd_batch_size: int = bounded(16384, ge=1)
    sd_learning_rate: float = bounded(3e-4, gt=0)
    sd_weight_decay: float = bounded(1e-4, ge=0)
    sd_max_grad_norm: float = bounded(1.0, gt=0)
    # Evaluation.
    num_eval_envs: int = bounded(128, ge=1)

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


def validate_config(config: TrainConfig) -> None:
    """ConfigError naming the first invalid field (TrainConfig's construction calls it): every field against its
    annotation and bounds (`check_fields`), then the rules that tie fields together."""
    check_fields(config)
    if config.time_embed_dim % 2:
        raise ConfigError("time_embed_dim", f"must be even, got {config.time_embed_dim}")
    transitions = config.num_minibatches * config.batch_size * config.unroll_length
    if transitions % config.num_envs:
        raise ConfigError("num_envs", f"must divide num_minibatches * batch_size * unroll_length = {transitions}, "
                                      f"got {config.num_envs}")
    if config.algo == "ppo" and (config.sd_init_iterations or config.sd_every):
        raise ConfigError("algo", "self-distillation (sd_init_iterations, sd_every) needs a flow policy (fpo or "
                                  f"fpo++), got {config.algo!r}")


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
    # The release's FPO++ algorithm (every optimisation, trust-region, CFM and clamp setting of fpo++_base) at the
    # FPO reference layout and networks (the TrainConfig defaults: 256 environments, 8 x 256 x 30 transitions,
    # 4 epochs, actor 4 x 32, 10 flow steps, 8 CFM samples): what a CPU affords, and the layout FPO and PPO use
    # in the control comparison (docs/control.md), so that only the algorithm differs.
    "fpo++_reference_layout": dict(_FPO_PP_RELEASE, **{name: getattr(TrainConfig, name) for name in (
        "num_envs", "batch_size", "num_minibatches", "unroll_length", "num_updates_per_batch", "actor_hidden",
        "critic_hidden", "num_flow_steps", "num_cfm_samples")}),
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
