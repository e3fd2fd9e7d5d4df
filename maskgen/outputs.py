"""One writer per output kind: PNG images, WAV audio and UTF-8 text files.

Evaluators return these kinds in `EvalResult`; the loop (`MetricWriter.write_outputs`),
`maskgen sample` and `maskgen edit` all write them through here, so a file of each kind is
written one way everywhere. Writes go to a temporary name and are renamed into place, so a killed
run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import io
import os
import wave

import numpy as np


def _target(path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    return path + ".tmp"


def write_png(path: str, image: np.ndarray, zoom: int = 1) -> str:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG, each pixel repeated `zoom` times along both axes."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"write_png needs uint8 [H, W, 1|3|4], got {image.dtype} {list(image.shape)}")
    if zoom > 1:
        image = np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1)
    tmp = _target(path)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float [T] or [T, C] in [-1, 1] (clipped) -> int16 [T, C]."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2:
        raise ValueError(f"audio must be [T] or [T, C], got shape {list(audio.shape)}")
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """float [T] or [T, C] in [-1, 1] -> the bytes of a 16-bit PCM WAV file (standard library only)."""
    if int(sample_rate) <= 0:
        raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
    pcm = to_pcm16(audio)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as f:
        f.setnchannels(pcm.shape[1])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.astype("<i2").tobytes())
    return buffer.getvalue()


def write_wav(path: str, audio: np.ndarray, sample_rate: int) -> str:
    """float [T] or [T, C] in [-1, 1] -> 16-bit PCM WAV at `sample_rate` Hz."""
    data = wav_bytes(audio, sample_rate)
    tmp = _target(path)
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def read_wav(path: str) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV -> (float32 [T, C] in [-1, 1], sample rate)."""
    with wave.open(path, "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is read here, got {8 * f.getsampwidth()}-bit")
        frames = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
        return frames.astype(np.float32) / 32767.0, f.getframerate()


def write_text(path: str, text: str) -> str:
    """A string -> UTF-8 text file."""
    tmp = _target(path)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def join_samples(texts) -> str:
    """Several text samples as one file: a numbered header line before each."""
    return "".join(f"=== sample {i} ===\n{t}\n" for i, t in enumerate(texts))
