"""Exact log-likelihoods and drift measurements (bound gap, log-ratio error, gradient cosine)."""
from dipod_jax.diagnostics.drift import (
    bound_gap,
    flow_fpo_elbo,
    gradient_cosine,
    log_ratio_error,
    score_function_objective,
)
from dipod_jax.diagnostics.flow_exact import (
    SamplerInversionError,
    check_inversion_converged,
    exact_log_prob,
    invert_euler_sampler,
    log_prob_from_noise,
)
from dipod_jax.diagnostics.masked_exact import exact_elbo, exact_logprob_random_order, exact_uniform_count_estimate_mean

__all__ = [
    "SamplerInversionError", "bound_gap", "check_inversion_converged", "exact_elbo", "exact_log_prob",
    "exact_logprob_random_order", "exact_uniform_count_estimate_mean", "flow_fpo_elbo", "gradient_cosine",
    "invert_euler_sampler", "log_prob_from_noise", "log_ratio_error", "score_function_objective",
]
