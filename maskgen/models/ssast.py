"""The SSAST model: an Audio Spectrogram Transformer whose encoder sees every token, masked ones
replaced by a learned mask embedding, with two pretext heads and a classification head
(Gong et al., "SSAST: Self-Supervised Audio Spectrogram Transformer", arXiv 2110.09784;
AST: Gong et al., arXiv 2104.01778).

Unlike MAE's asymmetric encoder (maskgen.models.vit.MAE), nothing is dropped: the full sequence of
patch (or frame) tokens goes through the transformer, as in BEiT (arXiv 2106.08254). All three
heads exist in every model, whatever the task, so that a fine-tuning run starts from a pretraining
run's weights with the same parameter tree (`config.init_from`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from maskgen.models.layers import Dense, LayerNorm, Transformer, logical_param


def patchify_2d(grid: jax.Array, patch: tuple[int, int]) -> jax.Array:
    """[B, H, W] -> [B, (H/ph)*(W/pw), ph*pw]: non-overlapping patches in raster order, each patch
    flattened row-major (torch's `nn.Unfold` on a one-channel [B, 1, H, W] input gives the same)."""
    b, h, w = grid.shape
    ph, pw = patch
    x = grid.reshape(b, h // ph, ph, w // pw, pw)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, (h // ph) * (w // pw), ph * pw)


def unpatchify_2d(patches: jax.Array, patch: tuple[int, int], height: int, width: int) -> jax.Array:
    """Inverse of `patchify_2d`: [B, N, ph*pw] -> [B, H, W]."""
    b = patches.shape[0]
    ph, pw = patch
    x = patches.reshape(b, height // ph, width // pw, ph, pw)
    return x.transpose(0, 1, 3, 2, 4).reshape(b, height, width)


class PredictionHead(nnx.Module):
    """SSAST's pretext head: Linear(width, width) -> ReLU -> Linear(width, out) ("cpredlayer",
    "gpredlayer" in the official code)."""

    def __init__(self, width: int, out_dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.fc1 = Dense((width,), (width,), ("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.fc2 = Dense((width,), (out_dim,), ("mlp", "patch"), rngs=rngs, dtype=dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.fc1(x))).astype(jnp.float32)


class SSAST(nnx.Module):
    """Patch embedding, a learned mask embedding, learned positions, a class token and a pre-norm
    transformer; heads: `nce_head` and `mse_head` (to the patch's values) and `classifier`
    (LayerNorm + Linear on the mean of the patch tokens, AST's fine-tuning head "ft_avgtok")."""

    def __init__(self, *, patch_dim: int, num_patches: int, width: int, depth: int, num_heads: int,
                 mlp_ratio: float, num_classes: int, rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none"):
        self.width = width
        self.dtype = dtype
        self.patch_embed = Dense((patch_dim,), (width,), ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.cls_token = logical_param(rngs, jax.nn.initializers.truncated_normal(0.02), (width,), ("embed",))
        # Learned positions for the class token and every patch (trunc-normal 0.02, as SSAST).
        self.pos_embed = logical_param(rngs, jax.nn.initializers.truncated_normal(0.02), (1 + num_patches, width),
                                       (None, "embed"))
        # SSAST draws its [1, 1, width] mask embedding with torch's xavier_normal_: std sqrt(1 / width).
        self.mask_embed = logical_param(rngs, jax.nn.initializers.normal(math.sqrt(1.0 / width)), (width,), ("embed",))
        self.transformer = Transformer(width, depth, num_heads, mlp_ratio, rngs=rngs, dtype=dtype, remat=remat)
        self.nce_head = PredictionHead(width, patch_dim, rngs=rngs, dtype=dtype)
        self.mse_head = PredictionHead(width, patch_dim, rngs=rngs, dtype=dtype)
        self.classifier_norm = LayerNorm(width, rngs=rngs, dtype=dtype)
        self.classifier = Dense((width,), (num_classes,), ("embed", None), rngs=rngs, dtype=dtype)

    def encode(self, patches: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """patches [B, N, patch_dim]; mask bool [B, N] (True: replaced by the mask embedding) or None.

        Returns [B, 1 + N, width]: the class token, then one output per patch, after the final norm.
        """
        x = self.patch_embed(patches)
        if mask is not None:
            x = jnp.where(mask[..., None], self.mask_embed[...].astype(self.dtype), x)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (x.shape[0], 1, self.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(self.dtype)
        return self.transformer(x)

    def features(self, patches: jax.Array, pool: str = "mean") -> jax.Array:
        """[B, width]: the mean of the patch tokens (SSAST's clip representation) or the class token."""
        tokens = self.encode(patches).astype(jnp.float32)
        if pool == "mean":
            return tokens[:, 1:].mean(axis=1)
        if pool == "cls":
            return tokens[:, 0]
        raise ValueError(f"unknown feature pooling {pool!r}; valid: 'cls', 'mean'")

    def classify(self, patches: jax.Array) -> jax.Array:
        """[B, num_classes] logits from the mean of the patch tokens."""
        pooled = self.encode(patches)[:, 1:].mean(axis=1)
        return self.classifier(self.classifier_norm(pooled)).astype(jnp.float32)
