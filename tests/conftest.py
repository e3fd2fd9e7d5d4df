"""Shared test setup: absl flags for grain, tiny configs, and helpers to run the CLI."""

import os
import subprocess
import sys

import pytest
from absl import flags

flags.FLAGS.mark_as_parsed()  # grain reads absl flags.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAE_DIGITS = os.path.join(REPO, "experiments", "mae_digits.py")


def tiny_mae_config(*overrides: str, steps: int = 20):
    """The tiny MAE digits config with `key=value` overrides, evals off unless re-enabled."""
    from maskgen import config as config_lib

    config = config_lib.load_config_file(f"{MAE_DIGITS}:size=tiny,steps={steps}")
    config_lib.apply_overrides(config, ["evals.probe.every=-1", "evals.reconstruction.every=-1", *overrides])
    return config


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "maskgen", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO, **popen)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long runs (paper-style reproductions, many-trial kill tests)")
    config.addinivalue_line("markers", "bench: each benchmark script at its smallest size (CI runs them after the suite)")
    # One digit-classifier cache per session (subprocesses inherit it), never the user's ~/.cache.
    if "MASKGEN_CACHE" not in os.environ:
        import tempfile

        os.environ["MASKGEN_CACHE"] = tempfile.mkdtemp(prefix="maskgen_test_cache_")


@pytest.fixture
def one_device_mesh():
    """Module code that builds sharded models outside the loop runs under a one-device mesh with the
    default rules; a test module opts in with `pytestmark = pytest.mark.usefixtures("one_device_mesh")`."""
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


@pytest.fixture
def workdir(tmp_path):
    return str(tmp_path / "run")


def write_run_config(folder, spec, *overrides):
    """A run directory holding only the config.json of `spec` (an experiments file, relative to the
    repo) with `overrides`: enough for checks that read a run's config before it is trained."""
    from maskgen.config import apply_overrides, config_to_json, load_config_file

    config = load_config_file(os.path.join(REPO, spec))
    apply_overrides(config, list(overrides))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        f.write(config_to_json(config))
    return str(folder)
