"""The mel-spectrogram VQ tokenizer (`model.input="log_mel"`) and SpecMaskGIT (arXiv 2406.17672):
MaskGIT on its non-square token grids, word-conditioned, decoded to audio by Griffin-Lim, and
`maskgen sample` / `maskgen edit --audio` (time inpainting, bandwidth extension).

The data is a synthetic "tones" source registered here (each class a different pair of pitches in
a half-second clip at 8 kHz), so the tests need no speech synthesis and stay small: a 16-mel x
32-frame log-mel gives a 4 x 8 token grid.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from maskgen.config import ConfigError, apply_overrides, load_config_file
from maskgen.data.sources import DataSource, register_source, source_info
from maskgen.data.specs import AudioSpec, LabelSpec, legacy_info

RATE, LENGTH, CLASSES = 8000, 4000, 4
_SPLITS = {"train": 64, "test": 16}


class _TonesSplit:
    def __init__(self, split: str):
        self.split, self.n = split, _SPLITS[split]

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        index = int(index) % self.n
        label = index % CLASSES
        rng = np.random.default_rng(index + (10_000 if self.split == "test" else 0))
        t = np.arange(LENGTH) / RATE
        low, high = 300.0 * (1 + label), 1800.0 + 400.0 * label
        audio = 0.3 * np.sin(2 * np.pi * low * t) * (t < 0.25) + 0.2 * np.sin(2 * np.pi * high * t) * (t >= 0.25)
        audio = audio + 0.01 * rng.standard_normal(LENGTH)
        return {"audio": audio.astype(np.float32)[:, None], "label": np.int32(label)}


@register_source("test_tones")
class _Tones(DataSource):
    options = {"words": "digits"}  # the speech configs' option, accepted and unused

    def info(self, data_dir, options):
        info = legacy_info({"audio": AudioSpec((LENGTH, 1), RATE), "label": LabelSpec(CLASSES)}, _SPLITS)
        return {**info, "sample_rate": RATE, "class_names": ["do", "re", "mi", "fa"]}

    def open(self, split, data_dir, options):
        return _TonesSplit(split)


MEL = ["data.name='test_tones'", "mel.n_fft=256", "mel.hop=125", "mel.n_mels=16", "model.griffin_lim_iters=4",
       "batch_size=8"]


def tokenizer_config(*overrides, steps=30):
    config = load_config_file(f"experiments/tokenizer_speech_mel.py:size=tiny,steps={steps}")
    apply_overrides(config, MEL + list(overrides))
    with config.unlocked():  # the tones are no words: no word-classifier evaluation
        del config.evals["reconstruction"]
    return config


# ------------------------------------------------------------------ the mel tokenizer
def test_mel_tokenizer_validation():
    from maskgen import runs
    from maskgen.recipes.tokenizer import TokenizerRecipe

    tones_info = source_info("test_tones")
    assert TokenizerRecipe.validate(tokenizer_config(), tones_info) == []
    for override, message in [("mel.n_mels=18", "config.mel.n_mels=18 is not divisible by the downsampling factor 4"),
                              ("model.mel_frames=40", "give only 32 frames"),
                              ("mel.hop=130", "is not divisible by the downsampling factor 4"),
                              ("mel.f_max=5000.0", "above the Nyquist frequency 4000"),
                              ("mel.n_fft=0", "config.mel.n_fft=0: must be an int >= 2"),
                              ("loss.perceptual_weight=0.1", "read images, not spectrograms")]:
        problems = TokenizerRecipe.validate(tokenizer_config(override), tones_info)
        assert any(message in p for p in problems), (override, problems)
    problems = TokenizerRecipe.validate(tokenizer_config(), source_info("digits"))
    assert any("trains on audio, but config.data.name='test_tones' has fields of kinds" in p for p in problems)
    with pytest.raises(ConfigError, match="config.mel.n_mels=18 is not divisible"):  # setup lists them too
        runs.setup(tokenizer_config("mel.n_mels=18"))


# ------------------------------------------------------------------ the pipeline: tokenizer -> tokens -> SpecMaskGIT
@pytest.fixture(scope="module")
def spec_maskgit(tmp_path_factory):
    """A tiny mel tokenizer, its tokens, and a tiny word-conditioned MaskGIT on them."""
    from maskgen import train as train_lib
    from maskgen.tokenize import tokenize_dataset

    root = tmp_path_factory.mktemp("spec_maskgit")
    tok_dir, tokens_dir, gen_dir = (str(root / name) for name in ("tok", "tokens", "maskgit"))
    train_lib.train(tokenizer_config("log_every=4", steps=20), tok_dir)
    meta = tokenize_dataset(tok_dir, "test_tones", tokens_dir)
    config = load_config_file(f"experiments/specmaskgit_speech.py:size=tiny,steps=10,tokens={tokens_dir}")
    apply_overrides(config, ["batch_size=8", "sampling.num_steps=4", "model.token_shape=(4, 8)"])
    with config.unlocked():
        del config.evals["generation"]
    train_lib.train(config, gen_dir)
    return {"tok": tok_dir, "tokens": tokens_dir, "maskgit": gen_dir, "meta": meta}


@pytest.fixture(scope="module")
def handle(spec_maskgit):
    from maskgen.generate import GeneratorHandle

    return GeneratorHandle(spec_maskgit["maskgit"])


def test_mel_tokenizer_loss_falls(spec_maskgit):
    import json

    with open(os.path.join(spec_maskgit["tok"], "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"reconstruction"' in line]
    first, last = rows[0]["reconstruction"], rows[-1]["reconstruction"]
    assert last < 0.7 * first, (first, last)
    # The image_grid evaluator draws the spectrograms (original and reconstruction rows).
    assert os.listdir(os.path.join(spec_maskgit["tok"], "images"))


def test_mel_tokenizer_shapes_and_info(spec_maskgit):
    from maskgen.audio import features
    from maskgen.runs import open_tokenizer

    tokenizer = open_tokenizer(spec_maskgit["tok"])
    info = tokenizer.info
    assert info["token_shape"] == (4, 8) and info["decodes_to"] == "log_mel" and info["sample_rate"] == RATE
    assert info["mel"]["n_mels"] == 16 and info["mel"]["sample_rate"] == RATE and info["mel_frames"] == 32
    audio = np.stack([_TonesSplit("test")[i]["audio"] for i in range(2)])
    out = tokenizer.apply("reconstruct", {"audio": audio})
    assert out["codes"].shape == (2, 4, 8) and out["reconstruction"].shape == (2, 16, 32, 1)
    # The input grid is the scaled log-mel of the audio, rows = mel bins from low to high.
    mel = features.MelConfig.from_dict(info["mel"])
    expected = features.scale_log_mel(features.log_mel(jnp.asarray(audio[..., 0]), mel))
    np.testing.assert_allclose(out["log_mel"][..., 0], np.transpose(expected, (0, 2, 1)), atol=1e-5)
    np.testing.assert_array_equal(tokenizer.apply("encode", {"audio": audio}), out["codes"])


def test_tokenize_writes_the_non_square_grids_with_labels(spec_maskgit):
    meta = spec_maskgit["meta"]
    assert tuple(meta["token_shape"]) == (4, 8) and meta["num_classes"] == CLASSES
    assert meta["splits"]["train"]["num_examples"] == _SPLITS["train"]


def test_sample_writes_wavs_and_spectrograms(spec_maskgit, tmp_path):
    import soundfile

    from maskgen import main

    out = tmp_path / "samples"
    assert main.main(["sample", "--workdir", spec_maskgit["maskgit"], "--num", "2", "--steps", "4",
                      "--classes", "0,3", "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert names == ["do_0.wav", "do_1.wav", "fa_0.wav", "fa_1.wav", "spectrograms.png"]
    audio, rate = soundfile.read(str(out / "do_0.wav"))
    assert rate == RATE and audio.shape == (LENGTH,) and np.abs(audio).max() <= 1.0


def test_decoder_gives_audio_of_the_clip_length(handle):
    assert handle.kind == "audio"
    result = handle.sample([1, 2], num_steps=4)
    assert result["tokens"].shape == (2, 4, 8)
    assert result["audio"].shape == (2, LENGTH, 1) and result["sample_rate"] == RATE
    assert result["log_mel"].shape == (2, 32, 16) and np.isfinite(result["audio"]).all()


@pytest.mark.parametrize("mask, rows, cols", [("time:0.125-0.375", slice(None), slice(2, 6)),
                                              ("band:high:0.5", slice(2, 4), slice(None)),
                                              ("band:low:0.25+time:0-0.0625", None, None)])
def test_edit_keeps_every_unmasked_token(handle, mask, rows, cols):
    from maskgen.generate import load_audio

    token_mask = handle.audio_mask(mask)
    if rows is None:  # the union: the lowest band row, and the first time column
        expected = np.zeros((4, 8), bool)
        expected[0], expected[:, 0] = True, True
    else:
        expected = np.zeros((4, 8), bool)
        expected[rows, cols] = True
    np.testing.assert_array_equal(token_mask, expected)
    audio, label = load_audio("test:5", handle.decoder)
    result = handle.edit_audio(audio, token_mask, 2, seed=1, num_steps=4)
    kept = ~token_mask
    np.testing.assert_array_equal(result["edited_tokens"][kept], result["tokens"][kept])
    assert result["edited"].shape == (LENGTH, 1)


def test_edit_cli_writes_a_wav_and_refuses_bad_input(spec_maskgit, handle, tmp_path):
    import soundfile

    from maskgen import main
    from maskgen.generate import edit_to_wav

    out, compare = tmp_path / "edited.wav", tmp_path / "compare.png"
    assert main.main(["edit", "--workdir", spec_maskgit["maskgit"], "--audio", "test:3", "--mask", "band:high:0.5",
                      "--out", str(out), "--compare-out", str(compare), "--steps", "4"]) == 0
    assert soundfile.info(str(out)).frames == LENGTH and compare.exists()
    stereo = tmp_path / "stereo.wav"
    soundfile.write(str(stereo), np.zeros((LENGTH, 2), np.float32), RATE)
    wrong_rate = tmp_path / "rate.wav"
    soundfile.write(str(wrong_rate), np.zeros(LENGTH, np.float32), 16000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wave file")
    resampled = edit_to_wav(handle, str(wrong_rate), "time:0-0.1", 1, str(tmp_path / "y.wav"), num_steps=4)
    assert resampled["edited"].shape == (LENGTH, 1)  # resampled from 16 kHz to the run's 8 kHz
    for audio, mask, message in [(str(stereo), "time:0-0.1", "2 channels"),
                                 (str(tmp_path / "missing.wav"), "time:0-0.1", "not found"),
                                 (str(corrupt), "time:0-0.1", "corrupt.wav"),
                                 ("test:3", "time:0.6-0.7", "starts at or after the end"),
                                 ("test:3", "band:middle:0.5", "band:low:FRACTION"),
                                 ("test:3", "pitch:3", "unknown audio mask")]:
        with pytest.raises((ValueError, OSError), match=message):
            edit_to_wav(handle, audio, mask, 1, str(tmp_path / "x.wav"), num_steps=4)
