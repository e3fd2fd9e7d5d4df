r"""B16: diffusion samplers on a trained digits model: quality against network evaluations.

B12 measures the samplers' discretisation error with an exact network; this measures what it
costs a trained one. A `dit` run (`experiments/dit_digits.py`: SiT, rectified flow, on 2x2 pixel
patches of the 16x16 digits) samples every class with each sampler of `maskgen.diffusion`
(`euler`, `heun`, `ddim`, `ddpm`) at several step counts, through the `generation` evaluator (the
code path of `maskgen eval`): Fréchet distance on digit-classifier features against the held-out
digits, and class consistency. NFE counts network calls per sample (Heun: 2 per step but the last;
classifier-free guidance evaluates each call on a doubled batch, counted once).

On rectified flow, DDIM and Euler are the same step (the library computes Euler in DDIM's form),
so their rows agree to float rounding; `ddpm` is the ancestral sampler of the same Gaussian path.

    python -m benchmarks.dit_samplers --workdir /tmp/dit      # a trained dit digits run
    python -m benchmarks.dit_samplers --size smoke            # trains a tiny run, 2 points
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "diffusion samplers on a trained digits DiT: quality vs network evaluations"
EXPERIMENT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "dit_digits.py")
SAMPLERS = ("euler", "heun", "ddim", "ddpm")


def train_smoke_run(root: str) -> str:
    from maskgen import config as config_lib
    from maskgen import train as train_lib

    config = config_lib.load_config_file(f"{EXPERIMENT}:size=tiny,steps=4")
    config_lib.apply_overrides(config, ["evals.generation.every=-1"])
    workdir = os.path.join(root, "dit")
    train_lib.train(config, workdir)
    return workdir


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="a trained dit digits run (--size smoke trains a tiny one)")
    p.add_argument("--steps", default=None, help="comma-separated step counts (default 4,8,16; smoke 2)")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated samplers")
    p.add_argument("--num-per-class", type=int, default=None, help="samples per class (default 50; smoke 2)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    steps = [int(s) for s in (args.steps or ("2" if smoke else "4,8,16")).split(",")]
    samplers = [s.strip() for s in args.samplers.split(",")]
    for s in samplers:
        if s not in SAMPLERS:
            p.error(f"unknown sampler {s!r}; valid: {', '.join(SAMPLERS)}")
    num_per_class = args.num_per_class or (2 if smoke else 50)
    header = ["sampler", "steps", "NFE", "Fréchet distance", "class consistency"]
    if not smoke and not (args.workdir and os.path.isdir(args.workdir)):
        # `python -m benchmarks.run` without a trained run: say so, do not fail the set.
        return common.report("B16", TITLE, header, [["(no trained run)", "-", "-", "-", "-"]],
                             "skipped: give --workdir, a trained run of experiments/dit_digits.py", json_path=args.json)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from maskgen.evaluators.generation import Generation
    from maskgen.generate import GeneratorHandle

    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or train_smoke_run(tmp)
        handle = GeneratorHandle(workdir)
        base = handle.settings()
        print(f"# {workdir} (step {handle.step}); sampling settings {base}; {num_per_class} per class", flush=True)
        floor = None
        for sampler in samplers:
            for n in steps:
                settings = {**base, "sampler": sampler, "num_steps": n}
                start = time.perf_counter()
                evaluator = Generation(num_per_class=num_per_class, seed=0, decode=settings, trajectory_samples=0,
                                       grid_columns=1)
                result = evaluator.run(handle.ctx)
                scalars = result.scalars
                floor = scalars["frechet_distance_digits_floor"]
                nfe = 2 * n - 1 if sampler == "heun" else n
                results.append({"sampler": sampler, "steps": n, "nfe": nfe, "fd": scalars["frechet_distance_digits"],
                                "consistency": scalars["class_consistency"],
                                "seconds": time.perf_counter() - start})
                rows.append([sampler, n, nfe, f"{results[-1]['fd']:.2f}", f"{results[-1]['consistency']:.3f}"])
                print(rows[-1], flush=True)
    rows.append(["real-vs-real floor", "-", "-", f"{floor:.2f}", "-"])
    by = {(r["sampler"], r["nfe"]): r for r in results}
    parts = []
    for r in results:
        if r["sampler"] == "heun" and ("euler", r["nfe"] + 1) in by:
            e = by[("euler", r["nfe"] + 1)]
            parts.append(f"NFE {r['nfe']}/{e['nfe']}: Heun FD {r['fd']:.2f} vs Euler {e['fd']:.2f}")
    best = min(results, key=lambda r: r["fd"])
    headline = (f"best FD {best['fd']:.2f} ({best['sampler']}, {best['steps']} steps, NFE {best['nfe']}); "
                + ("; ".join(parts) if parts else "no Heun/Euler pair at equal NFE") + f"; floor {floor:.2f}")
    return common.report("B16", TITLE, header, rows,
                         headline, json_path=args.json,
                         extra={"results": results, "num_per_class": num_per_class, "workdir": args.workdir})


if __name__ == "__main__":
    main()
