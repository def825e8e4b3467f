"""A real two-process (multi-host) run of experiments.lm_rl on the CPU backend, one device per process.

Two `python -m experiments.lm_rl` processes meet through jax.distributed (coordinator on 127.0.0.1, gloo CPU
collectives); each generates and scores only its own prompt, and the update runs on the global 2-device mesh.
"""
import os

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from processes import launch_processes

from dipod_jax.lm import data, rl
from dipod_jax.lm.tasks import get_task
from dipod_jax.models import sharding
from dipod_jax.run.checkpoints import CheckpointStore
from dipod_jax.run.files import CHECKPOINT_DIR, read_metrics

pytestmark = pytest.mark.integration

NUM_PROCESSES = 2
STEPS = 2
SEED = 0
# RLConfig overrides of the run (--config.<field> -> value); num_prompts is global: one prompt per process.
CONFIG_OVERRIDES = dict(algo="fpo", dipod_beta=0.05, num_prompts=2, num_generations=2, num_inner_iterations=2,
                        kl_beta=0.04, ref_sync_every=3, learning_rate=1e-3, num_elbo_draws=2, rollout_temperature=1.0)
TIMEOUT_S = 300


def launch_two_processes(init_dir: str, out_dir: str, timeout_s: float = TIMEOUT_S):
    """The NUM_PROCESSES processes of one distributed lm_rl run, one CPU device each (tests/processes.py);
    [(returncode, output)] by process."""
    flags = [f"--init_dir={init_dir}", f"--workdir={out_dir}", f"--steps={STEPS}", f"--eval_interval={STEPS}",
             "--eval_items=4", f"--seed={SEED}", "--noplot"]
    flags += [f"--config.{name}={value}" for name, value in CONFIG_OVERRIDES.items()]
    return launch_processes("experiments.lm_rl", flags, NUM_PROCESSES, out_dir, timeout_s)


def single_process_reference(init_dir: str, out_dir: str):
    """The same run in this process on a 2-device mesh (data x fsdp = 1 x 2, the distributed run's layout):
    each step's global batch is process 0's prompt then process 1's, drawn as lm_rl draws them. Returns
    (final trainable params as numpy, [train metrics of each step])."""
    from experiments import lm_rl

    settings = lm_rl.RLRunSettings(workdir=out_dir, init_dir=init_dir, seed=SEED, steps=STEPS,
                                   config_overrides=tuple(CONFIG_OVERRIDES.items()))
    model, tokenizer, info = lm_rl.load_policy(settings, SEED)
    config = lm_rl.build_rl_config(settings, info)
    task = get_task(info["task"])
    mesh = sharding.make_mesh(data=1, devices=jax.devices()[:NUM_PROCESSES])
    graphdef, params, frozen = rl.split_model(model, config.lora_only)
    params_sharding, frozen_sharding = rl.param_shardings(model, config.lora_only, mesh)
    params, frozen = jax.device_put((params, frozen), (params_sharding, frozen_sharding))
    state = rl.init_train_state(params, config, mesh)
    sample_fn = rl.make_sample_fn(config, graphdef, tokenizer.mask_id)
    update_fn = rl.make_update_fn(config, graphdef, tokenizer.mask_id, mesh)
    prompt_length, local_prompts = info["prompt_length"], config.num_prompts // NUM_PROCESSES
    step_metrics = []
    for step in range(STEPS):
        items = [item for process in range(NUM_PROCESSES)
                 for item in task.generate(np.random.default_rng([SEED, step, process]), local_prompts)]
        prompt_tokens, prompt_mask, reward_fn = data.rl_prompts_and_reward(
            task, items, tokenizer, info["template"], prompt_length, info["gen_length"], config.num_generations)

        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(SEED), 0), step)
        state, metrics, _ = rl.rl_step(state, frozen, prompt_tokens, prompt_mask, reward_fn, key, config=config,
                                       sample_fn=sample_fn, update_fn=update_fn, eos_id=tokenizer.eos_id,
                                       mesh=mesh)
        step_metrics.append({name: float(value) for name, value in metrics.items()})
    return jax.tree.map(np.asarray, state.params), step_metrics


@pytest.mark.slow
def test_two_process_run_equals_single_process_run_on_the_same_global_batch(pretrained_dir, tmp_path):
    """Two processes (one CPU device each) train FPO + DiPOD + KL for two steps: both exit 0; only process 0
    prints the summary and writes metrics (each step logged once); the checkpoint's arrays live on a
    1 x 2 x 1 mesh of two different devices (one per process), each process writing its own shards; and the
    checkpointed parameters and every logged train metric equal a single-process run on a 2-device mesh whose
    global batch is process 0's prompt then process 1's. So each process fed exactly its own prompt, rows were
    assembled in process order, and the update saw the whole global batch."""
    out_dir = str(tmp_path / "distributed")
    results = launch_two_processes(pretrained_dir, out_dir)
    for process_id, (returncode, output) in enumerate(results):
        assert returncode == 0, f"process {process_id} exited {returncode}:\n{output[-4000:]}"
    assert '"stopped": "completed"' in results[0][1] and '"stopped"' not in results[1][1]

    assert os.path.isfile(os.path.join(out_dir, "rl_config.json"))
    store = CheckpointStore(out_dir, read_only=True)
    assert store.steps() == [STEPS]
    state_dir = os.path.join(out_dir, CHECKPOINT_DIR, str(STEPS), "state")
    assert sorted(name for name in os.listdir(state_dir) if name.startswith("ocdbt.process_")) == [
        "ocdbt.process_0", "ocdbt.process_1"]
    # The saved metadata names each array's mesh: 1 x 2 x 1 over one device of each process.
    saved = ocp.StandardCheckpointer().metadata(state_dir).item_metadata
    for array in jax.tree.leaves(saved):
        assert list(array.sharding.shape) == [1, NUM_PROCESSES, 1], array.name
        device_ids = {device.id for row in array.sharding.device_mesh.mesh for column in row for device in column}
        assert len(device_ids) == NUM_PROCESSES, array.name
    # Restored onto this process's first device (the saved devices belong to the finished processes).
    first_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    template = jax.tree.map(lambda array: jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=first_device),
                            saved)
    restored = store.restore(STEPS, {"state": template})["state"]
    records = read_metrics(out_dir)
    train_records = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train_records] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if "eval/mean_reward" in r] == [0, STEPS]

    reference_params, reference_metrics = single_process_reference(pretrained_dir, str(tmp_path / "reference"))
    chex.assert_trees_all_close(jax.tree.map(np.asarray, restored["params"]), reference_params,
                                rtol=1e-4, atol=1e-5)
    for record, reference in zip(train_records, reference_metrics, strict=True):
        logged = {name: record[f"train/{name}"] for name in reference}
        np.testing.assert_allclose(list(logged.values()), list(reference.values()), rtol=1e-4, atol=1e-5)
