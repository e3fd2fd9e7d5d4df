"""Audio data: eSpeak NG speech made locally, its cache, `maskgen prepare` of speech and of audio
folders, the audio_folder and tfds audio sources, and the bad-input errors that name the file."""

import json
import logging
import os
import pickle
import sys

import numpy as np
import pytest

from maskgen.audio import espeak
from maskgen.data import make_source, pipeline, source_info, speech
from maskgen.data.audio_files import AudioOptions, BadAudioError, find_audio, load_clip
from maskgen.data.prepare import prepare_audio_folder
from maskgen.data.records import decode_example, encode_example

needs_espeak = pytest.mark.skipif(not espeak.available(), reason="needs libespeak-ng (pip install espeakng-loader)")

# Small and fast: one rendition of each digit in every voice, 8 kHz, half-second clips.
SMALL = dict(words="digits", sample_rate=8000, clip_seconds=0.5, renditions=1)
SMALL_T = 4000


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("speech_cache"))
    speech.ensure_cache(speech.SpeechOptions(**SMALL), root)
    return root


def _sources(cache_root):
    return {split: make_source("speech", split, cache_root, SMALL) for split in speech.SPLITS}


def _log_band_features(audio: np.ndarray) -> np.ndarray:
    """Log band energies of 32 ms frames (numpy only): a crude spectrogram, flattened."""
    frames = audio.reshape(len(audio), -1, 256)  # 4000 samples -> 15 frames after the cut below
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(256), axis=-1))[..., :128]
    bands = spectrum.reshape(*spectrum.shape[:2], 16, 8).mean(-1)
    return np.log(bands + 1e-4).reshape(len(audio), -1)


# ---------------------------------------------------------------- synthesis


@needs_espeak
def test_espeak_batch_is_deterministic_and_words_differ():
    requests = [espeak.Request("seven", "en-us+m3", 160, 40, 60), espeak.Request("two", "en-us+m3", 160, 40, 60),
                espeak.Request("seven", "en+klatt", 200)]
    first, second = espeak.synthesize_batch(requests), espeak.synthesize_batch(requests)
    for a, b in zip(first, second):
        assert a.dtype == np.int16 and a.size > 0.1 * espeak.SAMPLE_RATE
        assert a.tobytes() == b.tobytes()
    seven, two = first[0], first[1]
    n = min(seven.size, two.size)
    assert seven.size != two.size or not np.array_equal(seven[:n], two[:n])
    assert espeak.text_to_phonemes("seven eight") == "sˈɛvən ˈeɪt"
    # espeak itself falls back to the plain language for an unknown variant: refused here instead
    with pytest.raises(espeak.EspeakError, match="no voice variant 'nope'"):
        espeak.synthesize_batch([espeak.Request("one", "en+nope")])


def test_trim_and_centre_by_hand():
    np.testing.assert_array_equal(speech.centre_clip(np.arange(1, 4), 7), [0, 0, 1, 2, 3, 0, 0])
    np.testing.assert_array_equal(speech.centre_clip(np.arange(10), 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(speech.centre_clip(np.ones((2, 1)), 3)[:, 0], [1, 1, 0])  # odd spare: after
    quiet_loud = np.array([0, 1, 50, 0, -100, 0, 2, 0], np.int16)  # 1% of the peak: |x| > 1
    np.testing.assert_array_equal(speech.trim_silence(quiet_loud, 1000, margin_seconds=0), [50, 0, -100, 0, 2])
    np.testing.assert_array_equal(speech.trim_silence(quiet_loud, 1000, margin_seconds=0.001), quiet_loud[1:8])


def test_missing_espeak_names_the_fix(monkeypatch):
    monkeypatch.setattr(espeak, "_bundled_paths", lambda: None)
    monkeypatch.setattr(espeak, "_system_paths", lambda: None)
    assert not espeak.available()
    with pytest.raises(ImportError, match=r"pip install espeakng-loader.*apt-get install espeak-ng"):
        espeak.library_paths()


@needs_espeak
def test_voices_and_held_out_split():
    assert len(set(speech.VOICES)) == len(speech.VOICES) == len(speech.ACCENTS) * len(speech.VARIANTS)
    assert set(speech.VARIANTS) <= set(espeak.available_variants())
    train, test = speech.split_voices("train"), speech.split_voices("test")
    assert not set(train) & set(test) and set(train) | set(test) == set(speech.VOICES)
    assert {v.partition("+")[2] for v in test} == set(speech.TEST_VARIANTS)  # whole speakers held out
    assert 0.15 <= len(test) / len(speech.VOICES) <= 0.3
    assert speech.rendition_params("one", "en+m1", 0) == speech.rendition_params("one", "en+m1", 0)
    assert speech.rendition_params("one", "en+m1", 0) != speech.rendition_params("one", "en+m1", 1)


@needs_espeak
def test_speech_source_labels_voices_and_clips(cache_root):
    sources = _sources(cache_root)
    info = source_info("speech", cache_root, SMALL)
    assert info["num_classes"] == 10 and info["class_names"][7] == "seven" and info["image_shape"] is None
    assert info["fields"]["audio"].shape == (SMALL_T, 1) and info["fields"]["audio"].sample_rate == 8000
    assert info["splits"] == {s: len(src) for s, src in sources.items()} == {"train": 320, "test": 80}
    voices = {}
    for split, src in sources.items():
        items = [src[i] for i in range(len(src))]
        audio = np.stack([x["audio"] for x in items])
        assert audio.dtype == np.float32 and audio.shape == (len(src), SMALL_T, 1)
        assert np.abs(audio).max() <= 1.0 and (np.abs(audio).max(axis=(1, 2)) > 0.05).all()
        # each clip is centred: its sound (above 1% of its peak) starts and ends equally far from the
        # edges (words longer than the clip are cut to their middle, so they reach both edges)
        offsets = []
        for clip in audio[:, :, 0]:
            loud = np.flatnonzero(np.abs(clip) > 0.01 * np.abs(clip).max())
            if loud[0] > 0 and loud[-1] < SMALL_T - 1:
                offsets.append(abs((loud[0] + loud[-1]) / 2 - SMALL_T / 2))
        assert len(offsets) > 0.5 * len(src) and np.mean(np.array(offsets) < 0.03 * SMALL_T) > 0.9
        voices[split] = {speech.VOICES[int(x["voice"])] for x in items}
        assert voices[split] == set(speech.split_voices(split))
        # every (word, voice) pair once per rendition, labels in the word set
        pairs = sorted((int(x["label"]), int(x["voice"])) for x in items)
        assert len(set(pairs)) == len(pairs) == 10 * len(voices[split])
    assert not voices["train"] & voices["test"]
    # Labels really are the spoken words: a linear classifier on crude log spectra, trained on the
    # training voices, recognises the held-out voices' words far above chance (0.1).
    from sklearn.linear_model import LogisticRegression

    arrays = {s: speech.speech_arrays(s, cache_dir=cache_root, **SMALL) for s in speech.SPLITS}
    feats = {s: _log_band_features(a[0][:, :3840]) for s, a in arrays.items()}
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    clf = LogisticRegression(C=0.1, max_iter=500).fit((feats["train"] - mean) / std, arrays["train"][1])
    assert clf.score((feats["test"] - mean) / std, arrays["test"][1]) > 0.5
    np.testing.assert_array_equal(arrays["test"][0][5], sources["test"][5]["audio"][:, 0])
    assert arrays["test"][1][5] == sources["test"][5]["label"] and arrays["test"][2][5] == sources["test"][5]["voice"]
    # pickles as paths and indices (grain workers), and reads the same after
    again = pickle.loads(pickle.dumps(sources["test"]))
    np.testing.assert_array_equal(again[3]["audio"], sources["test"][3]["audio"])


@needs_espeak
def test_cache_is_reused_and_a_corrupt_one_rebuilt(cache_root, monkeypatch, caplog):
    options = speech.SpeechOptions(**SMALL)
    folder, _ = speech.ensure_cache(options, cache_root)
    audio_path = os.path.join(folder, "audio.npy")
    original = open(audio_path, "rb").read()

    def no_synthesis(*args, **kwargs):
        raise AssertionError("a valid cache must be reused, not synthesised again")

    with monkeypatch.context() as patch:
        patch.setattr(speech, "synthesize_clips", no_synthesis)
        assert speech.ensure_cache(options, cache_root)[0] == folder
        # a cache with a flipped byte no longer matches its manifest's SHA-256: rebuilt, not used
        corrupt = bytearray(original)
        corrupt[len(corrupt) // 2] ^= 0xFF
        with open(audio_path, "wb") as f:
            f.write(corrupt)
        with pytest.raises(AssertionError, match="must be reused"):
            speech.ensure_cache(options, cache_root)
    with caplog.at_level(logging.WARNING, logger="maskgen.data.speech"):
        speech.ensure_cache(options, cache_root)
    assert "unusable" in caplog.text and "SHA-256" in caplog.text
    # the rebuild (a fresh synthesis process) gives the same bytes: generation is deterministic
    assert open(audio_path, "rb").read() == original
    # a partial cache (no manifest: a killed writer) is detected too
    os.remove(os.path.join(folder, "manifest.json"))
    with pytest.raises(speech.SpeechCacheError, match="incomplete"):
        speech._check_cache(folder)
    leftovers = [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".")]
    assert not leftovers, leftovers  # temporary and broken folders are cleaned up


# ---------------------------------------------------------------- prepare, records, pipeline


def test_audio_record_roundtrip():
    audio = (np.arange(-8, 8, dtype=np.float32) / 8)[:, None]
    back = decode_example(encode_example({"audio": audio, "label": 3, "voice": 5}))
    np.testing.assert_array_equal(back["audio"], np.clip(audio, -1, 32767 / 32768))
    assert back["audio"].dtype == np.float32 and back["label"] == 3 and back["voice"] == 5


def _cli(*args) -> int:
    """`maskgen ARGS` in this process (a subprocess would spend seconds importing JAX)."""
    from maskgen.main import main

    return main(list(args))


@needs_espeak
def test_prepare_speech_cli_roundtrip_and_pipeline_batches(cache_root, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "speech")
    monkeypatch.setenv("MASKGEN_CACHE", cache_root)
    assert _cli("prepare", "--source", "speech", "--out", out, "--sample-rate", "8000", "--clip-seconds", "0.5",
                "--renditions", "1", "--num-shards", "2") == 0
    stdout = capsys.readouterr().out
    assert "train: 320, test: 80" in stdout and "8000 Hz" in stdout
    info = source_info("array_record", out)
    assert info["fields"]["audio"].shape == (SMALL_T, 1) and info["num_classes"] == 10
    assert info["class_names"][0] == "zero" and info["sample_rate"] == 8000
    # A config written for the speech source runs on the shards: its options must match how they were made.
    assert source_info("array_record", out, {"sample_rate": 8000, "clip_seconds": 0.5, "words": "digits"}) == info
    with pytest.raises(ValueError, match=r"data option sample_rate=16000 does not match .* made with sample_rate=8000"):
        source_info("array_record", out, {"sample_rate": 16000})
    direct = make_source("speech", "test", cache_root, SMALL)
    records = make_source("array_record", "test", out)
    assert len(records) == len(direct)
    for i in (0, 41, len(direct) - 1):  # 16-bit PCM records hold the int16 speech exactly
        a, b = direct[i], records[i]
        np.testing.assert_array_equal(a["audio"], b["audio"])
        assert a["label"] == b["label"] and a["voice"] == b["voice"]
    preprocess = pipeline.make_preprocess(info["fields"])
    batch = next(iter(pipeline.train_dataset(records, preprocess, seed=0, global_batch_size=4)))
    assert set(batch) == {"audio", "label"}
    assert batch["audio"].shape == (4, SMALL_T, 1) and batch["audio"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32


# ---------------------------------------------------------------- audio folders


def _tone(freq, seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture()
def audio_folder(tmp_path):
    import soundfile

    root = tmp_path / "clips"
    for label, freq in (("high", 1000.0), ("low", 250.0)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            ext = "flac" if i % 2 else "wav"
            soundfile.write(str(root / label / f"{i}.{ext}"), _tone(freq, 0.3 + 0.05 * i, 8000), 8000,
                            subtype="PCM_16")
    return root


def _check_tone(audio, freq, rate=8000):
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    assert abs(np.argmax(spectrum) * rate / len(audio) - freq) < 20


def test_audio_folder_source_reads_labelled_clips(audio_folder):
    options = {"sample_rate": 8000, "clip_seconds": 0.5, "test_fraction": 0.3}
    info = source_info("audio_folder", str(audio_folder), options)
    assert info["class_names"] == ["high", "low"] and info["num_classes"] == 2
    assert sum(info["splits"].values()) == 12 and info["fields"]["audio"].shape == (4000, 1)
    for split in ("train", "test"):
        src = make_source("audio_folder", split, str(audio_folder), options)
        for i in range(len(src)):
            item = src[i]
            assert item["audio"].shape == (4000, 1) and item["audio"].dtype == np.float32
            _check_tone(item["audio"], (1000.0, 250.0)[int(item["label"])])
    # train/ + test/ folders, and Speech Commands' testing_list.txt, give the splits
    (audio_folder / "testing_list.txt").write_text("high/0.wav\nlow/3.flac\n")
    _, items = find_audio(str(audio_folder))
    assert sorted(os.path.relpath(p, audio_folder) for p, _ in items["test"]) == ["high/0.wav", "low/3.flac"]
    assert len(items["train"]) == 10


def test_bad_audio_files_are_refused_naming_the_file(audio_folder, tmp_path, caplog):
    import soundfile

    clean = {"sample_rate": 8000, "clip_seconds": 0.5}
    high = audio_folder / "high"

    def refused(name, match, **options):
        with pytest.raises(BadAudioError, match=match) as err:
            for split in ("train", "test"):
                make_source("audio_folder", split, str(audio_folder), {**clean, **options})
        assert name in str(err.value)
        return err.value

    # a corrupt WAV
    (high / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(100))
    refused("corrupt.wav", "soundfile cannot read it")
    with pytest.raises(BadAudioError, match="corrupt.wav"):
        prepare_audio_folder(str(audio_folder), str(tmp_path / "out"), sample_rate=8000, clip_seconds=0.5)
    assert not os.path.exists(tmp_path / "out" / "metadata.json")
    # --skip-bad: skipped and listed, nothing dropped silently
    meta = prepare_audio_folder(str(audio_folder), str(tmp_path / "out"), sample_rate=8000, clip_seconds=0.5,
                                skip_bad=True, test_fraction=0.3)
    assert [os.path.basename(s["path"]) for s in meta["skipped"]] == ["corrupt.wav"]
    assert sum(s["num_examples"] for s in meta["splits"].values()) + len(meta["skipped"]) == 13
    assert json.load(open(tmp_path / "out" / "metadata.json"))["skipped"] == meta["skipped"]
    os.remove(high / "corrupt.wav")
    # a truncated WAV (libsndfile would read its first half without complaint) and a truncated FLAC
    for ext in ("wav", "flac"):
        whole = (high / f"0.{ext}" if ext == "wav" else audio_folder / "low" / "1.flac").read_bytes()
        (high / f"cut.{ext}").write_bytes(whole[:len(whole) // 2])
        with pytest.raises(BadAudioError, match=f"cut.{ext}.*(truncated|cannot decode)"):
            load_clip(str(high / f"cut.{ext}"), AudioOptions(8000, 0.5))
        os.remove(high / f"cut.{ext}")

    # another sample rate: refused naming both rates with resample=False, resampled (and logged) otherwise
    soundfile.write(str(high / "fast.wav"), _tone(1000.0, 0.4, 22050), 22050, subtype="PCM_16")
    err = refused("fast.wav", "22050 Hz", resample=False)
    assert "8000 Hz" in str(err)
    with caplog.at_level(logging.WARNING, logger="maskgen.data.audio_files"):
        sources = [make_source("audio_folder", s, str(audio_folder), clean) for s in ("train", "test")]
    assert "resampling 1 of" in caplog.text and "to 8000 Hz (resample=True): 1 at 22050 Hz" in caplog.text
    src = next(s for s in sources if any(p.endswith("fast.wav") for p, _ in s._items))
    index = next(i for i, (p, _) in enumerate(src._items) if p.endswith("fast.wav"))
    _check_tone(src[index]["audio"], 1000.0)
    meta = prepare_audio_folder(str(audio_folder), str(tmp_path / "out2"), sample_rate=8000, clip_seconds=0.5)
    assert [(os.path.basename(r["path"]), r["sample_rate"]) for r in meta["resampled"]] == [("fast.wav", 22050)]
    os.remove(high / "fast.wav")

    # shorter than min_seconds (less than one frame)
    soundfile.write(str(high / "blip.wav"), _tone(1000.0, 0.02, 8000), 8000, subtype="PCM_16")
    refused("blip.wav", "shorter than min_seconds=0.1")
    os.remove(high / "blip.wav")

    # stereo where mono is expected; mix_to_mono=True averages the channels
    soundfile.write(str(high / "stereo.flac"), _tone(1000.0, 0.4, 8000, channels=2), 8000, subtype="PCM_16")
    refused("stereo.flac", "2 channels")
    for split in ("train", "test"):
        src = make_source("audio_folder", split, str(audio_folder), {**clean, "mix_to_mono": True})
        for i, (path, _) in enumerate(src._items):
            if path.endswith("stereo.flac"):
                _check_tone(src[i]["audio"], 1000.0)
    with pytest.raises(ValueError, match="mix_to_mono must be true or false"):
        AudioOptions(mix_to_mono="yes")


def test_prepare_audio_folder_cli(audio_folder, tmp_path, capsys):
    out = str(tmp_path / "prepared")
    assert _cli("prepare", "--source", "audio_folder", "--input", str(audio_folder), "--out", out,
                "--sample-rate", "8000", "--clip-seconds", "0.5", "--test-fraction", "0.3") == 0
    info = source_info("array_record", out)
    assert info["class_names"] == ["high", "low"] and info["fields"]["audio"].shape == (4000, 1)
    direct = make_source("audio_folder", "train", str(audio_folder),
                         {"sample_rate": 8000, "clip_seconds": 0.5, "test_fraction": 0.3})
    prepared = make_source("array_record", "train", out)
    assert len(prepared) == len(direct) > 0
    for i in range(len(direct)):  # 16-bit files through 16-bit records: exact
        np.testing.assert_array_equal(prepared[i]["audio"], direct[i]["audio"])
        assert prepared[i]["label"] == direct[i]["label"]
    (audio_folder / "low" / "bad.flac").write_bytes(b"fLaC" + bytes(40))
    capsys.readouterr()
    assert _cli("prepare", "--source", "audio_folder", "--input", str(audio_folder), "--out", out) == 1
    stderr = capsys.readouterr().err
    assert "bad.flac" in stderr and "--skip-bad" in stderr


# ---------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def local_speech_commands(tmp_path_factory):
    """A 6-clip stand-in with speech_commands' name, split names and features (int16 Audio at 16 kHz).

    tfds cannot write an Audio feature without TensorFlow, but it stores eagerly decoded audio
    exactly as a Tensor: so the dataset is written with a Tensor and its features.json then says
    Audio, as the real one does."""
    tfds = pytest.importorskip("tensorflow_datasets")
    clips = {"train": [(_tone(440.0 * (1 + i % 2), 0.5 + 0.1 * i, 16000) * 32767).astype(np.int16)
                       for i in range(4)],
             "test": [(_tone(880.0, 0.7, 16000) * 32767).astype(np.int16)] * 2}

    with tfds.core.registered.skip_registration():

        class SpeechCommands(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("0.0.3")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16),
                    "label": tfds.features.ClassLabel(names=["low", "high"]),
                }))

            def _split_generators(self, dl_manager):
                return {name: self._generate_examples(name) for name in clips}

            def _generate_examples(self, split):
                for i, clip in enumerate(clips[split]):
                    yield i, {"audio": clip, "label": 1 if split == "test" else i % 2}

    root = tmp_path_factory.mktemp("tfds")
    builder = SpeechCommands(data_dir=str(root), file_format="array_record")
    builder.download_and_prepare()
    path = os.path.join(builder.data_dir, "features.json")
    features = json.load(open(path))
    features["featuresDict"]["features"]["audio"] = {
        "pythonClassName": "tensorflow_datasets.core.features.audio_feature.Audio",
        "audio": {"shape": {"dimensions": ["-1"]}, "dtype": "int16", "fileFormat": "wav",
                  "sampleRate": "16000", "encoding": "none"}}
    json.dump(features, open(path, "w"))
    assert "tensorflow" not in sys.modules
    return str(root), clips


def test_tfds_audio_dataset_reads_without_tensorflow(local_speech_commands):
    root, clips = local_speech_commands
    info = source_info("tfds:speech_commands", root)
    assert info["sample_rate"] == 16000 and info["class_names"] == ["low", "high"]
    assert info["fields"]["audio"].shape == (16000, 1) and info["splits"] == {"train": 4, "test": 2}
    src = make_source("tfds:speech_commands", "train", root)

    def centred(clip):  # int16 -> float, centred in 1 s
        out = np.zeros(16000, np.float32)
        start = (16000 - len(clip)) // 2
        out[start:start + len(clip)] = clip.astype(np.float32) / 32768
        return out

    found = []  # tfds stores examples in its own (hashed) order: match each one to its clip
    for i in range(len(src)):
        item = src[i]
        matches = [j for j, clip in enumerate(clips["train"]) if np.array_equal(item["audio"][:, 0], centred(clip))]
        assert len(matches) == 1 and item["label"] == matches[0] % 2
        found += matches
    assert sorted(found) == [0, 1, 2, 3]
    # resampled to the rate the config asks for
    low = make_source("tfds:speech_commands", "test", root, {"sample_rate": 8000, "clip_seconds": 0.5})
    assert low.fields["audio"].shape == (4000, 1) and low.fields["audio"].sample_rate == 8000
    _check_tone(low[0]["audio"], 880.0)
    with pytest.raises(BadAudioError, match=r"22050 Hz.*resample=False|resample=False.*22050"):
        make_source("tfds:speech_commands", "test", root, {"sample_rate": 22050, "resample": False})[0]
    assert "tensorflow" not in sys.modules
    batch = next(iter(pipeline.train_dataset(src, pipeline.make_preprocess(info["fields"]), seed=0,
                                             global_batch_size=2)))
    assert batch["audio"].shape == (2, 16000, 1) and batch["label"].shape == (2,)
