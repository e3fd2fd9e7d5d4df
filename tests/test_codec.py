"""The audio codec recipe: strided 1-D convs, stride validation, per-example quantizer dropout,
factorised codes, the spectral losses, the MS-STFT discriminator and its gradients, a tiny codec
learning tones, and `maskgen tokenize` writing [frames, K] code streams."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import REPO
from maskgen import config as config_lib
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.data import AudioSpec, LabelSpec
from maskgen.models.audio_discriminator import (MultiScaleSTFTDiscriminator, feature_matching_loss,
                                                hinge_discriminator_loss, hinge_generator_loss)
from maskgen.models.conv import Decoder, Encoder
from maskgen.recipes.codec import CodecRecipe, multi_scale_mel_loss, si_snr
from maskgen.tokenizers.quantizers import ResidualVQ

CODEC_SPEECH = os.path.join(REPO, "experiments", "codec_speech.py")
RATE, SAMPLES = 8000, 1280  # 8 frames of 160 samples (the tiny config's strides (2, 4, 5, 4))


@pytest.fixture(scope="module", autouse=True)
def mesh_context():
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def tiny_config(*overrides, arg=""):
    config = config_lib.load_config_file(f"{CODEC_SPEECH}:size=tiny{',' + arg if arg else ''}")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1", *overrides])
    return config


def audio_info(samples=SAMPLES, rate=RATE, channels=1):
    return {"fields": {"audio": AudioSpec((samples, channels), rate), "label": LabelSpec(10)}, "num_classes": 10,
            "splits": {"train": 64, "test": 16}}


def tones(key, batch, samples=SAMPLES):
    """Sines of random pitch (200-1000 Hz), amplitude and phase: [B, T, 1]."""
    k1, k2, k3 = jax.random.split(key, 3)
    freq = jax.random.uniform(k1, (batch, 1), minval=200.0, maxval=1000.0)
    amp = jax.random.uniform(k2, (batch, 1), minval=0.2, maxval=0.6)
    phase = jax.random.uniform(k3, (batch, 1), maxval=2 * np.pi)
    t = jnp.arange(samples) / RATE
    return (amp * jnp.sin(2 * np.pi * freq * t + phase))[..., None]


# ------------------------------------------------------------------ conv and validation


def test_strided_encoder_decoder_shapes_and_default_unchanged():
    kw = dict(base_channels=4, channel_multipliers=(1, 2, 2, 4, 4), num_res_blocks=1, embed_dim=6, spatial_dims=1)

    def run(samples, strides):  # shapes only (jax.eval_shape: nothing is computed)
        def build(x):
            encoder = Encoder(in_channels=1, strides=strides, rngs=nnx.Rngs(0), **kw)
            decoder = Decoder(out_channels=1, strides=strides, rngs=nnx.Rngs(0), **kw)
            z = encoder(x)
            return z, decoder(z), nnx.to_pure_dict(nnx.state(encoder, nnx.Param))

        return jax.eval_shape(build, jax.ShapeDtypeStruct((2, samples, 1), jnp.float32))

    z, y, params = run(640, (2, 4, 5, 8))
    assert z.shape == (2, 2, 6) and y.shape == (2, 640, 1)  # 640 / (2 * 4 * 5 * 8) frames
    assert params["down_convs"][3]["kernel"].shape == (16, 16, 16)  # kernel 2 x stride 8, width 4 x 4
    # Without strides: the 2x pooling encoder, with no strided-conv parameters at all.
    z, y, params = run(64, None)
    assert z.shape == (2, 4, 6) and y.shape == (2, 64, 1) and "down_convs" not in params
    with pytest.raises(ValueError, match="one per level"):
        Encoder(in_channels=1, strides=(2, 4), rngs=nnx.Rngs(0), **kw)


def test_validate_names_the_stride_and_data_problems():
    config = tiny_config()
    assert CodecRecipe.validate(config, audio_info()) == []
    problems = CodecRecipe.validate(config, audio_info(samples=1000))
    assert any("1000 samples" in p and "total stride 160" in p for p in problems), problems
    problems = CodecRecipe.validate(tiny_config("model.strides=(2, 4)"), audio_info())
    assert any("one stride per level change" in p for p in problems), problems
    assert any("mono" in p for p in CodecRecipe.validate(config, audio_info(channels=2)))
    image_info = {"fields": {}, "image_shape": (8, 8, 1), "splits": {"train": 10}}
    assert CodecRecipe.validate(config, image_info)  # needs audio
    recipe = CodecRecipe.from_config(config, audio_info())
    model = nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0)))
    with pytest.raises(ValueError, match="not a multiple of the codec's total stride 160"):
        recipe.encode(model, {"audio": jnp.zeros((1, 1000, 1))}, None)


# ------------------------------------------------------------------ quantizer options


def test_rvq_dropout_uses_the_first_n_levels_of_each_example():
    rvq = ResidualVQ(4, 8, 3, rngs=nnx.Rngs(0), quantizer_dropout=1.0, kmeans_init=False, use_ema=False,
                     restart_dead_codes=False)
    z = jax.random.normal(jax.random.key(1), (8, 5, 4))
    rng = jax.random.key(2)
    z_q, codes, aux = nnx.jit(lambda q, z, rng: q(z, train=True, rng=rng))(rvq, z, rng)
    used = rvq.levels_per_example(8, jax.random.split(rng, 4)[0])
    assert len(set(np.asarray(used).tolist())) > 1  # examples differ
    first_levels = [rvq.decode_codes(codes, k) for k in (1, 2, 3)]
    for b in range(8):
        np.testing.assert_allclose(z_q[b], first_levels[int(used[b]) - 1][b], atol=1e-5)
    np.testing.assert_allclose(aux["num_levels_used"], np.mean(used), rtol=1e-6)


def test_factorised_codes_decode_consistently_and_train_their_projections():
    kw = dict(quantizer_dropout=0.0, kmeans_init=False, use_ema=False, restart_dead_codes=False, l2_normalize=True)
    assert ResidualVQ(6, 16, 2, rngs=nnx.Rngs(0), **kw).quantizers[0].in_proj is None  # default: no projection
    rvq = ResidualVQ(6, 16, 2, rngs=nnx.Rngs(0), codebook_dim=2, **kw)
    assert rvq.quantizers[0].codebook[...].shape == (16, 2)
    z = jax.random.normal(jax.random.key(0), (3, 7, 6))
    z_q, codes, _ = rvq(z, train=False)
    np.testing.assert_allclose(z_q, rvq.decode_codes(codes), atol=1e-5)
    # The lookup is cosine: codes of a level depend only on the direction of its projected input.
    level = rvq.quantizers[0]
    _, codes_scaled, _ = level(z * 3.0, train=False)
    _, codes_once, _ = level(z, train=False)
    np.testing.assert_array_equal(codes_scaled, codes_once)
    graphdef, params, rest = nnx.split(rvq, nnx.Param, ...)
    weights = jax.random.normal(jax.random.key(3), z.shape)

    def output(p):
        return jnp.sum(nnx.merge(graphdef, p, rest, copy=True)(z, train=False)[0] * weights)

    grads = nnx.to_pure_dict(jax.jit(jax.grad(output))(params))
    for name in ("in_proj", "out_proj"):
        assert float(jnp.abs(grads["quantizers"][0][name]["kernel"]).sum()) > 0, name


# ------------------------------------------------------------------ losses and discriminator


def test_multi_scale_mel_loss_matches_librosa():
    librosa = pytest.importorskip("librosa")
    x = np.asarray(tones(jax.random.key(0), 2)[..., 0])
    y = np.asarray(tones(jax.random.key(1), 2)[..., 0])
    windows, n_mels, f_min = (128, 256), 16, 64.0
    expected = 0.0
    for w in windows:
        window_energy = np.sum(np.square(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(w) / w)))

        def mel(a):  # librosa's centred power mel, last frame dropped as in maskgen's stft
            m = librosa.feature.melspectrogram(y=a, sr=RATE, n_fft=w, hop_length=w // 4, power=2.0, htk=True,
                                               n_mels=n_mels, norm=None, fmin=f_min, pad_mode="reflect")
            return m[..., :SAMPLES // (w // 4)] / window_energy

        mx, my = mel(x), mel(y)
        expected += np.abs(mx - my).mean() + np.square(np.log10(1e-5 + mx) - np.log10(1e-5 + my)).mean()
    expected /= 2 * len(windows)
    got = multi_scale_mel_loss(jnp.asarray(x), jnp.asarray(y), sample_rate=RATE, windows=windows, n_mels=n_mels,
                               f_min=f_min)
    np.testing.assert_allclose(got, expected, rtol=2e-3)
    assert float(multi_scale_mel_loss(jnp.asarray(x), jnp.asarray(x), sample_rate=RATE, windows=windows,
                                      n_mels=n_mels, f_min=f_min)) == 0.0


def test_si_snr_by_hand():
    ref = jnp.array([[1.0, -1.0, 1.0, -1.0]])
    noise = 0.5 * jnp.array([[1.0, 1.0, -1.0, -1.0]])  # zero mean, orthogonal to ref
    np.testing.assert_allclose(si_snr(ref, 3.0 * ref + 3.0 * noise), 10 * np.log10(4.0), rtol=1e-5)


def test_discriminator_shapes_hinge_and_feature_matching():
    disc = MultiScaleSTFTDiscriminator(n_ffts=(64, 128), filters=4, rngs=nnx.Rngs(0))
    x = tones(jax.random.key(0), 2)
    logits, features = nnx.jit(lambda d, a: d(a))(disc, x)
    for n_fft, lg, feats in zip((64, 128), logits, features):
        bins = -(-(n_fft // 2 + 1) // 8)  # three stride-2 convs along frequency
        assert lg.shape == (2, SAMPLES // (n_fft // 4), bins, 1)
        assert len(feats) == 5 and feats[-1].shape == (2, SAMPLES // (n_fft // 4), bins, 4)
    # Hand-worked hinge values: relu(1 - real) + relu(1 + fake), and -fake for the generator.
    real, fake = [jnp.array([0.5, 2.0])], [jnp.array([-2.0, 0.0])]
    np.testing.assert_allclose(hinge_discriminator_loss(real, fake), 0.25 + 0.5)
    np.testing.assert_allclose(hinge_generator_loss(fake), 1.0)
    assert float(feature_matching_loss(features, features)) == 0.0
    shifted = [[f + 1.0 for f in feats] for feats in features]
    np.testing.assert_allclose(feature_matching_loss(features, shifted), 1.0, rtol=1e-6)


def test_gan_terms_reach_each_network_only_through_its_own_loss():
    config = tiny_config("model.discriminator_ffts=(64, 128)", arg="gan=1")
    recipe = CodecRecipe.from_config(config, audio_info())
    disc = recipe.make_model(nnx.Rngs(0)).discriminator
    x, x_rec = tones(jax.random.key(0), 2), tones(jax.random.key(1), 2)
    graphdef, params, rest = nnx.split(disc, nnx.Param, ...)
    step = jnp.int32(10 ** 6)

    def total(p, rec):
        return recipe._gan_losses(nnx.merge(graphdef, p, rest, copy=True), x, rec, step)[0]

    def disc_only(p, rec):
        d = nnx.merge(graphdef, p, rest, copy=True)
        return hinge_discriminator_loss(d(x)[0], d(rec)[0])

    def generator_only(p, rec):
        d = nnx.merge(graphdef, p, rest, copy=True)
        (_, real_feats), (fake_logits, fake_feats) = d(x), d(rec)
        return (recipe.adversarial_weight * hinge_generator_loss(fake_logits)
                + recipe.feature_weight * feature_matching_loss(real_feats, fake_feats))

    @jax.jit
    def gradients(p, rec):
        return (jax.grad(total, argnums=(0, 1))(p, rec), jax.grad(disc_only)(p, rec),
                jax.grad(generator_only, argnums=1)(p, rec))

    (g_params, g_rec), want_params, want_rec = gradients(params, x_rec)
    for a, b in zip(jax.tree.leaves(g_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g_rec, want_rec, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------ training and tokenize


def test_tiny_codec_loss_falls_on_tones():
    config = tiny_config()
    recipe = CodecRecipe.from_config(config, audio_info())
    graphdef, params, state = nnx.split(recipe.make_model(nnx.Rngs(0)), nnx.Param, ...)
    params, state = nnx.to_pure_dict(params), nnx.to_pure_dict(state)
    tx = optax.adam(3e-3, b1=0.5, b2=0.9)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, state, opt_state, i):
        def loss_fn(p):
            model = nnx.merge(graphdef, p, state, copy=True)
            loss, metrics = recipe.loss(model, {"audio": tones(jax.random.key(i % 4), 8)}, jax.random.key(i), i)
            _, p_after, s_after = nnx.split(model, nnx.Param, ...)
            return loss, (metrics, nnx.to_pure_dict(p_after), nnx.to_pure_dict(s_after))

        (loss, (metrics, p_after, s_after)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, p_after)
        return optax.apply_updates(jax.lax.stop_gradient(p_after), updates), s_after, opt_state, metrics

    mels = []
    for i in range(40):
        params, state, opt_state, metrics = step(params, state, opt_state, jnp.int32(i))
        mels.append(float(metrics["mel"]))
    assert np.isfinite(mels).all()
    assert np.mean(mels[-5:]) < 0.6 * np.mean(mels[:5]), mels


@pytest.mark.slow  # trains, restores and compiles a run twice: about a minute on 2 cores
def test_tokenize_writes_level_streams_whose_decode_matches_reconstruct(tmp_path):
    from maskgen import train as train_lib
    from maskgen.data import make_source
    from maskgen.runs import open_run
    from maskgen.tokenize import tokenize_dataset

    # 0.2 s clips at 8 kHz: 1,600 samples, 10 frames; one rendition per (word, voice) keeps it small.
    config = tiny_config("data.clip_seconds=0.2", "data.renditions=1", "total_steps=2", "checkpoint_every=2",
                         "log_every=1")
    workdir = str(tmp_path / "codec")
    train_lib.train(config, workdir)
    meta = tokenize_dataset(workdir, "speech", str(tmp_path / "tokens"), splits=["test"])
    assert meta["token_shape"] == [10, 4] and meta["num_levels"] == 4 and meta["codebook_size"] == 16
    assert meta["tokenizer"]["decodes_to"] == "audio" and meta["tokenizer"]["data_options"]["clip_seconds"] == 0.2
    records = make_source("tokens", "test", str(tmp_path / "tokens"))
    tokens = np.stack([records[i]["tokens"] for i in range(4)])
    assert tokens.shape == (4, 10, 4) and tokens.dtype == np.int32
    handle = open_run(workdir)
    from maskgen.data.speech import speech_arrays

    audio = speech_arrays("test", sample_rate=RATE, clip_seconds=0.2, renditions=1)[0][:4, :, None]
    rebuilt = handle.apply("reconstruct", {"audio": audio})
    np.testing.assert_array_equal(rebuilt["codes"], tokens)
    np.testing.assert_allclose(handle.apply("decode", {"codes": tokens}), rebuilt["audio"], atol=1e-6)
    assert rebuilt["audio"].shape == (4, 1600, 1)
