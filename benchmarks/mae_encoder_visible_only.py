"""B1: MAE train step with the encoder on visible patches only vs the same encoder on all patches.

He et al. (arXiv 2111.06377) report >= 3x faster pretraining at 75% masking from skipping the
masked patches in the encoder. Both variants here share every parameter and the decoder; the
baseline runs the encoder on all N patches (masked ones included, as a SimMIM-style encoder
would) and then drops the masked positions before the decoder, so only the encoder differs.

    python -m benchmarks.mae_encoder_visible_only                  # ViT-S/16-like at 224 px, batch 32
    python -m benchmarks.mae_encoder_visible_only --preset digits  # the README demo's model

Prints median step times over repeats (after a warm-up; compile time reported separately),
the ratio, and the machine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks import common
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models.vit import patchify, sincos_2d
from maskgen.recipes.mae import MAERecipe, normalized_patches

PRESETS = {
    # name: (image_size, channels, patch, width, depth, heads, dec_width, dec_depth, dec_heads, batch)
    # Batch 32: the paper's per-core batch (4096 over 128 TPU v3 cores).
    "vit_s16": (224, 3, 16, 384, 12, 6, 256, 4, 8, 32),
    "digits": (16, 1, 2, 96, 3, 3, 64, 1, 4, 128),
    "tiny": (8, 1, 2, 32, 1, 2, 32, 1, 2, 4),
}


def _all_patches_loss(recipe: MAERecipe, model, batch, rng):
    """The same model and loss, but the encoder runs on every patch (no visible-only saving)."""
    patches = patchify(batch["image"], recipe.patch_size)
    mask, order = recipe._mask_order(rng, patches.shape[0])
    latent = model.encoder(patches)  # [B, 1+N, D]: all patches
    # Keep what the decoder would see in MAE (cls + visible tokens), so only the encoder differs.
    visible = order[:, : recipe.num_visible]
    tokens = jnp.concatenate([latent[:, :1], jnp.take_along_axis(latent[:, 1:], visible[..., None], 1)], 1)
    x = model.decoder_embed(tokens)
    b, n = patches.shape[:2]
    mask_tokens = jnp.broadcast_to(model.mask_token[...], (b, n - recipe.num_visible, model.decoder_width))
    restore = jnp.argsort(order, axis=-1)
    full = jnp.take_along_axis(jnp.concatenate([x[:, 1:], mask_tokens], 1), restore[..., None], 1)
    full = full + jnp.asarray(sincos_2d(*model.grid, model.decoder_width))
    pred = model.decoder_pred(model.decoder(jnp.concatenate([x[:, :1], full], 1))[:, 1:])
    per_patch = jnp.square(pred - normalized_patches(patches)).mean(-1)
    m = mask.astype(jnp.float32)
    return (per_patch * m).sum() / m.sum()


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model shape (default: vit_s16; smoke size: tiny)")
    args = p.parse_args()
    preset = args.preset or ("tiny" if args.size == "smoke" else "vit_s16")
    repeats = args.repeats or (2 if args.size == "smoke" else 3)
    size, ch, patch, width, depth, heads, dwidth, ddepth, dheads, batch = PRESETS[preset]
    recipe = MAERecipe(image_size=size, channels=ch, patch_size=patch, width=width, depth=depth, num_heads=heads,
                       decoder_width=dwidth, decoder_depth=ddepth, decoder_heads=dheads, mlp_ratio=4.0,
                       mask_ratio=0.75, norm_pix_loss=True)
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        graphdef, state = nnx.split(recipe.make_model(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(1e-4)
    opt_state = tx.init(params)
    images = jax.random.uniform(jax.random.key(0), (batch, size, size, ch), minval=-1, maxval=1)

    def make_step(loss_fn):
        def step(params, opt_state, images, rng):
            loss, grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p), {"image": images}, rng))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        return step

    step_args = (params, opt_state, images, jax.random.key(1))
    with jax.set_mesh(mesh):
        visible = common.compile_fn(make_step(lambda m, b, r: recipe.loss(m, b, r, 0)[0]), *step_args)
        full = common.compile_fn(make_step(lambda m, b, r: _all_patches_loss(recipe, m, b, r)), *step_args)
        # Alternate the contenders so machine noise hits both alike.
        times = common.alternate({"visible": lambda: visible.call(*step_args), "all": lambda: full.call(*step_args)},
                                 repeats=repeats, rounds=2)
    t_visible, t_all = common.median(times["visible"]), common.median(times["all"])
    ratio = t_all / t_visible
    rows = [["encoder on visible patches (MAE)", common.fmt_seconds(t_visible), f"{visible.flops / 1e9:.1f}",
             f"{visible.compile_s:.1f}"],
            ["encoder on all patches", common.fmt_seconds(t_all), f"{full.flops / 1e9:.1f}", f"{full.compile_s:.1f}"]]
    print(f"preset {preset}: {recipe.num_patches} patches, {recipe.num_visible} visible, batch {batch}, "
          f"{len(times['visible'])} timed steps each")
    common.report("B1", f"MAE train step, encoder on visible patches vs all patches ({preset})",
                  ["variant", "median step", "GFLOP/step", "compile (s)"], rows,
                  f"visible-only is {ratio:.2f}x faster at 75% masking (paper: >= 3x; bar here: >= 2.5x; "
                  f"FLOP ratio {full.flops / visible.flops:.2f}x)",
                  ratio=ratio, claim=">= 2.5x (paper >= 3x)", holds=ratio >= 2.5 if preset == "vit_s16" else None,
                  json_path=args.json)


if __name__ == "__main__":
    main()
