"""maskgen.audio.features against librosa (a test-only reference) and against its own inverses."""

import jax
import numpy as np
import pytest

from maskgen.audio import features

librosa = pytest.importorskip("librosa")

SR = 8000


def _signals(num_samples: int = 4000, seed: int = 0) -> np.ndarray:
    """Two test signals [2, T]: white noise and a chirp-like sum of sines."""
    t = np.arange(num_samples) / SR
    noise = np.random.default_rng(seed).standard_normal(num_samples) * 0.3
    tones = 0.5 * np.sin(2 * np.pi * 300 * t) + 0.3 * np.sin(2 * np.pi * (1000 + 500 * t) * t)
    return np.stack([noise, tones]).astype(np.float32)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("norm", ["slaney", None])
@pytest.mark.parametrize("sample_rate,n_fft,n_mels,f_min,f_max",
                         [(16000, 1024, 80, 0.0, None), (22050, 512, 40, 50.0, 8000.0)])
def test_mel_filterbank_matches_librosa(mel_scale, norm, sample_rate, n_fft, n_mels, f_min, f_max):
    ours = features.mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, mel_scale=mel_scale, norm=norm)
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max,
                                    htk=mel_scale == "htk", norm=norm).T
    assert ours.dtype == np.float32 and ours.shape == (n_fft // 2 + 1, n_mels)
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-6 * np.abs(reference).max())


def test_mel_scales_round_trip_and_differ():
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    for scale in features.MEL_SCALES:
        np.testing.assert_allclose(features.mel_to_hz(features.hz_to_mel(hz, scale), scale), hz, atol=1e-6)
    np.testing.assert_allclose(features.hz_to_mel(1000.0, "slaney"), 15.0)  # 1 kHz is 15 Slaney mels.
    np.testing.assert_allclose(features.hz_to_mel(700.0, "htk"), 2595.0 * np.log10(2.0))


@pytest.mark.parametrize("n_fft,hop,win_length", [(256, 64, None), (200, 50, 160)])
def test_stft_matches_librosa_without_its_last_frame(n_fft, hop, win_length):
    x = _signals()
    ours = np.asarray(features.stft(x, n_fft, hop, win_length))
    reference = librosa.stft(x, n_fft=n_fft, hop_length=hop, win_length=win_length, window="hann",
                             center=True, pad_mode="reflect")
    reference = np.moveaxis(reference, -1, -2)[:, :-1]  # [B, frames, bins], maskgen drops the last frame.
    assert ours.shape == (2, features.num_frames(x.shape[1], hop), n_fft // 2 + 1) == reference.shape
    np.testing.assert_allclose(ours, reference, atol=1e-5 * np.abs(reference).max())


@pytest.mark.parametrize("n_fft,hop,win_length,length", [(256, 64, None, 4000), (200, 50, 160, 4000),
                                                         (256, 64, None, 4030)])
def test_istft_inverts_stft(n_fft, hop, win_length, length):
    x = _signals(length)
    back = np.asarray(features.istft(features.stft(x, n_fft, hop, win_length), n_fft, hop, win_length, length=length))
    np.testing.assert_allclose(back, x, atol=5e-5)


def test_log_mel_matches_librosa_and_jits_with_a_static_config():
    cfg = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=40, mel_scale="htk", norm=None, power=2.0)
    x = _signals()
    ours = np.asarray(jax.jit(features.log_mel, static_argnums=1)(x, cfg))
    mel = librosa.feature.melspectrogram(y=x, sr=SR, n_fft=256, hop_length=64, n_mels=40, htk=True, norm=None,
                                         power=2.0, center=True, pad_mode="reflect")
    mel = np.moveaxis(mel, -1, -2)[:, :-1]
    np.testing.assert_allclose(np.asarray(features.mel_spectrogram(x, cfg)), mel, rtol=1e-4, atol=1e-6 * mel.max())
    reference = np.log(np.maximum(mel, cfg.log_floor))
    assert ours.shape == (2, 62, 40)
    loud = mel > 1e-3  # Near the floor float32 rounding of tiny mels dominates the log.
    np.testing.assert_allclose(ours[loud], reference[loud], atol=1e-3)
    assert ours.min() >= np.log(cfg.log_floor) - 1e-6


def test_scaled_log_mel_is_a_fixed_invertible_affine_map():
    lm = np.array([np.log(1e-5), 2.5, -4.5], np.float32)
    np.testing.assert_allclose(np.asarray(features.scale_log_mel(lm)), [-1.0, 1.0, 0.0], atol=3e-3)
    np.testing.assert_allclose(np.asarray(features.unscale_log_mel(features.scale_log_mel(lm))), lm, atol=1e-5)


def _spectral_convergence(target: np.ndarray, audio, n_fft: int, hop: int) -> float:
    rebuilt = np.abs(np.asarray(features.stft(audio, n_fft, hop)))
    return float(np.linalg.norm(rebuilt - target) / np.linalg.norm(target))


def test_griffin_lim_converges_and_recovers_a_sine():
    n_fft, hop, length = 256, 64, 4000
    x = _signals(length)
    magnitude = np.abs(np.asarray(features.stft(x, n_fft, hop)))
    errors = [_spectral_convergence(magnitude, features.griffin_lim(magnitude, n_fft, hop, num_iters=n,
                                                                    length=length), n_fft, hop)
              for n in (0, 8, 32)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors
    # Momentum (fast Griffin-Lim) beats plain Griffin-Lim at the same number of iterations.
    plain = _spectral_convergence(magnitude, features.griffin_lim(magnitude, n_fft, hop, num_iters=32, momentum=0.0,
                                                                  length=length), n_fft, hop)
    assert errors[2] < plain
    t = np.arange(length) / SR
    sine = (0.8 * np.sin(2 * np.pi * 440.0 * t))[None].astype(np.float32)
    back = np.asarray(features.griffin_lim(np.abs(np.asarray(features.stft(sine, n_fft, hop))), n_fft, hop,
                                           num_iters=16, length=length))[0]
    peak_hz = np.argmax(np.abs(np.fft.rfft(back))) * SR / length
    assert abs(peak_hz - 440.0) <= 4.0, peak_hz


def test_mel_to_audio_gives_back_the_mel_spectrogram():
    cfg = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=40)
    t = np.arange(4000) / SR
    tones = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1800 * t))[None].astype(np.float32)
    target = np.asarray(features.log_mel(tones, cfg))
    audio = np.asarray(features.mel_to_audio(target, cfg, num_iters=32, length=4000))
    assert audio.shape == (1, 4000) and np.isfinite(audio).all()
    distance = np.abs(np.asarray(features.log_mel(audio, cfg)) - target).mean()
    noise = np.random.default_rng(1).standard_normal((1, 4000)).astype(np.float32) * 0.3
    baseline = np.abs(np.asarray(features.log_mel(noise, cfg)) - target).mean()
    assert distance < 0.1 * baseline, (distance, baseline)
    peak_hz = np.argmax(np.abs(np.fft.rfft(audio[0]))) * SR / 4000
    assert abs(peak_hz - 440.0) <= SR / cfg.n_fft / 3, peak_hz  # Within a third of an STFT bin.


def test_mel_config_round_trips_and_rejects_bad_values():
    cfg = features.MelConfig(sample_rate=SR, n_fft=512, hop=128, mel_scale="htk", norm=None)
    assert features.MelConfig.from_dict(cfg.to_dict()) == cfg and hash(cfg) == hash(features.MelConfig.from_dict(cfg.to_dict()))
    with pytest.raises(ValueError, match="mel_scale"):
        features.MelConfig(mel_scale="bark")
    with pytest.raises(ValueError, match="norm"):
        features.MelConfig(norm="l2")
    with pytest.raises(ValueError, match="power"):
        features.MelConfig(power=0.0)
    with pytest.raises(ValueError, match="f_max"):
        features.MelConfig(sample_rate=16000, f_max=9000.0)
    with pytest.raises(ValueError, match="unknown key"):
        features.MelConfig.from_dict({"hop_length": 256})


def test_bad_shapes_give_clear_errors():
    assert features.num_frames(16000, 256) == 62
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        features.stft(np.zeros((2, 100, 1), np.float32), 64, 16)
    with pytest.raises(ValueError, match="too short"):
        features.stft(np.zeros((1, 20), np.float32), 64, 16)
    with pytest.raises(ValueError, match="frames"):
        features.griffin_lim(np.ones((1, 10, 33), np.float32), 64, 16, length=400)


def test_log_mel_gradients_are_finite_on_silence():
    """Losses on log-mels of clips with exact digital silence (zero STFT bins) must still train."""
    cfg = features.MelConfig(sample_rate=SR, n_fft=256, hop=64, n_mels=32)
    x = np.zeros((1, 2000), np.float32)
    x[0, 1000:1200] = np.sin(np.arange(200) * 0.3)
    target = np.asarray(features.log_mel(0.5 * x, cfg))
    grad = np.asarray(jax.grad(lambda a: abs(features.log_mel(a, cfg) - target).mean())(x))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0
