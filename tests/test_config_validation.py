"""Malformed configs fail before anything compiles, naming the key, the bad value and what is allowed.

Unit-level: `load_config_file` / `apply_overrides` / `validate_common` / a recipe's `validate`
(or `maskgen.train.setup`, which raises before it builds a model); two CLI runs check what a user sees.
"""

import glob
import importlib.util
import os

import pytest

from conftest import MAE_DIGITS, REPO, run_cli, tiny_mae_config
from maskgen import config as config_lib
from maskgen.config import ConfigError

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, "experiments", "*.py")))
TOKENIZER_DIGITS = os.path.join(REPO, "experiments", "tokenizer_digits.py")
MASKGIT_DIGITS = os.path.join(REPO, "experiments", "maskgit_digits.py")
# What `source_info` reports for the datasets the experiment files name, without reading one.
TOKENS_8x8 = {"token_shape": (8, 8), "codebook_size": 256, "num_levels": 1, "num_classes": 10,
              "splits": {"train": 1438, "test": 359}, "image_shape": None, "tokenizer": {}}
TOKENS_16x16 = dict(TOKENS_8x8, token_shape=(16, 16), codebook_size=1024, splits={"train": 1281167, "validation": 50000})
TOKENS_8x16 = dict(TOKENS_8x8, token_shape=(8, 16))  # mel tokens of 1 s of speech (SpecMaskGIT on speech)
TOKENS_5x53 = dict(TOKENS_8x8, token_shape=(5, 53), codebook_size=1024)  # SpecMaskGIT's 10 s clips
TOKENS_50x4 = dict(TOKENS_8x8, token_shape=(50, 4), num_levels=4)  # mel-codec streams [frames, K] (AR baseline)
IMAGENET = {"image_shape": (None, None, 3), "num_classes": 1000, "splits": {"train": 1281167, "validation": 50000}}


def _module(path):
    spec = importlib.util.spec_from_file_location("experiment_" + os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The latent datasets (`maskgen tokenize` of a KL tokenizer run) that latent-space generator files read:
# latents [h, w, D], classes, and whether the dataset keeps the images too (REPA's encoder reads them).
LATENT_DATA = {"dit_digits.py": ((8, 8, 4), 10, False), "mar_digits.py": ((8, 8, 4), 10, False),
               "mar_imagenet256.py": ((16, 16, 16), 1000, False), "microdit_paper.py": ((16, 16, 16), 1000, False),
               "sit_repa_imagenet256.py": ((16, 16, 16), 1000, True)}


def _latent_info(file_name):
    from maskgen.data.specs import ImageSpec, LabelSpec, LatentSpec, legacy_info

    shape, classes, with_images = LATENT_DATA[file_name]
    splits = TOKENS_8x8["splits"] if classes == 10 else IMAGENET["splits"]
    fields = {"latents": LatentSpec(shape, 0.25), "label": LabelSpec(classes)}
    if with_images:
        fields["image"] = ImageSpec((256, 256, 3))
    return legacy_info(fields, splits)


def _data_info(config, file_name=None):
    from maskgen.data import source_info

    if config.data.name == "tokens" and "num_levels" in config.model:  # codec streams [frames, K] (MAGNeT)
        from maskgen.data.specs import LabelSpec, TokenSpec, legacy_info
        m = config.model
        return legacy_info({"tokens": TokenSpec((m.num_frames, m.num_levels), m.codebook_size, m.num_levels),
                            "label": LabelSpec(10)}, {"train": 10 ** 6, "test": 640})
    if config.data.name == "tokens" and "token_shape" not in config.model:
        return _latent_info(file_name)
    if config.data.name == "tokens":
        return {(16, 16): TOKENS_16x16, (8, 16): TOKENS_8x16, (5, 53): TOKENS_5x53, (50, 4): TOKENS_50x4}.get(
            tuple(config.model.token_shape), TOKENS_8x8)
    if config.data.name == "pydoc_text":
        from maskgen.data import data_options

        return source_info("pydoc_text", None, data_options(config.data))
    if "seq_len" in config.data:  # a text model whose dataset (e.g. OpenWebText) is not on this machine
        from maskgen.data.specs import TextSpec, legacy_info

        splits = {"train": 10 ** 6, "validation": 10 ** 4}  # tfds slices ("train[:99%]") name these
        vocab = config.model.get("vocab_size", config.model.get("codebook_size"))
        return legacy_info({"tokens": TextSpec(config.data.seq_len, vocab, "bytes")}, splits)
    if config.data.name in ("speech", "audio_folder"):  # audio: the source's shapes, without synthesising or reading it
        from maskgen.data.specs import AudioSpec, LabelSpec

        rate, words = config.data.get("sample_rate", 16000), config.data.get("words", "digits")
        if config.data.get("concat", 1) > 1 or config.data.get("trim", False):  # prompt/target pairs: more fields
            from maskgen.data import speech

            return speech.info(speech.SpeechOptions(words, rate, config.data.get("clip_seconds", 1.0),
                                                    concat=config.data.get("concat", 1),
                                                    trim=config.data.get("trim", False)))
        classes = {"digits": 10, "commands": 10, "all": 20}.get(words, 527)  # 527: AudioSet's classes
        return {"fields": {"audio": AudioSpec((round(rate * config.data.get("clip_seconds", 1.0)), 1), rate),
                           "label": LabelSpec(classes)},
                "num_classes": classes, "splits": {"train": 2560, "test": 640}, "words": words}
    if config.data.name in ("digits", "moved_digits"):  # local sources: their own shapes (cheap, nothing rendered)
        from maskgen.data import data_options

        return source_info(config.data.name, None, data_options(config.data))
    return IMAGENET


def _recipe_problems(config, data_info=None):
    from maskgen.recipes import get_recipe

    return get_recipe(config.recipe).validate(config, _data_info(config) if data_info is None else data_info)


def _load(spec, *overrides):
    config = config_lib.load_config_file(spec)
    config_lib.apply_overrides(config, list(overrides))
    return config


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        fn(*args, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------- sizes, widths, depths, heads
def test_patch_size_zero_fails_in_setup_naming_the_key():
    from maskgen.train import setup

    message = _error(setup, tiny_mae_config("model.patch_size=0"))  # was ZeroDivisionError
    assert "config.model.patch_size=0: must be an int >= 1" in message
    assert "does not divide" not in message  # cross-key checks skip a key that already failed


@pytest.mark.parametrize("override, expected", [
    ("model.width=0", "config.model.width=0: must be an int >= 1"),
    ("model.depth=0", "config.model.depth=0: must be an int >= 1 (encoder blocks)"),
    ("model.num_heads=0", "config.model.num_heads=0: must be an int >= 1"),
    ("model.num_heads=-2", "config.model.num_heads=-2: must be an int >= 1"),
    ("model.decoder_width=-8", "config.model.decoder_width=-8: must be an int >= 1"),
    ("model.decoder_depth=0", "config.model.decoder_depth=0: must be an int >= 1 (masked patches see"),
    ("model.decoder_heads=0", "config.model.decoder_heads=0: must be an int >= 1"),
    ("model.mlp_ratio=0", "config.model.mlp_ratio=0.0: must be a number > 0"),
    ("model.mask_ratio=1.0", "config.model.mask_ratio=1.0: must be a number in (0, 1)"),
    ("model.mask_ratio=0.999", "config.model.mask_ratio=0.999 masks 64 of the 64 patches"),
])
def test_mae_model_sizes(override, expected):
    problems = _recipe_problems(tiny_mae_config(override))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize("override, expected", [
    ("model.depth=0", "config.model.depth=0: must be an int >= 1"),
    ("model.num_heads=0", "config.model.num_heads=0: must be an int >= 1"),
    ("model.codebook_size=1", "config.model.codebook_size=1: must be an int >= 2"),
    ("model.token_shape=(8, 0)", "config.model.token_shape=(8, 0): must be a tuple of 2 ints >= 1"),
    ("model.conditioning=film", "config.model.conditioning='film': must be one of 'adaln', 'prefix'"),
    ("loss.label_smoothing=1.0", "config.loss.label_smoothing=1.0: must be a number in [0, 1)"),
    ("loss.mask_schedule=cosin", "config.loss.mask_schedule='cosin': unknown mask schedule"),
    ("sampling.num_steps=0", "config.sampling.num_steps=0: must be an int >= 1"),
    ("sampling.policy=greedy", "config.sampling.policy='greedy': must be one of 'confidence', 'random'"),
    ("sampling.cfg_scale=-1", "config.sampling.cfg_scale=-1.0: must be a number >= 0"),
    ("data.image_size=16", "config.data.image_size=16: must be 0 for a token dataset"),
    ("data.augment=crop_flip", "config.data.augment='crop_flip': must be 'none' for a token dataset"),
])
def test_maskgit_settings(override, expected):
    problems = _recipe_problems(_load(f"{MASKGIT_DIGITS}:size=tiny", override))
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------- experiment-file arguments
def test_unknown_size_lists_the_sizes():
    message = _error(config_lib.load_config_file, f"{MAE_DIGITS}:size=huge")  # was KeyError: 'huge'
    assert f"{MAE_DIGITS}:size=huge: argument size='huge': must be one of 'tiny', 'small', 'base'" in message


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_experiment_refuses_unknown_and_bad_arguments(path):
    args = _module(path).ARGS
    message = _error(config_lib.load_config_file, f"{path}:bogus=1")  # was silently ignored
    assert f"{path}:bogus=1: unknown argument 'bogus'. Valid arguments:" in message
    for name, arg in args.items():
        assert f"  {name}: {arg.help} (" in message  # each valid argument with its meaning
        if arg.rule is not None:
            bad = _error(config_lib.load_config_file, f"{path}:{name}=huge")
            assert f"argument {name}='huge': must be {arg.rule.allowed}" in bad
    assert "did you mean 'size'" in _error(config_lib.load_config_file, f"{path}:sise=tiny").lower()


def test_steps_argument_must_be_a_positive_int():
    for value in ("0", "-5", "ten", "2.5", "true"):
        message = _error(config_lib.load_config_file, f"{MAE_DIGITS}:size=tiny,steps={value}")
        assert "argument steps=" in message and "must be an int >= 1" in message


def _documented_args(path):
    """Every argument of a file with each value it documents (choices, 0/1 flags), one at a time."""
    for name, arg in _module(path).ARGS.items():
        if arg.text and arg.rule is not None:
            values = arg.rule.allowed.removeprefix("one of ").replace("'", "").split(", ")
        elif arg.rule is not None and arg.rule.allowed == "0 or 1":
            values = ["0", "1"]
        elif arg.rule is not None:
            values = ["400"] if arg.default is None else [str(arg.default)]  # steps / epochs; e.g. stage=1
        else:
            continue  # a directory (tokens=DIR): any text
        yield from (f"{name}={value}" for value in values)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_documented_argument_loads_and_validates(path):
    for arg in ["", *_documented_args(path)]:
        config = config_lib.load_config_file(f"{path}:{arg}" if arg else path)
        fsdp = dict(config.mesh).get("fsdp", 1)
        config_lib.validate_common(config, num_devices=fsdp, num_processes=1)
        problems = _recipe_problems(config, _data_info(config, os.path.basename(path)))
        assert not problems, (arg, problems)


# ---------------------------------------------------------------- config files that break
def test_config_file_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("from maskgen.config import base_config\n\n\ndef get_config(arg=None):\n"
                    "    config = base_config(\n    return config\n")
    message = _error(config_lib.load_config_file, str(path))
    assert message.startswith(f"{path}:5: SyntaxError: '(' was never closed")
    assert "config = base_config(" in message


def test_exception_in_get_config_names_file_and_line(tmp_path):
    path = tmp_path / "raises.py"
    path.write_text("from maskgen.config import base_config\n\n\ndef get_config(arg=None):\n"
                    "    config = base_config()\n    config.total_steps = {'a': 1}[arg]\n    return config\n")
    message = _error(config_lib.load_config_file, f"{path}:b")
    assert message == f"{path}:6: KeyError: 'b'\n    config.total_steps = {{'a': 1}}[arg]"


def test_saved_config_json_as_config_file_points_to_workdir(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    message = _error(config_lib.load_config_file, str(path))  # was AttributeError on a None module spec
    assert message.startswith(f"{path}: a config file is a Python file (.py)") and "--workdir DIR" in message


def test_cli_broken_config_file_and_bogus_argument_exit_2_without_traceback(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def get_config(arg=None):\n    return base_config(\n")
    result = run_cli("train", "--config", str(path), "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"error: {path}:2: SyntaxError" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--config", f"{MAE_DIGITS}:bogus=1", "--workdir", str(tmp_path / "w"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "unknown argument 'bogus'" in result.stderr and "size: " in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


# ---------------------------------------------------------------- tokenizer / FSQ
@pytest.mark.parametrize("levels", ["()", "(4, 1)", "(4, 4.5)", "(0,)"])
def test_fsq_levels_must_be_ints_of_at_least_2(levels):
    config = _load(f"{TOKENIZER_DIGITS}:quantizer=fsq,size=tiny", f"model.fsq_levels={levels}")
    problems = _recipe_problems(config)  # `()` was ZeroDivisionError in setup
    assert any("config.model.fsq_levels=" in p and "must be a non-empty tuple of ints >= 2" in p
               for p in problems), problems


def test_quantizer_keys_are_checked_only_for_the_quantizer_chosen():
    assert not _recipe_problems(_load(f"{TOKENIZER_DIGITS}:quantizer=vq,size=tiny", "model.fsq_levels=()"))


@pytest.mark.parametrize("arg, override, expected", [
    ("quantizer=vq", "model.num_res_blocks=0", "config.model.num_res_blocks=0: must be an int >= 1"),
    ("quantizer=vq", "model.channel_multipliers=()", "config.model.channel_multipliers=(): must be a non-empty"),
    ("quantizer=vq", "model.vq.ema_decay=1.0", "config.model.vq.ema_decay=1.0: must be a number in [0, 1)"),
    ("quantizer=lfq", "model.lfq_bits=17", "config.model.lfq_bits=17: must be an int in [1, 16]"),
    ("quantizer=lfq", "model.lfq.temperature=0", "config.model.lfq.temperature=0.0: must be a number > 0"),
    ("quantizer=rvq", "model.rvq_levels=0", "config.model.rvq_levels=0: must be an int >= 1"),
    ("quantizer=rvq", "model.quantizer_dropout=1.5", "config.model.quantizer_dropout=1.5: must be a number in [0, 1]"),
    ("gan=1", "loss.discriminator_lr=0", "config.loss.discriminator_lr=0.0: must be a number > 0"),
    ("gan=1", "loss.adversarial_weight=-0.1", "config.loss.adversarial_weight=-0.1: must be a number >= 0"),
])
def test_tokenizer_settings(arg, override, expected):
    problems = _recipe_problems(_load(f"{TOKENIZER_DIGITS}:{arg},size=tiny", override))
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------- optimizer and other shared keys
def test_optimizer_ranges_are_all_reported_together():
    config = tiny_mae_config("optimizer.lr=-1", "optimizer.b1=1.5", "optimizer.b2=1.0", "optimizer.weight_decay=-0.1",
                             "optimizer.grad_clip_norm=-1", "optimizer.min_lr_ratio=1.5")
    message = _error(config_lib.validate_common, config, num_devices=1, num_processes=1)
    for expected in ("config.optimizer.lr=-1.0: must be a number > 0",
                     "config.optimizer.b1=1.5: must be a number in [0, 1)",
                     "config.optimizer.b2=1.0: must be a number in [0, 1)",
                     "config.optimizer.weight_decay=-0.1: must be a number >= 0",
                     "config.optimizer.grad_clip_norm=-1.0: must be a number >= 0 (0 turns clipping off)",
                     "config.optimizer.min_lr_ratio=1.5: must be a number in [0, 1]"):
        assert expected in message, message


def test_shared_keys_are_all_reported_together():
    config = tiny_mae_config("total_steps=0", "seed=-1", "compute_dtype=float16", "data.augment=flip",
                             "evals.probe.every=-2", "ema_decay=1.0", "log_every=0", "remat=full", "recipe=mea")
    from maskgen.recipes import recipe_names

    message = _error(config_lib.validate_common, config, num_devices=1, num_processes=1, recipe_names=recipe_names())
    for expected in ("config.total_steps=0: must be an int >= 1", "config.seed=-1: must be an int >= 0",
                     "config.compute_dtype='float16': must be one of 'float32', 'bfloat16'",
                     "config.data.augment='flip': must be one of 'none', 'crop_flip'",
                     "config.evals.probe.every=-2: must be an int >= -1 (N > 0: every N steps and at the end; ",
                     "config.ema_decay=1.0: must be a number in [0, 1)", "config.log_every=0: must be an int >= 1",
                     "config.remat='full': must be one of 'none', 'block', 'block_save_dots'",
                     "config.recipe='mea': must be one of " + ", ".join(map(repr, recipe_names()))):
        assert expected in message, message


def test_bools_do_not_pass_as_numbers():
    for override in ("batch_size=True", "optimizer.lr=true", "total_steps=False"):
        message = _error(config_lib.apply_overrides, tiny_mae_config(), [override])  # batch_size=True was 1
        assert "expects a" in message and override.split("=")[0] in message
    assert "config.model.norm_pix_loss expects a bool" in _error(
        config_lib.apply_overrides, tiny_mae_config(), ["model.norm_pix_loss=1"])
    config = tiny_mae_config()  # a config file can still write a bool where an int belongs
    config.unlock()
    config.batch_size, config.seed = True, True
    message = _error(config_lib.validate_common, config, num_devices=1, num_processes=1)
    assert "config.batch_size=True: must be an int >= 1" in message and "config.seed=True: must be an int >= 0" in message


def test_mesh_of_the_wrong_shape_is_a_config_error():
    message = _error(config_lib.validate_common, tiny_mae_config("mesh=((\"data\", 0),)"), num_devices=1,
                     num_processes=1)
    assert "config.mesh=(('data', 0),): must be a tuple of (axis name, size) pairs, size > 0 or -1" in message


# ---------------------------------------------------------------- data
def test_upsampling_beyond_max_upscale_is_refused():
    problems = _recipe_problems(tiny_mae_config("data.image_size=32"))  # silently upsampled 4x before
    assert ("config.data.image_size=32: the 'digits' images are 8x8, so this upsamples them 4x, more than "
            "config.data.max_upscale=2 allows (at most 16). Use an image_size <= 16, prepare the data at this size, "
            "or raise config.data.max_upscale if you mean to train on upsampled images") in problems
    assert "config.data.image_size=0: must be an int >= 1" in _recipe_problems(tiny_mae_config("data.image_size=0"))
    assert "config.data.max_upscale=0.5: must be a number >= 1" in _error(
        config_lib.validate_common, tiny_mae_config("data.max_upscale=0.5"), num_devices=1, num_processes=1)
    # The configs' deliberate 2x (8 -> 16), an explicit 4x, and any downsampling are allowed.
    assert not _recipe_problems(tiny_mae_config("data.image_size=32", "data.max_upscale=4.0"))
    assert not _recipe_problems(tiny_mae_config("data.image_size=4"))
    config = tiny_mae_config()
    config.unlock()
    del config.data["max_upscale"]  # a config without the key: no upsampling at all
    assert any("upsamples them 2x, more than config.data.max_upscale=1 allows" in p for p in _recipe_problems(config))


def test_unknown_split_names_the_splits():
    problems = _recipe_problems(tiny_mae_config("evals.probe.test_split=validation", "data.train_split=trian"))
    assert "config.data.train_split='trian': the 'digits' dataset has no such split; its splits are 'test', 'train'" \
        in problems
    assert any(p.startswith("config.evals.probe.test_split='validation': ") for p in problems), problems
    tfds_slice = dict(IMAGENET, image_shape=(8, 8, 1), splits={"train": 8, "test": 8})
    assert not _recipe_problems(tiny_mae_config("data.train_split=train[:50%]"), tfds_slice)


def test_image_recipe_on_tokens_and_token_recipe_on_images():
    assert any("trains on images, but config.data.name='digits' is a token dataset" in p
               for p in _recipe_problems(tiny_mae_config(), TOKENS_8x8))
    assert any("trains on token grids" in p
               for p in _recipe_problems(_load(f"{MASKGIT_DIGITS}:size=tiny"), {"image_shape": (8, 8, 1), "splits": {}}))


# ---------------------------------------------------------------- the rules stay in step with the code
def test_declared_choices_match_the_code_that_uses_them():
    from maskgen.data.pipeline import AUGMENTATIONS
    from maskgen.models.layers import REMAT_POLICIES
    from maskgen.recipes import mae, tokenizer

    spec = config_lib.COMMON_SPEC
    assert spec["data.augment"].allowed == config_lib.one_of(*AUGMENTATIONS).allowed
    assert spec["remat"].allowed == config_lib.one_of(*REMAT_POLICIES).allowed
    assert all(spec["compute_dtype"].test(d) for d in mae._DTYPES) and len(mae._DTYPES) == 2
    assert set(tokenizer.QUANTIZER_SPECS) == set(tokenizer.QUANTIZERS)
    for path in EXPERIMENTS:
        quantizer = _module(path).ARGS.get("quantizer")
        assert quantizer is None or quantizer.rule.allowed == config_lib.one_of(*tokenizer.QUANTIZERS).allowed


# ---------------------------------------------------------------- found trying configs as a new user would
def test_batch_larger_than_the_train_split_is_refused():
    problems = _recipe_problems(tiny_mae_config("batch_size=5000"))  # before: accepted, then no batch was complete
    assert ("config.batch_size=5000: the 'digits' 'train' split has only 1438 examples, so no batch would ever be "
            "complete; use a batch_size <= 1438") in problems
    assert not _recipe_problems(tiny_mae_config("batch_size=1438"))


def test_mlp_ratio_that_leaves_no_hidden_units_is_refused():
    problems = _recipe_problems(tiny_mae_config("model.mlp_ratio=0.01"))  # before: ZeroDivisionError at init
    assert any(p.startswith("config.model.mlp_ratio=0.01 gives MLPs of width 0 at width=32") for p in problems)


@pytest.mark.parametrize("override, message", [
    ("evals.probe.steps=0", "config.evals.probe.steps=0: must be an int >= 1"),
    ("evals.probe.learning_rate=-1.0", "config.evals.probe.learning_rate=-1.0: must be a number > 0"),
    ("evals.reconstruction.num=0", "config.evals.reconstruction.num=0: must be an int >= 1"),
])
def test_evaluator_arguments_are_checked_before_training(override, message):
    from maskgen.train import setup

    assert message in _error(setup, tiny_mae_config(override))


def test_sharding_rules_missing_an_axis_is_a_config_error():
    from maskgen.train import setup

    message = _error(setup, tiny_mae_config("sharding_rules=()"))  # before: a ValueError from deep in JAX
    assert message.startswith("config.sharding_rules has no rule for a logical axis the model's parameters use")
