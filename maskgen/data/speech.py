"""Spoken words synthesised locally with eSpeak NG: maskgen's default audio dataset (source "speech").

Nothing is downloaded: maskgen.audio.espeak drives the libespeak-ng that the `espeakng-loader`
wheel ships. The dataset is every word of a word set, in every voice, `renditions` times with a
seeded random speaking rate, pitch and pitch range (Speech Commands-style one-word clips, after
Warden, arXiv 1804.03209; the digits set is an "AudioMNIST" stand-in).

* Words: "digits" (zero..nine, labels 0..9), "commands" (yes no up down left right on off stop go)
  or "all" (digits then commands, 20 classes). The label is the word's index in its set.
* Voices: <accent>+<variant>, ACCENTS x VARIANTS (40 voices): the variant (voices/!v/m1, f2, ...)
  sets pitch, formants and roughness, a speaker; the accent sets pronunciation.
* Split by speaker: every voice whose variant is in TEST_VARIANTS (one male, one female: 8 of the
  40 voices, 20%) is in "test" and never in "train", so test accuracy measures generalisation to
  unseen speakers.
* A rendition draws rate U{RATE_RANGE} words/minute, pitch U{PITCH_RANGE} and pitch range
  U{PITCH_SPREAD_RANGE} (espeak's 0..100 scales) from a generator seeded by SHA-256 of
  "<word>|<voice>|<rendition>", so adding words or voices never changes the other clips.
* Each utterance (22,050 Hz int16) is cut to its sound (first to last sample above 1% of its peak,
  with 10 ms kept each side), resampled to `sample_rate` with a polyphase filter
  (scipy.signal.resample_poly) and centred in a clip of exactly round(sample_rate * clip_seconds)
  samples: zero padded when shorter, its centre kept when longer. Values are int16 / 32768
  (float32 in [-1, 1)), at the voice's own loudness (not normalised).

Prompt/target pairs (`concat=2`, MaskGCT's in-context training examples, arXiv 2409.00750): each
example is a PROMPT clip followed by its TARGET clip, both of the same voice: the prompt is another
rendition of that voice (any word, never the target clip itself) chosen by a generator seeded by
SHA-256 of "prompt|<word>|<voice>|<rendition>" of the target, so the pairing is fixed. With
`trim=True` each part is first cut to its sound (the threshold and margin above), so the two
utterances follow each other without the clips' silent padding. The parts are concatenated and
zero padded to concat x the clip length; fields: "audio" [2T, 1], "label" (the target's word),
"prompt_label" (the prompt's word), "voice" (index into VOICES), "prompt_samples" (samples of the
prompt part) and "num_samples" (valid samples; the rest is padding). `concat=1, trim=True` gives
single trimmed clips, left-aligned, with "voice" and "num_samples". Pairs and trimming are made
when an example is read, from the same cache as single clips (its key does not depend on them).

The clips are generated once (a few seconds: synthesis runs in one fresh child process, which is
what makes it bit-exact, see maskgen.audio.espeak) and cached under
<cache root>/speech/<key>/ (cache root: data_dir if given, else $MASKGEN_CACHE, else
~/.cache/maskgen; key: a hash of everything that shapes the clips, the espeak-ng version included).
The cache is written to a temporary folder and renamed into place, and its manifest records the
SHA-256 of the audio, checked once per process: a partial or corrupt cache is rebuilt (with a
warning), never used.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import operator
import os
import shutil
import tempfile

import numpy as np

log = logging.getLogger(__name__)

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORD_SETS = {"digits": DIGITS, "commands": COMMANDS, "all": DIGITS + COMMANDS}

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-029")  # American, British, Scottish, Caribbean
VARIANTS = ("m1", "m2", "m3", "m4", "m7", "f1", "f2", "f3", "f4", "f5")
TEST_VARIANTS = ("m3", "f4")  # held-out speakers
VOICES = tuple(f"{accent}+{variant}" for variant in VARIANTS for accent in ACCENTS)

RATE_RANGE = (120, 240)  # words per minute (espeak's default is 175)
PITCH_RANGE = (25, 75)  # espeak pitch 0..100, 50 = the voice's own
PITCH_SPREAD_RANGE = (20, 80)  # espeak pitch range (intonation), 50 = the voice's own
TRIM_THRESHOLD = 0.01  # of the utterance's peak
TRIM_MARGIN_SECONDS = 0.01

SPLITS = ("train", "test")
CACHE_FORMAT = "maskgen.speech.v1"
_AUDIO_FILE, _MANIFEST_FILE = "audio.npy", "manifest.json"


class SpeechCacheError(ValueError):
    """A speech cache folder that is incomplete or does not match its manifest."""


@dataclasses.dataclass(frozen=True)
class SpeechOptions:
    """The settings that shape the dataset (the source options of config.data)."""

    words: str = "digits"
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    renditions: int = 8
    concat: int = 1  # 1: single clips; 2: a prompt clip then a target clip of the same voice
    trim: bool = False  # cut each clip to its sound before concatenating (and padding at the end)

    def __post_init__(self):
        if self.words not in WORD_SETS:
            raise ValueError(f"speech words must be one of {sorted(WORD_SETS)}, got {self.words!r}")
        if not isinstance(self.sample_rate, (int, np.integer)) or not 1000 <= self.sample_rate <= 192000:
            raise ValueError(f"speech sample_rate must be an integer in [1000, 192000] Hz, got {self.sample_rate!r}")
        if not isinstance(self.clip_seconds, (int, float)) or not 0.1 <= self.clip_seconds <= 10.0:
            raise ValueError(f"speech clip_seconds must be a number in [0.1, 10], got {self.clip_seconds!r}")
        if not isinstance(self.renditions, (int, np.integer)) or not 1 <= self.renditions <= 1000:
            raise ValueError(f"speech renditions must be an integer in [1, 1000], got {self.renditions!r}")
        whole = isinstance(self.concat, (int, np.integer)) and not isinstance(self.concat, bool)
        if not whole or self.concat not in (1, 2):
            raise ValueError(f"speech concat must be 1 (single clips) or 2 (prompt then target clip of one voice), "
                             f"got {self.concat!r}")
        if not isinstance(self.trim, (bool, np.bool_)):
            raise ValueError(f"speech trim must be true or false, got {self.trim!r}")
        object.__setattr__(self, "sample_rate", int(self.sample_rate))
        object.__setattr__(self, "clip_seconds", float(self.clip_seconds))
        object.__setattr__(self, "renditions", int(self.renditions))
        object.__setattr__(self, "concat", int(self.concat))
        object.__setattr__(self, "trim", bool(self.trim))

    @property
    def word_list(self) -> tuple[str, ...]:
        return WORD_SETS[self.words]

    @property
    def num_samples(self) -> int:
        """Samples of one clip."""
        return int(round(self.sample_rate * self.clip_seconds))

    @property
    def paired(self) -> bool:
        """Whether examples carry the pair fields (prompt/target layout, or trimmed clips)."""
        return self.concat > 1 or self.trim

    @property
    def example_samples(self) -> int:
        """Samples of one example's audio: concat x the clip length."""
        return self.concat * self.num_samples


def is_test_voice(voice: str) -> bool:
    return voice.partition("+")[2] in TEST_VARIANTS


def split_voices(split: str) -> tuple[str, ...]:
    """The voices of `split`, in VOICES order."""
    _check_split(split)
    return tuple(v for v in VOICES if is_test_voice(v) == (split == "test"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown speech split {split!r}; valid splits are {list(SPLITS)}")


def rendition_params(word: str, voice: str, rendition: int) -> dict:
    """{"rate", "pitch", "pitch_range"} of one rendition, from its own seeded generator."""
    seed = int.from_bytes(hashlib.sha256(f"{word}|{voice}|{rendition}".encode()).digest()[:8], "big")
    rng = np.random.default_rng(seed)
    return {"rate": int(rng.integers(RATE_RANGE[0], RATE_RANGE[1] + 1)),
            "pitch": int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
            "pitch_range": int(rng.integers(PITCH_SPREAD_RANGE[0], PITCH_SPREAD_RANGE[1] + 1))}


def clip_plan(options: SpeechOptions) -> list[tuple[str, str, int]]:
    """(word, voice, rendition) of every clip, in storage order: by voice, then word, then rendition."""
    return [(word, voice, r) for voice in VOICES for word in options.word_list for r in range(options.renditions)]


# ---------------------------------------------------------------- signal processing


def trim_silence(samples: np.ndarray, sample_rate: int, threshold: float = TRIM_THRESHOLD,
                 margin_seconds: float = TRIM_MARGIN_SECONDS) -> np.ndarray:
    """`samples` from the first to the last value above threshold x peak, plus a margin each side."""
    magnitude = np.abs(samples.astype(np.float32))
    loud = np.flatnonzero(magnitude > threshold * magnitude.max(initial=0.0))
    if loud.size == 0:
        return samples[:0]
    margin = int(round(margin_seconds * sample_rate))
    return samples[max(0, loud[0] - margin):loud[-1] + 1 + margin]


def resample(audio: np.ndarray, rate_in: int, rate_out: int, axis: int = -1) -> np.ndarray:
    """Band-limited polyphase resampling (scipy.signal.resample_poly, Kaiser window) along `axis`."""
    if rate_in == rate_out:
        return np.asarray(audio, np.float32)
    from scipy.signal import resample_poly

    g = math.gcd(int(rate_in), int(rate_out))
    return resample_poly(np.asarray(audio, np.float32), rate_out // g, rate_in // g, axis=axis).astype(np.float32)


def centre_clip(audio: np.ndarray, length: int) -> np.ndarray:
    """`audio` [T, ...] centred in `length` samples: zero padded both sides, or its middle kept."""
    audio = np.asarray(audio)
    n = audio.shape[0]
    if n >= length:
        start = (n - length) // 2
        return audio[start:start + length]
    before = (length - n) // 2
    pad = [(before, length - n - before)] + [(0, 0)] * (audio.ndim - 1)
    return np.pad(audio, pad)


def _to_int16(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


def synthesize_clips(options: SpeechOptions) -> np.ndarray:
    """Every clip of clip_plan(options), int16 [N, T] at options.sample_rate (not cached)."""
    from maskgen.audio import espeak

    plan = clip_plan(options)
    requests = [espeak.Request(word, voice, **rendition_params(word, voice, r)) for word, voice, r in plan]
    seeds = list(range(len(plan)))  # per-utterance seeds for the noise sources
    utterances = [trim_silence(u, espeak.SAMPLE_RATE) for u in espeak.synthesize_batch(requests, seeds=seeds)]
    empty = [plan[i] for i, u in enumerate(utterances) if u.size == 0]
    if empty:
        raise RuntimeError(f"espeak-ng produced silence for {len(empty)} clips, e.g. {empty[:3]}")
    # Resample in batches of similar length: each batch is zero padded to its longest utterance
    # (zeros resample to zeros), and each result is cut back to its own length.
    ratio = options.sample_rate / espeak.SAMPLE_RATE
    out = np.empty((len(plan), options.num_samples), np.int16)
    by_length = np.argsort([u.size for u in utterances], kind="stable")
    for start in range(0, len(by_length), 256):
        batch = by_length[start:start + 256]
        padded = np.zeros((len(batch), max(utterances[i].size for i in batch)), np.float32)
        for row, i in enumerate(batch):
            padded[row, :utterances[i].size] = utterances[i]
        resampled = resample(padded, espeak.SAMPLE_RATE, options.sample_rate, axis=1)
        for row, i in enumerate(batch):
            n = max(1, int(round(utterances[i].size * ratio)))
            out[i] = _to_int16(centre_clip(resampled[row, :n], options.num_samples))
    return out


# ---------------------------------------------------------------- the cache


def cache_root(data_dir: str | None = None) -> str:
    """data_dir if given, else $MASKGEN_CACHE, else ~/.cache/maskgen."""
    if data_dir:
        return os.path.expanduser(os.fspath(data_dir))
    return os.environ.get("MASKGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "maskgen")


def _cache_key(options: SpeechOptions, espeak_version: str) -> dict:
    return {"format": CACHE_FORMAT, "espeak": espeak_version, "words": list(options.word_list),
            "sample_rate": options.sample_rate, "clip_seconds": options.clip_seconds,
            "renditions": options.renditions, "voices": list(VOICES), "test_variants": list(TEST_VARIANTS),
            "rate": RATE_RANGE, "pitch": PITCH_RANGE, "pitch_range": PITCH_SPREAD_RANGE,
            "trim": [TRIM_THRESHOLD, TRIM_MARGIN_SECONDS], "resampler": "scipy.signal.resample_poly"}


def cache_dir_for(options: SpeechOptions, data_dir: str | None = None) -> str:
    """The folder that holds (or will hold) the clips for `options`."""
    from maskgen.audio import espeak

    key = json.dumps(_cache_key(options, espeak.version()), sort_keys=True)
    return os.path.join(cache_root(data_dir), "speech", hashlib.sha256(key.encode()).hexdigest()[:16])


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_cache(folder: str, options: SpeechOptions) -> None:
    """Generates the clips into a temporary sibling of `folder` and renames it into place."""
    from maskgen.audio import espeak

    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    clips = synthesize_clips(options)
    plan = clip_plan(options)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    try:
        audio_path = os.path.join(tmp, _AUDIO_FILE)
        np.save(audio_path, clips)
        manifest = {
            "format": CACHE_FORMAT, "key": _cache_key(options, espeak.version()),
            "shape": list(clips.shape), "dtype": "int16", "sha256": _sha256_file(audio_path),
            "labels": [options.word_list.index(word) for word, _, _ in plan],
            "voices": [VOICES.index(voice) for _, voice, _ in plan],
        }
        with open(os.path.join(tmp, _MANIFEST_FILE), "w") as f:
            json.dump(manifest, f)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):  # not a lost race with another process: a real failure
                raise
            log.info("another process wrote the speech cache %s first; using its copy", folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=64)
def _verified(folder: str, audio_size: int, audio_mtime_ns: int, manifest_mtime_ns: int) -> dict:
    """The manifest of `folder` once its audio matches it; cached per file state (checked once per process)."""
    with open(os.path.join(folder, _MANIFEST_FILE)) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise SpeechCacheError(f"{folder}/{_MANIFEST_FILE} is not valid JSON: {e}") from e
    audio_path = os.path.join(folder, _AUDIO_FILE)
    if manifest.get("format") != CACHE_FORMAT:
        raise SpeechCacheError(f"{folder} has cache format {manifest.get('format')!r}, expected {CACHE_FORMAT!r}")
    digest = _sha256_file(audio_path)
    if digest != manifest.get("sha256"):
        raise SpeechCacheError(f"{audio_path} ({audio_size} bytes) does not match the SHA-256 in its manifest")
    try:
        audio = np.load(audio_path, mmap_mode="r")
    except ValueError as e:
        raise SpeechCacheError(f"{audio_path} is not a readable .npy file: {e}") from e
    n = audio.shape[0]
    if list(audio.shape) != manifest["shape"] or audio.dtype != np.int16 or len(manifest["labels"]) != n \
            or len(manifest["voices"]) != n:
        raise SpeechCacheError(f"{audio_path} holds {audio.dtype} {list(audio.shape)}, the manifest says "
                               f"int16 {manifest['shape']} with {len(manifest['labels'])} labels")
    return manifest


def _check_cache(folder: str) -> dict:
    """The manifest of a complete, uncorrupted cache folder; SpeechCacheError otherwise."""
    audio_path, manifest_path = os.path.join(folder, _AUDIO_FILE), os.path.join(folder, _MANIFEST_FILE)
    missing = [p for p in (audio_path, manifest_path) if not os.path.isfile(p)]
    if missing:
        raise SpeechCacheError(f"speech cache {folder} is incomplete: {missing} missing")
    audio_stat, manifest_stat = os.stat(audio_path), os.stat(manifest_path)
    return _verified(folder, audio_stat.st_size, audio_stat.st_mtime_ns, manifest_stat.st_mtime_ns)


def ensure_cache(options: SpeechOptions, data_dir: str | None = None) -> tuple[str, dict]:
    """(cache folder, manifest) for `options`, generating the clips if they are not cached yet,
    and rebuilding a cache that is partial or corrupt (with a warning naming what was wrong)."""
    folder = cache_dir_for(options, data_dir)
    if os.path.isdir(folder):
        try:
            return folder, _check_cache(folder)
        except (SpeechCacheError, OSError, KeyError, TypeError) as err:
            log.warning("speech cache %s is unusable (%s); rebuilding it", folder, err)
            broken = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.broken-", dir=os.path.dirname(folder))
            try:
                os.rename(folder, os.path.join(broken, "old"))
            except OSError:
                pass  # another process moved or rebuilt it: fall through and check again
            shutil.rmtree(broken, ignore_errors=True)
    if not os.path.isdir(folder):
        log.info("synthesising the speech dataset (%s) into %s", options, folder)
        _write_cache(folder, options)
    return folder, _check_cache(folder)


# ---------------------------------------------------------------- sources and arrays


def _split_indices(manifest: dict, split: str) -> np.ndarray:
    _check_split(split)
    test = np.array([is_test_voice(v) for v in VOICES])
    voices = np.asarray(manifest["voices"], np.int64)
    return np.flatnonzero(test[voices] == (split == "test"))


def fields(options: SpeechOptions) -> dict:
    """The example fields. Integer fields without a spec kind of their own (voice index, sample
    counts) are LabelSpecs: int32 scalars in [0, num_classes)."""
    from maskgen.data.specs import AudioSpec, LabelSpec

    out = {"audio": AudioSpec((options.example_samples, 1), options.sample_rate),
           "label": LabelSpec(len(options.word_list))}
    if options.paired:
        if options.concat > 1:
            out["prompt_label"] = LabelSpec(len(options.word_list))
            out["prompt_samples"] = LabelSpec(options.example_samples + 1)
        out["voice"] = LabelSpec(len(VOICES))
        out["num_samples"] = LabelSpec(options.example_samples + 1)
    return out


def prompt_partners(manifest: dict, options: SpeechOptions, indices: np.ndarray) -> np.ndarray:
    """For each clip of `indices` (positions in the manifest), the manifest position of its prompt:
    another clip of the same voice (never itself), drawn from a generator seeded by the target's
    (word, voice, rendition), so the pairing depends on nothing else (not the split, not the order)."""
    plan = clip_plan(options)
    voices = np.asarray(manifest["voices"], np.int64)
    same_voice = {v: np.flatnonzero(voices == v) for v in np.unique(voices[indices])}
    partners = np.empty(len(indices), np.int64)
    for row, i in enumerate(indices):
        word, voice, rendition = plan[i]
        seed = int.from_bytes(hashlib.sha256(f"prompt|{word}|{voice}|{rendition}".encode()).digest()[:8], "big")
        pool = same_voice[voices[i]]
        pick = int(np.random.default_rng(seed).integers(len(pool) - 1))
        partners[row] = pool[pick + (pool[pick] >= i)]  # skip the target itself (pool is sorted)
    return partners


def trim_clip(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A stored clip cut to its sound (trim_silence's threshold and margin); a silent clip stays whole."""
    trimmed = trim_silence(audio, sample_rate)
    return trimmed if trimmed.size else audio


def pair_example(prompt: np.ndarray | None, target: np.ndarray, length: int) -> tuple[np.ndarray, int, int]:
    """(prompt then target, zero padded to `length`, as float32 [length, 1]; prompt samples; valid
    samples). `prompt` None: the target alone."""
    parts = [target] if prompt is None else [prompt, target]
    valid = sum(p.size for p in parts)
    if valid > length:
        raise ValueError(f"a speech example of {valid} samples does not fit its {length}-sample audio")
    audio = np.zeros((length, 1), np.float32)
    audio[:valid, 0] = np.concatenate(parts)
    return audio, (0 if prompt is None else prompt.size), valid


def split_sizes(options: SpeechOptions) -> dict[str, int]:
    """{split: number of clips}, from the plan alone (nothing is synthesised)."""
    per_voice = len(options.word_list) * options.renditions
    return {split: per_voice * len(split_voices(split)) for split in SPLITS}


def info(options: SpeechOptions) -> dict:
    """The source_info of the speech source (metadata only: nothing is synthesised)."""
    from maskgen.data.specs import legacy_info

    out = legacy_info(fields(options), split_sizes(options))
    out.update(class_names=list(options.word_list), sample_rate=options.sample_rate,
               clip_seconds=options.clip_seconds, words=options.words, renditions=options.renditions,
               **({"concat": options.concat, "trim": options.trim} if options.paired else {}),
               voice_names=list(VOICES), split_voices={s: list(split_voices(s)) for s in SPLITS})
    return out


class SpeechSource:
    """Random-access source over one speech split: items {"audio": float32 [T, 1], "label": int32,
    "voice": int32 (index into VOICES)}. Pickles as its folder and indices; reads lazily (memmap)."""

    def __init__(self, split: str, options: SpeechOptions | None = None, data_dir: str | None = None):
        self.options = options or SpeechOptions()
        self.split = split
        self.folder, manifest = ensure_cache(self.options, data_dir)
        self._indices = _split_indices(manifest, split)
        self._labels = np.asarray(manifest["labels"], np.int32)[self._indices]
        self._voices = np.asarray(manifest["voices"], np.int32)[self._indices]
        if self.options.concat > 1:
            self._prompts = prompt_partners(manifest, self.options, self._indices)
            self._prompt_labels = np.asarray(manifest["labels"], np.int32)[self._prompts]
        self._audio = None

    @property
    def fields(self) -> dict:
        return fields(self.options)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_audio"] = None  # reopened lazily in the worker
        return state

    def _clips(self) -> np.ndarray:
        if self._audio is None:
            self._audio = np.load(os.path.join(self.folder, _AUDIO_FILE), mmap_mode="r")
        return self._audio

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index) -> dict:
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for speech {self.split!r} ({len(self)} examples)")
        audio = np.asarray(self._clips()[self._indices[i]], np.float32) / 32768.0
        if not self.options.paired:
            return {"audio": audio[:, None], "label": self._labels[i], "voice": self._voices[i]}
        prompt = None
        if self.options.concat > 1:
            prompt = np.asarray(self._clips()[self._prompts[i]], np.float32) / 32768.0
        if self.options.trim:
            rate = self.options.sample_rate
            audio, prompt = trim_clip(audio, rate), None if prompt is None else trim_clip(prompt, rate)
        audio, prompt_samples, valid = pair_example(prompt, audio, self.options.example_samples)
        item = {"audio": audio, "label": self._labels[i], "voice": self._voices[i],
                "num_samples": np.int32(valid)}
        if self.options.concat > 1:
            item.update(prompt_label=self._prompt_labels[i], prompt_samples=np.int32(prompt_samples))
        return item

    def __repr__(self) -> str:
        return f"SpeechSource(split={self.split!r}, {self.options}, num_examples={len(self)})"


def speech_arrays(split: str, *, words: str = "digits", sample_rate: int = 16000, clip_seconds: float = 1.0,
                  renditions: int = 8, cache_dir: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split as arrays: (audio float32 [N, T] in [-1, 1), labels int32 [N], voices int32 [N]
    (indices into VOICES)). Cached on disk; `cache_dir` overrides the cache root."""
    options = SpeechOptions(words, sample_rate, clip_seconds, renditions)
    folder, manifest = ensure_cache(options, cache_dir)
    indices = _split_indices(manifest, split)
    audio = np.load(os.path.join(folder, _AUDIO_FILE), mmap_mode="r")[indices].astype(np.float32) / 32768.0
    return (audio, np.asarray(manifest["labels"], np.int32)[indices],
            np.asarray(manifest["voices"], np.int32)[indices])
