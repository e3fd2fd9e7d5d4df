"""MaskGCT: zero-shot text-to-speech with two masked generative transformers (Wang et al., "MaskGCT:
Zero-Shot Text-to-Speech with Masked Generative Codec Transformer", arXiv 2409.00750), trained here
on maskgen's own tokens. The public code (open-mmlab/Amphion, models/tts/maskgct) ships inference
only; the training rules below follow the paper and that code's `forward_diffusion` methods.

Tokens are made inside the jitted step by two frozen runs (`maskgen.recipes.frozen`):
  * semantic tokens [B, S] from `config.maskgct.semantic_workdir`, any run that can `encode` audio
    into one token per frame (MaskGCT: a VQ of w2v-BERT 2.0 layer 17; maskgen: the
    `feature_tokenizer` k-means of an SSAST frame-token run);
  * acoustic tokens [B, S, K] from `config.maskgct.codec_workdir`, a `codec` run (RVQ with K levels).
Both must have the same frame rate (50 Hz in the paper and in the CPU configs): an error names both.
Each frozen run encodes the clip in windows of its own training clip length (an SSAST encoder has
positions for one clip only); a window that yields fewer frames than frame_rate x window (SSAST
frame tokens cover 96 of 100 mel frames) repeats its last token.

Data: the speech source with concat=2, trim=True: a prompt clip and a target clip of the same voice
back to back, then zeros. Frames beyond `num_samples` are padding: they get a dedicated [PAD] token
that the model always sees (never masked, never in the loss), so the model knows where the
utterance ends; at inference the target duration sets where [PAD] begins.

T2S (`maskgct_t2s`): a bidirectional transformer over one joint vocabulary (semantic codes, [PAD],
phoneme ids). The eSpeak NG phonemes of prompt text + target text are a prefix; the semantic frames
follow. Training (Amphion `MaskGCT_T2S.forward_diffusion`): t ~ U(0, 1], mask probability
p = max(sin(pi t / 2), 0.2), each frame masked independently with probability p (Bernoulli, at least
one per example), except a prompt prefix of U[min(T/4, 5), 0.4 T) frames (T = the utterance's
frames) that is never masked; with probability 0.15 the prompt is absent (length 0), for
classifier-free guidance. Cross-entropy on masked semantic positions only.

S2A (`maskgct_s2a`, SoundStorm-like): K + 1 token streams per frame with summed embeddings
(`TokenTransformer(num_streams=K + 1)`): the semantic tokens, then the K acoustic levels. Each
example picks one RVQ level k with weights K - k (Amphion `mask_layer_schedule="linear"`: low levels
favoured); levels below k are given, level k is Bernoulli-masked with probability sin(pi t / 2)
(Amphion's S2A has no 0.2 floor: `loss.min_mask_prob`, default 0 for S2A),
levels above k are masked, except in the prompt prefix (U[min(T/4, 5), T/2) frames), where all
levels are given. The level being predicted conditions the model (Amphion's layer embedding; here
adaLN on the level as the class). The loss covers the masked positions of level k only.

Inference (`maskgen.sampling.iterative_decode`): T2S decodes the target frames after the prompt's
known frames; S2A decodes level by level, each with its own number of steps (paper [25, 10, 1, ...]).
Guidance: conditional = with the prompt, unconditional = without it (the prompt frames are removed
and the target slides to the start, as the model saw it in the prompt-absent training examples; for
T2S the prompt text's phonemes are removed too). Temperature anneals linearly within a decode and
the last step is greedy where `iterative_decode` offers it (`temperature_schedule`).

Target duration: explicit frames, or the paper's rule frames = frame rate x prompt seconds x
target phones / prompt phones (`target_frames`).

Where maskgen differs from Amphion, and why: guidance mixes logits (`iterative_decode`), not
pre-logit features with std rescaling (rescale_cfg 0.75); no top-k filter (0.98) or diffusion-time
embedding; the prompt is drawn per example, not per batch; the level is drawn per example; one S2A
model serves level 0 as well (Amphion ships a separate 1-level model).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskgen.config import Rule, integer, number, one_of, recipe_problems, string
from maskgen.models.token_transformer import TokenTransformer
from maskgen.recipes.base import Recipe, register
from maskgen.recipes.maskgit import masked_mean, smoothed_cross_entropy
from maskgen.sampling.categorical import PRECISIONS
from maskgen.sampling.iterative import POLICIES, TEMPERATURE_SCHEDULES, iterative_decode

log = logging.getLogger(__name__)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POSITIONS = ("learned", "rope")
# MaskGCT's last decoding step is greedy; `iterative_decode` offers it as "linear_to_zero" where
# that schedule exists, else the plain linear anneal (which ends at temperature / T).
ANNEALED = "linear_to_zero" if "linear_to_zero" in TEMPERATURE_SCHEDULES else "linear"


# --------------------------------------------------------------------------- masking rules


def mask_probability(u: jax.Array, min_prob: float = 0.2) -> jax.Array:
    """MaskGCT's per-token mask probability max(sin(pi u / 2), min_prob) for u in (0, 1]."""
    return jnp.maximum(jnp.sin(0.5 * math.pi * u), min_prob)


def draw_prompt_lengths(rng: jax.Array, valid_frames: jax.Array, *, max_fraction: float, min_frames: int,
                        drop_prob: float) -> jax.Array:
    """int32 [B]: a prompt of U[min(T/4, min_frames), max_fraction * T) frames per example (T its
    valid frames; Amphion's torch.randint bounds), 0 with probability `drop_prob` (CFG). At least
    one frame is left after the prompt."""
    length_rng, drop_rng = jax.random.split(rng)
    t = valid_frames.astype(jnp.int32)
    low = jnp.minimum(t // 4, min_frames)
    high = jnp.maximum(jnp.floor(t * max_fraction).astype(jnp.int32), low + 1)  # exclusive
    u = jax.random.uniform(length_rng, t.shape)
    length = jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1)
    length = jnp.clip(length, 0, jnp.maximum(t - 1, 0))
    drop = jax.random.uniform(drop_rng, t.shape) < drop_prob
    return jnp.where(drop, 0, length).astype(jnp.int32)


def bernoulli_mask(rng: jax.Array, prob: jax.Array, candidates: jax.Array) -> jax.Array:
    """bool [B, S]: each candidate position masked with probability prob[b]; a row with candidates
    but nothing drawn masks its first candidate (Amphion masks the first frame after the prompt)."""
    drawn = (jax.random.uniform(rng, candidates.shape) < prob[:, None]) & candidates
    first = jax.nn.one_hot(jnp.argmax(candidates, axis=-1), candidates.shape[-1], dtype=bool)
    empty = ~jnp.any(drawn, axis=-1, keepdims=True)
    return drawn | (empty & first & candidates)


def level_weights(num_levels: int) -> np.ndarray:
    """The probability of training RVQ level k: proportional to K - k (Amphion's "linear")."""
    w = np.arange(num_levels, 0, -1, dtype=np.float64)
    return w / w.sum()


def shift_left(x: jax.Array, shift: jax.Array, fill) -> jax.Array:
    """Along axis 1: out[:, j] = x[:, j + shift[b]], `fill` past the end (drops a prompt prefix)."""
    size = x.shape[1]
    index = jnp.arange(size)[None, :] + shift[:, None]
    inside = index < size
    index = jnp.clip(index, 0, size - 1).reshape(index.shape + (1,) * (x.ndim - 2))
    taken = jnp.take_along_axis(x, index, axis=1)
    return jnp.where(inside.reshape(inside.shape + (1,) * (x.ndim - 2)), taken, jnp.asarray(fill, x.dtype))


def shift_right(x: jax.Array, shift: jax.Array) -> jax.Array:
    """The inverse of `shift_left` along axis 1 (positions before `shift` repeat position 0)."""
    size = x.shape[1]
    index = jnp.clip(jnp.arange(size)[None, :] - shift[:, None], 0, size - 1)
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def pack_phones(first: jax.Array, first_len: jax.Array, second: jax.Array, second_len: jax.Array,
                length: int, pad: int) -> jax.Array:
    """[B, length]: the first `first_len` ids of `first`, then the first `second_len` of `second`,
    then `pad` (prompt text + target text as one contiguous phoneme prefix)."""
    j = jnp.arange(length)[None, :]
    in_first = j < first_len[:, None]
    k = j - first_len[:, None]
    in_second = (k >= 0) & (k < second_len[:, None])
    from_first = jnp.take_along_axis(first, jnp.clip(j, 0, first.shape[1] - 1).repeat(first.shape[0], 0), axis=1)
    from_second = jnp.take_along_axis(second, jnp.clip(k, 0, second.shape[1] - 1), axis=1)
    return jnp.where(in_first, from_first, jnp.where(in_second, from_second, pad)).astype(jnp.int32)


def target_frames(frame_rate: float, prompt_seconds: float, prompt_phones: int, target_phones: int) -> int:
    """MaskGCT's duration rule: frame rate x prompt seconds x target phones / prompt phones (>= 1)."""
    if prompt_phones < 1:
        raise ValueError("the prompt has no phonemes: give its text (--prompt-text) or an explicit duration")
    return max(1, int(round(frame_rate * prompt_seconds * target_phones / prompt_phones)))


def valid_frame_mask(num_samples: jax.Array, samples_per_frame: float, num_frames: int) -> jax.Array:
    """bool [B, S]: frames that hold audio (a frame is valid if it starts before `num_samples`)."""
    count = jnp.ceil(num_samples.astype(jnp.float32) / samples_per_frame).astype(jnp.int32)
    return jnp.arange(num_frames)[None, :] < count[:, None]


# --------------------------------------------------------------------------- frozen tokenizers


def _audio_spec(data_info: dict) -> tuple[int, int]:
    """(clip samples, sample rate) of a run's audio field (spec objects or their json dicts)."""
    spec = (data_info.get("fields") or {}).get("audio")
    if spec is None:
        raise ValueError("the run's data has no audio field")
    shape = getattr(spec, "shape", None) or spec["shape"]
    rate = getattr(spec, "sample_rate", None) or spec["sample_rate"]
    return int(shape[0]), int(rate)


class FrozenTokenizer:
    """A frozen run that encodes audio into frames at `frame_rate`, applied window by window.

    `run` is a FrozenRun (or anything with .workdir, .info, .data_info and .call(method, batch)).
    """

    def __init__(self, run, role: str, *, levels: bool):
        self.run, self.role = run, role
        info = run.info
        if "frame_rate" not in info:
            raise ValueError(f"{role}={run.workdir!r}: its recipe reports no frame_rate; MaskGCT needs frame tokens")
        self.frame_rate = float(info["frame_rate"])
        self.codebook_size = int(info["codebook_size"])
        shape = tuple(info["token_shape"])
        if levels and len(shape) != 2:
            raise ValueError(f"{role}={run.workdir!r} makes tokens {shape}; acoustic tokens are [frames, K] levels")
        if not levels and len(shape) != 1:
            raise ValueError(f"{role}={run.workdir!r} makes tokens {shape}; semantic tokens are one per frame [frames]")
        self.num_levels = int(shape[1]) if levels else 1
        self.window, self.sample_rate = _audio_spec(run.data_info)
        if info.get("sample_rate") is not None:
            self.sample_rate = int(info["sample_rate"])
        if info.get("num_samples"):
            self.window = int(info["num_samples"])
        self.frames_per_window = int(round(self.window * self.frame_rate / self.sample_rate))
        self.samples_per_frame = self.sample_rate / self.frame_rate

    def encode(self, audio: jax.Array, num_frames: int) -> jax.Array:
        """audio [B, N, 1] -> int32 [B, num_frames] (semantic) or [B, num_frames, K] (acoustic)."""
        b, n = audio.shape[0], audio.shape[1]
        windows = -(-max(n, int(math.ceil(num_frames * self.samples_per_frame))) // self.window)
        audio = jnp.pad(audio, ((0, 0), (0, windows * self.window - n), (0, 0)))
        codes = self.run.call("encode", {"audio": audio.reshape(b * windows, self.window, 1)})
        f = codes.shape[1]
        if f < self.frames_per_window:  # e.g. SSAST frame tokens cover 96 of 100 mel frames
            pad = [(0, 0), (0, self.frames_per_window - f)] + [(0, 0)] * (codes.ndim - 2)
            codes = jnp.pad(codes, pad, mode="edge")
        codes = codes[:, :self.frames_per_window]
        codes = codes.reshape((b, windows * self.frames_per_window) + codes.shape[2:])
        return codes[:, :num_frames].astype(jnp.int32)


def check_frame_rates(semantic: FrozenTokenizer, acoustic: FrozenTokenizer | None) -> None:
    if acoustic is None:
        return
    if abs(semantic.frame_rate - acoustic.frame_rate) > 1e-3 * acoustic.frame_rate:
        raise ValueError(f"frame rates differ: config.maskgct.semantic_workdir={semantic.run.workdir!r} makes "
                         f"{semantic.frame_rate:g} tokens/s, config.maskgct.codec_workdir={acoustic.run.workdir!r} "
                         f"{acoustic.frame_rate:g} frames/s; MaskGCT pairs them frame by frame")
    if semantic.sample_rate != acoustic.sample_rate:
        raise ValueError(f"sample rates differ: the semantic run takes {semantic.sample_rate} Hz audio, the codec run "
                         f"{acoustic.sample_rate} Hz")


def load_tokenizers(config: ml_collections.ConfigDict, *, acoustic: bool):
    """The frozen semantic tokenizer (and codec) named by config.maskgct, checked against each other."""
    from maskgen.recipes.frozen import load_frozen_run

    g = config.maskgct
    semantic = FrozenTokenizer(load_frozen_run(g.semantic_workdir, role="config.maskgct.semantic_workdir",
                                               capability="encode"), "config.maskgct.semantic_workdir", levels=False)
    codec = None
    if acoustic:
        codec = FrozenTokenizer(load_frozen_run(g.codec_workdir, role="config.maskgct.codec_workdir",
                                                recipes=("codec",), capability="encode"),
                                "config.maskgct.codec_workdir", levels=True)
    check_frame_rates(semantic, codec)
    return semantic, codec


def _word_list(data_info: dict) -> list[str]:
    names = list(data_info.get("class_names") or data_info.get("words") or [])
    if not names:
        raise ValueError("MaskGCT needs the data's words (class_names) to phonemise each clip's text")
    return names


def text_phone_ids(text: str) -> np.ndarray:
    """int32 phoneme ids of `text` (eSpeak NG, en-us) followed by a word boundary, so that prompt
    text and target text join as "prompt | target |". Raises UnreadableTextError (a ValueError
    naming the characters) for text the phonemiser cannot read."""
    from maskgen.audio.phonemes import VOCABULARY, encode_phonemes

    return np.concatenate([encode_phonemes(text), [VOCABULARY.word_boundary_id]]).astype(np.int32)


def count_phones(ids: np.ndarray) -> int:
    """Phonemes in `ids`, for the duration rule: word boundaries, stress marks and padding not counted."""
    from maskgen.audio.phonemes import STRESS_MARKS, VOCABULARY, WORD_BOUNDARY

    skip = {VOCABULARY.pad_id, VOCABULARY.ids[WORD_BOUNDARY], *(VOCABULARY.ids[m] for m in STRESS_MARKS)}
    return int(sum(1 for i in np.asarray(ids).reshape(-1).tolist() if i not in skip))


def phone_table(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [W, L], lengths int32 [W]): each word's `text_phone_ids`, padded with the pad id."""
    from maskgen.audio.phonemes import pad_phonemes

    encoded = [text_phone_ids(w) for w in words]
    return pad_phonemes(encoded, max(len(e) for e in encoded)), np.asarray([len(e) for e in encoded], np.int32)


def phone_vocab_size() -> tuple[int, int]:
    """(number of phoneme ids, pad included; the pad id) of maskgen's phoneme vocabulary."""
    from maskgen.audio.phonemes import VOCABULARY

    return VOCABULARY.size, VOCABULARY.pad_id


# --------------------------------------------------------------------------- config

_COMMON_SPEC = {
    "maskgct.semantic_workdir": string(nonempty=True, why="a run that encodes audio into frame tokens "
                                       "(feature_tokenizer)"),
    "model.width": integer(min=1),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.positions": one_of(*POSITIONS, optional=True),
    "model.num_frames": integer(min=2, optional=True, why="frames per example (0/absent: from the data)"),
    "loss.min_mask_prob": number(0, 1, optional=True),
    "loss.prompt_drop": number(0, 1, optional=True),
    "loss.prompt_max_fraction": number(0, 1, min_open=True, optional=True),
    "loss.prompt_min_frames": integer(min=0, optional=True),
    "loss.prompt_boundary_prob": number(0, 1, optional=True),
    "loss.label_smoothing": number(0, 1, max_open=True, optional=True),
    "sampling.temperature": number(0, optional=True),
    "sampling.temperature_schedule": one_of(*TEMPERATURE_SCHEDULES, optional=True),
    "sampling.choice_temperature": number(0, optional=True),
    "sampling.cfg_scale": number(0, optional=True),
    "sampling.schedule": string(nonempty=True, optional=True),
    "sampling.policy": one_of(*POLICIES, optional=True),
    "sampling.precision": one_of(*PRECISIONS, optional=True),
}
T2S_SPEC = {**_COMMON_SPEC, "model.max_phones": integer(min=2, why="phoneme prefix length (prompt + target text)"),
            "sampling.num_steps": integer(min=1, optional=True)}
S2A_SPEC = {**_COMMON_SPEC,
            "maskgct.codec_workdir": string(nonempty=True, why="a codec run (its RVQ levels are the acoustic tokens)"),
            "model.num_levels": integer(min=1, why="acoustic RVQ levels K: must equal the codec run's"),
            "sampling.steps_per_level": Rule("a tuple of ints >= 1 (one per level; the last repeats)",
                                             lambda v: isinstance(v, (tuple, list)) and len(v) > 0
                                             and all(isinstance(x, int) and x >= 1 for x in v), optional=True)}


def _num_frames(config, data_info, frame_rate: float) -> int:
    """Frames per example: config.model.num_frames, else the data's clip length at frame_rate."""
    if config.model.get("num_frames", 0):
        return int(config.model.num_frames)
    samples, rate = _audio_spec(data_info)
    return int(math.ceil(samples * frame_rate / rate))


def _width_problems(config, problems) -> None:
    m = config.model
    if problems.ok("model.width", "model.num_heads") and m.width % m.num_heads:
        problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")


class _MaskGCTRecipe(Recipe):
    """What T2S and S2A share: tokens from frozen runs, prompt drawing and the decode settings."""

    # MaskGCT's generate takes phonemes and prompts, not the task batches of `maskgen.tasks`: its
    # pipeline is `maskgct_generate` (and `maskgen sample --t2s-workdir`), so no capability is declared.
    capabilities = frozenset()

    def __init__(self, *, semantic: FrozenTokenizer, num_frames: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float, positions: str = "learned", min_mask_prob: float = 0.2, prompt_drop: float = 0.15,
                 prompt_max_fraction: float = 0.4, prompt_min_frames: int = 5, label_smoothing: float = 0.0,
                 compute_dtype: str = "float32", sampling: dict | None = None, prompt_boundary_prob: float = 0.0):
        self.semantic = semantic
        self.num_frames = int(num_frames)
        self.frame_rate = semantic.frame_rate
        self.sample_rate = semantic.sample_rate
        self.samples_per_frame = semantic.samples_per_frame
        self.min_mask_prob, self.prompt_drop = float(min_mask_prob), float(prompt_drop)
        self.prompt_max_fraction, self.prompt_min_frames = float(prompt_max_fraction), int(prompt_min_frames)
        self.label_smoothing = float(label_smoothing)
        self.prompt_boundary_prob = float(prompt_boundary_prob)
        self.sampling = dict(sampling or {})
        self.backbone = dict(width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, positions=positions,
                             dtype=_DTYPES[compute_dtype])

    @staticmethod
    def _shared_settings(config) -> dict:
        m, loss = config.model, config.get("loss", ml_collections.ConfigDict())
        return dict(width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
                    positions=m.get("positions", "learned"), min_mask_prob=loss.get("min_mask_prob", 0.2),
                    prompt_drop=loss.get("prompt_drop", 0.15), prompt_min_frames=loss.get("prompt_min_frames", 5),
                    label_smoothing=loss.get("label_smoothing", 0.0), compute_dtype=config.compute_dtype,
                    prompt_boundary_prob=loss.get("prompt_boundary_prob", 0.0),
                    sampling=config.sampling.to_dict() if "sampling" in config else {})

    def _valid(self, batch) -> jax.Array:
        n = batch.get("num_samples")
        if n is None:
            n = jnp.full((batch["audio"].shape[0],), batch["audio"].shape[1], jnp.int32)
        return valid_frame_mask(jnp.asarray(n), self.samples_per_frame, self.num_frames)

    def _draw_mask(self, rng, valid, prompt_samples=None):
        """(prompt bool [B, S], masked bool [B, S]) for a training example. With `prompt_samples` [B] (the
        pair's prompt clip) and `prompt_boundary_prob` > 0, that share of the examples takes the real
        prompt/target boundary as the prompt (the layout of inference) instead of a random prefix."""
        prompt_rng, t_rng, mask_rng = jax.random.split(rng, 3)
        prompt_len = draw_prompt_lengths(prompt_rng, jnp.sum(valid, axis=-1), max_fraction=self.prompt_max_fraction,
                                         min_frames=self.prompt_min_frames, drop_prob=self.prompt_drop)
        if prompt_samples is not None and self.prompt_boundary_prob > 0:
            boundary = jnp.floor(prompt_samples.astype(jnp.float32) / self.samples_per_frame).astype(jnp.int32)
            boundary = jnp.clip(boundary, 0, jnp.maximum(jnp.sum(valid, axis=-1) - 1, 0))
            use = jax.random.uniform(jax.random.fold_in(prompt_rng, 1), boundary.shape) < self.prompt_boundary_prob
            prompt_len = jnp.where(use & (prompt_len > 0), boundary, prompt_len)
        prompt = jnp.arange(self.num_frames)[None, :] < prompt_len[:, None]
        u = jax.random.uniform(t_rng, (valid.shape[0],), minval=1e-5, maxval=1.0)
        masked = bernoulli_mask(mask_rng, mask_probability(u, self.min_mask_prob), valid & ~prompt)
        return prompt, masked

    def decode_settings(self, **overrides) -> dict:
        """iterative_decode settings: MaskGCT's defaults, the config's sampling, then `overrides`."""
        settings = dict(num_steps=self.default_steps, schedule="cosine", temperature=self.default_temperature,
                        temperature_schedule=ANNEALED, choice_temperature=1.0, cfg_scale=2.5, policy="confidence",
                        precision="float64")
        unknown = sorted(set(overrides) - set(settings))
        if unknown:
            raise ValueError(f"unknown {self.name} decoding settings {unknown}; valid: "
                             f"{', '.join(sorted(settings) + list(self.extra_decode_options))}")
        settings.update({k: v for k, v in self.sampling.items() if k in settings})
        settings.update({k: v for k, v in overrides.items() if v is not None and k in settings})
        return settings

    def sample(self, model, batch, rng):
        raise ValueError(f"{self.name} makes no image grids; use maskgen sample --workdir S2A --t2s-workdir T2S")


# --------------------------------------------------------------------------- T2S


@register("maskgct_t2s")
class MaskGCTT2SRecipe(_MaskGCTRecipe):
    """Text (phonemes) -> semantic tokens. Joint vocabulary: [0, C) semantic codes, C the frame
    [PAD], C + 1 + p phoneme id p (the phoneme pad included); [MASK] is the model's last id."""

    default_temperature = 0.9  # Amphion's text2semantic
    default_steps = 25  # the paper: 25-50 T2S steps
    extra_decode_options = ()

    def __init__(self, *, phone_ids: np.ndarray, phone_lengths: np.ndarray, num_phone_ids: int, phone_pad: int,
                 max_phones: int, **kwargs):
        super().__init__(**kwargs)
        self.codebook_size = self.semantic.codebook_size
        self.frame_pad = self.codebook_size
        self.phone_offset = self.codebook_size + 1
        self.num_phone_ids, self.phone_pad = int(num_phone_ids), int(phone_pad)
        self.max_phones = int(max_phones)
        self.phone_ids = np.asarray(phone_ids, np.int32)
        self.phone_lengths = np.asarray(phone_lengths, np.int32)
        longest_pair = 2 * int(self.phone_lengths.max(initial=0))
        if longest_pair > self.max_phones:
            raise ValueError(f"config.model.max_phones={self.max_phones} is too short: two words of the data take up "
                             f"to {longest_pair} phonemes")
        self.vocab_size = self.phone_offset + self.num_phone_ids

    @classmethod
    def from_config(cls, config, data_info):
        semantic, _ = load_tokenizers(config, acoustic=False)
        table, lengths = phone_table(_word_list(data_info))
        num_ids, pad = phone_vocab_size()
        loss = config.get("loss", ml_collections.ConfigDict())
        return cls(semantic=semantic, num_frames=_num_frames(config, data_info, semantic.frame_rate),
                   phone_ids=table, phone_lengths=lengths, num_phone_ids=num_ids, phone_pad=pad,
                   max_phones=config.model.max_phones, prompt_max_fraction=loss.get("prompt_max_fraction", 0.4),
                   **cls._shared_settings(config))

    @staticmethod
    def validate(config, data_info):
        problems = recipe_problems(config, data_info, T2S_SPEC, needs="audio")
        _width_problems(config, problems)
        return problems

    def info(self) -> dict[str, Any]:
        return {"stage": "t2s", "frame_rate": self.frame_rate, "sample_rate": self.sample_rate,
                "num_frames": self.num_frames, "codebook_size": self.codebook_size, "max_phones": self.max_phones,
                "semantic_workdir": self.semantic.run.workdir, "sampling": self.sampling}

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        return TokenTransformer(vocab_size=self.vocab_size, token_shape=(self.max_phones + self.num_frames,),
                                conditioning="none", rngs=rngs, **self.backbone)

    # ---- inputs
    def phones_of_words(self, prompt_words: jax.Array | None, words: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Joint-vocabulary phoneme prefix [B, P] of prompt word + target word, and the prompt's count."""
        table, lengths = jnp.asarray(self.phone_ids), jnp.asarray(self.phone_lengths)
        second, second_len = table[words], lengths[words]
        if prompt_words is None:
            first, first_len = second[:, :1], jnp.zeros_like(second_len)
        else:
            first, first_len = table[prompt_words], lengths[prompt_words]
        packed = pack_phones(first, first_len, second, second_len, self.max_phones, self.phone_pad)
        return packed + self.phone_offset, first_len

    def semantic_tokens(self, batch) -> tuple[jax.Array, jax.Array]:
        return self.semantic.encode(batch["audio"], self.num_frames), self._valid(batch)

    def logits(self, model: TokenTransformer, phones: jax.Array, frames: jax.Array, dropout_rng=None) -> jax.Array:
        """Semantic-code logits [B, S, C] for the frames [B, S] (codes, [PAD] or [MASK]) after phones [B, P]."""
        out = model(jnp.concatenate([phones, frames], axis=1), None, dropout_rng=dropout_rng)
        return out[:, self.max_phones:, :self.codebook_size]

    def loss(self, model, batch, rng, step):
        codes, valid = self.semantic_tokens(batch)
        phones, _ = self.phones_of_words(batch.get("prompt_label"), batch["label"])
        prompt, masked = self._draw_mask(rng, valid, batch.get("prompt_samples"))
        frames = jnp.where(valid, jnp.where(masked, model.mask_token_id, codes), self.frame_pad)
        logits = self.logits(model, phones, frames)
        weights = masked.astype(jnp.float32)
        loss = masked_mean(smoothed_cross_entropy(logits, codes, self.label_smoothing), weights)
        correct = (jnp.argmax(logits, -1) == codes).astype(jnp.float32)
        return loss, {"masked_accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
                      "mask_ratio": jnp.sum(weights) / jnp.maximum(jnp.sum(valid & ~prompt), 1),
                      "prompt_share": jnp.sum(prompt) / jnp.maximum(jnp.sum(valid), 1)}

    def generate(self, model, batch, rng, **settings):
        """Semantic tokens after a prompt. batch: "phones" int32 [B, P] (phoneme ids of prompt text then
        target text, `phone_pad` after), "num_prompt_phones" [B], "prompt_tokens" int32 [B, S] (semantic
        codes; the first "prompt_frames" [B] are the prompt), "total_frames" [B] (prompt + target; [PAD]
        after). Returns {"tokens" [B, S] (codes; 0 past total_frames), "nfe"}."""
        settings = self.decode_settings(**settings)
        cfg_scale = settings.pop("cfg_scale")
        pos = jnp.arange(self.num_frames)[None, :]
        prompt = pos < batch["prompt_frames"][:, None]
        beyond = pos >= batch["total_frames"][:, None]
        start = jnp.where(prompt, batch["prompt_tokens"], jnp.where(beyond, self.frame_pad, 0)).astype(jnp.int32)
        phones = batch["phones"].astype(jnp.int32) + self.phone_offset
        zeros = jnp.zeros_like(batch["prompt_frames"])
        cond = {"phones": phones, "frame_shift": zeros, "phone_shift": zeros}
        uncond = {"phones": phones, "frame_shift": batch["prompt_frames"], "phone_shift": batch["num_prompt_phones"]}

        def logits_fn(frames, c):
            # The unconditional rows drop the prompt (frames and its text): the target slides to the start.
            shifted = shift_left(frames, c["frame_shift"], self.frame_pad)
            text = shift_left(c["phones"], c["phone_shift"], self.phone_pad + self.phone_offset)
            return shift_right(self.logits(model, text, shifted), c["frame_shift"])

        guided = float(cfg_scale) != 1.0
        result = iterative_decode(logits_fn, tokens=start, known=prompt | beyond, rng=rng,
                                  mask_token_id=model.mask_token_id, cond=cond, uncond=uncond if guided else None,
                                  cfg_scale=cfg_scale, record_trajectory=False, **settings)
        return {"tokens": jnp.where(beyond, 0, result.tokens), "nfe": result.nfe}


# --------------------------------------------------------------------------- S2A


@register("maskgct_s2a")
class MaskGCTS2ARecipe(_MaskGCTRecipe):
    """Semantic tokens -> acoustic RVQ tokens, SoundStorm-like (see the module docstring). Streams:
    0 = semantic, 1..K = acoustic levels; one vocabulary of max(C_semantic, C_acoustic) ids plus [PAD]."""

    default_temperature = 1.5  # Amphion's semantic2acoustic
    default_steps = 25  # unused: S2A takes steps_per_level
    extra_decode_options = ("steps_per_level",)

    def __init__(self, *, codec: FrozenTokenizer, num_levels: int, steps_per_level=(25, 10, 1), **kwargs):
        super().__init__(**kwargs)
        self.codec = codec
        check_frame_rates(self.semantic, codec)
        if int(num_levels) != codec.num_levels:
            raise ValueError(f"a codec run whose number of levels differs from the model's: "
                             f"config.maskgct.codec_workdir={codec.run.workdir!r} has {codec.num_levels} RVQ levels, "
                             f"config.model.num_levels={num_levels}")
        self.num_levels = int(num_levels)
        self.acoustic_size = codec.codebook_size
        self.pad = max(self.semantic.codebook_size, self.acoustic_size)
        self.vocab_size = self.pad + 1
        self.steps_per_level = tuple(int(s) for s in steps_per_level)

    @classmethod
    def from_config(cls, config, data_info):
        semantic, codec = load_tokenizers(config, acoustic=True)
        loss = config.get("loss", ml_collections.ConfigDict())
        shared = {**cls._shared_settings(config), "min_mask_prob": loss.get("min_mask_prob", 0.0)}
        return cls(semantic=semantic, codec=codec, num_levels=config.model.num_levels,
                   num_frames=_num_frames(config, data_info, semantic.frame_rate),
                   prompt_max_fraction=loss.get("prompt_max_fraction", 0.5),
                   steps_per_level=tuple(config.get("sampling", {}).get("steps_per_level", (25, 10, 1))), **shared)

    @staticmethod
    def validate(config, data_info):
        problems = recipe_problems(config, data_info, S2A_SPEC, needs="audio")
        _width_problems(config, problems)
        return problems

    def info(self) -> dict[str, Any]:
        return {"stage": "s2a", "frame_rate": self.frame_rate, "sample_rate": self.sample_rate,
                "num_frames": self.num_frames, "num_levels": self.num_levels, "codebook_size": self.acoustic_size,
                "semantic_workdir": self.semantic.run.workdir, "codec_workdir": self.codec.run.workdir,
                "steps_per_level": self.steps_per_level, "sampling": self.sampling}

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        # The level being decoded is the "class" (adaLN), Amphion's layer embedding.
        return TokenTransformer(vocab_size=self.vocab_size, token_shape=(self.num_frames,), num_classes=self.num_levels,
                                conditioning="adaln", num_streams=self.num_levels + 1, rngs=rngs, **self.backbone)

    def tokens(self, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(semantic [B, S], acoustic [B, S, K], valid [B, S]) of batch["audio"]."""
        return (self.semantic.encode(batch["audio"], self.num_frames),
                self.codec.encode(batch["audio"], self.num_frames), self._valid(batch))

    def level_logits(self, model, semantic, acoustic, level: jax.Array) -> jax.Array:
        """Logits [B, S, C_acoustic] of level[b] from the streams (semantic [B, S], acoustic [B, S, K])."""
        out = model(jnp.concatenate([semantic[..., None], acoustic], axis=-1), level)  # [B, S, K + 1, V]
        picked = jnp.take_along_axis(out[:, :, 1:], level[:, None, None, None], axis=2)[:, :, 0]
        return picked[..., :self.acoustic_size]

    def training_inputs(self, rng, acoustic, valid, mask_token, prompt_samples=None):
        """(level [B], masked [B, S] of that level, acoustic input [B, S, K], prompt [B, S])."""
        level_rng, mask_rng = jax.random.split(rng)
        level = jax.random.choice(level_rng, self.num_levels, (acoustic.shape[0],),
                                  p=jnp.asarray(level_weights(self.num_levels), jnp.float32))
        prompt, masked = self._draw_mask(mask_rng, valid, prompt_samples)
        lv = jnp.arange(self.num_levels)[None, None, :]
        below = lv < level[:, None, None]
        hidden = jnp.where(lv == level[:, None, None], masked[..., None], ~below & ~prompt[..., None])
        inputs = jnp.where(valid[..., None], jnp.where(hidden, mask_token, acoustic), self.pad)
        return level.astype(jnp.int32), masked, inputs, prompt

    def loss(self, model, batch, rng, step):
        semantic, acoustic, valid = self.tokens(batch)
        level, masked, inputs, prompt = self.training_inputs(rng, acoustic, valid, model.mask_token_id,
                                                             batch.get("prompt_samples"))
        logits = self.level_logits(model, jnp.where(valid, semantic, self.pad), inputs, level)
        target = jnp.take_along_axis(acoustic, level[:, None, None], axis=2)[..., 0]
        weights = masked.astype(jnp.float32)
        loss = masked_mean(smoothed_cross_entropy(logits, target, self.label_smoothing), weights)
        correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
        metrics = {"masked_accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
                   "mean_level": jnp.mean(level.astype(jnp.float32))}
        return loss, metrics

    def level_steps(self, steps_per_level=None) -> tuple[int, ...]:
        """One step count per level: the given ones, the last repeated (paper [25, 10, 1, ...])."""
        steps = tuple(int(s) for s in (steps_per_level or self.steps_per_level))
        if not steps or min(steps) < 1:
            raise ValueError(f"steps_per_level must be ints >= 1, got {steps_per_level!r}")
        return (steps + (steps[-1],) * self.num_levels)[:self.num_levels]

    def generate(self, model, batch, rng, *, steps_per_level=None, **settings):
        """Acoustic tokens level by level. batch: "semantic" int32 [B, S] (prompt + target), "prompt_tokens"
        int32 [B, S, K] (the first "prompt_frames" [B] frames are the prompt's codes), "total_frames" [B].
        Returns {"tokens" [B, S, K] (0 past total_frames), "nfe"}."""
        settings = self.decode_settings(**settings)
        settings.pop("num_steps", None)
        cfg_scale = settings.pop("cfg_scale")
        pos = jnp.arange(self.num_frames)[None, :]
        prompt = pos < batch["prompt_frames"][:, None]
        beyond = pos >= batch["total_frames"][:, None]
        semantic = jnp.where(beyond, self.pad, batch["semantic"]).astype(jnp.int32)
        given = jnp.where(prompt[..., None], batch["prompt_tokens"], model.mask_token_id)
        acoustic = jnp.where(beyond[..., None], self.pad, given).astype(jnp.int32)
        zeros = jnp.zeros_like(batch["prompt_frames"])
        guided = float(cfg_scale) != 1.0
        nfe = jnp.zeros((), jnp.int32)
        for k, steps in enumerate(self.level_steps(steps_per_level)):
            level = jnp.full((semantic.shape[0],), k, jnp.int32)
            cond = {"level": level, "frame_shift": zeros}
            uncond = {"level": level, "frame_shift": batch["prompt_frames"]}

            def logits_fn(tokens, c, k=k, acoustic=acoustic):
                reps = tokens.shape[0] // acoustic.shape[0]  # 2 when guided: cond rows, then uncond rows
                levels = jnp.concatenate([acoustic] * reps)
                streams = jnp.concatenate([levels[:, :, :k], tokens[..., None], levels[:, :, k + 1:]], axis=-1)
                shift = c["frame_shift"]
                out = self.level_logits(model, shift_left(jnp.concatenate([semantic] * reps), shift, self.pad),
                                        shift_left(streams, shift, self.pad), c["level"])
                return shift_right(out, shift)

            start = jnp.where(prompt | beyond, acoustic[:, :, k], 0)
            result = iterative_decode(logits_fn, tokens=start, known=prompt | beyond, rng=jax.random.fold_in(rng, k),
                                      mask_token_id=model.mask_token_id, num_steps=steps, cond=cond,
                                      uncond=uncond if guided else None, cfg_scale=cfg_scale,
                                      record_trajectory=False, **settings)
            acoustic = acoustic.at[:, :, k].set(result.tokens)
            nfe = nfe + result.nfe
        return {"tokens": jnp.where(beyond[..., None], 0, acoustic), "nfe": nfe}


# --------------------------------------------------------------------------- zero-shot pipeline


def decode_acoustic(codec: FrozenTokenizer, codes: np.ndarray, num_samples: int, griffin_lim_iters: int | None = None
                    ) -> np.ndarray:
    """Acoustic tokens [n, frames, K] -> waveforms float32 [n, num_samples] in [-1, 1], through the
    codec run window by window: a waveform codec's decode directly, a mel codec's scaled log-mel
    ([B, n_mels, frames, 1]) joined over the windows and turned into audio by Griffin-Lim."""
    from maskgen.audio import features

    codes = np.asarray(codes, np.int32)
    n, frames = codes.shape[:2]
    fpw = codec.frames_per_window
    windows = -(-frames // fpw)
    codes = np.pad(codes, ((0, 0), (0, windows * fpw - frames), (0, 0))).reshape(n * windows, fpw, -1)
    decoded = np.asarray(_jitted(codec, ("decode",), lambda: lambda c: codec.run.call("decode", {"codes": c}))(codes))
    info = codec.run.info
    if info.get("decodes_to", "audio") == "audio":
        audio = decoded.reshape(n, -1)
    else:
        cfg = features.MelConfig.from_dict(info["mel"])
        log_mel = np.asarray(features.unscale_log_mel(np.transpose(decoded[..., 0], (0, 2, 1))))  # [nW, frames, mels]
        log_mel = log_mel.reshape(n, -1, log_mel.shape[-1])
        iters = int(griffin_lim_iters or info.get("griffin_lim_iters", 32))
        vocoder = _jitted(codec, ("griffin_lim", iters), lambda: lambda m: features.mel_to_audio(
            m, cfg, num_iters=iters, length=m.shape[1] * cfg.hop))
        audio = np.asarray(vocoder(log_mel))
    audio = np.pad(audio, ((0, 0), (0, max(0, num_samples - audio.shape[1]))))[:, :num_samples]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _recipe_of(run, cls, role: str):
    if not isinstance(run.recipe, cls):
        raise ValueError(f"{role}={run.workdir!r} is a {run.config.recipe!r} run; it must be a {cls.name!r} run")
    return run.recipe


def _jitted(owner, key, make):
    """A jitted function kept on `owner` (a run or tokenizer) under `key`, so repeated calls (a
    benchmark's settings, a CLI batch) compile once per shape instead of once per call."""
    cache = owner.__dict__.setdefault("_maskgct_jitted", {})
    if key not in cache:
        cache[key] = jax.jit(make())
    return cache[key]


def _generate(run, batch: dict, rng: jax.Array, settings: dict | None) -> dict:
    """run.recipe.generate, jitted with the weights as arguments (not constants folded into the program)."""
    settings = dict(settings or {})

    def make():
        def fn(params, batch, rng):
            return run.recipe.generate(nnx.merge(run.graphdef, params, run.model_state), batch, rng, **settings)
        return fn

    return _jitted(run, ("generate", tuple(sorted(settings.items()))), make)(run.params, batch, rng)


def open_voice_runs(s2a_workdir: str, t2s_workdir: str):
    """The frozen (s2a_run, t2s_run) pair `maskgct_generate` takes, checked to be a `maskgct_s2a` and
    a `maskgct_t2s` run (errors name the flags of `maskgen sample`)."""
    from maskgen.recipes.frozen import load_frozen_run

    return (load_frozen_run(s2a_workdir, role="--workdir", recipes=("maskgct_s2a",)),
            load_frozen_run(t2s_workdir, role="--t2s-workdir", recipes=("maskgct_t2s",)))


def maskgct_generate(t2s_run, s2a_run, texts, prompt_audio, prompt_texts, *, seed: int = 0, target_frames_override=None,
                     t2s_settings: dict | None = None, s2a_settings: dict | None = None,
                     griffin_lim_iters: int | None = None, use_prompt: bool = True, semantic_tokens=None) -> dict:
    """Zero-shot voice prompting: say `texts` in the voice of `prompt_audio`.

    t2s_run, s2a_run: FrozenRuns (`maskgen.recipes.frozen.load_frozen_run`) of a `maskgct_t2s` and a
    `maskgct_s2a` run on the same semantic tokenizer. texts, prompt_texts: one string per sample
    (the text to say; what the prompt says, for the phoneme prefix and the duration rule).
    prompt_audio: n mono clips float32 [T_i] (a list, or an array [n, T]) at the runs' sample rate,
    each cut to its sound. The text is
    phonemised (UnreadableTextError for characters eSpeak NG cannot read), the prompt tokenized by
    the frozen semantic tokenizer and codec, T2S then S2A decode, and the codec decodes the audio.
    target_frames_override: int or [n] target frames (default: the prompt's phone rate).
    use_prompt=False: the no-prompt baseline (no prompt frames, no prompt text; the voice is the
    model's choice): target_frames_override is then required.
    semantic_tokens: int [n, S] semantic tokens of the whole utterance (e.g. a real pair's, encoded by
    the runs' semantic tokenizer): T2S is skipped and S2A reads them (the S2A-only ceiling of B21).
    Returns {"audio" [n, samples] (prompt + target), "target_audio" [n, samples] (the generated part,
    zero padded), "prompt_samples", "target_samples" [n], "semantic" [n, S], "acoustic" [n, S, K],
    "sample_rate", "nfe_t2s", "nfe_s2a"}.
    """
    t2s = _recipe_of(t2s_run, MaskGCTT2SRecipe, "--t2s-workdir")
    s2a = _recipe_of(s2a_run, MaskGCTS2ARecipe, "--workdir")
    import os

    same = os.path.realpath(t2s.semantic.run.workdir) == os.path.realpath(s2a.semantic.run.workdir)
    if not same:
        raise ValueError(f"the T2S run {t2s_run.workdir} uses the semantic tokenizer {t2s.semantic.run.workdir}, "
                         f"the S2A "
                         f"run {s2a_run.workdir} uses {s2a.semantic.run.workdir}: they must share one")
    if t2s.num_frames != s2a.num_frames:
        raise ValueError(f"the T2S run has {t2s.num_frames} frames per example, the S2A run {s2a.num_frames}")
    if isinstance(prompt_audio, np.ndarray) and prompt_audio.ndim == 1:
        prompt_audio = [prompt_audio]
    prompt_audio = [np.asarray(a, np.float32).reshape(-1) for a in prompt_audio]  # clips of any lengths
    n = len(prompt_audio)
    texts = [texts] * n if isinstance(texts, str) else list(texts)
    prompt_texts = [prompt_texts] * n if isinstance(prompt_texts, str) else list(prompt_texts)
    if len(texts) != n or len(prompt_texts) != n:
        raise ValueError(f"{n} prompts need {n} texts and prompt texts, got {len(texts)} and {len(prompt_texts)}")
    frames, spf = t2s.num_frames, t2s.samples_per_frame
    capacity = int(round(frames * spf))
    phones = np.full((n, t2s.max_phones), t2s.phone_pad, np.int32)
    num_prompt_phones, prompt_frames, total_frames = (np.zeros(n, np.int32) for _ in range(3))
    audio_in = np.zeros((n, capacity, 1), np.float32)
    overrides = np.broadcast_to(np.asarray(target_frames_override if target_frames_override is not None else 0), (n,))
    for i in range(n):
        target_ids = text_phone_ids(texts[i])
        prompt_ids = text_phone_ids(prompt_texts[i]) if use_prompt else np.zeros((0,), np.int32)
        if len(prompt_ids) + len(target_ids) > t2s.max_phones:
            raise ValueError(f"prompt text {prompt_texts[i]!r} and text {texts[i]!r} take {len(prompt_ids)} + "
                             f"{len(target_ids)} phonemes; the T2S run takes at most {t2s.max_phones}")
        phones[i, :len(prompt_ids) + len(target_ids)] = np.concatenate([prompt_ids, target_ids])
        num_prompt_phones[i] = len(prompt_ids)
        clip = prompt_audio[i][:capacity] if use_prompt else prompt_audio[i][:0]
        if use_prompt:
            prompt_frames[i] = max(1, int(math.ceil((np.flatnonzero(np.abs(clip) > 0).max(initial=0) + 1) / spf)))
        elif not int(overrides[i]):
            raise ValueError("without a prompt the target duration must be given (target_frames_override)")
        target = int(overrides[i]) or target_frames(t2s.frame_rate, prompt_frames[i] / t2s.frame_rate,
                                                    count_phones(prompt_ids), count_phones(target_ids))
        total_frames[i] = prompt_frames[i] + target
        if total_frames[i] > frames:
            raise ValueError(f"the prompt ({prompt_frames[i]} frames) and the target ({target} frames) exceed the "
                             f"runs' "
                             f"{frames} frames ({frames / t2s.frame_rate:g} s): use a shorter prompt or duration")
        audio_in[i, :len(clip), 0] = clip
    audio_in = jnp.asarray(audio_in)
    encode_semantic = _jitted(t2s.semantic, ("encode", frames), lambda: lambda a: t2s.semantic.encode(a, frames))
    encode_acoustic = _jitted(s2a.codec, ("encode", frames), lambda: lambda a: s2a.codec.encode(a, frames))
    prompt_semantic, prompt_acoustic = encode_semantic(audio_in), encode_acoustic(audio_in)
    rng_t2s, rng_s2a = jax.random.split(jax.random.key(seed))
    t2s_batch = {"phones": jnp.asarray(phones), "num_prompt_phones": jnp.asarray(num_prompt_phones),
                 "prompt_tokens": prompt_semantic, "prompt_frames": jnp.asarray(prompt_frames),
                 "total_frames": jnp.asarray(total_frames)}
    if semantic_tokens is None:
        t2s_out = _generate(t2s_run, t2s_batch, rng_t2s, t2s_settings)
    else:
        semantic_tokens = jnp.asarray(semantic_tokens, jnp.int32)
        if semantic_tokens.shape != prompt_semantic.shape:
            raise ValueError(f"semantic_tokens must be [n, S] = {tuple(prompt_semantic.shape)}, got "
                             f"{tuple(semantic_tokens.shape)}")
        t2s_out = {"tokens": semantic_tokens, "nfe": 0}
    s2a_batch = {"semantic": t2s_out["tokens"], "prompt_tokens": prompt_acoustic,
                 "prompt_frames": jnp.asarray(prompt_frames), "total_frames": jnp.asarray(total_frames)}
    s2a_out = _generate(s2a_run, s2a_batch, rng_s2a, s2a_settings)
    acoustic = np.asarray(s2a_out["tokens"])
    audio = decode_acoustic(s2a.codec, acoustic, capacity, griffin_lim_iters)
    prompt_samples = np.round(prompt_frames * spf).astype(np.int64)
    total_samples = np.round(total_frames * spf).astype(np.int64)
    target_audio = np.zeros_like(audio)
    for i in range(n):
        audio[i, total_samples[i]:] = 0.0
        piece = audio[i, prompt_samples[i]:total_samples[i]]
        target_audio[i, :len(piece)] = piece
    return {"audio": audio, "target_audio": target_audio, "prompt_samples": prompt_samples,
            "target_samples": total_samples - prompt_samples, "semantic": np.asarray(t2s_out["tokens"]),
            "acoustic": acoustic, "sample_rate": s2a.sample_rate, "nfe_t2s": int(t2s_out["nfe"]),
            "nfe_s2a": int(s2a_out["nfe"])}


__all__ = ["MaskGCTT2SRecipe", "MaskGCTS2ARecipe", "FrozenTokenizer", "decode_acoustic", "maskgct_generate",
           "bernoulli_mask", "draw_prompt_lengths",
           "level_weights", "mask_probability", "pack_phones", "shift_left", "shift_right", "target_frames"]
