"""The public loss API: every loss the project documents is importable from dipod_jax.losses and shown by help()."""
import pydoc

import dipod_jax.losses as L

DOCUMENTED = [
    "cfm_loss", "cfm_loss_from_velocity", "draw_tau_eps", "fpo_log_ratio", "fpo_pp_log_ratio", "ppo_objective",
    "spo_objective", "aspo_objective", "gae", "value_loss", "dipod_regularizer", "with_dipod",
    "self_distillation_loss", "ppo_loss", "fpo_loss", "fpo_pp_loss", "mask_uniform_count", "mask_block_random",
    "mask_completion_and_prompt", "masked_token_log_probs", "elbo_masked", "elbo_from_token_logprobs",
    "token_log_probs",
    "spg_elbo_from_token_logprobs", "spg_eubo_from_token_logprobs", "spg_mix", "grpo_advantages", "grpo_loss",
    "diffu_grpo_loss", "fpo_dllm_loss", "spg_loss",
]


def test_help_lists_every_documented_loss_with_shapes():
    """help(dipod_jax.losses) renders each documented function, and each docstring states shapes ('[')."""
    text = pydoc.render_doc(L, renderer=pydoc.plaintext)
    for name in DOCUMENTED:
        assert f"\n    {name}(" in text, name
        assert "[" in getattr(L, name).__doc__, f"{name} docstring has no shapes"
