r"""Scaling model: parameters, FLOPs, per-chip memory and expected step time on TPU slices.

For MaskGIT at ImageNet 256 (`experiments/maskgit_imagenet256.py`) and MAE ViT-L/16
(`experiments/mae_imagenet.py:size=L`), on TPU v5e-64 and v5p-128, from compiled programs:

- parameters: counted from the abstract train state (`maskgen.train._state_initializer`);
- FLOPs per train step: `jax.jit(train_step).lower(...).compile().cost_analysis()["flops"]` of the
  real update step (`maskgen.train.make_train_step`: loss, backward, clipping, AdamW, EMA) compiled
  for ONE CPU device at small per-device batches, fitted as `intercept + per_example * batch`, and
  scaled to the global and per-chip batch (compiling the global batch would be wasteful);
- memory per chip: params, gradients, AdamW moments and EMA (float32) sharded as the config's
  sharding rules place them on the slice's mesh, plus the activations the backward pass keeps
  (the residuals of `jax.vjp` of the loss, traced abstractly) with and without rematerialisation;
- step time: FLOPs per chip / (peak bf16 FLOP/s x an assumed MFU), and the HBM time to read the
  train state once per step as a lower bound.

Only abstract values (`jax.ShapeDtypeStruct`) are used: nothing of model size is allocated.

  python benchmarks/scaling_model.py                          # print the tables
  python benchmarks/scaling_model.py --write docs/scaling.md  # regenerate the doc (deterministic)
  python benchmarks/scaling_model.py --tiny                   # tiny configs: a fast smoke run
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import math
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

COMMAND = "python benchmarks/scaling_model.py --write docs/scaling.md"
MFUS = (0.4, 0.6)  # assumed model-FLOPs utilisation for the step-time columns
REMATS = ("none", "block", "block_save_dots")
ONE_DEVICE_MESH = "mesh=(('data', 1), ('fsdp', 1), ('tensor', 1))"
GB, GIB = 1e9, 2**30
# Backend (LLVM) optimisation level 0: the HLO cost analysis is the same as at the default level
# (checked on both paper-size steps), and compiles are faster.
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}
# --tiny only (a smoke run that must stay fast): without XLA:CPU's fusion emitters a tiny step
# compiles ~3x faster; FLOP counts move by < 1e-4 relative (measured), irrelevant for a smoke run.
TINY_COMPILE_OPTIONS = {**COMPILE_OPTIONS, "xla_cpu_use_fusion_emitters": False}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    chips: int
    cores_per_chip: int
    peak_bf16: float  # FLOP/s per chip
    hbm_bytes: float  # per chip
    hbm_capacity_text: str  # as the source states it
    hbm_bandwidth: float  # bytes/s per chip
    ici_bandwidth: float  # bidirectional bytes/s per chip
    topology: str
    source: str


# Google Cloud TPU documentation (fetched via the docs index; see "Hardware" in the doc).
V5E_URL = "https://docs.cloud.google.com/tpu/docs/v5e"
V5P_URL = "https://docs.cloud.google.com/tpu/docs/v5p-training"
SLICES = (
    # v5e: "Peak compute per chip (bf16) 197 TFLOPs; HBM2 capacity and bandwidth 16 GB, 819 GBps;
    # bidirectional ICI bandwidth (per chip) 400 GBps"; one TensorCore per chip, so v5e-64
    # (v5litepod-64) is 64 chips.
    Slice("v5e-64", 64, 1, 197e12, 16 * GB, "16 GB", 819e9, 400e9, "8x8", V5E_URL),
    # v5p: "Peak compute per chip (BF16) 459 TFLOPs; HBM capacity per chip 95 GiB; HBM bandwidth per
    # chip 2765 GBps; 2 TensorCores per chip; ICI 1200 GBps per chip". The accelerator type counts
    # TensorCores: v5p-128 is topology 4x4x4 = 128 cores = 64 chips.
    Slice("v5p-128", 64, 2, 459e12, 95 * GIB, "95 GiB", 2765e9, 1200e9, "4x4x4", V5P_URL),
)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (for the `_build` cache)
class Model:
    key: str
    title: str
    spec: str  # config file[:arg], relative to the repo root
    tiny_spec: str
    data_info: dict

    def batch(self, config, b: int):
        import jax
        import jax.numpy as jnp

        if config.recipe == "mae":
            s = config.data.image_size
            return {"image": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32),
                    "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
        return {"tokens": jax.ShapeDtypeStruct((b,) + tuple(config.model.token_shape), jnp.int32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}


SPLITS = {"train": 1_281_167, "validation": 50_000}
MODELS = (
    Model("maskgit", "MaskGIT (ImageNet 256, paper config)", "experiments/maskgit_imagenet256.py",
          "experiments/maskgit_imagenet256.py:size=tiny",
          {"token_shape": (16, 16), "codebook_size": 1024, "num_levels": 1, "num_classes": 1000,
           "splits": SPLITS, "image_shape": None, "tokenizer": {}}),
    Model("mae_l", "MAE ViT-L/16 (224 px, paper config)", "experiments/mae_imagenet.py:size=L",
          "experiments/mae_imagenet.py:size=tiny",
          {"image_shape": (None, None, 3), "num_classes": 1000, "splits": SPLITS}),
)


# --------------------------------------------------------------------------------------------
# Measurements (abstract shapes, compiled programs).
# --------------------------------------------------------------------------------------------
def _cost_flops(stage) -> float:
    """`cost_analysis()["flops"]` of a jax `Compiled` (optimised HLO) or `Lowered` (HLO as emitted)."""
    cost = stage.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost["flops"])


def matmul_convention() -> dict:
    """cost_analysis of a plain [M,K]x[K,N] matmul, in float32 and bfloat16, against 2·M·K·N."""
    import jax
    import jax.numpy as jnp

    m, k, n = 128, 256, 512
    out = {"shape": (m, k, n), "expected": 2 * m * k * n}
    for dtype in (jnp.float32, jnp.bfloat16):
        args = (jax.ShapeDtypeStruct((m, k), dtype), jax.ShapeDtypeStruct((k, n), dtype))
        out[jnp.dtype(dtype).name] = _cost_flops(jax.jit(jnp.dot).lower(*args).compile())
    return out


def _load(spec: str, overrides=()):
    from maskgen.config import apply_overrides, load_config_file

    path, _, arg = spec.partition(":")
    config = load_config_file(os.path.join(REPO, path) + (f":{arg}" if arg else ""))
    apply_overrides(config, [ONE_DEVICE_MESH, *overrides])
    return config


TINY_GLOBAL_BATCH = 128  # the tiny configs' batch (8) does not split over a 64-chip slice


@functools.lru_cache(maxsize=None)
def _build(model: Model, spec: str, remat: str):
    """(config, run, tx, schedule, abstract state, abstract ema) on a one-device mesh (cached)."""
    from maskgen import train

    tiny = spec == model.tiny_spec
    config = _load(spec, [f"remat={remat}"] + ([f"batch_size={TINY_GLOBAL_BATCH}"] if tiny else []))
    run = train.setup(config, model.data_info)
    tx, schedule = train.make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    _, (state, ema), _ = train._state_initializer(run, tx)
    return config, run, tx, schedule, state, ema


def step_flops(model: Model, spec: str, jobs, compiler_options=COMPILE_OPTIONS) -> dict:
    """Compiled FLOPs of the full train step for each (remat, per-device batch) in `jobs`.

    Lowering (Python tracing) runs here; the XLA compilations run two at a time in threads (XLA
    releases the GIL while it compiles). Returns {"flops": {job: flops}, "compile_s": {job: s}}.
    """
    import concurrent.futures

    import jax

    from maskgen import train

    lowered = {}
    for remat in dict.fromkeys(r for r, _ in jobs):
        config, run, tx, schedule, state, ema = _build(model, spec, remat)
        step = train.make_train_step(run, tx, schedule, jax.random.key(1))
        for r, b in jobs:
            if r == remat:
                with run.context():
                    lowered[(r, b)] = jax.jit(step).lower(state, ema, model.batch(config, b))

    def compile_one(job):
        start = time.perf_counter()
        compiled = lowered[job].compile(compiler_options=dict(compiler_options))
        return job, _cost_flops(compiled), time.perf_counter() - start

    flops, seconds = {}, {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for job, count, secs in pool.map(compile_one, jobs):
            flops[job], seconds[job] = count, secs
    return {"flops": flops, "compile_s": seconds, "lowered_flops": {job: _cost_flops(lowered[job]) for job in jobs}}


def residual_bytes(run, state, batch) -> dict:
    """Bytes the backward pass keeps: the residuals of `jax.vjp` of the loss w.r.t. the params.

    Traced with `jax.make_jaxpr` on abstract inputs (nothing runs). Residuals that are the params
    themselves are not counted (they are in memory anyway); everything else is, once.
    """
    import jax
    import jax.numpy as jnp
    from jax.extend import core

    def vjp_residuals(params, model_state, batch):
        def loss(p):
            m = run.merge({"params": p, "model_state": model_state})
            return run.recipe.loss(m, batch, jax.random.key(0), jnp.zeros((), jnp.int32))[0]

        return jax.vjp(loss, params)[1]  # a pytree whose leaves are the residuals

    with run.context():
        closed = jax.make_jaxpr(vjp_residuals)(state["params"], state["model_state"], batch)
    jaxpr = closed.jaxpr
    inputs = set(jaxpr.invars)
    kinds: collections.Counter = collections.Counter()
    total = from_inputs = 0
    for var in {v for v in jaxpr.outvars if not isinstance(v, core.Literal)}:
        nbytes = int(math.prod(var.aval.shape)) * var.aval.dtype.itemsize
        if var in inputs:
            from_inputs += nbytes
            continue
        total += nbytes
        kinds[(var.aval.dtype.name, tuple(var.aval.shape))] += nbytes
    return {"bytes": total, "from_inputs": from_inputs, "kinds": kinds}


def _shard_bytes(leaf, mesh: dict) -> int:
    """Bytes of one device's shard of `leaf` (ceil division, as XLA pads uneven shards)."""
    import numpy as np

    shape = list(leaf.shape)
    spec = tuple(leaf.sharding.spec) if leaf.sharding is not None else ()
    for i, axes in enumerate(spec):
        if axes is None:
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        ways = math.prod(mesh[a] for a in axes)
        shape[i] = -(-shape[i] // ways)
    return int(math.prod(shape)) * np.dtype(leaf.dtype).itemsize


def state_bytes_per_chip(state, ema, mesh: dict) -> dict:
    import jax

    total = lambda tree: sum(_shard_bytes(x, mesh) for x in jax.tree.leaves(tree))  # noqa: E731
    params = total(state["params"])
    return {"params": params, "grads": params, "opt_state": total(state["opt_state"]), "ema": total(ema),
            "model_state": total(state["model_state"]) + total(state["step"])}


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------
def measure(model: Model, tiny: bool, compile_batches=(4, 8, 16), log=print) -> dict:
    import jax

    from maskgen.config import load_config_file, mesh_shape

    spec = model.tiny_spec if tiny else model.spec
    path, _, arg = spec.partition(":")
    original_mesh = load_config_file(os.path.join(REPO, path) + (f":{arg}" if arg else "")).mesh  # as launched
    config, run, tx, schedule, state, ema = _build(model, spec, "none")
    count = lambda tree: sum(int(math.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    params = count(state["params"])
    # Tokens each parameter's matmuls see per example, for a 6·N·T cross-check of the compiled FLOPs.
    if config.recipe == "mae":
        visible, patches = 1 + run.recipe.num_visible, 1 + run.recipe.num_patches
        enc = count(state["params"]["encoder"]) + count(state["params"]["decoder_embed"])
        six_nt = 6 * (enc * visible + (params - enc) * patches)
        six_nt_text = (f"6·(N_enc·{visible} + N_dec·{patches}) with N_enc = {enc / 1e6:.1f} M (encoder and "
                       f"decoder_embed: cls + visible tokens) and N_dec = {(params - enc) / 1e6:.1f} M "
                       "(decoder: cls + all patches)")
    else:
        seq = 1 + math.prod(config.model.token_shape)
        six_nt = 6 * params * seq
        six_nt_text = f"6·N·T with N = {params / 1e6:.1f} M and T = {seq} positions (class prefix + tokens)"
    out = {"title": model.title, "spec": spec, "params": params, "global_batch": config.batch_size,
           "compute_dtype": config.compute_dtype, "total_steps": config.total_steps,
           "config_mesh": tuple((str(n), int(s)) for n, s in original_mesh), "six_nt": six_nt,
           "six_nt_text": six_nt_text}

    # FLOPs: compile the step at three per-device batches without remat, and at one with block
    # remat (the per-step intercept, optimizer and EMA work, does not depend on remat).
    b_lo, b_mid, b_hi = compile_batches
    jobs = [("none", b) for b in compile_batches] + [("block", b_mid)]
    log(f"[{model.key}] compiling the train step: " + ", ".join(f"remat={r} batch={b}" for r, b in jobs) + " ...")
    compiled = step_flops(model, spec, jobs, TINY_COMPILE_OPTIONS if tiny else COMPILE_OPTIONS)
    log(f"[{model.key}] compile seconds (2 in parallel): "
        + ", ".join(f"{r}/b={b}: {compiled['compile_s'][(r, b)]:.1f}" for r, b in jobs))
    f = {b: compiled["flops"][("none", b)] for b in compile_batches}
    g = {b: compiled["lowered_flops"][("none", b)] for b in compile_batches}
    g_slope = (g[b_hi] - g[b_mid]) / (b_hi - b_mid)
    per_example = (f[b_hi] - f[b_mid]) / (b_hi - b_mid)
    intercept = f[b_mid] - per_example * b_mid
    predicted_lo = intercept + per_example * b_lo
    out["flops"] = {"measured": f, "per_example": per_example, "intercept": intercept,
                    "linearity_error": abs(predicted_lo - f[b_lo]) / f[b_lo],
                    "ratio_hi_mid": f[b_hi] / f[b_mid], "lowered": g,
                    "lowered_linearity_error": abs(g[b_mid] - g_slope * (b_mid - b_lo) - g[b_lo]) / g[b_lo],
                    "compile_s": {f"{r}/b={b}": s for (r, b), s in compiled["compile_s"].items()}}
    block = compiled["flops"][("block", b_mid)]
    out["flops_block"] = {"measured": {b_mid: block}, "per_example": (block - intercept) / b_mid}

    # Layouts on each slice: the config's mesh, and FSDP over every chip.
    out["slices"] = {}
    chip_batches = set()
    for sl in SLICES:
        layouts = {"config mesh": mesh_shape(original_mesh, sl.chips),
                   "FSDP over all chips": {"data": 1, "fsdp": sl.chips, "tensor": 1}}
        per_slice = {}
        for name, mesh in layouts.items():
            batch_ways = mesh["data"] * mesh["fsdp"]
            if config.batch_size % batch_ways:
                raise ValueError(f"{model.key}: batch {config.batch_size} does not split over {batch_ways} chips")
            per_slice[name] = {"mesh": mesh, "per_chip_batch": config.batch_size // batch_ways,
                               "state": state_bytes_per_chip(state, ema, mesh),
                               "state_shards": mesh["fsdp"] * mesh["tensor"]}
            chip_batches.add(config.batch_size // batch_ways)
        out["slices"][sl.name] = per_slice

    # Activations: residuals of the backward pass per remat policy, at each per-chip batch and at
    # two reference batches (for the per-example / batch-independent split).
    out["residuals"] = {}
    b_chip = min(chip_batches)
    ref = (b_chip, 2 * b_chip)
    for policy in REMATS:
        _, prun, _, _, pstate, _ = _build(model, spec, policy)
        by_batch = {b: residual_bytes(prun, pstate, model.batch(config, b)) for b in sorted(chip_batches | set(ref))}
        slope = (by_batch[ref[1]]["bytes"] - by_batch[ref[0]]["bytes"]) / (ref[1] - ref[0])
        out["residuals"][policy] = {"by_batch": {b: v["bytes"] for b, v in by_batch.items()},
                                    "per_example": slope, "constant": by_batch[ref[0]]["bytes"] - slope * ref[0],
                                    "from_inputs": by_batch[ref[0]]["from_inputs"],
                                    "kinds": by_batch[b_chip]["kinds"], "kinds_batch": b_chip}
    return out


def derive(m: dict) -> dict:
    """Per (slice, layout): per-chip FLOPs, memory totals and step times."""
    rows = {}
    fl, fb = m["flops"], m["flops_block"]
    for sl in SLICES:
        for layout, lay in m["slices"][sl.name].items():
            b = lay["per_chip_batch"]
            st = lay["state"]
            state_total = st["params"] + st["grads"] + st["opt_state"] + st["ema"] + st["model_state"]
            acts = {p: m["residuals"][p]["by_batch"][b] for p in REMATS}
            # The per-step part (clipping, AdamW, EMA) runs on each chip's shard of the state.
            flops_chip = fl["per_example"] * b + fl["intercept"] / lay["state_shards"]
            flops_chip_block = fb["per_example"] * b + fl["intercept"] / lay["state_shards"]
            read_bytes = st["params"] + st["opt_state"] + st["ema"]
            rows[(sl.name, layout)] = {
                "slice": sl, "layout": layout, "mesh": lay["mesh"], "b": b, "state": st, "state_total": state_total,
                "acts": acts, "total": {p: state_total + a for p, a in acts.items()},
                "flops_chip": flops_chip, "flops_chip_block": flops_chip_block,
                "t": {mfu: flops_chip / (sl.peak_bf16 * mfu) for mfu in MFUS},
                "t_block": {mfu: flops_chip_block / (sl.peak_bf16 * mfu) for mfu in MFUS},
                "hbm_floor": read_bytes / sl.hbm_bandwidth, "read_bytes": read_bytes,
            }
    return rows


# --------------------------------------------------------------------------------------------
# Formatting.
# --------------------------------------------------------------------------------------------
def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


def _mib(x: float) -> str:
    return f"{x / 2**20:.1f} MiB"


def _flops(x: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.3f} {unit}"
    return f"{x:.0f} FLOP"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min"


def _mesh(mesh: dict) -> str:
    return "×".join(f"{k}={v}" for k, v in mesh.items())


def _machine() -> str:
    from benchmarks.common import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.machine()}"


def _versions() -> str:
    import flax
    import jax
    import jaxlib

    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}, Python {platform.python_version()}"


def render(results: dict) -> str:
    mm, models = results["matmul"], results["models"]
    tiny = results["tiny"]
    b_lo, b_mid, b_hi = results["compile_batches"]
    lines: list[str] = []
    w = lines.append
    w("# Scaling model: MaskGIT and MAE ViT-L on TPU v5e-64 and v5p-128" + (" (TINY smoke run)" if tiny else ""))
    w("")
    w(f"Generated by `{COMMAND}{' --tiny' if tiny else ''}` (do not edit by hand; rerun the command, "
      "which rewrites this file byte for byte). Everything below comes from programs compiled or traced "
      f"on a CPU; nothing ran on a TPU. Machine: {_machine()}. {_versions()}.")
    w("")
    w("Parameters, FLOPs and activation bytes are measured from the repo's own train step; peak FLOP/s, "
      "HBM capacity and bandwidth are Google's published numbers; step times are a model (FLOPs / "
      "(peak × assumed MFU)), not a measurement. Communication is not in the step times (see the notes).")
    w("")

    # ---- Summary.
    w("## Summary")
    w("")
    w("Layout: each config's own `config.mesh` on the slice (what `maskgen train` would run). "
      "Memory per chip = params + gradients + AdamW moments + EMA (all float32) + the activations the "
      "backward pass keeps at the per-chip batch.")
    w("")
    lo, hi = (int(mfu * 100) for mfu in MFUS)
    w("| model | slice (chips) | mesh | params | FLOPs/step (global) | per-chip batch | memory/chip, no remat | "
      f"memory/chip, remat=block | HBM/chip | step @ {lo}% MFU | step @ {hi}% MFU | HBM floor | "
      f"paper schedule @ {lo}% |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, m in models.items():
        for sl in SLICES:
            d = results["derived"][key][(sl.name, "config mesh")]
            glob = m["flops"]["per_example"] * m["global_batch"] + m["flops"]["intercept"]
            fits = lambda total: (f"{total / sl.hbm_bytes * 100:.0f}% of HBM" if total <= sl.hbm_bytes  # noqa: E731
                                  else f"**{total / sl.hbm_bytes * 100:.0f}% of HBM: does not fit**")
            w(f"| {m['title']} | {sl.name} ({sl.chips}) | {_mesh(d['mesh'])} | {m['params'] / 1e6:.2f} M | "
              f"{_flops(glob)} | {d['b']} | {_gib(d['total']['none'])} ({fits(d['total']['none'])}) | "
              f"{_gib(d['total']['block'])} ({fits(d['total']['block'])}) | {sl.hbm_capacity_text} | "
              f"{_ms(d['t'][MFUS[0]])} | {_ms(d['t'][MFUS[1]])} | {_ms(d['hbm_floor'])} | "
              f"{_duration(m['total_steps'] * max(d['t'][MFUS[0]], d['hbm_floor']))} |")
    w("")
    w("\"paper schedule\" is `config.total_steps` ("
      + "; ".join(f"{m['title'].split(' (')[0]}: {m['total_steps']:,} steps of batch {m['global_batch']}"
                  for m in models.values())
      + f") × the {lo}%-MFU step time (or the HBM floor if larger): compute only, no input pipeline, "
      "communication, evaluation or checkpointing.")
    w("")

    # ---- Hardware.
    w("## Hardware (cited)")
    w("")
    w("| slice | chips | TensorCores/chip | topology | peak bf16 / chip | HBM / chip | HBM bandwidth / chip | "
      "ICI (bidirectional) / chip | source |")
    w("|---|---|---|---|---|---|---|---|---|")
    for sl in SLICES:
        w(f"| {sl.name} | {sl.chips} | {sl.cores_per_chip} | {sl.topology} | {sl.peak_bf16 / 1e12:.0f} TFLOP/s | "
          f"{sl.hbm_capacity_text} | {sl.hbm_bandwidth / 1e9:.0f} GB/s | {sl.ici_bandwidth / 1e9:.0f} GB/s | "
          f"<{sl.source}> |")
    w("")
    w("- v5e (<" + V5E_URL + ">, \"Key chip specifications\"): 197 TFLOPs bf16 per chip; \"HBM2 capacity "
      "and bandwidth: 16 GB, 819 GBps\"; 400 GBps bidirectional ICI per chip; \"each v5e chip contains "
      "one TensorCore\", so the count in v5e-64 (`v5litepod-64`, an 8x8 slice) is 64 chips. Another "
      "revision of the same page lists \"HBM bandwidth per chip: 800 GiBps\" (≈ 859 GB/s); the model "
      "uses the lower 819 GB/s, and takes the capacity as 16 GB = 16·10⁹ bytes (14.9 GiB), the "
      "conservative reading.")
    w("- v5p (<" + V5P_URL + ">, \"Specification / Values\"): 459 TFLOPs bf16 per chip, \"HBM capacity per "
      "chip (GiB): 95\", \"HBM bandwidth per chip (GBps): 2765\", 2 TensorCores per chip, 1200 GBps ICI per "
      "chip. **The v5p accelerator type counts TensorCores, not chips**: the page's topology table lists "
      "`4x4x4 | 128 cores | 64 chips | 16 hosts`, so v5p-128 has 64 chips, the same chip count as v5e-64 "
      "(a 128-chip v5p slice is v5p-256, 4x4x8). Per-chip batch, memory and FLOPs are therefore identical "
      "on the two slices; only peak, HBM and bandwidth differ.")
    w("")

    # ---- Method.
    w("## How each number is obtained")
    w("")
    w(f"**Configs.** `{MODELS[0].spec if not tiny else MODELS[0].tiny_spec}` and "
      f"`{MODELS[1].spec if not tiny else MODELS[1].tiny_spec}`, loaded with `maskgen.config.load_config_file`; "
      "the only override for measuring is a one-device mesh (and `remat=` where stated). Dataset shapes "
      "are passed to `maskgen.train.setup(config, data_info)` (no dataset is read). Compute dtype: "
      + ", ".join(f"{m['title'].split(' (')[0]} `{m['compute_dtype']}`" for m in models.values())
      + "; params, gradients, AdamW moments and EMA are float32.")
    w("")
    w("**Parameters**: the sum of the sizes of `state[\"params\"]` in the abstract train state from "
      "`maskgen.train._state_initializer(run, tx)` (`jax.eval_shape`; nothing allocated).")
    w("")
    w("**FLOPs per step.** The real update, `maskgen.train.make_train_step(run, tx, schedule, key)` "
      "(loss, backward, gradient clipping where configured, AdamW, EMA), is lowered with "
      "`jax.ShapeDtypeStruct` arguments and compiled by XLA:CPU for one device; "
      "`compiled.cost_analysis()[\"flops\"]` is read. It is compiled at per-device batches "
      f"{b_lo}, {b_mid} and {b_hi} (remat=none) and fitted as `flops(b) = intercept + per_example·b` "
      f"from {b_mid} and {b_hi}; the fit's prediction at {b_lo} is compared with the compiled value "
      "(the linearity check below; the un-optimised HLO count, `lowered.cost_analysis()`, is shown "
      "next to it). Compiling the global batch (256 or 4096 examples) for one device "
      "would only multiply the same per-example program and cost compile time and memory, so the "
      "global number is `per_example·B + intercept` and the per-chip number is "
      "`per_example·(B/batch-parallel chips) + intercept/(state shards)` (the intercept, the "
      "per-step optimizer and EMA work, runs on each chip's shard of the state: replicated under pure "
      "data parallelism, 1/fsdp of it under FSDP). With remat=block the step is compiled once more at "
      f"batch {b_mid}; its per-example count is `(flops − intercept)/{b_mid}` (remat does not change the "
      f"optimizer). Compilation uses `compiler_options={json.dumps(results['compiler_options'])}` "
      + ("(LLVM optimisation only; the HLO cost analysis is identical, checked, and compiles are faster)"
         if results["compiler_options"] == COMPILE_OPTIONS else "(the fast smoke-run settings)")
      + "; compile times are printed by the command, not written here, because they vary between runs.")
    w("")
    f32, bf16, exp = mm["float32"], mm["bfloat16"], mm["expected"]
    mk, kk, nk = mm["shape"]
    w(f"*FLOP convention, checked*: a [{mk},{kk}]×[{kk},{nk}] float32 matmul compiles to "
      f"{f32:.0f} FLOPs = {f32 / (mk * kk * nk):.3f}·M·K·N (expected 2·M·K·N = {exp}), i.e. XLA's cost "
      f"analysis counts a multiply-add as 2 FLOPs, the convention MFU uses. The same matmul in bfloat16 "
      f"reports {bf16:.0f} (+{bf16 - exp:.0f} = one FLOP per element of the two inputs and the output: "
      f"XLA:CPU converts bf16 operands to f32 around the dot and counts the converts). So the bf16 "
      "step counts are slightly above pure model FLOPs (elementwise work is counted too); "
      "the 6·N·T cross-check below bounds how much.")
    w("")
    w("**Memory per chip.** State bytes per chip are exact shape arithmetic: every leaf of the abstract "
      "train state carries its `NamedSharding` from the config's `sharding_rules` (`embed`→`fsdp`, "
      "`heads`/`mlp`/`vocab`→`tensor`, ...); a leaf's shard is its shape with each dimension divided "
      "(rounded up) by the product of the mesh axes it is split over, on the slice's mesh. Gradients "
      "are counted once at the size of the params (float32, same sharding): they are live between the "
      "backward pass and the update. Activations are the bytes the backward pass keeps: "
      "`jax.make_jaxpr` of `jax.vjp(loss, params)[1]` (abstract inputs, nothing runs), summing the "
      "residual leaves of the VJP closure once each, excluding residuals that are the float32 params "
      "themselves; traced at exactly the per-chip batch, with `config.remat` = none / block / "
      "block_save_dots. `compiled.memory_analysis()` of XLA:CPU is NOT used: CPU buffer assignment "
      "does not show rematerialisation savings (plain `jax.checkpoint` even increases CPU temp bytes). "
      "Not modelled: XLA temporaries and fragmentation, all-gathered weight buffers under FSDP, input "
      "pipeline buffers; real peaks are higher, so treat \"fits\" with margin in mind.")
    w("")
    w(f"**Step time** = FLOPs per chip / (peak bf16 FLOP/s per chip × MFU), for an assumed MFU of "
      f"{int(MFUS[0]*100)}% and {int(MFUS[1]*100)}%. FLOPs are the compiled counts (with remat=none, "
      "i.e. model FLOPs plus elementwise work). The **HBM floor** is the time to read the params, "
      "AdamW moments and EMA held by one chip once per step at the cited HBM bandwidth (the update "
      "also writes them, so the real memory traffic is at least twice that): no step can be faster.")
    w("")

    # ---- Per model detail.
    for key, m in models.items():
        fl, fb = m["flops"], m["flops_block"]
        w(f"## {m['title']}")
        w("")
        w(f"`{m['spec']}`: {m['params']:,} parameters ({_mib(m['params'] * 4)} in float32), global batch "
          f"{m['global_batch']}, `config.mesh` = `{m['config_mesh']}`, {m['total_steps']:,} steps.")
        w("")
        w("Compiled FLOPs of one train step on one device:")
        w("")
        w("| per-device batch | remat=none | remat=block | remat=none, HLO before optimisation |")
        w("|---|---|---|---|")
        for b in sorted(fl["measured"]):
            blk = fb["measured"].get(b)
            w(f"| {b} | {fl['measured'][b]:.6g} | {'' if blk is None else f'{blk:.6g}'} | {fl['lowered'][b]:.6g} |")
        w("")
        w(f"- per example: {_flops(fl['per_example'])} (remat=none), {_flops(fb['per_example'])} with "
          f"remat=block (+{(fb['per_example'] / fl['per_example'] - 1) * 100:.1f}%: the recomputed forward "
          "pass)")
        w(f"- per step, independent of batch (clipping, AdamW, EMA, schedule): {_flops(fl['intercept'])} "
          f"= {fl['intercept'] / m['params']:.1f} FLOPs per parameter")
        w(f"- linearity: flops({b_hi}) / flops({b_mid}) = {fl['ratio_hi_mid']:.5f}; the line through "
          f"{b_mid} and {b_hi} predicts the compiled flops({b_lo}) within {fl['linearity_error']:.2e} "
          f"(relative). The same step's HLO before optimisation (`lowered.cost_analysis()`) is linear "
          f"within {fl['lowered_linearity_error']:.1e}"
          + ("; the larger compiled deviation comes from XLA's optimisation passes making batch-size "
             "dependent choices (the fused programs differ in op count between batch sizes, e.g. where "
             "fusion duplicates cheap elementwise producers, and duplicates are counted)"
             if fl["linearity_error"] > max(1e-4, 2 * fl["lowered_linearity_error"]) else ""))
        w(f"- cross-check: {m['six_nt_text']} gives {_flops(m['six_nt'])} per example; compiled / that = "
          f"{fl['per_example'] / m['six_nt']:.3f} (attention scores and values, softmax, norms, the loss and "
          "bf16 converts are the rest)")
        w(f"- global step (batch {m['global_batch']}): {_flops(fl['per_example'] * m['global_batch'] + fl['intercept'])}")
        w("")
        w("Activations kept for the backward pass (residual bytes of `jax.vjp` of the loss):")
        w("")
        w("| remat | per example | batch-independent | " + " | ".join(f"at batch {b}" for b in sorted(
            {d['b'] for (s, l), d in results['derived'][key].items()})) + " |")
        w("|---|---|---|" + "---|" * len({d['b'] for d in results['derived'][key].values()}))
        for policy in REMATS:
            res = m["residuals"][policy]
            cells = " | ".join(_gib(res["by_batch"][b]) for b in sorted({d['b'] for d in results['derived'][key].values()}))
            w(f"| {policy} | {_mib(res['per_example'])} | {_mib(res['constant'])} | {cells} |")
        w("")
        res = m["residuals"]["none"]
        top = sorted(res["kinds"].items(), key=lambda kv: (-kv[1], str(kv[0])))[:6]
        total = sum(res["kinds"].values())
        w(f"Largest residuals with remat=none at batch {res['kinds_batch']} (dtype, shape: share of "
          f"{_gib(total)}): " + "; ".join(f"`{dt}{list(shape)}` {n / total * 100:.0f}%" for (dt, shape), n in top)
          + ". The batch-independent part with remat=none is the bfloat16 copies of the weights that the "
          "backward pass reuses (2 bytes per parameter); with remat they are recast, not kept. Under "
          "remat, residuals that are the float32 params themselves "
          f"({_mib(m['residuals']['block']['from_inputs'])}) are not counted: they are the params.")
        w("")
        w("Memory per chip:")
        w("")
        w("| slice | layout | mesh | per-chip batch | params | grads | AdamW μ+ν | EMA | acts none | acts block | "
          "acts block_save_dots | total none | total block | HBM |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for (sname, layout), d in results["derived"][key].items():
            st, sl = d["state"], d["slice"]
            mark = lambda t: _gib(t) if t <= sl.hbm_bytes else f"**{_gib(t)}**"  # noqa: E731
            w(f"| {sname} | {layout} | {_mesh(d['mesh'])} | {d['b']} | {_gib(st['params'])} | {_gib(st['grads'])} | "
              f"{_gib(st['opt_state'])} | {_gib(st['ema'])} | {_gib(d['acts']['none'])} | {_gib(d['acts']['block'])} | "
              f"{_gib(d['acts']['block_save_dots'])} | {mark(d['total']['none'])} | {mark(d['total']['block'])} | "
              f"{sl.hbm_capacity_text} |")
        w("")
        w("Step time per chip:")
        w("")
        w(f"| slice | layout | FLOPs/chip | @ {int(MFUS[0]*100)}% | @ {int(MFUS[1]*100)}% | FLOPs/chip, remat=block | "
          f"@ {int(MFUS[0]*100)}%, remat=block | state read/chip | HBM floor | examples/s/slice @ {int(MFUS[0]*100)}% |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for (sname, layout), d in results["derived"][key].items():
            w(f"| {sname} | {layout} | {_flops(d['flops_chip'])} | {_ms(d['t'][MFUS[0]])} | {_ms(d['t'][MFUS[1]])} | "
              f"{_flops(d['flops_chip_block'])} | {_ms(d['t_block'][MFUS[0]])} | {_gib(d['read_bytes'])} | "
              f"{_ms(d['hbm_floor'])} | {m['global_batch'] / max(d['t'][MFUS[0]], d['hbm_floor']):,.0f} |")
        w("")

    # ---- Notes.
    w("## Notes and caveats")
    w("")
    mg = models.get("maskgit")
    if mg is not None:
        grad_bytes = results["derived"]["maskgit"][(SLICES[0].name, "config mesh")]["state"]["grads"]
        floors = []
        for sl in SLICES:
            d = results["derived"]["maskgit"][(sl.name, "config mesh")]
            # A ring all-reduce sends ~2x the gradient bytes out of every chip; egress is half of
            # the bidirectional per-chip ICI figure.
            floors.append(f"{sl.name}: ≥ {_ms(2 * grad_bytes / (sl.ici_bandwidth / 2))} against "
                          f"{_ms(d['t'][MFUS[0]])} of compute at {int(MFUS[0] * 100)}% MFU")
        w(f"- **Communication is not modelled, and it matters for MaskGIT.** Its config is pure data "
          f"parallel, so every step all-reduces {_mib(grad_bytes)} of float32 gradients. A ring all-reduce "
          "sends about twice that out of every chip; with egress at half the cited bidirectional ICI "
          "bandwidth per chip (all links busy, no contention) that takes "
          + "; ".join(floors) + f" (per-chip batch {results['derived']['maskgit'][(SLICES[0].name, 'config mesh')]['b']}). "
          "Unless XLA overlaps it with the backward pass it adds directly to the step; FSDP replaces "
          "it with reduce-scatters and all-gathers of the same order. The small per-chip batch "
          "(256 over 64 chips) also makes 40–60% MFU optimistic for a 768-wide model. (The ICI figures "
          "are the newer revisions of the cited pages; older revisions list \"1600 Gbps\" for v5e and "
          "\"4800 Gbps\" for v5p interchip bandwidth, i.e. 200 and 600 GB/s, which would double these floors.)")
    w("- MAE's config shards params, gradients, moments and EMA 8-way (`fsdp=8`) and is data parallel "
      "over the remaining 8 groups; its per-chip batch (4096/64 = 64 images) is large, so compute "
      "dominates and the per-step optimizer work is negligible.")
    shares = []
    for key, m in models.items():
        kinds = m["residuals"]["none"]["kinds"]
        attn = sum(n for (_, shape), n in kinds.items() if len(shape) == 4 and shape[-1] == shape[-2])
        wide = sum(n for (dt, shape), n in kinds.items() if dt == "float32" and len(shape) == 3)
        shares.append(f"{m['title'].split(' (')[0]}: attention probabilities (float32 and bfloat16 "
                      f"[B, heads, T, T]) {attn / sum(kinds.values()) * 100:.0f}%, float32 [B, T, ·] "
                      f"tensors {wide / sum(kinds.values()) * 100:.0f}%")
    w("- Activations are those of the loss as the repo computes it; with remat=none, "
      + "; ".join(shares) + " of the residual bytes. The float32 ones are LayerNorm's intermediates "
      "(`maskgen/models/layers.py` normalises in float32; traced to their source equations) and the "
      "loss's. An attention kernel that does not materialise the probabilities (flash attention) "
      "would remove the first group; normalising in bfloat16, or recomputing the norms in the "
      "backward pass, would shrink the second.")
    mae = models.get("mae_l")
    if mae is not None:
        d = results["derived"]["mae_l"][(SLICES[0].name, "config mesh")]
        sl = d["slice"]
        w(f"- MAE ViT-L on {sl.name} without remat needs {_gib(d['total']['none'])} per chip before XLA "
          f"temporaries, {d['total']['none'] / sl.hbm_bytes * 100:.0f}% of the {sl.hbm_capacity_text} "
          f"(= {_gib(sl.hbm_bytes)}): tight. remat=block brings it to {_gib(d['total']['block'])} for "
          f"+{(mae['flops_block']['per_example'] / mae['flops']['per_example'] - 1) * 100:.0f}% FLOPs; "
          f"block_save_dots ({_gib(d['acts']['block_save_dots'])} of activations) recomputes only the "
          "non-matmul work, a smaller cost not measured here.")
    w("- The FLOPs include the optimizer and EMA (the intercept) and elementwise work; MFU "
      "conventions that count matmul FLOPs only would report a slightly lower utilisation for the same "
      "step time.")
    w("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", default=None, help="write the markdown to PATH")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (`:size=tiny`): a fast smoke run")
    parser.add_argument("--quiet", action="store_true", help="do not print the tables")
    args = parser.parse_args(argv)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax

    if jax.devices()[0].platform != "cpu":
        print("# note: FLOPs are meant to be compiled by XLA:CPU; this backend is "
              f"{jax.devices()[0].platform}", file=sys.stderr)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()
    compile_batches = (4, 8, 16)
    results = {"tiny": args.tiny, "compile_batches": compile_batches, "matmul": matmul_convention(),
               "compiler_options": TINY_COMPILE_OPTIONS if args.tiny else COMPILE_OPTIONS,
               "models": {}, "derived": {}}
    for model in MODELS:
        m = measure(model, args.tiny, compile_batches, log=log)
        results["models"][model.key] = m
        results["derived"][model.key] = derive(m)
    results["seconds"] = time.perf_counter() - start
    log(f"total {results['seconds']:.1f}s")
    text = render(results)
    results["markdown"] = text
    if args.write:
        path = args.write if os.path.isabs(args.write) else os.path.join(os.getcwd(), args.write)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        log(f"wrote {args.write}")
    if not args.quiet:
        print(text)
    return results


if __name__ == "__main__":
    main()
