"""Multi-process training on one machine: 2 processes x 4 virtual CPU devices give the losses of
1 process with 1 device, and checkpoints move between 1 and 2 processes (and between meshes).

Runs (the tiny MAE, 4 steps, a checkpoint every 2):
  one      1 process, 1 device                                 (the reference)
  two      2 processes, mesh data=4 x fsdp=2, from scratch     == one, every step
  two_one  1 process, resumed from `two`'s step-2 checkpoint   == one, steps 3..4
  one_two  2 processes, mesh data=2 x fsdp=2 x tensor=2, resumed from `one`'s step-2 checkpoint
           == one, steps 3..4
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import MAE_DIGITS, REPO

STEPS, EVERY, RESUME = 4, 2, 2
ARGS = ["train", "--config", f"{MAE_DIGITS}:size=tiny,steps={STEPS}", "--config.log_every=1",
        "--config.evals.probe.every=-1", "--config.evals.reconstruction.every=-1",
        f"--config.checkpoint_every={EVERY}", "--config.keep_checkpoints=10"]
MESH_4x2 = "--config.mesh=(('data', 4), ('fsdp', 2), ('tensor', 1))"
MESH_2x2x2 = "--config.mesh=(('data', 2), ('fsdp', 2), ('tensor', 2))"
# Measured max relative differences from the 1-device run (float32 reductions in another order):
# 2 processes 4.6e-7, resumed 2 -> 1 process 1.8e-7, resumed 1 -> 2 processes 2.7e-7; 2e-5 leaves
# a 40x margin for other CPUs and XLA versions.
RTOL = 2e-5
FALLBACK = "restoring process 0's state of a {}-process run"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": REPO, **extra}
    for name in ("MASKGEN_DISTRIBUTED", "MASKGEN_COORDINATOR", "MASKGEN_NUM_PROCESSES", "MASKGEN_PROCESS_ID",
                 "MASKGEN_LOCAL_DEVICE_IDS", "XLA_FLAGS"):
        if name not in extra:
            env.pop(name, None)
    return env


class _Run:
    """`maskgen train` as `processes` processes (4 CPU devices each if more than one), started."""

    def __init__(self, workdir, *extra, processes=1):
        self.workdir, self.processes = workdir, processes
        self.logs = [f"{workdir}.{i}.log" for i in range(processes)]
        if processes == 1:
            envs = [_env()]
        else:
            port = _free_port()
            envs = [_env(XLA_FLAGS="--xla_force_host_platform_device_count=4",
                         MASKGEN_COORDINATOR=f"localhost:{port}", MASKGEN_NUM_PROCESSES=str(processes),
                         MASKGEN_PROCESS_ID=str(i)) for i in range(processes)]
        self.procs = []
        try:
            for env, log in zip(envs, self.logs):
                with open(log, "w") as out:
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-m", "maskgen", *ARGS, "--workdir", workdir, *extra],
                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO))
        except BaseException:
            self.kill()
            raise

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def wait(self, timeout=300) -> list[str]:
        """Each process's log; fails the test (after killing them all) if any process fails."""
        try:
            codes = [p.wait(timeout=timeout) for p in self.procs]
        finally:
            self.kill()
        texts = [open(log).read() for log in self.logs]
        for i, (code, text) in enumerate(zip(codes, texts)):
            assert code == 0, f"process {i} of {self.processes} exited with {code}:\n{text[-4000:]}"
        return texts


def _wait_all(runs: list[_Run]) -> list[list[str]]:
    try:
        return [run.wait() for run in runs]
    finally:
        for run in runs:
            run.kill()


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"  # process 0 writes, once
    return {row["step"]: row["loss"] for row in rows}


def _resume_copy(source, target, step):
    """A copy of the run in `source` whose newest checkpoint is `step` (as if it had stopped there)."""
    shutil.copytree(source, target)
    checkpoints = os.path.join(target, "checkpoints")
    for name in os.listdir(checkpoints):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(os.path.join(checkpoints, name))
    return target


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    # Independent runs go side by side: XLA compiles on one thread, and a 2-process run waits on
    # its slower process, so 3 processes keep the 2 cores busier than 2.
    root = tmp_path_factory.mktemp("multiprocess")
    one, two = str(root / "one"), str(root / "two")
    _, logs = _wait_all([_Run(one), _Run(two, MESH_4x2, processes=2)])
    assert "process 1 of 2, 4 local / 8 global devices" in logs[1]
    assert "'data': 4, 'fsdp': 2, 'tensor': 1}, 8 devices, 2 processes" in logs[0]
    two_one = _resume_copy(two, str(root / "two_one"), RESUME)
    one_two = _resume_copy(one, str(root / "one_two"), RESUME)
    (two_one_log,), one_two_logs = _wait_all([_Run(two_one), _Run(one_two, MESH_2x2x2, processes=2)])
    return dict(one=one, two=two, two_one=two_one, one_two=one_two, two_one_log=two_one_log,
                one_two_logs=one_two_logs)


def test_two_processes_match_one_device(runs):
    one, two = _losses(runs["one"]), _losses(runs["two"])
    assert sorted(one) == sorted(two) == list(range(1, STEPS + 1))
    a, b = np.array([one[s] for s in one]), np.array([two[s] for s in one])
    assert a[-1] < a[0]  # it trained
    np.testing.assert_allclose(b, a, rtol=RTOL)
    # Process 0 writes metrics (each step once) and config.json; checkpoints hold each process's data state.
    assert os.path.exists(os.path.join(runs["two"], "config.json"))
    data = os.path.join(runs["two"], "checkpoints", str(STEPS), "data")
    assert sorted(f for f in os.listdir(data) if f.endswith(".json")) == ["process_0-of-2.json", "process_1-of-2.json"]


def test_checkpoint_from_two_processes_resumes_on_one(runs):
    assert f"resumed from checkpoint at step {RESUME}" in runs["two_one_log"]
    assert FALLBACK.format(2) in runs["two_one_log"]
    one, resumed = _losses(runs["one"]), _losses(runs["two_one"])
    assert sorted(resumed) == list(range(1, STEPS + 1))  # steps up to RESUME kept from the first run
    after = range(RESUME + 1, STEPS + 1)
    np.testing.assert_allclose([resumed[s] for s in after], [one[s] for s in after], rtol=RTOL)


def test_checkpoint_from_one_process_resumes_on_two(runs):
    for i, log in enumerate(runs["one_two_logs"]):
        assert f"resumed from checkpoint at step {RESUME}" in log, log[-3000:]
        assert FALLBACK.format(1) in log, log[-3000:]
        assert f"process {i} of 2" in log
    assert "'data': 2, 'fsdp': 2, 'tensor': 2}, 8 devices, 2 processes" in runs["one_two_logs"][0]
    one, resumed = _losses(runs["one"]), _losses(runs["one_two"])
    assert sorted(resumed) == list(range(1, STEPS + 1))
    after = range(RESUME + 1, STEPS + 1)
    np.testing.assert_allclose([resumed[s] for s in after], [one[s] for s in after], rtol=RTOL)


# ---- Fast checks (no training).
def test_distributed_settings_from_environment():
    from maskgen.parallel.distributed import distributed_settings, maybe_initialize

    assert distributed_settings({}) is None
    assert maybe_initialize({}) is False
    assert distributed_settings({"MASKGEN_DISTRIBUTED": "off", "MASKGEN_PROCESS_ID": "x"}) is None
    assert distributed_settings({"MASKGEN_DISTRIBUTED": "auto"}) == {}
    assert distributed_settings({"MASKGEN_COORDINATOR": "10.0.0.2:1234", "MASKGEN_NUM_PROCESSES": "4",
                                 "MASKGEN_PROCESS_ID": "3", "MASKGEN_LOCAL_DEVICE_IDS": "0,1"}) == dict(
        coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3, local_device_ids=[0, 1])
    assert distributed_settings({"MASKGEN_DISTRIBUTED": "auto", "MASKGEN_PROCESS_ID": "1"}) == {"process_id": 1}
    ok = {"MASKGEN_COORDINATOR": "localhost:1234", "MASKGEN_NUM_PROCESSES": "2", "MASKGEN_PROCESS_ID": "1"}
    for bad, variable in [
        ({"MASKGEN_DISTRIBUTED": "yes"}, "MASKGEN_DISTRIBUTED"),
        ({"MASKGEN_COORDINATOR": "localhost"}, "MASKGEN_COORDINATOR"),
        ({"MASKGEN_COORDINATOR": "localhost:99999"}, "MASKGEN_COORDINATOR"),
        ({"MASKGEN_NUM_PROCESSES": "two"}, "MASKGEN_NUM_PROCESSES"),
        ({"MASKGEN_NUM_PROCESSES": "0"}, "MASKGEN_NUM_PROCESSES"),
        ({"MASKGEN_PROCESS_ID": "-1"}, "MASKGEN_PROCESS_ID"),
        ({"MASKGEN_PROCESS_ID": "2"}, "MASKGEN_PROCESS_ID"),
        ({"MASKGEN_LOCAL_DEVICE_IDS": "0,a"}, "MASKGEN_LOCAL_DEVICE_IDS"),
        ({"MASKGEN_NUM_PROCESSES": None}, "MASKGEN_NUM_PROCESSES"),
    ]:
        env = {k: v for k, v in {**ok, **bad}.items() if v is not None}
        with pytest.raises(ValueError, match=variable):
            distributed_settings(env)


def test_cli_reports_a_bad_distributed_variable(tmp_path):
    result = subprocess.run([sys.executable, "-m", "maskgen", *ARGS, "--workdir", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=REPO, timeout=120,
                            env=_env(MASKGEN_COORDINATOR="localhost:1", MASKGEN_NUM_PROCESSES="2"))
    assert result.returncode == 1
    assert "MASKGEN_PROCESS_ID not set" in result.stderr


class _Iterator:
    """Stands in for a grain DatasetIterator's get_state."""

    def __init__(self, state):
        self.state = state

    def get_state(self):
        return self.state


def _states(directory, states: dict[str, dict]):
    directory.mkdir()
    for name, state in states.items():
        (directory / name).write_text(json.dumps(state))
    from etils import epath

    return epath.Path(directory)


def test_iterator_state_falls_back_to_process_zero_only_when_valid(tmp_path, monkeypatch):
    import grain

    from maskgen import checkpoint

    monkeypatch.setattr(grain, "DatasetIterator", _Iterator)
    item = _Iterator({"next_index": 0})
    state = lambda d: json.loads(checkpoint._iterator_state(item, d))  # noqa: E731
    # Its own file (1 process): used as is.
    assert state(_states(tmp_path / "own", {"process_0-of-1.json": {"next_index": 5}})) == {"next_index": 5}
    # Saved by 2 processes at the same global position: process 0's state moves to 1 process.
    two = {"process_0-of-2.json": {"next_index": 7}, "process_1-of-2.json": {"next_index": 7}}
    assert state(_states(tmp_path / "two", two)) == {"next_index": 7}
    for name, states, error in [
        # Positions that differ between processes are not global.
        ("differ", {"process_0-of-2.json": {"next_index": 7}, "process_1-of-2.json": {"next_index": 6}},
         "different data positions"),
        # Another pipeline's state (other keys or value types).
        ("keys", {"process_0-of-2.json": {"next_index": 7, "epoch": 1}}, "does not fit this pipeline"),
        ("types", {"process_0-of-2.json": {"next_index": "7"}}, "does not fit this pipeline"),
        # No state of process 0, or states of runs with different process counts.
        ("none", {"process_1-of-2.json": {"next_index": 7}}, "no usable data-iterator state"),
        ("mixed", {"process_0-of-2.json": {"next_index": 7}, "process_0-of-4.json": {"next_index": 7}},
         "no usable data-iterator state"),
    ]:
        with pytest.raises(ValueError, match=error):
            state(_states(tmp_path / name, states))


def test_restore_latest_moves_iterator_states_and_refuses_misaligned_ones(tmp_path):
    """Through Orbax: states of a (pretend) 2-process run restore on 1 process; states at different
    positions raise CheckpointMismatchError (the checkpoint stays); a lost process-0 state is damage
    (the previous checkpoint is used)."""
    import grain
    import jax
    import jax.numpy as jnp

    from maskgen.checkpoint import CheckpointMismatchError, Checkpointer

    def iterator():
        return iter(grain.MapDataset.range(100).batch(4).to_iter_dataset())

    directory = tmp_path / "checkpoints"
    state = {"w": jnp.arange(3.0)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    checkpointer, it = Checkpointer(str(directory), keep=5), iterator()
    for step in (1, 2):
        next(it)
        checkpointer.save(step, state=state, ema=state, data_iterator=it, config_json={})
    checkpointer.close()
    for step in (1, 2):  # As if 2 processes had saved them.
        data = directory / str(step) / "data"
        text = (data / "process_0-of-1.json").read_text()
        (data / "process_0-of-1.json").unlink()
        (data / "process_0-of-2.json").write_text(text)
        (data / "process_1-of-2.json").write_text(text)

    def restore():
        checkpointer, it = Checkpointer(str(directory), keep=5), iterator()
        try:
            step, _ = checkpointer.restore_latest(abstract_state=abstract, abstract_ema=abstract, data_iterator=it)
        finally:
            checkpointer.close()
        return step, next(it).tolist()

    assert restore() == (2, [8, 9, 10, 11])  # the third batch
    (directory / "2" / "data" / "process_1-of-2.json").write_text(json.dumps({"next_index": 1}))
    with pytest.raises(CheckpointMismatchError, match="different data positions"):
        restore()
    assert (directory / "2").exists()
    (directory / "2" / "data" / "process_0-of-2.json").unlink()
    assert restore() == (1, [4, 5, 6, 7])
    assert os.listdir(tmp_path / "corrupt_checkpoints")


@pytest.mark.slow
def test_sigterm_on_one_host_stops_every_host_at_one_step(tmp_path):
    """Preemption reaches one process only: JAX's preemption service makes both save the same step
    and exit cleanly (a per-process flag would leave one process training while the other saved),
    and rerunning resumes from that checkpoint."""
    import signal
    import time

    workdir = str(tmp_path / "run")
    steps = ["--config.checkpoint_every=1000", MESH_4x2]
    run = _Run(workdir, *steps, "--config.total_steps=60", processes=2)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics) and sum(1 for _ in open(metrics)) >= 10):
        assert time.time() < deadline and all(p.poll() is None for p in run.procs), "the run never got going"
        time.sleep(0.1)
    run.procs[1].send_signal(signal.SIGTERM)
    logs = run.wait(timeout=120)
    stopped = [int(text.split("saved checkpoint at step ")[1].split()[0]) for text in logs]
    assert stopped[0] == stopped[1] < 60, logs[0][-2000:]
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(stopped[0])]
    logs = _Run(workdir, *steps, "--config.total_steps=60", processes=2).wait()
    assert f"resumed from checkpoint at step {stopped[0]}" in logs[0]
    assert max(_losses(workdir)) == 60
