"""Import released MAE weights (He et al., "Masked Autoencoders Are Scalable Vision Learners",
arXiv 2111.06377) from PyTorch into maskgen's MAE (`recipe="mae"`).

Reads two layouts, from `.pth` (maskgen.weights.torch_files: weights only, nothing unpickled) or
`.safetensors`:

- facebookresearch/mae `models_mae.py` state dicts (the `MaskedAutoencoderViT` the repo trains;
  its checkpoints wrap them as {"model": ...}): encoder `patch_embed.proj`, `cls_token`,
  `pos_embed`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, and decoder
  `decoder_embed`, `mask_token`, `decoder_pos_embed`, `decoder_blocks.N.*`, `decoder_norm`,
  `decoder_pred` (e.g. the repo's `mae_visualize_vit_large.pth`).
- Encoder-only state dicts: the repo's `mae_pretrain_vit_{base,large,huge}.pth` (the weights for
  fine-tuning and linear probing) and timm's `vit_{base,large,huge}_patch{16,14}_224.mae`, which
  share the encoder's names. They have no decoder: the imported run's decoder is a fresh
  initialisation (config.seed), so its reconstructions are meaningless until the decoder is trained
  (`init_from`); its encoder features (`maskgen eval`'s linear probe, `mae:<workdir>` perceptual
  networks) are the released ones.

The layout changes (`convert`): a Linear weight [out, in] becomes a kernel [in, out]; the fused qkv
[3*width, width] becomes maskgen's [width, 3, heads, head_dim] (timm splits its output as
(3, heads, head_dim)); the attention projection becomes [heads, head_dim, width]; the patch
embedding's conv weight [width, C, p, p] becomes a kernel over maskgen's flattened patches, whose
values run (row, column, channel) — MAE's own `patchify` order, so `decoder_pred` needs no
reordering. LayerNorms are eps 1e-6 in both. Both position embeddings must be the fixed 2-D sin-cos
of facebookresearch/mae's `util/pos_embed.py` with a zero class-token row (maskgen computes them,
`model.sincos_order="x_first"`); one that differs (interpolated to another resolution, or learned)
is an error naming the key.

Command (after downloading the file yourself; nothing is downloaded):

  maskgen import-weights --format mae --weights mae_pretrain_vit_base.pth --workdir OUT
  maskgen eval --workdir OUT --config.data.data_dir=/path/to/tfds   # linear probe on the encoder

OUT is an Orbax run at step 0 (config.json from experiments/mae_imagenet.py with the shapes read
off the file) that every maskgen command accepts. The number of heads is not in the shapes:
`num_heads` defaults to the ViT's (768 -> 12, 1024 -> 16, 1280 -> 16), `decoder_heads` to MAE's 16
at width 512; give them as importer options otherwise.
"""

from __future__ import annotations

import os
import re

import jax
import ml_collections
import numpy as np
from flax import nnx

from maskgen.models.vit import sincos_2d
from maskgen.weights.files import WeightFileError

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments")

# The standard ViT head counts per width (ViT-B/L/H), and MAE's decoder (512 wide, 16 heads).
DEFAULT_HEADS = {768: 12, 1024: 16, 1280: 16}
DEFAULT_DECODER_HEADS = {512: 16}
# ViT width -> experiments/mae_imagenet.py size (the paper settings the run starts from).
_SIZES = {768: "B", 1024: "L", 1280: "H"}
# Sin-cos tables computed in float64 by maskgen and in float64-then-float32 by util/pos_embed.py.
POS_EMBED_ATOL = 1e-4


def read(path: str) -> dict[str, np.ndarray]:
    """The state dict in `path`: `.safetensors` by name, anything else as a PyTorch zip file."""
    from maskgen.weights.torch_files import read_safetensors, read_torch_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    return read_safetensors(path) if path.endswith(".safetensors") else read_torch_state_dict(path)


def _get(tree: dict, key: str) -> np.ndarray:
    if key not in tree:
        raise WeightFileError(f"the MAE state dict has no {key!r}; is it a facebookresearch/mae or timm ViT-MAE "
                              f"state dict? (it has {len(tree)} keys, e.g. {sorted(tree)[:6]})")
    return np.asarray(tree[key])


def _depth(tree: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for k in tree if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise WeightFileError(f"the MAE state dict's {prefix}.N blocks are not numbered 0..N-1: {sorted(indices)}")
    return len(indices)


def has_decoder(tree: dict) -> bool:
    return any(k.startswith("decoder_") or k == "mask_token" for k in tree)


def _heads(width: int, given: int | None, defaults: dict[int, int], option: str) -> int:
    heads = given if given is not None else defaults.get(width)
    if heads is None:
        raise ValueError(f"the state dict does not record the number of heads; width {width} has no standard "
                         f"count ({defaults}): pass {option}=H")
    if width % heads:
        raise ValueError(f"{option}={heads} does not divide the width {width}")
    return heads


def make_config(tree: dict, *, num_heads: int | None = None, decoder_heads: int | None = None,
                decoder_width: int | None = None, decoder_depth: int | None = None) -> ml_collections.ConfigDict:
    """experiments/mae_imagenet.py's paper config with the encoder (and decoder) shapes of `tree`.

    For an encoder-only file the (fresh) decoder is the paper's (512 wide, 8 blocks, 16 heads)
    unless decoder_width / decoder_depth / decoder_heads say otherwise; a file with a decoder fixes
    its width and depth.
    """
    from maskgen.config import load_config_file

    proj = _get(tree, "patch_embed.proj.weight")  # [width, C, p, p]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise WeightFileError(f"patch_embed.proj.weight has shape {proj.shape}; expected [width, C, p, p]")
    width, _, patch, _ = proj.shape
    positions = _get(tree, "pos_embed").shape[-2] - 1
    grid = int(round(positions ** 0.5))
    if grid * grid != positions:
        raise WeightFileError(f"pos_embed has {positions} patch positions, not a square grid")
    mlp_hidden = _get(tree, "blocks.0.mlp.fc1.weight").shape[0]
    config = load_config_file(os.path.join(EXPERIMENTS, "mae_imagenet.py") + f":size={_SIZES.get(width, 'B')}")
    m = config.model
    m.patch_size, m.width, m.depth = int(patch), int(width), _depth(tree, "blocks")
    m.num_heads = _heads(int(width), num_heads, DEFAULT_HEADS, "num_heads")
    m.mlp_ratio = float(mlp_hidden / width)
    m.sincos_order = "x_first"
    config.data.image_size = int(grid * patch)
    # Data parallel only, so that the import (and eval of the imported run) works on any device
    # count; a training config that starts from it (`init_from`) brings its own mesh.
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    if has_decoder(tree):
        decoder_width = int(_get(tree, "decoder_embed.weight").shape[0])
        m.decoder_width, m.decoder_depth = decoder_width, _depth(tree, "decoder_blocks")
        m.decoder_heads = _heads(decoder_width, decoder_heads, DEFAULT_DECODER_HEADS, "decoder_heads")
        decoder_hidden = _get(tree, "decoder_blocks.0.mlp.fc1.weight").shape[0]
        if decoder_hidden != int(decoder_width * m.mlp_ratio):
            raise WeightFileError(f"decoder MLP width {decoder_hidden} is not the encoder's mlp_ratio {m.mlp_ratio} "
                                  f"x {decoder_width}; maskgen's MAE shares one mlp_ratio")
        for option, given, found in (("decoder_width", decoder_width, m.decoder_width),
                                     ("decoder_depth", decoder_depth, m.decoder_depth)):
            if given is not None and given != found:
                raise ValueError(f"{option}={given}, but the file's decoder has {found}")
    else:
        m.decoder_width = int(decoder_width) if decoder_width is not None else m.decoder_width
        m.decoder_depth = int(decoder_depth) if decoder_depth is not None else m.decoder_depth
        m.decoder_heads = _heads(m.decoder_width, decoder_heads if decoder_heads is not None else
                                 DEFAULT_DECODER_HEADS.get(m.decoder_width), {}, "decoder_heads")
    return config


def data_info(tree: dict, config: ml_collections.ConfigDict) -> dict:
    """ImageNet-1k images of the file's size and channels (MAE's pretraining data)."""
    channels = int(_get(tree, "patch_embed.proj.weight").shape[1])
    size = int(config.data.image_size)
    return {"image_shape": (size, size, channels), "num_classes": 1000, "splits": {}}


def _linear(tree: dict, prefix: str) -> dict:
    return {"kernel": _get(tree, f"{prefix}.weight").T, "bias": _get(tree, f"{prefix}.bias")}


def _norm(tree: dict, prefix: str) -> dict:
    return {"scale": _get(tree, f"{prefix}.weight"), "bias": _get(tree, f"{prefix}.bias")}


def _block(tree: dict, prefix: str, width: int, heads: int) -> dict:
    head_dim = width // heads
    qkv_w, qkv_b = _get(tree, f"{prefix}.attn.qkv.weight"), _get(tree, f"{prefix}.attn.qkv.bias")
    proj_w = _get(tree, f"{prefix}.attn.proj.weight")
    if qkv_w.shape != (3 * width, width) or proj_w.shape != (width, width):
        raise WeightFileError(f"{prefix}.attn has qkv {qkv_w.shape} and proj {proj_w.shape}; expected "
                              f"({3 * width}, {width}) and ({width}, {width})")
    return {
        "norm1": _norm(tree, f"{prefix}.norm1"),
        # timm: qkv(x).reshape(B, N, 3, heads, head_dim), and the heads' outputs concatenated head-major.
        "attn": {"qkv": {"kernel": qkv_w.T.reshape(width, 3, heads, head_dim), "bias": qkv_b.reshape(3, heads, head_dim)},
                 "out": {"kernel": proj_w.T.reshape(heads, head_dim, width),
                         "bias": _get(tree, f"{prefix}.attn.proj.bias")}},
        "norm2": _norm(tree, f"{prefix}.norm2"),
        "mlp": {"fc1": _linear(tree, f"{prefix}.mlp.fc1"), "fc2": _linear(tree, f"{prefix}.mlp.fc2")},
    }


def check_pos_embed(tree: dict, key: str, grid: int, width: int) -> None:
    """`tree[key]` must be util/pos_embed.py's fixed table [1, 1 + grid^2, width] with a zero class row."""
    table = _get(tree, key)
    if table.shape != (1, 1 + grid * grid, width):
        raise WeightFileError(f"{key} has shape {table.shape}; expected (1, {1 + grid * grid}, {width})")
    expected = np.concatenate([np.zeros((1, width), np.float32), sincos_2d(grid, grid, width, "x_first")])
    error = float(np.abs(table[0].astype(np.float64) - expected).max())
    if error > POS_EMBED_ATOL:
        swapped = np.concatenate([np.zeros((1, width), np.float32), sincos_2d(grid, grid, width, "y_first")])
        hint = (" (it is the table with its x and y halves swapped)"
                if np.abs(table[0] - swapped).max() <= POS_EMBED_ATOL else
                " (interpolated to another resolution, or learned?)")
        raise WeightFileError(f"{key} differs from MAE's fixed 2-D sin-cos position embedding by up to {error:.3g}"
                              f"{hint}; maskgen's MAE computes that table and cannot hold another")


def _expected_keys(depth: int, decoder_depth: int | None) -> set[str]:
    block = [f"{part}.{kind}" for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for kind in ("weight", "bias")]
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    keys |= {f"blocks.{i}.{b}" for i in range(depth) for b in block}
    if decoder_depth is not None:
        keys |= {"mask_token", "decoder_pos_embed", "decoder_embed.weight", "decoder_embed.bias",
                 "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
        keys |= {f"decoder_blocks.{i}.{b}" for i in range(decoder_depth) for b in block}
    return keys


def _fresh_decoder(config: ml_collections.ConfigDict, info: dict) -> dict:
    """The decoder parameters of a newly initialised model (seed config.seed), for encoder-only files."""
    from maskgen.recipes.mae import MAERecipe

    recipe = MAERecipe.from_config(config, info)

    @jax.jit  # one compiled initialiser: eager initialisation compiles every parameter's shape apart
    def init():
        return nnx.to_pure_dict(nnx.state(recipe.make_model(nnx.Rngs(config.seed)), nnx.Param))

    with nnx.use_eager_sharding(False):
        params = jax.tree.map(np.asarray, init())
    return {k: v for k, v in params.items() if k != "encoder"}


def convert(tree: dict, config: ml_collections.ConfigDict) -> dict:
    """The state dict as the parameter tree of the MAE that `config` builds (module docstring)."""
    m = config.model
    width, heads, patch = m.width, m.num_heads, m.patch_size
    grid = config.data.image_size // patch
    decoder = has_decoder(tree)
    expected = _expected_keys(m.depth, m.decoder_depth if decoder else None)
    missing, extra = sorted(expected - set(tree)), sorted(set(tree) - expected)
    if missing or extra:
        raise WeightFileError("the state dict does not match an MAE of depth "
                              f"{m.depth}{f' / decoder depth {m.decoder_depth}' if decoder else ' (encoder only)'}: "
                              + (f"missing {missing[:8]}" if missing else "")
                              + ("; " if missing and extra else "") + (f"unexpected {extra[:8]}" if extra else ""))
    if m.get("sincos_order", "y_first") != "x_first":
        raise ValueError("MAE weights need config.model.sincos_order='x_first' (util/pos_embed.py's layout)")
    proj = _get(tree, "patch_embed.proj.weight")  # [width, C, p, p] -> [(row, col, channel), width]
    if proj.shape[0] != width or proj.shape[2:] != (patch, patch):
        raise WeightFileError(f"patch_embed.proj.weight has shape {proj.shape}; the config needs [{width}, C, {patch}, {patch}]")
    check_pos_embed(tree, "pos_embed", grid, width)
    encoder = {
        "patch_embed": {"kernel": proj.transpose(2, 3, 1, 0).reshape(-1, width),
                        "bias": _get(tree, "patch_embed.proj.bias")},
        "cls_token": _get(tree, "cls_token").reshape(width),
        "transformer": {"blocks": {i: _block(tree, f"blocks.{i}", width, heads) for i in range(m.depth)},
                        "norm": _norm(tree, "norm")},
    }
    if not decoder:
        return {"encoder": encoder, **_fresh_decoder(config, data_info(tree, config))}
    dw = m.decoder_width
    check_pos_embed(tree, "decoder_pos_embed", grid, dw)
    return {
        "encoder": encoder,
        "decoder_embed": _linear(tree, "decoder_embed"),
        "mask_token": _get(tree, "mask_token").reshape(dw),
        "decoder": {"blocks": {i: _block(tree, f"decoder_blocks.{i}", dw, m.decoder_heads)
                               for i in range(m.decoder_depth)},
                    "norm": _norm(tree, "decoder_norm")},
        # MAE's patchify orders a patch's values (row, column, channel), as maskgen's does.
        "decoder_pred": _linear(tree, "decoder_pred"),
    }


__all__ = ["DEFAULT_HEADS", "check_pos_embed", "convert", "data_info", "has_decoder", "make_config", "read"]
