"""Pure-functional losses for diffusion / flow policy optimisation with the DiPOD regulariser.

Details: docs/modules.md, section dipod_jax.losses.
"""
from dipod_jax.losses.advantages import gae, grpo_advantages, normalize_advantages
from dipod_jax.losses.dipod import dipod_regularizer, with_dipod
from dipod_jax.losses.flow import (
    cfm_loss,
    cfm_loss_from_velocity,
    draw_tau_eps,
    flow_path,
    fpo_log_ratio,
    fpo_pp_log_ratio,
    straight_through_clip,
)
from dipod_jax.losses.lm import diffu_grpo_loss, fpo_dllm_loss, grpo_loss, spg_loss
from dipod_jax.losses.masked import (
    apply_mask,
    elbo_from_token_logprobs,
    elbo_masked,
    mask_block_random,
    mask_completion_and_prompt,
    mask_uniform_count,
    masked_token_log_probs,
    spg_elbo_from_token_logprobs,
    spg_eubo_from_token_logprobs,
    spg_mix,
    token_log_probs,
)
from dipod_jax.losses.policy_gradient import (
    clamp_advantages,
    fpo_loss,
    fpo_pp_loss,
    ppo_loss,
    self_distillation_loss,
)
from dipod_jax.losses.trust_region import (
    aspo_objective,
    clip_fraction,
    ppo_objective,
    spo_objective,
    trust_region_objective,
)
from dipod_jax.losses.value import value_loss

__all__ = [
    "apply_mask",
    "aspo_objective",
    "cfm_loss",
    "cfm_loss_from_velocity",
    "clamp_advantages",
    "clip_fraction",
    "diffu_grpo_loss",
    "dipod_regularizer",
    "draw_tau_eps",
    "elbo_from_token_logprobs",
    "elbo_masked",
    "flow_path",
    "fpo_dllm_loss",
    "fpo_log_ratio",
    "fpo_loss",
    "fpo_pp_log_ratio",
    "fpo_pp_loss",
    "gae",
    "grpo_advantages",
    "grpo_loss",
    "mask_block_random",
    "mask_completion_and_prompt",
    "mask_uniform_count",
    "masked_token_log_probs",
    "normalize_advantages",
    "ppo_loss",
    "ppo_objective",
    "self_distillation_loss",
    "spg_elbo_from_token_logprobs",
    "spg_eubo_from_token_logprobs",
    "spg_loss",
    "spg_mix",
    "spo_objective",
    "straight_through_clip",
    "token_log_probs",
    "trust_region_objective",
    "value_loss",
    "with_dipod",
]
