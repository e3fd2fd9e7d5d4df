r"""MicroDiT's patch masking on digits: deferred vs naive masking, and quality against training FLOPs.

MicroDiT (Sehwag et al., arXiv 2407.15811) drops 75% of the patches before the backbone, with the
loss on the visible patches only, and claims that a patch-mixer run over every patch before the
drop ("deferred" masking) recovers most of what naive masking loses, so masking saves compute at
equal quality. Its gain at equal compute is disputed (SonyResearch/micro_diffusion issue #10).
This measures both on the digits demo (`experiments/dit_digits.py`, 2x2 pixel patches of 16x16
digits, 64 tokens), with the `generation` evaluator (Fréchet distance on digit-classifier
features against the held-out digits, and class consistency):

1. Equal training steps: 75% masking, deferred (a 1-block patch-mixer) against naive.
2. Equal training FLOPs: 0%, 50% and 75% masking, each with and without the mixer, every run
   given the FLOPs of the unmasked run without mixer at `--steps` steps (times each fraction of
   `--budgets`, for a curve of quality against training FLOPs). A run's FLOPs per step
   are XLA's `cost_analysis()` of its compiled loss-and-gradient (forward + backward; the
   optimizer update is a few FLOPs per parameter and left out) at each masking stage.

Every masked run ends with an unmasked fine-tuning phase (`--finetune`, default the last 10% of
its steps; MicroDiT's stage 2), through the recipe's masking schedule: the model is sampled on
all patches, so it must have seen them.

    python -m benchmarks.microdit_masking                 # the full measurement (size small, 1500 steps)
    python -m benchmarks.microdit_masking --size smoke    # tiny runs, a few steps: only checks the script
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "MicroDiT masking on digits: deferred vs naive, and quality vs training FLOPs"
EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "dit_digits.py")
# name: (masking mode, ratio, mixer blocks)
CONDITIONS = {
    "0%": ("none", 0.0, 0), "0% + mixer": ("none", 0.0, 1),
    "50% naive": ("naive", 0.5, 0), "50% deferred": ("deferred", 0.5, 1),
    "75% naive": ("naive", 0.75, 0), "75% deferred": ("deferred", 0.75, 1),
}


def make_config(size: str, condition: str, steps: int, finetune: float, num_per_class: int, seed: int = 0,
                constant_ratio: bool = False):
    """The digits config of a condition; `constant_ratio` leaves out the unmasked phase (for FLOP counts)."""
    from maskgen import config as config_lib

    mode, ratio, mixer = CONDITIONS[condition]
    masked_steps = steps if (mode == "none" or constant_ratio) else max(1, int(round(steps * (1 - finetune))))
    arg = f"size={size},steps={steps},masking={mode}"
    if mode != "none":
        arg += f",ratio={ratio}" + (f",finetune_from={masked_steps}" if masked_steps < steps else "")
    config = config_lib.load_config_file(f"{EXPERIMENT}:{arg}")
    config_lib.apply_overrides(config, [f"model.mixer_depth={mixer}", f"seed={seed}",
                                        f"evals.generation.num_per_class={num_per_class}"])
    return config, masked_steps


def step_flops(config) -> float:
    """FLOPs of one loss-and-gradient evaluation of the config's model (XLA cost analysis)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from maskgen import parallel
    from maskgen.data import source_info
    from maskgen.recipes.dit import DiTRecipe

    info = source_info(config.data.name, config.data.data_dir or None)
    recipe = DiTRecipe.from_config(config, info)
    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, config.sharding_rules):
        model = recipe.make_model(nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        b = config.batch_size
        batch = {"image": jnp.zeros((b,) + recipe.data_shape, jnp.float32), "label": jnp.zeros((b,), jnp.int32)}

        def loss(p, batch, rng, step):
            return recipe.loss(nnx.merge(graphdef, p), batch, rng, step)[0]

        compiled = common.compile_fn(jax.value_and_grad(loss), params, batch, jax.random.key(0), np.int32(0))
    return compiled.flops


def condition_flops(size: str, condition: str, finetune: float, cache: dict) -> float:
    """Mean FLOPs per training step of a condition over its masked and unmasked phases."""
    mode, ratio, mixer = CONDITIONS[condition]

    def flops(c):
        if c not in cache:
            cache[c] = step_flops(make_config(size, c, 10, 0.0, 1, constant_ratio=True)[0])
        return cache[c]

    if mode == "none":
        return flops(condition)
    unmasked = "0% + mixer" if mixer else "0%"
    return (1 - finetune) * flops(condition) + finetune * flops(unmasked)


def train_and_evaluate(config, workdir: str) -> dict:
    from maskgen import train as train_lib

    start = time.perf_counter()
    train_lib.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "generation/class_consistency" in line]
    last = rows[-1]
    return {"fd": last["generation/frechet_distance_digits"], "consistency": last["generation/class_consistency"],
            "floor": last.get("generation/frechet_distance_digits_floor"), "seconds": time.perf_counter() - start}


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps of the equal-steps runs and of the unmasked "
                   "run that sets the FLOP budget (default 1500; smoke 4)")
    p.add_argument("--finetune", type=float, default=0.1, help="the unmasked fraction at the end of masked runs")
    p.add_argument("--num-per-class", type=int, default=None, help="samples per class (default 100; smoke 2)")
    p.add_argument("--conditions", default=None, help="comma-separated names of CONDITIONS for the FLOPs part")
    p.add_argument("--budgets", default="1", help="comma-separated fractions of the FLOP budget for the "
                   "quality-vs-FLOPs curve, ascending (the last one is the headline's; e.g. 0.25,0.5,1)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    size = "tiny" if smoke else "small"
    steps = args.steps or (4 if smoke else 1500)
    num_per_class = args.num_per_class or (2 if smoke else 100)
    conditions = ([c.strip() for c in args.conditions.split(",")] if args.conditions
                  else (["0%"] if smoke else list(CONDITIONS)))
    for c in conditions:
        if c not in CONDITIONS:
            p.error(f"unknown condition {c!r}; valid: {', '.join(CONDITIONS)}")

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    flops_cache: dict = {}
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        # 1. Equal steps, 75%: deferred vs naive.
        for condition in ("75% naive", "75% deferred"):
            config, _ = make_config(size, condition, steps, args.finetune, num_per_class)
            r = train_and_evaluate(config, os.path.join(root, f"steps_{condition.replace(' ', '_')}"))
            per_step = condition_flops(size, condition, args.finetune, flops_cache)
            results[("steps", condition)] = {**r, "steps": steps, "train_flops": per_step * steps}
            rows.append([f"equal steps: {condition}", steps, f"{per_step * steps / 1e12:.4g}", f"{r['fd']:.2f}",
                         f"{r['consistency']:.3f}"])
            print(rows[-1], flush=True)
        # 2. Equal FLOPs: the unmasked run without mixer at `steps` sets the budget (times each of --budgets).
        budget = condition_flops(size, "0%", args.finetune, flops_cache) * steps
        fractions = [float(f) for f in args.budgets.split(",")]
        for fraction in fractions:
            for condition in conditions:
                per_step = condition_flops(size, condition, args.finetune, flops_cache)
                n = max(2, int(round(fraction * budget / per_step)))
                config, _ = make_config(size, condition, n, args.finetune, num_per_class)
                name = f"flops{fraction:g}_{condition.replace(' ', '_').replace('%', '')}"
                r = train_and_evaluate(config, os.path.join(root, name))
                key = "flops" if fraction == fractions[-1] else f"flops x{fraction:g}"
                results[(key, condition)] = {**r, "steps": n, "train_flops": per_step * n}
                rows.append([f"{fraction:g} x budget: {condition}", n, f"{per_step * n / 1e12:.4g}",
                             f"{r['fd']:.2f}", f"{r['consistency']:.3f}"])
                print(rows[-1], flush=True)
    floor = next(iter(results.values()))["floor"]
    rows.append(["real-vs-real floor", "-", "-", f"{floor:.2f}", "-"])
    naive, deferred = results[("steps", "75% naive")], results[("steps", "75% deferred")]
    flops_part = {c: results[("flops", c)] for c in conditions}
    best = min(flops_part, key=lambda c: flops_part[c]["fd"])
    base = flops_part.get("0%")
    headline = (f"75% masking at {steps} steps: deferred FD {deferred['fd']:.2f} (consistency "
                f"{deferred['consistency']:.3f}) vs naive FD {naive['fd']:.2f} ({naive['consistency']:.3f}); "
                f"at equal FLOPs ({budget / 1e12:.4g} TFLOP) the best FD is {best} ({flops_part[best]['fd']:.2f})"
                + (f", unmasked {base['fd']:.2f}" if base else "") + f"; floor {floor:.2f}")
    holds = None if base is None or "75% deferred" not in flops_part else flops_part["75% deferred"]["fd"] <= base["fd"]
    return common.report(
        "B13", TITLE, ["run", "steps", "training TFLOPs", "Fréchet distance", "class consistency"], rows,
        headline, claim="MicroDiT: deferred masking beats naive masking, and masking saves compute at equal quality",
        holds=holds, json_path=args.json,
        extra={"results": {f"{k[0]}:{k[1]}": v for k, v in results.items()}, "flops_per_step": flops_cache,
               "finetune": args.finetune, "num_per_class": num_per_class, "size": size})


if __name__ == "__main__":
    main()
