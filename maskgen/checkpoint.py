"""Orbax checkpoints of a run: train state, EMA params, the grain iterator and the config (JSON).

Saves are asynchronous and keep the newest `keep`. Restoring walks back from the newest step: a
checkpoint that cannot be read is moved aside to `workdir/corrupt_checkpoints/` (nothing is
deleted) and the previous one is tried, with a warning that names the step.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any

import grain.checkpoint as grain_checkpoint
import jax
import orbax.checkpoint as ocp

log = logging.getLogger("maskgen")


def abstract_like(tree):
    """ShapeDtypeStructs carrying each leaf's sharding: a restore target that lands on the mesh."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, *, state, ema, data_iterator, config_json: dict[str, Any]) -> None:
        """Starts an asynchronous save of everything needed to resume at `step`."""
        items = dict(
            state=ocp.args.StandardSave(state),
            ema=ocp.args.StandardSave(ema),
            config=ocp.args.JsonSave(config_json),
        )
        if data_iterator is not None:
            items["data"] = grain_checkpoint.CheckpointSave(data_iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def restore(self, step: int, *, abstract_state=None, abstract_ema=None, data_iterator=None):
        """Restores the named items of one step. Returns an object with `.state`, `.ema`, ..."""
        items = {}
        if abstract_state is not None:
            items["state"] = ocp.args.StandardRestore(abstract_state)
        if abstract_ema is not None:
            items["ema"] = ocp.args.StandardRestore(abstract_ema)
        if data_iterator is not None:
            items["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))

    def restore_latest(self, *, abstract_state=None, abstract_ema=None, data_iterator=None):
        """Restores the newest readable checkpoint. Returns `(step, restored)` or `(None, None)`."""
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(
                    step, abstract_state=abstract_state, abstract_ema=abstract_ema, data_iterator=data_iterator
                )
            except Exception as err:  # noqa: BLE001 - any read failure means "try the previous one".
                moved = self._quarantine(step)
                log.warning(
                    "checkpoint at step %d is unreadable (%s: %s); moved it to %s and falling back "
                    "to the previous checkpoint", step, type(err).__name__, str(err).splitlines()[0][:300], moved,
                )
        return None, None

    def _quarantine(self, step: int) -> str:
        source = os.path.join(self.directory, str(step))
        target = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints", f"{step}.{int(time.time())}")
        if jax.process_index() == 0 and os.path.exists(source):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_checkpoint_{step}")
        self.manager.reload()
        return target
