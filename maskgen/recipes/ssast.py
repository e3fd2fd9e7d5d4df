"""SSAST: self-supervised audio spectrogram transformer (Gong et al., arXiv 2110.09784), and its
fine-tuning on labelled clips.

`model.task="pretrain"`: joint discriminative and generative masked spectrogram patch modeling.
Inside the jitted step the waveform becomes a normalised log-mel grid [n_mels, frames], cut into
patch tokens (16x16 at paper scale, masked in clusters of c x c patches, c in 3..5) or frame
tokens (n_mels x 2, masked uniformly at random); exactly `num_masked` tokens of each example are
replaced by a learned mask embedding and the FULL sequence goes through the encoder (not MAE's
asymmetric encoder). Two heads read the masked positions:
  - InfoNCE: each masked position's prediction is scored (dot product, no temperature) against all
    masked target patches of its example; the loss is the cross-entropy of picking its own patch
    (the paper's equation 1). The official code normalises the other way (over the predictions for
    each target, its issue #13); `model.nce_softmax_over="predictions"` gives that.
  - MSE between the prediction and the masked patch's values.
  total = nce_weight x InfoNCE + mse_weight x MSE (1 and 10). As the official pretraining loop
  (traintest_mask.py, pretrain_joint) does, each loss gets its own mask and forward pass;
  `model.shared_mask=True` uses one mask and one pass for both (half the compute). A weight of 0
  skips its pass (InfoNCE or MSE alone).

`model.task="finetune"`: the same encoder plus a LayerNorm + linear head on the mean of the patch
tokens (AST's "ft_avgtok"), trained with cross-entropy on the labels; `config.init_from` names the
pretraining run. Every model holds all heads (pretext and classifier), so both tasks have the same
parameter tree and the weights load unchanged.

Input normalisation is SSAST's: (log-mel - input_mean) / (2 input_std), then the frames are cut or
zero-padded (0 = the data mean after normalisation) to `num_frames`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from maskgen.audio.features import MelConfig, log_mel
from maskgen.config import boolean, int_tuple, integer, number, one_of, or_none, recipe_problems
from maskgen.masking.generators import block_mask, masked_indices, random_mask_count
from maskgen.models.ssast import SSAST, patchify_2d, unpatchify_2d
from maskgen.recipes.base import Recipe, register

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
TASKS = ("pretrain", "finetune")
TOKENS = ("patch", "frame")
NCE_SOFTMAX = ("targets", "predictions")

# What each SSAST setting may be (maskgen.config.check_spec); `validate` adds the cross-key checks.
CONFIG_SPEC = {
    "model.task": one_of(*TASKS),
    "model.tokens": one_of(*TOKENS),
    "model.patch_shape": int_tuple(min=1, length=2, why="(mel bins, frames) per token"),
    "model.num_frames": integer(min=1, why="log-mel frames per clip, cut or padded to this"),
    "model.width": integer(min=1),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.num_masked": integer(min=1, why="tokens masked per example"),
    "model.cluster_sizes": int_tuple(min=1, why="block sides for patch masking"),
    "model.nce_weight": number(0),
    "model.mse_weight": number(0),
    "model.shared_mask": boolean(),
    "model.nce_softmax_over": one_of(*NCE_SOFTMAX),
    "model.input_mean": number(),
    "model.input_std": number(0, min_open=True),
    "model.num_classes": or_none(integer(min=1, optional=True, why="classifier outputs; None: the data's classes")),
    "model.mel.sample_rate": integer(min=1),
    "model.mel.n_fft": integer(min=2),
    "model.mel.hop": integer(min=1),
    "model.mel.n_mels": integer(min=1),
}


def mel_config_from(mel: ml_collections.ConfigDict | dict) -> MelConfig:
    return MelConfig.from_dict(dict(mel))


def info_nce(pred: jax.Array, target: jax.Array, softmax_over: str = "targets") -> tuple[jax.Array, jax.Array]:
    """SSAST's discriminative loss and accuracy over the masked positions of each example.

    pred, target: [B, M, D]. scores[b, i, j] = pred_i . target_j (no temperature). "targets": the
    paper's equation 1, -mean_i log softmax_j(scores)[i, i] (each prediction picks its own patch
    among the example's masked patches); "predictions": the official code's normalisation over the
    predictions for each target, -mean_j log softmax_i(scores)[j, j]. Accuracy (both): how often a
    prediction's best-scoring target is its own.
    """
    scores = jnp.einsum("bid,bjd->bij", pred.astype(jnp.float32), target.astype(jnp.float32))
    axis = -1 if softmax_over == "targets" else -2
    log_probs = jax.nn.log_softmax(scores, axis=axis)
    loss = -jnp.diagonal(log_probs, axis1=-2, axis2=-1).mean()
    accuracy = (jnp.argmax(scores, axis=-1) == jnp.arange(scores.shape[-1])).mean()
    return loss, accuracy


@register("ssast")
class SSASTRecipe(Recipe):
    capabilities = frozenset({"features"})

    def __init__(self, *, mel: MelConfig, num_samples: int, num_frames: int, patch_shape: tuple[int, int],
                 tokens: str, task: str, width: int, depth: int, num_heads: int, mlp_ratio: float,
                 num_classes: int, num_masked: int, cluster_sizes: tuple[int, ...], nce_weight: float,
                 mse_weight: float, shared_mask: bool, nce_softmax_over: str, input_mean: float,
                 input_std: float, compute_dtype: str = "float32", remat: str = "none"):
        self.mel = mel
        self.num_samples = num_samples
        self.num_frames = num_frames
        self.patch_shape = tuple(patch_shape)
        self.grid = (mel.n_mels // self.patch_shape[0], num_frames // self.patch_shape[1])
        self.num_patches = self.grid[0] * self.grid[1]
        self.tokens, self.task = tokens, task
        self.num_classes = num_classes
        self.num_masked = num_masked
        self.cluster_sizes = tuple(cluster_sizes)
        self.nce_weight, self.mse_weight = float(nce_weight), float(mse_weight)
        self.shared_mask = shared_mask
        self.nce_softmax_over = nce_softmax_over
        self.input_mean, self.input_std = float(input_mean), float(input_std)
        self.model_kwargs = dict(
            patch_dim=self.patch_shape[0] * self.patch_shape[1], num_patches=self.num_patches, width=width,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=num_classes,
            dtype=_DTYPES[compute_dtype], remat=remat,
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "SSASTRecipe":
        m = config.model
        audio = data_info["fields"]["audio"]
        return cls(
            mel=mel_config_from(m.mel), num_samples=int(audio.shape[0]), num_frames=m.num_frames,
            patch_shape=tuple(m.patch_shape), tokens=m.tokens, task=m.task, width=m.width, depth=m.depth,
            num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, num_classes=_num_classes(m, data_info),
            num_masked=m.num_masked, cluster_sizes=tuple(m.cluster_sizes), nce_weight=m.nce_weight,
            mse_weight=m.mse_weight, shared_mask=m.shared_mask, nce_softmax_over=m.nce_softmax_over,
            input_mean=m.input_mean, input_std=m.input_std, compute_dtype=config.compute_dtype,
            remat=config.get("remat", "none"),
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, problems = config.model, recipe_problems(config, data_info, CONFIG_SPEC, needs="audio")
        audio = (data_info.get("fields") or {}).get("audio")
        mel = None
        if problems.ok("model.mel.sample_rate", "model.mel.n_fft", "model.mel.hop", "model.mel.n_mels"):
            try:
                mel = mel_config_from(m.mel)
            except (TypeError, ValueError) as err:
                problems.append(f"config.model.mel: {err}")
        if mel is not None and audio is not None and mel.sample_rate != audio.sample_rate:
            problems.append(f"config.model.mel.sample_rate={mel.sample_rate}: the {config.data.name!r} audio is at "
                            f"{audio.sample_rate} Hz; set the mel sample rate to match (or resample the data)")
        if audio is not None and audio.shape[0] is None:
            problems.append(f"the {config.data.name!r} clips vary in length; SSAST needs fixed-length clips "
                            "(set the source's clip_seconds)")
        if mel is not None and problems.ok("model.patch_shape", "model.num_frames", "model.tokens"):
            pf, pt = m.patch_shape
            if mel.n_mels % pf or m.num_frames % pt:
                problems.append(f"config.model.patch_shape={tuple(m.patch_shape)} must divide the log-mel grid "
                                f"(n_mels={mel.n_mels}, num_frames={m.num_frames})")
            elif m.tokens == "frame" and pf != mel.n_mels:
                problems.append(f"config.model.tokens='frame' needs patch_shape[0] = n_mels = {mel.n_mels} (a token "
                                f"is a whole frame); got {tuple(m.patch_shape)}")
            elif m.task == "pretrain" and problems.ok("model.num_masked"):
                patches = (mel.n_mels // pf) * (m.num_frames // pt)
                if m.num_masked >= patches:
                    problems.append(f"config.model.num_masked={m.num_masked} must be fewer than the {patches} tokens "
                                    f"({mel.n_mels // pf} x {m.num_frames // pt}) of a clip")
        if (m.get("task") == "pretrain" and problems.ok("model.nce_weight", "model.mse_weight")
                and m.nce_weight + m.mse_weight <= 0):
            problems.append("config.model.nce_weight and mse_weight are both 0: pretraining needs a loss")
        if problems.ok("model.width", "model.num_heads") and m.width % m.num_heads:
            problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
        if problems.ok("model.width", "model.mlp_ratio") and int(m.width * m.mlp_ratio) < 1:
            problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width 0 at width={m.width}")
        if problems.ok("model.num_classes") and _num_classes(m, data_info) is None:
            problems.append(f"the {config.data.name!r} data has no labels: set config.model.num_classes (the "
                            "classifier head exists in every SSAST model, so that fine-tuning loads the weights)")
        return problems

    def info(self) -> dict[str, Any]:
        return {"mel": self.mel.to_dict(), "sample_rate": self.mel.sample_rate, "clip_samples": self.num_samples,
                "token_grid": self.grid,
                "task": self.task, "num_classes": self.num_classes}

    def make_model(self, rngs: nnx.Rngs) -> SSAST:
        return SSAST(rngs=rngs, **self.model_kwargs)

    # ---- Input: waveform -> normalised log-mel grid -> tokens.
    def spectrogram(self, audio: jax.Array) -> jax.Array:
        """audio [B, T, 1] -> normalised log-mel [B, n_mels, num_frames] (rows: mel bins, low first)."""
        lm = log_mel(audio[..., 0].astype(jnp.float32), self.mel)  # [B, frames, n_mels]
        lm = (lm - self.input_mean) / (2.0 * self.input_std)
        frames = lm.shape[1]
        if frames >= self.num_frames:
            lm = lm[:, :self.num_frames]
        else:  # SSAST pads short clips; 0 is the data mean after normalisation.
            lm = jnp.pad(lm, ((0, 0), (0, self.num_frames - frames), (0, 0)))
        return jnp.swapaxes(lm, 1, 2)

    def patches(self, audio: jax.Array) -> jax.Array:
        """audio [B, T, 1] -> tokens [B, N, pf * pt] in raster order over (mel, time) patches."""
        return patchify_2d(self.spectrogram(audio), self.patch_shape)

    def draw_mask(self, rng: jax.Array, batch: int) -> jax.Array:
        """bool [B, N], exactly num_masked True: clusters for patches, uniform for frames."""
        if self.tokens == "patch":
            return block_mask(rng, batch, self.grid, self.num_masked, self.cluster_sizes)
        return random_mask_count(rng, (batch, self.num_patches), self.num_masked)

    def _masked_predictions(self, model: SSAST, patches: jax.Array, mask: jax.Array):
        """Encoder outputs and input patches at the masked positions: ([B, M, width], [B, M, D])."""
        index = masked_indices(mask, self.num_masked)[..., None]
        tokens = model.encode(patches, mask)[:, 1:]
        hidden = jnp.take_along_axis(tokens, index, axis=1)
        return hidden, jax.lax.stop_gradient(jnp.take_along_axis(patches, index, axis=1))

    def loss(self, model: SSAST, batch, rng, step=None):
        patches = self.patches(batch["audio"])
        if self.task == "finetune":
            logits = model.classify(patches)
            labels = batch["label"].astype(jnp.int32)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return ce, {"cross_entropy": ce, "accuracy": (jnp.argmax(logits, -1) == labels).mean()}
        batch_size = patches.shape[0]
        nce_rng, mse_rng = jax.random.split(rng)
        # One pass for both heads (shared_mask), or one pass per loss with its own mask (SSAST's code).
        shared = (self._masked_predictions(model, patches, self.draw_mask(nce_rng, batch_size))
                  if self.shared_mask else None)
        metrics, total = {}, jnp.zeros((), jnp.float32)
        if self.nce_weight > 0:
            hidden, target = shared or self._masked_predictions(model, patches, self.draw_mask(nce_rng, batch_size))
            nce, accuracy = info_nce(model.nce_head(hidden), target, self.nce_softmax_over)
            metrics.update(nce=nce, nce_accuracy=accuracy)
            total = total + self.nce_weight * nce
        if self.mse_weight > 0:
            hidden, target = shared or self._masked_predictions(model, patches, self.draw_mask(mse_rng, batch_size))
            mse = jnp.square(model.mse_head(hidden) - target).mean()
            metrics["mse"] = mse
            total = total + self.mse_weight * mse
        return total, metrics

    def sample(self, model: SSAST, batch, rng):
        """Spectrogram rows [B, n_mels, frames, 1] in [-1, 1] (low frequencies at the bottom): the
        normalised log-mel, the masked input (masked tokens at -1) and the MSE head's reconstruction
        with the visible tokens pasted back."""
        patches = self.patches(batch["audio"])
        mask = self.draw_mask(rng, patches.shape[0])
        pred = model.mse_head(model.encode(patches, mask)[:, 1:])
        m = mask[..., None]
        rows = {"original": patches, "masked": jnp.where(m, -1.0, patches),
                "reconstruction": jnp.where(m, pred, patches)}
        h, w = self.mel.n_mels, self.num_frames
        return {name: jnp.clip(unpatchify_2d(p, self.patch_shape, h, w)[:, ::-1, :, None], -1.0, 1.0)
                for name, p in rows.items()}

    def features(self, model: SSAST, batch, rng, pool: str = "mean"):
        """[B, width] encoder features of the unmasked clip: mean of the patch tokens, or "cls"."""
        return model.features(self.patches(batch["audio"]), pool)

    def token_features(self, model: SSAST, batch, rng, layer: int = -1):
        """{"audio" [B, T, 1]} -> float32 [B, N, width]: every token's encoder output on the unmasked
        clip (the class token dropped), for per-token features such as semantic tokens (MaskGCT,
        arXiv 2409.00750, takes one layer of its speech encoder). `layer` -1: the final output (after
        the final LayerNorm); k in 0..depth: the input of the transformer (k = 0) or the output of
        block k, before any norm. Tokens are in raster order over (mel, time) patches: one per
        `patch_shape[1]` frames for frame tokens."""
        depth = len(model.transformer.blocks)
        if not -1 <= layer <= depth:
            raise ValueError(f"SSAST token features: layer={layer} must be -1 (the final output) or 0..{depth}")
        patches = self.patches(batch["audio"])
        if layer == -1:
            return model.encode(patches)[:, 1:].astype(jnp.float32)
        # SSAST.encode up to block `layer`: patch embedding, class token, positions, then the blocks.
        x = model.patch_embed(patches)
        cls = jnp.broadcast_to(model.cls_token[...].astype(model.dtype), (x.shape[0], 1, model.width))
        x = jnp.concatenate([cls, x], axis=1) + model.pos_embed[...].astype(model.dtype)
        for block in model.transformer.blocks[:layer]:
            x = block(x)
        return x[:, 1:].astype(jnp.float32)

    def classify(self, model: SSAST, batch, rng):
        """{"audio" [B, T, 1]} -> class logits [B, num_classes] (the fine-tuning head)."""
        return model.classify(self.patches(batch["audio"]))


def _num_classes(model_config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> int | None:
    if model_config.get("num_classes") is not None:
        return int(model_config.num_classes)
    n = data_info.get("num_classes")
    return int(n) if n else None


def spectrogram_statistics(audio: np.ndarray, mel: MelConfig, batch_size: int = 256) -> tuple[float, float]:
    """The mean and std of the log-mel of clips [N, T] (SSAST's dataset_mean / dataset_std), for
    `model.input_mean` / `model.input_std`."""
    fn = jax.jit(lambda x: log_mel(x, mel))
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(audio), batch_size):
        lm = np.asarray(fn(jnp.asarray(audio[start:start + batch_size], jnp.float32)), np.float64)
        total, total_sq, count = total + lm.sum(), total_sq + np.square(lm).sum(), count + lm.size
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean * mean, 0.0)))
