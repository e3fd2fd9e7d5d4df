r"""B2: MaskGIT parallel decoding (8 steps) vs a KV-cached autoregressive decoder on the same backbone.

MaskGIT (Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv 2202.04200, Sec. 1
and Sec. 4.2 / Fig. 4) reports that decoding a 16x16 token grid in 8 parallel steps is up to 64x
faster than raster-order autoregressive decoding on accelerators. This tests that claim with
maskgen's own code paths on one backbone shape: `MaskGITRecipe.generate` (`iterative_decode`,
8 steps, cosine schedule, choice temperature 4.5) against `AutoregressiveRecipe.generate`
(`autoregressive_decode`, KV cache), both on a `TokenTransformer` of the same shape (causal=True
for the AR one; random weights, since only speed is measured; both outputs are checked to be
complete grids of valid codebook ids). Classifier-free guidance is off in both (cfg_scale=1.0,
which both decoders treat as "no unconditional pass"), so MaskGIT runs 8 network evaluations
and AR runs N = 256.

What each decoder costs:
  * MaskGIT: 8 evaluations, each a full bidirectional forward over all N tokens (plus sampling
    over [B, N, V] logits and a sort), so many times MORE FLOPs than AR.
  * AR with a KV cache: N evaluations of one token each against the cache: few FLOPs per step,
    but every step reads all the weights (and the cache) again.
Which wins depends on whether the hardware is bound by compute or by memory traffic.

Method:
  * Wall clock: each whole decode is one jitted function, compiled ahead of time (compile time
    reported apart), timed with `block_until_ready`, both contenders alternated round by round;
    medians. Batches 1 and 32.
  * FLOPs / bytes: XLA's `cost_analysis()` counts a while/scan loop body ONCE, not times its trip
    count (checked below in every run: the whole 8-step or 256-step decode reports about the cost
    of a single step). So totals are per-step cost x steps, where "one step" is compiled on its
    own: a 1-step `iterative_decode` (forward at [B, N] + sampling + re-masking) for MaskGIT, and
    the AR loop body (`decode_step` at [B, 1] on a full-length cache + sampling) for AR. The
    network-only share (forward / decode_step alone) is reported too. These are XLA:CPU's counts
    for float32; "bytes" is XLA's "bytes accessed" (operands + outputs of every fused op).
  * Roofline: this CPU's peak is measured in the same run (a large jitted f32 matmul, and a large
    jitted elementwise op for memory bandwidth, bytes read + written / time). Per step,
    time ~= max(FLOPs / peak, bytes / bandwidth); a decode is steps x that. On this CPU a measured
    per-step floor (a width-16 model of the same depth, decoded the same way) is also shown added
    on. For the accelerators no per-step overhead (kernel launch, host sync) is included: none is
    measured here. Accelerator bytes assume bfloat16 storage (XLA:CPU float32 bytes / 2; XLA:CPU
    itself upcasts bf16, so compiling in bf16 here does not give bf16 traffic).
  * Paper scale: the backbone of `experiments/maskgit_imagenet256.py` (24 layers, width 768, 16
    heads, 16x16 tokens, 1024 codes, class prefix token) is compiled from abstract shapes only
    (nothing runs) to get its per-step costs for the projection.

    python -m benchmarks.maskgit_vs_autoregressive                 # width 256, depth 4, 16x16, batch 1 and 32
    python -m benchmarks.maskgit_vs_autoregressive --size smoke    # tiny model, 4x4 tokens, batch 1 and 2
    python -m benchmarks.maskgit_vs_autoregressive --no-paper      # skip the paper-scale compile
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.recipes.maskgit import AutoregressiveRecipe, MaskGITRecipe
from maskgen.sampling.categorical import sample_categorical

NUM_STEPS = 8  # MaskGIT's decoding steps (paper default)

# Peak numbers from the vendors' datasheets (dense, no sparsity):
#   Google Cloud TPU v5e: 197 TFLOP/s bf16, 819 GB/s HBM (cloud.google.com/tpu/docs/v5e).
#   NVIDIA H100 SXM5: 989 TFLOP/s dense bf16 (1979 with 2:4 sparsity), 3.35 TB/s HBM3
#   (NVIDIA H100 Tensor Core GPU datasheet).
ACCELERATORS = {"TPU v5e": (197e12, 819e9), "H100 SXM": (989e12, 3.35e12)}
ACCEL_BYTES_SCALE = 0.5  # bf16 storage on the accelerators vs XLA:CPU's float32 byte counts

BACKBONES = {
    # name: TokenTransformer shape (the recipes' constructor arguments)
    "smoke": dict(token_shape=(4, 4), codebook_size=64, num_classes=10, width=32, depth=1, num_heads=2),
    "default": dict(token_shape=(16, 16), codebook_size=1024, num_classes=1000, width=256, depth=4, num_heads=4),
    # experiments/maskgit_imagenet256.py (size=full): compiled from abstract shapes, never run.
    "paper": dict(token_shape=(16, 16), codebook_size=1024, num_classes=1000, width=768, depth=24, num_heads=16),
}
SHARED = dict(mlp_ratio=4.0, conditioning="prefix", positions="learned", qk_norm=False, tie_head=True,
              label_smoothing=0.0, class_dropout=0.0)


@dataclasses.dataclass
class Decoders:
    """Both recipes on one backbone shape, their params, and the jittable functions to compile."""

    mg: MaskGITRecipe
    ar: AutoregressiveRecipe
    mg_graph: object
    ar_graph: object
    mg_params: dict
    ar_params: dict

    # ---- whole decodes (what is timed)
    def maskgit_decode(self, num_steps=NUM_STEPS):
        def decode(params, labels, rng):
            model = nnx.merge(self.mg_graph, params)
            return self.mg.generate(model, {"label": labels}, rng, num_steps=num_steps, schedule="cosine",
                                    choice_temperature=4.5, temperature=1.0, cfg_scale=1.0)["tokens"]
        return decode

    def ar_decode(self):
        def decode(params, labels, rng):
            return self.ar.generate(nnx.merge(self.ar_graph, params), {"label": labels}, rng,
                                    temperature=1.0, cfg_scale=1.0)["tokens"]
        return decode

    # ---- one step of each loop, compiled alone (for the costs)
    def ar_step(self):
        """The body of `autoregressive_decode`'s cached loop (cfg_scale=1): decode_step + sample."""
        def step(params, cache, prev, index, labels, rng, tokens):
            logits, cache = nnx.merge(self.ar_graph, params).decode_step(cache, prev, index, labels)
            new = sample_categorical(jax.random.fold_in(rng, index), logits, 1.0, "float64")
            return cache, new, tokens.at[:, index].set(new)
        return step

    def forward(self):
        return lambda params, tokens, labels: nnx.merge(self.mg_graph, params)(tokens, labels)

    def decode_step(self):
        return lambda params, cache, prev, index, labels: nnx.merge(self.ar_graph, params).decode_step(
            cache, prev, index, labels)

    def cache(self, batch):
        return jax.eval_shape(lambda p: nnx.merge(self.ar_graph, p).init_cache(batch), self.ar_params)


def build(shape: dict, mesh, *, abstract: bool) -> Decoders:
    kwargs = {**shape, **SHARED}
    mg, ar = MaskGITRecipe(**kwargs), AutoregressiveRecipe(**kwargs)
    out = []
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        for recipe in (mg, ar):
            if abstract:
                graph, state = nnx.split(nnx.eval_shape(lambda r=recipe: r.make_model(nnx.Rngs(0))))
                params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), nnx.to_pure_dict(state))
            else:
                graph, state = nnx.split(recipe.make_model(nnx.Rngs(0)))
                params = nnx.to_pure_dict(state)
            out += [graph, params]
    return Decoders(mg, ar, out[0], out[2], out[1], out[3])


def _spec(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


def step_costs(d: Decoders, batch: int, *, network_only: bool = True) -> dict:
    """Per-step FLOPs/bytes (cost_analysis) of one MaskGIT step and one AR step (+ network-only shares)."""
    n = d.mg.num_tokens
    labels, rng = _spec((batch,), jnp.int32), jax.random.key(0)
    cache = d.cache(batch)
    i32 = _spec((), jnp.int32)
    costs = {
        "mg_step": common.compile_fn(d.maskgit_decode(num_steps=1), d.mg_params, labels, rng),
        # The cache is loop-carried (updated in place) in the real loop, so it is donated here;
        # without donation XLA counts a full copy of the cache per step.
        "ar_step": common.compile_fn(jax.jit(d.ar_step(), donate_argnums=1), d.ar_params, cache, _spec((batch,), jnp.int32), i32, labels, rng,
                                     _spec((batch, n), jnp.int32)),
    }
    if network_only:
        costs["mg_net"] = common.compile_fn(d.forward(), d.mg_params, _spec((batch, n), jnp.int32), labels)
        costs["ar_net"] = common.compile_fn(jax.jit(d.decode_step(), donate_argnums=1), d.ar_params, cache, _spec((batch,), jnp.int32), i32,
                                            labels)
    return {k: {"flops": c.flops, "bytes": c.bytes_accessed, "compile_s": c.compile_s} for k, c in costs.items()}


def measure_peaks(n_matmul: int, n_copy: int, repeats: int) -> tuple[float, float]:
    """(f32 matmul FLOP/s, memory bandwidth B/s) of this machine, jitted, medians."""
    run_mm, mm_flops = common.square_matmul(n_matmul)
    buf = [jnp.ones((n_copy,), jnp.float32)]
    # In place (donated): a fresh output buffer per call would mostly time page faults.
    axpy = jax.jit(lambda x: x * 0.5 + 1.0, donate_argnums=0).lower(buf[0]).compile()

    def run_axpy():
        buf[0] = axpy(buf[0])
        return buf[0]

    times = common.alternate({"mm": run_mm, "axpy": run_axpy}, repeats=repeats, rounds=2)
    peak = mm_flops / common.median(times["mm"])
    bandwidth = 2.0 * 4 * n_copy / common.median(times["axpy"])  # read x, write the result
    return peak, bandwidth


def roofline(flops: float, nbytes: float, peak: float, bandwidth: float) -> tuple[float, str]:
    """Time of one step and what bounds it ("C" compute, "M" memory)."""
    tc, tm = flops / peak, nbytes / bandwidth
    return max(tc, tm), ("C" if tc >= tm else "M")


def project(costs: dict, num_tokens: int, peak: float, bandwidth: float, *, bytes_scale: float = 1.0,
            floor: tuple[float, float] = (0.0, 0.0)) -> dict:
    """Projected decode times (MaskGIT: NUM_STEPS steps, AR: num_tokens steps) and their ratio."""
    t_mg, b_mg = roofline(costs["mg_step"]["flops"], costs["mg_step"]["bytes"] * bytes_scale, peak, bandwidth)
    t_ar, b_ar = roofline(costs["ar_step"]["flops"], costs["ar_step"]["bytes"] * bytes_scale, peak, bandwidth)
    mg, ar = NUM_STEPS * (t_mg + floor[0]), num_tokens * (t_ar + floor[1])
    return {"maskgit_s": mg, "ar_s": ar, "ratio": ar / mg, "bound": f"AR {b_ar}, MaskGIT {b_mg}"}


def min_traffic_costs(costs: dict, shape: dict, batch: int, bytes_per_value: int = 2) -> dict:
    """The same FLOPs with the least traffic a step needs: the weights once, plus (AR) the KV cache
    read and (MaskGIT) the logits written; everything else assumed fused/on-chip. bf16 values."""
    h, w = shape["token_shape"]
    n, width, depth, vocab = h * w, shape["width"], shape["depth"], shape["codebook_size"]
    params = depth * 12 * width ** 2 + (vocab + 1 + shape["num_classes"] + 1 + n + 1) * width
    kv_cache = batch * depth * 2 * n * width
    return {"mg_step": {"flops": costs["mg_step"]["flops"], "bytes": bytes_per_value * (params + batch * n * vocab)},
            "ar_step": {"flops": costs["ar_step"]["flops"], "bytes": bytes_per_value * (params + kv_cache + batch * vocab)}}


def check_tokens(tokens, batch: int, num_tokens: int, vocab: int, name: str) -> None:
    tokens = jax.device_get(tokens).reshape(batch, -1)
    if tokens.shape != (batch, num_tokens) or tokens.min() < 0 or tokens.max() >= vocab:
        raise AssertionError(f"{name} produced invalid tokens: shape {tokens.shape}, range "
                             f"[{tokens.min()}, {tokens.max()}], expected [{batch}, {num_tokens}] in [0, {vocab})")


def per_step_floor(mesh, depth: int, token_shape, repeats: int) -> tuple[float, float]:
    """Measured per-step time (MaskGIT, AR) of a width-16, 16-code model of the same depth at batch 1.

    Its FLOPs and bytes are negligible, so this is the fixed cost of one step on this CPU (op
    dispatch in XLA's runtime, the loop, sampling bookkeeping): an assumption-free floor for the CPU.
    """
    shape = dict(token_shape=token_shape, codebook_size=16, num_classes=10, width=16, depth=depth, num_heads=4)
    d = build(shape, mesh, abstract=False)
    labels, rng = jnp.zeros((1,), jnp.int32), jax.random.key(0)
    mg = common.compile_fn(d.maskgit_decode(), d.mg_params, labels, rng)
    ar = common.compile_fn(d.ar_decode(), d.ar_params, labels, rng)
    times = common.alternate({"mg": lambda: mg.call(d.mg_params, labels, rng),
                              "ar": lambda: ar.call(d.ar_params, labels, rng)}, repeats=repeats, rounds=2)
    return common.median(times["mg"]) / NUM_STEPS, common.median(times["ar"]) / d.mg.num_tokens


def _g(x: float) -> str:
    return f"{x / 1e9:.3g}"


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--paper", action=argparse.BooleanOptionalAction, default=None,
                   help="also compile (never run) the paper-scale backbone for the projection "
                        "(default: on, off at --size smoke)")
    args = p.parse_args()
    smoke = args.size == "smoke"
    repeats = args.repeats or 2  # for the per-step floor; the decodes pick their own (below)
    batches = (1, 2) if smoke else (1, 32)
    do_paper = (not smoke) if args.paper is None else args.paper
    shape = BACKBONES["smoke" if smoke else "default"]
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    t_start = time.perf_counter()

    with jax.set_mesh(mesh):
        peak, bandwidth = measure_peaks(512 if smoke else 2048, 2 ** 20 if smoke else 2 ** 25, repeats=3)
        print(f"this CPU, measured: f32 matmul {peak / 1e9:.1f} GFLOP/s, memory {bandwidth / 1e9:.1f} GB/s "
              f"(jitted {512 if smoke else 2048}^3 matmul; in-place elementwise op on {(2 ** 20 if smoke else 2 ** 25) * 4 >> 20} MiB, read + write)")
        if smoke:  # keeps the smoke run short; the floor only adds a column to the CPU projection
            floor = (0.0, 0.0)
            print("per-step floor: not measured at --size smoke (taken as 0)")
        else:
            floor = per_step_floor(mesh, shape["depth"], shape["token_shape"], repeats)
            print(f"per-step floor on this CPU (width-16 model, depth {shape['depth']}, batch 1): "
                  f"MaskGIT step {common.fmt_seconds(floor[0])}, AR step {common.fmt_seconds(floor[1])}")

        d = build(shape, mesh, abstract=False)
        n, vocab = d.mg.num_tokens, d.mg.codebook_size
        param_bytes = 4 * sum(x.size for x in jax.tree.leaves(d.mg_params))
        print(f"backbone: {param_bytes / 4e6:.2f}M float32 parameters ({param_bytes / 1e6:.1f} MB) per model")
        results, loop_check = {}, {}
        for batch in batches:
            labels = jnp.arange(batch, dtype=jnp.int32) % d.mg.num_classes
            rng = jax.random.key(batch)
            mg = common.compile_fn(d.maskgit_decode(), d.mg_params, labels, rng)
            ar = common.compile_fn(d.ar_decode(), d.ar_params, labels, rng)
            # The first (untimed) call of each is the warm-up and the validity check.
            check_tokens(mg.call(d.mg_params, labels, rng), batch, n, vocab, "MaskGIT")
            check_tokens(ar.call(d.ar_params, labels, rng), batch, n, vocab, "AR")
            costs = step_costs(d, batch, network_only=not smoke)
            loop_check[batch] = {"maskgit_whole_over_step": mg.flops / costs["mg_step"]["flops"],
                                 "ar_whole_over_step": ar.flops / costs["ar_step"]["flops"],
                                 "ar_whole_over_step_bytes": ar.bytes_accessed / costs["ar_step"]["bytes"]}
            # The large batch is slow on a 2-core CPU: fewer repeats there, three rounds for both.
            times = common.alternate({"maskgit": lambda: mg.call(d.mg_params, labels, rng),
                                      "ar": lambda: ar.call(d.ar_params, labels, rng)},
                                     repeats=args.repeats or (2 if batch == batches[0] else 1), rounds=3, warmup=0)
            results[batch] = {"costs": costs, "compile_s": {"maskgit": mg.compile_s, "ar": ar.compile_s},
                              "whole_decode_cost": {"maskgit": [mg.flops, mg.bytes_accessed],
                                                    "ar": [ar.flops, ar.bytes_accessed]},
                              "t_maskgit": common.median(times["maskgit"]), "t_ar": common.median(times["ar"]),
                              "n_timed": len(times["ar"])}

        paper = {}
        if do_paper:
            t0 = time.perf_counter()
            dp = build(BACKBONES["paper"], mesh, abstract=True)
            for batch in (1, 32):
                paper[batch] = step_costs(dp, batch, network_only=False)
            paper_compile_s = time.perf_counter() - t0

    # ------------------------------------------------------------------------------------ report
    for batch, lc in loop_check.items():
        print(f"cost_analysis loop check, batch {batch}: whole {NUM_STEPS}-step MaskGIT decode = "
              f"{lc['maskgit_whole_over_step']:.2f}x one MaskGIT step; whole {n}-step AR decode = "
              f"{lc['ar_whole_over_step']:.2f}x one AR step -> XLA counts the loop body once; "
              f"totals below = one step x steps (AR bytes: whole decode = {lc['ar_whole_over_step_bytes']:.2f}x the "
              f"donated-cache step, i.e. XLA's loop count includes a full KV-cache copy)")
    print(f"CFG off in both decoders (cfg_scale=1.0: no unconditional pass), so network evaluations = "
          f"{NUM_STEPS} (MaskGIT) vs {n} (AR). Both outputs checked: [B, {n}] ids in [0, {vocab}).")

    hardware = {"this CPU": (peak, bandwidth, 1.0)}
    hardware.update({k: (pk, bw, ACCEL_BYTES_SCALE) for k, (pk, bw) in ACCELERATORS.items()})

    rows = []
    for batch, r in results.items():
        c = r["costs"]
        cpu = project(c, n, peak, bandwidth)
        cpu_floor = project(c, n, peak, bandwidth, floor=floor)
        for name, steps, key, t in (("MaskGIT (8 parallel steps)", NUM_STEPS, "mg", r["t_maskgit"]),
                                    ("AR (KV cache)", n, "ar", r["t_ar"])):
            step, net = c[f"{key}_step"], c.get(f"{key}_net")
            proj = cpu["maskgit_s" if key == "mg" else "ar_s"]
            proj_floor = cpu_floor["maskgit_s" if key == "mg" else "ar_s"]
            rows.append([batch, name, steps, _g(steps * step["flops"]), _g(steps * net["flops"]) if net else "-",
                         f"{steps * step['bytes'] / 1e9:.3g}", f"{step['flops'] / max(step['bytes'], 1):.1f}",
                         f"{r['compile_s']['maskgit' if key == 'mg' else 'ar']:.1f}",
                         common.fmt_seconds(t), f"{common.fmt_seconds(proj)} / {common.fmt_seconds(proj_floor)}"])
    header = ["batch", "decoder", "network evals", "GFLOP/decode", "of which network", "GB moved/decode",
              "FLOP/byte", "compile (s)", "median wall", "CPU roofline / + floor"]

    ratio_rows, proj_summary = [], {}
    backbone_name = f"w{shape['width']} d{shape['depth']} h{shape['num_heads']}"
    for label, res, measured in ([(backbone_name, {b: r["costs"] for b, r in results.items()}, True)]
                                 + ([("paper (w768 d24 h16)", paper, False)] if paper else [])):
        for batch, c in res.items():
            row = [label, batch]
            row.append(f"{results[batch]['t_ar'] / results[batch]['t_maskgit']:.2f}" if measured else "-")
            for hw, (pk, bw, scale) in hardware.items():
                pr = project(c, n, pk, bw, bytes_scale=scale)
                proj_summary[(label, batch, hw)] = pr
                cell = f"{pr['ratio']:.2f} ({pr['bound']})"
                if hw == "this CPU" and measured and any(floor):
                    cell += f"; +floor {project(c, n, pk, bw, floor=floor)['ratio']:.2f}"
                row.append(cell)
            ratio_rows.append(row)

    print()
    print("AR / MaskGIT decode-time ratio (> 1: MaskGIT faster), measured and roofline-projected; "
          "in brackets what bounds each step (C compute, M memory). Accelerators: bf16 bytes, no per-step overhead.")
    print("| backbone | batch | measured (this CPU) | " + " | ".join(f"roofline {hw}" for hw in hardware) + " |")
    print("|---|---|---|" + "---|" * len(hardware))
    for row in ratio_rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    lines = []
    for label, res, shp in ([(backbone_name, {b: r["costs"] for b, r in results.items()}, shape)]
                            + ([("paper (w768 d24 h16)", paper, BACKBONES["paper"])] if paper else [])):
        for batch, c in res.items():
            cells = []
            for hw, (pk, bw) in ACCELERATORS.items():
                pr = project(min_traffic_costs(c, shp, batch), n, pk, bw)
                proj_summary[(label, batch, hw + " min-traffic")] = pr
                cells.append(f"{hw} {pr['ratio']:.2f} ({pr['bound']})")
            lines.append(f"  {label}, batch {batch}: " + ", ".join(cells))
    print("Same, with the least traffic a step needs (bf16 weights once + AR's KV cache read + MaskGIT's logits "
          "written; XLA:CPU's byte counts above include unfused activations that an accelerator keeps on-chip):")
    print("\n".join(lines))
    if paper:
        print(f"(paper-scale backbone: per-step costs from {4} abstract compiles, {paper_compile_s:.0f} s, nothing run; "
              + "; ".join(f"batch {b}: MaskGIT step {_g(c['mg_step']['flops'])} GFLOP / {c['mg_step']['bytes'] / 1e9:.3g} GB, "
                          f"AR step {_g(c['ar_step']['flops'])} GFLOP / {c['ar_step']['bytes'] / 1e9:.3g} GB (f32 counts)"
                          for b, c in paper.items()) + ")")
    print()

    b_lo, b_hi = batches
    r_lo = results[b_lo]["t_ar"] / results[b_lo]["t_maskgit"]
    r_hi = results[b_hi]["t_ar"] / results[b_hi]["t_maskgit"]

    def accel(label, lo, hi):
        return ", ".join(f"{hw} {proj_summary[(label, lo, hw)]['ratio']:.1f}x / {proj_summary[(label, hi, hw)]['ratio']:.1f}x"
                         for hw in ACCELERATORS)

    headline = (f"AR / MaskGIT wall-clock: {r_lo:.2f}x at batch {b_lo}, {r_hi:.2f}x at batch {b_hi} (this CPU); "
                f"roofline projection at batch {b_lo} / {b_hi}: {accel(backbone_name, b_lo, b_hi)} ({backbone_name})")
    if paper:
        pl = "paper (w768 d24 h16)"
        headline += (f"; paper backbone at batch 1 / 32: {accel(pl, 1, 32)} (least-traffic bound: "
                     + ", ".join(f"{hw} {proj_summary[(pl, 1, hw + ' min-traffic')]['ratio']:.1f}x / "
                                 f"{proj_summary[(pl, 32, hw + ' min-traffic')]['ratio']:.1f}x" for hw in ACCELERATORS)
                     + ")")
    extra = {"backbone": shape, "num_steps": NUM_STEPS, "num_tokens": n, "cpu_peak_flops": peak,
             "cpu_bandwidth": bandwidth, "per_step_floor_s": {"maskgit": floor[0], "ar": floor[1]},
             "loop_check": loop_check, "results": results, "paper_step_costs": paper,
             "projections": {f"{k[0]}|b{k[1]}|{k[2]}": v for k, v in proj_summary.items()},
             "total_s": time.perf_counter() - t_start}
    common.report("B2", f"MaskGIT {NUM_STEPS}-step parallel decoding vs KV-cached AR, same backbone "
                  f"({backbone_name}, {shape['token_shape'][0]}x{shape['token_shape'][1]} tokens, "
                  f"{shape['codebook_size']} codes)", header, rows, headline, ratio=r_lo,
                  claim="MaskGIT: parallel decoding up to 64x faster on accelerators (no fixed bar)", holds=None,
                  extra=extra, json_path=args.json)
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
