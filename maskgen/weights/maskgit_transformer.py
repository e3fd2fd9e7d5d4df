"""Import the official MaskGIT transformer (Chang et al., "MaskGIT: Masked Generative Image
Transformer", arXiv 2202.04200; google-research/maskgit) into maskgen's paper-exact backbone
(`recipe="maskgit"`, `model.architecture="bert"`, `conditioning="prefix"`).

Where the files come from: the "Running pretrained models" table of google-research/maskgit's
README links the class-conditional ImageNet transformers, `maskgit_imagenet256_checkpoint` and
`maskgit_imagenet512_checkpoint` (storage.googleapis.com/maskgit-public/checkpoints/). maskgen
downloads nothing: fetch the file yourself, then

  maskgen import-weights --format maskgit_transformer --weights maskgit_imagenet256_checkpoint --workdir OUT

OUT is an Orbax run at step 0 (config.json from experiments/maskgit_imagenet256.py, with the shapes
read off the file) that every maskgen command accepts. To sample images, its tokens need the
matching tokenizer (the README's `tokenizer_imagenet256_checkpoint`, imported with
`--format maskgit_vqgan`) linked as the run's tokenizer. Importer options: `num_classes` (1000, the
ImageNet classes; the file's vocabulary is codebook + classes + 1, so this fixes the codebook
size) and `token_shape` (default: the square grid the position table implies, 16 x 16 at 256 px,
32 x 32 at 512 px).

The file is a Flax msgpack of the linen variables ({"params": ...}) of
maskgit/nets/maskgit_transformer.py's `Transformer`, a BERT without next-sentence prediction:

  Embed_0/word_embeddings/embedding          [V, W]  V = codebook C + classes K + 1
  Embed_0/position_embeddings/embedding      [N + 1, W]  (position 0: the class token)
  Embed_0/embeddings_ln/{scale, bias}        [W]
  TransformerLayer_i/Attention_0/self_attention/{query, key, value}/kernel [W, H, D], bias [H, D]
  TransformerLayer_i/Attention_0/self_attention/out/kernel [H, D, W], bias [W]
  TransformerLayer_i/Attention_0/attention_output_ln/{scale, bias}
  TransformerLayer_i/Mlp_0/{intermediate_output, layer_output}/{kernel, bias}
  TransformerLayer_i/Mlp_0/layer_output_ln/{scale, bias}
  MlmLayer_0/mlm_dense/{kernel, bias}, MlmLayer_0/mlm_ln/{scale, bias}, MlmLayer_0/mlm_bias/bias [V]

The one vocabulary holds the codebook tokens (rows 0..C-1), the classes (row C + c is class c: the
official code offsets labels by the codebook size and feeds them as the first token) and [MASK]
(mask_token_id = -1, the last row). maskgen keeps these apart, and `convert` maps them:

  token_embed  [C + 1, W] = word rows 0..C-1, then the last row ([MASK] is maskgen's row C)
  class_embed  [K + 1, W] = word rows C..C+K-1, then the [MASK] row again for maskgen's null class
               (the official model was never trained without a class; cfg_scale must stay 1)
  head_bias    [C]        = mlm_bias[:C]
  blocks.i.attn.qkv       = query/key/value stacked: kernel [W, 3, H, D], bias [3, H, D]
  blocks.i.{norm1, norm2} = attention_output_ln, layer_output_ln (post-LN: LN(x + sublayer))
  blocks.i.mlp.{fc1, fc2} = intermediate_output, layer_output
  pos_embed, embed_norm, mlm_dense, mlm_norm as named.

The official logits cover the whole vocabulary and its sampler keeps the first C
(`logits[..., :codebook_size]`); maskgen's tied head scores the C codebook rows only, which is the
same after that slice (and the same softmax over them). Missing, unexpected or misshaped keys are
errors that name the key.
"""

from __future__ import annotations

import math
import os
import re

import ml_collections
import numpy as np

from maskgen.weights.files import WeightFileError, shape_differences, tree_array, tree_shapes

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "experiments")
IMAGENET_CLASSES = 1000
_LAYER = re.compile(r"^TransformerLayer_(\d+)$")


def _params(tree: dict) -> dict:
    """The linen params dict: the file holds {"params": ...} (the variables `apply` takes)."""
    if isinstance(tree.get("params"), dict):
        return tree["params"]
    if "Embed_0" in tree:
        return tree
    raise WeightFileError(f"not a MaskGIT transformer checkpoint: expected {{'params': {{'Embed_0', "
                          f"'TransformerLayer_0', ..., 'MlmLayer_0'}}}}, the file's top-level keys are {sorted(tree)[:8]}")


def _get(params: dict, path: str, ndim: int | None = None) -> np.ndarray:
    return tree_array(params, path, "MaskGIT transformer", ndim)


def _depth(params: dict) -> int:
    indices = sorted(int(m.group(1)) for m in map(_LAYER.match, params) if m)
    if not indices or indices != list(range(len(indices))):
        raise WeightFileError(f"expected params/TransformerLayer_0 .. TransformerLayer_<depth-1>, got layers {indices}")
    return len(indices)


def _shapes(params: dict) -> dict[str, int]:
    """width, heads, head_dim, hidden (MLP), depth, vocab (V), positions (N + 1) read off the tree."""
    word = _get(params, "Embed_0/word_embeddings/embedding")
    positions = _get(params, "Embed_0/position_embeddings/embedding")
    query = _get(params, "TransformerLayer_0/Attention_0/self_attention/query/kernel")
    hidden = _get(params, "TransformerLayer_0/Mlp_0/intermediate_output/kernel")
    if word.ndim != 2 or query.ndim != 3 or positions.ndim != 2 or hidden.ndim != 2:
        raise WeightFileError(f"params/Embed_0/word_embeddings/embedding {word.shape}, position_embeddings "
                              f"{positions.shape}, TransformerLayer_0 query kernel {query.shape} and "
                              f"intermediate_output kernel {hidden.shape}: expected [V, W], [N + 1, W], [W, H, D], "
                              "[W, hidden]")
    return {"width": int(word.shape[1]), "heads": int(query.shape[1]), "head_dim": int(query.shape[2]),
            "hidden": int(hidden.shape[1]), "depth": _depth(params), "vocab": int(word.shape[0]),
            "positions": int(positions.shape[0])}


def official_shapes(s: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """Every parameter path of the official `Transformer` (maskgit/nets/maskgit_transformer.py) and
    its shape, for the sizes `s` (`_shapes`)."""
    w, h, d, v = s["width"], s["heads"], s["head_dim"], s["vocab"]
    out = {"Embed_0/word_embeddings/embedding": (v, w), "Embed_0/position_embeddings/embedding": (s["positions"], w),
           "Embed_0/embeddings_ln/scale": (w,), "Embed_0/embeddings_ln/bias": (w,),
           "MlmLayer_0/mlm_dense/kernel": (w, w), "MlmLayer_0/mlm_dense/bias": (w,),
           "MlmLayer_0/mlm_ln/scale": (w,), "MlmLayer_0/mlm_ln/bias": (w,), "MlmLayer_0/mlm_bias/bias": (v,)}
    for i in range(s["depth"]):
        attn, mlp = f"TransformerLayer_{i}/Attention_0", f"TransformerLayer_{i}/Mlp_0"
        for name in ("query", "key", "value"):
            out[f"{attn}/self_attention/{name}/kernel"] = (w, h, d)
            out[f"{attn}/self_attention/{name}/bias"] = (h, d)
        out[f"{attn}/self_attention/out/kernel"] = (h, d, w)
        out[f"{attn}/self_attention/out/bias"] = (w,)
        for ln in (f"{attn}/attention_output_ln", f"{mlp}/layer_output_ln"):
            out[f"{ln}/scale"] = out[f"{ln}/bias"] = (w,)
        out[f"{mlp}/intermediate_output/kernel"] = (w, s["hidden"])
        out[f"{mlp}/intermediate_output/bias"] = (s["hidden"],)
        out[f"{mlp}/layer_output/kernel"] = (s["hidden"], w)
        out[f"{mlp}/layer_output/bias"] = (w,)
    return out


def check_tree(params: dict) -> dict[str, int]:
    """The sizes of a complete official tree; any missing, unexpected or misshaped key is an error naming it."""
    sizes = _shapes(params)
    differences = shape_differences(tree_shapes(params), official_shapes(sizes), prefix="params/", limit=8)
    if differences:
        raise WeightFileError(f"not the official MaskGIT transformer layout: {differences}")
    return sizes


def _grid(num_tokens: int, token_shape) -> tuple[int, ...]:
    if token_shape is not None:
        if isinstance(token_shape, str):  # from the command line: "16,16" or "16x16"
            token_shape = [part for part in re.split(r"[,x\s()]+", token_shape) if part]
        try:
            shape = tuple(int(x) for x in token_shape)
        except (TypeError, ValueError):
            raise ValueError(f"token_shape must be sizes like (16, 16) or '16,16', got {token_shape!r}") from None
        if math.prod(shape) != num_tokens:
            raise ValueError(f"token_shape={shape} has {math.prod(shape)} tokens; the position table "
                             f"(params/Embed_0/position_embeddings/embedding) has {num_tokens} + 1 (the class)")
        return shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"the position table holds {num_tokens} token positions, not a square grid: pass "
                         "token_shape=(h, w)")
    return (side, side)


def make_config(tree: dict, *, num_classes: int = IMAGENET_CLASSES, token_shape=None) -> ml_collections.ConfigDict:
    """experiments/maskgit_imagenet256.py's paper config with the shapes of the official tree."""
    from maskgen.config import load_config_file

    sizes = check_tree(_params(tree))
    num_classes = int(num_classes)
    codebook = sizes["vocab"] - num_classes - 1
    if num_classes < 1 or codebook < 2:
        raise ValueError(f"params/Embed_0/word_embeddings/embedding has {sizes['vocab']} rows = codebook + "
                         f"num_classes + 1 ([MASK]); num_classes={num_classes} leaves a codebook of {codebook}")
    if sizes["heads"] * sizes["head_dim"] != sizes["width"]:
        raise WeightFileError(f"attention heads {sizes['heads']} x {sizes['head_dim']} != width {sizes['width']}; "
                              "maskgen's attention projects to the model width")
    config = load_config_file(os.path.join(EXPERIMENTS, "maskgit_imagenet256.py"))
    m = config.model
    m.token_shape = _grid(sizes["positions"] - 1, token_shape)
    m.codebook_size = codebook
    m.width, m.depth, m.num_heads = sizes["width"], sizes["depth"], sizes["heads"]
    m.mlp_ratio = sizes["hidden"] / sizes["width"]
    m.conditioning, m.positions, m.tie_head, m.qk_norm, m.architecture = "prefix", "learned", True, False, "bert"
    if int(m.width * m.mlp_ratio) != sizes["hidden"]:
        raise WeightFileError(f"the MLP width {sizes['hidden']} is not int(width * ratio) for width {sizes['width']}")
    return config


def data_info(tree: dict, config: ml_collections.ConfigDict) -> dict:
    """Class-labelled token grids of the model's codebook and shape (no dataset at hand)."""
    sizes = _shapes(_params(tree))
    codebook = int(config.model.codebook_size)
    return {"codebook_size": codebook, "token_shape": tuple(config.model.token_shape),
            "num_classes": sizes["vocab"] - codebook - 1, "tokenizer": {}, "splits": {}}


def convert(tree: dict, config: ml_collections.ConfigDict) -> dict:
    """The official params as maskgen's `TokenTransformer(architecture="bert")` parameter tree
    (`nnx.to_pure_dict(nnx.state(model, nnx.Param))`), float32 numpy."""
    params = _params(tree)
    sizes = check_tree(params)
    codebook = int(config.model.codebook_size)
    num_classes = sizes["vocab"] - codebook - 1
    if num_classes < 1:
        raise ValueError(f"config.model.codebook_size={codebook} leaves no classes in the {sizes['vocab']}-row vocabulary")
    get = lambda path: np.asarray(_get(params, path), np.float32)  # noqa: E731
    word = get("Embed_0/word_embeddings/embedding")
    mask_row = word[-1:]  # the official mask_token_id is -1
    ln = lambda path: {"scale": get(f"{path}/scale"), "bias": get(f"{path}/bias")}  # noqa: E731
    dense = lambda path: {"kernel": get(f"{path}/kernel"), "bias": get(f"{path}/bias")}  # noqa: E731
    blocks = {}
    for i in range(sizes["depth"]):
        attn, mlp = f"TransformerLayer_{i}/Attention_0", f"TransformerLayer_{i}/Mlp_0"
        qkv = [dense(f"{attn}/self_attention/{name}") for name in ("query", "key", "value")]
        blocks[i] = {
            "attn": {"qkv": {"kernel": np.stack([p["kernel"] for p in qkv], axis=1),
                             "bias": np.stack([p["bias"] for p in qkv], axis=0)},
                     "out": dense(f"{attn}/self_attention/out")},
            "norm1": ln(f"{attn}/attention_output_ln"),
            "mlp": {"fc1": dense(f"{mlp}/intermediate_output"), "fc2": dense(f"{mlp}/layer_output")},
            "norm2": ln(f"{mlp}/layer_output_ln"),
        }
    return {
        "token_embed": np.concatenate([word[:codebook], mask_row]),
        "class_embed": np.concatenate([word[codebook:codebook + num_classes], mask_row]),
        "pos_embed": get("Embed_0/position_embeddings/embedding"),
        "embed_norm": ln("Embed_0/embeddings_ln"),
        "blocks": blocks,
        "mlm_dense": dense("MlmLayer_0/mlm_dense"),
        "mlm_norm": ln("MlmLayer_0/mlm_ln"),
        "head_bias": get("MlmLayer_0/mlm_bias/bias")[:codebook],
    }


__all__ = ["check_tree", "convert", "data_info", "make_config", "official_shapes"]
