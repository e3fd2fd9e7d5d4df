r"""B11: MaskGIT decoding on the digits demo: Fréchet distance against class consistency, as a frontier.

MaskGIT (Chang et al., arXiv 2202.04200) samples a token at every masked position and keeps the
most confident ones, with Gumbel noise of scale `choice_temperature * (1 - r)` on the confidence
(r = (t + 1) / T: the noise is annealed to 0 over the steps; 4.5 in the paper). Low noise keeps
the model's favourite tokens, so samples of one class look alike; more noise, a higher sampling
temperature or weaker guidance give more diverse samples, but more of them miss their class. This
sweeps those three knobs on a trained digits run (default: the one `maskgen demo` writes) with the
`generation` evaluator (the code path of `maskgen eval` and the demo's own numbers), and prints
every point's Fréchet distance (digit-classifier features, vs the held-out digits) and class
consistency, and which points are on the Pareto frontier (no other point has both a lower
distance and a higher consistency).

Each point samples `--num-per-class` digits of every class with fixed seeds (`--seeds`, default 0;
the numbers of several seeds are averaged, with half their range as the spread). Its settings are
MaskGIT's (`BASE`: 8 steps, cosine schedule, confidence order, choice temperature 4.5, temperature
1, no guidance, whatever the run's `config.sampling` holds) with the point's changes. Two
reference rows put the numbers in scale: the real-vs-real floor (training digits vs held-out
digits) and the tokenizer's own ceiling (the training digits encoded and decoded by the
tokenizer, vs the held-out digits: what a perfect token model would score).

    python -m benchmarks.maskgit_frontier --workdir runs/demo/maskgit   # ~10 min on 2 CPU cores
    python -m benchmarks.maskgit_frontier --size smoke                  # trains a tiny run, 2 points
    python -m benchmarks.maskgit_frontier --points "ct=4.5;ct=18,t=1.2;ct=4.5,cfg=2:linear"

A point is `key=value` pairs joined by commas: ct (choice temperature), t (sampling temperature),
ts (temperature schedule: constant | linear), cfg (scale[:schedule], schedule constant | linear |
cosine), policy (confidence | random | ...), steps.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

DEFAULT_WORKDIR = "runs/demo/maskgit"
# The default sweep (docs/maskgit.md holds a run): the choice temperature alone (MaskGIT's annealed
# Gumbel noise, from none to four times the paper's 4.5, and the random order, its limit), the
# sampling temperature, then guidance: constant, and rising over the steps (linear, cosine), which
# leaves the early steps, where the layout of the digit is decided, nearly unguided. 21 points, 10
# of them guided (two network passes per step).
DEFAULT_POINTS = ";".join([
    "ct=0", "ct=2", "ct=4.5", "ct=9", "ct=18", "policy=random",
    "ct=4.5,t=1.2", "ct=4.5,t=1.5", "ct=18,t=1.2", "ct=4.5,t=2,ts=linear",
    "ct=4.5,cfg=0.5", "ct=4.5,cfg=1:linear", "ct=4.5,cfg=2", "ct=4.5,cfg=1.5:linear", "ct=4.5,cfg=2:linear",
    "ct=4.5,cfg=2:cosine", "ct=9,cfg=2:linear", "ct=18,cfg=2:linear", "ct=4.5,t=1.2,cfg=2:linear",
    "ct=4.5,cfg=3:linear", "ct=18,cfg=3:linear",
])
TITLE = "MaskGIT decoding frontier on digits (Fréchet distance vs class consistency)"
SMOKE_POINTS = "ct=4.5;ct=18,t=1.2,cfg=2:linear"
# Every point starts from MaskGIT's own decoding (Sec. 3.2 / 4.1), whatever the run's config.sampling says.
BASE = dict(num_steps=8, schedule="cosine", choice_temperature=4.5, temperature=1.0, temperature_schedule="constant",
            policy="confidence", cfg_scale=1.0, cfg_schedule="constant")
KEYS = {"ct": "choice_temperature", "t": "temperature", "ts": "temperature_schedule", "policy": "policy",
        "steps": "num_steps"}


def parse_point(text: str) -> dict:
    """`ct=18,t=1.2,cfg=2:linear` -> decoding overrides for `iterative_decode`."""
    settings = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in (*KEYS, "cfg"):
            raise ValueError(f"bad point item {item!r} in {text!r}: use key=value with key in {[*KEYS, 'cfg']}")
        if key == "cfg":
            scale, _, schedule = value.partition(":")
            settings["cfg_scale"], settings["cfg_schedule"] = float(scale), schedule or "constant"
        elif key in ("ts", "policy"):
            settings[KEYS[key]] = value
        elif key == "steps":
            settings[KEYS[key]] = int(value)
        else:
            settings[KEYS[key]] = float(value)
    return settings


def describe(settings: dict, defaults: dict) -> str:
    """The point's settings in the table's words, e.g. `choice 18, temp 1.2, cfg 2 (linear)`."""
    s = {**BASE, **defaults, **settings}
    parts = ["random order" if s.get("policy") == "random" else f"choice {s['choice_temperature']:g}"]
    if s.get("policy") not in ("confidence", "random"):
        parts.append(f"policy {s['policy']}")
    temp = f"temp {s['temperature']:g}"
    if s.get("temperature_schedule", "constant") != "constant":
        temp += f" ({s['temperature_schedule']})"
    parts.append(temp)
    cfg = f"cfg {s['cfg_scale']:g}"
    if s.get("cfg_schedule", "constant") != "constant":
        cfg += f" ({s['cfg_schedule']})"
    parts.append(cfg)
    if s.get("num_steps", 8) != 8:
        parts.append(f"{s['num_steps']} steps")
    return ", ".join(parts)


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (distance, consistency) pairs: True where no other point is at least as good in both and
    better in one (lower distance, higher consistency)."""
    def dominated(i):
        d, c = points[i]
        return any(d2 <= d and c2 >= c and (d2 < d or c2 > c) for j, (d2, c2) in enumerate(points) if j != i)

    return [not dominated(i) for i in range(len(points))]


def tokenizer_ceiling(handle, num_per_class: int) -> float:
    """Fréchet distance of the tokenizer's reconstructions of the training digits vs the held-out
    ones, with the generation evaluator's features and uint8 pixels (what a perfect token model scores)."""
    import numpy as np

    from maskgen.evaluators.generation import Generation, _frechet, as_pixels

    evaluator = Generation(num_per_class=num_per_class)
    features = evaluator._feature_fn()
    train = handle.tokenizer.dataset("train", None)["image"]
    recon = np.concatenate([handle.decoder.decode(handle.tokenizer.encode(train[i:i + 256]))["images"]
                            for i in range(0, len(train), 256)])
    real = handle.ctx.reference(evaluator.real_split, None)["image"]
    return _frechet(features(as_pixels(recon, True)), features(as_pixels(real, True)))


def train_smoke_run(root: str) -> str:
    """A tiny tokenizer, its tokens and a tiny MaskGIT run (evaluators off): only for `--size smoke`."""
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.demo import EXPERIMENTS
    from maskgen.tokenize import tokenize_dataset

    tok = config_lib.load_config_file(os.path.join(EXPERIMENTS, "tokenizer_digits.py") + ":quantizer=vq,size=tiny,steps=5")
    config_lib.apply_overrides(tok, ["evals.reconstruction.every=-1"])
    train_lib.train(tok, os.path.join(root, "tokenizer"))
    tokenize_dataset(os.path.join(root, "tokenizer"), "digits", os.path.join(root, "tokens"))
    mg = config_lib.load_config_file(os.path.join(EXPERIMENTS, "maskgit_digits.py")
                                     + f":tokens={os.path.join(root, 'tokens')},size=tiny,steps=5")
    config_lib.apply_overrides(mg, ["evals.generation.every=-1"])
    train_lib.train(mg, os.path.join(root, "maskgit"))
    return os.path.join(root, "maskgit")


def sweep(workdir: str, points: list[str], num_per_class: int, seeds: list[int], batch_size: int,
          ceiling: bool = True) -> dict:
    """Every point through the `generation` evaluator, once per seed; FD and consistency are the
    means over the seeds, with half their range as the spread."""
    from maskgen.evaluators.generation import Generation
    from maskgen.generate import GeneratorHandle

    handle = GeneratorHandle(workdir)
    print(f"# {workdir} (step {handle.step}); the run's config.sampling: {describe({}, handle.settings())}; "
          f"every point starts from MaskGIT's: {describe({}, BASE)}; {num_per_class} samples per class, "
          f"seeds {seeds}", flush=True)
    rows, floor = [], None
    for text in points:
        settings = {**BASE, **parse_point(text)}
        start = time.perf_counter()
        fds, consistencies = [], []
        for seed in seeds:
            evaluator = Generation(num_per_class=num_per_class, batch_size=batch_size, seed=seed, decode=settings,
                                   trajectory_samples=0, grid_columns=1)
            scalars = evaluator.run(handle.ctx).scalars
            floor = scalars["frechet_distance_digits_floor"]
            fds.append(scalars["frechet_distance_digits"])
            consistencies.append(scalars["class_consistency"])
        row = {"point": text, "settings": describe(settings, {}), "fd": sum(fds) / len(fds),
               "fd_spread": (max(fds) - min(fds)) / 2, "consistency": sum(consistencies) / len(consistencies),
               "consistency_spread": (max(consistencies) - min(consistencies)) / 2, "fds": fds,
               "consistencies": consistencies, "seconds": time.perf_counter() - start}
        rows.append(row)
        print(f"  {row['settings']:<42s} FD {row['fd']:7.2f} ±{row['fd_spread']:.2f}  consistency "
              f"{row['consistency']:.3f} ±{row['consistency_spread']:.3f}  ({row['seconds']:.0f} s)", flush=True)
    for row, on in zip(rows, pareto([(r["fd"], r["consistency"]) for r in rows])):
        row["frontier"] = on
    return {"rows": rows, "floor": floor, "ceiling": tokenizer_ceiling(handle, num_per_class) if ceiling else None,
            "defaults": describe({}, handle.settings()), "step": handle.step}


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help=f"a trained MaskGIT digits run (default: {DEFAULT_WORKDIR}; "
                   "--size smoke trains a tiny one when none is given)")
    p.add_argument("--points", default=None, help="points separated by ';' (see the module docstring)")
    p.add_argument("--num-per-class", type=int, default=None, help="samples per class (default 100; smoke 2)")
    p.add_argument("--seeds", default="0", help="comma-separated sampling seeds; a point's numbers are their means")
    p.add_argument("--batch-size", type=int, default=250)
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    points = [s.strip() for s in (args.points or (SMOKE_POINTS if smoke else DEFAULT_POINTS)).split(";") if s.strip()]
    for text in points:
        parse_point(text)  # a typo fails before anything runs
    num_per_class = args.num_per_class or (2 if smoke else 100)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or (train_smoke_run(tmp) if smoke else DEFAULT_WORKDIR)
        if not os.path.isdir(workdir):
            if args.workdir:
                p.error(f"{workdir} is not a trained MaskGIT run: run `maskgen demo --workdir runs/demo` first")
            # `python -m benchmarks.run` on a checkout without the demo: say so, do not fail the set.
            return common.report("B11", TITLE, ["settings", "Fréchet distance", "class consistency", "on frontier"],
                                 [["(no trained run)", "-", "-", "-"]],
                                 f"skipped: no trained run at {workdir} (run `maskgen demo --workdir runs/demo`)",
                                 json_path=args.json)
        # The ceiling compiles the tokenizer's encoder too: skipped at smoke size, which only checks the script runs.
        result = sweep(workdir, points, num_per_class, seeds, args.batch_size, ceiling=not smoke)
    rows = result["rows"]
    spread = len(seeds) > 1
    table = [[r["settings"], f"{r['fd']:.2f}" + (f" ± {r['fd_spread']:.2f}" if spread else ""),
              f"{r['consistency']:.3f}" + (f" ± {r['consistency_spread']:.3f}" if spread else ""),
              "y" if r["frontier"] else "n"] for r in rows]
    table += [["real-vs-real floor (1,438 train vs 359 held-out digits)", f"{result['floor']:.2f}", "-", "-"],
              ["tokenizer ceiling (train digits through the tokenizer vs held-out)",
               "-" if result["ceiling"] is None else f"{result['ceiling']:.2f}", "-", "-"]]
    frontier = sorted((r for r in rows if r["frontier"]), key=lambda r: r["fd"])
    best = [r for r in frontier if r["consistency"] >= 0.97]
    pick = min(best, key=lambda r: r["fd"]) if best else None
    mg = next((r for r in rows if r["point"] == "ct=4.5"), None)
    headline = (f"frontier: {len(frontier)} of {len(rows)} points; lowest FD at consistency >= 0.97: "
                + (f"{pick['fd']:.2f} ({pick['settings']}, {pick['consistency']:.3f})" if pick else "none")
                + (f"; MaskGIT's choice 4.5: FD {mg['fd']:.2f} at {mg['consistency']:.3f}" if mg else "")
                + f"; floor {result['floor']:.2f}"
                + ("" if result["ceiling"] is None else f", tokenizer ceiling {result['ceiling']:.2f}"))
    print(f"# {len(rows)} points, {num_per_class} per class, seeds {seeds}; total {time.perf_counter() - start:.0f} s")
    return common.report("B11", TITLE,
                         ["settings", "Fréchet distance", "class consistency", "on frontier"], table, headline,
                         json_path=args.json, extra={"rows": rows, "floor": result["floor"],
                                                     "ceiling": result["ceiling"], "num_per_class": num_per_class,
                                                     "seeds": seeds, "step": result["step"]})


if __name__ == "__main__":
    main()
