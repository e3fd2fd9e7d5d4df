"""FID's InceptionV3 in Flax NNX, with weights from a file the user provides.

FID (Heusel et al., arXiv 1706.08500) is the Fréchet distance between Gaussians fitted to the
2048-d "pool3" features of InceptionV3 (Szegedy et al., arXiv 1512.00567). Published FIDs use one
specific network: the TensorFlow Inception graph "2015-12-05". The architecture and the weight
layout here follow its PyTorch port in pytorch-fid (`fid_inception_v3`), also used by
torch-fidelity, so its weights load directly. maskgen downloads nothing: the user obtains the
weights themselves, e.g. pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, and converts
them once on a machine with torch:

    python -m maskgen.perception.inception convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The `.npz` holds the PyTorch state_dict unchanged (names such as `Conv2d_1a_3x3.conv.weight` or
`Mixed_5b.branch1x1.bn.running_mean`, convolution kernels in torch's OIHW layout); loading
transposes kernels to HWIO. The `.pth` file also loads directly when torch is importable.

What makes the FID network differ from torchvision's InceptionV3 (and so must match exactly):
  - the average pools of Mixed_5b-5d (FIDInceptionA), Mixed_6b-6e (FIDInceptionC) and Mixed_7b
    (FIDInceptionE_1) exclude the padding from the count (TF's behaviour, count_include_pad=False);
  - Mixed_7c (FIDInceptionE_2) max-pools in its pool branch;
  - BatchNorm uses eps = 0.001 with the running statistics (eval mode);
  - inputs are resized to 299x299, bilinear with half-pixel centres and no antialiasing (torch's
    `F.interpolate(mode="bilinear", align_corners=False)`, as pytorch-fid does), and expected in
    [-1, 1] (pytorch-fid maps its [0, 1] inputs there with 2x - 1; here they are used as given).
The features are the global average of Mixed_7c's output (pool3), NHWC throughout.

Numbers from this network match pytorch-fid's, not exactly those of the TF graph (which resizes
differently): ADM's reference statistics (Dhariwal & Nichol, arXiv 2105.05233) were made with the
TF graph, so `fid_metric_name` gives comparisons against such a file their own name.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskgen.perception.frechet import feature_statistics, frechet_distance, load_reference_statistics

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPS = 1e-3
FC_CLASSES = 1008  # The TF graph's classifier width; present in the .pth and .npz, unused for features.
DEFAULT_BATCH_SIZE = 50
# Inputs should lie in [-1, 1]; anything beyond this is a scaling mistake (e.g. [0, 255] floats),
# while unclipped generator output a little past +-1 is still accepted.
INPUT_LIMIT = 2.0
METRIC_IN_RUN = "fid_inception"  # Against reference features computed in the same run.
METRIC_ADM_REF = "fid_inception_adm_ref"  # Against precomputed (mu, sigma) in an ADM-style .npz.
METRIC_ADM_IMAGES = "fid_inception_adm_images"  # Against this network's features of an ADM batch's arr_0.
CONVERT_COMMAND = "python -m maskgen.perception.inception convert IN.pth OUT.npz"

# Torch state_dict keys that are not part of the feature network: the classifier, and the
# BatchNorm step counters that newer torch versions add.
_IGNORED_PREFIXES = ("fc.",)
_IGNORED_SUFFIXES = (".num_batches_tracked",)
# Our variable name -> torch's, for the last component of each parameter path.
_TORCH_LEAF_NAMES = {("conv", "kernel"): "conv.weight", ("bn", "scale"): "bn.weight", ("bn", "bias"): "bn.bias",
                     ("bn", "mean"): "bn.running_mean", ("bn", "var"): "bn.running_var"}


# --------------------------------------------------------------------------------------------- network

def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv2d(nnx.Module):
    """2-D convolution without bias, NHWC, explicit symmetric padding; kernel HWIO (torch's OIHW transposed).

    Parameters start as zeros: the network is only ever used with loaded weights, and skipping random
    initialisation makes building it instant (nnx initialisers take about a minute for InceptionV3 on CPU).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: tuple[int, int], *, stride: int, padding: tuple[int, int],
                 precision=None):
        self.kernel = nnx.Param(np.zeros((*kernel, in_ch, out_ch), np.float32))
        self.stride, self.padding, self.precision = stride, padding, precision

    def __call__(self, x: jax.Array) -> jax.Array:
        (ph, pw), s = self.padding, self.stride
        return jax.lax.conv_general_dilated(x, self.kernel[...], (s, s), ((ph, ph), (pw, pw)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)


class BatchNorm(nnx.Module):
    """Inference BatchNorm with running statistics: (x - mean) / sqrt(var + eps) * scale + bias, eps = 0.001."""

    def __init__(self, channels: int):
        self.scale = nnx.Param(np.ones(channels, np.float32))
        self.bias = nnx.Param(np.zeros(channels, np.float32))
        self.mean = nnx.BatchStat(np.zeros(channels, np.float32))
        self.var = nnx.BatchStat(np.ones(channels, np.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.scale[...] * jax.lax.rsqrt(self.var[...] + BN_EPS)
        return x * scale + (self.bias[...] - self.mean[...] * scale)


class BasicConv2d(nnx.Module):
    """conv (no bias) -> BatchNorm -> ReLU; torch's `BasicConv2d`, with the same child names."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | Sequence[int], *, stride: int = 1,
                 padding: int | Sequence[int] = 0, precision=None):
        self.conv = Conv2d(in_ch, out_ch, _pair(kernel), stride=stride, padding=_pair(padding), precision=precision)
        self.bn = BatchNorm(out_ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
    # count_include_pad=False: border windows average only the real pixels, as TF does.
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nnx.Module):
    """Mixed_5b-5d: 1x1, 5x5, double 3x3 and avg-pool branches; 224 + pool_features channels out."""

    def __init__(self, in_ch: int, pool_features: int, *, precision=None):
        kw = dict(precision=precision)
        self.branch1x1 = BasicConv2d(in_ch, 64, 1, **kw)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, 1, **kw)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, **kw)
        self.branch_pool = BasicConv2d(in_ch, pool_features, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_3x3(x))], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (grid reduction 35 -> 17): strided 3x3, double 3x3 and max-pool branches."""

    def __init__(self, in_ch: int, *, precision=None):
        kw = dict(precision=precision)
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2, **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, **kw)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nnx.Module):
    """Mixed_6b-6e: factorised 7x7 (1x7 and 7x1) branches and an avg-pool branch; 768 channels out."""

    def __init__(self, in_ch: int, channels_7x7: int, *, precision=None):
        kw, c7 = dict(precision=precision), channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, 1, **kw)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, 1, **kw)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, 1, **kw)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), **kw)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), **kw)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), **kw)
        self.branch_pool = BasicConv2d(in_ch, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        return jnp.concatenate([self.branch1x1(x), b7, bd, self.branch_pool(_avg_pool_3x3(x))], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (grid reduction 17 -> 8): strided 3x3, 7x7-then-strided-3x3 and max-pool branches."""

    def __init__(self, in_ch: int, *, precision=None):
        kw = dict(precision=precision)
        self.branch3x3_1 = BasicConv2d(in_ch, 192, 1, **kw)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, **kw)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, 1, **kw)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), **kw)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), **kw)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nnx.Module):
    """Mixed_7b (FIDInceptionE_1, avg-pool branch) and Mixed_7c (FIDInceptionE_2, max-pool branch); 2048 out."""

    def __init__(self, in_ch: int, *, pool: str, precision=None):
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        kw = dict(precision=precision)
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, 1, **kw)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, 1, **kw)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, 1, **kw)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, **kw)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), **kw)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), **kw)
        self.branch_pool = BasicConv2d(in_ch, 192, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _avg_pool_3x3(x) if self.pool == "avg" else _max_pool_3x3(x)
        return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


def preprocess(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """[B, H, W, 1 or 3] in [-1, 1] -> float32 [B, size, size, 3]: grey repeated to RGB, bilinear resize.

    The resize is torch's `F.interpolate(mode="bilinear", align_corners=False)` (what pytorch-fid
    uses): half-pixel centres, no antialiasing when shrinking.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Inception expects images [B, H, W, 1 or 3], got shape {images.shape}")
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, 3), method="bilinear", antialias=False)
    return x


class FIDInceptionV3(nnx.Module):
    """pytorch-fid's `fid_inception_v3` up to pool3: images [B, H, W, C] in [-1, 1] -> features [B, 2048].

    Attribute names are the torch module names, so each parameter path maps to a state_dict key.
    `precision` is passed to every convolution; "highest" keeps float32 convolutions in float32
    on GPUs/TPUs (whose default may use TF32/bfloat16 passes), so features do not depend on the device.
    """

    def __init__(self, *, precision="highest"):
        kw = dict(precision=precision)
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, **kw)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, **kw)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, **kw)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, **kw)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, **kw)
        self.Mixed_5b = FIDInceptionA(192, 32, **kw)
        self.Mixed_5c = FIDInceptionA(256, 64, **kw)
        self.Mixed_5d = FIDInceptionA(288, 64, **kw)
        self.Mixed_6a = InceptionB(288, **kw)
        self.Mixed_6b = FIDInceptionC(768, 128, **kw)
        self.Mixed_6c = FIDInceptionC(768, 160, **kw)
        self.Mixed_6d = FIDInceptionC(768, 160, **kw)
        self.Mixed_6e = FIDInceptionC(768, 192, **kw)
        self.Mixed_7a = InceptionD(768, **kw)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg", **kw)
        self.Mixed_7c = FIDInceptionE(2048, pool="max", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Preprocessed images [B, 299, 299, 3] -> pool3 features [B, 2048]."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(_max_pool_3x3_s2(x)))
        x = _max_pool_3x3_s2(x)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(axis=(1, 2))

    def features(self, images: jax.Array) -> jax.Array:
        return self(preprocess(images))


# ------------------------------------------------------------------------------------ weights <-> torch

@functools.lru_cache(maxsize=None)
def _graphdef(precision="highest"):
    return nnx.split(FIDInceptionV3(precision=precision))[0]


@functools.lru_cache(maxsize=None)
def _param_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """{parameter path in the pure dict: shape}, in the model's (sorted) order."""
    state = nnx.to_pure_dict(nnx.state(FIDInceptionV3()))
    return {path: tuple(leaf.shape) for path, leaf in nnx.traversals.flatten_mapping(state).items()}


def _torch_name(path: tuple[str, ...]) -> str:
    return ".".join((*path[:-2], _TORCH_LEAF_NAMES[path[-2:]]))


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    # Kernels are HWIO here and OIHW in torch.
    return (shape[3], shape[2], shape[0], shape[1]) if path[-1] == "kernel" else shape


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """{torch state_dict name: torch shape} of every tensor the feature network needs (fc excluded)."""
    return {_torch_name(path): _torch_shape(path, shape) for path, shape in _param_shapes().items()}


def random_state_dict(seed: int = 0, *, include_fc: bool = False) -> dict[str, np.ndarray]:
    """A random float32 state_dict in torch names and layouts, for tests (no real weights needed).

    He-normal kernels and BatchNorm statistics near (0, 1) keep activations of order one through
    the 94 layers, so random features are neither all zero nor overflowing. `include_fc` adds the
    1008-way classifier that pytorch-fid's `fid_inception_v3` loads strictly.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_state_dict_shapes().items():
        if name.endswith("conv.weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name.endswith("bn.weight"):
            value = rng.uniform(0.8, 1.2, shape)
        elif name.endswith("bn.bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("running_mean"):
            value = rng.normal(0.0, 0.1, shape)
        else:  # running_var
            value = rng.uniform(0.5, 1.5, shape)
        out[name] = np.asarray(value, np.float32)
    if include_fc:
        out["fc.weight"] = rng.normal(0.0, 0.02, (FC_CLASSES, FEATURE_DIM)).astype(np.float32)
        out["fc.bias"] = np.zeros(FC_CLASSES, np.float32)
    return out


def _ignored(name: str) -> bool:
    return name.startswith(_IGNORED_PREFIXES) or name.endswith(_IGNORED_SUFFIXES)


def _format_problems(kind: str, lines: list[str], limit: int = 5) -> str:
    more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
    return f"{len(lines)} {kind}: " + "; ".join(lines[:limit]) + more


def params_from_state_dict(state_dict: Mapping[str, np.ndarray], source: str = "state_dict") -> dict:
    """The model's parameter pure dict (float32 numpy, kernels HWIO) from a torch-layout state_dict.

    Raises ValueError naming the first few missing, mis-shaped or unexpected keys with the expected
    shapes. The classifier (`fc.*`) and BatchNorm step counters are ignored.
    """
    expected = expected_state_dict_shapes()
    missing = [f"{k} {expected[k]}" for k in expected if k not in state_dict]
    misshaped = [f"{k} is {tuple(np.shape(state_dict[k]))}, expected {expected[k]}"
                 for k in expected if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]]
    unexpected = [k for k in state_dict if k not in expected and not _ignored(k)]
    if missing or misshaped or unexpected:
        problems = [_format_problems(kind, lines) for kind, lines in
                    (("missing keys", missing), ("mis-shaped keys", misshaped), ("unexpected keys", unexpected))
                    if lines]
        raise ValueError(f"{source} is not the FID InceptionV3 state_dict (pytorch-fid's "
                         f"pt_inception-2015-12-05 layout): " + "; ".join(problems))
    flat = {}
    for path in _param_shapes():
        value = np.asarray(state_dict[_torch_name(path)], np.float32)
        flat[path] = value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value
    return nnx.traversals.unflatten_mapping(flat)


def _load_torch_file(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError(f"{path!r} is a PyTorch file and torch is not installed here; convert it to .npz on a "
                          f"machine with torch: {CONVERT_COMMAND}") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path!r} does not hold a state_dict (a mapping of names to tensors)")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The torch-layout state_dict in a `.npz` (any machine) or a `.pth`/`.pt` (needs torch), as numpy arrays."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights file {path!r} not found")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.endswith((".pth", ".pt")):
        return _load_torch_file(path)
    raise ValueError(f"unknown Inception weights format {path!r}: expected a .npz (torch state_dict names and "
                     f"layouts) or a .pth/.pt file")


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Validates the torch weights at `src` and writes them, names and layouts unchanged, to the `.npz` `dst`."""
    state = load_state_dict(src)
    params_from_state_dict(state, source=os.fspath(src))  # Fail here rather than on the machine that loads it.
    state = {k: v for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}
    dst = os.fspath(dst)
    directory = os.path.dirname(os.path.abspath(dst))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:  # A file object, so numpy writes exactly `tmp` (no added suffix).
            np.savez(f, **state)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dst


# -------------------------------------------------------------------------------------------- features

class InceptionFeatures:
    """FID Inception pool3 features: `features(images)` -> numpy float32 [B, 2048].

    The forward pass is jitted with the parameters as an argument (not baked-in constants), so it
    compiles once per input shape. Images are processed in chunks of `batch_size`; when there is
    more than one chunk the last is padded to the full size, so a whole pass compiles once.
    `params` is the pure dict from `params_from_state_dict`; `precision` goes to every convolution
    ("highest": true float32 on accelerators too, see `FIDInceptionV3`).
    """

    feature_dim = FEATURE_DIM

    def __init__(self, params: dict, *, batch_size: int = DEFAULT_BATCH_SIZE, precision="highest"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        graphdef = _graphdef(precision)
        self.graphdef, self.batch_size = graphdef, batch_size
        self.params = jax.device_put(params)  # Once, rather than copying ~95 MB from the host every call.
        self._features = jax.jit(lambda p, x: nnx.merge(graphdef, p).features(x))

    @classmethod
    def from_file(cls, path: str | os.PathLike, **kwargs) -> "InceptionFeatures":
        """From a `.npz` or `.pth` of the FID Inception state_dict (see the module docstring); kwargs as `__init__`."""
        return cls(params_from_state_dict(load_state_dict(path), source=os.fspath(path)), **kwargs)

    @staticmethod
    def _check(images: np.ndarray) -> np.ndarray:
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"Inception expects images [B, H, W, 1 or 3], got shape {images.shape}")
        if images.dtype == np.uint8:
            images = images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
        else:
            images = images.astype(np.float32, copy=False)
            if images.size and not (np.isfinite(images).all() and np.abs(images).max() <= INPUT_LIMIT):
                raise ValueError(f"Inception expects float images in [-1, 1], got values in [{np.nanmin(images)}, "
                                 f"{np.nanmax(images)}] (non-finite: {not np.isfinite(images).all()}); "
                                 f"map [0, 1] with 2x - 1 and [0, 255] with x / 127.5 - 1")
        # Grey -> RGB on the host, so grey and colour inputs of one size share a compiled program.
        return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images

    def features(self, images, batch_size: int | None = None) -> np.ndarray:
        """Images [B, H, W, 1 or 3] (float in [-1, 1], or uint8 in [0, 255]) -> float32 [B, 2048]."""
        images = np.asarray(images)
        batch_size = batch_size or self.batch_size
        n = images.shape[0] if images.ndim else 0
        chunks = []
        for start in range(0, n, batch_size):
            chunk = self._check(images[start:start + batch_size])
            real = chunk.shape[0]
            if n > batch_size and real < batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - real, axis=0)])
            chunks.append(np.asarray(self._features(self.params, chunk))[:real])
        if not chunks:
            self._check(images)
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(chunks)


# ------------------------------------------------------------------------------------------------- FID

def _is_path(reference) -> bool:
    return isinstance(reference, (str, os.PathLike))


def fid_from_features(features: np.ndarray, reference, eps: float = 1e-6) -> float:
    """FID of `features` [N, D] against `reference`: another feature array [M, D], or the path of
    an ADM-style `.npz` with `mu` [D] and `sigma` [D, D]. Name the result with `fid_metric_name`."""
    mu1, sigma1 = feature_statistics(features)
    if _is_path(reference):
        mu2, sigma2 = load_reference_statistics(os.fspath(reference))
    else:
        mu2, sigma2 = feature_statistics(reference)
    return frechet_distance(mu1, sigma1, mu2, sigma2, eps=eps)


def fid_metric_name(reference) -> str:
    """What to call `fid_from_features(features, reference)`, so the name says what it was compared with.

    `"fid_inception"` against reference features computed in the same run (same network, same
    preprocessing); `"fid_inception_adm_ref"` against precomputed statistics from a `.npz` path,
    such as ADM's reference batches, which were made with the TF graph and may be slightly off
    from this port (comparable with published numbers only to that extent).
    """
    return METRIC_ADM_REF if _is_path(reference) else METRIC_IN_RUN


# ------------------------------------------------------------------------------------------------- CLI

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m maskgen.perception.inception",
                                     description="FID InceptionV3 weights: convert pytorch-fid's .pth to .npz.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="IN.pth (torch state_dict, needs torch) -> OUT.npz (same names and layouts)")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst)
    except (ImportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
