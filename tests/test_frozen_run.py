"""maskgen.recipes.frozen: a trained run restored as a frozen function inside another jitted step.

A one-step tiny codec run is restored with `load_frozen_run`; its `encode` inside jax.jit must equal
what the RunHandle (the run on its mesh, as `maskgen tokenize` uses it) gives, no gradient may flow
into its weights, and bad workdirs/recipes/capabilities give errors naming the config key.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from maskgen import config as config_lib
from maskgen.recipes.frozen import FrozenRun, load_frozen_run

CODEC_SPEECH = os.path.join(REPO, "experiments", "codec_speech.py")
ROLE = "config.test.codec_workdir"


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory):
    from maskgen import train as train_lib

    # 0.2 s clips at 8 kHz (10 frames of 160 samples), one rendition per (word, voice): cheap.
    workdir = str(tmp_path_factory.mktemp("frozen") / "codec")
    train_lib.train(_tiny_config(), workdir)
    return workdir


def _clips(count=3, samples=1600):
    t = np.arange(samples) / 8000.0
    freqs = np.array([220.0, 440.0, 700.0])[:count, None]
    return (0.4 * np.sin(2 * np.pi * freqs * t))[..., None].astype(np.float32)


@pytest.mark.slow  # trains and restores a tiny codec (compiles its train step and the RunHandle): ~1 min on 2 cores
def test_frozen_encode_inside_jit_equals_the_run_handle(codec_run):
    from maskgen.runs import RunHandle

    frozen = load_frozen_run(codec_run, role=ROLE, recipes=("codec",), capability="encode")
    assert isinstance(frozen, FrozenRun) and frozen.step == 1 and frozen.config.recipe == "codec"
    assert frozen.info["token_shape"] == (10, 4) and frozen.info["decodes_to"] == "audio"
    audio = _clips()
    codes = jax.jit(lambda x: frozen.call("encode", {"audio": x}))(audio)
    expected = RunHandle(codec_run).apply("encode", {"audio": audio})
    assert codes.shape == (3, 10, 4) and codes.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(codes), expected)
    # Decoding through the frozen copy is a function of the caller's input only: no gradient reaches
    # the run's weights (stop_gradient), while the input still gets one through the decoder.
    codes_host = np.asarray(codes)

    def through_decoder(scale):
        out = frozen.call("decode", {"codes": codes_host})
        return jnp.sum(scale * out)

    grad = jax.grad(through_decoder)(jnp.float32(1.0))
    assert np.isfinite(float(grad))
    params_grad = jax.grad(lambda p: jnp.sum(
        FrozenRun(**{**frozen.__dict__, "params": p}).call("decode", {"codes": codes_host})))(frozen.params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(params_grad))


def _tiny_config():
    config = config_lib.load_config_file(f"{CODEC_SPEECH}:size=tiny,steps=1")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", "data.clip_seconds=0.2", "data.renditions=1",
                                        "checkpoint_every=1", "log_every=1"])
    return config


def test_frozen_run_errors_name_the_role_and_the_problem(tmp_path):
    # The checks before any weight is read: a run directory with a config.json and no checkpoint yet.
    with pytest.raises(ValueError, match=rf"{ROLE}=.*nowhere.*is not a directory"):
        load_frozen_run(str(tmp_path / "nowhere"), role=ROLE)
    with pytest.raises(ValueError, match=rf"{ROLE}=.*no config.json"):
        load_frozen_run(str(tmp_path), role=ROLE)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config_lib.config_to_json(_tiny_config()))
    with pytest.raises(ValueError, match=rf"{ROLE}=.*no checkpoints"):
        load_frozen_run(str(run), role=ROLE)
    (run / "checkpoints").mkdir()
    with pytest.raises(ValueError, match=rf"{ROLE}=.*is a 'codec' run; it must be a run of: mae, ssast"):
        load_frozen_run(str(run), role=ROLE, recipes=("mae", "ssast"))
    with pytest.raises(ValueError, match=rf"{ROLE}=.*'codec' run, which cannot 'generate'; runs that can: .*maskgit"):
        load_frozen_run(str(run), role=ROLE, capability="generate")
    with pytest.raises(ValueError, match=rf"{ROLE}=.*no checkpoints in .*train first"):
        load_frozen_run(str(run), role=ROLE, recipes=("codec",), capability="encode")


@pytest.mark.slow  # trains and restores a tiny codec (compiles its train step and the RunHandle): ~1 min on 2 cores
def test_a_method_the_recipe_does_not_declare_is_refused(codec_run):
    frozen = load_frozen_run(codec_run, role=ROLE, step=1)
    with pytest.raises(ValueError, match="has no method 'generate'"):
        frozen.call("generate", {})
