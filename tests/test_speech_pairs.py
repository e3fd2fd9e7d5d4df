"""Prompt/target pairs of the speech source (concat=2) and trimmed clips (trim=True): MaskGCT's data."""

import numpy as np
import pytest

from maskgen.audio import espeak
from maskgen.data import speech

pytestmark = pytest.mark.skipif(not espeak.available(), reason="needs libespeak-ng (pip install espeakng-loader)")

SMALL = dict(words="digits", sample_rate=8000, clip_seconds=0.5, renditions=1)  # as tests/test_speech_data.py
T = 4000


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("speech_cache"))
    speech.ensure_cache(speech.SpeechOptions(**SMALL), root)
    return root


def _source(cache_root, split="train", **options):
    return speech.SpeechSource(split, speech.SpeechOptions(**SMALL, **options), cache_root)


def test_single_clips_are_unchanged_and_share_the_cache(cache_root):
    plain = _source(cache_root)
    explicit = _source(cache_root, concat=1, trim=False)
    assert explicit.folder == plain.folder  # the cache key does not depend on concat/trim
    assert set(plain.fields) == {"audio", "label"} and speech.fields(explicit.options) == plain.fields
    for i in (0, 7, len(plain) - 1):
        a, b = plain[i], explicit[i]
        assert set(a) == {"audio", "label", "voice"}
        assert a["audio"].tobytes() == b["audio"].tobytes() and a["label"] == b["label"]


def test_pairs_are_same_voice_other_clip_and_deterministic(cache_root):
    plain = _source(cache_root)
    pairs = _source(cache_root, concat=2)
    again = _source(cache_root, concat=2)
    fields = speech.fields(pairs.options)
    assert fields["audio"].shape == (2 * T, 1)
    assert set(fields) == {"audio", "label", "prompt_label", "voice", "prompt_samples", "num_samples"}
    np.testing.assert_array_equal(pairs._prompts, again._prompts)
    voices = np.asarray(speech.ensure_cache(pairs.options, cache_root)[1]["voices"])
    assert np.all(voices[pairs._prompts] == pairs._voices)  # same voice
    assert np.all(pairs._prompts != pairs._indices)  # never the target itself
    assert len(np.unique(pairs._prompts)) > len(pairs) // 3  # spread over the voice's clips
    for i in (0, 5, len(pairs) - 1):
        item = pairs[i]
        assert set(item) == set(fields)
        # Untrimmed: the prompt clip then the target clip, whole.
        prompt_clip = np.asarray(pairs._clips()[pairs._prompts[i]], np.float32) / 32768.0
        np.testing.assert_array_equal(item["audio"][:T, 0], prompt_clip)
        np.testing.assert_array_equal(item["audio"][T:], plain[i]["audio"])
        assert item["prompt_samples"] == T and item["num_samples"] == 2 * T
        assert item["label"] == plain[i]["label"] and item["voice"] == plain[i]["voice"]
        assert item["prompt_label"] == speech.ensure_cache(pairs.options, cache_root)[1]["labels"][pairs._prompts[i]]
    # The test split pairs within its own (held-out) voices.
    test_pairs = _source(cache_root, "test", concat=2)
    assert all(speech.is_test_voice(speech.VOICES[v]) for v in voices[test_pairs._prompts])


def test_trimmed_pairs_are_the_sounds_back_to_back_then_zeros(cache_root):
    plain = _source(cache_root)
    trimmed = _source(cache_root, concat=2, trim=True)
    for i in (0, 3, 11):
        item = trimmed[i]
        p, n = int(item["prompt_samples"]), int(item["num_samples"])
        prompt_clip = np.asarray(trimmed._clips()[trimmed._prompts[i]], np.float32) / 32768.0
        target = plain[i]["audio"][:, 0]
        want_prompt = speech.trim_silence(prompt_clip, SMALL["sample_rate"])
        want_target = speech.trim_silence(target, SMALL["sample_rate"])
        assert 0 < p < n <= 2 * T and p == want_prompt.size and n - p == want_target.size
        np.testing.assert_array_equal(item["audio"][:p, 0], want_prompt)
        np.testing.assert_array_equal(item["audio"][p:n, 0], want_target)
        assert not item["audio"][n:].any()  # padding
        # Trimming removed the clip's silent padding: each part starts within 10 ms of its sound.
        margin = int(0.01 * SMALL["sample_rate"])
        for part in (item["audio"][:p, 0], item["audio"][p:n, 0]):
            loud = np.flatnonzero(np.abs(part) > speech.TRIM_THRESHOLD * np.abs(part).max())
            assert loud[0] <= margin and part.size - 1 - loud[-1] <= margin
    single = _source(cache_root, trim=True)[0]
    assert set(single) == {"audio", "label", "voice", "num_samples"}
    assert single["audio"].shape == (T, 1) and not single["audio"][int(single["num_samples"]):].any()


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="speech concat must be 1 .* or 2"):
        speech.SpeechOptions(concat=3)
    with pytest.raises(ValueError, match="speech concat must be 1"):
        speech.SpeechOptions(concat=2.0)
    with pytest.raises(ValueError, match="speech trim must be true or false"):
        speech.SpeechOptions(trim="yes")


def test_pair_fields_survive_the_input_pipeline(cache_root):
    from maskgen.data import make_preprocess

    pairs = _source(cache_root, concat=2, trim=True)
    example = make_preprocess(speech.fields(pairs.options))(pairs[2])
    assert example["audio"].dtype == np.float32 and example["audio"].shape == (2 * T, 1)
    for name in ("label", "prompt_label", "voice", "prompt_samples", "num_samples"):
        assert example[name].dtype == np.int32 and example[name].shape == ()
    info = speech.info(pairs.options)
    assert info["num_classes"] == 10 and info["concat"] == 2 and info["trim"] is True
