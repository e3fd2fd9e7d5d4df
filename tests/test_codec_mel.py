"""The log-mel mode of the codec recipe (`model.input="log_mel"`, experiments/codec_speech_mel.py):
validation, the frame/level shapes of encode/decode/reconstruct, its input against the log-mel
front end computed by hand, decoding the first k levels, the loss falling on harmonic tones, and
(slow) a trained run heard through Griffin-Lim by runs.AudioDecoder and restored as a FrozenRun."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import REPO
from maskgen import config as config_lib
from maskgen import parallel
from maskgen.audio import features
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.data import AudioSpec, LabelSpec
from maskgen.recipes.codec import CodecRecipe

CODEC_MEL = os.path.join(REPO, "experiments", "codec_speech_mel.py")
CODEC_WAVE = os.path.join(REPO, "experiments", "codec_speech.py")
RATE, SAMPLES = 16000, 3200  # 0.2 s: 20 log-mel frames at hop 160 -> 10 codec frames (stride 2)


@pytest.fixture(scope="module", autouse=True)
def mesh_context():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def mel_config(*overrides, arg="size=tiny"):
    config = config_lib.load_config_file(f"{CODEC_MEL}:{arg}")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", "evals.spectrograms.every=-1", *overrides])
    return config


def audio_info(samples=SAMPLES, rate=RATE, channels=1):
    return {"fields": {"audio": AudioSpec((samples, channels), rate), "label": LabelSpec(10)}, "num_classes": 10,
            "splits": {"train": 64, "test": 16}, "words": "digits"}


def harmonic_tones(key, batch, samples=SAMPLES):
    """Voiced-like clips: 5 harmonics of a random F0 (100-300 Hz), random loudness: [B, T, 1]."""
    k1, k2 = jax.random.split(key)
    f0 = jax.random.uniform(k1, (batch, 1, 1), minval=100.0, maxval=300.0)
    amp = jax.random.uniform(k2, (batch, 1, 1), minval=0.05, maxval=0.4)
    t = jnp.arange(samples)[None, :, None] / RATE
    harmonics = jnp.arange(1, 6)[None, None, :]
    return (amp * jnp.sum(jnp.sin(2 * np.pi * f0 * harmonics * t) / harmonics, -1, keepdims=True) / 2)


@pytest.fixture(scope="module")
def tiny():
    """The tiny mel codec (no quantizer dropout) and one model, shared: initialising it compiles an
    initialiser per parameter shape."""
    recipe = CodecRecipe.from_config(mel_config("model.quantizer_dropout=0.0"), audio_info())
    return recipe, recipe.make_model(nnx.Rngs(0))


def test_config_validates_and_info_describes_the_tokens():
    assert CodecRecipe.validate(mel_config(), audio_info()) == []
    assert CodecRecipe.validate(mel_config(arg=""), audio_info(16000)) == []  # the "small" config, 1 s clips
    info = CodecRecipe.from_config(mel_config(arg="levels=3"), audio_info(16000)).info()
    assert info["decodes_to"] == "log_mel" and info["token_shape"] == (50, 3) and info["num_levels"] == 3
    assert info["frame_rate"] == 50.0 and info["num_samples"] == 16000 and info["hop"] == 320
    assert info["mel"]["n_mels"] == 80 and info["mel"]["sample_rate"] == RATE and info["words"] == "digits"
    assert features.MelConfig.from_dict(info["mel"]).hop == 160
    assert any("mono" in p and "2 channels" in p for p in CodecRecipe.validate(mel_config(), audio_info(channels=2)))
    # A waveform codec's saved config (no model.input) is the waveform codec, as before.
    wave = config_lib.load_config_file(f"{CODEC_WAVE}:size=tiny")
    assert "input" not in wave.model
    assert CodecRecipe.from_config(wave, audio_info(8000, 8000)).info()["decodes_to"] == "audio"


@pytest.mark.parametrize("settings, message", [
    ({"model.strides": (3,)}, r"log-mel frame count \(T // hop = 3200 // 160\)=20 is not a multiple of the codec's "
                              r"stride over frames 3 \(the product of config.model.strides=\(3,\)\)"),
    ({"model.mel_frames": 30}, "mel_frames=30: 3200-sample clips give only 20 log-mel frames at config.mel.hop=160"),
    ({"model.mel_frames": 15}, "mel_frames=15 is not a multiple of the codec's stride over frames 2"),
    ({"mel.f_max": 9000.0}, "f_max=9000.0 is above the Nyquist frequency 8000 Hz of the 16000 Hz data"),
    ({"mel.sample_rate": 8000}, "mel.sample_rate=8000: the 'speech' audio is at 16000 Hz"),
    ({"loss.adversarial_weight": 4.0}, r"adversarial_weight=4.0: the log-mel codec \(model.input='log_mel'\) has no "
                                       r"discriminator \(GAN\)"),
    ({"loss.mel_weight": 2.0}, "mel_weight=2.0: the log-mel codec .* has no waveform or STFT loss"),
    ({"mel.n_fft": 8192}, "n_fft=8192 is too long for 3200-sample clips"),
    ({"model.input": "spectrum"}, "model.input='spectrum': must be one of"),
])
def test_validation_names_the_problem(settings, message):
    config = mel_config()
    with config.unlocked():
        for key, value in settings.items():
            group, name = key.split(".")
            config[group][name] = value
    problems = CodecRecipe.validate(config, audio_info())
    assert any(re.search(message, p) for p in problems), problems


def test_encode_decode_shapes_input_and_level_prefixes(tiny):
    recipe, model = tiny
    audio = harmonic_tones(jax.random.key(0), 3)
    codes = recipe.encode(model, {"audio": audio}, None)
    assert codes.shape == (3, 10, 4) and codes.dtype == jnp.int32
    out = recipe.reconstruct(model, {"audio": audio}, None)
    assert out["reconstruction"].shape == (3, 80, 20, 1) and out["log_mel"].shape == (3, 80, 20, 1)
    np.testing.assert_array_equal(out["codes"], codes)
    # The input is the fixed-scale log-mel of the data, bins as rows: ln(max(mel, 1e-5)), by hand.
    cfg = recipe.mel
    spectrum = np.abs(np.asarray(features.stft(audio[..., 0], cfg.n_fft, cfg.hop, cfg.win_length)))
    by_hand = (np.log(np.maximum(spectrum @ features.config_filterbank(cfg), 1e-5)) + 4.5) / 7.0
    np.testing.assert_allclose(out["log_mel"][..., 0], by_hand.transpose(0, 2, 1), atol=2e-5)
    # Decoding the first k levels equals decoding codes that only have those k columns.
    for k in (1, 3):
        np.testing.assert_allclose(recipe.decode(model, {"codes": codes}, None, num_levels=k),
                                   recipe.decode(model, {"codes": codes[..., :k]}, None), atol=1e-6)
        assert not np.allclose(recipe.decode(model, {"codes": codes}, None, num_levels=k), out["reconstruction"])
    np.testing.assert_allclose(recipe.decode(model, {"codes": codes}, None), out["reconstruction"], atol=1e-6)
    rows = recipe.sample(model, {"audio": audio}, None)
    np.testing.assert_allclose(rows["original"], np.clip(out["log_mel"][:, ::-1], -1, 1), atol=1e-6)
    with pytest.raises(ValueError, match="1599 samples gives 9 log-mel frames at hop 160; the codec needs 20"):
        recipe.encode(model, {"audio": audio[:, :1599]}, None)
    with pytest.raises(ValueError, match=r"codes \[B, frames, k\] with 1 <= k <= 4"):
        recipe.decode(model, {"codes": jnp.zeros((1, 10, 5), jnp.int32)}, None)


def test_tiny_mel_codec_loss_falls_on_harmonic_tones(tiny):
    recipe, model = tiny
    graphdef, params, state = nnx.split(model, nnx.Param, ...)
    params, state = nnx.to_pure_dict(params), nnx.to_pure_dict(state)
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, state, opt_state, i):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, state, copy=True)
            loss, metrics = recipe.loss(model, {"audio": harmonic_tones(jax.random.key(i % 4), 8)},
                                        jax.random.key(i), i)
            _, p_after, s_after = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, nnx.to_pure_dict(p_after), nnx.to_pure_dict(s_after))

        (loss, (metrics, p_after, s_after)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, p_after)
        return optax.apply_updates(jax.lax.stop_gradient(p_after), updates), s_after, opt_state, metrics

    l1 = []
    for i in range(40):
        params, state, opt_state, metrics = step(params, state, opt_state, jnp.int32(i))
        l1.append(float(metrics["l1"]))
    assert set(metrics) >= {"l1", "mse", "quantizer_loss"} and "mel" not in metrics
    assert np.isfinite(l1).all()
    assert np.mean(l1[-5:]) < 0.5 * np.mean(l1[:5]), l1


@pytest.mark.slow  # trains a tiny mel codec, restores it twice and runs Griffin-Lim: about a minute on 2 cores
def test_trained_mel_codec_is_heard_through_griffin_lim_and_restores_frozen(tmp_path):
    from maskgen import train as train_lib
    from maskgen.data.speech import speech_arrays
    from maskgen.recipes.frozen import load_frozen_run
    from maskgen.runs import AudioDecoder, TokenizerHandle

    config = mel_config("data.clip_seconds=0.2", "data.renditions=1", "checkpoint_every=2", "log_every=1",
                        arg="size=tiny,steps=2")
    workdir = str(tmp_path / "codec_mel")
    train_lib.train(config, workdir)
    handle = TokenizerHandle(workdir)
    audio = speech_arrays("test", sample_rate=RATE, clip_seconds=0.2, renditions=1)[0][:3, :, None]
    tokens = handle.apply("encode", {"audio": audio})
    assert tokens.shape == (3, 10, 4)
    decoder = AudioDecoder(handle)
    heard = decoder.decode(tokens)
    assert heard["audio"].shape == (3, SAMPLES, 1) and heard["sample_rate"] == RATE
    assert heard["log_mel"].shape == (3, 20, 80) and np.abs(heard["audio"]).max() <= 1.0
    np.testing.assert_allclose(
        heard["log_mel"], np.asarray(features.unscale_log_mel(handle.decode(tokens)[..., 0])).transpose(0, 2, 1),
        atol=1e-5)
    frozen = load_frozen_run(workdir, role="config.maskgct.codec_workdir", recipes=("codec",), capability="encode")
    np.testing.assert_array_equal(jax.jit(lambda a: frozen.call("encode", {"audio": a}))(audio), tokens)
