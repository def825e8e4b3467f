"""Continuous-control training: PPO, FPO, FPO++ with the DiPOD term, several seeds vmapped in one program.

    python -m experiments.control --env=CartpoleBalance --algo=fpo --dipod_beta=0.05 --seed=0 \
        --num_seeds=3 --num_timesteps=5000000 --workdir=/tmp/runs/fpo_dipod
    python -m experiments.control ... --resume          # continue bit-exactly from the last checkpoint
    python -m experiments.control ... --set=learning_rate=1e-3 --set=actor_hidden=(64,64)
    python -m experiments.control --env=CartpoleBalance --preset=fpo++_base ...   # FPO++ as the release runs it

The configuration is the ml_collections preset of the environment (dipod_jax.control.configs.ENV_PRESETS;
the FPO reference layout when none is listed), then the --preset algorithm configuration (ALGORITHM_PRESETS:
fpo++_base, fpo++_motion_tracking, the FPO++ release's values), then --set overrides of any TrainConfig field. Writes to
--workdir: config.json, metrics.jsonl (one line per iteration and seed with the training metrics and the
wall-clock env-steps/s of its host call, all seeds counted; eval lines marked "eval"),
TensorBoard event files, orbax checkpoints (atomic) every --checkpoint_every iterations, learning_curve.png.
A non-finite loss stops the run; the last good checkpoint is kept.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from dipod_jax.control.configs import ALGORITHM_PRESETS, TrainConfig, preset_fields, validate_config
from dipod_jax.control.envs import make_environment
from dipod_jax.control.train import make_train

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Register the command-line flags; called only when run as a program, so that importing this module
    (tests, other experiments in the same process) defines no global flags."""
    flags.DEFINE_string("env", "CartpoleBalance", "Environment name (Playground DM Control, brax/<name>, tiny/...).")
    flags.DEFINE_enum("algo", None, ["ppo", "fpo", "fpo++"], "Algorithm (default: the --preset's, else fpo).")
    flags.DEFINE_enum("preset", None, sorted(ALGORITHM_PRESETS),
                      "Algorithm configuration of a release (ALGORITHM_PRESETS), applied over the env preset.")
    flags.DEFINE_float("dipod_beta", 0.0, "Weight of the DiPOD on-policy ELBO term (0 = baseline).")
    flags.DEFINE_integer("seed", 0, "First seed; seeds seed .. seed + num_seeds - 1 are trained together.")
    flags.DEFINE_integer("num_seeds", 1, "Seeds vmapped in one program.")
    flags.DEFINE_integer("num_timesteps", 5_000_000, "Environment steps per seed (rounded up to whole calls).")
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_integer("iterations_per_call", 1, "Training iterations fused into one jitted host call.")
    flags.DEFINE_integer("checkpoint_every", 10, "Checkpoint period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_integer("eval_every", 10, "Evaluation period in iterations (multiple of iterations_per_call).")
    flags.DEFINE_bool("resume", False, "Continue from the latest checkpoint in --workdir.")
    flags.DEFINE_multi_string("set", [], "TrainConfig override field=value (Python literal), repeatable.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")


def preset(env_name: str, algorithm_preset: Optional[str] = None) -> ml_collections.ConfigDict:
    """The ml_collections preset: TrainConfig defaults updated by ENV_PRESETS[env_name], then by
    ALGORITHM_PRESETS[algorithm_preset] when given."""
    fields = dataclasses.asdict(TrainConfig(env_name=env_name, **preset_fields(env_name, algorithm_preset)))
    return ml_collections.ConfigDict(fields)


def build_config(env_name: str, algo: Optional[str], dipod_beta: float, overrides: Sequence[str],
                 algorithm_preset: Optional[str] = None) -> TrainConfig:
    """Preset (env, then algorithm preset) + algo/beta + "field=value" overrides -> validated TrainConfig
    (ValueError names the bad item). algo None: the algorithm preset's, else "fpo"; an algo that contradicts
    the algorithm preset is refused."""
    config = preset(env_name, algorithm_preset)
    if algorithm_preset is not None and algo is not None and algo != config.algo:
        raise ValueError(f"--algo={algo} contradicts --preset={algorithm_preset} (algo {config.algo})")
    if algorithm_preset is None:
        config.algo = algo or "fpo"
    config.dipod_beta = dipod_beta
    for item in overrides:
        field, sep, text = item.partition("=")
        if not sep or field not in config:
            raise ValueError(f"--set {item!r}: expected field=value with field one of {sorted(config.keys())}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        if isinstance(value, list):
            value = tuple(value)
        try:
            config[field] = value
        except TypeError as error:
            raise ValueError(f"--set {item!r}: {error}") from error
    train_config = TrainConfig(**config.to_dict())
    validate_config(train_config)
    return train_config


def _to_savable(tree: Any) -> Any:
    """Checkpointable form of a state: typed PRNG keys -> raw uint32 data, zero-size arrays (e.g. MJX's empty
    actuator activations, which orbax refuses) -> None."""
    def convert(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return None if x.size == 0 else x
    return jax.tree.map(convert, tree)


def _from_savable(restored: Any, template: Any) -> Any:
    """Inverse of `_to_savable`; `template` (a state of the same structure) supplies the zero-size arrays and
    the key types."""
    template_leaves, treedef = jax.tree.flatten(template)
    restored_leaves = iter(jax.tree.leaves(restored))
    leaves = []
    for leaf in template_leaves:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaves.append(jax.random.wrap_key_data(next(restored_leaves), impl=jax.random.key_impl(leaf)))
        elif leaf.size == 0:
            leaves.append(leaf)
        else:
            leaves.append(next(restored_leaves))
    return jax.tree.unflatten(treedef, leaves)


def save_checkpoint(manager, step: int, state: Any) -> None:
    """Write `state` as checkpoint `step` (orbax: written to a temporary directory, then renamed)."""
    import orbax.checkpoint as ocp
    manager.save(step, args=ocp.args.StandardSave(_to_savable(state)))
    manager.wait_until_finished()


def restore_checkpoint(manager, step: int, template: Any) -> Any:
    """Read checkpoint `step` into the structure, dtypes and key types of `template`."""
    import orbax.checkpoint as ocp
    restored = manager.restore(step, args=ocp.args.StandardRestore(_to_savable(template)))
    return _from_savable(restored, template)


def _checkpoint_manager(workdir: str):
    import orbax.checkpoint as ocp
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True))


def _validate_periods(iterations_per_call: int, checkpoint_every: int, eval_every: int, num_seeds: int,
                      num_timesteps: int) -> None:
    if iterations_per_call < 1:
        raise ValueError(f"--iterations_per_call must be >= 1, got {iterations_per_call}")
    for name, value in (("checkpoint_every", checkpoint_every), ("eval_every", eval_every)):
        if value < 1 or value % iterations_per_call:
            raise ValueError(f"--{name} must be a positive multiple of --iterations_per_call="
                             f"{iterations_per_call}, got {value}")
    if num_seeds < 1:
        raise ValueError(f"--num_seeds must be >= 1, got {num_seeds}")
    if num_timesteps < 1:
        raise ValueError(f"--num_timesteps must be >= 1, got {num_timesteps}")


def _host_metrics(metrics: Dict[str, Any]) -> Dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in metrics.items()}


def _truncate_jsonl(path: str, last_iteration: int) -> None:
    """Drop lines logged after `last_iteration` (a resumed run re-logs them)."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        kept = [line for line in handle if json.loads(line)["iteration"] <= last_iteration]
    with open(path, "w") as handle:
        handle.writelines(kept)


def plot_learning_curve(jsonl_path: str, png_path: str, title: str) -> None:
    """Eval return against env steps: mean over seeds with a min-max band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_step: Dict[int, List[float]] = {}
    with open(jsonl_path) as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("kind") == "eval":
                by_step.setdefault(record["env_steps"], []).append(record["eval_return_mean"])
    if not by_step:
        return
    steps = np.array(sorted(by_step))
    returns = [np.array(by_step[s]) for s in steps]
    mean = np.array([r.mean() for r in returns])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(steps, mean, label="mean over seeds")
    axis.fill_between(steps, [r.min() for r in returns], [r.max() for r in returns], alpha=0.3, label="min-max")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("eval return (deterministic policy)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


@functools.lru_cache(maxsize=4)
def compiled_functions(config: TrainConfig, env, iterations_per_call: int):
    """Jitted, seed-vmapped (init, train_chunk, evaluate) for a config; cached so that a resumed run in the same
    process (and the resume test) reuses the compiled programs."""
    trainer = make_train(config, env)
    init = jax.jit(jax.vmap(trainer.init))
    train_chunk = jax.jit(jax.vmap(lambda s: trainer.train_iterations(s, iterations_per_call)))
    evaluate = jax.jit(jax.vmap(trainer.evaluate))
    return init, train_chunk, evaluate


def run(config: TrainConfig, workdir: str, seed: int = 0, num_seeds: int = 1, num_timesteps: int = 1,
        iterations_per_call: int = 1, checkpoint_every: int = 10, eval_every: int = 10, resume: bool = False,
        progress: bool = True, env=None) -> Tuple[Any, int]:
    """Train `num_seeds` seeds of `config` together, logging and checkpointing under `workdir`.

    Returns:
      (final batched TrainState with leading axis num_seeds, iterations done).

    Raises:
      ValueError: bad periods, an existing run in `workdir` without `resume`, a config that differs from the
        one being resumed. FloatingPointError: a non-finite loss (the last good checkpoint is kept).
    """
    from tensorboardX import SummaryWriter
    from tqdm import tqdm

    _validate_periods(iterations_per_call, checkpoint_every, eval_every, num_seeds, num_timesteps)
    validate_config(config)
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, "config.json")
    config_record = {"train_config": dataclasses.asdict(config), "seed": seed, "num_seeds": num_seeds,
                     "iterations_per_call": iterations_per_call}
    manager = _checkpoint_manager(workdir)
    latest = manager.latest_step()
    if latest is not None and not resume:
        raise ValueError(f"--workdir {workdir!r} already holds checkpoints; pass --resume or use a new workdir")
    if latest is not None:
        with open(config_path) as handle:
            saved = json.load(handle)
        if saved != json.loads(json.dumps(config_record)):
            raise ValueError(f"--resume: the configuration differs from the one saved in {config_path}")
    with open(config_path, "w") as handle:
        json.dump(config_record, handle, indent=1)

    seeds = np.arange(seed, seed + num_seeds)
    init, train_chunk, evaluate = compiled_functions(config, env or make_environment(config.env_name),
                                                     iterations_per_call)
    state = init(jax.vmap(jax.random.key)(seeds))
    done_iterations = 0
    jsonl_path = os.path.join(workdir, "metrics.jsonl")
    if latest is not None:
        state = restore_checkpoint(manager, latest, state)
        done_iterations = int(latest)
        _truncate_jsonl(jsonl_path, done_iterations)
        logging.info("resumed from iteration %d", done_iterations)

    total_iterations = iterations_per_call * math.ceil(
        num_timesteps / (config.env_steps_per_iteration * iterations_per_call))
    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    bar = tqdm(total=total_iterations, initial=done_iterations, disable=not progress, unit="it")
    start_time = time.perf_counter()
    iterations_at_start = done_iterations
    with open(jsonl_path, "a") as log:
        while done_iterations < total_iterations:
            chunk_start = time.perf_counter()
            state, metrics = train_chunk(state)
            metrics = _host_metrics(metrics)  # [num_seeds, iterations_per_call]
            chunk_steps_per_s = (iterations_per_call * config.env_steps_per_iteration * num_seeds
                                 / (time.perf_counter() - chunk_start))
            if not np.all(np.isfinite(metrics["total_loss"])):
                raise FloatingPointError(
                    f"non-finite loss at iteration {done_iterations + 1}..{done_iterations + iterations_per_call};"
                    f" stopping, last good checkpoint: {manager.latest_step()}")
            env_steps = np.asarray(state.env_steps)
            for offset in range(iterations_per_call):
                iteration = done_iterations + offset + 1
                for index, run_seed in enumerate(seeds):
                    record = {name: float(value[index, offset]) for name, value in metrics.items()}
                    record.update(kind="train", iteration=iteration, seed=int(run_seed),
                                  env_steps_per_s=chunk_steps_per_s)
                    log.write(json.dumps(record) + "\n")
                    for name, value in record.items():
                        if isinstance(value, float):
                            writer.add_scalar(f"seed{run_seed}/train/{name}", value, iteration)
            done_iterations += iterations_per_call
            elapsed = time.perf_counter() - start_time
            steps_per_s = (done_iterations - iterations_at_start) * config.env_steps_per_iteration * num_seeds / elapsed
            postfix = {"steps/s": f"{steps_per_s:.0f}",
                       "train_return": f"{metrics['episode_return'][:, -1].mean():.1f}"}
            if done_iterations % eval_every == 0 or done_iterations == total_iterations:
                eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, done_iterations))(
                    jax.vmap(jax.random.key)(seeds + 1_000_003))
                eval_metrics = _host_metrics(evaluate(state, eval_keys))
                for index, run_seed in enumerate(seeds):
                    record = {name: float(value[index]) for name, value in eval_metrics.items()}
                    record.update(kind="eval", iteration=done_iterations, seed=int(run_seed),
                                  env_steps=int(env_steps[index]))
                    log.write(json.dumps(record) + "\n")
                    writer.add_scalar(f"seed{run_seed}/eval/return", record["eval_return_mean"], done_iterations)
                postfix["eval_return"] = f"{eval_metrics['eval_return_mean'].mean():.1f}"
            log.flush()
            bar.set_postfix(postfix)
            bar.update(iterations_per_call)
            if done_iterations % checkpoint_every == 0 or done_iterations == total_iterations:
                save_checkpoint(manager, done_iterations, state)
    bar.close()
    writer.close()
    plot_learning_curve(jsonl_path, os.path.join(workdir, "learning_curve.png"),
                        f"{config.env_name} {config.algo} beta={config.dipod_beta}")
    return state, done_iterations


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected positional arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise ValueError("--workdir is required")
    _validate_periods(FLAGS.iterations_per_call, FLAGS.checkpoint_every, FLAGS.eval_every, FLAGS.num_seeds,
                      FLAGS.num_timesteps)
    config = build_config(FLAGS.env, FLAGS.algo, FLAGS.dipod_beta, FLAGS.set, FLAGS.preset)
    env = make_environment(config.env_name)
    run(config, FLAGS.workdir, FLAGS.seed, FLAGS.num_seeds, FLAGS.num_timesteps, FLAGS.iterations_per_call,
        FLAGS.checkpoint_every, FLAGS.eval_every, FLAGS.resume, FLAGS.progress, env)


if __name__ == "__main__":
    define_flags()
    app.run(main)
