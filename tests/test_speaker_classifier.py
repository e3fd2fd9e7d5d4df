"""The speaker classifier: the similarity metric by hand, a small network trained briefly on the small
speech set (held-out voices well above chance, gain and padding invariance, the cache), and (slow) the
default network on the 8 held-out voices, real and Griffin-Lim resynthesised."""

import json
import math
import os

import numpy as np
import pytest

from maskgen.perception import speaker_classifier as sc

# The speech source's small setting: 32 train voices, 8 held out, one rendition of each of 10 digits.
SMALL = dict(words="digits", sample_rate=8000, clip_seconds=0.5, renditions=1)
SR = SMALL["sample_rate"]
TINY = dict(steps=200, batch_size=32, learning_rate=5e-3, channels=32, embedding_dim=32)


# ---------------------------------------------------------------------------------------------
# The metric on hand-made embeddings.
# ---------------------------------------------------------------------------------------------
class FirstTwoSamples:
    """A stand-in classifier whose embedding of a clip is its first two samples, l2-normalised."""

    def embed(self, audio, batch_size=256):
        x = np.asarray(audio, np.float64)[:, :2]
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clips(*vectors, length: int = 5) -> np.ndarray:
    out = np.zeros((len(vectors), length))
    out[:, :2] = vectors
    return out


def test_speaker_similarity_by_hand():
    # Voice A's references average to (0.8, 0.4), i.e. (2, 1) / sqrt(5) once normalised; B is (0, 1); C is (-1, 0).
    references = {"A": _clips([1, 0], [0.6, 0.8]), "B": _clips([0, 1]), "C": _clips([-1, 0], [-2, 0])}
    samples = _clips([1, 0], [0.6, 0.8])
    prompts = _clips([0, 1], [0.6, 0.8])
    result = sc.speaker_similarity(FirstTwoSamples(), samples, prompts, references, ["A", "B"])
    a = 2 / math.sqrt(5)  # cos((1, 0), A) and cos((0.6, 0.8), A)
    own = [a, 0.8]  # sample 0 against A, sample 1 against B
    other = [(0 + -1) / 2, (a + -0.6) / 2]  # the mean over the two other voices
    assert result["prompt_voice_similarity"] == pytest.approx(np.mean(own))
    assert result["other_voice_similarity"] == pytest.approx(np.mean(other))
    assert result["margin"] == pytest.approx(np.mean(own) - np.mean(other))
    assert result["prompt_similarity"] == pytest.approx((0.0 + 1.0) / 2)
    # Sample 1 is nearer A (0.894) than its own B (0.8): one of two samples is right.
    assert result["nearest_voice_accuracy"] == 0.5
    assert result["chance_accuracy"] == pytest.approx(1 / 3)
    assert (result["num_voices"], result["num_samples"]) == (3, 2)
    # Without prompt clips there is no prompt similarity; the rest is unchanged.
    no_prompts = sc.speaker_similarity(FirstTwoSamples(), samples, None, references, ["A", "B"])
    assert "prompt_similarity" not in no_prompts
    assert no_prompts["margin"] == result["margin"]


def test_speaker_similarity_bad_input():
    references = {"A": _clips([1, 0]), "B": _clips([0, 1])}
    with pytest.raises(ValueError, match=r"prompt voice\(s\) \['Z'\] have no reference clips"):
        sc.speaker_similarity(FirstTwoSamples(), _clips([1, 0]), None, references, ["Z"])
    with pytest.raises(ValueError, match="2 prompt voices for samples"):
        sc.speaker_similarity(FirstTwoSamples(), _clips([1, 0]), None, references, ["A", "B"])
    with pytest.raises(ValueError, match="at least 2 voices"):
        sc.speaker_similarity(FirstTwoSamples(), _clips([1, 0]), None, {"A": references["A"]}, ["A"])
    with pytest.raises(ValueError, match=r"no reference clips for voice\(s\) \['B'\]"):
        sc.speaker_similarity(FirstTwoSamples(), _clips([1, 0]), None, {**references, "B": np.zeros((0, 5))}, ["A"])


# ---------------------------------------------------------------------------------------------
# A small network, trained briefly on the small speech set (module-scoped).
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def speech():
    from maskgen.data.speech import speech_arrays

    return {split: speech_arrays(split, **SMALL) for split in ("train", "test")}


@pytest.fixture(scope="module")
def tiny_classifier(speech):
    from maskgen.data.speech import VOICES, split_voices

    train_audio, _, train_voices = speech["train"]
    names = split_voices("train")
    ids = np.array([names.index(VOICES[v]) for v in train_voices])
    return sc.fit_speaker_classifier(train_audio, ids, sample_rate=SR, voice_names=names,
                                     extra_info={"dataset": sc.dataset_options("digits", SR, 0.5)}, **TINY)


def test_speaker_classifier_separates_held_out_voices(tiny_classifier, speech):
    from maskgen.data.speech import VOICES

    (_, _, train_voices), (test_audio, test_words, test_voices) = speech["train"], speech["test"]
    assert not set(test_voices.tolist()) & set(train_voices.tolist())  # The test voices are new speakers.
    assert tiny_classifier.info["final_loss"] < tiny_classifier.info["first_loss"] - 1.0
    # References: digits 0-4 of each held-out voice; queries: digits 5-9 (other words, unseen speakers).
    is_reference = test_words < 5
    scores = sc.held_out_scores(tiny_classifier, test_audio, test_voices, is_reference, voice_names=VOICES)
    assert scores["num_voices"] == 8 and scores["num_samples"] == 40
    assert scores["margin"] > 0.3, scores  # an untrained network's is about 0
    # Ranking: a query is more similar to its own voice than to another held-out voice (chance: 1/2).
    embeddings = tiny_classifier.embed(test_audio)
    voices, centroids = sc.voice_centroids({v: embeddings[is_reference & (test_voices == v)]
                                            for v in np.unique(test_voices)})
    sims = embeddings[~is_reference] @ centroids.T
    own = sims[np.arange(len(sims)), [voices.index(v) for v in test_voices[~is_reference]]]
    assert np.mean(own[:, None] > sims) * 8 / 7 > 0.75  # over the 7 other voices of each query
    # The speakers (variants m3 and f4, each in 4 accents): nearly always told apart. The accents of one
    # speaker are harder: they differ only in pronunciation (the full network: 0.8 over all 8 voices).
    variant = np.array([VOICES[v].split("+")[1] for v in test_voices])
    by_variant = sc.similarity_from_embeddings(
        embeddings[~is_reference], {k: embeddings[is_reference & (variant == k)] for k in ("m3", "f4")},
        list(variant[~is_reference]))
    assert by_variant["nearest_voice_accuracy"] >= 0.9, by_variant


def test_speaker_embeddings_ignore_gain_and_padding(tiny_classifier, speech):
    audio = speech["test"][0][:16]
    emb = tiny_classifier.embed(audio)
    assert emb.shape == (16, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # Level normalisation: a gain of +-6 dB gives the same embedding, up to the mel bins near the log floor.
    for gain in (0.5, 2.0):
        assert np.sum(tiny_classifier.embed(gain * audio) * emb, axis=1).min() > 0.999
    # Silence (whole hops of it) before and after the clip, as in padded or concatenated clips: the same voice.
    hop = tiny_classifier.mel.hop
    padded = np.pad(audio, ((0, 0), (8 * hop, 8 * hop)))[..., None]  # [B, T, 1] is accepted too
    cosines = np.sum(tiny_classifier.embed(padded) * emb, axis=1)
    assert cosines.min() > 0.95, cosines
    with pytest.raises(ValueError, match="speaker classifier input"):
        tiny_classifier.embed(np.zeros((2, 100, 2)))
    with pytest.raises(ValueError, match="shorter than half an STFT window"):
        tiny_classifier.embed(np.zeros((2, 16)))


def test_speaker_classifier_cache_round_trip(tiny_classifier, speech, tmp_path):
    options = sc.dataset_options("digits", SR, 0.5)
    tiny = sc.training_settings(**TINY)
    # The cache holds the dataset and speech format too; the tiny fixture records only the dataset.
    from maskgen.data.speech import CACHE_FORMAT

    tiny_classifier.info["speech_format"] = CACHE_FORMAT
    path = sc.save_speaker_classifier(tiny_classifier, str(tmp_path), options)
    assert os.path.isfile(path) and path.endswith(".msgpack")
    reloaded = sc.load_speaker_classifier(str(tmp_path), options, tiny)
    assert reloaded is not None and reloaded.voices == tiny_classifier.voices
    audio = speech["test"][0][:4]
    np.testing.assert_array_equal(reloaded.embed(audio), tiny_classifier.embed(audio))
    # Trained otherwise than the defaults, or for other data: not loaded (so get_speaker_classifier retrains).
    assert sc.load_speaker_classifier(str(tmp_path), options) is None
    assert sc.load_speaker_classifier(str(tmp_path), {**options, "words": "commands"}, tiny) is None
    # A JSON that claims other shapes than the stored parameters: rejected, never half-loaded.
    json_path = path[:-len(".msgpack")] + ".json"
    with open(json_path) as f:
        info = json.load(f)
    with open(json_path, "w") as f:
        json.dump({**info, "embedding_dim": 16}, f)
    assert sc.load_speaker_classifier(str(tmp_path), options, {**tiny, "embedding_dim": 16}) is None


# ---------------------------------------------------------------------------------------------
# The default classifier (trains for a minute or two the first time).
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_default_speaker_classifier_on_held_out_voices(tmp_path):
    import jax

    from maskgen.audio import features
    from maskgen.data.speech import VOICES, speech_arrays

    classifier = sc.get_speaker_classifier(cache_dir=str(tmp_path))
    assert sc.get_speaker_classifier(cache_dir=str(tmp_path)) is classifier
    assert len(classifier.voices) == 32 and not any(v.endswith(("+m3", "+f4")) for v in classifier.voices)
    held_out = classifier.info["held_out"]
    assert held_out["num_voices"] == 8 and held_out["nearest_voice_accuracy"] > 0.6, held_out
    assert held_out["prompt_voice_similarity"] - held_out["other_voice_similarity"] > 0.3, held_out
    # Griffin-Lim resynthesis (what generated audio goes through) keeps clips nearest their own voice.
    audio, _, voices = speech_arrays("test")
    is_reference = sc.clip_renditions(len(voices)) < sc.REFERENCE_RENDITIONS
    # The mel codec's front end (experiments/codec_speech_mel.py), Griffin-Lim as its decoder runs it.
    cfg = features.MelConfig(sample_rate=16000, n_fft=512, hop=160, win_length=400, n_mels=80, f_min=20.0)
    resynth = jax.jit(lambda x: features.mel_to_audio(features.log_mel(x, cfg), cfg, length=x.shape[1]))
    queries = audio[~is_reference][::4]  # 80 of the 320 query clips: every voice, every word
    resynthesised = np.concatenate([np.asarray(resynth(queries[i:i + 40])) for i in range(0, len(queries), 40)])
    references = {VOICES[v]: audio[is_reference & (voices == v)] for v in np.unique(voices)}
    scores = sc.speaker_similarity(classifier, resynthesised, None, references,
                                   [VOICES[v] for v in voices[~is_reference][::4]])
    assert scores["nearest_voice_accuracy"] > 0.5, scores
