"""Speech synthesis with eSpeak NG, through ctypes on the library that the `espeakng-loader` wheel ships.

eSpeak NG (https://github.com/espeak-ng/espeak-ng) is a formant synthesiser: it turns text into
22,050 Hz 16-bit mono speech with no model weights, so maskgen can make a real speech dataset
locally (maskgen.data.speech) with nothing downloaded. The `espeakng-loader` pip wheel bundles
libespeak-ng and its voice data; where it is missing, the Debian package `espeak-ng` (which
installs libespeak-ng.so.1 and /usr/lib/x86_64-linux-gnu/espeak-ng-data) works too.

Voices are "<language>+<variant>": a language/accent file (lang/gmw/en-US, ...) and a variant
file (voices/!v/m3, ...) that sets pitch, formants and roughness, i.e. a speaker.

Determinism. The library keeps state between utterances that no API resets (the phase of its
pitch "flutter" table and of its waveform generator, the Klatt noise source), so the same call
gives slightly different samples depending on what was spoken before in the process. A fresh
library always starts from the same state, so `synthesize_batch` runs a list of requests in a
fresh child process (this file run as a script, which imports only numpy): the same list gives
the same bytes every time. `synthesize` (in this process) is for listening and quick checks.
The library is process-global, so every call here holds one lock.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 22050  # what espeak_Initialize returns for synchronous output

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_PHONEMES_IPA = 0x02

RATE_RANGE = (80, 450)  # words per minute that espeak accepts
PARAM_RANGE = (0, 100)  # pitch and pitch range (50 is a voice's own)

_INSTALL_HINT = ("install the wheel that bundles it, `pip install espeakng-loader` (a dependency of maskgen), "
                 "or the Debian package: `apt-get install espeak-ng`")

_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class EspeakError(RuntimeError):
    """libespeak-ng refused a request (or is missing: EspeakNotFoundError)."""


class EspeakNotFoundError(EspeakError, ImportError):
    """libespeak-ng or its data cannot be found or loaded; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One utterance: `text` in `voice` ("en-us+m3"), at `rate` words per minute, `pitch` and
    `pitch_range` 0..100 (50: the voice's own)."""

    text: str
    voice: str
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self):
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError(f"text to speak must be a non-empty string, got {self.text!r}")
        for name, value, (lo, hi) in (("rate", self.rate, RATE_RANGE), ("pitch", self.pitch, PARAM_RANGE),
                                      ("pitch_range", self.pitch_range, PARAM_RANGE)):
            if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"espeak {name} must be an integer in [{lo}, {hi}], got {value!r}")


def _bundled_paths() -> tuple[str, str] | None:
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
    except Exception:  # noqa: BLE001 - a broken install: fall back to the system library
        return None


def _system_paths() -> tuple[str, str] | None:
    import ctypes.util

    library = ctypes.util.find_library("espeak-ng")
    if not library:
        return None
    for data in ("/usr/lib/x86_64-linux-gnu/espeak-ng-data", "/usr/lib/aarch64-linux-gnu/espeak-ng-data",
                 "/usr/share/espeak-ng-data", "/usr/local/share/espeak-ng-data", "/usr/lib/espeak-ng-data"):
        if os.path.isdir(data):
            return library, data
    return None


def library_paths() -> tuple[str, str]:
    """(libespeak-ng shared library, espeak-ng-data directory): the wheel's, else the system's."""
    paths = _bundled_paths() or _system_paths()
    if paths is None or (os.sep in paths[0] and not os.path.isfile(paths[0])):
        raise EspeakNotFoundError(f"speech synthesis needs libespeak-ng and its data, which were not found: "
                                  f"{_INSTALL_HINT}")
    return paths


class _Engine:
    """The loaded library, initialised once; every use holds `lock`."""

    def __init__(self):
        library, data = library_paths()
        try:
            lib = ctypes.CDLL(library)
        except OSError as e:
            raise EspeakNotFoundError(f"cannot load libespeak-ng from {library}: {e}; {_INSTALL_HINT}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_Info.restype = ctypes.c_char_p
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if rate != SAMPLE_RATE:
            raise EspeakNotFoundError(f"espeak_Initialize with data {data} returned {rate}, expected sample rate "
                                      f"{SAMPLE_RATE}; the espeak-ng data may be incomplete: {_INSTALL_HINT}")
        self.lib, self.data_path, self.library_path = lib, data, library
        self.version = lib.espeak_Info(None).decode()
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self._seed = getattr(lib, "espeak_ng_SetRandSeed", None)
        if self._seed is not None:
            self._seed.argtypes = [ctypes.c_long]

    def _collect(self, wav, num_samples, events):
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (num_samples,)).copy())
        return 0  # 0: go on synthesising

    def synthesize(self, request: Request, seed: int = 0) -> np.ndarray:
        lib = self.lib
        with self.lock:
            self._chunks = []
            status = lib.espeak_SetVoiceByName(request.voice.encode())
            if status != 0:
                raise EspeakError(f"espeak-ng has no voice {request.voice!r} (status {status}); "
                                  f"voices are <language>+<variant>, e.g. 'en-us+m3' (see available_variants())")
            for param, value in ((_PARAM_RATE, request.rate), (_PARAM_PITCH, request.pitch),
                                 (_PARAM_RANGE, request.pitch_range)):
                lib.espeak_SetParameter(param, int(value), 0)
            if self._seed is not None:
                self._seed(seed)  # the breath and Klatt noise generators
            text = request.text.encode()
            status = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            lib.espeak_Synchronize()
            if status != 0:
                raise EspeakError(f"espeak_Synth failed (status {status}) on {request}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def phoneme_clauses(self, text: str, ipa: bool, voice: str = "en", separator: str = "") -> list[str]:
        """One phoneme string per clause. speak_lib.h: phonememode bit 1 = IPA; bits 8-23 = a
        character written between phonemes (0: none)."""
        mode = (_PHONEMES_IPA if ipa else 0) | (ord(separator) << 8 if separator else 0)
        out = []
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise EspeakError(f"espeak-ng has no voice {voice!r}")
            buffer = ctypes.create_string_buffer(text.encode())
            pointer = ctypes.c_char_p(ctypes.addressof(buffer))
            # One clause per call; the library moves `pointer` on and sets it to NULL at the end.
            while pointer.value:
                clause = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, mode)
                if clause and clause.decode().strip():
                    out.append(clause.decode().strip())
        return out


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def available() -> bool:
    """Whether libespeak-ng and its data can be found (without loading them)."""
    try:
        library_paths()
    except EspeakError:
        return False
    return True


def version() -> str:
    """The loaded libespeak-ng's version string, e.g. "1.52.0"."""
    return _engine().version


def available_variants() -> list[str]:
    """The variant (speaker) names in the data's voices/!v folder, sorted."""
    folder = os.path.join(library_paths()[1], "voices", "!v")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def check_voice(voice: str) -> None:
    """Raises EspeakError unless `voice` is "<language>" or "<language>+<variant>" with a variant
    file that exists: espeak itself falls back to the plain language for an unknown variant."""
    _, _, variant = voice.partition("+")
    if variant and variant not in available_variants():
        raise EspeakError(f"espeak-ng has no voice variant {variant!r} (in {voice!r}); "
                          f"the data at {library_paths()[1]} has {available_variants()}")


def synthesize(text: str, voice: str = "en-us", *, rate: int = 175, pitch: int = 50, pitch_range: int = 50,
               seed: int = 0) -> np.ndarray:
    """`text` spoken in this process: int16 [T] at SAMPLE_RATE. Not bit-exact across calls (the
    library keeps state between utterances); use synthesize_batch for reproducible samples."""
    check_voice(voice)
    return _engine().synthesize(Request(text, voice, rate, pitch, pitch_range), seed)


def text_to_phonemes(text: str, *, ipa: bool = True, voice: str = "en", separator: str = "") -> str:
    """eSpeak NG's phonemes for `text` in `voice`'s language, IPA (default) or eSpeak's ASCII
    (Kirshenbaum-like) codes; clauses joined by spaces. E.g. "seven eight" -> "sˈɛvən ˈeɪt".
    `separator` (one character) is written between phonemes by eSpeak itself, so multi-character
    phonemes ("aɪ", "tʃ") stay whole (maskgen.audio.phonemes splits on it)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if len(separator) > 1:
        raise ValueError(f"separator must be one character or empty, got {separator!r}")
    check_voice(voice)
    return " ".join(_engine().phoneme_clauses(text, ipa, voice, separator))


def synthesize_batch(requests: list[Request], *, seeds: list[int] | None = None,
                     timeout: float = 600.0) -> list[np.ndarray]:
    """Each request spoken in order by a fresh library in a child process: int16 [T_i] arrays at
    SAMPLE_RATE. Deterministic: the same requests (and seeds) give the same bytes every time."""
    requests = [r if isinstance(r, Request) else Request(**r) for r in requests]
    seeds = list(range(len(requests))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(requests):
        raise ValueError(f"{len(seeds)} seeds for {len(requests)} requests")
    if not requests:
        return []
    for voice in sorted({r.voice for r in requests}):
        check_voice(voice)
    with tempfile.TemporaryDirectory(prefix="maskgen_espeak_") as tmp:
        job, out = os.path.join(tmp, "requests.json"), os.path.join(tmp, "samples.npz")
        with open(job, "w") as f:
            json.dump({"requests": [dataclasses.asdict(r) for r in requests], "seeds": seeds}, f)
        # Run this file as a script: it imports only numpy, not maskgen (and not JAX).
        # PYTHONSAFEPATH (Python 3.11+): keep this file's folder off the child's import path.
        done = subprocess.run([sys.executable, os.path.abspath(__file__), job, out], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONSAFEPATH": "1"})
        if done.returncode != 0 or not os.path.isfile(out):
            raise EspeakError(f"the espeak-ng synthesis process failed (exit {done.returncode}): "
                              f"{done.stderr.strip()[-2000:]}")
        with np.load(out) as saved:
            samples, lengths = saved["samples"], saved["lengths"]
    if len(lengths) != len(requests) or int(lengths.sum()) != samples.size:
        raise EspeakError(f"the espeak-ng synthesis process returned {len(lengths)} utterances for "
                          f"{len(requests)} requests")
    return np.split(samples, np.cumsum(lengths)[:-1])


def _worker(job_path: str, out_path: str) -> None:
    """Child side of synthesize_batch: reads the requests, writes concatenated samples + lengths."""
    with open(job_path) as f:
        job = json.load(f)
    engine = _engine()
    clips = [engine.synthesize(Request(**r), seed) for r, seed in zip(job["requests"], job["seeds"])]
    tmp = out_path + ".part.npz"
    np.savez(tmp, samples=np.concatenate(clips) if clips else np.zeros(0, np.int16),
             lengths=np.array([len(c) for c in clips], np.int64))
    os.replace(tmp, out_path)


if __name__ == "__main__":
    try:
        _worker(*sys.argv[1:3])
    except EspeakError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
