"""experiments.control_population: members from the flags, per-member logs, launch/sweep.py's summary format,
sharded Orbax checkpoints and bit-exact resume (on tests/conftest.py's 8 CPU devices: 4 members x 2 data shards)."""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dipod_jax.control.configs import preset_config
from dipod_jax.control.envs import make_point_target
from dipod_jax.control.population import Members, to_host
from dipod_jax.run.files import read_metrics
from experiments import control_population
from launch import compare, sweep

pytestmark = pytest.mark.integration

TINY = "tiny/point_target"
CONFIG = preset_config(TINY, algo="fpo", num_updates_per_batch=1)
MEMBERS = control_population.build_members(["0", "1"], ["0", "0.05"], [])
ENV = make_point_target()


def key_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
                        tree)


def run(workdir, iterations, resume=False):
    return control_population.run(CONFIG, MEMBERS, str(workdir), iterations * CONFIG.env_steps_per_iteration,
                                  iterations_per_call=2, checkpoint_every=2, eval_every=2, resume=resume,
                                  progress=False, env=ENV)


def test_members_from_flags_and_their_names():
    """--betas slowest, then --vary fields, seeds fastest; names and groups as launch/sweep.py names runs (the
    group carries every varied field but beta); malformed flags raise ValueError naming them."""
    members = control_population.build_members(["0", "1"], ["0", "0.05"], ["learning_rate=1e-3,3e-4"])
    assert members.seeds == (0, 1) * 4
    assert members.dipod_beta == (0.0,) * 4 + (0.05,) * 4
    assert members.learning_rate == (1e-3, 1e-3, 3e-4, 3e-4) * 2
    runs = control_population.member_runs(CONFIG, members, "/w")
    assert [run["name"] for run in runs[:3]] == ["fpo_learning_rate0.001_beta0_seed0",
                                                 "fpo_learning_rate0.001_beta0_seed1",
                                                 "fpo_learning_rate0.0003_beta0_seed0"]
    assert runs[5]["workdir"] == "/w/members/fpo_learning_rate0.001_beta0.05_seed1" and runs[5]["beta"] == 0.05
    plain = control_population.member_runs(CONFIG, Members(seeds=(3,)), "/w")
    assert (plain[0]["name"], plain[0]["group"], plain[0]["algo"], plain[0]["beta"]) == (
        "fpo_beta0_seed3", "fpo", "fpo", 0.0)
    for bad, match in ((["dipod_beta=0,1"], "--betas"), (["gamma=0.9"], "field one of"),
                       (["clip_eps=0.1,fast"], "--vary=clip_eps must be float values"),
                       (["clip_eps=0.1,0.1"], "without repeats"), (["clip_eps=0.1", "clip_eps=0.2"], "twice")):
        with pytest.raises(ValueError, match=match):
            control_population.build_members(["0"], [], bad)
    with pytest.raises(ValueError, match="--seeds must be int values"):
        control_population.build_members(["zero"], [], [])


def test_run_writes_member_logs_summary_and_resumes_bit_exactly(tmp_path):
    """4 iterations in one go vs 2, stop, --resume to 4 (the population sharded 4 x 2 over 8 devices, saved and
    restored by Orbax): bit-identical states and identical member logs. Each member directory holds its train
    records (steps 1..4) and eval records (steps 2, 4); manifest.json lists the members; the summary JSON is
    exactly launch/sweep.py's summary of them and the curves PNG exists; a second fresh run in the workdir is
    refused. launch.compare reads the workdir as its members (the comparison figure and table of the control
    results): groups by beta, curves against env steps, the table's mean of the last evaluations and the wall
    time (the sum of the population's call_s)."""
    full, summary = run(tmp_path / "full", 4)
    assert summary == {"step": 4, "stopped": "completed"}
    if len(jax.devices()) >= 8:
        assert dict(full.params["actor"]["params"]["Dense_0"]["kernel"].sharding.mesh.shape) == {"member": 4,
                                                                                               "data": 2}
    run(tmp_path / "split", 2)
    with pytest.raises(ValueError, match="resume"):
        run(tmp_path / "split", 4)
    resumed, _ = run(tmp_path / "split", 4, resume=True)
    chex.assert_trees_all_equal(to_host(key_data(full)), to_host(key_data(resumed)))

    runs = sweep.read_manifest(str(tmp_path / "full" / sweep.MANIFEST_FILE))
    assert [run["name"] for run in runs] == ["fpo_beta0_seed0", "fpo_beta0_seed1", "fpo_beta0.05_seed0",
                                             "fpo_beta0.05_seed1"]
    assert {run["status"] for run in runs} == {"succeeded"}
    for member in runs:
        records = read_metrics(member["workdir"])
        assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
        assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
        assert [r["env_steps"] for r in records if r["kind"] == "train"] == [
            step * CONFIG.env_steps_per_iteration for step in (1, 2, 3, 4)]
        split = read_metrics(member["workdir"].replace("full", "split"))
        assert split == records
    dipod = read_metrics(runs[2]["workdir"])
    assert all(r["dipod_term"] != 0.0 for r in dipod if r["kind"] == "train")
    saved = json.load(open(tmp_path / "full" / "summary_eval_return_mean.json"))
    expected = json.loads(json.dumps(sweep.summarize(runs, "eval_return_mean")))
    assert saved == expected and sorted(saved["groups"]) == ["fpo_beta0", "fpo_beta0.05"]
    assert saved["groups"]["fpo_beta0.05"]["seeds"] == [0, 1]
    assert os.path.getsize(tmp_path / "full" / "curves_eval_return_mean.png") > 0
    throughput = read_metrics(str(tmp_path / "full"))
    assert [r["step"] for r in throughput] == [2, 4] and all(r["env_steps_per_s"] > 0 for r in throughput)
    assert all(r["call_s"] > 0 for r in throughput)

    members = compare.load_runs(str(tmp_path / "full"))
    assert [(m["seed"], m["record"]["train_config.dipod_beta"]) for m in members] == [
        (0, 0.0), (1, 0.0), (0, 0.05), (1, 0.05)]
    groups = compare.group_runs(members, ["dipod_beta"])
    assert {label: [m["seed"] for m in group] for label, group in groups.items()} == {
        "dipod_beta=0.0": [0, 1], "dipod_beta=0.05": [0, 1]}
    table = compare.summary_table(groups, ["eval_return_mean", "cfm_loss"], last=2, x="env_steps")
    last_two = [np.mean([r["eval_return_mean"] for r in read_metrics(m["workdir"]) if r["kind"] == "eval"])
                for m in runs[2:]]
    row = table["dipod_beta=0.05"]
    assert row["eval_return_mean"]["mean"] == pytest.approx(np.mean(last_two))
    assert row["x_reached"] == 4 * CONFIG.env_steps_per_iteration
    assert row["wall_hours"] == pytest.approx(sum(r["call_s"] for r in throughput) / 3600)
    figure = str(tmp_path / "control.png")
    assert compare.plot_groups(groups, ["eval_return_mean", "cfm_loss", "grad_norm", "dipod_term"], figure,
                               x="env_steps") == ["eval_return_mean", "cfm_loss", "grad_norm", "dipod_term"]
    assert os.path.getsize(figure) > 0
    assert np.asarray(to_host(full.env_steps)).tolist() == [4 * CONFIG.env_steps_per_iteration] * 4
