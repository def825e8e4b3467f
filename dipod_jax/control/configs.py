"""Training configuration for continuous control, its validation and the per-environment presets.

Batch layout (Brax PPO semantics, as in the FPO reference code): one iteration collects
num_minibatches * batch_size * unroll_length transitions, i.e. rollout_length = that / num_envs steps in each of
num_envs environments; it then runs num_updates_per_batch epochs, each a reshuffle into num_minibatches
minibatches of batch_size * unroll_length transitions.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

ALGORITHMS = ("ppo", "fpo", "fpo++")
CFM_VARIANTS = ("velocity", "eps")
TAU_SCHEDULES = ("grid", "uniform", "beta")
TRUST_REGIONS = ("ppo", "spo", "aspo")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of `make_train` (hashable: it is static under jit).

    Defaults are the FPO reference configuration on CartpoleBalance (MuJoCo Playground).
    """

    env_name: str = "CartpoleBalance"
    algo: str = "fpo"
    dipod_beta: float = 0.0
    # Batch layout (see the module docstring).
    num_envs: int = 256
    batch_size: int = 256
    num_minibatches: int = 8
    unroll_length: int = 30
    num_updates_per_batch: int = 4
    episode_length: Optional[int] = None  # None: the environment's own time limit
    # Optimisation.
    learning_rate: Optional[float] = None  # None: 1e-3 for ppo (Playground's tuned Brax PPO), 3e-4 for fpo / fpo++
    max_grad_norm: Optional[float] = None
    discounting: float = 0.995
    gae_lambda: float = 0.95
    reward_scaling: float = 10.0
    normalize_observations: bool = True
    value_loss_coef: float = 0.5  # times 0.5 * MSE: the reference's 0.25 * MSE
    clip_eps: Optional[float] = None  # None: 0.3 for ppo (reference PPO), 0.05 for fpo / fpo++
    entropy_cost: float = 1e-2  # ppo only
    # Networks.
    actor_hidden: Tuple[int, ...] = (32, 32, 32, 32)
    critic_hidden: Tuple[int, ...] = (256, 256, 256, 256, 256)
    # Flow policy.
    num_flow_steps: int = 10
    num_cfm_samples: int = 8
    time_embed_dim: int = 8
    output_scale: float = 0.25
    cfm_variant: str = "eps"
    tau_schedule: Optional[str] = None  # None: "grid" for fpo, "beta" for fpo++
    tau_beta_b: float = 2.0
    trust_region: Optional[str] = None  # None: "ppo" for fpo, "aspo" for fpo++
    advantage_clamp: Optional[float] = None  # fpo++ only
    loss_clamp: float = 20.0
    log_ratio_clamp: float = 10.0
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
    def is_flow(self) -> bool:
        return self.algo in ("fpo", "fpo++")


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first invalid field (called before anything is compiled)."""
    def fail(field, message):
        raise ValueError(f"TrainConfig.{field}: {message}, got {getattr(config, field)!r}")

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
    for field in ("output_scale", "loss_clamp", "log_ratio_clamp", "tau_beta_b",
                  "sd_learning_rate", "sd_max_grad_norm", "reward_scaling"):
        if not getattr(config, field) > 0:
            fail(field, "must be > 0")
    for field in ("discounting", "gae_lambda"):
        if not 0.0 <= getattr(config, field) <= 1.0:
            fail(field, "must be in [0, 1]")
    for field in ("dipod_beta", "value_loss_coef", "entropy_cost", "sd_weight_decay"):
        if not getattr(config, field) >= 0.0:
            fail(field, "must be >= 0")
    for field in ("learning_rate", "clip_eps", "max_grad_norm", "advantage_clamp"):
        if getattr(config, field) is not None and not getattr(config, field) > 0:
            fail(field, "must be > 0 or None")
    if not config.actor_hidden or min(config.actor_hidden) < 1:
        fail("actor_hidden", "must be a non-empty tuple of positive widths")
    if not config.critic_hidden or min(config.critic_hidden) < 1:
        fail("critic_hidden", "must be a non-empty tuple of positive widths")
    if config.cfm_variant not in CFM_VARIANTS:
        fail("cfm_variant", f"must be one of {CFM_VARIANTS}")
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


def preset_config(env_name: str, **overrides) -> TrainConfig:
    """The preset for `env_name` (reference layout when none is listed), with `overrides`, validated."""
    fields = dict(ENV_PRESETS.get(env_name, {}))
    fields.update(overrides)
    config = TrainConfig(env_name=env_name, **fields)
    validate_config(config)
    return config
