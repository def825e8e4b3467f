"""Orbax checkpoints of a run: atomic steps, the newest N kept, restore with fallback to a readable one.

    <out_dir>/checkpoints/<step>/<item>/    each step written into a temporary directory and renamed when
                                            complete (a kill mid-save leaves no step behind)
    <out_dir>/checkpoints_unreadable/<step> steps that failed to restore, moved out of the way (kept, never
                                            deleted, so they can be inspected)

A checkpoint holds named pytrees {item: pytree}. Typed PRNG keys are stored as their raw key data and
zero-size arrays (which Orbax refuses, e.g. MJX's empty actuator activations) are left out; the restore
template supplies both back.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from dipod_jax.run.files import CHECKPOINT_DIR

UNREADABLE_DIR = "checkpoints_unreadable"


def to_savable(tree: Any) -> Any:
    """Checkpointable form of a pytree: typed PRNG keys -> raw key data, zero-size arrays -> None."""
    def convert(leaf):
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(leaf)
        return None if getattr(leaf, "size", 1) == 0 else leaf

    return jax.tree.map(convert, tree)


def from_savable(restored: Any, template: Any) -> Any:
    """Inverse of `to_savable`: `template` (a tree of the same structure) supplies the key types and the
    zero-size arrays."""
    template_leaves, treedef = jax.tree.flatten(template)
    restored_leaves = iter(jax.tree.leaves(restored))
    leaves = []
    for leaf in template_leaves:
        if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaves.append(jax.random.wrap_key_data(next(restored_leaves), impl=jax.random.key_impl(leaf)))
        elif getattr(leaf, "size", 1) == 0:
            leaves.append(leaf)
        else:
            leaves.append(next(restored_leaves))
    return jax.tree.unflatten(treedef, leaves)


def _agree_on_all(ok: bool) -> bool:
    """True when `ok` holds on every process (multi-host runs decide together)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class CheckpointStore:
    """The Orbax checkpoints of out_dir/checkpoints.

    Args:
      out_dir: the run directory.
      keep: how many of the newest steps are kept (older ones are deleted after each save).
      read_only: only read (nothing is created or deleted), e.g. loading another run's weights.
    """

    def __init__(self, out_dir: str, keep: int = 2, read_only: bool = False):
        self.out_dir = os.path.abspath(out_dir)
        self.directory = os.path.join(self.out_dir, CHECKPOINT_DIR)
        # A read-only manager makes Orbax warn three times that it is read-only (what was asked): not news.
        verbosity = logging.get_verbosity()
        if read_only:
            logging.set_verbosity(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only)
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            logging.set_verbosity(verbosity)
        self._written: set[int] = set()
        self.last_error: str | None = None  # why the newest step failed in the last restore_newest without success

    def steps(self) -> list[int]:
        """The complete checkpoint steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, step: int, trees: dict[str, Any]) -> None:
        """Writes the named pytrees {name: pytree} as checkpoint `step` and waits until it is complete."""
        self._manager.save(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardSave(to_savable(tree)) for name, tree in trees.items()}))
        self._manager.wait_until_finished()
        self._written.add(step)

    def restore(self, step: int, templates: dict[str, Any]) -> dict[str, Any]:
        """The named pytrees of checkpoint `step` with the structure, dtypes, shardings and key types of
        `templates` ({name: pytree}; a template of None restores the item as saved). Names absent from
        `templates` are not read."""
        restored = self._manager.restore(step, args=ocp.args.Composite(
            **{name: ocp.args.StandardRestore(None if template is None else to_savable(template))
               for name, template in templates.items()}))
        return {name: restored[name] if template is None else from_savable(restored[name], template)
                for name, template in templates.items()}

    def restore_newest(self, templates: dict[str, Any], candidates: Sequence[int] | None = None
                       ) -> tuple[int | None, dict[str, Any] | None]:
        """(step, trees) of the newest checkpoint (among `candidates`, default all) that restores; (None, None)
        when there is none, and then `last_error` says why the newest failed.

        A checkpoint that fails to restore while an older one restores (a truncated file, a missing item: that
        step is damaged) is logged as a warning naming it and the error and moved to
        out_dir/checkpoints_unreadable/<step>, so that this run can write that step again. When none restores,
        nothing is moved: every step failing alike means the template does not fit them (another model's
        checkpoints), not that they are damaged. On a multi-host run every process must succeed.
        """
        steps = self.steps() if candidates is None else sorted(set(candidates) & set(self.steps()))
        failed: list[tuple[int, Exception | None]] = []
        self.last_error = None
        for step in reversed(steps):
            try:
                trees, error = self.restore(step, templates), None
            except Exception as exception:  # noqa: BLE001 - any failure to read makes the step unusable
                trees, error = None, exception
            if _agree_on_all(error is None):
                for failed_step, failed_error in failed:
                    self._set_aside(failed_step, failed_error)
                return step, trees
            failed.append((step, error))
        if failed:
            step, error = failed[0]
            reason = "unreadable on another process" if error is None else f"{type(error).__name__}: {error}"
            self.last_error = f"checkpoint {step}: {' '.join(reason.split())[:300]}"
        return None, None

    def _set_aside(self, step: int, error: Exception | None) -> None:
        path = os.path.join(self.directory, str(step))
        target = os.path.join(self.out_dir, UNREADABLE_DIR, str(step))
        reason = "unreadable on another process" if error is None else f"{type(error).__name__}: {error}"
        logging.warning("checkpoint %s is unreadable (%s); moved to %s, falling back to an older checkpoint",
                        path, " ".join(reason.split())[:500], target)
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.exists(target):
                target = f"{target}.{len(os.listdir(os.path.dirname(target)))}"
            os.replace(path, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self._manager.reload()

    def written_here(self, step: int) -> bool:
        """True when this process saved checkpoint `step` (only those may ever be deleted)."""
        return step in self._written

    def delete_own(self, step: int) -> bool:
        """Deletes checkpoint `step` if this process wrote it; returns whether it did."""
        if not self.written_here(step) or step not in self.steps():
            return False
        self._manager.delete(step)
        self._written.discard(step)
        return True

    def close(self) -> None:
        self._manager.close()
