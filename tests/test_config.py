"""Config errors: unknown keys, wrong types and impossible combinations fail early and clearly."""

import pytest

from conftest import MAE_DIGITS, run_cli, tiny_mae_config
from maskgen import config as config_lib
from maskgen.config import ConfigError


def test_unknown_key_names_valid_keys():
    config = config_lib.load_config_file(MAE_DIGITS)
    with pytest.raises(ConfigError) as err:
        config_lib.apply_overrides(config, ["bogus=1"])
    message = str(err.value)
    assert "config.bogus" in message and "batch_size" in message and "total_steps" in message


def test_unknown_nested_key_suggests_close_match():
    config = config_lib.load_config_file(MAE_DIGITS)
    with pytest.raises(ConfigError, match="patch_size") as err:
        config_lib.apply_overrides(config, ["model.pach_size=4"])
    assert "Did you mean 'patch_size'" in str(err.value)


def test_wrong_type_is_rejected_with_the_key():
    config = config_lib.load_config_file(MAE_DIGITS)
    with pytest.raises(ConfigError, match="config.batch_size expects a int"):
        config_lib.apply_overrides(config, ["batch_size=big"])
    with pytest.raises(ConfigError, match="config.model.norm_pix_loss"):
        config_lib.apply_overrides(config, ["model.norm_pix_loss=3"])


def test_overrides_parse_python_values():
    config = config_lib.load_config_file(MAE_DIGITS)
    config_lib.apply_overrides(config, ["batch_size=64", "optimizer.lr=0.5", "model.norm_pix_loss=false",
                                        "mesh=(('data', 2), ('fsdp', 1), ('tensor', 1))", "data.data_dir=123"])
    assert config.batch_size == 64 and config.optimizer.lr == 0.5 and config.model.norm_pix_loss is False
    assert config.mesh == (("data", 2), ("fsdp", 1), ("tensor", 1)) and config.data.data_dir == "123"


def test_batch_not_divisible_by_devices():
    config = tiny_mae_config("batch_size=30")
    with pytest.raises(ConfigError, match="batch_size=30 is not divisible by the 4 data-parallel"):
        config_lib.validate_common(config, num_devices=4, num_processes=1)


def test_mesh_must_match_devices():
    config = tiny_mae_config("mesh=(('data', 4), ('fsdp', 2), ('tensor', 1))")
    with pytest.raises(ConfigError, match="uses 8 devices, but 1 are available"):
        config_lib.validate_common(config, num_devices=1, num_processes=1)


def test_patch_size_must_divide_image_size():
    from maskgen.train import setup

    with pytest.raises(ConfigError, match="patch_size=3 does not divide config.data.image_size=16"):
        setup(tiny_mae_config("model.patch_size=3"))


def test_unknown_evaluator_argument_fails_before_training():
    from maskgen.train import setup

    config = tiny_mae_config()
    config.evals.probe.unlock()
    config.evals.probe.stepz = 5
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['stepz'\]"):
        setup(config)


def test_cli_bogus_key_fails_before_anything_runs(tmp_path):
    result = run_cli("train", "--config", f"{MAE_DIGITS}:size=tiny", "--workdir", str(tmp_path / "w"),
                     "--config.bogus=1")
    assert result.returncode == 2
    assert "unknown config key config.bogus" in result.stderr and "batch_size" in result.stderr
    assert not (tmp_path / "w").exists()
