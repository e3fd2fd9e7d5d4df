"""Audio: the JAX front end (STFT, mel filterbanks, log-mel, Griffin-Lim) shared by audio recipes and evaluators.

`maskgen.audio.features` holds the functions (re-exported here); `maskgen.audio.espeak` (imported
by its full path) synthesises the local speech dataset. The package sits in layer 1: it imports
only numpy/jax and maskgen's lowest layer, and everything above may use it. See docs/audio.md.
"""

from maskgen.audio.features import (
    LOG_MEL_CENTER,
    LOG_MEL_HALF_RANGE,
    MelConfig,
    config_filterbank,
    griffin_lim,
    hann_window,
    hz_to_mel,
    istft,
    log_mel,
    mel_filterbank,
    mel_spectrogram,
    mel_to_audio,
    mel_to_hz,
    mel_to_linear,
    mono_clips,
    num_frames,
    scale_log_mel,
    spectrogram,
    stft,
    unscale_log_mel,
)

__all__ = [
    "LOG_MEL_CENTER", "LOG_MEL_HALF_RANGE", "MelConfig", "config_filterbank", "griffin_lim", "hann_window",
    "hz_to_mel", "istft", "log_mel", "mel_filterbank", "mel_spectrogram", "mel_to_audio", "mel_to_hz",
    "mel_to_linear", "mono_clips", "num_frames", "scale_log_mel", "spectrogram", "stft", "unscale_log_mel",
]
