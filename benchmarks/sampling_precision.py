"""B5: cost of the precision-safe categorical sampling in MaskGIT decoding (float64-resolution vs float32).

`iterative_decode` samples tokens (and draws the Gumbel choice noise) with 64-bit-resolution
uniforms by default (`precision="float64"`, maskgen/sampling/categorical.py), after Zheng et al.
(arXiv 2409.02908): float32 Gumbel noise is truncated near 16, which lowers the effective
temperature. The safe noise draws one uint32 word per draw plus one per row of the vocabulary
axis (shared low word), and a log1p instead of a log. This
script times the whole jitted decode (same model, inputs and key) with `precision="float64"` and
with plain `precision="float32"`. Claim: the safe default costs <= 10% (ratio float64/float32 <= 1.10).

Cases: the MaskGIT digits model (experiments/maskgit_digits.py "small": width 96, depth 4, 4
heads, 8x8 tokens, codebook 256) at batch 100, 8 steps; and a 16x16 grid with 1024 codes (batch
10, 8 steps), where sampling over the vocabulary is a larger share of the step. A second table times the sampling
alone (`sample_categorical` on [B, N, V] logits) and its parts (random bits, the Gumbel
transform, the argmax) to show where any extra cost comes from. The model is freshly initialised:
decode time does not depend on its weights.

    python -m benchmarks.sampling_precision                # default (< 1 minute on 2 CPU cores)
    python -m benchmarks.sampling_precision --size smoke   # tiny shapes, only checks it runs
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks import common
from maskgen import parallel
from maskgen.config import DEFAULT_SHARDING_RULES
from maskgen.recipes.maskgit import MaskGITRecipe
from maskgen.sampling.categorical import gumbel_noise, sample_categorical

# name: (token_shape, codebook, width, depth, heads, batch, steps). The 16x16 / 1024-code case
# draws 16x more noise per example, so it runs at batch 10 to stay within the time budget (it has
# about 1.6x the digits case's B*N*V noise draws per step).
CASES = {
    "default": [("digits 8x8, V=256", (8, 8), 256, 96, 4, 4, 100, 8),
                ("16x16, V=1024", (16, 16), 1024, 96, 4, 4, 10, 8)],
    "smoke": [("tiny 4x4, V=64", (4, 4), 64, 32, 1, 2, 8, 4)],
}
NUM_CLASSES = 10  # digits


def _decode_case(name, token_shape, codebook, width, depth, heads, batch, steps, repeats, mesh):
    recipe = MaskGITRecipe(token_shape=token_shape, codebook_size=codebook, num_classes=NUM_CLASSES, width=width,
                           depth=depth, num_heads=heads, mlp_ratio=4.0, conditioning="adaln", positions="learned",
                           qk_norm=False, tie_head=True, label_smoothing=0.1, class_dropout=0.1)
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        graphdef, state = nnx.split(recipe.make_model(nnx.Rngs(0)))
    params = nnx.to_pure_dict(state)
    labels = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
    rng = jax.random.key(0)
    settings = dict(num_steps=steps, schedule="cosine", choice_temperature=4.5, temperature=1.0,
                    policy="confidence", cfg_scale=1.0, cfg_schedule="constant")

    def make(precision):
        def decode(params, labels, rng):
            model = nnx.merge(graphdef, params)
            return recipe.generate(model, {"label": labels}, rng, precision=precision, **settings)["tokens"]
        return decode

    args = (params, labels, rng)
    with jax.set_mesh(mesh):
        c64 = common.compile_fn(make("float64"), *args)
        c32 = common.compile_fn(make("float32"), *args)
        times = common.alternate({"float64": lambda: c64.call(*args), "float32": lambda: c32.call(*args)},
                                 repeats=repeats, rounds=8)
    t64, t32 = common.median(times["float64"]), common.median(times["float32"])
    return {"name": name, "t64": t64, "t32": t32, "c64": c64, "c32": c32, "batch": batch, "steps": steps,
            "n": len(times["float64"])}


def _sampling_parts(token_shape, codebook, batch, repeats):
    """sample_categorical alone, and its parts, on [B, N, V] logits: where the extra cost sits."""
    shape = (batch, token_shape[0] * token_shape[1], codebook)
    logits = jax.random.normal(jax.random.key(1), shape)
    rng = jax.random.key(2)
    fns = {
        "sample float64": lambda l, r: sample_categorical(r, l, 1.0, "float64"),
        "sample float32": lambda l, r: sample_categorical(r, l, 1.0, "float32"),
        # What the safe noise draws now: one word per draw plus one low word per row of the
        # vocabulary axis (maskgen/sampling/categorical.py explains why that is exact enough).
        "bits: 1 uint32 / draw + 1 / row (now)": lambda l, r: [
            jax.random.bits(k, s, jnp.uint32) for k, s in zip(jax.random.split(r), (shape, shape[:-1] + (1,)))],
        # The first design: two full words per draw, 2.6x the bits' cost of one word on this CPU,
        # which made the safe default cost 19-30% of a decode.
        "bits: 2 uint32 / draw (first design)": lambda l, r: jax.random.bits(r, shape + (2,), jnp.uint32),
        "bits: 1 uint32 / draw (float32)": lambda l, r: jax.random.bits(r, shape, jnp.uint32),
        "gumbel float64 (bits+log)": lambda l, r: gumbel_noise(r, shape, "float64"),
        "gumbel float32 (bits+log)": lambda l, r: gumbel_noise(r, shape, "float32"),
        "argmax(logits)": lambda l, r: jnp.argmax(l, -1),
    }
    compiled = {k: common.compile_fn(f, logits, rng) for k, f in fns.items()}
    times = common.alternate({k: (lambda c=c: c.call(logits, rng)) for k, c in compiled.items()},
                             repeats=repeats, rounds=8)
    return shape, {k: common.median(v) for k, v in times.items()}


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    repeats = args.repeats or 2  # per round; 8 rounds alternate the contenders
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    results = [_decode_case(*case, repeats=repeats, mesh=mesh) for case in CASES[args.size]]
    rows = []
    for r in results:
        rows.append([r["name"], f"B={r['batch']}, {r['steps']} steps", common.fmt_seconds(r["t64"]),
                     common.fmt_seconds(r["t32"]), f"{r['t64'] / r['t32']:.3f}",
                     f"{r['c64'].compile_s:.1f} / {r['c32'].compile_s:.1f}"])
    ratios = [r["t64"] / r["t32"] for r in results]
    worst = max(ratios)
    # The sampling alone at the first (digits) case's shape: the safe noise's own overhead, and
    # the share of a decode that sampling takes (one draw over [B, N, V] per step).
    first = CASES[args.size][0]
    shape, parts = _sampling_parts(first[1], first[2], first[6], repeats)
    print(f"sampling alone on logits {shape} (one decode step's draws), median per call:")
    print("| part | median |")
    print("|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {common.fmt_seconds(v)} |")
    sample_ratio = parts["sample float64"] / parts["sample float32"]
    steps = first[7]
    print(f"sample_categorical alone: float64/float32 = {sample_ratio:.2f}x; per decode step that is "
          f"{common.fmt_seconds(parts['sample float64'] - parts['sample float32'])} extra; over {steps} steps the "
          f"float32 sampling is {steps * parts['sample float32'] / results[0]['t32']:.0%} of the float32 decode "
          f"({results[0]['name']})")
    print(f"{results[0]['n']} timed decodes per contender per case")
    headline = ("safe sampling (float64-resolution uniforms) / float32 decode time: "
                + ", ".join(f"{r['name']} {x:.3f}x" for r, x in zip(results, ratios))
                + " (claim <= 1.10)")
    common.report("B5", "MaskGIT iterative_decode, precision='float64' (default) vs 'float32' sampling",
                  ["case", "shape", "float64 (median)", "float32 (median)", "ratio 64/32", "compile 64/32 (s)"],
                  rows, headline, ratio=worst, claim="<= 1.10",
                  holds=(worst <= 1.10) if args.size == "default" else None,
                  extra={"ratios": dict(zip([r["name"] for r in results], ratios)),
                         "sampling_alone_s": parts, "sampling_alone_ratio": sample_ratio},
                  json_path=args.json)


if __name__ == "__main__":
    main()
