"""B4: model FLOP utilization (MFU) of maskgen train steps on this machine.

Measures, in the same run, (1) the machine's matmul peak: a jitted float32 square matmul
(2048^3 by default), median over repeats, FLOPs = 2 n^3; and (2) the achieved FLOP/s of two
maskgen train steps (FLOPs from XLA's cost analysis of the compiled step, time = median step):
  (i)  the B3 transformer (benchmarks/train_step_vs_pytorch.py: maskgen Transformer blocks + a
       linear head, masked MSE, AdamW; 6 layers, width 384, 6 heads, 256 tokens, batch 16);
  (ii) the MaskGIT digits model (experiments/maskgit_digits.py "small": TokenTransformer width 96,
       depth 4, 4 heads, adaLN, 8x8 tokens, codebook 256, batch 64; MaskGITRecipe.loss + AdamW).
MFU = achieved / peak. Matmul and steps are alternated round by round (shared machines drift).

    python -m benchmarks.flop_utilization                # default (about 1.5 minutes on 2 cores)
    python -m benchmarks.flop_utilization --size smoke   # tiny shapes, only checks it runs
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import common
from benchmarks.train_step_vs_pytorch import SHAPES, jax_contender, make_data
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.recipes.maskgit import MaskGITRecipe

# size: (matmul n, maskgit (width, depth, heads, token grid, codebook, batch))
CASES = {"default": (2048, (96, 4, 4, (8, 8), 256, 64)), "smoke": (256, (32, 1, 2, (4, 4), 64, 4))}
NUM_CLASSES = 10


def maskgit_step(width, depth, heads, token_shape, codebook, batch):
    """The MaskGIT recipe's train step (loss + AdamW), jitted with params/opt state donated."""
    recipe = MaskGITRecipe(token_shape=token_shape, codebook_size=codebook, num_classes=NUM_CLASSES, width=width,
                           depth=depth, num_heads=heads, mlp_ratio=4.0, conditioning="adaln", positions="learned",
                           qk_norm=False, tie_head=True, label_smoothing=0.1, class_dropout=0.1,
                           mask_schedule="cosine")
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        graphdef, state = nnx.split(recipe.make_model(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    tx = optax.adamw(1e-3, b1=0.9, b2=0.96, weight_decay=0.045)
    rng = np.random.default_rng(0)
    batch_data = {"tokens": jnp.asarray(rng.integers(0, codebook, (batch, *token_shape)), jnp.int32),
                  "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (batch,)), jnp.int32)}

    def step(params, opt_state, batch, key):
        def loss_fn(p):
            return recipe.loss(nnx.merge(graphdef, p), batch, key, 0)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    holder = {"state": (params, tx.init(params))}
    key = jax.random.key(1)
    with jax.set_mesh(mesh):
        compiled = common.compile_fn(jax.jit(step, donate_argnums=(0, 1)), *holder["state"], batch_data, key)

    def run():
        params, opt_state, loss = compiled.call(*holder["state"], batch_data, key)
        holder["state"] = (params, opt_state)
        return loss

    return compiled, run


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    args = p.parse_args()
    n, maskgit_shape = CASES[args.size]
    b3_shape = SHAPES[args.size]
    mm_run, mm_flops = common.square_matmul(n)
    b3, b3_run = jax_contender(b3_shape, make_data(b3_shape[5], b3_shape[4], b3_shape[1]))
    mg, mg_run = maskgit_step(*maskgit_shape)
    # One matmul is ~0.1 s and a step up to a few seconds: time several matmuls per round.
    mm_repeats = args.repeats or (10 if args.size == "default" else 3)
    step_repeats = args.repeats or (1 if args.size == "default" else 3)
    mg_repeats = args.repeats or 5
    times = {}
    for _ in range(args.rounds):
        for name, fn, reps in (("matmul", mm_run, mm_repeats), ("b3", b3_run, step_repeats),
                               ("maskgit", mg_run, mg_repeats)):
            part = common.alternate({name: fn}, repeats=reps, rounds=1, warmup=0 if name in times else 1)
            times.setdefault(name, []).extend(part[name])
    med = {k: common.median(v) for k, v in times.items()}
    peak = mm_flops / med["matmul"]
    best_peak = mm_flops / min(times["matmul"])
    d, w, h, r, t, b = b3_shape
    mw, md, mh, mt, mv, mb = maskgit_shape
    rows = [[f"matmul {n}x{n}x{n} float32 (peak)", common.fmt_seconds(med["matmul"]), f"{mm_flops / 1e9:.2f}",
             f"{peak / 1e9:.0f}", "1.00"]]
    mfu = {}
    for key, label, comp in (("b3", f"B3 transformer step ({d} layers, width {w}, {t} tokens, batch {b})", b3),
                             ("maskgit", f"MaskGIT digits step (width {mw}, depth {md}, {mt[0]}x{mt[1]} tokens, "
                                         f"V={mv}, batch {mb})", mg)):
        achieved = comp.flops / med[key]
        mfu[key] = achieved / peak
        rows.append([label, common.fmt_seconds(med[key]), f"{comp.flops / 1e9:.2f}", f"{achieved / 1e9:.0f}",
                     f"{mfu[key]:.2f}"])
    print(f"{len(times['matmul'])} matmuls, {len(times['b3'])} B3 steps, {len(times['maskgit'])} MaskGIT steps "
          f"over {args.rounds} alternating rounds; best single matmul {best_peak / 1e9:.0f} GFLOP/s")
    common.report("B4", "FLOP utilization of maskgen train steps vs this machine's matmul peak",
                  ["computation", "median time", "GFLOP", "GFLOP/s", "MFU"], rows,
                  f"matmul peak {peak / 1e9:.0f} GFLOP/s; MFU: B3 transformer {mfu['b3']:.0%}, "
                  f"MaskGIT digits {mfu['maskgit']:.0%}",
                  ratio=mfu["b3"], claim="measurement (no pass/fail bar)",
                  extra={"peak_flops": peak, "mfu": mfu, "medians_s": med}, json_path=args.json)


if __name__ == "__main__":
    main()
