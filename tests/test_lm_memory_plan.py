"""benchmarks.lm_memory_plan on a tiny LLaDA: the compiler's per-device argument bytes are the analytic ones."""
import jax.numpy as jnp
import pytest

from benchmarks.lm_memory_plan import plan_for_mesh
from dipod_jax.models.llada import LLaDAConfig

# The benchmark's measurement itself: it compiles the sharded training step on 8 fake devices.
pytestmark = pytest.mark.integration

CONFIG = LLaDAConfig.tiny(vocab_size=64, d_model=64, n_heads=4, mlp_hidden=128, n_layers=2, dtype=jnp.bfloat16,
                          param_dtype=jnp.float32, lora_rank=8, lora_alpha=16.0)


def test_memory_plan_argument_bytes_are_the_sharded_weights_and_inputs():
    """Per device, the step's arguments are exactly the bf16 base weights / N, the float32 adapters and two Adam
    moments / N, and this device's share of the batch inputs, except that the RMSNorm scales (2 per layer + the
    final one, bf16) and AdamW's int32 step counter are replicated; going from 2 to 8 devices divides the
    weight bytes by 4."""
    seq_len, draws = 16, 2
    plans = {n: plan_for_mesh(CONFIG, n, per_device_batch=1, seq_len=seq_len, num_draws=draws) for n in (2, 8)}
    for n, plan in plans.items():
        weights = plan["analytic_base_weight_bytes_per_device"] + plan["analytic_lora_and_adam_bytes_per_device"]
        # Per device: tokens int32 + completion mask bool + draws x mask bool, plus elbo_old and advantages f32.
        inputs = seq_len * 4 + seq_len + draws * seq_len + 2 * 4
        norm_bytes = (2 * CONFIG.n_layers + 1) * CONFIG.d_model * 2
        replicated_extra = norm_bytes - norm_bytes // n + 4
        assert plan["argument_bytes"] == weights + inputs + replicated_extra, (n, plan, weights, inputs)
        assert plan["temp_bytes"] > 0 and plan["peak_bytes_estimate"] >= plan["argument_bytes"]
    assert plans[2]["analytic_base_weight_bytes_per_device"] == 4 * plans[8]["analytic_base_weight_bytes_per_device"]
