"""Real audio: folders of labelled WAV/FLAC files, and the checks every audio input goes through.

Folder layout (the image-folder rules, maskgen.data.prepare, with audio files):

* data_dir/<class>/**/<clip>.wav|.flac: one class per subfolder (class names sorted; label = index
  in that order). A stable hash of each file's path relative to data_dir sends about test_fraction
  of the files to "test": int.from_bytes(sha256(relpath).digest()[:8], "big") < test_fraction * 2**64.
* data_dir/train/<class>/... and data_dir/test/<class>/... (or val/): those folders are the splits.
* Speech Commands' own layout (Warden, arXiv 1804.03209): a testing_list.txt in data_dir names the
  test files (relative paths), and they form "test"; validation_list.txt's files form
  "validation"; every other file is "train". Folders whose name starts with "_" (its
  _background_noise_) are not classes: they are left out, and the log lists them.

Hidden files and folders are ignored; files with other extensions are not audio and are ignored.

Every clip is read with soundfile (libsndfile: WAV, FLAC and more) and made to fit the dataset:
`sample_rate` Hz, mono, exactly round(sample_rate * clip_seconds) samples (centred: zero padded, or
its middle kept). Bad input is an error naming the file and the fix, never silently dropped:

* a file soundfile cannot decode (corrupt, not audio, a truncated FLAC), or a WAV whose data chunk
  is cut short (which libsndfile would read, shorter, without complaint): BadAudioError;
* another sample rate: resampled (polyphase, scipy.signal.resample_poly) when `resample` is True,
  and the log says how many files were resampled from which rates; refused naming both rates when
  False;
* more than one channel where mono is expected: refused naming the channel count, unless
  `mix_to_mono` (the channel mean);
* shorter than `min_seconds` (default 0.1 s: longer than one 1024-sample STFT frame at 16 kHz,
  64 ms, and shorter than any spoken word): refused.

`maskgen prepare --source audio_folder --skip-bad` instead skips unusable files and lists each with
its reason in metadata.json (and on the console).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import operator
import os
from collections import Counter

import numpy as np

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac")
SPLITS_LIST_FILES = {"test": "testing_list.txt", "validation": "validation_list.txt"}


class BadAudioError(ValueError):
    """An audio input that cannot be used as it is; `path` (a file, or e.g. "tfds:x train[3]") and
    `reason` are attributes."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot use audio {path}: {reason}")


@dataclasses.dataclass(frozen=True)
class AudioOptions:
    """How clips are made to fit a dataset (see the module docstring)."""

    sample_rate: int = 16000
    clip_seconds: float = 1.0
    resample: bool = True
    mix_to_mono: bool = False
    min_seconds: float = 0.1

    def __post_init__(self):
        if not isinstance(self.sample_rate, (int, np.integer)) or not 1000 <= self.sample_rate <= 384000:
            raise ValueError(f"sample_rate must be an integer in [1000, 384000] Hz, got {self.sample_rate!r}")
        if not isinstance(self.clip_seconds, (int, float)) or not 0 < self.clip_seconds <= 600:
            raise ValueError(f"clip_seconds must be a number in (0, 600], got {self.clip_seconds!r}")
        if not isinstance(self.min_seconds, (int, float)) or self.min_seconds < 0:
            raise ValueError(f"min_seconds must be a number >= 0, got {self.min_seconds!r}")
        for name in ("resample", "mix_to_mono"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        object.__setattr__(self, "sample_rate", int(self.sample_rate))
        object.__setattr__(self, "clip_seconds", float(self.clip_seconds))

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))


def audio_fields(options: AudioOptions, num_classes: int) -> dict:
    from maskgen.data.specs import AudioSpec, LabelSpec

    fields = {"audio": AudioSpec((options.num_samples, 1), options.sample_rate)}
    if num_classes:
        fields["label"] = LabelSpec(num_classes)
    return fields


def to_float(samples: np.ndarray) -> np.ndarray:
    """PCM samples as float32 in [-1, 1]: int16 / 2**15, int32 / 2**31, uint8 (x - 128) / 128,
    floats unchanged."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype == np.int32:
        return (samples.astype(np.float64) / 2.0**31).astype(np.float32)
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32)
    raise ValueError(f"audio samples must be int16, int32, uint8 or float, got {samples.dtype}")


def check_format(where: str, sample_rate: int, channels: int, num_frames: int, options: AudioOptions) -> None:
    """Raises BadAudioError when a clip of this format cannot be used (see the module docstring)."""
    if channels > 1 and not options.mix_to_mono:
        raise BadAudioError(where, f"it has {channels} channels, and mono audio is expected; pass "
                                   "mix_to_mono=True (--mix-to-mono) to average the channels, or convert it to mono")
    if channels < 1:
        raise BadAudioError(where, "it has no channels")
    if sample_rate != options.sample_rate and not options.resample:
        raise BadAudioError(where, f"its sample rate is {sample_rate} Hz, not the dataset's {options.sample_rate} Hz, "
                                   "and resample=False refuses to resample it; pass resample=True (--resample) "
                                   f"or convert it to {options.sample_rate} Hz")
    seconds = num_frames / sample_rate if sample_rate > 0 else 0.0
    if seconds < options.min_seconds or num_frames == 0:
        raise BadAudioError(where, f"it is {seconds:.3f} s long ({num_frames} samples at {sample_rate} Hz), "
                                   f"shorter than min_seconds={options.min_seconds} s; delete it, or lower min_seconds")


def conform(samples: np.ndarray, sample_rate: int, options: AudioOptions, where: str) -> np.ndarray:
    """Clip [T] or [T, C] (any PCM dtype) -> float32 [num_samples, 1] at options.sample_rate;
    BadAudioError (naming `where`) when it cannot be used."""
    from maskgen.data.speech import centre_clip, resample

    audio = to_float(samples)
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.ndim != 2:
        raise BadAudioError(where, f"audio must be [T] or [T, channels], got shape {list(audio.shape)}")
    check_format(where, sample_rate, audio.shape[1], audio.shape[0], options)
    if not np.all(np.isfinite(audio)):
        raise BadAudioError(where, "it holds NaN or infinite samples")
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if sample_rate != options.sample_rate:
        mono = resample(mono, sample_rate, options.sample_rate)
    return np.clip(centre_clip(mono, options.num_samples), -1.0, 1.0).astype(np.float32)[:, None]


_FIX = "fix or delete the file, or pass --skip-bad to `maskgen prepare` to skip and list unusable files"


def wav_truncation(path: str) -> str | None:
    """Why a RIFF/WAVE file is cut short (its "data" chunk declares more bytes than the file
    holds), or None. libsndfile reads such a file without complaint, just shorter."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return None  # not plain RIFF (RF64, ...): left to libsndfile
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk_id, chunk_size = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk_id == b"data":
                available = size - offset - 8
                if 0 < chunk_size < 0xFFFFFFFF and available < chunk_size:  # 0 / 0xFFFFFFFF: streamed, unknown
                    return f"it is truncated: its data chunk declares {chunk_size} bytes but the file holds {available}"
                return None
            offset += 8 + chunk_size + (chunk_size & 1)
    return None


def read_info(path: str) -> tuple[int, int, int]:
    """(sample_rate, channels, frames) from the file's header; BadAudioError if unreadable or (WAV)
    truncated."""
    import soundfile

    try:
        info = soundfile.info(path)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types on garbage
        raise BadAudioError(path, f"soundfile cannot read it ({type(e).__name__}: {e}); {_FIX}") from e
    if path.lower().endswith(".wav"):
        truncated = wav_truncation(path)
        if truncated:
            raise BadAudioError(path, f"{truncated}; {_FIX}")
    return int(info.samplerate), int(info.channels), int(info.frames)


def load_clip(path: str, options: AudioOptions) -> np.ndarray:
    """One file decoded and conformed: float32 [num_samples, 1]; BadAudioError naming the file."""
    import soundfile

    sample_rate, channels, frames = read_info(path)
    check_format(path, sample_rate, channels, frames, options)  # before decoding the whole file
    try:
        samples, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001
        raise BadAudioError(path, f"soundfile cannot decode it ({type(e).__name__}: {e}); {_FIX}") from e
    return conform(samples, sample_rate, options, path)


# ---------------------------------------------------------------- folders


def _is_audio(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _audio_below(root: str) -> list[str]:
    """Audio file paths under root (recursive, hidden entries skipped), sorted, relative to root."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in filenames if _is_audio(f)]
    return sorted(found)


def _scan_classes(root: str) -> dict[str, list[str]]:
    """{class name: [absolute paths]} for a folder of class subfolders."""
    classes, ignored = {}, []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or not os.path.isdir(path):
            continue
        if name.startswith("_"):
            ignored.append(name)
            continue
        files = _audio_below(path)
        if files:
            classes[name] = [os.path.join(path, f) for f in files]
    loose = [f for f in sorted(os.listdir(root)) if _is_audio(f) and os.path.isfile(os.path.join(root, f))]
    if loose:
        raise ValueError(f"{root} holds audio files outside class folders ({loose[:3]}...): put every clip in "
                         "a folder named after its class (the label)")
    if ignored:
        log.info("%s: folders starting with '_' are not classes, left out: %s", root, ignored)
    return classes


def _is_test_path(relpath: str, test_fraction: float) -> bool:
    key = int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big")
    return key < test_fraction * 2**64


def _read_list(path: str) -> set[str]:
    with open(path) as f:
        return {os.path.normpath(line.strip()).replace(os.sep, "/") for line in f if line.strip()}


def find_audio(data_dir: str, test_fraction: float = 0.1) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """(class_names, {split: [(absolute path, label), ...]}) for a folder laid out as the module
    docstring says."""
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"audio folder {data_dir!r} does not exist (give it as data_dir / --input)")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    data_dir = os.path.abspath(data_dir)
    test_dir = next((d for d in ("test", "val") if os.path.isdir(os.path.join(data_dir, d))), None)
    lists = {split: os.path.join(data_dir, name) for split, name in SPLITS_LIST_FILES.items()}
    if os.path.isdir(os.path.join(data_dir, "train")) and test_dir:
        train = _scan_classes(os.path.join(data_dir, "train"))
        test = _scan_classes(os.path.join(data_dir, test_dir))
        unknown = sorted(set(test) - set(train))
        if unknown:
            raise ValueError(f"classes {unknown} are in {data_dir}/{test_dir} but not in {data_dir}/train")
        per_split = {"train": train, "test": test}
        class_names = sorted(train)
    else:
        classes = _scan_classes(data_dir)
        listed = {split: _read_list(path) for split, path in lists.items() if os.path.isfile(path)}
        per_split = {"train": {}, "test": {}, **({"validation": {}} if "validation" in listed else {})}
        for name, paths in classes.items():
            for p in paths:
                rel = os.path.relpath(p, data_dir).replace(os.sep, "/")
                if listed:
                    split = next((s for s, names in listed.items() if rel in names), "train")
                else:
                    split = "test" if _is_test_path(rel, test_fraction) else "train"
                per_split[split].setdefault(name, []).append(p)
        for split, names in listed.items():
            found = sum(len(v) for v in per_split[split].values())
            if found != len(names):
                log.warning("%s names %d files, %d of them found in class folders", lists[split], len(names), found)
        class_names = sorted(classes)
    if not class_names:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in class folders under {data_dir}")
    label = {name: i for i, name in enumerate(class_names)}
    items = {split: [(p, label[name]) for name in sorted(classes) for p in classes[name]]
             for split, classes in per_split.items()}
    return class_names, items


def check_files(paths: list[str], options: AudioOptions) -> dict[int, int]:
    """Reads every header and raises BadAudioError on the first unusable file; returns
    {sample rate: number of files} of those that will be resampled (logged)."""
    resampled = Counter()
    for path in paths:
        sample_rate, channels, frames = read_info(path)
        check_format(path, sample_rate, channels, frames, options)
        if sample_rate != options.sample_rate:
            resampled[sample_rate] += 1
    if resampled:
        log.warning("resampling %d of %d audio files to %d Hz (resample=True): %s", sum(resampled.values()),
                    len(paths), options.sample_rate,
                    ", ".join(f"{n} at {rate} Hz" for rate, n in sorted(resampled.items())))
    return dict(resampled)


class AudioFolderSource:
    """One split of a folder of labelled WAV/FLAC clips, read directly: items {"audio": float32
    [T, 1], "label": int32}. Every header is checked when the source is made (bad files raise
    BadAudioError naming them), and each clip is decoded when it is read."""

    def __init__(self, data_dir: str, split: str, options: AudioOptions | None = None, test_fraction: float = 0.1):
        self.options = options or AudioOptions()
        self.data_dir, self.split = data_dir, split
        self.class_names, items = find_audio(data_dir, test_fraction)
        if split not in items:
            raise ValueError(f"split {split!r} not in audio folder {data_dir!r}; valid splits are {sorted(items)}")
        self._items = items[split]
        self.resampled = check_files([p for p, _ in self._items], self.options)

    @property
    def fields(self) -> dict:
        return audio_fields(self.options, len(self.class_names))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index) -> dict:
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for audio folder split {self.split!r} ({len(self)} clips)")
        path, label = self._items[i]
        return {"audio": load_clip(path, self.options), "label": np.int32(label)}

    def __repr__(self) -> str:
        return f"AudioFolderSource(data_dir={self.data_dir!r}, split={self.split!r}, num_examples={len(self)})"


def folder_info(data_dir: str, options: AudioOptions, test_fraction: float = 0.1) -> dict:
    """source_info of an audio folder (file names only: no file is opened)."""
    from maskgen.data.specs import legacy_info

    class_names, items = find_audio(data_dir, test_fraction)
    info = legacy_info(audio_fields(options, len(class_names)), {s: len(v) for s, v in items.items()})
    info.update(class_names=class_names, sample_rate=options.sample_rate, clip_seconds=options.clip_seconds)
    return info
