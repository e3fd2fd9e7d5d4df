"""Paper-style reproductions at demo length (marked slow; run with `pytest -m slow tests`)."""

import pytest

from conftest import MAE_DIGITS
from maskgen import config as config_lib
from maskgen import train as train_lib


@pytest.mark.slow
def test_mae_digits_probe_beats_random_init_by_three_points(tmp_path):
    """The README demo config: the trained encoder's probe beats the same encoder at random init."""
    config = config_lib.load_config_file(MAE_DIGITS)
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1"])
    result = train_lib.train(config, str(tmp_path / "run"))
    acc = result["evals"]["probe"].scalars
    assert acc["accuracy_model"] >= 0.95, acc
    assert acc["accuracy_model"] - acc["accuracy_random_init"] >= 0.03, acc
