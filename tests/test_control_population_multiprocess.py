"""A real two-process (multi-host) population run of experiments.control_population on the CPU backend.

Two processes with 4 CPU devices each meet through jax.distributed (coordinator on 127.0.0.1, gloo collectives)
and train one population of 4 members on the global 4 x 2 (member x data) mesh: each process builds and holds
only its own devices' shards (two members), and both write their shards of the Orbax checkpoint.
"""
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from processes import launch_processes

from dipod_jax.control.configs import preset_config
from dipod_jax.control.envs import make_point_target
from dipod_jax.control.population import to_host
from dipod_jax.run.checkpoints import CheckpointStore
from dipod_jax.run.files import read_metrics
from experiments import control_population
from launch import sweep

pytestmark = pytest.mark.integration

NUM_PROCESSES = 2
ITERATIONS = 4
FLAGS = ["--config.env_name=tiny/point_target", "--config.algo=fpo", "--seeds=0,1", "--betas=0,0.05",
         "--config.num_updates_per_batch=1",
         "--iterations_per_call=2", "--checkpoint_every=2", "--eval_every=2", "--noprogress"]
TIMEOUT_S = 600


@pytest.mark.slow
def test_two_process_population_equals_the_single_process_run(tmp_path):
    """Both processes exit 0 and only process 0 prints the summary; the checkpoint holds one shard file per
    process; its state, every member's log and the summary equal the same population trained in this process on
    8 devices (the same 4 x 2 mesh)."""
    if len(jax.devices()) < 8:
        pytest.skip("the single-process reference needs 8 devices (tests/conftest.py forces 8 CPU devices)")
    config = preset_config("tiny/point_target", algo="fpo", num_updates_per_batch=1)
    num_timesteps = ITERATIONS * config.env_steps_per_iteration
    workdir = str(tmp_path / "distributed")
    results = launch_processes("experiments.control_population",
                               FLAGS + [f"--workdir={workdir}", f"--num_timesteps={num_timesteps}"], NUM_PROCESSES,
                               workdir, TIMEOUT_S, devices_per_process=4)
    for process_id, (returncode, output) in enumerate(results):
        assert returncode == 0, f"process {process_id} exited {returncode}:\n{output[-4000:]}"
    assert '"stopped": "completed"' in results[0][1] and '"stopped"' not in results[1][1]
    state_dir = os.path.join(workdir, "checkpoints", str(ITERATIONS), "state")
    assert sorted(name for name in os.listdir(state_dir) if name.startswith("ocdbt.process_")) == [
        "ocdbt.process_0", "ocdbt.process_1"]

    members = control_population.build_members(["0", "1"], ["0", "0.05"], [])
    reference, _ = control_population.run(config, members, str(tmp_path / "reference"), num_timesteps,
                                          iterations_per_call=2, checkpoint_every=2, eval_every=2, progress=False,
                                          env=make_point_target())
    store = CheckpointStore(workdir, read_only=True)
    restored = store.restore(ITERATIONS, {"state": reference})["state"]
    store.close()
    key_data = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)
    chex.assert_trees_all_close(to_host(key_data(restored)), to_host(key_data(reference)), rtol=1e-6, atol=1e-7)
    for run in sweep.read_manifest(os.path.join(workdir, sweep.MANIFEST_FILE)):
        distributed = read_metrics(run["workdir"])
        single = read_metrics(run["workdir"].replace("distributed", "reference"))
        assert [r["step"] for r in distributed] == [r["step"] for r in single] == [1, 2, 2, 3, 4, 4]
        for record, expected in zip(distributed, single, strict=True):
            assert record.keys() == expected.keys() and record["kind"] == expected["kind"]
            numbers = sorted(name for name in record if name != "kind")
            np.testing.assert_allclose([record[name] for name in numbers], [expected[name] for name in numbers],
                                       rtol=1e-5, atol=1e-6)
    summaries = [json.load(open(tmp_path / name / "summary_eval_return_mean.json"))
                 for name in ("distributed", "reference")]
    assert sorted(summaries[0]["groups"]) == sorted(summaries[1]["groups"]) == ["fpo_beta0", "fpo_beta0.05"]
