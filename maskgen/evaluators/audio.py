"""Audio evaluators: reconstruction quality of codecs and mel tokenizers, and word-conditional generation.

`audio_reconstruction` (for runs whose `info()["decodes_to"]` is "audio", an EnCodec/DAC-style
codec, arXiv 2210.13438 / 2306.06546, or "log_mel", SpecMaskGIT's mel tokenizer, arXiv 2406.17672)
runs the recipe's `reconstruct` over a split and reports:

- `mel_distance`: the mean absolute difference of natural-log mel spectrograms (the run's
  `info()["mel"]` settings, `maskgen.audio.features`), original vs reconstruction; for a log-mel
  tokenizer, between the log-mel it encodes and the one it decodes (no vocoder in between).
- `si_snr` (waveform runs only): scale-invariant signal-to-noise ratio in dB (Le Roux et al.,
  arXiv 1811.02508), per clip and then averaged; a perfect reconstruction (infinite SI-SNR) counts
  as `SI_SNR_CAP_DB`, as the image evaluator caps PSNR. A silent original has no SI-SNR: such clips
  are left out of the mean and counted in `si_snr_silent_originals`.
- `codebook_usage` and `perplexity` (means over levels) and per level `usage_level{k}` and
  `perplexity_level{k}` (k from 0): the fraction of codes used and exp(entropy) of their histogram.
- `word_accuracy`: maskgen's spoken-word classifier (`maskgen.perception.word_classifier`) on the
  reconstructions against the clips' labels, beside `word_accuracy_original` on the originals (its
  ceiling). A log-mel tokenizer's reconstructions are heard through Griffin-Lim, so it also
  reports `word_accuracy_vocoded_original`: the classifier on Griffin-Lim of the *original* log-mel,
  which separates what the vocoder loses from what the tokenizer loses.
- with `levels=(1, 2, 4, 8)` (codecs with residual VQ, waveform or log-mel): the same metrics
  decoding only the first k levels (the recipe's static `num_levels`), suffixed `_k{k}`, and
  `bitrate_kbps_k{k}` = frames per second x k x log2(codebook size) / 1000: the bitrate sweep of
  one model.
- WAVs (`original_{i}`, `reconstruction_{i}[_k{k}]`, and `vocoded_original_{i}` for log-mel runs)
  and a `spectrograms` image: originals in the top row, then the reconstructions (one row per k).

`audio_generation` (word-conditional token generators whose `ctx.decode` gives {"audio"}) generates
`num_per_class` clips of every word (zero-padded or cut at the end to the reference clips' length)
and reports `word_consistency` (the classifier's accuracy
against the requested word), `frechet_distance_words` (the Fréchet distance, FID's formula, between
the classifier's penultimate features of the generated clips and of the reference split) and
`frechet_distance_words_floor` (the same between two real splits: the best a generator can expect
with these sample sizes), `word_accuracy_real` (the classifier on the reference split: the ceiling of
`word_consistency`), WAVs per word and a spectrogram grid (one row per word).

Both evaluators take `words` (the speech source's `words` option the word classifier is trained on;
default: the run's info()["words"] if its recipe publishes it, else "digits"), and warn when the
classifier recognises fewer than half of the real clips (a sign of the wrong `words`).

The Fréchet distance on word-classifier features is a stand-in for FAD (Kilgour et al., arXiv
1812.08466), which uses VGGish features that cannot be downloaded here: it measures the same kind of
thing (distribution distance in a learned audio embedding) but its numbers compare only with other
numbers from the same classifier and reference data, never with published FADs.
"""

from __future__ import annotations

import logging
import math
import re

import jax
import numpy as np

from maskgen.audio import features as audio_features
from maskgen.config import boolean, int_tuple, integer, or_none, string
from maskgen.evaluators.base import EvalContext, EvalResult, register
from maskgen.evaluators.generation import decode_settings, generate
from maskgen.evaluators.image_grid import make_grid
from maskgen.evaluators.reconstruction import code_histogram, histogram_stats

SI_SNR_CAP_DB = 100.0
DECODES_TO = ("audio", "log_mel")
# Below this accuracy on real clips, the word classifier is probably the wrong one for the data.
SUSPICIOUS_REAL_ACCURACY = 0.5

log = logging.getLogger("maskgen")

# A perceptually ordered dark-to-light colour ramp (magma-like anchors), for spectrogram images.
_COLOUR_ANCHORS = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109],
                            [252, 253, 191]], np.float64)


# ---------------------------------------------------------------- metrics as plain functions


def _as_clips(audio, name: str) -> np.ndarray:
    return audio_features.mono_clips(np.asarray(audio, np.float64), name)


def si_snr(reference, estimate, max_db: float = SI_SNR_CAP_DB) -> np.ndarray:
    """Per-clip scale-invariant SNR in dB of `estimate` against `reference` ([B, T] or [B, T, 1]).

    Both are made zero-mean; the target is the projection of the estimate on the reference and the
    noise the rest: 10 log10(|target|^2 / |noise|^2), clipped to [-max_db, max_db] (a perfect
    estimate gives max_db). NaN where the reference is silent (constant), for which it is undefined.
    """
    ref, est = _as_clips(reference, "si_snr reference"), _as_clips(estimate, "si_snr estimate")
    if ref.shape != est.shape:
        raise ValueError(f"si_snr: reference {ref.shape} and estimate {est.shape} differ in shape")
    ref = ref - ref.mean(axis=1, keepdims=True)
    est = est - est.mean(axis=1, keepdims=True)
    ref_energy = np.sum(ref * ref, axis=1)
    silent = ref_energy <= np.finfo(np.float64).tiny
    scale = np.sum(est * ref, axis=1) / np.where(silent, 1.0, ref_energy)
    target = scale[:, None] * ref
    noise = est - target
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 energies: +-inf, or NaN for a silent reference.
        values = 10.0 * (np.log10(np.sum(target * target, axis=1)) - np.log10(np.sum(noise * noise, axis=1)))
    values = np.clip(np.nan_to_num(values, nan=-max_db), -max_db, max_db)
    return np.where(silent, np.nan, values)


_jit_log_mel = jax.jit(audio_features.log_mel, static_argnums=1)


def log_mel_of(audio, cfg: audio_features.MelConfig) -> np.ndarray:
    """Natural-log mel [B, frames, n_mels] of clips [B, T] or [B, T, 1] (jitted; one compilation per shape)."""
    return np.asarray(_jit_log_mel(_as_clips(audio, "audio").astype(np.float32), cfg))


def log_mel_distance(log_mel_a, log_mel_b) -> np.ndarray:
    """Per-clip mean |a - b| of two log-mel batches [B, frames, n_mels] (natural log)."""
    a, b = np.asarray(log_mel_a, np.float64), np.asarray(log_mel_b, np.float64)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"log_mel_distance: need two batches [B, ...] of the same shape, got {a.shape} and {b.shape}")
    return np.abs(a - b).reshape(len(a), -1).mean(axis=1)


def mel_distance(reference, estimate, cfg: audio_features.MelConfig) -> np.ndarray:
    """Per-clip L1 distance between the log-mels (`cfg`) of clips `reference` and `estimate` [B, T(, 1)]."""
    ref, est = _as_clips(reference, "mel_distance reference"), _as_clips(estimate, "mel_distance estimate")
    if ref.shape != est.shape:
        raise ValueError(f"mel_distance: reference {ref.shape} and estimate {est.shape} differ in shape")
    return log_mel_distance(log_mel_of(ref, cfg), log_mel_of(est, cfg))


def codebook_usage(codes, codebook_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per level (the last axis of integer `codes` [..., K]): (fraction of codes used, perplexity), each [K]."""
    return histogram_stats(code_histogram(codes, codebook_size, per_level=True))


def bitrate_kbps(frames_per_second: float, levels: int, codebook_size: int) -> float:
    """Bits per second / 1000 of `levels` code streams at `frames_per_second` over `codebook_size` codes."""
    return frames_per_second * levels * math.log2(codebook_size) / 1000.0


def spectrogram_image(log_mel) -> np.ndarray:
    """A natural-log mel [frames, n_mels] -> uint8 RGB [n_mels, frames, 3], low frequencies at the bottom.

    Colours follow the fixed `scale_log_mel` map (ln 1e-5 darkest, 2.5 brightest), so images of
    different clips and runs share one scale.
    """
    lm = np.asarray(log_mel, np.float64)
    if lm.ndim != 2:
        raise ValueError(f"spectrogram_image: log-mel must be [frames, n_mels], got shape {lm.shape}")
    t = (np.clip(np.asarray(audio_features.scale_log_mel(lm)), -1.0, 1.0) + 1.0) / 2.0
    t = t.T[::-1]  # [n_mels, frames], high bands on top.
    position = t * (len(_COLOUR_ANCHORS) - 1)
    low = np.clip(np.floor(position).astype(int), 0, len(_COLOUR_ANCHORS) - 2)
    frac = (position - low)[..., None]
    rgb = _COLOUR_ANCHORS[low] * (1 - frac) + _COLOUR_ANCHORS[low + 1] * frac
    return np.round(rgb).astype(np.uint8)


def spectrogram_grid(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of log-mels ([n, frames, n_mels] each, all the same shape) -> one uint8 image of spectrograms."""
    images = [np.stack([spectrogram_image(lm) for lm in row]) for row in rows]
    return make_grid(images, upscale=max(1, 96 // images[0].shape[1]))


def _word_classifier(words: str, sample_rate: int, num_samples: int):
    from maskgen.perception import word_classifier

    return word_classifier.get_word_classifier(words=words, sample_rate=sample_rate,
                                               clip_seconds=round(num_samples / sample_rate, 6))


def _check_classifier(classifier, num_classes: int, words: str, where: str) -> None:
    if classifier.num_classes != num_classes:
        raise ValueError(f"{where}: the word classifier for words={words!r} knows {classifier.num_classes} words, "
                         f"but the run has {num_classes} classes; set the evaluator's `words` to the speech "
                         "dataset's `words` option")


def _warn_if_unrecognised(accuracy: float, words: str, where: str) -> None:
    if accuracy < SUSPICIOUS_REAL_ACCURACY:
        log.warning("%s: the word classifier for words=%r recognises only %.0f%% of the real clips; if the data "
                    "is the speech source with another `words` option, set the evaluator's `words` to it",
                    where, words, 100 * accuracy)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "clip"


def _nanmean(values: list[np.ndarray]) -> float:
    joined = np.concatenate(values) if values else np.zeros(0)
    finite = joined[~np.isnan(joined)]
    return float(finite.mean()) if len(finite) else float("nan")


# ---------------------------------------------------------------- reconstruction


class _Tally:
    """Per-clip metric values of one decoding setting (all levels, or the first k), and a few examples."""

    def __init__(self):
        self.values: dict[str, list[np.ndarray]] = {}
        self.wavs: list[np.ndarray] = []
        self.log_mels: list[np.ndarray] = []

    def add(self, name: str, values: np.ndarray) -> None:
        self.values.setdefault(name, []).append(np.asarray(values, np.float64))

    def room(self, limit: int) -> int:
        return limit - sum(map(len, self.log_mels))

    def keep_examples(self, audio: np.ndarray | None, log_mel: np.ndarray, limit: int) -> None:
        room = self.room(limit)
        if room > 0:
            self.log_mels.append(log_mel[:room])
            if audio is not None:
                self.wavs.append(audio[:room])

    def scalars(self, suffix: str) -> dict[str, float]:
        return {name + suffix: _nanmean(values) for name, values in self.values.items()}


@register("audio_reconstruction")
class AudioReconstruction:
    """Mel distance, SI-SNR, codebook usage, word accuracy, an RVQ level sweep, WAVs and spectrograms;
    see the module docstring."""

    ARG_RULES = {"max_examples": or_none(integer(min=1)), "levels": or_none(int_tuple(min=1)),
                 "num_audio": integer(min=0), "word_accuracy": boolean(), "words": or_none(string(nonempty=True)),
                 "griffin_lim_iters": or_none(integer(min=1)), "seed": integer(min=0)}

    def __init__(self, split: str = "test", max_examples: int | None = None, levels: tuple | None = None,
                 num_audio: int = 4, word_accuracy: bool = True, words: str | None = None,
                 griffin_lim_iters: int | None = None, seed: int = 0):
        self.split, self.max_examples, self.num_audio = split, max_examples, num_audio
        self.levels = tuple(levels) if levels else ()
        self.word_accuracy, self.words, self.griffin_lim_iters, self.seed = word_accuracy, words, griffin_lim_iters, seed

    def _settings(self, info: dict) -> list[int | None]:
        """None (all levels) then each k of `levels`, checked against the run."""
        if not self.levels:
            return [None]
        shape = tuple(info.get("token_shape", ()))
        codec_streams = info.get("decodes_to") == "audio" or (info.get("quantizer") == "rvq" and len(shape) == 2)
        if not codec_streams:
            raise ValueError("audio_reconstruction: `levels` sweeps the RVQ levels of a codec's code streams "
                             f"[frames, K] (the `codec` recipe, waveform or log-mel); this run's tokens are {shape} "
                             f"({info.get('quantizer')!r})")
        available = int(info.get("num_levels") or tuple(info.get("token_shape", (0, 0)))[-1])
        too_many = [k for k in self.levels if k > available]
        if too_many:
            raise ValueError(f"audio_reconstruction: levels {too_many} exceed the run's {available} RVQ levels")
        return [None, *self.levels]

    def run(self, ctx: EvalContext) -> EvalResult:
        info = ctx.info
        decodes_to = info.get("decodes_to")
        if decodes_to not in DECODES_TO:
            raise ValueError(f"audio_reconstruction: needs a codec or a log-mel tokenizer run (info()['decodes_to'] in "
                             f"{list(DECODES_TO)}); this run's info has decodes_to={decodes_to!r}")
        if "sample_rate" not in info:
            raise ValueError(f"audio_reconstruction: the recipe's info() has no 'sample_rate' (it has {sorted(info)})")
        sample_rate = int(info["sample_rate"])
        mel = (audio_features.MelConfig.from_dict(info["mel"]) if info.get("mel")
               else audio_features.MelConfig(sample_rate=sample_rate))
        settings = self._settings(info)
        gl_iters = self.griffin_lim_iters or int(info.get("griffin_lim_iters", 32))
        words = self.words or info.get("words", "digits")
        tallies = {k: _Tally() for k in settings}
        originals, vocoded_originals = _Tally(), []
        counts, classifier, num_samples = None, None, 0
        for i, (batch, valid) in enumerate(ctx.batches(self.split, self.max_examples)):
            host = ctx.to_host(batch)
            if "audio" not in host:
                raise ValueError(f"audio_reconstruction: batches need 'audio' [B, T, 1]; they have {sorted(host)}")
            audio, valid = np.asarray(host["audio"], np.float32), np.asarray(valid, bool)
            num_samples = audio.shape[1]
            if classifier is None and self.word_accuracy and "label" in host:
                classifier = _word_classifier(words, sample_rate, num_samples)
            labels = np.asarray(host["label"])[valid] if classifier is not None else None
            if labels is not None and len(labels) and labels.max() >= classifier.num_classes:
                raise ValueError(f"audio_reconstruction: label {labels.max()} is beyond the {classifier.num_classes} "
                                 f"words of the word classifier for words={words!r}; set the evaluator's `words` to "
                                 "the speech dataset's `words` option (or word_accuracy=False for other audio)")
            original = audio[valid]
            if classifier is not None:
                originals.add("word_accuracy_original", classifier.predict(original) == labels)
            rng = jax.random.fold_in(jax.random.key(self.seed), i)
            for k in settings:
                static = {} if k is None else {"num_levels": k}
                out = ctx.to_host(ctx.apply("reconstruct", ctx.params, batch, rng, **static))
                tally = tallies[k]
                if k is None and "codes" in out and "codebook_size" in info and not info.get("continuous"):
                    codes = np.asarray(out["codes"])[valid]
                    # A codec's codes are [B, frames, K] (waveform or log-mel: its quantizer is "rvq");
                    # a single-level image-style grid gets a level axis.
                    codes = codes if decodes_to == "audio" or codes.ndim == 4 or info.get("quantizer") == "rvq" \
                        else codes[..., None]
                    batch_counts = code_histogram(codes, int(info["codebook_size"]), per_level=True)
                    counts = batch_counts if counts is None else counts + batch_counts
                if decodes_to == "audio":
                    original_lm, recon_lm, recon_audio = _compare_waveforms(out, audio, valid, mel, tally)
                else:
                    original_lm, recon_lm = _compare_log_mels(out, audio, valid, mel, tally)
                    needs_audio = classifier is not None or tally.room(self.num_audio) > 0
                    recon_audio = _vocode(recon_lm, mel, gl_iters, num_samples) if needs_audio else None
                    if k is None and (classifier is not None or originals.room(self.num_audio) > 0):
                        vocoded = _vocode(original_lm, mel, gl_iters, num_samples)
                        vocoded_originals.append(vocoded[: originals.room(self.num_audio)])
                        if classifier is not None:
                            originals.add("word_accuracy_vocoded_original", classifier.predict(vocoded) == labels)
                if classifier is not None:
                    tally.add("word_accuracy", classifier.predict(recon_audio) == labels)
                tally.keep_examples(recon_audio, recon_lm, self.num_audio)
            originals.keep_examples(original, original_lm, self.num_audio)
        if not num_samples or not tallies[None].values.get("mel_distance"):
            raise ValueError(f"audio_reconstruction: split {self.split!r} yielded no examples")
        scalars = originals.scalars("")
        if "word_accuracy_original" in scalars:
            _warn_if_unrecognised(scalars["word_accuracy_original"], words, "audio_reconstruction")
        for k, tally in tallies.items():
            suffix = "" if k is None else f"_k{k}"
            scalars.update(tally.scalars(suffix))
            if "si_snr" in tally.values and k is None:
                silent = int(np.isnan(np.concatenate(tally.values["si_snr"])).sum())
                if silent:
                    scalars["si_snr_silent_originals"] = float(silent)
            if k is not None and info.get("codebook_size") and info.get("token_shape"):
                frames_per_second = int(info["token_shape"][0]) * sample_rate / num_samples
                scalars[f"bitrate_kbps{suffix}"] = bitrate_kbps(frames_per_second, k, int(info["codebook_size"]))
        if counts is not None:
            usage, perplexity = histogram_stats(counts)
            scalars.update(codebook_usage=float(usage.mean()), perplexity=float(perplexity.mean()))
            for level in range(len(usage)):
                scalars[f"usage_level{level}"] = float(usage[level])
                scalars[f"perplexity_level{level}"] = float(perplexity[level])
        return EvalResult(scalars=scalars, **self._examples(tallies, originals, vocoded_originals, sample_rate))

    def _examples(self, tallies, originals, vocoded_originals, sample_rate) -> dict:
        """WAVs and the spectrogram image of the first `num_audio` clips."""
        if self.num_audio <= 0:
            return {}
        sounds = {}
        named = [("original", "", originals.wavs), ("vocoded_original", "", vocoded_originals)]
        named += [("reconstruction", "" if k is None else f"_k{k}", t.wavs) for k, t in tallies.items()]
        for stem, suffix, clips in named:
            for j, clip in enumerate(np.concatenate(clips)[: self.num_audio] if clips else []):
                sounds[f"{stem}_{j}{suffix}"] = (np.clip(clip, -1, 1).reshape(-1, 1), sample_rate)
        rows = [np.concatenate(t.log_mels)[: self.num_audio] for t in (originals, *tallies.values())]
        return {"audio": sounds, "images": {"spectrograms": spectrogram_grid(rows)}}


def _compare_waveforms(out, audio, valid, mel, tally):
    """A codec's reconstruction vs the original clips: SI-SNR and mel distance into `tally`;
    returns (original log-mel, reconstructed log-mel, reconstructed audio [n, T]) of the valid rows."""
    if "audio" not in out:
        raise ValueError(f"audio_reconstruction: a codec's reconstruct must return 'audio'; it gave {sorted(out)}")
    recon = np.clip(np.asarray(out["audio"], np.float32), -1.0, 1.0)  # What a WAV of it holds.
    if recon.shape != audio.shape:
        raise ValueError(f"audio_reconstruction: reconstruction shape {recon.shape} != audio shape {audio.shape}")
    recon, original = recon[valid][..., 0], audio[valid][..., 0]
    tally.add("si_snr", si_snr(original, recon))
    original_lm, recon_lm = log_mel_of(original, mel), log_mel_of(recon, mel)
    tally.add("mel_distance", log_mel_distance(original_lm, recon_lm))
    return original_lm, recon_lm, recon


def _grid_to_log_mel(grid) -> np.ndarray:
    """A scaled log-mel grid [B, n_mels, frames, 1] -> natural-log mel [B, frames, n_mels]."""
    return np.asarray(audio_features.unscale_log_mel(np.asarray(grid, np.float32)[..., 0].transpose(0, 2, 1)))


def _compare_log_mels(out, audio, valid, mel, tally):
    """A log-mel tokenizer's decoded log-mel vs the one it encoded (`out["log_mel"]`, else computed
    from the audio): mel distance into `tally`; returns both natural-log mels [n, frames, n_mels]."""
    if "reconstruction" not in out:
        raise ValueError("audio_reconstruction: a log-mel tokenizer's reconstruct must return 'reconstruction' "
                         f"(the scaled log-mel); it gave {sorted(out)}")
    grid = np.asarray(out["reconstruction"])
    if grid.ndim != 4 or grid.shape[1] != mel.n_mels or grid.shape[-1] != 1:
        raise ValueError(f"audio_reconstruction: a log-mel reconstruction must be [B, n_mels={mel.n_mels}, frames, 1], "
                         f"got {grid.shape}")
    recon_lm = _grid_to_log_mel(grid)[valid]
    if "log_mel" in out:
        original_lm = _grid_to_log_mel(out["log_mel"])[valid]
    else:
        original_lm = log_mel_of(audio[valid], mel)[:, : recon_lm.shape[1]]
    tally.add("mel_distance", log_mel_distance(original_lm, recon_lm))
    return original_lm, recon_lm


_jit_mel_to_audio = jax.jit(lambda lm, cfg, n: audio_features.mel_to_audio(lm, cfg, num_iters=n),
                            static_argnums=(1, 2))


def _vocode(log_mel, mel, num_iters: int, num_samples: int) -> np.ndarray:
    """Griffin-Lim of natural-log mels [B, frames, n_mels] -> [B, num_samples] (zero-padded or cut), in [-1, 1]."""
    audio = np.asarray(_jit_mel_to_audio(np.asarray(log_mel, np.float32), mel, num_iters))
    if audio.shape[1] < num_samples:
        audio = np.pad(audio, ((0, 0), (0, num_samples - audio.shape[1])))
    return np.clip(audio[:, :num_samples], -1.0, 1.0)


# ---------------------------------------------------------------- generation


@register("audio_generation")
class AudioGeneration:
    """Word consistency, word-classifier Fréchet distance (an FAD stand-in) with its floor, WAVs and
    spectrograms of a word-conditional generator; see the module docstring."""

    ARG_RULES = {"num_per_class": integer(min=1), "batch_size": integer(min=1), "seed": integer(min=0),
                 "max_real": or_none(integer(min=2, why="a covariance needs two")), "grid_columns": integer(min=1),
                 "num_audio_per_class": integer(min=0), "words": or_none(string(nonempty=True)),
                 "real_split": string(nonempty=True), "floor_split": string()}

    def __init__(self, num_per_class: int = 20, batch_size: int = 64, seed: int = 0, decode: dict | None = None,
                 real_split: str = "test", floor_split: str = "train", max_real: int | None = None,
                 grid_columns: int = 4, num_audio_per_class: int = 1, words: str | None = None):
        self.num_per_class, self.batch_size, self.seed = num_per_class, batch_size, seed
        self.decode = dict(decode or {})
        self.real_split, self.floor_split, self.max_real = real_split, floor_split, max_real
        self.grid_columns, self.num_audio_per_class, self.words = grid_columns, num_audio_per_class, words

    def run(self, ctx: EvalContext) -> EvalResult:
        num_classes = int(ctx.info.get("num_classes", 0))
        if num_classes < 1:
            raise ValueError("audio_generation: word consistency needs a word-conditional generator; this run has "
                             f"num_classes={num_classes}")
        if ctx.decode is None or ctx.reference is None:
            raise ValueError("audio_generation: the run has no decoder (train on a token dataset written by "
                             "`maskgen tokenize` from a codec or log-mel tokenizer run)")
        real = ctx.reference(self.real_split, self.max_real)
        if "audio" not in real:
            raise ValueError(f"audio_generation: the reference data has {sorted(real)}, not 'audio'")
        real_audio = np.asarray(real["audio"], np.float32)
        words = self.words or ctx.info.get("words", "digits")

        def classifier_at(rate):
            classifier = _word_classifier(words, int(rate), real_audio.shape[1])
            _check_classifier(classifier, num_classes, words, "audio_generation")
            return classifier

        # With the rate known up front, the classifier first: a wrong `words` fails before any sampling.
        classifier = classifier_at(ctx.info["sample_rate"]) if ctx.info.get("sample_rate") else None
        labels = np.tile(np.arange(num_classes, dtype=np.int32), self.num_per_class)
        out = generate(ctx, labels, decode_settings(ctx.info, self.decode), self.seed, self.batch_size)
        decoded = ctx.decode(out["tokens"])
        if "audio" not in decoded:
            raise ValueError(f"audio_generation: the run's decoder gives {sorted(decoded)}, not 'audio'")
        audio = np.asarray(decoded["audio"], np.float32)
        sample_rate = int(decoded.get("sample_rate") or ctx.info.get("sample_rate") or 0)
        if not sample_rate:
            raise ValueError("audio_generation: neither the decoder nor the run's info() gives a 'sample_rate'")
        if classifier is not None and classifier.sample_rate != sample_rate:
            raise ValueError(f"audio_generation: decoded audio is at {sample_rate} Hz, but the run's info() says "
                             f"{classifier.sample_rate} Hz")
        classifier = classifier or classifier_at(sample_rate)
        audio = _fit_length(audio, real_audio.shape[1])
        real_features = classifier.features(real_audio)
        scalars = {"word_consistency": classifier.accuracy(audio, labels),
                   "frechet_distance_words": _frechet(classifier.features(audio), real_features)}
        if "label" in real:
            scalars["word_accuracy_real"] = classifier.accuracy(real_audio, real["label"])
            _warn_if_unrecognised(scalars["word_accuracy_real"], words, "audio_generation")
        if self.floor_split:
            floor = np.asarray(ctx.reference(self.floor_split, self.max_real)["audio"], np.float32)
            scalars["frechet_distance_words_floor"] = _frechet(classifier.features(floor), real_features)
        names = ctx.info.get("class_names") or classifier.class_names
        sounds = {}
        for c in range(num_classes):
            for j, clip in enumerate(audio[labels == c][: self.num_audio_per_class]):
                name = names[c] if c < len(names) else f"class{c}"
                sounds[f"{_safe_name(name)}_{j}"] = (np.clip(clip, -1, 1).reshape(-1, 1), sample_rate)
        log_mels = decoded.get("log_mel")
        if log_mels is None:
            log_mels = log_mel_of(audio, audio_features.MelConfig(sample_rate=sample_rate))
        log_mels = np.asarray(log_mels)
        rows = [log_mels[labels == c][: self.grid_columns] for c in range(num_classes)]
        return EvalResult(scalars=scalars, images={"spectrograms": spectrogram_grid(rows)}, audio=sounds)


def _fit_length(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Clips [n, T', ...] zero-padded or cut at the end to the reference length (a Griffin-Lim decode
    gives frames * hop samples, a little less than the clip length when hop does not divide it)."""
    if audio.shape[1] < num_samples:
        return np.pad(audio, [(0, 0), (0, num_samples - audio.shape[1])] + [(0, 0)] * (audio.ndim - 2))
    return audio[:, :num_samples]


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    from maskgen.perception.frechet import feature_statistics, frechet_distance

    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


__all__ = ["AudioReconstruction", "AudioGeneration", "si_snr", "mel_distance", "log_mel_distance", "log_mel_of",
           "codebook_usage", "bitrate_kbps", "spectrogram_image", "spectrogram_grid", "SI_SNR_CAP_DB"]
