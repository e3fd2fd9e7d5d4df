r"""The official MaskGIT VQGAN tokenizer (google-research/maskgit, Chang et al., arXiv 2202.04200) as a
maskgen tokenizer run.

Usage, with the released Flax checkpoint (the README's `tokenizer_imagenet256_checkpoint`):

  maskgen import-weights --format maskgit_vqgan --weights tokenizer_imagenet256_checkpoint --workdir OUT

OUT is a maskgen run at step 0 (config.json from experiments/tokenizer_imagenet.py with the
shapes read off the checkpoint), which `maskgen eval`, `tokenize` and `sample` accept, and which
`maskgen import-weights --format maskgit_transformer` pairs with.

What the file holds: the variables `VQVAE.apply` takes (maskgit/inference.py restores them with
`flax.serialization.from_bytes`), {"params": {"encoder", "quantizer", "decoder"}} with linen's
automatic names (maskgit/nets/vqgan_tokenizer.py, released config maskgit/configs/vqgan_config.py:
GroupNorm, swish, `conv_downsample=False`):

  encoder/Conv_0/kernel [3,3,C,F]             first conv, no bias
  encoder/ResBlock_j, j < (L + 1) R           R blocks per level, then R mid blocks:
      GroupNorm_0/{scale,bias}, Conv_0/kernel [3,3,in,out], GroupNorm_1/{scale,bias},
      Conv_1/kernel [3,3,out,out], Conv_2/kernel [1,1,out,out] (only where the width changes)
  encoder/GroupNorm_0, encoder/Conv_1/{kernel [1,1,F_last,E], bias}
  quantizer/codebook [K, E]
  decoder/Conv_0/{kernel [3,3,E,F_last], bias}
  decoder/ResBlock_j                          R mid blocks, then R blocks per level, deepest first
  decoder/Conv_1 .. Conv_{L-1}/{kernel, bias} the 3x3 conv after each 2x nearest upsampling
  decoder/GroupNorm_0, decoder/Conv_L/{kernel [3,3,F,C], bias}

The maskgen model that computes the same function (tests/test_vqgan_weights.py checks it against
an independent transcription of the official forward pass) is the tokenizer with
`model.conv_variant="maskgit"` (ResBlock convs without bias, the width-changing shortcut applied
to the block's output h: out = h + conv1x1(h); the encoder's first conv without bias),
`model.pixel_range="zero_to_one"` (the official networks read and write [0, 1] images; maskgen's
data are in [-1, 1]), and a VQ without l2 normalisation. The official GroupNorm has 32 groups,
so every width must be a multiple of 32. The discriminator is not in the released file, so the
imported config has the GAN off (`loss.adversarial_weight=0`; set it, and the StyleGAN
discriminator starts from a random init, to fine-tune).
"""

from __future__ import annotations

import os
import re

import ml_collections
import numpy as np

from maskgen.weights.files import WeightFileError, tree_array

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments")
GROUPS = 32  # flax.linen.GroupNorm's default num_groups, which the official model uses
_INDEXED = re.compile(r"^(ResBlock|Conv|GroupNorm)_(\d+)$")


def _params(tree: dict) -> dict:
    """The linen params dict: the file holds {"params": ...} (the variables `apply` takes)."""
    if isinstance(tree.get("params"), dict):
        tree = tree["params"]
    missing = [k for k in ("encoder", "quantizer", "decoder") if not isinstance(tree.get(k), dict)]
    if missing:
        raise WeightFileError(f"not a MaskGIT VQGAN checkpoint: params/{missing[0]} is missing (expected "
                              f"{{'params': {{'encoder', 'quantizer', 'decoder'}}}}, found {sorted(tree)[:8]})")
    return tree


def _get(params: dict, path: str, ndim: int | None = None) -> np.ndarray:
    return tree_array(params, path, "MaskGIT VQGAN", ndim)


def _count(group: dict, kind: str, where: str) -> int:
    """How many `kind`_0 .. `kind`_{n-1} children a linen module has (they must be contiguous)."""
    indices = sorted(int(m.group(2)) for m in map(_INDEXED.match, group) if m and m.group(1) == kind)
    if indices != list(range(len(indices))):
        raise WeightFileError(f"params/{where} has {kind} children {indices}, expected {kind}_0 .. {kind}_<n-1>")
    return len(indices)


def shapes(tree: dict) -> dict:
    """The architecture read off the tree: channels, filters, channel_multipliers, num_res_blocks,
    embed_dim, codebook_size (every key it needs is checked here, with its name in the error)."""
    params = _params(tree)
    enc, dec = params["encoder"], params["decoder"]
    conv_in = _get(params, "encoder/Conv_0/kernel", 4)
    channels, filters = conv_in.shape[2], conv_in.shape[3]
    codebook = _get(params, "quantizer/codebook", 2)
    # The decoder's convs: Conv_0 (in), one per upsampling (levels - 1), and the output conv.
    levels = _count(dec, "Conv", "decoder") - 1
    if levels < 1:
        raise WeightFileError("params/decoder needs at least Conv_0 and Conv_1 (its input and output convs)")
    blocks = _count(enc, "ResBlock", "encoder")
    if blocks % (levels + 1) or blocks == 0:
        raise WeightFileError(f"params/encoder has {blocks} ResBlocks, not a multiple of levels + 1 = {levels + 1} "
                              f"(levels read from the decoder's {levels + 1} convs)")
    per_level = blocks // (levels + 1)
    multipliers = []
    for level in range(levels):
        width = _get(params, f"encoder/ResBlock_{level * per_level}/Conv_0/kernel", 4).shape[-1]
        if width % filters:
            raise WeightFileError(f"params/encoder/ResBlock_{level * per_level} has width {width}, "
                                  f"not a multiple of the first conv's {filters}")
        multipliers.append(width // filters)
    widths = {filters * m for m in multipliers}
    if any(w % GROUPS for w in widths):
        raise WeightFileError(f"widths {sorted(widths)} must be multiples of {GROUPS} (the official GroupNorm groups)")
    if _count(enc, "Conv", "encoder") != 2:
        raise WeightFileError("params/encoder must have exactly Conv_0 and Conv_1 (a checkpoint trained with "
                              "conv_downsample=True has strided convs, which maskgen does not implement)")
    return dict(channels=int(channels), filters=int(filters), channel_multipliers=tuple(multipliers),
                num_res_blocks=per_level, embed_dim=int(codebook.shape[1]), codebook_size=int(codebook.shape[0]))


def make_config(tree: dict, *, image_size: int = 256) -> ml_collections.ConfigDict:
    """experiments/tokenizer_imagenet.py (VQ) with the official tree's shapes and the switches that
    make maskgen's tokenizer compute the official function (module docstring)."""
    from maskgen.config import load_config_file

    s = shapes(tree)
    config = load_config_file(os.path.join(EXPERIMENTS, "tokenizer_imagenet.py") + ":quantizer=vq")
    m = config.model
    m.base_channels = s["filters"]
    m.channel_multipliers = s["channel_multipliers"]
    m.num_res_blocks = s["num_res_blocks"]
    m.embed_dim = s["embed_dim"]
    m.codebook_size = s["codebook_size"]
    m.conv_variant = "maskgit"
    m.pixel_range = "zero_to_one"
    # The official VQ: plain squared distances, entropy loss 0.1 at temperature 0.01, no k-means
    # (it would overwrite the loaded codebook on the first train step) and no restarts.
    m.vq.l2_normalize = False
    m.vq.kmeans_init = False
    m.vq.restart_dead_codes = False
    m.vq.entropy_weight = 0.1
    m.vq.entropy_temperature = 0.01
    config.data.image_size = int(image_size)
    config.compute_dtype = "float32"  # the official inference runs in float32 (bfloat16 moves codes)
    config.loss.adversarial_weight = 0.0  # no discriminator in the released file
    return config


def data_info(tree: dict, config: ml_collections.ConfigDict) -> dict:
    size = int(config.data.image_size)
    return {"image_shape": (size, size, shapes(tree)["channels"])}


def _conv(params: dict, where: str, shape: tuple, bias: bool = True) -> dict:
    kernel = _get(params, f"{where}/kernel", len(shape))
    if kernel.shape != shape:
        raise WeightFileError(f"params/{where}/kernel has shape {kernel.shape}, expected {shape}")
    out = {"kernel": kernel}
    if bias:
        out["bias"] = _get(params, f"{where}/bias", 1)
        if out["bias"].shape != (shape[-1],):
            raise WeightFileError(f"params/{where}/bias has shape {out['bias'].shape}, expected {(shape[-1],)}")
    _check_no_extra(_get_group(params, where), set(out), where)
    return out


def _norm(params: dict, where: str, ch: int) -> dict:
    out = {k: _get(params, f"{where}/{k}", 1) for k in ("scale", "bias")}
    for k, v in out.items():
        if v.shape != (ch,):
            raise WeightFileError(f"params/{where}/{k} has shape {v.shape}, expected {(ch,)}")
    _check_no_extra(_get_group(params, where), set(out), where)
    return out


def _res_block(params: dict, where: str, in_ch: int, out_ch: int) -> dict:
    """maskgen ResBlock(variant="maskgit") <- the official ResBlock (convs without bias)."""
    block = {"norm1": _norm(params, f"{where}/GroupNorm_0", in_ch),
             "conv1": _conv(params, f"{where}/Conv_0", (3, 3, in_ch, out_ch), bias=False),
             "norm2": _norm(params, f"{where}/GroupNorm_1", out_ch),
             "conv2": _conv(params, f"{where}/Conv_1", (3, 3, out_ch, out_ch), bias=False)}
    expected = {"GroupNorm_0", "Conv_0", "GroupNorm_1", "Conv_1"}
    if in_ch != out_ch:  # the shortcut reads the block's output h, so it is out x out
        block["shortcut"] = _conv(params, f"{where}/Conv_2", (1, 1, out_ch, out_ch), bias=False)
        expected.add("Conv_2")
    _check_no_extra(_get_group(params, where), expected, where)
    return block


def _get_group(params: dict, where: str) -> dict:
    node = params
    for part in where.split("/"):
        node = node[part]
    return node


def _check_no_extra(group: dict, expected: set, where: str) -> None:
    extra = sorted(set(group) - expected)
    if extra:
        raise WeightFileError(f"params/{where} has unexpected entries {extra}")


def convert(tree: dict, config: ml_collections.ConfigDict) -> dict:
    """The official arrays under the names of `nnx.to_pure_dict(nnx.state(Tokenizer, nnx.Param))`."""
    params = _params(tree)
    s = shapes(tree)
    m = config.model
    if (tuple(m.channel_multipliers) != s["channel_multipliers"] or m.base_channels != s["filters"]
            or m.num_res_blocks != s["num_res_blocks"] or m.embed_dim != s["embed_dim"]
            or m.get("conv_variant", "maskgen") != "maskgit" or m.get("pixel_range") != "zero_to_one"):
        raise ValueError("convert() needs the config make_config() built for this tree (conv_variant='maskgit', "
                         "pixel_range='zero_to_one' and the tree's shapes)")
    F, R, E, C = s["filters"], s["num_res_blocks"], s["embed_dim"], s["channels"]
    widths = [F * mult for mult in s["channel_multipliers"]]
    L = len(widths)

    # Encoder: R blocks per level (the first changes the width), then R mid blocks.
    encoder = {"conv_in": _conv(params, "encoder/Conv_0", (3, 3, C, F), bias=False)}
    blocks, ch, j = {}, F, 0
    for level in range(L):
        for _ in range(R):
            blocks[j] = _res_block(params, f"encoder/ResBlock_{j}", ch, widths[level])
            ch = widths[level]
            j += 1
    encoder["blocks"] = blocks
    encoder["mid"] = {r: _res_block(params, f"encoder/ResBlock_{L * R + r}", ch, ch) for r in range(R)}
    encoder["norm_out"] = _norm(params, "encoder/GroupNorm_0", ch)
    encoder["conv_out"] = _conv(params, "encoder/Conv_1", (1, 1, ch, E))
    _check_no_extra(params["encoder"], {"Conv_0", "Conv_1", "GroupNorm_0"} | {f"ResBlock_{i}" for i in range((L + 1) * R)},
                    "encoder")

    # Decoder: conv_in, R mid blocks, then per level (deepest first) R blocks and, above level 0,
    # upsample + Conv_{1..L-1}; GroupNorm_0 and the output conv Conv_L.
    ch = widths[-1]
    decoder = {"conv_in": _conv(params, "decoder/Conv_0", (3, 3, E, ch)),
               "mid": {r: _res_block(params, f"decoder/ResBlock_{r}", ch, ch) for r in range(R)}}
    blocks, ups, j = {}, {}, 0
    for level in reversed(range(L)):
        for _ in range(R):
            blocks[j] = _res_block(params, f"decoder/ResBlock_{R + j}", ch, widths[level])
            ch = widths[level]
            j += 1
        if level > 0:
            ups[len(ups)] = _conv(params, f"decoder/Conv_{len(ups) + 1}", (3, 3, ch, ch))
    decoder["blocks"], decoder["upsample_convs"] = blocks, ups
    decoder["norm_out"] = _norm(params, "decoder/GroupNorm_0", ch)
    decoder["conv_out"] = _conv(params, f"decoder/Conv_{L}", (3, 3, ch, C))
    _check_no_extra(params["decoder"], {"GroupNorm_0"} | {f"Conv_{i}" for i in range(L + 1)}
                    | {f"ResBlock_{i}" for i in range((L + 1) * R)}, "decoder")

    codebook = _get(params, "quantizer/codebook", 2)
    _check_no_extra(params["quantizer"], {"codebook"}, "quantizer")
    to32 = lambda t: {k: to32(v) if isinstance(v, dict) else np.asarray(v, np.float32) for k, v in t.items()}  # noqa: E731
    return to32({"encoder": encoder, "quantizer": {"codebook": codebook}, "decoder": decoder})
