"""MAE pretraining recipe (He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377).

Random masking with a fixed keep count, an encoder on visible patches only, a light decoder with
mask tokens, and MSE on per-patch-normalised pixels of the masked patches only.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.masking import num_masked, random_mask
from maskgen.models.vit import MAE, patchify, unpatchify
from maskgen.recipes.base import Recipe, register

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def normalized_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's `norm_pix_loss` target: each patch minus its mean, over sqrt(var + eps)."""
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + eps)


@register("mae")
class MAERecipe(Recipe):
    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int,
                 num_heads: int, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mlp_ratio: float, mask_ratio: float, norm_pix_loss: bool, compute_dtype: str = "float32"):
        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_visible = self.num_patches - num_masked(self.num_patches, mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.model_kwargs = dict(
            patch_dim=patch_size * patch_size * channels, grid=self.grid, width=width, depth=depth,
            num_heads=num_heads, decoder_width=decoder_width, decoder_depth=decoder_depth,
            decoder_heads=decoder_heads, mlp_ratio=mlp_ratio, dtype=_DTYPES[compute_dtype],
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "MAERecipe":
        m = config.model
        return cls(
            image_size=config.data.image_size, channels=int(data_info["image_shape"][-1]),
            patch_size=m.patch_size, width=m.width, depth=m.depth, num_heads=m.num_heads,
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            mlp_ratio=m.mlp_ratio, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss,
            compute_dtype=config.compute_dtype,
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, problems = config.model, []
        if config.data.image_size % m.patch_size:
            problems.append(
                f"config.model.patch_size={m.patch_size} does not divide config.data.image_size={config.data.image_size}"
            )
        for width_key, heads_key in (("width", "num_heads"), ("decoder_width", "decoder_heads")):
            if m[width_key] % m[heads_key]:
                problems.append(f"config.model.{width_key}={m[width_key]} is not divisible by {heads_key}={m[heads_key]}")
            if m[width_key] % 4:
                problems.append(f"config.model.{width_key}={m[width_key]} must be divisible by 4 (2D sin-cos positions)")
        if not 0.0 < m.mask_ratio < 1.0:
            problems.append(f"config.model.mask_ratio must be in (0, 1), got {m.mask_ratio}")
        return problems

    def make_model(self, rngs: nnx.Rngs) -> MAE:
        return MAE(rngs=rngs, **self.model_kwargs)

    def _mask_order(self, rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
        mask = random_mask(rng, (batch_size, self.num_patches), self.mask_ratio)
        # Visible positions first (in raster order), then masked ones.
        order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
        return mask, order

    def loss(self, model: MAE, batch, rng, step=None):
        patches = patchify(batch["image"], self.patch_size)
        mask, order = self._mask_order(rng, patches.shape[0])
        pred = model(patches, order, self.num_visible)
        target = normalized_patches(patches) if self.norm_pix_loss else patches
        per_patch = jnp.square(pred - target).mean(-1)
        masked = mask.astype(jnp.float32)
        loss = (per_patch * masked).sum() / masked.sum()
        visible_mse = (per_patch * (1.0 - masked)).sum() / (1.0 - masked).sum()
        return loss, {"mse_masked": loss, "mse_visible": visible_mse}

    def sample(self, model: MAE, batch, rng):
        """Original, masked input (masked patches grey) and reconstruction with visible patches pasted."""
        images = batch["image"]
        patches = patchify(images, self.patch_size)
        mask, order = self._mask_order(rng, patches.shape[0])
        pred = model(patches, order, self.num_visible)
        if self.norm_pix_loss:  # Undo the per-patch normalisation with the true patch statistics.
            mean = patches.mean(-1, keepdims=True)
            std = jnp.sqrt(patches.var(-1, keepdims=True) + 1e-6)
            pred = pred * std + mean
        m = mask[..., None]
        reconstruction = jnp.where(m, jnp.clip(pred, -1.0, 1.0), patches)
        masked_input = jnp.where(m, 0.0, patches)
        h = w = self.image_size
        return {
            "original": images,
            "masked": unpatchify(masked_input, self.patch_size, h, w),
            "reconstruction": unpatchify(reconstruction, self.patch_size, h, w),
        }

    def features(self, model: MAE, batch, rng):
        return model.features(patchify(batch["image"], self.patch_size))
