"""Audio evaluators: SI-SNR and mel distance by hand, the word classifier on held-out voices, both evaluators
end to end on hand-built contexts."""

import json
import math
import os

import jax
import numpy as np
import pytest

from maskgen.audio import features
from maskgen.evaluators import build_evaluator
from maskgen.evaluators.audio import (SI_SNR_CAP_DB, bitrate_kbps, codebook_usage, log_mel_distance, mel_distance,
                                      si_snr, spectrogram_image)
from maskgen.evaluators.base import EvalContext

# A small speech dataset (the speech source's own small setting): 32 train voices, 8 held out, 10 digits.
SMALL = dict(words="digits", sample_rate=8000, clip_seconds=0.5, renditions=1)
SR = SMALL["sample_rate"]


# ---------------------------------------------------------------------------------------------
# Metrics by hand.
# ---------------------------------------------------------------------------------------------
def _tone(freq: float, num_samples: int = 4000, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(num_samples) / SR)).astype(np.float64)


def test_si_snr_known_values_and_scale_invariance():
    reference = _tone(440.0)
    noise = np.random.default_rng(0).standard_normal(reference.shape)
    noise -= noise.mean()
    noise -= (noise @ reference) / (reference @ reference) * reference  # Orthogonal to the (zero-mean) reference.
    values = []
    for snr_db in (20.0, 5.0, -3.0):
        scaled = noise * math.sqrt((reference @ reference) / (noise @ noise) / 10 ** (snr_db / 10))
        values.append(si_snr(reference[None], (reference + scaled)[None])[0])
        # Scale invariance: any gain (and a DC offset) on the estimate gives the same number.
        np.testing.assert_allclose(si_snr(reference[None], (0.2 * (reference + scaled) + 0.3)[None])[0], values[-1],
                                   atol=1e-9)
    np.testing.assert_allclose(values, [20.0, 5.0, -3.0], atol=1e-9)
    # Identical clips: infinite SI-SNR, reported as the cap; a silent reference has none (NaN).
    batch = np.stack([reference, np.zeros_like(reference)])[..., None]  # [B, T, 1] is accepted too.
    result = si_snr(batch, batch)
    assert result[0] == SI_SNR_CAP_DB and np.isnan(result[1])
    with pytest.raises(ValueError, match="differ in shape"):
        si_snr(reference[None], reference[None, :100])


def test_mel_distance_and_codebook_stats_by_hand():
    cfg = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=32)
    clips = np.stack([_tone(300.0), _tone(1200.0)]).astype(np.float32)
    np.testing.assert_array_equal(mel_distance(clips, clips, cfg), [0.0, 0.0])
    louder = mel_distance(clips, 2 * clips, cfg)  # Twice the amplitude: log-mel + ln 2 wherever above the floor.
    assert np.all(louder > 0) and np.all(louder <= math.log(2.0) + 1e-5)
    np.testing.assert_allclose(log_mel_distance(np.zeros((1, 2, 2)), np.array([[[1.0, -1.0], [3.0, 0.0]]])), [1.25])
    codes = np.array([[[0, 2], [1, 2], [0, 3]]])  # [B=1, frames=3, K=2]
    usage, perplexity = codebook_usage(codes, 4)
    np.testing.assert_allclose(usage, [0.5, 0.5])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    np.testing.assert_allclose(perplexity, [math.exp(h)] * 2)
    assert bitrate_kbps(75.0, 8, 1024) == pytest.approx(6.0)  # EnCodec 24 kHz at 8 levels: 6 kbps.


def test_spectrogram_image_puts_low_frequencies_at_the_bottom():
    cfg = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=32)
    lm = np.asarray(features.log_mel(_tone(200.0, amplitude=0.9)[None].astype(np.float32), cfg))[0]
    image = spectrogram_image(lm)
    assert image.dtype == np.uint8 and image.shape == (32, lm.shape[0], 3)
    brightness = image.astype(float).sum(axis=(1, 2))
    assert brightness[-8:].mean() > 2 * brightness[:8].mean()  # The 200 Hz tone is in the bottom rows.
    with pytest.raises(ValueError, match=r"\[frames, n_mels\]"):
        spectrogram_image(lm[None])


# ---------------------------------------------------------------------------------------------
# The word classifier, trained briefly on the small speech set (module-scoped).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech():
    from maskgen.data.speech import speech_arrays

    return {split: speech_arrays(split, **SMALL) for split in ("train", "test")}


@pytest.fixture(scope="module")
def tiny_classifier(speech):
    from maskgen.data.speech import WORD_SETS
    from maskgen.perception.word_classifier import fit_word_classifier

    (train_audio, train_labels, _), (test_audio, test_labels, _) = speech["train"], speech["test"]
    return fit_word_classifier(train_audio, train_labels, sample_rate=SR, test_audio=test_audio,
                               test_labels=test_labels, steps=60, batch_size=32, class_names=WORD_SETS["digits"],
                               extra_info={"dataset": {"words": "digits", "sample_rate": SR, "clip_seconds": 0.5}})


def test_word_classifier_recognises_held_out_voices(tiny_classifier, speech):
    (_, _, train_voices), (test_audio, test_labels, test_voices) = speech["train"], speech["test"]
    assert not set(test_voices.tolist()) & set(train_voices.tolist())  # The test voices are new speakers.
    assert tiny_classifier.test_accuracy >= 0.6  # Chance is 0.1.
    assert tiny_classifier.accuracy(test_audio[..., None], test_labels) == tiny_classifier.test_accuracy
    feats = tiny_classifier.features(test_audio[:5])
    assert feats.shape == (5, tiny_classifier.feature_dim) and np.isfinite(feats).all()
    with pytest.raises(ValueError, match="mono clips"):
        tiny_classifier.predict(np.zeros((2, 100, 2), np.float32))


def test_word_classifier_cache_round_trip(tiny_classifier, speech, tmp_path):
    from maskgen.data.speech import CACHE_FORMAT
    from maskgen.perception import word_classifier

    options = word_classifier.dataset_options("digits", SR, 0.5)
    tiny_classifier.info["speech_format"] = CACHE_FORMAT
    path = word_classifier.save_word_classifier(tiny_classifier, str(tmp_path), options)
    assert os.path.exists(path) and not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    # Trained with other settings (steps=60) than the defaults: a stale cache, ignored.
    assert word_classifier.load_word_classifier(str(tmp_path), options) is None
    stem = path[: -len(".msgpack")]
    with open(stem + ".json") as f:
        info = json.load(f)
    with open(stem + ".json", "w") as f:
        json.dump({**info, **word_classifier.training_settings()}, f)
    reloaded = word_classifier.load_word_classifier(str(tmp_path), options)
    clips = speech["test"][0][:8]
    np.testing.assert_array_equal(reloaded.features(clips), tiny_classifier.features(clips))
    assert reloaded.test_accuracy == tiny_classifier.test_accuracy
    assert word_classifier.load_word_classifier(str(tmp_path), {**options, "words": "commands"}) is None


@pytest.mark.slow
def test_default_word_classifier_on_held_out_voices(tmp_path):
    """The classifier the evaluators use (full speech set, default training): its held-out-voice accuracy."""
    from maskgen.perception.word_classifier import get_word_classifier

    classifier = get_word_classifier(cache_dir=str(tmp_path))
    assert classifier.test_accuracy >= 0.9
    assert get_word_classifier(cache_dir=str(tmp_path)) is classifier


# ---------------------------------------------------------------------------------------------
# The evaluators end to end on hand-built contexts.
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def use_tiny_classifier(tiny_classifier, monkeypatch):
    from maskgen.perception import word_classifier

    def get(*, words="digits", sample_rate=16000, clip_seconds=1.0, cache_dir=None):
        assert (words, sample_rate, clip_seconds) == ("digits", SR, 0.5)
        return tiny_classifier

    monkeypatch.setattr(word_classifier, "get_word_classifier", get)
    return tiny_classifier


CODEC_MEL = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=32)
LEVELS, CODEBOOK = 4, 16


def _batches(audio, labels, batch_size):
    def batches(split, limit=None):
        assert split == "test"
        n = len(audio) if limit is None else min(limit, len(audio))
        for start in range(0, n, batch_size):
            rows = np.arange(start, start + batch_size)
            valid = rows < n
            rows = np.minimum(rows, n - 1)  # Padding repeats the last clip, marked invalid.
            yield {"audio": audio[rows][..., None], "label": labels[rows]}, valid
    return batches


def _codec_context(audio, labels, noise_at_full: float):
    """A fake codec: k levels add noise of std noise_at_full * 2^(LEVELS - k); codes from frame energies."""
    frames = audio.shape[1] // CODEC_MEL.hop

    def apply(method, params, batch, rng, num_levels=None):
        assert method == "reconstruct"
        x = batch["audio"]
        k = LEVELS if num_levels is None else num_levels
        noise = np.random.default_rng(k).standard_normal(x.shape) * noise_at_full * 2.0 ** (LEVELS - k)
        energy = np.abs(x[:, : frames * CODEC_MEL.hop, 0]).reshape(len(x), frames, -1).mean(-1)
        codes = np.stack([np.minimum(energy * 40 * (level + 1), CODEBOOK - 1).astype(np.int32)
                          for level in range(LEVELS)], axis=-1)
        return {"audio": (x + noise).astype(np.float32), "codes": codes}

    info = {"decodes_to": "audio", "sample_rate": SR, "mel": CODEC_MEL.to_dict(), "codebook_size": CODEBOOK,
            "token_shape": (frames, LEVELS), "num_levels": LEVELS}
    return EvalContext(step=0, params=None, apply=apply, init_params=lambda seed: None,
                       batches=_batches(audio, labels, 16), to_host=lambda x: x, rng=jax.random.key(0), info=info)


def _run(ctx, kind, **args):
    return build_evaluator("audio", {"type": kind, "every": 0, **args}).run(ctx)


def test_reconstruction_of_an_identity_and_a_noisy_codec(use_tiny_classifier, speech):
    audio, labels, _ = speech["test"]
    audio, labels = audio[:40], labels[:40]
    identity = _run(_codec_context(audio, labels, 0.0), "audio_reconstruction", num_audio=2)
    s = identity.scalars
    assert s["si_snr"] == SI_SNR_CAP_DB and s["mel_distance"] == 0.0
    assert s["word_accuracy"] == s["word_accuracy_original"] == use_tiny_classifier.accuracy(audio, labels)
    # Codebook statistics over the 40 valid clips (three batches of 16, the last one padded).
    frames = audio.shape[1] // CODEC_MEL.hop
    energy = np.abs(audio[:, : frames * CODEC_MEL.hop]).reshape(40, frames, -1).mean(-1)
    codes = np.stack([np.minimum(energy * 40 * (k + 1), CODEBOOK - 1).astype(np.int32) for k in range(LEVELS)], -1)
    usage, perplexity = codebook_usage(codes, CODEBOOK)
    for k in range(LEVELS):
        assert s[f"usage_level{k}"] == pytest.approx(usage[k]) and s[f"perplexity_level{k}"] == pytest.approx(perplexity[k])
    assert s["codebook_usage"] == pytest.approx(usage.mean())
    assert sorted(identity.audio) == ["original_0", "original_1", "reconstruction_0", "reconstruction_1"]
    clip, rate = identity.audio["reconstruction_1"]
    assert rate == SR and clip.shape == (audio.shape[1], 1)
    np.testing.assert_array_equal(clip[:, 0], np.clip(audio[1], -1, 1))
    assert identity.images["spectrograms"].dtype == np.uint8

    # The level sweep: fewer levels, more noise; SI-SNR of the full codec matches the noise it adds.
    swept = _run(_codec_context(audio, labels, 0.002), "audio_reconstruction", levels=(1, 2), num_audio=1,
                 word_accuracy=False).scalars
    assert swept["si_snr_k1"] < swept["si_snr_k2"] < swept["si_snr"] < SI_SNR_CAP_DB
    assert 0 < swept["mel_distance"] < swept["mel_distance_k2"] < swept["mel_distance_k1"]
    assert swept["bitrate_kbps_k2"] == pytest.approx(bitrate_kbps(frames / 0.5, 2, CODEBOOK))
    assert "word_accuracy" not in swept


def test_reconstruction_bad_settings():
    audio, labels = np.zeros((4, 4000), np.float32), np.zeros(4, np.int32)
    with pytest.raises(ValueError, match="exceed the run's 4 RVQ levels"):
        _run(_codec_context(audio, labels, 0.0), "audio_reconstruction", levels=(8,))
    with pytest.raises(ValueError, match="levels"):
        build_evaluator("audio", {"type": "audio_reconstruction", "every": 0, "levels": (0,)})
    ctx = _codec_context(audio, labels, 0.0)
    ctx.info = {"codebook_size": 16}
    with pytest.raises(ValueError, match="decodes_to"):
        _run(ctx, "audio_reconstruction")


def test_reconstruction_of_a_log_mel_tokenizer(use_tiny_classifier, speech):
    """An identity mel tokenizer: mel distance 0, and its clips are heard through Griffin-Lim."""
    audio, labels, _ = speech["test"]
    audio, labels = audio[:8], labels[:8]
    frames = audio.shape[1] // CODEC_MEL.hop

    def apply(method, params, batch, rng):
        grid = np.asarray(features.scale_log_mel(features.log_mel(batch["audio"][..., 0], CODEC_MEL)))
        grid = grid.transpose(0, 2, 1)[..., None]  # [B, n_mels, frames, 1], like the image tokenizer's grid.
        return {"reconstruction": grid, "log_mel": grid, "codes": np.zeros((len(grid), 4, frames // 8), np.int32)}

    info = {"decodes_to": "log_mel", "sample_rate": SR, "mel": CODEC_MEL.to_dict(), "codebook_size": 8,
            "griffin_lim_iters": 8}
    ctx = EvalContext(step=0, params=None, apply=apply, init_params=lambda seed: None,
                      batches=_batches(audio, labels, 8), to_host=lambda x: x, rng=jax.random.key(0), info=info)
    result = _run(ctx, "audio_reconstruction", num_audio=1)
    s = result.scalars
    assert s["mel_distance"] == 0.0 and "si_snr" not in s
    assert s["word_accuracy"] == s["word_accuracy_vocoded_original"]  # Same mel, same Griffin-Lim, same words.
    assert s["codebook_usage"] == 1 / 8 and s["perplexity"] == 1.0
    assert sorted(result.audio) == ["original_0", "reconstruction_0", "vocoded_original_0"]
    assert result.audio["reconstruction_0"][0].shape == (audio.shape[1], 1)


def test_generation_of_the_requested_words(use_tiny_classifier, speech):
    """A "generator" that returns real clips of the requested word scores the classifier's accuracy on them."""
    audio, labels, _ = speech["test"]
    by_word = {c: np.flatnonzero(labels == c) for c in range(10)}
    returned = []

    def apply(method, params, batch, rng, **settings):
        assert method == "generate" and settings["num_steps"] == 4
        draw = np.random.default_rng(int(jax.random.randint(rng, (), 0, 1 << 30)))
        picks = [by_word[int(c)][draw.integers(len(by_word[int(c)]))] for c in batch["label"]]
        returned.append(np.asarray(picks, np.int32))
        return {"tokens": np.asarray(picks, np.int32)[:, None]}

    def decode(tokens):
        rows = np.asarray(tokens)[:, 0]
        return {"audio": audio[rows][..., None], "sample_rate": SR,
                "log_mel": np.asarray(features.log_mel(audio[rows], CODEC_MEL))}

    def reference(split, limit=None):
        data = speech[split]
        return {"audio": data[0][:limit][..., None], "label": data[1][:limit]}

    ctx = EvalContext(step=0, params=None, apply=apply, init_params=lambda seed: None, batches=None,
                      to_host=lambda x: x, rng=jax.random.key(0), shard=lambda b: b,
                      info={"num_classes": 10, "sampling": {"num_steps": 4}, "sample_rate": SR},
                      decode=decode, reference=reference)
    result = _run(ctx, "audio_generation", num_per_class=6, batch_size=16, grid_columns=2)
    s = result.scalars
    labels_asked = np.tile(np.arange(10), 6)
    generated = audio[np.concatenate(returned)[:60]]  # The last chunk of 16 is padded to 64 rows.
    assert np.array_equal(labels[np.concatenate(returned)[:60]], labels_asked)
    assert s["word_consistency"] == pytest.approx(use_tiny_classifier.accuracy(generated, labels_asked))
    assert s["word_consistency"] >= 0.5
    assert s["word_accuracy_real"] == pytest.approx(use_tiny_classifier.test_accuracy)
    assert s["frechet_distance_words"] >= 0 and s["frechet_distance_words_floor"] >= 0
    assert sorted(result.audio)[:2] == ["eight_0", "five_0"] and len(result.audio) == 10
    grid = result.images["spectrograms"]
    assert grid.dtype == np.uint8 and grid.shape[0] > grid.shape[1] // 2  # Ten rows of two spectrograms.
    ctx.info = {**ctx.info, "num_classes": 20}
    with pytest.raises(ValueError, match="knows 10 words"):
        _run(ctx, "audio_generation", num_per_class=1, batch_size=16)
