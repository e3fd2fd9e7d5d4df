r"""MAR against MaskGIT on the digits demo, at an equal training budget; MAR's quality against its iterations.

MAR (Li et al., arXiv 2406.11838) models continuous tokens with a per-token diffusion head; its
ablation (Table 1) finds the diffusion loss on KL tokens better than cross-entropy on VQ tokens.
This trains, with the same number of steps and the same batch size on the same 16x16 digits:

* MaskGIT (arXiv 2202.04200): `experiments/maskgit_digits.py` on the 8x8 VQ tokens of an
  `experiments/tokenizer_digits.py` run (cross-entropy on masked tokens);
* MAR on pixel patches: `experiments/mar_digits.py` (4x4 patches, continuous tokens, diffusion head);
* MAR on KL latents (`--kl`, on by default at full size): `experiments/mar_digits.py:data=latents`
  on the latents of a `tokenizer_digits.py:quantizer=kl` run, 2x2 latent patches (a 4x4 grid of
  16-value tokens, the pixel run's grid).

Each run is scored by the `generation` evaluator (the code path of `maskgen eval`): class
consistency under maskgen's digit classifier and the Fréchet distance on its features against
the held-out digits, with the real-vs-real floor, each with the run's own `config.sampling`
(MaskGIT: the demo's tuned decoding; MAR: 16 iterations, 1000 DDPM steps, CFG 2 linear). The
tokenizers' own training is not counted in the budget (each generator needs one, except MAR on
pixels). Then MAR's pixel run is sampled with 1, 2, 4, 8 and 16 iterations (MAR Fig. 6: fewer
iterations cost quality).

    python -m benchmarks.mar_vs_maskgit                     # trains everything (tens of minutes on 2 CPU cores)
    python -m benchmarks.mar_vs_maskgit --steps 800 --no-kl
    python -m benchmarks.mar_vs_maskgit --size smoke        # tiny runs, a few samples: checks the script runs
    python -m benchmarks.mar_vs_maskgit --mar-workdir runs/mar --maskgit-workdir runs/demo/maskgit  # score trained runs
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "MAR (continuous tokens, diffusion head) vs MaskGIT (VQ tokens, cross-entropy) on digits"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _train(config_spec: str, workdir: str, overrides: list[str]) -> float:
    """Trains `config_spec` (evaluators off) into `workdir`; returns the wall-clock seconds."""
    from maskgen import config as config_lib
    from maskgen import train as train_lib

    config = config_lib.load_config_file(os.path.join(EXPERIMENTS, config_spec))
    config_lib.apply_overrides(config, [f"evals.{name}.every=-1" for name in config.evals] + overrides)
    start = time.perf_counter()
    train_lib.train(config, workdir)
    return time.perf_counter() - start


def _tokenizer(root: str, quantizer: str, smoke: bool) -> str:
    """A digits tokenizer run and its dataset (`maskgen tokenize`); returns the dataset directory."""
    from maskgen.tokenize import tokenize_dataset

    run, out = os.path.join(root, f"tokenizer_{quantizer}"), os.path.join(root, f"data_{quantizer}")
    size = ",size=tiny,steps=5" if smoke else ""
    _train(f"tokenizer_digits.py:quantizer={quantizer}{size}", run, [])
    tokenize_dataset(run, "digits", out)
    return out


def train_runs(root: str, steps: int, batch: int, kl: bool, smoke: bool, given: dict | None = None) -> tuple[dict, dict]:
    """Trains the contenders with the same steps and batch, except those `given` ({name: trained
    workdir}); returns ({name: workdir}, {name: seconds of the runs trained here})."""
    size = "size=tiny," if smoke else ""
    budget = [f"total_steps={steps}", f"batch_size={batch}"]
    runs, seconds = dict(given or {}), {}
    maskgit, mar = "MaskGIT (VQ tokens, cross-entropy)", "MAR (pixel patches, diffusion head)"
    if maskgit not in runs:
        tokens = _tokenizer(root, "vq", smoke)
        runs[maskgit] = os.path.join(root, "maskgit")
        seconds[maskgit] = _train(f"maskgit_digits.py:{size}tokens={tokens}", runs[maskgit], budget)
    if mar not in runs:
        runs[mar] = os.path.join(root, "mar_pixels")
        seconds[mar] = _train(f"mar_digits.py:{size}data=digits".rstrip(","), runs[mar], budget)
    if kl:
        latents = _tokenizer(root, "kl", smoke)
        name = "MAR (KL latents, diffusion head)"
        runs[name] = os.path.join(root, "mar_kl")
        seconds[name] = _train(f"mar_digits.py:{size}data=latents,latents_dir={latents}", runs[name],
                               budget + ["model.patch_size=2"])
    return runs, seconds


@functools.lru_cache(maxsize=None)
def _handle(workdir: str):
    """One restored run per workdir: its compiled `generate` is reused by settings that repeat."""
    from maskgen.generate import GeneratorHandle

    return GeneratorHandle(workdir)


def score(workdir: str, num_per_class: int, seed: int, batch_size: int, decode: dict | None = None) -> dict:
    """The generation evaluator on a trained run: class consistency, FD, its floor, and the seconds."""
    from maskgen.evaluators.generation import Generation

    handle = _handle(workdir)
    start = time.perf_counter()
    evaluator = Generation(num_per_class=num_per_class, batch_size=batch_size, seed=seed, decode=decode or {},
                           trajectory_samples=0, grid_columns=1)
    scalars = evaluator.run(handle.ctx).scalars
    return {"consistency": scalars["class_consistency"], "fd": scalars["frechet_distance_digits"],
            "floor": scalars["frechet_distance_digits_floor"], "seconds": time.perf_counter() - start,
            "sampling": handle.settings(**(decode or {}))}


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="training steps of every contender (default 1500; smoke 5)")
    p.add_argument("--batch", type=int, default=64, help="batch size of every contender (default 64; smoke 16)")
    p.add_argument("--kl", dest="kl", action="store_true", default=None, help="also MAR on KL latents (default at full size)")
    p.add_argument("--no-kl", dest="kl", action="store_false")
    p.add_argument("--iterations", default=None, help="MAR iteration counts to compare (default 1,2,4,8,16; smoke 1,4)")
    p.add_argument("--num-per-class", type=int, default=None, help="samples per class (default 100; smoke 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250, help="generation batch")
    p.add_argument("--workdir", default=None, help="where the runs are written (default: a temporary directory)")
    p.add_argument("--mar-workdir", default=None, help="score this trained MAR run instead of training one")
    p.add_argument("--maskgit-workdir", default=None, help="score this trained MaskGIT run instead of training one")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    steps = args.steps or (5 if smoke else 1500)
    batch = 16 if smoke and args.batch == 64 else args.batch
    kl = (not smoke) if args.kl is None else args.kl
    iterations = [int(x) for x in (args.iterations or ("1,4" if smoke else "1,2,4,8,16")).split(",") if x.strip()]
    num_per_class = args.num_per_class or (2 if smoke else 100)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        given = {name: workdir for name, workdir in (("MaskGIT (VQ tokens, cross-entropy)", args.maskgit_workdir),
                                                    ("MAR (pixel patches, diffusion head)", args.mar_workdir)) if workdir}
        runs, seconds = train_runs(root, steps, batch, kl, smoke, given)
        results = {name: score(workdir, num_per_class, args.seed, args.batch_size) for name, workdir in runs.items()}
        for name, r in results.items():
            print(f"  {name:<40s} consistency {r['consistency']:.3f}  FD {r['fd']:.2f}  ({r['seconds']:.0f} s to "
                  f"sample and score)", flush=True)
        mar_run = runs["MAR (pixel patches, diffusion head)"]
        by_iterations = {}
        for t in iterations:
            by_iterations[t] = score(mar_run, num_per_class, args.seed, args.batch_size, {"num_steps": t})
            r = by_iterations[t]
            print(f"  MAR pixels, {t:3d} iterations: consistency {r['consistency']:.3f}  FD {r['fd']:.2f}", flush=True)
    floor = next(iter(results.values()))["floor"]
    table = [[name, f"{steps} x {batch}" if name in seconds else "(given run)",
              f"{seconds[name]:.0f}" if name in seconds else "-", f"{r['consistency']:.3f}", f"{r['fd']:.2f}"]
             for name, r in results.items()]
    table += [[f"MAR pixels, {t} iteration{'s' if t > 1 else ''}", "", "", f"{r['consistency']:.3f}", f"{r['fd']:.2f}"]
              for t, r in by_iterations.items()]
    table.append(["real-vs-real floor (train vs held-out digits)", "", "", "-", f"{floor:.2f}"])
    mar, maskgit = results["MAR (pixel patches, diffusion head)"], results["MaskGIT (VQ tokens, cross-entropy)"]
    headline = (f"at {steps} steps x batch {batch}: MAR (pixels) consistency {mar['consistency']:.3f}, FD "
                f"{mar['fd']:.2f}; MaskGIT consistency {maskgit['consistency']:.3f}, FD {maskgit['fd']:.2f}"
                + "".join(f"; {name}: {r['consistency']:.3f}, FD {r['fd']:.2f}" for name, r in results.items()
                          if name.startswith("MAR (KL"))
                + "; MAR FD by iterations " + ", ".join(f"{t}: {r['fd']:.2f}" for t, r in by_iterations.items())
                + f"; floor {floor:.2f}")
    print(f"# {num_per_class} samples per class, seed {args.seed}; total {time.perf_counter() - start:.0f} s")
    return common.report(
        "B15", TITLE, ["run", "steps x batch", "train s", "class consistency", "Fréchet distance"], table, headline,
        json_path=args.json,
        extra={"steps": steps, "batch": batch, "num_per_class": num_per_class, "seed": args.seed, "floor": floor,
               "results": {k: {kk: vv for kk, vv in v.items() if kk != "sampling"} | {"sampling": str(v["sampling"])}
                           for k, v in results.items()},
               "by_iterations": {str(t): {"consistency": r["consistency"], "fd": r["fd"]}
                                 for t, r in by_iterations.items()},
               "train_seconds": seconds})


if __name__ == "__main__":
    main()
