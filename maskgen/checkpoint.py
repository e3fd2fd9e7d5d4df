"""Orbax checkpoints of a run: train state, EMA params, the grain iterator and the config (JSON).

Saves are asynchronous and keep the newest `keep`. Restoring walks back from the newest step: a
checkpoint that cannot be read is moved aside to `workdir/corrupt_checkpoints/` (nothing is
deleted) and the previous one is tried, with a warning that names the step.

Every save is audited first (`audit`, one jitted pass over the arrays): a state holding a NaN or
an inf is never written (NonFiniteStateError names the first such array), and a checksum of every
array is stored beside it (the `checksums` item). Restoring recomputes the checksums of what it
read and treats any difference as a damaged checkpoint, naming the step and the array.
Why not the storage layer's checksums: Orbax 0.12 writes zarr3 arrays whose codecs it builds
itself (`tensorstore_utils._build_zarr3_metadata`), with a crc32c on each shard's *index* but
none on the chunk data, and offers no option to add one; a flipped byte in the data restored
silently. A checksum of the *logical* array also survives resharding: a checkpoint written by N
processes verifies on M. The sum is exact integer arithmetic, so it does not depend on how the
array is split across devices: sum_i bits(x_i) * (2 i + 1) mod 2^32, where bits() is the
element's bit pattern; a flip of any single bit changes it by an odd multiple of a power of two
below 2^32, so it always changes the sum.

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

import contextlib
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
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath

from maskgen.parallel import to_host

log = logging.getLogger("maskgen")


class CheckpointMismatchError(ValueError):
    """A readable checkpoint that does not fit this config or run (a changed model, say)."""


class CheckpointDamagedError(ValueError):
    """A checkpoint that cannot be read, or whose arrays do not match their saved checksums."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed (a full disk, say); earlier complete checkpoints are kept."""


class NonFiniteStateError(RuntimeError):
    """A state about to be saved holds NaN or inf values; it is not written."""


def _brief(err: Exception) -> str:
    """An exception in one line; a long one keeps its start and its end, where the OS error is."""
    text = (str(err).splitlines() or [""])[0]
    if len(text) > 500:
        text = text[:200] + " ... " + text[-250:]
    return f"{type(err).__name__}: {text}"


def _by_item(values: dict[str, Any], items) -> dict[str, dict[str, Any]]:
    """{"state/a/b": v, "ema/a": w} -> {"state": {"a/b": v}, "ema": {"a": w}}."""
    return {name: {path[len(name) + 1:]: v for path, v in values.items() if path.startswith(name + "/")}
            for name in items}


def _data_digest(iterator) -> str:
    """SHA-256 of a grain iterator's state (a small JSON dict: its position in the data)."""
    import hashlib

    return hashlib.sha256(json.dumps(iterator.get_state(), sort_keys=True).encode()).hexdigest()


CHECKSUM_ALGORITHM = "sum(bits*(2i+1)) mod 2^32, v1"


def _bits(x: jax.Array) -> jax.Array:
    """Each element's bit pattern as uint32 (any dtype of 4 bytes or fewer)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}.get(jnp.dtype(x.dtype).itemsize)
    if unsigned is None:
        raise TypeError(f"cannot checksum an array of dtype {x.dtype}")
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _audit_leaves(leaves):
    nonfinite, checksums = [], []
    for x in leaves:
        bits = _bits(x)
        index = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)  # row-major, as stored
        checksums.append(jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32))
        finite = jnp.isfinite(x) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.ones(x.shape, bool)
        nonfinite.append(jnp.sum(~finite, dtype=jnp.int32))
    return jnp.stack(nonfinite) if leaves else jnp.zeros(0, jnp.int32), (
        jnp.stack(checksums) if leaves else jnp.zeros(0, jnp.uint32))


_audit_jit = jax.jit(_audit_leaves)


def audit(tree) -> tuple[dict[str, int], dict[str, int]]:
    """`(non-finite count, checksum)` of every array of `tree`, by path, from one jitted pass.

    The reduction is fused on the devices; only two small vectors come back to the host.
    """
    paths_leaves = jax.tree.leaves_with_path(tree)
    nonfinite, checksums = to_host(_audit_jit([leaf for _, leaf in paths_leaves]))
    paths = [_path(p) for p, _ in paths_leaves]
    return (dict(zip(paths, (int(n) for n in nonfinite))), dict(zip(paths, (int(c) for c in checksums))))


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


def _replicated_like(tree):
    """A replicated sharding on the mesh of `tree`'s (sharded abstract) arrays, for scalars."""
    sharding = next((x.sharding for x in jax.tree.leaves(tree) if getattr(x, "sharding", None) is not None), None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


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
                checksums=ocp.JsonCheckpointHandler(),
            ),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, *, state, ema, data_iterator, config_json: dict[str, Any]) -> None:
        """Starts an asynchronous save of everything needed to resume at `step`.

        Raises NonFiniteStateError, writing nothing, if any array of `state` or `ema` holds a NaN
        or an inf: a checkpoint is only ever a state worth resuming from.
        """
        nonfinite, sums = audit({"state": state, "ema": ema})  # one fused pass, one small fetch
        bad = {path: n for path, n in nonfinite.items() if n}
        if bad:
            first = min(bad, key=lambda path: not path.startswith("state/"))  # the cause, not the EMA of it
            raise NonFiniteStateError(
                f"not saving step {step}: {first} holds {bad[first]} non-finite values (NaN or inf), "
                f"and {len(bad)} of {len(nonfinite)} arrays are affected "
                f"({sum(bad.values())} values in all: {', '.join(list(bad)[:5])}{', ...' if len(bad) > 5 else ''}); "
                "the last saved checkpoint is kept. To resume from it with a lower learning rate, rerun "
                "with --config.optimizer.lr=... --allow-change optimizer.lr (or check the data)")
        checksums = _by_item(sums, ("state", "ema"))
        if isinstance(data_iterator, grain.DatasetIterator):
            checksums["data"] = _data_digest(data_iterator)
        items = dict(
            state=ocp.args.StandardSave(state),
            ema=ocp.args.StandardSave(ema),
            config=ocp.args.JsonSave(config_json),
            checksums=ocp.args.JsonSave({"algorithm": CHECKSUM_ALGORITHM, **checksums}),
        )
        if data_iterator is not None:
            items["data"] = _DataSave(data_iterator)
        with self._saving(f"step {step}"):
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    @contextlib.contextmanager
    def _saving(self, what: str):
        """Turns a failed write (this one, or an earlier asynchronous one surfacing now) into a
        CheckpointSaveError that says which complete checkpoint is left to resume from."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - OSError, or Orbax/TensorStore wrapping it.
            try:
                self.manager.reload()
                kept = self.all_steps()
            except Exception:  # noqa: BLE001
                kept = []
            raise CheckpointSaveError(
                f"writing a checkpoint failed while saving {what} ({_brief(err)}); {self.directory} keeps the complete "
                f"checkpoints {kept or 'none'}, and a rerun resumes from the newest. If the disk is full, "
                "free space (or lower keep_checkpoints) first") from err

    def wait(self) -> None:
        with self._saving("the last checkpoint"):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._saving("the last checkpoint"):
            self.manager.wait_until_finished()
        self.manager.close()
        if getattr(self, "_read_manager", None) is not None:
            self._read_manager.close()

    def differences(self, step: int, item: str, abstract, partial: bool = False) -> str:
        """How `item` at `step` differs from `abstract` in its arrays (missing, extra, reshaped), in
        words; "" if it fits. With `partial`, `abstract` is a subtree (e.g. the model without the
        optimizer state): arrays under the top-level keys it does not name are not compared.
        A failure to read the metadata raises CheckpointDamagedError."""
        try:
            have = _shapes(self.manager.item_metadata(step)[item])
        except Exception as err:  # noqa: BLE001 - any read failure is damage, whatever Orbax raises.
            raise CheckpointDamagedError(self._damage(step, f"its {item} metadata cannot be read", err)) from err
        want = _shapes(abstract)
        if partial:
            tops = {k.split("/")[0] for k in want}
            have = {k: v for k, v in have.items() if k.split("/")[0] in tops}
        params_first = lambda k: (k.startswith("opt_state"), k)  # noqa: E731 - the model's arrays say most
        missing = sorted(set(want) - set(have), key=params_first)
        extra = sorted(set(have) - set(want), key=params_first)
        reshaped = sorted((k for k in set(want) & set(have) if want[k] != have[k]), key=params_first)
        if not (missing or extra or reshaped):
            return ""
        details = ([f"missing from the checkpoint: {k}" for k in missing[:5]]
                   + [f"not in this config: {k}" for k in extra[:5]]
                   + [f"{k}: checkpoint {have[k]} vs config {want[k]}" for k in reshaped[:5]])
        return (f"{len(missing)} arrays missing, {len(extra)} not in this config, {len(reshaped)} with other "
                f"shapes: {'; '.join(details)}")

    def check_compatible(self, step: int, item: str, abstract) -> None:
        """Raises CheckpointMismatchError if `item` at `step` has other arrays than `abstract` (a
        changed model) or other shapes; CheckpointDamagedError if its metadata cannot be read."""
        differences = self.differences(step, item, abstract)
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self.directory} does not match this config ({differences}). "
                "Use a new --workdir, or the config the run was started with (its workdir/config.json)."
            )

    def _damage(self, step: int, what: str, err: Exception | None = None) -> str:
        cause = f" ({_brief(err)})" if err else ""
        return f"checkpoint at step {step} in {self.directory} is damaged: {what}{cause}"

    def restore(self, step: int, *, abstract_state=None, abstract_ema=None, data_iterator=None):
        """Restores the named items of one step. Returns an object with `.state`, `.ema`, ...

        Raises CheckpointMismatchError if the checkpoint does not fit `abstract_*` (a config
        error), CheckpointDamagedError if it cannot be read or fails its checksums.
        """
        items, targets = {}, {}
        for name, abstract in (("state", abstract_state), ("ema", abstract_ema)):
            if abstract is None:
                continue
            self.check_compatible(step, name, abstract)
            items[name] = ocp.args.StandardRestore(abstract)
            targets[name] = abstract
        if data_iterator is not None:
            items["data"] = _DataRestore(data_iterator)
        has_checksums = os.path.isdir(os.path.join(self.directory, str(step), "checksums"))
        if has_checksums:
            items["checksums"] = ocp.args.JsonRestore()
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except CheckpointMismatchError:
            raise
        except Exception as err:  # noqa: BLE001 - Orbax/TensorStore raise many types for unreadable files.
            raise CheckpointDamagedError(self._damage(step, "it cannot be read", err)) from err
        saved_step = restored["state"].get("step") if "state" in targets and isinstance(restored["state"], dict) else None
        if saved_step is not None:  # a replicated scalar: every process holds it whole
            saved_step = int(saved_step.addressable_data(0)) if hasattr(saved_step, "addressable_data") else int(saved_step)
        if saved_step is not None and saved_step != step:
            raise CheckpointDamagedError(self._damage(
                step, f"it holds the train state of step {saved_step} (a renamed or copied directory?)"))
        if not has_checksums and "checksums" in self._saved_items(step):
            raise CheckpointDamagedError(self._damage(step, "its checksums item, listed in _CHECKPOINT_METADATA, is missing"))
        if not has_checksums:
            log.warning("checkpoint at step %d has no checksums (written by an older maskgen); restored "
                        "without verifying its arrays", step)
            return restored
        saved = restored.checksums
        if isinstance(data_iterator, grain.DatasetIterator) and "data" in saved:
            if _data_digest(data_iterator) != saved["data"]:
                raise CheckpointDamagedError(self._damage(
                    step, f"the data-iterator state read back ({data_iterator.get_state()!r}) differs from the one saved"))
        actuals = _by_item(audit({name: restored[name] for name in targets})[1], targets)
        for name, actual in actuals.items():
            expected = saved.get(name, {})
            differ = [path for path in actual if expected.get(path) != actual[path]]
            if differ:
                raise CheckpointDamagedError(self._damage(
                    step, f"{len(differ)} array(s) differ from the checksums saved with them, first {name}/{differ[0]} "
                          f"(saved {expected.get(differ[0])}, read {actual[differ[0]]})"))
        return restored

    def restore_model(self, step: int, *, abstract_variables, which: str = "ema"):
        """Only the model of `step`: `{"params", "model_state"}`, with `params` the EMA when
        `which == "ema"`. The optimizer state is never read (nor built: `abstract_variables` is the
        model's own sharded tree), so evaluating or sampling a run costs its parameters' memory only.

        Checked like `restore`: a model of another shape raises CheckpointMismatchError, a damaged
        or mislabelled checkpoint (checksums, step) CheckpointDamagedError.
        """
        if which not in ("ema", "params"):
            raise ValueError(f"which must be 'ema' or 'params', got {which!r}")
        state_target = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=_replicated_like(abstract_variables)),
                        "params": abstract_variables["params"], "model_state": abstract_variables["model_state"]}
        if which == "ema":
            state_target.pop("params")
        if not jax.tree.leaves(state_target["model_state"]):  # nothing to read (and Orbax wants leaves)
            state_target.pop("model_state")
        differences = "; ".join(d for d in (
            self.differences(step, "state", state_target, partial=True),
            self.differences(step, "ema", abstract_variables["params"]) if which == "ema" else "") if d)
        if differences:
            raise CheckpointMismatchError(
                f"checkpoint at step {step} in {self.directory} does not match this config ({differences}). "
                "Use the config the run was started with (its workdir/config.json).")
        items = {"state": ocp.args.PyTreeRestore(state_target, restore_args=ocp.checkpoint_utils.construct_restore_args(
            state_target), partial_restore=True)}
        if which == "ema":
            items["ema"] = ocp.args.PyTreeRestore(
                abstract_variables["params"],
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables["params"]))
        has_checksums = os.path.isdir(os.path.join(self.directory, str(step), "checksums"))
        if has_checksums:
            items["checksums"] = ocp.args.JsonRestore()
        try:
            restored = self._reader().restore(step, args=ocp.args.Composite(**items))
        except Exception as err:  # noqa: BLE001 - Orbax/TensorStore raise many types for unreadable files.
            raise CheckpointDamagedError(self._damage(step, "it cannot be read", err)) from err
        saved_step = int(to_host(restored["state"]["step"]))
        if saved_step != step:
            raise CheckpointDamagedError(self._damage(
                step, f"it holds the train state of step {saved_step} (a renamed or copied directory?)"))
        model = {"state": {k: v for k, v in restored["state"].items() if k != "step"}}
        if which == "ema":
            model["ema"] = restored["ema"]
        if has_checksums:
            saved = restored.checksums
            for name, actual in _by_item(audit(model)[1], tuple(model)).items():
                differ = [path for path in actual if saved.get(name, {}).get(path) != actual[path]]
                if differ:
                    raise CheckpointDamagedError(self._damage(
                        step, f"{len(differ)} array(s) differ from the checksums saved with them, first "
                              f"{name}/{differ[0]} (saved {saved.get(name, {}).get(differ[0])}, read {actual[differ[0]]})"))
        elif "checksums" in self._saved_items(step):
            raise CheckpointDamagedError(self._damage(step, "its checksums item, listed in _CHECKPOINT_METADATA, is missing"))
        params = restored["ema"] if which == "ema" else restored["state"]["params"]
        return {"params": params, "model_state": restored["state"].get("model_state", abstract_variables["model_state"])}

    def _reader(self):
        """A read-only manager whose handlers can restore part of a tree (the model without the
        optimizer state); the writing manager's StandardCheckpointHandler reads whole trees only."""
        if getattr(self, "_read_manager", None) is None:
            # Orbax warns that a read-only manager's directory "is read only": that is the point.
            quiet = logging.Filter()
            quiet.filter = lambda record: "is read only" not in record.getMessage()
            absl_log = logging.getLogger("absl")
            absl_log.addFilter(quiet)
            try:
                self._read_manager = self._open_reader()
            finally:
                absl_log.removeFilter(quiet)
        return self._read_manager

    def _open_reader(self):
        return ocp.CheckpointManager(
                self.directory, options=ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False),
                item_handlers=dict(state=ocp.PyTreeCheckpointHandler(), ema=ocp.PyTreeCheckpointHandler(),
                                   checksums=ocp.JsonCheckpointHandler()))

    def _saved_items(self, step: int) -> set[str]:
        """The items Orbax recorded when it wrote `step` (empty if that record is unreadable)."""
        try:
            with open(os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA")) as f:
                return set(json.load(f).get("item_handlers") or {})
        except (OSError, ValueError, AttributeError):
            return set()

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
                message = str(err) if isinstance(err, CheckpointDamagedError) else self._damage(step, "unreadable", err)
                log.warning("%s; %s and falling back to the previous checkpoint", message, where)
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


# --------------------------------------------------------------------------------------------
# A finished (or running) run's config and model, for inference: no optimizer is built or read.
# --------------------------------------------------------------------------------------------
def load_run_config(workdir: str):
    """The locked config a run saved in `workdir/config.json`."""
    from maskgen.config import config_from_json

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --config, or point --workdir at a training run")
    with open(path) as f:
        return config_from_json(f.read())


def restore_run_model(workdir: str, abstract_variables, *, step: int | None = None, which: str = "ema",
                      keep: int = 3) -> tuple[int, dict]:
    """`(step, {"params", "model_state"})` of a run: `params` are the EMA when `which == "ema"`.

    `abstract_variables` is the model's own tree of (sharded) ShapeDtypeStructs; the optimizer
    state is never read. Without `step`, the newest readable checkpoint (damaged ones are skipped
    with a warning and left in place); a checkpoint of another model raises CheckpointMismatchError.
    """
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep)
    try:
        steps = checkpointer.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoints in {workdir}/checkpoints; train first")
            for candidate in reversed(steps):
                try:
                    return candidate, checkpointer.restore_model(candidate, abstract_variables=abstract_variables,
                                                                 which=which)
                except CheckpointMismatchError:
                    raise
                except CheckpointDamagedError as err:
                    log.warning("%s; left it in place and trying the previous checkpoint", err)
            raise FileNotFoundError(f"no readable checkpoint in {workdir}/checkpoints")
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step}; available: {steps}")
        try:
            return step, checkpointer.restore_model(step, abstract_variables=abstract_variables, which=which)
        except CheckpointDamagedError as err:
            others = [s for s in steps if s != step]
            raise CheckpointDamagedError(f"{err}. Other checkpoints: {others or 'none'} (without --step, "
                                         "the newest readable one is used)") from err
    finally:
        checkpointer.close()
