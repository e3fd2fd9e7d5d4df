"""`maskgen inspect` (this module: placement): where every parameter of a config's model lives on the mesh.

For each parameter it prints the shape, the logical axis names the model gave it, the mesh axes
the config's `sharding_rules` map them to (its PartitionSpec), and the bytes each device holds,
then totals for parameters and AdamW state (two float32 moments per parameter) per device. It
builds the model abstractly (`nnx.eval_shape`): nothing is allocated, so paper-size configs can
be inspected on a laptop with virtual devices:

  maskgen inspect --config experiments/maskgit_imagenet256.py --devices 8 --config.mesh='(("data",2),("fsdp",2),("tensor",2))'
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from flax import nnx

log = logging.getLogger("maskgen")


def _assumed_data_info(config) -> dict:
    """Shapes for a config whose dataset is not on this machine (only the model is built)."""
    model = config.model
    info = {"image_shape": (None, None, 3), "num_classes": int(config.get("num_classes", 1000)), "splits": {},
            "tokenizer": {}, "num_levels": 1}
    if "token_shape" in model:  # a token model's data is its token grid (or text), not images
        vocab = int(model.get("codebook_size", model.get("vocab_size")))
        if "seq_len" in config.data:  # text: its fields say so (the data checks read them)
            from maskgen.data.specs import TextSpec, legacy_info

            return legacy_info({"tokens": TextSpec(int(config.data.seq_len), vocab, "bytes")}, {})
        info.update(image_shape=None, token_shape=tuple(model.token_shape), codebook_size=vocab)
        if model.get("conditioning", "adaln") == "none":
            info["num_classes"] = 0
    return info


def parameter_table(config) -> tuple[list[dict], dict]:
    """Rows {path, shape, logical, spec, bytes_per_device} and the mesh shape, for `config`'s model."""
    from maskgen import train as train_lib
    from maskgen.data import data_options, source_info

    try:
        data_info = source_info(config.data.name, config.data.data_dir or None, data_options(config.data))
    except (FileNotFoundError, ValueError, ImportError) as err:
        data_info = _assumed_data_info(config)
        log.info("dataset not available (%s); assuming %s", err, data_info)
    run = train_lib.setup(config, data_info)
    with run.context():
        abstract = nnx.eval_shape(lambda: run.recipe.make_model(nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    shardings = run.param_shardings
    rows = []
    flat_params = jax.tree.leaves_with_path(nnx.to_pure_dict(params))
    flat_shardings = jax.tree.leaves(shardings)
    flat_vars = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    for (path, leaf), sharding, var in zip(flat_params, flat_shardings, flat_vars):
        shard_shape = sharding.shard_shape(leaf.shape)
        logical = getattr(var, "sharding_names", None) or getattr(var, "sharding", None) or ()
        rows.append({
            "path": jax.tree_util.keystr(path, simple=True, separator="/"),
            "shape": tuple(leaf.shape), "logical": tuple(logical), "spec": tuple(sharding.spec),
            "bytes_per_device": int(np.prod(shard_shape)) * np.dtype(leaf.dtype).itemsize,
            "bytes": int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize,
        })
    return rows, dict(run.mesh.shape)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def format_table(rows: list[dict], mesh: dict) -> str:
    def spec_text(spec):
        return "(" + ", ".join("None" if s is None else "+".join(s) if isinstance(s, tuple) else s
                               for s in spec) + ")" if spec else "()"

    lines = [f"mesh {mesh} ({math.prod(mesh.values())} devices)", "",
             f"{'parameter':<52s} {'shape':<20s} {'logical axes':<34s} {'mesh axes':<26s} {'per device':>10s}"]
    for r in rows:
        logical = "(" + ", ".join(str(a) for a in r["logical"]) + ")"
        lines.append(f"{r['path']:<52s} {str(r['shape']):<20s} {logical:<34s} {spec_text(r['spec']):<26s} "
                     f"{_fmt_bytes(r['bytes_per_device']):>10s}")
    total = sum(r["bytes"] for r in rows)
    per_device = sum(r["bytes_per_device"] for r in rows)
    count = sum(int(np.prod(r["shape"])) for r in rows)
    lines += ["", f"{count:,} parameters, {_fmt_bytes(total)} in float32",
              f"per device: params {_fmt_bytes(per_device)}, + AdamW moments {_fmt_bytes(2 * per_device)}, "
              f"+ EMA {_fmt_bytes(per_device)} = {_fmt_bytes(4 * per_device)}"]
    return "\n".join(lines)
