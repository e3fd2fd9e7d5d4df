"""Vision Transformer encoder and the MAE decoder (He et al., "Masked Autoencoders Are Scalable
Vision Learners", arXiv 2111.06377; ViT: Dosovitskiy et al., arXiv 2010.11929).

The encoder takes an optional permutation of patch positions and a visible count, and then runs
on the visible patches only: MAE's source of speed. Shapes stay static because every example
keeps the same number of patches.

The MAE module optionally carries HPM's loss predictor (Wang et al., "Hard Patches Mining for
Masked Image Modeling", arXiv 2304.05919): a second decoder branch, fed the same decoder tokens,
that predicts each patch's reconstruction loss; and, for teacher targets, a `teacher_head` module
that the recipe passes to the teacher's loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.models.layers import Dense, Transformer, block_runner, logical_param
from maskgen.parallel import constrain


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in raster order."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, height: int, width: int) -> jax.Array:
    """Inverse of `patchify`: [B, N, p*p*C] -> [B, H, W, C]."""
    b, _, d = patches.shape
    p = patch_size
    c = d // (p * p)
    x = patches.reshape(b, height // p, width // p, p, p, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


# Which half of the sin-cos channels encodes which axis: "x_first" is facebookresearch/mae's layout
# (the default, needed for its released weights); "y_first" is maskgen's layout before issue 15,
# kept so that runs trained with it (whose config.json has no `sincos_order`) load unchanged.
SINCOS_ORDERS = ("x_first", "y_first")


def sincos_2d(grid_h: int, grid_w: int, dim: int, order: str = "x_first") -> np.ndarray:
    """Fixed 2D sine-cosine position embeddings [grid_h*grid_w, dim], positions in raster order.

    order="x_first" is the layout of facebookresearch/mae's `util/pos_embed.py` (and so of its
    released weights): the first half of the channels encodes the column (x) coordinate, the second
    half the row (y), because the reference builds its grid with `np.meshgrid(grid_w, grid_h)` ("w
    goes first") and gives the first half to `grid[0]`. Each half is [sin(pos * omega), cos(pos * omega)]
    with omega_i = 10000^(-i / (dim/4)). "y_first" swaps the halves. The class token gets no
    position (the reference's zero row).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    if order not in SINCOS_ORDERS:
        raise ValueError(f"unknown sin-cos order {order!r}; valid: {', '.join(SINCOS_ORDERS)}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (np.arange(quarter, dtype=np.float64) / quarter))
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    angle_x = cols.reshape(-1, 1) * omega[None]
    angle_y = rows.reshape(-1, 1) * omega[None]
    halves = [np.concatenate([np.sin(a), np.cos(a)], axis=1) for a in (angle_x, angle_y)]
    if order == "y_first":
        halves = halves[::-1]
    return np.concatenate(halves, axis=1).astype(np.float32)


class ViTEncoder(nnx.Module):
    """Patch embedding + fixed 2D sin-cos positions + class token + pre-norm transformer."""

    def __init__(self, *, patch_dim: int, grid: tuple[int, int], width: int, depth: int, num_heads: int,
                 mlp_ratio: float, rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none",
                 sincos_order: str = "x_first"):
        self.grid = tuple(grid)
        self.width = width
        self.dtype = dtype
        self.sincos_order = sincos_order
        self.patch_embed = Dense((patch_dim,), (width,), ("patch", "embed"), rngs=rngs, dtype=dtype)
        self.cls_token = logical_param(rngs, jax.nn.initializers.normal(0.02), (width,), ("embed",))
        self.transformer = Transformer(width, depth, num_heads, mlp_ratio, rngs=rngs, dtype=dtype, remat=remat)

    def embed(self, patches: jax.Array, visible: jax.Array | None = None) -> jax.Array:
        """The transformer's input: class token, then the (visible) patches with their positions."""
        x = self.patch_embed(patches) + jnp.asarray(sincos_2d(*self.grid, self.width, self.sincos_order), self.dtype)
        if visible is not None:
            x = jnp.take_along_axis(x, visible[..., None], axis=1)
        cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (x.shape[0], 1, self.width))
        return jnp.concatenate([cls, x], axis=1)

    def __call__(self, patches: jax.Array, visible: jax.Array | None = None) -> jax.Array:
        """patches [B, N, patch_dim]; visible int [B, K] or None (all). Returns [B, 1+K, width]."""
        return self.transformer(self.embed(patches, visible))

    def hidden_states(self, patches: jax.Array, visible: jax.Array | None = None) -> list[jax.Array]:
        """The output of every block (index i = block i), each [B, 1+K, width] with the class token
        first, BEFORE the final LayerNorm: `self.final_norm(states[-1])` equals `__call__`'s output."""
        run = block_runner(lambda block, x: block(x), self.transformer.remat)
        x, states = self.embed(patches, visible), []
        for block in self.transformer.blocks:
            x = constrain(run(block, x))
            states.append(x)
        return states

    def final_norm(self, x: jax.Array) -> jax.Array:
        """The encoder's final LayerNorm (what `__call__` applies after the last block)."""
        return self.transformer.norm(x)


class MAE(nnx.Module):
    """Masked autoencoder: encoder on visible patches, light decoder with mask tokens.

    Options (all off by default, leaving plain MAE's parameters and outputs unchanged):
      pixel_decoder=False: no decoder at all (MaskAlign: the teacher's loss alone trains the encoder).
      loss_predictor=True: HPM's second decoder branch (its own blocks of the pixel decoder's shape,
        sharing `decoder_embed`, the mask token and the positions) ending in one value per patch.
      teacher_head: an nnx.Module that a teacher target trains alongside (maskgen.recipes.mae_teacher).
    The optional parts are built after the plain ones, so the same seed gives the same plain weights.
    """

    def __init__(self, *, patch_dim: int, grid: tuple[int, int], width: int, depth: int, num_heads: int,
                 decoder_width: int, decoder_depth: int, decoder_heads: int, mlp_ratio: float,
                 rngs: nnx.Rngs, dtype=jnp.float32, remat: str = "none", sincos_order: str = "x_first",
                 pixel_decoder: bool = True, loss_predictor: bool = False, teacher_head: nnx.Module | None = None):
        if loss_predictor and not pixel_decoder:
            raise ValueError("MAE: the loss predictor predicts the pixel decoder's loss; it needs pixel_decoder=True")
        self.grid = tuple(grid)
        self.decoder_width = decoder_width
        self.dtype = dtype
        self.sincos_order = sincos_order
        self.has_pixel_decoder = pixel_decoder
        self.has_loss_predictor = loss_predictor
        self.encoder = ViTEncoder(patch_dim=patch_dim, grid=grid, width=width, depth=depth, num_heads=num_heads,
                                  mlp_ratio=mlp_ratio, rngs=rngs, dtype=dtype, remat=remat, sincos_order=sincos_order)
        if pixel_decoder:
            self.decoder_embed = Dense((width,), (decoder_width,), ("embed", None), rngs=rngs, dtype=dtype)
            self.mask_token = logical_param(rngs, jax.nn.initializers.normal(0.02), (decoder_width,), ("embed",))
            self.decoder = Transformer(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs, dtype=dtype,
                                       remat=remat)
            self.decoder_pred = Dense((decoder_width,), (patch_dim,), ("embed", "patch"), rngs=rngs, dtype=dtype)
        if loss_predictor:
            self.loss_decoder = Transformer(decoder_width, decoder_depth, decoder_heads, mlp_ratio, rngs=rngs,
                                            dtype=dtype, remat=remat)
            self.loss_pred = Dense((decoder_width,), (1,), ("embed", None), rngs=rngs, dtype=dtype)
        self.teacher_head = teacher_head

    def __call__(self, patches: jax.Array, order: jax.Array, num_visible: int) -> jax.Array:
        """Predicts every patch from the visible ones.

        Args:
          patches: [B, N, patch_dim].
          order: int [B, N], a permutation of positions whose first `num_visible` are visible.
          num_visible: static count of visible patches.
        Returns:
          [B, N, patch_dim] predictions in raster order.
        """
        latent = self.encoder(patches, order[:, :num_visible])
        return self.decode(self.decoder_tokens(latent, order, num_visible))

    def decoder_tokens(self, latent: jax.Array, order: jax.Array, num_visible: int) -> jax.Array:
        """The decoder's input [B, 1+N, decoder_width] (class token first, then raster order) from the
        encoder's output on the first `num_visible` positions of `order`, mask tokens elsewhere."""
        b, n = order.shape
        x = self.decoder_embed(latent)
        cls, visible_tokens = x[:, :1], x[:, 1:]
        mask_tokens = jnp.broadcast_to(self.mask_token[...].astype(self.dtype), (b, n - num_visible, self.decoder_width))
        # Undo the permutation: position i takes the token at index restore[i] of [visible, masked].
        restore = jnp.argsort(order, axis=-1)
        tokens = jnp.take_along_axis(jnp.concatenate([visible_tokens, mask_tokens], 1), restore[..., None], axis=1)
        tokens = tokens + jnp.asarray(sincos_2d(*self.grid, self.decoder_width, self.sincos_order), self.dtype)
        return jnp.concatenate([cls, tokens], axis=1)

    def decode(self, tokens: jax.Array) -> jax.Array:
        """Pixel predictions [B, N, patch_dim] (float32) from `decoder_tokens`."""
        y = self.decoder(tokens)
        return self.decoder_pred(y[:, 1:]).astype(jnp.float32)

    def predict_loss(self, tokens: jax.Array) -> jax.Array:
        """HPM's loss predictor: one score per patch [B, N] (float32) from `decoder_tokens`."""
        if not self.has_loss_predictor:
            raise ValueError("this MAE has no loss predictor (built with loss_predictor=False)")
        y = self.loss_decoder(tokens)
        return self.loss_pred(y[:, 1:])[..., 0].astype(jnp.float32)

    def features(self, patches: jax.Array, pool: str = "mean") -> jax.Array:
        """Encoder features of all patches, [B, width], for linear probing.

        pool="mean": the mean of the patch tokens; pool="cls": the class token (both after the
        encoder's final LayerNorm). MAE's linear probe (main_linprobe.py, global_pool=False) uses
        the class token.
        """
        tokens = self.encoder(patches).astype(jnp.float32)
        if pool == "cls":
            return tokens[:, 0]
        if pool == "mean":
            return tokens[:, 1:].mean(axis=1)
        raise ValueError(f"unknown feature pooling {pool!r}; valid: 'cls', 'mean'")
