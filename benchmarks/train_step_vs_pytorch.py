"""B3: maskgen's transformer train step (JAX, XLA:CPU) vs the same model in PyTorch on the same CPU.

The maskgen contender is the model users run: `maskgen.models.layers.Transformer` (the MAE ViT
encoder's and the token transformer's blocks: pre-norm, fused QKV, exact GELU, final LayerNorm)
with a linear head, trained with a masked MSE loss (75% of the positions count, as in a masked
model) and optax AdamW, the whole step `jax.jit`-ed with params and optimizer state donated, as
the real loop does (maskgen/train.py). The peers run the same shapes in float32 with
`torch.optim.AdamW` and the same loss:
  (a) timm's `VisionTransformer` `Block`s (fused-attention SDPA path), if timm imports;
  (b) a stack of `torch.nn.TransformerEncoderLayer(norm_first=True, batch_first=True,
      activation="gelu")` (always there with torch);
each in eager mode and under `torch.compile` (model forward/backward compiled; AdamW eager).
torch uses all cores (`torch.set_num_threads`). Every contender's FLOP/s uses the FLOP count of
the JAX step (XLA's cost analysis), so the columns compare time for the same work.

Headline: best peer's eager median / maskgen median (timm if present, else torch.nn).
Claim: >= 1.3x (aim), >= 1.0x (bar): maskgen is not slower than what PyTorch users run.

    python -m benchmarks.train_step_vs_pytorch                  # 6 layers, width 384, 256 tokens, batch 16
    python -m benchmarks.train_step_vs_pytorch --size smoke     # tiny shapes (< 30 s), also without torch
    python -m benchmarks.train_step_vs_pytorch --no-compile     # skip torch.compile peers

The `bench` extra (`pip install -e '.[bench]'`) installs the peers: torch 2.14.1, torchvision 0.29.1
(which timm needs) and timm.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import common
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.models import layers

# depth, width, heads, mlp_ratio, tokens, batch
SHAPES = {"default": (6, 384, 6, 4.0, 256, 16), "smoke": (1, 64, 2, 4.0, 16, 2)}
LR, WEIGHT_DECAY, MASK_RATIO = 1e-4, 1e-4, 0.75
CLAIM = ">= 1.3x (aim), >= 1.0x (bar)"


def make_data(batch: int, tokens: int, width: int):
    """Inputs, targets and the loss mask (1 = position counts), shared by every contender."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, tokens, width), dtype=np.float32)
    y = rng.standard_normal((batch, tokens, width), dtype=np.float32)
    mask = (rng.random((batch, tokens)) < MASK_RATIO).astype(np.float32)
    return x, y, mask


class MaskedTransformer(nnx.Module):
    """maskgen's Transformer (blocks + final norm) and a linear head, as in the MAE encoder/decoder."""

    def __init__(self, depth, width, heads, mlp_ratio, *, rngs: nnx.Rngs):
        self.transformer = layers.Transformer(width, depth, heads, mlp_ratio, rngs=rngs)
        self.head = layers.Dense((width,), (width,), ("embed", None), rngs=rngs)

    def __call__(self, x):
        return self.head(self.transformer(x))


def masked_mse(pred, target, mask):
    per_token = ((pred - target) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum()


def jax_contender(shape, data):
    """The jitted, donated maskgen step, compiled ahead of time, and a callable that runs one step."""
    depth, width, heads, mlp_ratio, tokens, batch = shape
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        graphdef, state = nnx.split(MaskedTransformer(depth, width, heads, mlp_ratio, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    x, y, mask = (jnp.asarray(a) for a in data)

    def step(params, opt_state, x, y, mask):
        def loss_fn(p):
            return masked_mse(nnx.merge(graphdef, p)(x), y, mask)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    holder = {"state": (params, tx.init(params))}
    with jax.set_mesh(mesh):
        compiled = common.compile_fn(jax.jit(step, donate_argnums=(0, 1)), *holder["state"], x, y, mask)

    def run():
        params, opt_state, loss = compiled.call(*holder["state"], x, y, mask)
        holder["state"] = (params, opt_state)
        return loss

    return compiled, run


def torch_contenders(shape, data, *, use_compile: bool):
    """{name: (callable or failure string, compile seconds or None)} for the PyTorch peers."""
    try:
        import torch  # noqa: PLC0415 (optional peer)
        from torch import nn  # noqa: PLC0415
    except ImportError:
        return {"PyTorch peers": ("torch not installed", None)}
    depth, width, heads, mlp_ratio, tokens, batch = shape
    torch.set_num_threads(common.machine()["cores"])
    torch.manual_seed(0)
    x, y, mask = (torch.from_numpy(a) for a in data)
    hidden = int(width * mlp_ratio)

    def timm_model():
        from timm.models.vision_transformer import Block  # noqa: PLC0415 (optional peer)

        norm = functools.partial(nn.LayerNorm, eps=1e-6)
        blocks = [Block(width, heads, mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)]
        return nn.Sequential(*blocks, nn.LayerNorm(width, eps=1e-6), nn.Linear(width, width))

    def torch_nn_model():
        blocks = [nn.TransformerEncoderLayer(width, heads, dim_feedforward=hidden, dropout=0.0, activation="gelu",
                                             layer_norm_eps=1e-6, batch_first=True, norm_first=True)
                  for _ in range(depth)]
        return nn.Sequential(*blocks, nn.LayerNorm(width, eps=1e-6), nn.Linear(width, width))

    def make_step(model, compiled: bool):
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)

        def loss_fn(x, y, mask):
            return masked_mse(model(x), y, mask)

        if compiled:
            loss_fn = torch.compile(loss_fn)

        def run():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(x, y, mask)
            loss.backward()
            opt.step()
            return float(loss.detach())  # a CPU sync point

        return run

    out = {}
    for family, build in (("timm Blocks", timm_model), ("torch.nn TransformerEncoderLayer", torch_nn_model)):
        try:
            model = build()
        except Exception as err:  # noqa: BLE001 (timm/torchvision import failures are expected)
            out[f"{family}, eager"] = (f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}", None)
            continue
        out[f"{family}, eager"] = (make_step(model, compiled=False), None)
        if not use_compile:
            continue
        name = f"{family}, torch.compile"
        try:
            run = make_step(build(), compiled=True)
            start = time.perf_counter()
            run()  # compiles the forward and backward graphs
            run()
            out[name] = (run, time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 (inductor needs a C++ toolchain; report, don't crash)
            out[name] = (f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}", None)
    return out


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (each times every contender)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peers")
    args = p.parse_args()
    shape = SHAPES[args.size]
    depth, width, heads, mlp_ratio, tokens, batch = shape
    repeats = args.repeats or (2 if args.size == "smoke" else 1)
    data = make_data(batch, tokens, width)
    info = common.machine()

    compiled, jax_run = jax_contender(shape, data)
    peers = torch_contenders(shape, data, use_compile=not args.no_compile and args.size != "smoke")
    runnable = {"maskgen (JAX, jit)": jax_run}
    runnable.update({name: fn for name, (fn, _) in peers.items() if callable(fn)})
    load_before = _loadavg()
    times = common.alternate(runnable, repeats=repeats, rounds=args.rounds)
    load_after = _loadavg()
    medians = {name: common.median(t) for name, t in times.items()}
    t_jax = medians["maskgen (JAX, jit)"]

    rows = []
    compile_s = {"maskgen (JAX, jit)": compiled.compile_s, **{n: c for n, (_, c) in peers.items()}}
    for name in ["maskgen (JAX, jit)", *peers]:
        if name in medians:
            t = medians[name]
            rows.append([name, common.fmt_seconds(t), common.fmt_seconds(min(times[name])), f"{compiled.flops / t / 1e9:.0f}",
                         f"{t / t_jax:.2f}x",
                         "-" if compile_s.get(name) is None else f"{compile_s[name]:.1f}"])
        else:
            rows.append([name, peers[name][0], "-", "-", "-", "-"])

    best = next((n for n in ("timm Blocks, eager", "torch.nn TransformerEncoderLayer, eager") if n in medians), None)
    ratio = medians[best] / t_jax if best else None
    if best:
        headline = (f"{best} / maskgen = {ratio:.2f}x (median step {common.fmt_seconds(medians[best])} vs "
                    f"{common.fmt_seconds(t_jax)}; claim {CLAIM})")
    else:
        headline = f"no PyTorch peer ran ({next(iter(peers.values()))[0]}); maskgen step {common.fmt_seconds(t_jax)}"
    print(f"shape: {depth} layers, width {width}, {heads} heads, mlp x{mlp_ratio:g}, {tokens} tokens, batch {batch}, "
          f"float32, AdamW; {compiled.flops / 1e9:.1f} GFLOP/step (XLA cost analysis); "
          f"{len(times['maskgen (JAX, jit)'])} timed steps each over {args.rounds} alternating rounds; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; load average before/after timing: "
          f"{load_before} / {load_after} (other processes on this CPU inflate every contender's times, "
          f"and torch's OpenMP threads suffer most from oversubscription: compare min steps too)")
    common.report("B3", "transformer train step, maskgen (JAX) vs PyTorch on the same CPU",
                  ["contender", "median step", "min step", "GFLOP/s", "time / maskgen", "compile (s)"], rows,
                  headline, ratio=ratio, claim=CLAIM,
                  holds=(ratio >= 1.0) if (ratio is not None and args.size == "default") else None,
                  extra={"medians_s": medians, "flops": compiled.flops, "aim_met": ratio is not None and ratio >= 1.3},
                  json_path=args.json, info=info)


if __name__ == "__main__":
    main()
