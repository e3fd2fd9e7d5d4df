"""The one train/eval loop for every recipe (in the spirit of big_vision's train.py).

Sections, top to bottom: setup (config checks, mesh, data shapes, recipe, sharded model
template) -> optimizer -> state init/restore -> jitted update step -> loop (log, NaN check,
checkpoint, evals, preemption). The loop never learns what the recipe or the data is: it calls
`recipe.loss`, and evaluators call `recipe.sample` / `recipe.features` through `EvalContext`.
Setting a run up, restoring its weights and evaluating it are `maskgen.runs`, below this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from maskgen import parallel
from maskgen.checkpoint import Checkpointer, CheckpointDamagedError, CheckpointMismatchError, restore_run_model
from maskgen.config import ConfigError, config_to_json
from maskgen.data import data_options, make_source, train_dataset
from maskgen.metrics import MetricWriter, Progress, format_eta
# A run's setup, restoring and evaluation live below the loop (maskgen.runs); re-exported here
# because callers of the loop use them beside `train`.
from maskgen.runs import (Run, abstract_variables, evaluate, load_run_config, make_eval_context, restore_variables,  # noqa: F401
                          run_evaluators, sample, setup)

log = logging.getLogger("maskgen")


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stops without saving that state."""


# --------------------------------------------------------------------------------------------
# Optimizer: AdamW, linear warm-up then cosine decay, global-norm clipping.
# --------------------------------------------------------------------------------------------
def make_optimizer(opt: ml_collections.ConfigDict, total_steps: int, param_labels=None, group_overrides=None):
    """AdamW with linear warm-up then cosine decay, and global-norm clipping.

    With `param_labels` (a function params -> tree of group names, from the recipe), each group
    gets its own AdamW whose settings are `opt` updated by `group_overrides[group]` (e.g. a GAN
    discriminator's learning rate). Returns (transform, schedule of the base settings).
    """

    def build(settings: dict):
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=settings["lr"], warmup_steps=settings["warmup_steps"],
            decay_steps=max(total_steps, settings["warmup_steps"] + 1),
            end_value=settings["lr"] * settings["min_lr_ratio"],
        )
        # Weight decay on matrices only: biases, norms and learned tokens are not decayed (as in MAE),
        # nor are quantizer codebooks (k-means, EMA and dead-code restarts set them in place).
        def decay_mask(params):
            return jax.tree.map_with_path(
                lambda path, p: p.ndim >= 2 and "codebook" not in jax.tree_util.keystr(path), params)
        tx = optax.chain(
            optax.clip_by_global_norm(settings["grad_clip_norm"]) if settings["grad_clip_norm"] > 0 else optax.identity(),
            optax.adamw(schedule, b1=settings["b1"], b2=settings["b2"], weight_decay=settings["weight_decay"],
                        mask=decay_mask),
        )
        return tx, schedule

    base = opt.to_dict()
    base_tx, base_schedule = build(base)
    if param_labels is None:
        return base_tx, base_schedule
    overrides = group_overrides or {}
    for group, settings in overrides.items():
        unknown = set(settings) - set(base)
        if unknown:
            raise ConfigError(f"optimizer settings for group {group!r} name unknown keys {sorted(unknown)}; valid: {sorted(base)}")
    groups = {g: build({**base, **overrides.get(g, {})})[0] for g in set(overrides) | {"default"}}
    return optax.multi_transform(groups, param_labels), base_schedule


def _key_names(path) -> tuple:
    return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def state_shardings(run: Run, tx) -> tuple[dict, Any]:
    """Shardings of the train state {step, params, opt_state} and of the EMA params."""
    with run.context():
        abstract_params = jax.eval_shape(run.init_variables, jax.random.key(0))["params"]
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = parallel.replicated(run.mesh)
    # Each optimizer-state leaf whose path ends with a parameter's path (mu/nu copies of the
    # params, under any nesting of chains, masks and parameter groups) takes that parameter's
    # sharding; everything else (counts, ...) is replicated.
    by_path = {_key_names(path): (leaf.shape, sharding) for (path, leaf), sharding in zip(
        jax.tree.leaves_with_path(abstract_params), jax.tree.leaves(run.param_shardings))}

    def opt_sharding(path, leaf):
        names = _key_names(path)
        for start in range(len(names)):
            shape, sharding = by_path.get(names[start:], (None, None))
            if sharding is not None and shape == leaf.shape:
                return sharding
        return replicated

    opt_shardings = jax.tree.map_with_path(opt_sharding, abstract_opt)
    state = {"step": replicated, "params": run.param_shardings,
             "model_state": run.variable_shardings["model_state"], "opt_state": opt_shardings}
    return state, run.param_shardings


def _state_initializer(run: Run, tx):
    """A jitted `key -> (state, ema)` with sharded outputs, its abstract (sharded) outputs, which
    serve as restore targets without materialising anything, and the shardings themselves."""
    state_sh, ema_sh = state_shardings(run, tx)

    def init_state(key):
        variables = run.init_variables(key)
        params = variables["params"]
        state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": variables["model_state"],
                 "opt_state": tx.init(params)}
        return state, params

    with run.context():
        jit_init = jax.jit(init_state, out_shardings=(state_sh, ema_sh))
        abstract_state, abstract_ema = jax.eval_shape(jit_init, jax.random.key(0))
    attach = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)  # noqa: E731
    abstract = (jax.tree.map(attach, abstract_state, state_sh), jax.tree.map(attach, abstract_ema, ema_sh))
    return jit_init, abstract, (state_sh, ema_sh)


def _initialise_from(run: Run, source_workdir: str, state, state_sh, ema_sh):
    """`(state, ema)` of a new run whose params, EMA and model state are another run's eval weights
    (its `eval_params`, newest checkpoint); the optimizer state stays fresh. The model must have the
    same parameter tree: a difference raises a ConfigError naming it."""
    source_config = load_run_config(source_workdir)
    try:
        step, variables = restore_run_model(source_workdir, abstract_variables(run), which=source_config.eval_params,
                                            keep=run.config.keep_checkpoints)
    except CheckpointMismatchError as err:
        raise ConfigError(f"config.init_from={source_workdir!r}: its weights do not fit this config's model ({err})") from None
    log.info("starting from %s (step %d, %s weights)", source_workdir, step, source_config.eval_params)
    state = jax.device_put({**state, "params": variables["params"], "model_state": variables["model_state"]}, state_sh)
    # Copies: the train step donates state and EMA, which must not share buffers.
    return state, jax.device_put(jax.tree.map(jnp.copy, variables["params"]), ema_sh)


def _keys(seed: int) -> tuple[jax.Array, jax.Array]:
    base = jax.random.key(seed)
    return jax.random.fold_in(base, 0), jax.random.fold_in(base, 1)  # (init, train)


def make_train_step(run: Run, tx, schedule, train_key: jax.Array):
    """The pure update `(state, ema, batch) -> (state, ema, metrics)`, to be jitted by the caller."""
    config = run.config

    def train_step(state, ema, batch):
        rng = jax.random.fold_in(train_key, state["step"])

        def loss_fn(params):
            model = run.merge({"params": params, "model_state": state["model_state"]})
            loss, aux = run.recipe.loss(model, batch, rng, state["step"])
            # Variables the forward pass set in place: non-trainable state (EMA statistics, counters)
            # and parameter resets (k-means codebook init, dead-code restarts).
            _, params_after, model_state = nnx.split(model, nnx.Param, ...)
            return loss, (aux, nnx.to_pure_dict(params_after), nnx.to_pure_dict(model_state))

        (loss, (aux, params_after, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        # The gradient step applies on top of any in-place resets (identical to params otherwise).
        params_after = jax.lax.stop_gradient(params_after)
        updates, opt_state = tx.update(grads, state["opt_state"], params_after)
        params = optax.apply_updates(params_after, updates)
        decay = config.ema_decay
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "learning_rate": schedule(state["step"]), **aux}
        new_state = {"step": state["step"] + 1, "params": params, "model_state": model_state, "opt_state": opt_state}
        return new_state, ema, metrics

    return train_step


# --------------------------------------------------------------------------------------------
# Training.
# --------------------------------------------------------------------------------------------
class _PreemptionFlag:
    """SIGTERM (how TPU preemption arrives) asks the loop to checkpoint and exit cleanly.

    One process: a Python SIGTERM handler sets the flag. Several processes: they must all stop at
    the same step (saving is collective), but SIGTERM reaches the hosts at different moments. JAX's
    preemption service (started by `jax.distributed.initialize`) catches the signal on any host and
    agrees on a common step; `should_stop(step)` asks it, at every step, without a device sync.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        from jax._src import distributed

        self._coordinated = jax.process_count() > 1 and distributed.global_state.preemption_sync_manager is not None

    def should_stop(self, step: int) -> bool:
        if self._coordinated:
            from jax.experimental import multihost_utils

            self.requested = self.requested or multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __enter__(self):
        if self._coordinated:  # the preemption service owns SIGTERM; a Python handler would hide it
            return self
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no signal handling.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _finish_saves_on_error:
    """On an exception, lets in-flight (good) checkpoint saves finish before it propagates."""

    def __init__(self, checkpointer: Checkpointer):
        self.checkpointer = checkpointer

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            try:
                self.checkpointer.close()
            except Exception as err:  # noqa: BLE001 - the first error is the one to report.
                log.error("while stopping: %s", err)


class WorkdirLockedError(RuntimeError):
    """Another run is writing to the same workdir."""


class _WorkdirLock:
    """An exclusive lock on `workdir/.lock`, so two runs never interleave checkpoints in one workdir.

    `fcntl.flock` locks belong to the open file: the kernel releases them when the process exits or
    is killed, so a SIGKILLed run never leaves a stale lock behind. Only the primary process locks
    (all processes of one run share the workdir, e.g. a bucket mounted with gcsfuse).
    """

    def __init__(self, workdir: str, enabled: bool):
        self.path = os.path.join(workdir, ".lock")
        self.enabled = enabled and "://" not in workdir
        self._file = None

    def __enter__(self):
        if not self.enabled:
            return self
        import fcntl
        import socket

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)} is in use by another maskgen run ({holder}); "
                "wait for it to finish or stop it, or use another --workdir") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc):
        if self._file is not None:
            self._file.close()  # releases the lock


def _check_finite(step: int, metrics: dict[str, float], last_checkpoint: int | None) -> None:
    for name, value in metrics.items():
        if not math.isfinite(value):
            raise NonFiniteError(
                f"non-finite {name}={value} at step {step}; stopping without saving this state "
                f"(last good checkpoint: {'none' if last_checkpoint is None else f'step {last_checkpoint}'}; to resume "
                "from it with a lower learning rate: --config.optimizer.lr=... --allow-change optimizer.lr)"
            )


# Settings a resumed run may change: they decide how long to train, what to log and evaluate, and
# how the same computation is laid out on devices, not what the model, data or updates are. Any
# other difference from the workdir's config.json stops the resume (ConfigError) unless named in
# `allow_changes` (`maskgen train --allow-change KEY`): an optimizer setting, say, changes the
# run from that step on, which a researcher may mean but should say. A prefix covers its subtree.
RESUME_SAFE_KEYS = (
    "total_steps", "log_every", "checkpoint_every", "keep_checkpoints", "evals", "eval_params",
    "mesh", "sharding_rules", "remat", "data.read_threads", "data.data_dir",
    "init_from",  # only read when a run starts; a resume continues from its own checkpoint
    "sampling",  # decoding defaults of evaluation and `maskgen sample`: never part of training
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


class _Absent:
    def __repr__(self):
        return "(absent)"


_ABSENT = _Absent()  # a key one of two configs does not have


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between a saved config (JSON dict) and `config`: key -> (saved, now),
    where a key only one side has is `_ABSENT` on the other."""
    old, new = _flatten(saved), _flatten(json.loads(config_to_json(config)))
    return {key: (old.get(key, _ABSENT), new.get(key, _ABSENT)) for key in sorted(set(old) | set(new))
            if old.get(key, _ABSENT) != new.get(key, _ABSENT)}


def _covered(key: str, prefixes) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


class ResumeConfigError(ConfigError):
    """A workdir's checkpoints were made under other settings than the config given to resume them."""

    def __init__(self, message: str, changes: dict):
        super().__init__(message)
        self.changes = changes  # key -> (saved, now)


def check_resume_config(workdir: str, config: ml_collections.ConfigDict, allow_changes=(),
                        array_differences: Callable[[], str] = lambda: "") -> None:
    """Refuses to resume a run whose checkpoints were made under other settings (see RESUME_SAFE_KEYS).

    Called before anything in the workdir is touched; a fresh workdir, or one with no checkpoint
    yet, passes. Raises ConfigError listing every changed key with its saved and new values, and
    what `array_differences()` says of the model's arrays (how the newest checkpoint differs).
    """
    path = os.path.join(workdir, "config.json")
    checkpoints = os.path.join(workdir, "checkpoints")
    has_checkpoints = os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))
    if not (has_checkpoints and os.path.exists(path)):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path} ({err}), which records the settings of the run in {workdir}; "
                          "restore it, or use a new --workdir") from err
    changes = config_changes(saved, config)
    # A key only one side has comes from a newer or older maskgen (configs are locked: a user cannot
    # add one), so it is reported, not refused; the checkpoint's arrays are still checked.
    schema = {k: v for k, v in changes.items() if _ABSENT in v}
    unsafe = {k: v for k, v in changes.items() if k not in schema and not _covered(k, RESUME_SAFE_KEYS)
              and not _covered(k, allow_changes)}
    for key, (before, after) in changes.items():
        if key in schema:
            log.warning("resume: config.%s is %s (the run was started by another version of maskgen or of its "
                        "experiment file)", key, f"new, now {after!r}" if before is _ABSENT else "no longer used")
        elif key not in unsafe:
            log.info("resume: config.%s changed from %r to %r", key, before, after)
    if unsafe:
        lines = "\n".join(f"  - config.{k}: {a!r} in the run, {b!r} now" for k, (a, b) in unsafe.items())
        arrays = array_differences()
        if arrays:
            lines += f"\nand so the model's arrays differ: {arrays}"
        raise ResumeConfigError(
            f"{workdir} holds checkpoints of a run with other settings, which cannot resume under this config:\n{lines}\n"
            f"Nothing was changed in {workdir}. Rerun with the run's settings (its config.json; to train longer, "
            "change only --config.total_steps), use a new --workdir, or name each change you mean with "
            f"--allow-change KEY (allowed without it: {', '.join(RESUME_SAFE_KEYS)}). A change of the model's "
            "arrays is refused even then.", unsafe)


def check_workdir(workdir: str) -> None:
    """A workdir must be a local directory (or a path where one can be made) that this process can
    write; raises ConfigError naming the problem before anything runs."""
    if "://" in workdir:
        # Checkpoints, metrics and the lock use local-filesystem calls; a URL would silently become
        # a local directory named "gs:" on every host, and the run would be lost with the hosts.
        raise ConfigError(f"workdir {workdir!r} is a URL; maskgen writes workdirs through the file system: mount "
                          "the bucket on every host (e.g. gcsfuse at /gcs/BUCKET) and pass that path")
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory; pass a directory (new or a run's)")
    for name, want_dir in (("checkpoints", True), ("metrics.jsonl", False), ("config.json", False)):
        path = os.path.join(workdir, name)
        if os.path.exists(path) and os.path.isdir(path) != want_dir:
            raise ConfigError(f"--workdir {workdir} is not a maskgen run: its {name} is a "
                              f"{'file' if want_dir else 'directory'}; move it away, or use another --workdir")
    existing = os.path.abspath(workdir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"--workdir {workdir}: {existing} is a file, so the directory cannot be made")
    # os.access ignores read-only mounts' details and root's privileges; a real write is the test.
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".maskgen_write_test_"):
            pass
    except OSError as err:
        raise ConfigError(f"--workdir {workdir} is not writable ({existing}: {err.strerror or err}); "
                          "pass a directory this user can write") from None


def train(config: ml_collections.ConfigDict, workdir: str, allow_changes=()) -> dict[str, Any]:
    """Trains (or resumes) the run in `workdir`. Returns the last logged metrics and eval results.

    Raises WorkdirLockedError if another run holds the workdir, ConfigError if the workdir cannot
    be written or holds a run with other settings (`allow_changes`: see check_resume_config).
    """
    if jax.process_index() == 0:
        check_workdir(workdir)
    with _WorkdirLock(workdir, jax.process_index() == 0):
        return _train(config, workdir, allow_changes)


def _array_differences(checkpointer: Checkpointer, abstract_state) -> str:
    """How the newest checkpoint's train state differs from `abstract_state` ("" if it fits or is unreadable)."""
    steps = checkpointer.all_steps()
    try:
        return checkpointer.differences(steps[-1], "state", abstract_state) if steps else ""
    except CheckpointDamagedError:  # a damaged checkpoint says nothing about the config
        return ""


def _train(config: ml_collections.ConfigDict, workdir: str, allow_changes=()) -> dict[str, Any]:
    run = setup(config)
    is_primary = jax.process_index() == 0
    if config.eval_params == "ema" and config.ema_decay ** config.total_steps > 0.05:
        log.warning("config.ema_decay=%s over %d steps leaves %.0f%% of the initial weights in the EMA that "
                    "evaluation uses; lower the decay or set config.eval_params=params", config.ema_decay,
                    config.total_steps, 100 * config.ema_decay ** config.total_steps)
    log.info("mesh %s, %d devices, %d processes", dict(run.mesh.shape), jax.device_count(), jax.process_count())

    tx, schedule = make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    init_key, train_key = _keys(config.seed)
    jit_init, (abstract_state, abstract_ema), (state_sh, ema_sh) = _state_initializer(run, tx)

    # ---- Data: every process reads its own rows of each global batch.
    source = make_source(config.data.name, config.data.train_split, config.data.data_dir or None,
                         data_options(config.data))
    data_iter = iter(train_dataset(
        source, run.preprocess, seed=config.seed, global_batch_size=config.batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
        read_threads=config.data.get("read_threads", 1),
    ))

    # ---- Restore the latest readable checkpoint, or start from scratch.
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    check_resume_config(workdir, config, allow_changes, lambda: _array_differences(checkpointer, abstract_state))
    start_step, restored = checkpointer.restore_latest(
        abstract_state=abstract_state, abstract_ema=abstract_ema, data_iterator=data_iter
    )
    if restored is not None:
        state, ema = restored.state, restored.ema
        log.info("resumed from checkpoint at step %d", start_step)
    else:
        start_step = 0
        with run.context():
            state, ema = jit_init(init_key)
        if config.get("init_from", ""):
            state, ema = _initialise_from(run, config.init_from, state, state_sh, ema_sh)
        log.info("initialised a new run (%d parameters)%s",
                 sum(x.size for x in jax.tree.leaves(state["params"])),
                 f" from the weights of {config.init_from}" if config.get("init_from", "") else "")
    # Files are only written once the checkpoint (if any) is known to fit this config.
    writer = MetricWriter(workdir, is_primary)
    writer.supersede_after(start_step)
    if is_primary:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config_to_json(config))

    # ---- The update step: pure, jitted, state donated.
    train_step = make_train_step(run, tx, schedule, train_key)

    with run.context():
        step_fn = jax.jit(
            train_step, in_shardings=(state_sh, ema_sh, None),
            out_shardings=(state_sh, ema_sh, parallel.replicated(run.mesh)), donate_argnums=(0, 1),
        )

    # ---- The loop.
    periodic_evals = [n for n, s in config.evals.items() if s.every > 0]
    pending: list[tuple[int, dict]] = []  # (step, device metrics) not yet fetched
    window: list[dict[str, float]] = []  # fetched metrics since the last log line
    last_checkpoint = start_step if restored is not None else None
    last_logged: dict[str, float] = {}
    progress = Progress(start_step, config.total_steps, config.batch_size)
    run_start = time.perf_counter()

    def eval_variables():
        params = ema if config.eval_params == "ema" else state["params"]
        return {"params": params, "model_state": state["model_state"]}

    def drain():
        for step, device_metrics in jax.device_get(pending):
            host = {k: float(v) for k, v in device_metrics.items()}
            _check_finite(step, host, last_checkpoint)
            window.append(host)
        pending.clear()

    def save(step):
        nonlocal last_checkpoint
        drain()  # Never save a state whose loss or gradients were not finite.
        checkpointer.save(step, state=state, ema=ema, data_iterator=data_iter, config_json=config.to_dict())
        last_checkpoint = step

    with _PreemptionFlag() as preemption, _finish_saves_on_error(checkpointer):
        step = start_step
        while step < config.total_steps:
            local = next(data_iter)
            batch = parallel.global_batch(local, run.mesh, run.rules)
            with jax.set_mesh(run.mesh):
                state, ema, metrics = step_fn(state, ema, batch)
            step += 1
            pending.append((step, metrics))
            if step % config.log_every == 0 or step == config.total_steps:
                drain()
                last_logged = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                window.clear()
                speed = progress.update(step)
                writer.write_scalars(step, {**last_logged, **speed})
                log.info("step %d/%d  loss %.5f  %.2f steps/s  %.1f examples/s  ETA %s", step, config.total_steps,
                         last_logged["loss"], speed["steps_per_sec"], speed["examples_per_sec"],
                         format_eta(speed["eta_sec"]))
            stop = preemption.should_stop(step)
            if step % config.checkpoint_every == 0 or step == config.total_steps or stop:
                save(step)
            if stop:
                checkpointer.close()
                log.info("SIGTERM received: saved checkpoint at step %d and stopped; rerun to resume", step)
                return {"preempted_at": step, "metrics": last_logged}
            due = [n for n in periodic_evals if step % config.evals[n].every == 0 and step != config.total_steps]
            if due:
                run_evaluators(run, eval_variables(), step, writer, due)
    checkpointer.close()
    if start_step >= config.total_steps:
        log.info("the run in %s is already complete (step %d); `maskgen eval --workdir %s` evaluates it",
                 workdir, start_step, workdir)
    else:
        log.info("training finished: %d steps in %.1fs", config.total_steps - start_step,
                 time.perf_counter() - run_start)
    results = {}
    final_evals = [n for n, s in config.evals.items() if s.every >= 0]
    if start_step < config.total_steps and final_evals:  # Final evals, unless the run was already complete.
        results = run_evaluators(run, eval_variables(), step, writer, final_evals)
    writer.close()
    return {"metrics": last_logged, "evals": results, "workdir": workdir}


