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


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit this config (a changed model, say)."""


def _path(key_path) -> str:
    parts = []
    for key in key_path:
        for attr in ("key", "idx", "name"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def _shapes(tree) -> dict[str, tuple]:
    return {_path(p): tuple(x.shape) for p, x in jax.tree.leaves_with_path(tree)}


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True
            ),
            item_handlers=dict(
                state=ocp.StandardCheckpointHandler(), ema=ocp.StandardCheckpointHandler(),
                config=ocp.JsonCheckpointHandler(), data=grain_checkpoint.CheckpointHandler(),
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

    def check_compatible(self, step: int, item: str, abstract) -> None:
        """Raises CheckpointMismatchError if `item` at `step` lacks an array of `abstract` or has
        another shape; any other failure to read the metadata propagates (a damaged checkpoint)."""
        have = _shapes(self.manager.item_metadata(step)[item])
        want = _shapes(abstract)
        missing = sorted(set(want) - set(have))
        reshaped = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        if missing or reshaped:
            details = [f"missing {k}" for k in missing[:5]] + [
                f"{k}: checkpoint {have[k]} vs config {want[k]}" for k in reshaped[:5]]
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self.directory} does not match this config "
                f"({len(missing)} arrays missing, {len(reshaped)} with other shapes: {'; '.join(details)}). "
                "Use a new --workdir, or the config the run was started with (its workdir/config.json)."
            )

    def restore(self, step: int, *, abstract_state=None, abstract_ema=None, data_iterator=None):
        """Restores the named items of one step. Returns an object with `.state`, `.ema`, ..."""
        items = {}
        for name, abstract in (("state", abstract_state), ("ema", abstract_ema)):
            if abstract is None:
                continue
            self.check_compatible(step, name, abstract)
            items[name] = ocp.args.StandardRestore(abstract)
        if data_iterator is not None:
            items["data"] = grain_checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**items))

    def restore_latest(self, *, abstract_state=None, abstract_ema=None, data_iterator=None,
                       quarantine: bool = True):
        """Restores the newest readable checkpoint. Returns `(step, restored)` or `(None, None)`.

        A damaged checkpoint is skipped with a warning naming its step; with `quarantine` (training,
        which will save that step again) it is also moved aside. A checkpoint that reads fine but
        does not fit the config raises CheckpointMismatchError instead: falling back would
        silently restart the run.
        """
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, abstract_state=abstract_state, abstract_ema=abstract_ema,
                                          data_iterator=data_iterator)
            except CheckpointMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - any read failure means "try the previous one".
                where = f"moved it to {self._quarantine(step)}" if quarantine else "left it in place"
                log.warning(
                    "checkpoint at step %d is unreadable (%s: %s); %s and falling back to the previous "
                    "checkpoint", step, type(err).__name__, str(err).splitlines()[0][:300], where,
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
