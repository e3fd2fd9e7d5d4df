"""MAE pretraining recipe (He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377).

Random masking with a fixed keep count, an encoder on visible patches only, a light decoder with
mask tokens, and MSE on per-patch-normalised pixels of the masked patches only.

Matches facebookresearch/mae's models_mae.py where it matters for loading its weights
(maskgen.weights.mae_torch): the 2-D sin-cos position layout (`model.sincos_order="x_first"`; runs
saved before this setting existed used "y_first" and keep it), LayerNorm eps 1e-6, the patch
layout (p, p, C), and the `norm_pix_loss` target with torch's unbiased patch variance.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import boolean, integer, number, one_of, recipe_problems
from maskgen.masking import num_masked, random_mask
from maskgen.models.vit import MAE, SINCOS_ORDERS, patchify, unpatchify
from maskgen.recipes.base import Recipe, register

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# What each MAE setting may be (maskgen.config.check_spec); `validate` adds the cross-key checks.
CONFIG_SPEC = {
    "model.patch_size": integer(min=1),
    "model.width": integer(min=1),
    "model.depth": integer(min=1, why="encoder blocks"),
    "model.num_heads": integer(min=1),
    "model.decoder_width": integer(min=1),
    "model.decoder_depth": integer(min=1, why="masked patches see the visible ones only through decoder blocks"),
    "model.decoder_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.mask_ratio": number(0, 1, min_open=True, max_open=True),
    "model.norm_pix_loss": boolean(),
    # Optional: a config.json without it is a run from before issue 15, trained with "y_first".
    "model.sincos_order": one_of(*SINCOS_ORDERS, optional=True),
}

# What `model.sincos_order` means when a config lacks it: the layout such (older) runs were trained with.
LEGACY_SINCOS_ORDER = "y_first"


def patch_mean_std(patches: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and sqrt(var + eps) over the last axis, with the unbiased variance (sum of
    squares over n - 1), as MAE's `target.var(dim=-1)` computes it (torch.var's default)."""
    n = patches.shape[-1]
    if n < 2:
        raise ValueError(f"norm_pix_loss needs patches of at least 2 values for their variance, got {n}")
    mean = patches.mean(-1, keepdims=True)
    var = jnp.square(patches - mean).sum(-1, keepdims=True) / (n - 1)
    return mean, jnp.sqrt(var + eps)


def normalized_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's `norm_pix_loss` target: each patch minus its mean, over sqrt(unbiased var + eps)."""
    mean, std = patch_mean_std(patches, eps)
    return (patches - mean) / std


@register("mae")
class MAERecipe(Recipe):
    capabilities = frozenset({"features"})

    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int,
                 num_heads: int, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mlp_ratio: float, mask_ratio: float, norm_pix_loss: bool, compute_dtype: str = "float32",
                 remat: str = "none", sincos_order: str = "x_first"):
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
            decoder_heads=decoder_heads, mlp_ratio=mlp_ratio, dtype=_DTYPES[compute_dtype], remat=remat,
            sincos_order=sincos_order,
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "MAERecipe":
        m = config.model
        return cls(
            image_size=config.data.image_size, channels=int(data_info["image_shape"][-1]),
            patch_size=m.patch_size, width=m.width, depth=m.depth, num_heads=m.num_heads,
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            mlp_ratio=m.mlp_ratio, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss,
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"),
            sincos_order=m.get("sincos_order", LEGACY_SINCOS_ORDER),
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, problems = config.model, recipe_problems(config, data_info, CONFIG_SPEC, needs="images")
        if problems.ok("model.patch_size", "data.image_size") and config.data.image_size % m.patch_size:
            problems.append(
                f"config.model.patch_size={m.patch_size} does not divide config.data.image_size={config.data.image_size}"
            )
        elif problems.ok("model.patch_size", "data.image_size", "model.mask_ratio"):
            patches = (config.data.image_size // m.patch_size) ** 2
            masked = num_masked(patches, m.mask_ratio)
            if not 0 < masked < patches:
                problems.append(f"config.model.mask_ratio={m.mask_ratio} masks {masked} of the {patches} patches; "
                                "at least one must be masked and one visible")
        if (problems.ok("model.patch_size", "model.norm_pix_loss") and m.norm_pix_loss and data_info.get("image_shape")
                and m.patch_size ** 2 * int(data_info["image_shape"][-1]) < 2):
            problems.append(f"config.model.norm_pix_loss=True needs patches of at least 2 values (their variance); "
                            f"patch_size={m.patch_size} with {data_info['image_shape'][-1]} channel(s) gives 1")
        for width_key, heads_key in (("width", "num_heads"), ("decoder_width", "decoder_heads")):
            if problems.ok(f"model.{width_key}", "model.mlp_ratio") and int(m[width_key] * m.mlp_ratio) < 1:
                problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width "
                                f"{int(m[width_key] * m.mlp_ratio)} at {width_key}={m[width_key]}; it must give at least 1")
            if not problems.ok(f"model.{width_key}", f"model.{heads_key}"):
                continue
            if m[width_key] % m[heads_key]:
                problems.append(f"config.model.{width_key}={m[width_key]} is not divisible by {heads_key}={m[heads_key]}")
            if m[width_key] % 4:
                problems.append(f"config.model.{width_key}={m[width_key]} must be divisible by 4 (2D sin-cos positions)")
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
            mean, std = patch_mean_std(patches)
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

    def features(self, model: MAE, batch, rng, pool: str = "mean"):
        """[B, width] encoder features: pool="mean" over patch tokens, or "cls" (MAE's linear probe)."""
        return model.features(patchify(batch["image"], self.patch_size), pool)


def load_encoder_features(workdir: str, step: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """Frozen token features of a trained MAE run's encoder (its EMA weights), for perceptual losses.

    Returns `features(images [B, H, W, C] in [-1, 1]) -> [B, 1 + N, width]`: the encoder's output
    tokens on all patches. The images must have the MAE run's size and channels.
    """
    from maskgen.checkpoint import load_run_config, restore_run_model
    from maskgen.data import source_info
    from maskgen.data.run_info import load_run_data_info

    config = load_run_config(workdir)
    if config.recipe != "mae":
        raise ValueError(f"{workdir} is a {config.recipe!r} run; a perceptual network needs an 'mae' run")
    # An imported run (`maskgen import-weights`) records its data shapes; its dataset need not be here.
    info = load_run_data_info(workdir) or source_info(config.data.name, config.data.data_dir or None)
    recipe = MAERecipe.from_config(config, info)
    with nnx.use_eager_sharding(False):  # a frozen single-device copy: no mesh needed
        graphdef, abstract_params, abstract_rest = nnx.split(
            nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0))), nnx.Param, ...)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    on_device = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(tree))
    # The EMA weights only: the optimizer state of the MAE run is never read.
    _, restored = restore_run_model(workdir, {"params": on_device(abstract_params), "model_state": on_device(abstract_rest)},
                                    step=step, which="ema", keep=config.keep_checkpoints)
    params = jax.tree.map(lambda x: jax.numpy.asarray(jax.device_get(x)), restored["params"])
    expected = (recipe.image_size, recipe.image_size, recipe.channels)

    def features(images: jax.Array) -> jax.Array:
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"the MAE perceptual network in {workdir} takes images {expected}, got {images.shape[1:]}")
        model = nnx.merge(graphdef, jax.lax.stop_gradient(params), restored["model_state"])
        return model.encoder(patchify(images, recipe.patch_size)).astype(jnp.float32)

    return features
