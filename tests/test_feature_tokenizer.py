"""The feature tokenizer (MaskGCT's semantic tokens): SSAST token features, chunked 50 Hz frames,
running normalisation statistics, EMA k-means after them, encode, validation, `maskgen tokenize`."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskgen.audio.features import MelConfig

from conftest import write_run_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 8 kHz, 10 ms hop, 8 mel bins: a frame token is 2 frames = 160 samples (50 Hz); 20 frames a clip.
MEL = dict(sample_rate=8000, n_fft=256, hop=80, win_length=200, n_mels=8, f_min=20.0, f_max=None, mel_scale="htk",
           norm=None, power=2.0, log_floor=1e-6)
CHUNK, PER_TOKEN, DEPTH = 1600, 160, 2


def _ssast_recipe():
    from maskgen.recipes.ssast import SSASTRecipe

    return SSASTRecipe(mel=MelConfig.from_dict(MEL), num_samples=CHUNK, num_frames=20, patch_shape=(8, 2),
                       tokens="frame", task="pretrain", width=16, depth=DEPTH, num_heads=2, mlp_ratio=2.0,
                       num_classes=3, num_masked=4, cluster_sizes=(1,), nce_weight=1.0, mse_weight=10.0,
                       shared_mask=False, nce_softmax_over="targets", input_mean=-9.0, input_std=6.4)


@pytest.fixture(scope="module")
def encoder():
    """A frozen SSAST frame-token run at its random init (no checkpoint needed)."""
    from maskgen.recipes.frozen import FrozenRun

    recipe = _ssast_recipe()
    with nnx.use_eager_sharding(False):  # a single-device copy, as load_frozen_run makes
        graphdef, params, rest = nnx.split(recipe.make_model(nnx.Rngs(0)), nnx.Param, ...)
    config = ml_collections.ConfigDict({"recipe": "ssast", "model": {"tokens": "frame", "depth": DEPTH,
                                                                      "mel": dict(MEL)}})
    return FrozenRun(workdir="/frozen/ssast", config=config, data_info={}, recipe=recipe, info=recipe.info(), step=0,
                     graphdef=graphdef, params=nnx.to_pure_dict(params), model_state=nnx.to_pure_dict(rest))


def _tokenizer(encoder, **overrides):
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe

    settings = dict(layer=-1, codebook_size=8, stats_steps=3, ema_decay=0.9, kmeans_iters=5,
                    dead_code_threshold=0.0, clip_samples=CHUNK)
    return FeatureTokenizerRecipe(encoder=encoder, **{**settings, **overrides})


def _audio(rng, batch, length):
    """Tones of one of three pitches with noise: features that cluster."""
    t = np.arange(length) / MEL["sample_rate"]
    freqs = rng.choice([300.0, 900.0, 2000.0], size=(batch, 1))
    x = 0.3 * np.sin(2 * np.pi * freqs * t) + 0.01 * rng.standard_normal((batch, length))
    return jnp.asarray(x[..., None], jnp.float32)


def test_ssast_token_features_layers(encoder):
    recipe, model = encoder.recipe, encoder.module()
    batch = {"audio": _audio(np.random.default_rng(0), 2, CHUNK)}
    final = recipe.token_features(model, batch, None)
    assert final.shape == (2, 10, 16) and final.dtype == jnp.float32
    np.testing.assert_allclose(final, model.encode(recipe.patches(batch["audio"]))[:, 1:], atol=1e-6)
    # The last block's output, through the final LayerNorm, is the final output.
    last = recipe.token_features(model, batch, None, layer=DEPTH)
    np.testing.assert_allclose(model.transformer.norm(last), final, atol=1e-5)
    embeddings = recipe.token_features(model, batch, None, layer=0)
    np.testing.assert_allclose(embeddings, model.patch_embed(recipe.patches(batch["audio"]))
                               + model.pos_embed[...][1:], atol=1e-6)
    with pytest.raises(ValueError, match=f"layer=3 must be -1 .* or 0..{DEPTH}"):
        recipe.token_features(model, batch, None, layer=3)


def test_long_audio_is_encoded_clip_by_clip_at_50_hz(encoder):
    tokenizer = _tokenizer(encoder)
    assert tokenizer.info()["frame_rate"] == 50.0 and tokenizer.info()["token_shape"] == (10,)
    features = jax.jit(tokenizer.encoder_features)
    audio = _audio(np.random.default_rng(1), 2, 2 * CHUNK)
    both = features(audio)
    halves = [features(audio[:, i * CHUNK:(i + 1) * CHUNK]) for i in range(2)]
    np.testing.assert_allclose(both, jnp.concatenate(halves, axis=1), atol=1e-6)
    # A length that is not a whole number of clips: the last clip zero padded, T // 160 frames kept.
    ragged = features(audio[:, :CHUNK + 500])
    assert ragged.shape == (2, (CHUNK + 500) // PER_TOKEN, 16)
    padded = jnp.pad(audio[:, :CHUNK + 500], ((0, 0), (0, CHUNK - 500), (0, 0)))
    np.testing.assert_allclose(ragged, features(padded)[:, :ragged.shape[1]], atol=1e-6)


def _train(tokenizer, batches, seed=0):
    """The loop's update without an optimizer (nothing is trained by gradient): merge, loss, split."""
    with nnx.use_eager_sharding(False):
        graphdef, params, rest = nnx.split(tokenizer.make_model(nnx.Rngs(seed)), nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    @jax.jit
    def step(params, rest, audio, index):
        model = nnx.merge(graphdef, params, rest)
        loss, metrics = tokenizer.loss(model, {"audio": audio}, jax.random.fold_in(jax.random.key(seed), index), index)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return loss, metrics, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    history = [(params, rest, None)]
    for index, audio in enumerate(batches):
        loss, metrics, params, rest = step(params, rest, audio, jnp.int32(index))
        history.append((params, rest, metrics))
    return graphdef, history


def test_statistics_then_kmeans(encoder):
    tokenizer = _tokenizer(encoder)
    rng = np.random.default_rng(2)
    batches = [_audio(rng, 4, CHUNK) for _ in range(8)]
    graphdef, history = _train(tokenizer, batches)
    initial_codebook = history[0][0]["quantizer"]["codebook"]
    # The statistics are the pooled moments of the first 3 batches' frames, then frozen.
    features = jax.jit(tokenizer.encoder_features)
    frames = np.concatenate([np.asarray(features(b)).reshape(-1, 16) for b in batches[:3]])
    for params, rest, _ in history[3:]:
        np.testing.assert_allclose(rest["mean"], frames.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.sqrt(rest["m2"] / rest["count"]), frames.std(0), rtol=1e-3, atol=1e-5)
        assert float(rest["count"]) == frames.shape[0]
    # The codebook waits for them, then k-means starts (and keeps moving with the EMA).
    for params, _, metrics in history[1:4]:
        np.testing.assert_array_equal(params["quantizer"]["codebook"], initial_codebook)
        assert metrics["gathering_statistics"] == 1.0
    assert not np.allclose(history[4][0]["quantizer"]["codebook"], initial_codebook)
    assert history[-1][2]["gathering_statistics"] == 0.0
    # Encode: the nearest centroid of each normalised frame, [B, T // 160] int32.
    params, rest, metrics = history[-1]
    model = nnx.merge(graphdef, params, rest)
    audio = _audio(np.random.default_rng(3), 3, 2 * CHUNK)
    codes = np.asarray(tokenizer.encode(model, {"audio": audio}, None))
    assert codes.shape == (3, 20) and codes.dtype == np.int32
    z = (np.asarray(features(audio)) - rest["mean"]) / np.sqrt(rest["m2"] / rest["count"])
    distances = ((z[..., None, :] - params["quantizer"]["codebook"]) ** 2).sum(-1)
    np.testing.assert_array_equal(codes, distances.argmin(-1))
    # Clustered data: far below the distortion of the mean alone (1 per dimension after normalising).
    assert float(metrics["distortion"]) < 0.5 * float(np.mean(z ** 2))




def test_validation_names_the_problem(tmp_path, encoder):
    from maskgen.config import load_config_file
    from maskgen.recipes.feature_tokenizer import FeatureTokenizerRecipe, _encoder_problems

    patch_run = write_run_config(tmp_path / "patch", "experiments/ssast_speech.py:size=tiny")
    assert any("model.tokens='patch'" in p and "frame-token run" in p for p in _encoder_problems(patch_run, -1, 16000))
    frame_run = write_run_config(tmp_path / "frame", "experiments/ssast_speech.py:size=tiny,tokens=frame")
    assert _encoder_problems(frame_run, -1, 16000) == []
    assert any("has 1 blocks; use -1" in p for p in _encoder_problems(frame_run, 5, 16000))
    assert any("trained on 16000 Hz audio, but config.data gives 8000 Hz" in p
               for p in _encoder_problems(frame_run, -1, 8000))
    codec_run = write_run_config(tmp_path / "codec", "experiments/codec_speech.py:size=tiny")
    assert any("is a 'codec' run; the feature tokenizer reads runs of: ssast" in p
               for p in _encoder_problems(codec_run, -1, 16000))

    from tests.test_config_validation import _data_info

    config = load_config_file(os.path.join(REPO, f"experiments/semantic_speech.py:size=tiny,encoder={frame_run}"))
    info = _data_info(config)
    assert FeatureTokenizerRecipe.validate(config, info) == []
    config.unlock()
    config.eval_params = "ema"
    config.model.stats_steps = config.total_steps
    problems = FeatureTokenizerRecipe.validate(config, info)
    assert any("use eval_params='params'" in p for p in problems)
    assert any("must be fewer than config.total_steps" in p for p in problems)
    with pytest.raises(ValueError, match="config.encoder.layer=4: the SSAST run"):
        _tokenizer(encoder, layer=4)


@pytest.mark.slow
def test_train_and_tokenize_end_to_end(tmp_path):
    """An SSAST frame run, the semantic tokenizer on it, then `maskgen tokenize` (tiny sizes)."""
    from maskgen.config import apply_overrides, load_config_file
    from maskgen.tokenize import tokenize_dataset
    from maskgen.train import train

    ssast = load_config_file(os.path.join(REPO, "experiments/ssast_speech.py:tokens=frame,size=tiny,steps=2"))
    apply_overrides(ssast, ["model.num_frames=100", "model.num_masked=30", "evals.probe.every=-1",
                            "evals.spectrograms.every=-1"])
    train(ssast, str(tmp_path / "ssast"))
    semantic = load_config_file(os.path.join(REPO, "experiments/semantic_speech.py:size=tiny,"
                                                   f"encoder={tmp_path}/ssast"))
    train(semantic, str(tmp_path / "semantic"))
    metrics = [json.loads(line) for line in open(tmp_path / "semantic" / "metrics.jsonl")]
    assert metrics[-1]["gathering_statistics"] == 0.0 and metrics[-1]["usage"] > 0
    metadata = tokenize_dataset(str(tmp_path / "semantic"), "speech", str(tmp_path / "tokens"), splits=["test"])
    assert metadata["token_shape"] == [50] and metadata["codebook_size"] == 16
    assert metadata["tokenizer"]["quantizer"] == "kmeans"
