"""Orbax checkpoints of a run: train state, EMA params, the grain iterator and the config (JSON).

Saves are asynchronous and keep the newest `keep`. Restoring walks back from the newest step: a
checkpoint that cannot be read is moved aside to `workdir/corrupt_checkpoints/` (nothing is
deleted) and the previous one is tried, with a warning that names the step.

Multi-process runs (see `maskgen.parallel.distributed`): every process calls `save` and `restore`
with the same arguments, in the same order. The arrays are global `jax.Array`s: each process
writes the shards it owns and Orbax's primary process (0) writes the shared metadata, the config
JSON and the commit marker. Restoring takes the target shardings of the *current* mesh, so a
checkpoint written by N processes restores on M processes (or another mesh) unchanged.

The grain iterator state is per process (`data/process_{i}-of-{n}.json`), and would tie a
checkpoint to its process count. It does not need to: `maskgen.data.pipeline.train_dataset` cuts
one global stream into global batches and process p reads chunk p of each (`[p::P]` on the
batched chunks), so the iterator's position (`next_index`) counts *global batches* and is the same
on every process, whatever P is. So when this process's own file is missing, or the run was saved
by another number of processes, `_DataIteratorHandler` restores process 0's state, after checking
that it is valid: it has the keys and value types of this iterator's own state, and every other
process's state saved beside it is identical (if they differ, the positions are not global and
nothing is restored: the restore fails instead of silently misaligning the data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import time
from typing import Any

import grain
import grain.checkpoint as grain_checkpoint
import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger("maskgen")


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit this config or run (a changed model, say)."""


_STATE_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def _iterator_state(item, directory: epath.Path) -> Any:
    """The saved state `item` should resume from (see the module docstring for the fallback).

    Missing states raise ValueError (a damaged checkpoint: `restore_latest` tries the previous
    one); states that cannot move to this process count raise CheckpointMismatchError, as every
    checkpoint of the run would.
    """
    index, count = jax.process_index(), jax.process_count()
    own = directory / f"process_{index}-of-{count}.json"
    if own.exists():
        return own.read_text()
    saved = {}
    for path in directory.iterdir():
        match = _STATE_FILE.fullmatch(path.name)
        if match:
            saved[(int(match[1]), int(match[2]))] = path
    counts = sorted({c for _, c in saved})
    if len(counts) != 1 or (0, counts[0]) not in saved:
        raise ValueError(f"no usable data-iterator state in {directory}: need {own.name}, or process 0's state "
                         f"of the run that saved it (found {sorted(p.name for p in saved.values())})")
    saved_count = counts[0]
    text = saved[(0, saved_count)].read_text()
    if isinstance(item, grain.DatasetIterator):
        state, template = json.loads(text), item.get_state()
        if not isinstance(state, dict) or set(state) != set(template) or any(
                type(state[k]) is not type(template[k]) for k in template):
            raise CheckpointMismatchError(
                f"the data-iterator state in {saved[(0, saved_count)]} ({state!r}) does not fit this pipeline "
                f"(whose state looks like {template!r})")
        for (i, _), path in sorted(saved.items()):
            if json.loads(path.read_text()) != state:
                raise CheckpointMismatchError(
                    f"the {saved_count} processes that saved {directory} were at different data positions "
                    f"(process {i} differs from process 0), so their states cannot move to {count} processes")
    log.info("data iterator: restoring process 0's state of a %d-process run on process %d of %d (positions "
             "count global batches, the same on every process)", saved_count, index, count)
    return text


class _DataIteratorHandler(grain_checkpoint.CheckpointHandler):
    """grain's handler (one JSON state per process), restoring across process counts."""

    def restore(self, directory: epath.Path, item=None, args=None):
        item = item or args.item
        text = _iterator_state(item, epath.Path(directory))
        item.set_state(json.loads(text) if isinstance(item, grain.DatasetIterator) else text.encode())
        item.start_prefetch()
        return item


@ocp.args.register_with_handler(_DataIteratorHandler, for_save=True)
@dataclasses.dataclass
class _DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(_DataIteratorHandler, for_restore=True)
@dataclasses.dataclass
class _DataRestore(ocp.args.CheckpointArgs):
    item: Any


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
                config=ocp.JsonCheckpointHandler(), data=_DataIteratorHandler(),
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
            items["data"] = _DataSave(data_iterator)
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
            items["data"] = _DataRestore(data_iterator)
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
