"""benchmarks.control_throughput: batch layouts from flags and the rollout / update split (no timing)."""
import pytest

from benchmarks.control_throughput import layout_fields, split_seconds, variant_configs


def test_paper_layout_and_overrides():
    """--layout=paper is the FPO paper's 2048 envs, batch 1024 x 32 minibatches, unroll 30, 16 epochs (983,040 env
    steps an iteration); a non-zero override replaces one field; the reference layout is today's presets."""
    configs = variant_configs("CartpoleBalance", layout_fields("paper", {"num_envs": 0}), ["fpo", "fpo_dipod"], 0.05)
    paper = configs["fpo"]
    assert (paper.num_envs, paper.batch_size, paper.num_minibatches, paper.unroll_length,
            paper.num_updates_per_batch) == (2048, 1024, 32, 30, 16)
    assert paper.env_steps_per_iteration == 983040
    assert configs["fpo_dipod"].dipod_beta == 0.05 and paper.dipod_beta == 0.0
    assert variant_configs("CartpoleBalance", layout_fields("paper", {"num_envs": 256}), ["fpo"], 0.05)[
        "fpo"].num_envs == 256
    reference = variant_configs("CartpoleBalance", layout_fields("reference", {}), ["ppo"], 0.05)["ppo"]
    assert reference.env_steps_per_iteration == 61440


@pytest.mark.parametrize("call, message", [
    (lambda: layout_fields("huge", {}), "--layout"),
    (lambda: layout_fields("paper", {"batch_size": -1}), "--batch_size=-1 must be >= 0"),
    (lambda: variant_configs("CartpoleBalance", layout_fields("paper", {}), ["sac"], 0.05), "--variants"),
    (lambda: variant_configs("CartpoleBalance", layout_fields("paper", {}), ["fpo_dipod"], 0.0), "--dipod_beta=0.0"),
    (lambda: variant_configs("CartpoleBalance", layout_fields("paper", {}), ["fpo_dipod"], float("inf")),
     "--dipod_beta=inf"),
    (lambda: variant_configs("CartpoleBalance", layout_fields("paper", {"num_envs": 7}), ["fpo"], 0.05), "num_envs"),
])
def test_bad_layout_flags_raise(call, message):
    """Unknown layouts and variants, negative overrides, beta 0 for the DiPOD variant and a layout whose transitions
    the envs do not divide raise ValueError naming the flag / field."""
    with pytest.raises(ValueError, match=message):
        call()


def test_split_recovers_rollout_and_update_time():
    """With t_E = R + E U and t_1 = R + U (R = 2, U = 0.5, E = 16) the split returns R, E U, U and R / t_E."""
    split = split_seconds(2.0 + 16 * 0.5, 2.5, 16)
    assert split["rollout_s"] == pytest.approx(2.0) and split["update_s"] == pytest.approx(8.0)
    assert split["update_epoch_s"] == pytest.approx(0.5) and split["rollout_fraction"] == pytest.approx(0.2)
