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


@pytest.mark.slow
def test_maskgit_demo_samples_are_the_requested_digits(tmp_path):
    """The README demo end to end (about 10 minutes): at 8 decoding steps the digit classifier
    recognises at least 90% of the samples as the class asked for, and the samples' Fréchet
    distance is within 5x the real-vs-real floor."""
    import numpy as np
    from PIL import Image

    from maskgen.demo import run_demo

    summary = run_demo(str(tmp_path / "demo"))
    scalars = summary["scalars"]
    assert scalars["generation/class_consistency"] >= 0.90, scalars
    assert scalars["generation/frechet_distance_digits"] < 5 * scalars["generation/frechet_distance_digits_floor"], scalars
    with Image.open(summary["files"]["samples"]) as grid:
        assert np.asarray(grid).std() > 20  # not blank
