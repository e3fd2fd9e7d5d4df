"""Runs every benchmark (B1-B22) and prints one summary table: `python -m benchmarks.run`.

Each benchmark runs in its own child process (its own XLA flags, thread pools and memory peak),
prints its full table as it goes, and leaves a JSON result that this runner collects. On a 2-core
CPU the whole set takes about 12 minutes; `docs/benchmarks.md` holds a run and explains it.

    python -m benchmarks.run                      # everything, default sizes
    python -m benchmarks.run --only B2,B5         # a subset (B22, hours at the default size, only this way)
    python -m benchmarks.run --size smoke         # smallest shapes: checks the scripts run
    python -m benchmarks.run --out results.md     # also write the tables as Markdown

The PyTorch peers of B3 need torch (`pip install -e '.[bench]'`); without it B3 times maskgen alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# id: (module under benchmarks/, what it measures)
BENCHMARKS = {
    "B1": ("mae_encoder_visible_only", "MAE encoder on visible patches vs all patches, train step"),
    "B2": ("maskgit_vs_autoregressive", "MaskGIT 8-step decode vs KV-cached autoregressive decode"),
    "B3": ("train_step_vs_pytorch", "masked-transformer train step vs PyTorch (timm / torch.nn)"),
    "B4": ("flop_utilization", "train-step FLOP/s vs the measured matmul peak"),
    "B5": ("sampling_precision", "precision-safe sampling vs float32 sampling in iterative_decode"),
    "B6": ("input_pipeline", "grain input pipeline vs train-step consumption"),
    "B7": ("tokenizer_throughput", "tokenizer encode+decode images/s per quantizer"),
    "B8": ("memory", "train-step memory with/without remat; the demo's peak RSS"),
    "B9": ("save_guard", "checkpoint guard (finite check + checksums) vs the train step"),
    "B10": ("masked_diffusion", "masked diffusion vs AR on text: likelihood, sampling precision, sampler speed"),
    "B11": ("maskgit_frontier", "MaskGIT decoding on the digits demo: Fréchet distance vs class consistency"),
    "B12": ("diffusion_samplers", "diffusion samplers vs NFE on Gaussian / mixture data (exact network)"),
    "B13": ("microdit_masking", "MicroDiT patch masking on digits: deferred vs naive; quality vs training FLOPs"),
    "B14": ("repa_convergence", "REPA on digits: Fréchet distance vs training step, with and without alignment"),
    "B15": ("mar_vs_maskgit", "MAR (diffusion head) vs MaskGIT (VQ + cross-entropy) on digits at equal budget"),
    "B16": ("dit_samplers", "diffusion samplers on a trained digits DiT: quality vs network evaluations"),
    "B17": ("codec_bitrate", "RVQ speech codec: reconstruction vs bitrate (levels), with and without quantizer dropout"),
    "B18": ("ssast_pretraining", "SSAST on speech: probe and fine-tune accuracy vs from-scratch and raw log-mel"),
    "B19": ("specmaskgit_rtf", "SpecMaskGIT on speech: word consistency, Frechet distance and real-time factor vs steps"),
    "B20": ("magnet_vs_ar", "MAGNeT vs AR on codec tokens: quality, calls, wall time at batch 1/16; rescoring, hybrid"),
    "B21": ("maskgct_voice", "MaskGCT voice prompting on held-out voices: speaker similarity, word accuracy, steps"),
    "B22": ("mae_family", "MAE variants (ColorMAE, HPM, GMML, MaskAlign, DMAE, MR-MAE) vs plain MAE: probe, fine-tune, step cost"),
}
# Hours at the default size (a sweep of trained runs): run by default only at --size smoke, else with --only.
ON_REQUEST = ("B22",)


def run_one(bench_id: str, size: str, json_dir: str) -> dict:
    module, title = BENCHMARKS[bench_id]
    json_path = os.path.join(json_dir, f"{bench_id}.json")
    cmd = [sys.executable, "-m", f"benchmarks.{module}", "--size", size, "--json", json_path]
    print(f"\n=== {bench_id} ({title}): {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO)
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(json_path):
        return {"id": bench_id, "title": title, "headline": f"FAILED (exit {proc.returncode})", "holds": None,
                "failed": True, "seconds": seconds, "claim": ""}
    with open(json_path) as f:
        result = json.load(f)
    result["seconds"] = seconds
    return result


def summary_table(results: list[dict]) -> str:
    lines = ["| id | claim | result | holds | time (s) |", "|---|---|---|---|---|"]
    for r in results:
        holds = {True: "yes", False: "**no**", None: "-"}[r.get("holds")]
        lines.append(f"| {r['id']} | {r.get('claim') or '-'} | {r['headline']} | {holds} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def full_tables(results: list[dict]) -> str:
    out = []
    for r in results:
        if r.get("failed"):
            continue
        out.append(f"### {r['id']}: {r['title']}\n")
        out.append("| " + " | ".join(r["header"]) + " |")
        out.append("|" + "---|" * len(r["header"]))
        out.extend("| " + " | ".join(row) + " |" for row in r["rows"])
        out.append(f"\n{r['headline']}\n")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("smoke", "default"), default="default")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. B1,B3 (default: all)")
    parser.add_argument("--out", default=None, help="write the summary and every table to this Markdown file")
    args = parser.parse_args(argv)
    ids = [s.strip().upper() for s in args.only.split(",") if s.strip()] or [
        i for i in BENCHMARKS if args.size == "smoke" or i not in ON_REQUEST]
    unknown = [i for i in ids if i not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark id(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as json_dir:
        results = [run_one(i, args.size, json_dir) for i in ids]
    total = time.perf_counter() - start
    from benchmarks.common import machine_line

    machine = results[0]["machine"] if results and "machine" in results[0] else None
    header = f"{machine_line(machine) if machine else machine_line()}\nsize: {args.size}, total {total:.0f} s"
    print(f"\n=== summary\n{header}\n{summary_table(results)}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"{header}\n\n{summary_table(results)}\n\n{full_tables(results)}")
        print(f"wrote {args.out}")
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
