r"""MaskGIT decoding: mask schedules x step counts, scored by class consistency and Fréchet distance.

MaskGIT (Chang et al., arXiv 2202.04200, Sec. 4.4 / Fig. 3) compares mask schedules; this runs the
same comparison on a trained digits run (e.g. the one `maskgen demo` writes) with the `generation`
evaluator: for each schedule and number of decoding steps it samples `--num-per-class` digits of
every class and prints class consistency (digit classifier accuracy on the samples) and the
Fréchet distance to the held-out digits, next to the real-vs-real floor.

  python benchmarks/maskgit_schedules.py --workdir runs/demo/maskgit
  python benchmarks/maskgit_schedules.py --workdir runs/demo/maskgit --schedules cosine --steps 8 --cfg 2.0
  python benchmarks/maskgit_schedules.py --workdir runs/demo/maskgit --schedules cosine --steps 8 --policy random
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo/maskgit")
    parser.add_argument("--schedules", default="cosine,linear,square")
    parser.add_argument("--steps", default="4,8,16")
    parser.add_argument("--num-per-class", type=int, default=100)
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale (default: the run's config)")
    parser.add_argument("--policy", default=None, help="confidence | random (default: the run's config)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax

    from maskgen.evaluators.generation import Generation
    from maskgen.generate import GeneratorHandle

    handle = GeneratorHandle(args.workdir)
    print(f"# {args.workdir} (step {handle.step}); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, jax {jax.__version__}")
    defaults = handle.settings()
    print(f"# {args.num_per_class} samples per class, seed {args.seed}, "
          f"cfg {defaults['cfg_scale'] if args.cfg is None else args.cfg}, policy {args.policy or defaults['policy']}")
    print(f"{'schedule':<10s} {'steps':>5s} {'class consistency':>18s} {'Fréchet (digits)':>17s} {'floor':>7s} {'time':>7s}")
    rows = []
    for schedule in args.schedules.split(","):
        for steps in (int(s) for s in args.steps.split(",")):
            decode = {"schedule": schedule, "num_steps": steps}
            if args.cfg is not None:
                decode["cfg_scale"] = args.cfg
            if args.policy is not None:
                decode["policy"] = args.policy
            start = time.perf_counter()
            evaluator = Generation(num_per_class=args.num_per_class, seed=args.seed, decode=decode,
                                   trajectory_samples=0, grid_columns=1)
            scalars = evaluator.run(handle.ctx).scalars
            row = {"schedule": schedule, "steps": steps, **scalars, "seconds": time.perf_counter() - start}
            rows.append(row)
            print(f"{schedule:<10s} {steps:>5d} {row['class_consistency']:>18.3f} "
                  f"{row['frechet_distance_digits']:>17.3f} {row['frechet_distance_digits_floor']:>7.3f} "
                  f"{row['seconds']:>6.1f}s", flush=True)
    return rows


if __name__ == "__main__":
    main()
