"""Semantic tokens: k-means on normalised features of a frozen encoder run (MaskGCT, DiGIT).

MaskGCT (Wang et al., arXiv 2409.00750) makes its "semantic" tokens from a self-supervised speech
encoder: w2v-BERT 2.0's layer-17 features at 50 Hz, normalised per dimension by their mean and
std, quantised by a VQ of 8192 codes (its ablations also use k-means). maskgen's counterpart:

  * The encoder is any trained run of a kind in ENCODERS, named by `config.encoder.workdir` and
    restored frozen (maskgen.recipes.frozen.load_frozen_run); `config.encoder.layer` picks the
    layer. Two kinds: SSAST frame-token runs (recipe "ssast", `model.tokens="frame"`: one token
    per 2 mel frames = 20 ms, i.e. 50 Hz at a 10 ms hop) and MAE runs (recipe "mae": DiGIT's image
    tokens, below). A w2v-BERT 2.0 import plugs in as another entry of ENCODERS.
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

`encode(model, {"audio": [B, T, 1]}, rng)` -> int32 [B, frames], so `maskgen tokenize` writes the
tokens of a dataset (token_shape (frames,) of its clip length). Audio tokens do not decode.

DiGIT (Zhu et al., arXiv 2410.12490) tokenizes images by k-means (K = 8192) on the patch features
of a frozen self-supervised ViT (DINOv2, the third-to-last block) and generates those tokens. Here
the encoder is a maskgen MAE run (maskgen.recipes.mae): its ViT encoder runs on ALL patches of the
image, and `config.encoder.layer` picks the features (-1: the final output, after the encoder's
LayerNorm; k >= 1: the output of block k, before it, so DiGIT's third-to-last block of a depth-d
encoder is k = d - 2; 0: the patch embeddings with their positions). The patch tokens (the class
token dropped) form the [rows, cols] grid of the run's patches; `encode(model, {"image"}, rng)` ->
int32 [B, rows, cols].

Decoding, DiGIT's way and maskgen's: DiGIT never decodes its k-means tokens to pixels; a second
stage predicts VQGAN tokens from them and VQGAN decodes those. maskgen decodes them directly with
the *per-code mean patch*: while k-means trains, each code keeps an EMA (decay `model.ema_decay`)
of the count and the sum of the pixel patches assigned to it, and the table of their ratios is the
least-squares lookup-table decoder given the codes (the mean minimises the squared error over a
code's patches). `decode` pastes each code's mean patch into its place; `reconstruct` is encode
then decode. Like the statistics, the table only starts with k-means (the codes before it are
random); a code never assigned decodes to 0 (mid-grey). It is a blurry ceiling of what the tokens
carry about pixels, not a VQGAN-grade decoder: no learned decoder, no context across patches.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import integer, number, recipe_problems, string
from maskgen.models.vit import patchify, unpatchify
from maskgen.recipes.base import Recipe, register
from maskgen.tokenizers.quantizers import VectorQuantizer

CONFIG_SPEC = {
    "encoder.workdir": string(nonempty=True, why="a trained encoder run (an SSAST frame-token run or an MAE run)"),
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


def mae_block_output(encoder: nnx.Module, patches: jax.Array, layer: int) -> jax.Array:
    """A maskgen ViTEncoder (maskgen.models.vit) on all `patches` [B, N, P] -> [B, 1+N, width]:
    layer -1 its final output; k >= 1 the output of block k (before the final LayerNorm); 0 the
    transformer's input (class token, then patch embeddings plus positions)."""
    if layer == -1:
        return encoder(patches)
    if layer == 0:
        return encoder.embed(patches)
    return encoder.hidden_states(patches)[layer - 1]  # the unused later blocks are pruned by XLA


class MAEPatchFeatures:
    """Per-patch features of an MAE run's encoder (maskgen.recipes.mae) on every patch of an image
    (DiGIT, arXiv 2410.12490): a [rows, cols] grid of feature vectors."""

    input_field = "image"

    @staticmethod
    def problems(encoder_config: ml_collections.ConfigDict, layer: int, role: str) -> list[str]:
        depth = encoder_config.model.depth
        if not -1 <= layer <= depth:
            return [f"config.encoder.layer={layer}: the MAE run in {role} has {depth} encoder blocks; use -1 (the "
                    f"final output), 1..{depth} (the output of that block; DiGIT's third-to-last block is "
                    f"{depth - 2}) or 0 (the patch embeddings)"]
        return []

    @staticmethod
    def geometry(frozen) -> dict:
        """{"image_size", "channels", "patch_size", "grid" (rows, cols), "width"}."""
        recipe = frozen.recipe
        return {"image_size": recipe.image_size, "channels": recipe.channels, "patch_size": recipe.patch_size,
                "grid": tuple(recipe.grid), "width": recipe.model_kwargs["width"]}

    @staticmethod
    def features(frozen, images: jax.Array, layer: int) -> jax.Array:
        """images [B, H, W, C] -> [B, rows, cols, width] (the class token dropped)."""
        recipe = frozen.recipe
        tokens = mae_block_output(frozen.module().encoder, patchify(images, recipe.patch_size), layer)
        return tokens[:, 1:].reshape(images.shape[0], *recipe.grid, -1)


# Recipe name of the encoder run -> how to read its features. Another encoder (an imported
# w2v-BERT or DINOv2) plugs in here.
ENCODERS: dict[str, Any] = {"ssast": SSASTFrameFeatures, "mae": MAEPatchFeatures}


def _encoder_problems(workdir: str, layer: int, sample_rate: int | None, image_size: int | None = None) -> list[str]:
    """Checks a run named by config.encoder.workdir from its config (nothing when it is not there
    yet: training it may come later; setup then fails naming the workdir). `sample_rate` / `image_size`:
    the data's (None when it has no audio / no images)."""
    import os

    from maskgen.checkpoint import load_run_config

    role = f"config.encoder.workdir={workdir!r}"
    if not os.path.exists(os.path.join(workdir, "config.json")):
        return []
    config = load_run_config(workdir)
    if config.recipe not in ENCODERS:
        return [f"{role} is a {config.recipe!r} run; the feature tokenizer reads runs of: "
                f"{', '.join(ENCODERS)}"]
    problems = ENCODERS[config.recipe].problems(config, layer, role)
    rate = config.model.get("mel", {}).get("sample_rate") if config.recipe == "ssast" else None
    if rate is not None and sample_rate is not None and rate != sample_rate:
        problems.append(f"{role} was trained on {rate} Hz audio, but config.data gives {sample_rate} Hz; set the "
                        f"data's sample_rate to {rate}")
    if ENCODERS[config.recipe].input_field == "image":
        if image_size is None:
            problems.append(f"{role} is an MAE run, which encodes images, but config.data has none")
        elif image_size != config.data.image_size:
            problems.append(f"{role} was trained on {config.data.image_size}x{config.data.image_size} images, but "
                            f"config.data.image_size={image_size}; set it to {config.data.image_size}")
    return problems


# ------------------------------------------------------------------- the model

class FeatureStatistics(nnx.Variable):
    """Running moments of the encoder features (not trained by gradient)."""


class MeanPatches(nnx.Variable):
    """EMA count and pixel sum of the patches assigned to each code (not trained by gradient)."""


class FeatureKMeans(nnx.Module):
    """Per-dimension feature statistics and an EMA k-means codebook over the normalised features;
    with `patch_dim` > 0 also the per-code mean patch (the lookup-table decoder of image codes)."""

    def __init__(self, width: int, codebook_size: int, *, rngs: nnx.Rngs, ema_decay: float, kmeans_iters: int,
                 dead_code_threshold: float, patch_dim: int = 0):
        self.quantizer = VectorQuantizer(width, codebook_size, rngs=rngs, commitment_weight=1.0, use_ema=True,
                                         ema_decay=ema_decay, kmeans_init=True, kmeans_iters=kmeans_iters,
                                         restart_dead_codes=True, dead_code_threshold=dead_code_threshold)
        self.count = FeatureStatistics(jnp.zeros((), jnp.float32))
        self.mean = FeatureStatistics(jnp.zeros((width,), jnp.float32))
        self.m2 = FeatureStatistics(jnp.zeros((width,), jnp.float32))  # sum of squared deviations
        self.ema_decay = ema_decay
        if patch_dim:  # audio runs have none (and their checkpoints keep loading)
            self.patch_count = MeanPatches(jnp.zeros((codebook_size,), jnp.float32))
            self.patch_sum = MeanPatches(jnp.zeros((codebook_size, patch_dim), jnp.float32))

    def mean_patches(self) -> jax.Array:
        """[K, patch_dim]: each code's mean patch (0 for a code never assigned). Both EMAs start at 0
        with the same decay, so their ratio is an unbiased weighted mean from the first update."""
        count = self.patch_count[...]
        return self.patch_sum[...] / jnp.where(count > 0, count, 1.0)[:, None]

    def add_patches(self, patches: jax.Array, codes: jax.Array, active: jax.Array) -> None:
        """EMA update of the per-code count and sum with `patches` [N, P] assigned `codes` [N], when `active`."""
        one_hot = jax.nn.one_hot(codes, self.patch_count.shape[0], dtype=jnp.float32)
        d = self.ema_decay
        count = d * self.patch_count[...] + (1 - d) * one_hot.sum(0)
        total = d * self.patch_sum[...] + (1 - d) * one_hot.T @ patches.astype(jnp.float32)
        self.patch_count[...] = jnp.where(active, count, self.patch_count[...])
        self.patch_sum[...] = jnp.where(active, total, self.patch_sum[...])

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
    # decode/reconstruct: image codes only (an MAE encoder); an audio run says it has no decoder.
    capabilities = frozenset({"encode", "decode", "reconstruct"})

    def __init__(self, *, encoder, layer: int, codebook_size: int, stats_steps: int, ema_decay: float,
                 kmeans_iters: int, dead_code_threshold: float, clip_samples: int | None):
        """encoder: the frozen encoder run (maskgen.recipes.frozen.FrozenRun) of a kind in ENCODERS."""
        if encoder.config.recipe not in ENCODERS:
            raise ValueError(f"config.encoder.workdir={encoder.workdir!r} is a {encoder.config.recipe!r} run; the "
                             f"feature tokenizer reads runs of: {', '.join(ENCODERS)}")
        self.encoder = encoder
        self.reader = ENCODERS[encoder.config.recipe]
        problems = self.reader.problems(encoder.config, layer, f"config.encoder.workdir={encoder.workdir!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.layer = int(layer)
        self.geometry = self.reader.geometry(encoder)
        self.codebook_size = int(codebook_size)
        self.stats_steps = int(stats_steps)
        g = self.geometry
        self.images = self.reader.input_field == "image"
        self.model_kwargs = dict(width=g["width"], codebook_size=self.codebook_size,
                                 ema_decay=float(ema_decay), kmeans_iters=int(kmeans_iters),
                                 dead_code_threshold=float(dead_code_threshold),
                                 patch_dim=g["patch_size"] ** 2 * g["channels"] if self.images else 0)
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
        role = f"config.encoder.workdir={encoder.workdir!r}"
        if recipe.images:
            g, image_shape = recipe.geometry, data_info.get("image_shape")
            if image_shape is None:
                raise ValueError(f"{role} is an MAE run, which encodes images, but the {config.data.name!r} data has "
                                 "no images")
            got = (config.data.image_size, int(image_shape[-1]))
            if got != (g["image_size"], g["channels"]):
                raise ValueError(f"{role} was trained on {g['image_size']}x{g['image_size']} images with "
                                 f"{g['channels']} channel(s), but the {config.data.name!r} data gives "
                                 f"{got[0]}x{got[0]} with {got[1]}: set config.data.image_size and the data to "
                                 "match the MAE run")
            return recipe
        rate = recipe.geometry["sample_rate"]
        if audio is not None and audio.sample_rate != rate:
            raise ValueError(f"{role} was trained on {rate} Hz audio, but the "
                             f"{config.data.name!r} data is at {audio.sample_rate} Hz; set the data's sample_rate "
                             f"to {rate}")
        return recipe

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        audio = (data_info.get("fields") or {}).get("audio")
        problems = recipe_problems(config, data_info, CONFIG_SPEC, needs="audio" if audio is not None else "images")
        if config.get("eval_params", "ema") != "params":
            problems.append(f"config.eval_params={config.get('eval_params')!r}: k-means sets the codebook in place, "
                            "and an EMA of it over steps mixes in the initial codes; use eval_params='params'")
        if problems.ok("model.stats_steps", "total_steps") and config.model.stats_steps >= config.total_steps:
            problems.append(f"config.model.stats_steps={config.model.stats_steps}: k-means starts after the statistics "
                            f"steps, so it must be fewer than config.total_steps={config.total_steps}")
        if problems.ok("encoder.workdir", "encoder.layer"):
            has_images = data_info.get("image_shape") is not None
            problems.extend(_encoder_problems(config.encoder.workdir, config.encoder.layer,
                                              None if audio is None else audio.sample_rate,
                                              config.data.image_size if has_images else None))
        return problems

    def info(self) -> dict[str, Any]:
        g = self.geometry
        encoder = {"workdir": self.encoder.workdir, "recipe": self.encoder.config.recipe, "layer": self.layer,
                   "step": self.encoder.step}
        if self.images:
            # decodes_to None: image token ids, decoded by `decode` (maskgen.runs.TokenizerDecoder).
            return {"token_shape": g["grid"], "codebook_size": self.codebook_size, "num_levels": 1,
                    "quantizer": "kmeans", "decoder": "mean_patch", "feature_width": g["width"],
                    "image_size": g["image_size"], "channels": g["channels"], "patch_size": g["patch_size"],
                    "decodes_to": None, "encoder": encoder}
        frames = None if self.clip_samples is None else self.clip_samples // g["samples_per_token"]
        return {"token_shape": (frames,), "codebook_size": self.codebook_size, "num_levels": 1,
                "quantizer": "kmeans", "frame_rate": g["sample_rate"] / g["samples_per_token"],
                "sample_rate": g["sample_rate"], "samples_per_token": g["samples_per_token"],
                "feature_width": g["width"], "decodes_to": None, "encoder": encoder}

    def make_model(self, rngs: nnx.Rngs) -> FeatureKMeans:
        return FeatureKMeans(rngs=rngs, **self.model_kwargs)

    # ---- features of the frozen encoder
    def encoder_features(self, inputs: jax.Array) -> jax.Array:
        """The frozen encoder's features, float32, no gradient: for audio [B, T, 1] ->
        [B, T // samples_per_token, width]; for images [B, H, W, C] -> [B, rows, cols, width]."""
        if self.images:
            return jax.lax.stop_gradient(self._image_features(inputs))
        return self._audio_features(inputs)

    def _image_features(self, images: jax.Array) -> jax.Array:
        g = self.geometry
        expected = (g["image_size"], g["image_size"], g["channels"])
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"the feature tokenizer on the MAE run {self.encoder.workdir} takes images "
                             f"[B, {', '.join(map(str, expected))}], got {tuple(images.shape)}")
        return self.reader.features(self.encoder, images.astype(jnp.float32), self.layer).astype(jnp.float32)

    def _audio_features(self, audio: jax.Array) -> jax.Array:
        """audio [B, T, 1] cut into the encoder's clips (the last zero padded), each encoded, the
        frames concatenated."""
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

    # ---- training: statistics, then EMA k-means (and, for images, the per-code mean patches)
    def loss(self, model: FeatureKMeans, batch, rng, step):
        inputs = batch[self.reader.input_field]
        features = self.encoder_features(inputs)
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
        if self.images:
            patches = patchify(inputs.astype(jnp.float32), self.geometry["patch_size"]).reshape(flat.shape[0], -1)
            model.add_patches(patches, codes.reshape(-1), jnp.logical_not(gathering))
            # The mean-patch decoder's pixel MSE on this batch (its codes, the updated table).
            metrics["patch_mse"] = jnp.square(model.mean_patches()[codes.reshape(-1)] - patches).mean()
        return aux["loss"], metrics

    def encode(self, model: FeatureKMeans, batch, rng):
        """{"audio" [B, T, 1]} -> int32 codes [B, T // samples_per_token]; {"image" [B, H, W, C]} ->
        int32 codes [B, rows, cols]."""
        features = self.encoder_features(batch[self.reader.input_field])
        _, codes, _ = model.quantizer(model.normalize(features), train=False)
        return codes

    def _require_decoder(self) -> None:
        if not self.images:
            raise ValueError(f"the feature tokenizer on the {self.encoder.config.recipe!r} run {self.encoder.workdir} "
                             "has no decoder: only image codes (an MAE encoder) decode, to their mean patches")

    def decode(self, model: FeatureKMeans, batch, rng):
        """{"codes" int [B, rows, cols]} -> images [B, H, W, C]: each code's mean patch in its place."""
        self._require_decoder()
        g = self.geometry
        codes = jnp.asarray(batch["codes"])
        if tuple(codes.shape[1:]) != g["grid"]:
            raise ValueError(f"decode expects codes [B, {g['grid'][0]}, {g['grid'][1]}], got {tuple(codes.shape)}")
        patches = model.mean_patches()[codes.reshape(codes.shape[0], -1)]
        return unpatchify(patches, g["patch_size"], g["image_size"], g["image_size"])

    def reconstruct(self, model: FeatureKMeans, batch, rng):
        """{"image" [B, H, W, C]} -> {"reconstruction": the mean patches of its codes, "codes"}."""
        self._require_decoder()
        codes = self.encode(model, batch, rng)
        return {"reconstruction": jnp.clip(self.decode(model, {"codes": codes}, rng), -1.0, 1.0), "codes": codes}

    def sample(self, model: FeatureKMeans, batch, rng):
        """Image rows for a grid: the original and its mean-patch reconstruction."""
        self._require_decoder()
        return {"original": batch["image"], "reconstruction": self.reconstruct(model, batch, rng)["reconstruction"]}

    def normalized_features(self, model: FeatureKMeans, batch, rng):
        """The normalised features that k-means clusters: [B, frames, width] for audio,
        [B, rows, cols, width] for images."""
        return model.normalize(self.encoder_features(batch[self.reader.input_field]))
