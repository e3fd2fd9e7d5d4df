"""Fault injection: damaged checkpoints, changed configs on resume, non-finite states, a full disk,
unusable workdirs. Each case asserts what is kept (no checkpoint or metrics row is ever deleted)
and what the user is told. docs/reliability.md lists every case with its test.

Kills at random points (SIGKILL, SIGTERM) are in tests/test_train.py; malformed configs in
tests/test_config_validation.py; bad input files in tests/test_bad_inputs.py.
"""

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import MAE_DIGITS, REPO, run_cli, tiny_mae_config
from maskgen import checkpoint as checkpoint_lib
from maskgen import train as train_lib
from maskgen.config import ConfigError

NO_EVALS = ["--config.evals.probe.every=-1", "--config.evals.reconstruction.every=-1"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def damaged_config():
    return tiny_mae_config("checkpoint_every=10", "log_every=5", steps=30)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """A run with checkpoints at steps 10, 20 and 30, never touched by a test (tests copy it)."""
    workdir = str(tmp_path_factory.mktemp("clean") / "run")
    train_lib.train(damaged_config(), workdir)
    return workdir


@pytest.fixture(scope="module")
def clean_params(clean_run):
    """The params of each checkpoint of `clean_run`, as numpy, read through maskgen's own restore."""
    run = train_lib.setup(damaged_config())
    return {step: jax.device_get(train_lib.restore_variables(run, clean_run, step, which="params")[1]["params"])
            for step in (10, 20, 30)}


def copy_run(clean_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(clean_run, workdir)
    return workdir


def data_files(workdir, step, item="state"):
    root = os.path.join(workdir, "checkpoints", str(step), item)
    return sorted((os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.sep + "d" + os.sep in
                   os.path.join(d, f)), key=os.path.getsize)


def damage(workdir, step, kind):
    """Damages checkpoint `step` as a disk, a copy or a person might."""
    biggest = data_files(workdir, step)[-1]
    if kind == "truncated":
        with open(biggest, "r+b") as f:
            f.truncate(os.path.getsize(biggest) // 2)
    elif kind == "bit_flipped":
        with open(biggest, "r+b") as f:
            f.seek(os.path.getsize(biggest) // 2)
            byte = f.read(1)[0]
            f.seek(-1, 1)
            f.write(bytes([byte ^ 0x04]))
    elif kind == "metadata":
        with open(os.path.join(workdir, "checkpoints", str(step), "state", "_METADATA"), "w") as f:
            f.write('{"tree_metadata": {"params": ')  # cut short
    elif kind == "missing_file":
        os.remove(biggest)
    elif kind == "data_position":  # a digit changed in the data iterator's JSON: still valid JSON
        path = os.path.join(workdir, "checkpoints", str(step), "data", "process_0-of-1.json")
        with open(path) as f:
            position = json.load(f)
        position["next_index"] += 1
        with open(path, "w") as f:
            json.dump(position, f)
    elif kind == "checksums_deleted":  # listed in _CHECKPOINT_METADATA, so its absence is noticed
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "checksums"))
    elif kind == "state_deleted":
        shutil.rmtree(os.path.join(workdir, "checkpoints", str(step), "state"))
    elif kind == "checksums_edited":  # the arrays are intact, the record of them is not: still refused
        path = os.path.join(workdir, "checkpoints", str(step), "checksums", "metadata")
        with open(path) as f:
            saved = json.load(f)
        first = sorted(k for k in saved["state"] if k.startswith("params/"))[0]
        saved["state"][first] ^= 1
        with open(path, "w") as f:
            json.dump(saved, f)
    else:
        raise ValueError(kind)


KINDS = ["truncated", "bit_flipped", "metadata", "missing_file", "checksums_edited", "checksums_deleted",
         "state_deleted"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("damaged_steps", [(30,), (30, 20)], ids=["last", "last_two"])
def test_damaged_checkpoints_are_skipped_and_named(clean_run, clean_params, tmp_path, caplog, kind, damaged_steps):
    workdir = copy_run(clean_run, tmp_path)
    for step in damaged_steps:
        damage(workdir, step, kind)
    run = train_lib.setup(damaged_config())
    # Resuming reads every array (state, EMA, data position): it skips each damaged step, naming it.
    tx, _ = train_lib.make_optimizer(run.config.optimizer, run.config.total_steps)
    _, (abstract_state, abstract_ema), _ = train_lib._state_initializer(run, tx)
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    with caplog.at_level(logging.WARNING, logger="maskgen"):
        step, restored = checkpointer.restore_latest(abstract_state=abstract_state, abstract_ema=abstract_ema,
                                                     quarantine=False)
    checkpointer.close()
    assert step == min(damaged_steps) - 10
    for bad in damaged_steps:
        assert f"checkpoint at step {bad} in {workdir}/checkpoints is damaged" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state["params"]), clean_params[step])
    # Evaluation reads the model's arrays only (never the optimizer state): a damaged step is skipped
    # and named, unless the damage lies wholly in arrays it does not read. Either way, what comes
    # back is exactly what was saved at that step: nothing damaged is restored silently.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskgen"):
        step, variables = train_lib.restore_variables(run, workdir, which="params")
    assert step >= min(damaged_steps) - 10
    for bad in damaged_steps:
        if bad > step:
            assert f"checkpoint at step {bad} in {workdir}/checkpoints is damaged" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), clean_params[step])
    # `maskgen eval --step` on a damaged step names it and what is wrong, and touches nothing.
    if step != damaged_steps[0]:
        with pytest.raises(checkpoint_lib.CheckpointDamagedError, match=f"step {damaged_steps[0]} .* is damaged"):
            train_lib.restore_variables(run, workdir, damaged_steps[0], which="params")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


def test_eval_step_on_a_damaged_checkpoint_names_it_without_a_traceback(clean_run, tmp_path):
    workdir = copy_run(clean_run, tmp_path)
    # Evaluation reads the model's arrays only, so the damage must be in one of them: a parameter
    # whose checksum no longer matches, evaluated with the params (not the EMA).
    damage(workdir, 30, "checksums_edited")
    result = run_cli("eval", "--workdir", workdir, "--step", "30", "--config.evals.probe.every=-1",
                     "--config.eval_params=params")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: checkpoint at step 30 in {workdir}/checkpoints is damaged: ") and \
        "Other checkpoints: [10, 20]" in last
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10", "20", "30"]


def test_a_renamed_checkpoint_is_not_taken_for_another_step(clean_run, clean_params, tmp_path, caplog):
    workdir = copy_run(clean_run, tmp_path)
    os.rename(os.path.join(workdir, "checkpoints", "30"), os.path.join(workdir, "checkpoints", "40"))
    with caplog.at_level(logging.WARNING, logger="maskgen"):
        step, variables = train_lib.restore_variables(train_lib.setup(damaged_config()), workdir, which="params")
    assert "checkpoint at step 40" in caplog.text and "holds the train state of step 30" in caplog.text
    assert step == 20
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), clean_params[20])


def test_stray_entries_in_checkpoints_are_not_taken_for_checkpoints(clean_run, clean_params, tmp_path, caplog):
    workdir = copy_run(clean_run, tmp_path)
    ckpt = os.path.join(workdir, "checkpoints")
    os.makedirs(os.path.join(ckpt, "50"))  # empty
    open(os.path.join(ckpt, "60"), "w").close()  # a file
    os.makedirs(os.path.join(ckpt, "70.orbax-checkpoint-tmp-1", "state"))  # a save cut short
    with caplog.at_level(logging.WARNING, logger="maskgen"):
        step, variables = train_lib.restore_variables(train_lib.setup(damaged_config()), workdir, which="params")
    assert step == 30 and f"checkpoint at step 50 in {ckpt} is damaged" in caplog.text
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), clean_params[30])


def test_no_single_bit_flip_in_the_arrays_restores_silently(clean_run, tmp_path):
    """A bit flipped anywhere in a parameter file either fails to decode, fails its checksum, or
    (a byte the reader never uses) changes nothing: no flip changes what is restored without a
    word. Before checksums, flips in the compressed data restored changed values silently."""
    run = train_lib.setup(damaged_config())
    workdir = copy_run(clean_run, tmp_path)
    target = data_files(workdir, 30)[-1]
    original = open(target, "rb").read()
    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=3)
    tx, _ = train_lib.make_optimizer(run.config.optimizer, run.config.total_steps)
    _, (abstract_state, _), _ = train_lib._state_initializer(run, tx)
    clean = jax.device_get(checkpointer.restore(30, abstract_state=abstract_state).state)
    rng = np.random.default_rng(0)
    outcomes = {"unreadable": 0, "checksum": 0, "unchanged": 0}
    for offset in rng.choice(len(original), size=12, replace=False):
        flipped = bytearray(original)
        flipped[offset] ^= 1 << int(rng.integers(8))
        with open(target, "wb") as f:
            f.write(flipped)
        try:
            restored = jax.device_get(checkpointer.restore(30, abstract_state=abstract_state).state)
        except checkpoint_lib.CheckpointDamagedError as err:
            outcomes["checksum" if "checksums" in str(err) else "unreadable"] += 1
        else:
            jax.tree.map(np.testing.assert_array_equal, restored, clean)
            outcomes["unchanged"] += 1
    checkpointer.close()
    assert outcomes["checksum"] > 0 and outcomes["unchanged"] < 6, outcomes  # the checksums catch flips


def test_training_resumes_past_damage_and_matches_an_undamaged_run(clean_run, tmp_path, caplog):
    workdir = copy_run(clean_run, tmp_path)
    damage(workdir, 30, "bit_flipped")
    damage(workdir, 20, "data_position")  # only a resume reads the data position
    before = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
    with caplog.at_level(logging.INFO, logger="maskgen"):
        train_lib.train(damaged_config(), workdir)
    assert "resumed from checkpoint at step 10" in caplog.text
    assert re.search(r"step 20 .* the data-iterator state read back .* differs from the one saved", caplog.text)
    moved = sorted(os.listdir(os.path.join(tmp_path, "run", "corrupt_checkpoints")))
    assert [name.split(".")[0] for name in moved] == ["20", "30"]  # moved aside, not deleted
    for item in ("state", "ema"):
        ours, theirs = (checkpoint_lib.ocp.StandardCheckpointer().restore(os.path.join(w, "checkpoints", "30", item))
                        for w in (workdir, clean_run))
        jax.tree.map(np.testing.assert_array_equal, ours, theirs)
    # The rows logged after step 10 by the first run are kept in metrics.superseded.jsonl.
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20, 25, 30]
    superseded = read_jsonl(os.path.join(workdir, "metrics.superseded.jsonl"))
    assert superseded[0]["superseded"]["resumed_from"] == 10
    assert [json.dumps(r) for r in superseded[1:]] == [line for line in before if json.loads(line)["step"] > 10]


def test_no_readable_checkpoint_keeps_every_metrics_row(clean_run, tmp_path):
    """A restart from step 0 (every checkpoint damaged) and a row cut short by a kill lose nothing."""
    workdir = copy_run(clean_run, tmp_path)
    for step in (10, 20, 30):
        damage(workdir, step, "truncated")
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 35, "loss": 0.1')  # a kill in the middle of a write
    before = open(os.path.join(workdir, "metrics.jsonl")).read()
    train_lib.train(tiny_mae_config("checkpoint_every=10", "log_every=5", "total_steps=10", steps=30), workdir)
    after = open(os.path.join(workdir, "metrics.jsonl")).read()
    superseded = open(os.path.join(workdir, "metrics.superseded.jsonl")).read()
    assert superseded.splitlines()[1:] == before.splitlines()  # every old line, verbatim, in order
    assert json.loads(superseded.splitlines()[0])["superseded"]["resumed_from"] == 0
    assert [json.loads(line)["step"] for line in after.splitlines()] == [5, 10]
    assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 3


# ---- A changed config on resume is a config error, not corruption.
@pytest.fixture(scope="module")
def depth2_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("depth2") / "run")
    train_lib.train(tiny_mae_config("model.depth=2", steps=10), workdir)
    return workdir


def snapshot(workdir):
    """Every file of a workdir (but the lock) with its bytes."""
    out = {}
    for d, _, files in os.walk(workdir):
        for name in files:
            if name != ".lock":
                path = os.path.join(d, name)
                out[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return out


def test_changed_depth_is_refused_before_anything_is_touched(depth2_run):
    before = snapshot(depth2_run)
    with pytest.raises(ConfigError) as err:
        train_lib.train(tiny_mae_config("model.depth=1", steps=10), depth2_run)
    assert "config.model.depth: 2 in the run, 1 now" in str(err.value)
    assert re.search(r"and so the model's arrays differ: \d+ arrays missing, \d+ not in this config, 0 with other "
                     r"shapes: not in this config: params/\S+/blocks/1/", str(err.value)), str(err.value)
    assert "Nothing was changed" in str(err.value)
    # Named with --allow-change, a change of the model's arrays is still refused, listing them.
    with pytest.raises(checkpoint_lib.CheckpointMismatchError, match=r"not in this config: params/\S+/blocks/1/"):
        train_lib.train(tiny_mae_config("model.depth=1", steps=10), depth2_run, allow_changes=("model.depth",))
    assert snapshot(depth2_run) == before  # no checkpoint moved, no row or config rewritten


def test_changed_config_cli_exits_nonzero_listing_keys(depth2_run):
    result = run_cli("train", "--config", f"{MAE_DIGITS}:size=tiny,steps=10", "--workdir", depth2_run, *NO_EVALS,
                     "--config.model.depth=1", "--config.optimizer.lr=0.5")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "config.model.depth: 2 in the run, 1 now" in result.stderr
    assert "config.optimizer.lr:" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(depth2_run, "corrupt_checkpoints"))


def test_safe_changes_resume_and_an_allowed_change_is_applied(depth2_run, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    shutil.copytree(depth2_run, workdir)
    with caplog.at_level(logging.INFO, logger="maskgen"):
        train_lib.train(tiny_mae_config("model.depth=2", "total_steps=12", "log_every=3", "checkpoint_every=6",
                                        "evals.probe.every=0", "evals.probe.steps=5", steps=10), workdir)
    assert "resumed from checkpoint at step 10" in caplog.text
    assert "config.total_steps changed from 10 to 12" in caplog.text
    train_lib.train(tiny_mae_config("model.depth=2", "total_steps=14", "optimizer.lr=1e-5", steps=10), workdir,
                    allow_changes=("optimizer.lr",))
    assert json.load(open(os.path.join(workdir, "config.json")))["optimizer"]["lr"] == 1e-5
    assert max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == 14


def test_config_changes_lists_added_and_removed_keys():
    config = tiny_mae_config()
    saved = json.loads(config.to_json())
    saved["model"]["old_key"] = 1
    del saved["model"]["depth"]
    changes = train_lib.config_changes(saved, config)
    assert set(changes) == {"model.old_key", "model.depth"} and changes["model.depth"][1] == 1


def test_keys_of_another_maskgen_version_are_reported_not_refused(depth2_run, tmp_path, caplog):
    """A run started before a config key existed (or after one was retired) still resumes."""
    workdir = str(tmp_path / "run")
    shutil.copytree(depth2_run, workdir)
    path = os.path.join(workdir, "config.json")
    saved = json.load(open(path))
    del saved["data"]["max_upscale"]
    saved["model"]["retired_key"] = 3
    json.dump(saved, open(path, "w"))
    with caplog.at_level(logging.WARNING, logger="maskgen"):
        train_lib.check_resume_config(workdir, tiny_mae_config("model.depth=2", steps=10))
    assert "config.data.max_upscale is new, now 2.0" in caplog.text
    assert "config.model.retired_key is no longer used" in caplog.text


# ---- Non-finite states are never written.
def poisoned_train_step(monkeypatch, at_step, where):
    """Makes the update that finishes step `at_step` leave NaNs in `where` with finite metrics."""
    original = train_lib.make_train_step

    def make(*args, **kwargs):
        step_fn = original(*args, **kwargs)

        def poisoned(state, ema, batch):
            state, ema, metrics = step_fn(state, ema, batch)
            leaves, treedef = jax.tree.flatten(state[where])
            leaves[-1] = jnp.where(state["step"] == at_step, jnp.nan, leaves[-1])
            return {**state, where: jax.tree.unflatten(treedef, leaves)}, ema, metrics

        return poisoned

    monkeypatch.setattr(train_lib, "make_train_step", make)


@pytest.mark.parametrize("where", ["params", "opt_state"])
def test_non_finite_state_with_finite_metrics_is_never_saved(monkeypatch, workdir, where):
    poisoned_train_step(monkeypatch, at_step=10, where=where)
    config = tiny_mae_config("checkpoint_every=5", "log_every=1", steps=15)
    with pytest.raises(checkpoint_lib.NonFiniteStateError,
                       match=rf"not saving step 10: state/{where}/\S+ holds \d+ non-finite values") as err:
        train_lib.train(config, workdir)
    assert "the last saved checkpoint is kept" in str(err.value)
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()) == [5]
    assert all(np.isfinite(r["loss"]) for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")))


def test_audit_names_non_finite_leaves_and_checksums_any_dtype():
    tree = {"a": jnp.ones((3, 4)), "b": jnp.array([1.0, jnp.inf, jnp.nan], jnp.bfloat16), "c": jnp.arange(5),
            "d": jnp.array(True), "e": jnp.zeros((), jnp.uint8)}
    nonfinite, checksums = checkpoint_lib.audit(tree)
    assert nonfinite == {"a": 0, "b": 2, "c": 0, "d": 0, "e": 0}
    # The checksum depends on every bit and on positions: a swap or a one-bit change alters it.
    flipped = {**tree, "a": tree["a"].at[2, 3].set(jnp.float32(np.nextafter(np.float32(1), np.float32(2))))}
    swapped = {**tree, "c": tree["c"][::-1]}
    assert checkpoint_lib.audit(flipped)[1]["a"] != checksums["a"]
    assert checkpoint_lib.audit(swapped)[1]["c"] != checksums["c"]
    assert checkpoint_lib.audit(tree)[1] == checksums


# ---- A full disk during a save: the previous checkpoint is intact and the run says why it stopped.
def test_disk_full_during_save_keeps_the_previous_checkpoint(clean_run, clean_params, tmp_path):
    workdir = copy_run(clean_run, tmp_path)
    # Metrics, events and the config fit; a checkpoint does not (its `_METADATA` alone is ~50 KB, and
    # how Orbax splits the arrays into data files varies from run to run).
    limit = 32 * 1024
    assert os.path.getsize(os.path.join(workdir, "checkpoints", "30", "state", "_METADATA")) > limit

    def limit_file_size():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = ["train", "--config", f"{MAE_DIGITS}:size=tiny,steps=30", "--workdir", workdir, *NO_EVALS,
            "--config.checkpoint_every=10", "--config.log_every=5", "--config.total_steps=40"]
    result = run_cli(*args, preexec_fn=limit_file_size)
    # Orbax's writer threads log their own tracebacks, before and (at exit) after maskgen's one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1, (result.returncode, errors, result.stderr[-1500:])
    assert errors[0].startswith("error: writing a checkpoint failed while saving"), errors
    assert "File too large" in errors[0] and "keeps the complete checkpoints [10, 20, 30]" in errors[0]
    run = train_lib.setup(damaged_config())
    step, variables = train_lib.restore_variables(run, workdir, which="params")
    assert step == 30
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), clean_params[30])
    # With space again, the same command resumes and finishes.
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from checkpoint at step 30" in result.stderr


# ---- Workdirs that cannot be used are refused before anything runs.
def test_workdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "afile"
    path.write_text("notes")
    with pytest.raises(ConfigError, match=f"--workdir {path} is a file, not a directory"):
        train_lib.train(tiny_mae_config(steps=1), str(path))
    with pytest.raises(ConfigError, match="is a file, so the directory cannot be made"):
        train_lib.check_workdir(str(path / "run"))
    assert path.read_text() == "notes"


@pytest.mark.parametrize("name, make", [("checkpoints", "file"), ("metrics.jsonl", "dir")])
def test_workdir_whose_parts_have_the_wrong_kind_is_refused(tmp_path, name, make):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / name).mkdir() if make == "dir" else (workdir / name).write_text("x")
    with pytest.raises(ConfigError, match=f"is not a maskgen run: its {name} is a "):
        train_lib.train(tiny_mae_config(steps=1), str(workdir))
    assert sorted(os.listdir(workdir)) == [name]


def test_read_only_workdir_is_refused(tmp_path):
    if os.geteuid() != 0:
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o555)
    else:  # root may write anywhere its permission bits forbid; sysfs refuses new files even to root
        readonly = "/sys"
        if os.access("/sys", os.W_OK) and not os.path.isdir("/sys/kernel"):
            pytest.skip("no directory here that root cannot write")
    workdir = os.path.join(str(readonly), "maskgen_run")
    with pytest.raises(ConfigError, match=rf"--workdir {workdir} is not writable \({readonly}: "):
        train_lib.train(tiny_mae_config(steps=1), workdir)
    assert not os.path.exists(workdir)


def test_demo_over_a_demo_of_another_size_names_the_fix(monkeypatch):
    from maskgen import demo

    def refuse(config, workdir, allow_changes=()):
        raise train_lib.ResumeConfigError("refused", {"model.base_channels": (8, 32)})

    monkeypatch.setattr(train_lib, "train", refuse)
    with pytest.raises(ConfigError, match=r"runs/d holds a demo made with other settings \(config.model.base_channels "
                                          r"differ in runs/d/tokenizer\), perhaps another --size than 'small'"):
        demo._train_stage(None, "runs/d/tokenizer", "runs/d", "small")
