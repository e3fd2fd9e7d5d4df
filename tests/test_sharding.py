"""8 virtual CPU devices (data=4 x fsdp=2) give the same losses as 1 device."""

import json
import os

import numpy as np

from conftest import MAE_DIGITS, run_cli

ARGS = ["train", "--config", f"{MAE_DIGITS}:size=tiny,steps=12", "--config.log_every=1",
        "--config.evals.probe.every=-1", "--config.evals.reconstruction.every=-1", "--config.model.width=64",
        "--config.model.num_heads=4"]


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"] for line in f])


def test_eight_devices_match_one_device(tmp_path):
    one = str(tmp_path / "one")
    eight = str(tmp_path / "eight")
    result = run_cli(*ARGS, "--workdir", one)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli(*ARGS, "--workdir", eight, "--config.mesh=(('data', 4), ('fsdp', 2), ('tensor', 1))",
                     env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'data': 4, 'fsdp': 2" in result.stderr and "8 devices" in result.stderr
    a, b = _losses(one), _losses(eight)
    assert len(a) == len(b) == 12
    assert a[-1] < a[0]  # it trained
    np.testing.assert_allclose(a, b, rtol=2e-4)


def test_parameters_follow_logical_rules_on_a_mesh(tmp_path):
    """With fsdp=2, tensor=2, a kernel ("embed", "mlp") lands as P('fsdp', 'tensor')."""
    script = f"""
import jax
from maskgen import config as config_lib
from maskgen.train import setup
config = config_lib.load_config_file({MAE_DIGITS!r} + ":size=tiny")
config_lib.apply_overrides(config, ["mesh=(('data', 2), ('fsdp', 2), ('tensor', 2))", "model.width=64",
                                    "model.num_heads=4", "model.decoder_heads=2"])
run = setup(config)
with run.context():
    params = run.init_variables(jax.random.key(0))["params"]
mlp = params["encoder"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"]
qkv = params["encoder"]["transformer"]["blocks"][0]["attn"]["qkv"]["kernel"]
print("MLP", mlp.sharding.spec, mlp.addressable_shards[0].data.shape)
from maskgen.train import make_optimizer, state_shardings
tx, _ = make_optimizer(config.optimizer, config.total_steps)
state_sh, _ = state_shardings(run, tx)
mu = state_sh["opt_state"][1][0].mu["encoder"]["transformer"]["blocks"][0]["mlp"]["fc1"]["kernel"]
print("ADAM_MU", mu.is_equivalent_to(mlp.sharding, 2))
print("QKV", qkv.sharding.spec)
"""
    import subprocess
    import sys

    from conftest import REPO

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLP P('fsdp', 'tensor') (32, 128)" in result.stdout, result.stdout
    assert "QKV P('fsdp', None, 'tensor', None)" in result.stdout, result.stdout
    assert "ADAM_MU True" in result.stdout, result.stdout  # optimizer state sharded like its param
