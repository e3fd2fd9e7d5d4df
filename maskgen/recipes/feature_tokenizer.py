"""Semantic tokens: k-means on normalised per-frame features of a frozen encoder run (MaskGCT).

MaskGCT (Wang et al., arXiv 2409.00750) makes its "semantic" tokens from a self-supervised speech
encoder: w2v-BERT 2.0's layer-17 features at 50 Hz, normalised per dimension by their mean and
std, quantised by a VQ of 8192 codes (its ablations also use k-means). maskgen's counterpart:

  * The encoder is any trained run of a kind in ENCODERS, named by `config.encoder.workdir` and
    restored frozen (maskgen.recipes.frozen.load_frozen_run); `config.encoder.layer` picks the
    layer. Today: SSAST frame-token runs (recipe "ssast", `model.tokens="frame"`: one token per
    2 mel frames = 20 ms, i.e. 50 Hz at a 10 ms hop). A w2v-BERT 2.0 import or an MAE run
    (DiGIT, issue 19: k-means on MAE features of images) plugs in as another entry of ENCODERS.
  * Normalisation: per feature dimension, (f - mean) / std, MaskGCT's. maskgen estimates mean and
    std from the training data, as running statistics over the first `model.stats_steps` batches
    (exact pooled moments: Chan et al.'s parallel update of count, mean and M2), then frozen.
    Only then does k-means start, so the codebook never sees a normalisation that later changes.
  * Quantiser: EMA mini-batch k-means, i.e. maskgen's VectorQuantizer with an EMA codebook
    (decay `model.ema_decay`, each centroid the running mean of the vectors assigned to it), a
    k-means init (`model.kmeans_iters` Lloyd iterations on the first k-means batch) and dead-code
    restarts (a centroid used by less than `model.dead_code_threshold` of the uniform share is
    moved onto a random vector of the batch). Nothing is trained by gradient: the loss is the
    squared distance to the nearest centroid (the k-means distortion), logged with perplexity and
    usage. Evaluate with `config.eval_params="params"` (the codebook is set in place; an EMA of
    it over steps would mix in the initial codes).

Audio of any length is cut into the encoder's clip length (`num_frames x hop` samples; the last
piece zero padded), each piece encoded on its own (SSAST has learned positions for one clip), and
the frames concatenated and cut to T // samples_per_token: 50 tokens per second of 16 kHz audio,
the frame count of a 50 Hz codec on the same samples (a 2 s prompt+target pair -> 100 tokens).

`encode(model, {"audio": [B, T, 1]}, rng)` -> int32 [B, frames]. `capabilities = {"encode"}`, so
`maskgen tokenize` writes the tokens of a dataset (token_shape (frames,) of its clip length).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import integer, number, recipe_problems, string
from maskgen.recipes.base import Recipe, register
from maskgen.tokenizers.quantizers import VectorQuantizer

CONFIG_SPEC = {
    "encoder.workdir": string(nonempty=True, why="a trained encoder run (an SSAST frame-token run)"),
    "encoder.layer": integer(min=-1, why="-1: the final output; k: the output of block k (0: the embeddings)"),
    "model.codebook_size": integer(min=2),
    "model.stats_steps": integer(min=1, why="batches whose features give the normalisation statistics before "
                                            "k-means starts"),
    "model.ema_decay": number(0, 1, max_open=True),
    "model.kmeans_iters": integer(min=1),
    "model.dead_code_threshold": number(0, why="share of the uniform usage below which a centroid restarts"),
}
_STD_FLOOR = 1e-5  # a feature dimension that never varies is divided by this, not by 0


# ------------------------------------------------------------------- the frozen encoder, pluggable

class SSASTFrameFeatures:
    """Per-frame features of an SSAST frame-token run (maskgen.recipes.ssast), from audio."""

    input_field = "audio"

    @staticmethod
    def problems(encoder_config: ml_collections.ConfigDict, layer: int, role: str) -> list[str]:
        """What makes the run unusable, from its config alone (no weights read)."""
        m = encoder_config.model
        out = []
        if m.get("tokens") != "frame":
            out.append(f"{role} is an SSAST run with model.tokens={m.get('tokens')!r}: semantic tokens need one token "
                       "per time step, an SSAST frame-token run (model.tokens='frame')")
        if not -1 <= layer <= m.depth:
            out.append(f"config.encoder.layer={layer}: the SSAST run in {role} has {m.depth} blocks; use -1 (the "
                       f"final output) or 0..{m.depth}")
        return out

    @staticmethod
    def geometry(frozen) -> dict:
        """{"sample_rate", "chunk_samples" (audio per encoder call), "samples_per_token", "width"}."""
        recipe = frozen.recipe
        hop = recipe.mel.hop
        return {"sample_rate": recipe.mel.sample_rate, "chunk_samples": recipe.num_frames * hop,
                "samples_per_token": recipe.patch_shape[1] * hop, "width": recipe.model_kwargs["width"]}

    @staticmethod
    def features(frozen, audio: jax.Array, layer: int) -> jax.Array:
        """audio [B, chunk_samples, 1] -> [B, tokens, width]."""
        return frozen.call("token_features", {"audio": audio}, layer=layer)


# Recipe name of the encoder run -> how to read its features. Another encoder (an MAE run for
# DiGIT's image tokens, an imported w2v-BERT) plugs in here.
ENCODERS: dict[str, Any] = {"ssast": SSASTFrameFeatures}


def _encoder_problems(workdir: str, layer: int, sample_rate: int | None) -> list[str]:
    """Checks a run named by config.encoder.workdir from its config (nothing when it is not there
    yet: training it may come later; setup then fails naming the workdir)."""
    import os

    from maskgen.checkpoint import load_run_config

    role = f"config.encoder.workdir={workdir!r}"
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return []
    config = load_run_config(workdir)
    if config.recipe not in ENCODERS:
        return [f"{role} is a {config.recipe!r} run; the feature tokenizer reads runs of: "
                f"{', '.join(sorted(ENCODERS))}"]
    problems = ENCODERS[config.recipe].problems(config, layer, role)
    rate = config.model.get("mel", {}).get("sample_rate") if config.recipe == "ssast" else None
    if rate is not None and sample_rate is not None and rate != sample_rate:
        problems.append(f"{role} was trained on {rate} Hz audio, but config.data gives {sample_rate} Hz; set the "
                        f"data's sample_rate to {rate}")
    return problems


# ------------------------------------------------------------------- the model

class FeatureStatistics(nnx.Variable):
    """Running moments of the encoder features (not trained by gradient)."""


class FeatureKMeans(nnx.Module):
    """Per-dimension feature statistics and an EMA k-means codebook over the normalised features."""

    def __init__(self, width: int, codebook_size: int, *, rngs: nnx.Rngs, ema_decay: float, kmeans_iters: int,
                 dead_code_threshold: float):
        self.quantizer = VectorQuantizer(width, codebook_size, rngs=rngs, commitment_weight=1.0, use_ema=True,
                                         ema_decay=ema_decay, kmeans_init=True, kmeans_iters=kmeans_iters,
                                         restart_dead_codes=True, dead_code_threshold=dead_code_threshold)
        self.count = FeatureStatistics(jnp.zeros((), jnp.float32))
        self.mean = FeatureStatistics(jnp.zeros((width,), jnp.float32))
        self.m2 = FeatureStatistics(jnp.zeros((width,), jnp.float32))  # sum of squared deviations

    def std(self) -> jax.Array:
        return jnp.maximum(jnp.sqrt(self.m2[...] / jnp.maximum(self.count[...], 1.0)), _STD_FLOOR)

    def normalize(self, features: jax.Array) -> jax.Array:
        return (features - self.mean[...]) / self.std()

    def add_statistics(self, features: jax.Array, active: jax.Array) -> None:
        """Pools the moments of `features` [N, D] into the running ones when `active` (Chan et al.)."""
        n_b = jnp.asarray(features.shape[0], jnp.float32)
        mean_b = features.mean(0)
        m2_b = jnp.square(features - mean_b).sum(0)
        n_a, mean_a = self.count[...], self.mean[...]
        total = n_a + n_b
        delta = mean_b - mean_a
        new = (total, mean_a + delta * n_b / total, self.m2[...] + m2_b + jnp.square(delta) * n_a * n_b / total)
        for var, value in zip((self.count, self.mean, self.m2), new):
            var[...] = jnp.where(active, value, var[...])


@register("feature_tokenizer")
class FeatureTokenizerRecipe(Recipe):
    capabilities = frozenset({"encode"})

    def __init__(self, *, encoder, layer: int, codebook_size: int, stats_steps: int, ema_decay: float,
                 kmeans_iters: int, dead_code_threshold: float, clip_samples: int | None):
        """encoder: the frozen encoder run (maskgen.recipes.frozen.FrozenRun) of a kind in ENCODERS."""
        if encoder.config.recipe not in ENCODERS:
            raise ValueError(f"config.encoder.workdir={encoder.workdir!r} is a {encoder.config.recipe!r} run; the "
                             f"feature tokenizer reads runs of: {', '.join(sorted(ENCODERS))}")
        self.encoder = encoder
        self.reader = ENCODERS[encoder.config.recipe]
        problems = self.reader.problems(encoder.config, layer, f"config.encoder.workdir={encoder.workdir!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.layer = int(layer)
        self.geometry = self.reader.geometry(encoder)
        self.codebook_size = int(codebook_size)
        self.stats_steps = int(stats_steps)
        self.model_kwargs = dict(width=self.geometry["width"], codebook_size=self.codebook_size,
                                 ema_decay=float(ema_decay), kmeans_iters=int(kmeans_iters),
                                 dead_code_threshold=float(dead_code_threshold))
        self.clip_samples = clip_samples

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "FeatureTokenizerRecipe":
        from maskgen.recipes.frozen import load_frozen_run

        m = config.model
        audio = (data_info.get("fields") or {}).get("audio")
        if audio is not None and audio.shape[0] is None:
            raise ValueError(f"the {config.data.name!r} clips vary in length; the feature tokenizer trains on "
                             "fixed-length clips (set the source's clip_seconds)")
        encoder = load_frozen_run(config.encoder.workdir, role="config.encoder.workdir", recipes=tuple(ENCODERS))
        recipe = cls(encoder=encoder, layer=config.encoder.layer, codebook_size=m.codebook_size,
                     stats_steps=m.stats_steps, ema_decay=m.ema_decay, kmeans_iters=m.kmeans_iters,
                     dead_code_threshold=m.dead_code_threshold, clip_samples=None if audio is None else audio.shape[0])
        rate = recipe.geometry["sample_rate"]
        if audio is not None and audio.sample_rate != rate:
            raise ValueError(f"config.encoder.workdir={encoder.workdir!r} was trained on {rate} Hz audio, but the "
                             f"{config.data.name!r} data is at {audio.sample_rate} Hz; set the data's sample_rate "
                             f"to {rate}")
        return recipe

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        problems = recipe_problems(config, data_info, CONFIG_SPEC, needs="audio")
        if config.get("eval_params", "ema") != "params":
            problems.append(f"config.eval_params={config.get('eval_params')!r}: k-means sets the codebook in place, "
                            "and an EMA of it over steps mixes in the initial codes; use eval_params='params'")
        if problems.ok("model.stats_steps", "total_steps") and config.model.stats_steps >= config.total_steps:
            problems.append(f"config.model.stats_steps={config.model.stats_steps}: k-means starts after the statistics "
                            f"steps, so it must be fewer than config.total_steps={config.total_steps}")
        if problems.ok("encoder.workdir", "encoder.layer"):
            audio = (data_info.get("fields") or {}).get("audio")
            problems.extend(_encoder_problems(config.encoder.workdir, config.encoder.layer,
                                              None if audio is None else audio.sample_rate))
        return problems

    def info(self) -> dict[str, Any]:
        g = self.geometry
        frames = None if self.clip_samples is None else self.clip_samples // g["samples_per_token"]
        return {"token_shape": (frames,), "codebook_size": self.codebook_size, "num_levels": 1,
                "quantizer": "kmeans", "frame_rate": g["sample_rate"] / g["samples_per_token"],
                "sample_rate": g["sample_rate"], "samples_per_token": g["samples_per_token"],
                "feature_width": g["width"], "decodes_to": None,
                "encoder": {"workdir": self.encoder.workdir, "recipe": self.encoder.config.recipe,
                            "layer": self.layer, "step": self.encoder.step}}

    def make_model(self, rngs: nnx.Rngs) -> FeatureKMeans:
        return FeatureKMeans(rngs=rngs, **self.model_kwargs)

    # ---- features of the frozen encoder
    def encoder_features(self, audio: jax.Array) -> jax.Array:
        """audio [B, T, 1] -> float32 [B, T // samples_per_token, width], no gradient: the audio cut
        into the encoder's clips (the last zero padded), each encoded, the frames concatenated."""
        g = self.geometry
        if audio.ndim != 3 or audio.shape[-1] != 1:
            raise ValueError(f"the feature tokenizer takes mono audio [B, T, 1], got {audio.shape}")
        batch, length = audio.shape[:2]
        frames = length // g["samples_per_token"]
        if frames < 1:
            raise ValueError(f"audio of {length} samples is shorter than one token ({g['samples_per_token']} samples)")
        chunk = g["chunk_samples"]
        pieces = math.ceil(length / chunk)
        padded = jnp.pad(audio.astype(jnp.float32), ((0, 0), (0, pieces * chunk - length), (0, 0)))
        features = self.reader.features(self.encoder, padded.reshape(batch * pieces, chunk, 1), self.layer)
        features = features.reshape(batch, -1, features.shape[-1])[:, :frames]
        return jax.lax.stop_gradient(features.astype(jnp.float32))

    # ---- training: statistics, then EMA k-means
    def loss(self, model: FeatureKMeans, batch, rng, step):
        features = self.encoder_features(batch["audio"])
        flat = features.reshape(-1, features.shape[-1])
        gathering = jnp.asarray(step) < self.stats_steps
        model.add_statistics(flat, gathering)
        # While the statistics are gathered the codebook stays as it was (k-means starts after).
        before = nnx.to_pure_dict(nnx.state(model.quantizer))
        _, codes, aux = model.quantizer(model.normalize(flat), train=True, rng=rng)
        after = nnx.state(model.quantizer)
        nnx.replace_by_pure_dict(after, jax.tree.map(lambda old, new: jnp.where(gathering, old, new), before,
                                                     nnx.to_pure_dict(after)))
        nnx.update(model.quantizer, after)
        metrics = {"distortion": aux["commitment"], "perplexity": aux["perplexity"], "usage": aux["usage"],
                   "dead_codes_restarted": aux["dead_codes_restarted"],
                   "gathering_statistics": gathering.astype(jnp.float32)}
        return aux["loss"], metrics

    def encode(self, model: FeatureKMeans, batch, rng):
        """{"audio" [B, T, 1]} -> int32 codes [B, T // samples_per_token]."""
        features = self.encoder_features(batch["audio"])
        _, codes, _ = model.quantizer(model.normalize(features), train=False)
        return codes

    def normalized_features(self, model: FeatureKMeans, batch, rng):
        """{"audio" [B, T, 1]} -> the normalised features [B, frames, width] that k-means clusters."""
        return model.normalize(self.encoder_features(batch["audio"]))
