r"""REPA on digits: Fréchet distance against training step, with and without alignment to maskgen's MAE.

REPA (Yu et al., arXiv 2410.06940) aligns an early hidden layer of a diffusion transformer to the
patch features of a frozen representation encoder (a 3-layer SiLU projector, negative cosine per
token, weight 0.5) and claims much faster convergence (17.5x fewer steps to SiT-XL's FID). Here
the encoder is maskgen's own MAE (`experiments/mae_digits.py`: 2x2 patches of 16x16 digits, the
same 8x8 grid as `experiments/dit_digits.py`'s tokens), trained first unless `--mae-workdir`
names one. Two `dit` runs, identical but for the alignment (block `--layer`), are evaluated by
the `generation` evaluator every `--every` steps; the headline is the ratio of the steps each
needs to reach the baseline's final FD (linear interpolation between evaluations).

    python -m benchmarks.repa_convergence                        # full: MAE small + 2 x 1500 steps
    python -m benchmarks.repa_convergence --mae-workdir runs/mae  # reuse an MAE run
    python -m benchmarks.repa_convergence --size smoke           # tiny runs: only checks the script
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "REPA on digits: FD vs training step, with and without alignment to a maskgen MAE"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def train_mae(root: str, smoke: bool) -> str:
    from maskgen import config as config_lib
    from maskgen import train as train_lib

    config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "mae_digits.py")
                                         + (":size=tiny,steps=5" if smoke else ":size=small"))
    config_lib.apply_overrides(config, ["evals.probe.every=-1", "evals.reconstruction.every=-1"])
    workdir = os.path.join(root, "mae")
    train_lib.train(config, workdir)
    return workdir


def fd_curve(workdir: str) -> list[tuple[int, float, float]]:
    """(step, FD, class consistency) of every generation evaluation of a run."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "generation/frechet_distance_digits" in line]
    return [(r["step"], r["generation/frechet_distance_digits"], r["generation/class_consistency"]) for r in rows]


def steps_to_reach(curve, target: float) -> float | None:
    """The first step at which the FD curve reaches `target`, interpolated linearly between evaluations."""
    previous = None
    for step, fd, _ in curve:
        if fd <= target:
            if previous is None or previous[1] == fd:
                return float(step)
            (s0, f0), (s1, f1) = previous, (step, fd)
            return s0 + (f0 - target) / (f0 - f1) * (s1 - s0)
        previous = (step, fd)
    return None


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--mae-workdir", default=None, help="a trained MAE digits run (default: train one)")
    p.add_argument("--steps", type=int, default=None, help="steps of each dit run (default 1500; smoke 4)")
    p.add_argument("--every", type=int, default=None, help="evaluate every N steps (default steps/6; smoke 2)")
    p.add_argument("--layer", type=int, default=2, help="the aligned backbone block (of 4 at size small)")
    p.add_argument("--weight", type=float, default=0.5, help="REPA's lambda")
    p.add_argument("--num-per-class", type=int, default=None, help="samples per class (default 50; smoke 2)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    steps = args.steps or (4 if smoke else 1500)
    every = args.every or max(1, steps // 6)
    num_per_class = args.num_per_class or (2 if smoke else 50)

    from absl import flags

    from maskgen import config as config_lib
    from maskgen import train as train_lib

    flags.FLAGS.mark_as_parsed()
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        mae = args.mae_workdir or train_mae(root, smoke)
        for name, repa in (("baseline", ""), ("REPA", mae)):
            arg = f"size={'tiny' if smoke else 'small'},steps={steps}" + (f",repa={repa},repa_layer={args.layer}"
                                                                          if repa else "")
            config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "dit_digits.py") + ":" + arg)
            config_lib.apply_overrides(config, [f"evals.generation.every={every}", f"repa.weight={args.weight}",
                                                f"evals.generation.num_per_class={num_per_class}"])
            start = time.perf_counter()
            workdir = os.path.join(root, name)
            train_lib.train(config, workdir)
            seconds[name] = time.perf_counter() - start
            curves[name] = fd_curve(workdir)
            print(name, curves[name], flush=True)
    target = curves["baseline"][-1][1]
    base_steps = steps_to_reach(curves["baseline"], target)
    repa_steps = steps_to_reach(curves["REPA"], target)
    ratio = None if not repa_steps else base_steps / repa_steps
    rows = []
    for (step, fd, cc), (_, fd_r, cc_r) in zip(curves["baseline"], curves["REPA"]):
        rows.append([step, f"{fd:.2f}", f"{cc:.3f}", f"{fd_r:.2f}", f"{cc_r:.3f}"])
    headline = (f"steps to the baseline's final FD {target:.2f}: baseline {base_steps:.0f}, REPA "
                + (f"{repa_steps:.0f} ({ratio:.2f}x fewer)" if repa_steps else "never reached")
                + f"; final FD with REPA {curves['REPA'][-1][1]:.2f}")
    return common.report("B14", TITLE,
                         ["step", "FD baseline", "consistency baseline", "FD REPA", "consistency REPA"], rows,
                         headline, ratio=ratio, claim="REPA: much faster convergence (17.5x on SiT-XL/ImageNet)",
                         holds=None if ratio is None else ratio > 1.0, json_path=args.json,
                         extra={"curves": curves, "seconds": seconds, "layer": args.layer, "weight": args.weight,
                                "num_per_class": num_per_class, "mae_workdir": args.mae_workdir or "(trained)"})


if __name__ == "__main__":
    main()
