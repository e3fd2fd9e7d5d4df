"""The training loop: loss falls, NaN stops, bad checkpoints are skipped, kills resume bit-identically."""

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import MAE_DIGITS, REPO, run_cli, tiny_mae_config
from maskgen import train as train_lib


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def load_item(workdir, step, item):
    """A checkpoint item as a tree of numpy arrays."""
    path = os.path.join(workdir, "checkpoints", str(step), item)
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(path)


def assert_trees_equal(a, b):
    import jax

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) and leaves_a
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_loss_falls(workdir):
    train_lib.train(tiny_mae_config("log_every=5", steps=60), workdir)
    losses = [row["loss"] for row in read_metrics(workdir) if "loss" in row]
    assert len(losses) == 12
    assert losses[-1] < 0.6 * losses[0], losses
    for key in ("grad_norm", "learning_rate", "mse_masked", "steps_per_sec", "examples_per_sec", "eta_sec"):
        assert key in read_metrics(workdir)[-1]
    assert os.path.exists(os.path.join(workdir, "config.json"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))


def test_nan_stops_without_saving_a_bad_state(workdir):
    config = tiny_mae_config("optimizer.lr=1e30", "optimizer.warmup_steps=0", "optimizer.grad_clip_norm=0.0",
                             "checkpoint_every=1", "log_every=100", steps=20)
    with pytest.raises(train_lib.NonFiniteError, match=r"non-finite (loss|grad_norm|mse_\w+)=\w+ at step \d+") as err:
        train_lib.train(config, workdir)
    bad_step = int(str(err.value).split(" at step ")[1].split(";")[0])
    saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert saved and max(saved) < bad_step
    for step in saved:
        state = load_item(workdir, step, "state")
        import jax

        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_truncated_checkpoint_falls_back_to_previous(workdir, caplog):
    train_lib.train(tiny_mae_config("checkpoint_every=10", steps=30), workdir)
    state_dir = os.path.join(workdir, "checkpoints", "30", "state")
    files = [os.path.join(d, f) for d, _, fs in os.walk(state_dir) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)
    with caplog.at_level(logging.INFO, logger="maskgen"):
        train_lib.train(tiny_mae_config("checkpoint_every=10", "total_steps=40", steps=30), workdir)
    assert re.search(r"checkpoint at step 30 in \S+ is damaged", caplog.text)
    assert "resumed from checkpoint at step 20" in caplog.text
    assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))[0].startswith("30.")
    steps = [row["step"] for row in read_metrics(workdir) if "loss" in row]
    assert steps == sorted(set(steps)) and steps[-1] == 40  # no step logged twice


TRAIN_ARGS = ["train", "--config", f"{MAE_DIGITS}:size=tiny,steps=150", "--config.checkpoint_every=10",
              "--config.log_every=1", "--config.evals.probe.every=-1", "--config.evals.reconstruction.every=-1"]


def _start(workdir):
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen([sys.executable, "-m", "maskgen", *TRAIN_ARGS, "--workdir", workdir], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint(workdir, at_least, timeout=120):
    deadline = time.time() + timeout
    ckpt = os.path.join(workdir, "checkpoints")
    while time.time() < deadline:
        if os.path.isdir(ckpt) and any(s.isdigit() and int(s) >= at_least for s in os.listdir(ckpt)):
            return
        time.sleep(0.02)
    raise TimeoutError(f"no checkpoint >= {at_least} in {ckpt}")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reference") / "run")
    result = run_cli(*TRAIN_ARGS, "--workdir", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _assert_same_as_reference(workdir, reference):
    for item in ("state", "ema"):
        assert_trees_equal(load_item(workdir, 150, item), load_item(reference, 150, item))
    ours = [(r["step"], r["loss"]) for r in read_metrics(workdir) if "loss" in r]
    theirs = [(r["step"], r["loss"]) for r in read_metrics(reference) if "loss" in r]
    assert ours == theirs  # same data order and updates, and each step logged once


def _wait_for_save_in_progress(workdir, timeout=120):
    """Polls until Orbax is writing a checkpoint (its temporary directory exists); True if seen."""
    deadline = time.time() + timeout
    ckpt = os.path.join(workdir, "checkpoints")
    while time.time() < deadline:
        if os.path.isdir(ckpt) and any(".orbax-checkpoint-tmp" in name for name in os.listdir(ckpt)):
            return True
        time.sleep(0.001)
    return False


def _assert_no_corrupt_checkpoint(workdir):
    """Every checkpoint left behind is complete and readable, and none was quarantined."""
    ckpt = os.path.join(workdir, "checkpoints")
    assert not [n for n in os.listdir(ckpt) if "tmp" in n], os.listdir(ckpt)
    assert not os.path.exists(os.path.join(workdir, "corrupt_checkpoints"))
    for step in (int(n) for n in os.listdir(ckpt) if n.isdigit()):
        load_item(workdir, step, "state")


KILL_TRIALS = 20  # `pytest -m slow tests/test_train.py -k sigkill` runs them all (about 10 minutes)


# Trial 0 (default suite) kills while an asynchronous save is being written; trials 1-19 (slow)
# kill at random moments: mid-save, between saves, early and late.
@pytest.mark.parametrize("trial", [0] + [pytest.param(t, marks=pytest.mark.slow) for t in range(1, KILL_TRIALS)])
def test_sigkill_then_rerun_is_bit_identical(reference_run, tmp_path, trial):
    workdir = str(tmp_path / "run")
    rng = random.Random(trial)
    proc = _start(workdir)
    if trial == 0 or rng.random() < 0.5:
        _wait_for_checkpoint(workdir, at_least=rng.choice([10, 30, 60]) - 10)
        assert _wait_for_save_in_progress(workdir), "never saw a save in progress"
    else:
        _wait_for_checkpoint(workdir, at_least=rng.choice([10, 30, 60, 100]))
        time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = run_cli(*TRAIN_ARGS, "--workdir", workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_as_reference(workdir, reference_run)
    _assert_no_corrupt_checkpoint(workdir)


def test_sigterm_saves_exits_cleanly_and_resumes(reference_run, tmp_path):
    workdir = str(tmp_path / "run")
    proc = _start(workdir)
    _wait_for_checkpoint(workdir, at_least=20)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-3000:]
    stopped = int(output.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped)))
    result = run_cli(*TRAIN_ARGS, "--workdir", workdir)
    assert f"resumed from checkpoint at step {stopped}" in result.stderr
    _assert_same_as_reference(workdir, reference_run)


def test_eval_and_sample_commands(reference_run, tmp_path):
    result = run_cli("eval", "--workdir", reference_run, "--config.evals.probe.baselines=('pixels',)",
                     "--config.evals.probe.steps=200")  # a quick probe
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probe/accuracy_model" in result.stdout and "probe/accuracy_pixels" in result.stdout
    out = str(tmp_path / "grid.png")
    result = run_cli("sample", "--workdir", reference_run, "--out", out, "--num", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    grid = np.asarray(Image.open(out))
    assert grid.shape[0] > 3 * 16 and grid.std() > 10  # three rows of non-blank images


def test_changed_model_is_an_error_not_a_silent_restart(workdir):
    train_lib.train(tiny_mae_config(steps=10), workdir)
    from maskgen.checkpoint import CheckpointMismatchError

    from maskgen.config import ConfigError

    with pytest.raises(ConfigError, match=r"config.model.width: 32 in the run, 64 now"):
        train_lib.train(tiny_mae_config("model.width=64", "total_steps=20", steps=10), workdir)
    with pytest.raises(CheckpointMismatchError, match=r"step 10 .* does not match this config .*\(32,\) vs config \(64,\)"):
        train_lib.train(tiny_mae_config("model.width=64", "total_steps=20", steps=10), workdir,
                        allow_changes=("model.width",))
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "10"))  # nothing moved or deleted
    assert not os.path.exists(os.path.join(workdir, "corrupt_checkpoints"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["width"] == 32
    # Evaluating either set of weights of the original run still works.
    config = tiny_mae_config(steps=10)
    for which in ("params", "ema"):
        step, variables = train_lib.restore_variables(train_lib.setup(config), workdir, which=which)
        assert step == 10
    ema = train_lib.restore_variables(train_lib.setup(config), workdir, which="ema")[1]["params"]
    assert_trees_equal(ema, load_item(workdir, 10, "ema"))


def test_a_second_run_on_the_same_workdir_is_refused(workdir):
    """Two runs writing one workdir would interleave checkpoints: the second stops with an error."""
    with train_lib._WorkdirLock(workdir, True):  # stands in for a run in progress (this process)
        result = run_cli("train", "--config", f"{MAE_DIGITS}:size=tiny,steps=2", "--workdir", workdir,
                         "--config.evals.probe.every=-1", "--config.evals.reconstruction.every=-1")
        assert result.returncode == 1, result.stderr[-2000:]
        assert f"workdir {workdir} is in use by another maskgen run (pid {os.getpid()}" in result.stderr
        assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    # The lock goes with its holder (also on SIGKILL: the kernel drops flock locks with the process).
    train_lib.train(tiny_mae_config(steps=2), workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints"))


def test_a_url_workdir_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="mount the bucket on every host"):
        train_lib.train(tiny_mae_config(steps=1), "gs://bucket/run")
