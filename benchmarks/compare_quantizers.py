"""Trains the digits tokenizer with each quantizer on the same budget and prints a comparison table.

    python benchmarks/compare_quantizers.py                  # 4 runs of experiments/tokenizer_digits.py
    python benchmarks/compare_quantizers.py --steps 300 --out docs/tokenizers_table.md
    python benchmarks/compare_quantizers.py --quantizers fsq,rvq          # only some rows

Each run is `maskgen train --config experiments/tokenizer_digits.py:quantizer=Q` (same steps,
batch, model and data), evaluated on the 359 held-out digits: PSNR, codebook usage, perplexity,
and the Fréchet distance on features of the digit classifier trained in maskgen. Training time
is the wall time of the training loop (compile included), from the run's log.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(quantizer: str, steps: int | None, workdir: str) -> dict:
    arg = f"quantizer={quantizer}" + (f",steps={steps}" if steps else "")
    cmd = [sys.executable, "-m", "maskgen", "train", "--config", f"{REPO}/experiments/tokenizer_digits.py:{arg}",
           "--workdir", workdir]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    wall = time.perf_counter() - start
    train_s = float(re.search(r"training finished: \d+ steps in ([\d.]+)s", result.stderr).group(1))
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = {k.split("/", 1)[1]: v for row in rows for k, v in row.items() if k.startswith("reconstruction/")}
    return {"quantizer": quantizer, "train_s": train_s, "wall_s": wall, **evals}


def real_data_floor() -> float:
    """Fréchet distance between the real train and test digits on the same classifier features."""
    import numpy as np

    from maskgen.perception.digit_classifier import get_digit_classifier, load_digits_split
    from maskgen.perception.frechet import feature_statistics, frechet_distance

    classifier = get_digit_classifier(None)
    stats = []
    for split in ("train", "test"):
        images, _ = load_digits_split(split, 16)
        stats.append(feature_statistics(np.asarray(classifier.features(images), np.float64)))
    return frechet_distance(*stats[0], *stats[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--quantizers", default="vq,fsq,lfq,rvq")
    parser.add_argument("--workdir", default="/tmp/maskgen_compare_quantizers")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    parser.add_argument("--floor-only", action="store_true", help="only the real-train-vs-real-test distance")
    args = parser.parse_args()
    floor = f"real train vs real test digits, same features: Fréchet distance {real_data_floor():.2f}"
    if args.floor_only:
        print(floor)
        return
    rows = []
    for q in args.quantizers.split(","):
        workdir = os.path.join(args.workdir, q)
        if os.path.exists(workdir):
            subprocess.run(["rm", "-rf", workdir], check=True)
        rows.append(run_one(q, args.steps, workdir))
        print(f"done {q}: {rows[-1]}", file=sys.stderr)
    lines = [
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"command: python benchmarks/compare_quantizers.py{' --steps ' + str(args.steps) if args.steps else ''}"
        f"{' --quantizers ' + args.quantizers if args.quantizers != 'vq,fsq,lfq,rvq' else ''}",
        "",
        "| quantizer | codes | PSNR (dB) | codebook usage | perplexity | Fréchet distance (digit features) | train time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        codes = "2 x 256" if r["quantizer"] == "rvq" else "256"
        lines.append(f"| {r['quantizer']} | {codes} | {r.get('psnr', float('nan')):.2f} | "
                     f"{r.get('codebook_usage', float('nan')):.3f} | {r.get('perplexity', float('nan')):.1f} | "
                     f"{r.get('frechet_distance_digits', float('nan')):.3f} | {r['train_s']:.0f} |")
    lines += ["", floor]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
