r"""B10: masked diffusion (MDLM / MD4) vs an autoregressive model on the same text and budget:
likelihood, sampling precision, and sampler speed.

Claims tested (docs/masked_diffusion.md has a run and discusses it):
  (a) MDLM (Sahoo et al., arXiv 2406.07524, Table 1): an MDM's perplexity bound comes within
      ~10-15% of an AR model trained at the same budget (OWT: <= 22.98 vs 17.54 is ~31%; LM1B ~15%).
  (b) Zheng et al. (arXiv 2409.02908, Sec. 5): sampling categoricals with float32 Gumbel noise
      lowers the effective temperature, more so as the number of steps grows, so Gen PPL falls
      (looks better) while the samples' unigram entropy falls too; 64-bit uniforms remove it. Swept
      for maskgen's split draw ("ancestral") and MDLM's joint (V+1)-way draw ("ancestral_joint").
  (c) Zheng et al.: the first-hitting sampler (one token per step, L steps) matches the ancestral
      sampler's quality, and its reported ~20x speedup comes from skipping the L x V categorical
      draws at large V (GPT-2, V ~ 50k); at V = 257 (bytes) it should be ~1x. MDLM: caching p(x0)
      when a step changed nothing saves network calls when T >> L.

Method: two trained runs on the same text (`--mdm-workdir`, `--ar-workdir`, e.g. the `size=cpu`
runs of experiments/mdm_text.py), or, without them, two tiny runs trained here first. Everything
is measured in this one process; Gen PPL is each sample's NLL under the AR run (exp of summed nats
over summed tokens), with the mean per-sample unigram entropy beside it. Wall time: each whole
decode is one jitted call (compiled before timing; compile time excluded), alternated round by
round between samplers, medians. NFE is what `iterative_decode` reports (network calls made).

    python -m benchmarks.masked_diffusion --mdm-workdir runs/mdm_text --ar-workdir runs/ar_text
    python -m benchmarks.masked_diffusion --mdm-workdir ... --ar-workdir ... --parts c --num-samples 8
    python -m benchmarks.masked_diffusion --mdm-workdir ... --ar-workdir ... --parts b --steps 16,128,1024
    python -m benchmarks.masked_diffusion --size smoke      # trains two 10-step runs first
"""

from __future__ import annotations

import math
import os
import tempfile

import jax
import numpy as np

from benchmarks import common

BENCH_ID = "B10"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# size: (training steps when no runs are given, samples per setting, step counts of the precision
# sweep, validation batches for the likelihood, timed repeats)
SIZES = {"smoke": (10, 4, (4, 16), 1, 1), "default": (300, 32, (16, 64, 256, 1024), None, 2)}


def train_tiny_runs(root: str, steps: int) -> tuple[str, str]:
    """Trains experiments/mdm_text.py:size=tiny for the MDM and the AR model (evaluators off)."""
    from maskgen import config as config_lib
    from maskgen.train import train

    dirs = []
    for model in ("mdm", "ar"):
        config = config_lib.load_config_file(
            f"{os.path.join(REPO, 'experiments', 'mdm_text.py')}:size=tiny,model={model},steps={steps}")
        config_lib.apply_overrides(config, ["evals.likelihood.every=-1", "evals.samples.every=-1"])
        workdir = os.path.join(root, model)
        train(config, workdir)
        dirs.append(workdir)
    return dirs[0], dirs[1]


def likelihood(handle, limit) -> dict[str, float]:
    from maskgen.evaluators.text import TextLikelihood

    return TextLikelihood(split="validation", limit=limit, seed=0).run(handle.ctx).scalars


def sample(handle, num: int, seed: int, **settings) -> dict:
    seq_len = int(tuple(handle.info["token_shape"])[-1])
    batch = {"tokens": np.zeros((num, seq_len), np.int32), "known": np.zeros((num, seq_len), bool)}
    return handle.apply("generate", batch, seed, **settings)


def quality(scorer, tokens: np.ndarray) -> tuple[float, float]:
    """(Gen PPL under the AR run, mean unigram entropy in nats)."""
    from maskgen.evaluators.text import score_texts, unigram_entropy

    return score_texts(scorer, tokens, 0, 64)["gen_ppl"], float(np.mean(unigram_entropy(tokens)))


def main(argv=None) -> int:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--mdm-workdir", default="", help="a trained masked_diffusion run (default: train a tiny one)")
    p.add_argument("--ar-workdir", default="", help="a trained autoregressive run on the same data")
    p.add_argument("--parts", default="a,b,c", help="which parts to run: a (likelihood), b (precision), c (speed)")
    p.add_argument("--num-samples", type=int, default=None, help="samples per setting (default per size)")
    p.add_argument("--steps", default="", help="comma-separated step counts of the (b) sweep (default per size)")
    args = p.parse_args(argv)
    train_steps, num, sweep_steps, limit, repeats = SIZES[args.size]
    repeats, num = args.repeats or repeats, args.num_samples or num
    if args.steps:
        sweep_steps = common.positive_ints(p, "--steps", args.steps)
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    if not parts or parts - {"a", "b", "c"}:
        p.error(f"--parts takes a comma-separated subset of a,b,c; got {args.parts!r}")

    from maskgen.runs import RunHandle

    headline, extra = [], {"num_samples": num}
    with tempfile.TemporaryDirectory() as tmp:
        mdm_dir, ar_dir = args.mdm_workdir, args.ar_workdir
        if not (mdm_dir and ar_dir):
            mdm_dir, ar_dir = train_tiny_runs(tmp, train_steps)
        mdm, ar = RunHandle(mdm_dir), RunHandle(ar_dir)
        seq_len = extra["seq_len"] = int(tuple(mdm.info["token_shape"])[-1])
        rows = []
        print(f"runs: {mdm_dir} (MDM), {ar_dir} (AR); {num} samples per setting", flush=True)

        if "a" in parts:  # likelihood at equal budget
            lik_mdm, lik_ar = likelihood(mdm, limit), likelihood(ar, limit)
            extra["ppl_ratio"] = lik_mdm["perplexity"] / lik_ar["perplexity"]
            rows.append(["(a) validation likelihood", "MDM (ELBO bound)", f"{lik_mdm['bits_per_token']:.3f} bits/token",
                         f"PPL <= {lik_mdm['perplexity']:.2f}", "", ""])
            rows.append(["(a) validation likelihood", "AR (exact)", f"{lik_ar['bits_per_token']:.3f} bits/token",
                         f"PPL {lik_ar['perplexity']:.2f}", "", ""])
            headline.append(f"MDM perplexity bound / AR perplexity = {extra['ppl_ratio']:.3f} (bits/token "
                            f"{lik_mdm['bits_per_token']:.3f} vs {lik_ar['bits_per_token']:.3f})")

        if parts & {"b", "c"}:  # references: AR samples, and real validation text
            ar_tokens = sample(ar, num, 0, temperature=1.0, precision="float64")["tokens"]
            ar_ppl, ar_entropy = quality(ar, ar_tokens)
            real = next(iter(mdm.ctx.batches("validation", 1)))[0]["tokens"]
            real = np.asarray(mdm.ctx.to_host(real))[:num]
            real_ppl, real_entropy = quality(ar, real)
            rows.append(["reference", "AR samples (float64)", "", "", f"{ar_ppl:.2f}", f"{ar_entropy:.3f}"])
            rows.append(["reference", "validation text", "", "", f"{real_ppl:.2f}", f"{real_entropy:.3f}"])

        if "b" in parts:  # precision sweep over the number of steps, split vs joint ancestral draw
            # "ancestral" draws reveal and token separately (maskgen's default); "ancestral_joint" draws
            # them as one (V+1)-way categorical like MDLM's code, where Zheng et al. locate the effect.
            sweep = {}
            for steps in sweep_steps:
                for sampler in ("ancestral", "ancestral_joint"):
                    for precision in ("float32", "float64"):
                        out = sample(mdm, num, 1, sampler=sampler, num_steps=steps, schedule="linear", cache=True,
                                     precision=precision, temperature=1.0)
                        gen_ppl, entropy = sweep[steps, sampler, precision] = quality(ar, out["tokens"])
                        print(f"(b) T={steps} {sampler} {precision}: Gen PPL {gen_ppl:.2f}, entropy {entropy:.3f}",
                              flush=True)
                        rows.append([f"(b) {sampler} precision", f"T={steps} {precision}", "", f"nfe {int(out['nfe'])}",
                                     f"{gen_ppl:.2f}", f"{entropy:.3f}"])
            top = max(sweep_steps)
            for sampler, tag in (("ancestral", ""), ("ancestral_joint", "_joint")):
                (ppl32, ent32), (ppl64, ent64) = sweep[top, sampler, "float32"], sweep[top, sampler, "float64"]
                extra["entropy_drop" + tag], extra["gen_ppl_ratio_f32_f64" + tag] = ent64 - ent32, ppl32 / ppl64
                headline.append(f"{sampler} at T={top}, float32 vs float64: entropy {ent32 - ent64:+.3f} nats, "
                                f"Gen PPL x{ppl32 / ppl64:.2f}")

        if "c" in parts:  # speed at equal quality: nfe and wall time, one jitted decode per contender
            contenders = {
                "first_hitting": dict(sampler="first_hitting", cache=True),
                f"ancestral T={seq_len} no cache": dict(sampler="ancestral", num_steps=seq_len, cache=False),
                f"ancestral T={seq_len} cache": dict(sampler="ancestral", num_steps=seq_len, cache=True),
                f"ancestral T={4 * seq_len} cache": dict(sampler="ancestral", num_steps=4 * seq_len, cache=True),
                f"maskgit T={seq_len}": dict(sampler="maskgit", num_steps=seq_len, cache=False),
            }
            shared = dict(schedule="linear", precision="float64", temperature=1.0)
            outputs = {name: sample(mdm, num, 2, **s, **shared) for name, s in contenders.items()}  # compiles
            times = common.alternate({name: (lambda s=s: sample(mdm, num, 2, **s, **shared))
                                      for name, s in contenders.items()}, repeats=repeats, rounds=2, warmup=0)
            base = common.median(times[f"ancestral T={seq_len} no cache"])
            for name in contenders:
                gen_ppl, entropy = quality(ar, outputs[name]["tokens"])
                rows.append(["(c) sampler speed", name, common.fmt_seconds(common.median(times[name])),
                             f"nfe {int(outputs[name]['nfe'])}, {base / common.median(times[name]):.2f}x",
                             f"{gen_ppl:.2f}", f"{entropy:.3f}"])
            extra["fhs_speedup"] = base / common.median(times["first_hitting"])
            headline.append(f"first-hitting vs ancestral (T=L, no cache) {extra['fhs_speedup']:.2f}x")

    common.report(
        BENCH_ID, "masked diffusion vs AR: likelihood, sampling precision, sampler speed",
        ["part", "setting", "value / time", "detail", "Gen PPL (AR)", "entropy (nats)"], rows, "; ".join(headline),
        ratio=extra.get("ppl_ratio"),
        claim="MDM PPL within ~15% of AR (MDLM); float32 lowers entropy (Zheng et al.); FHS ~1x at V=257",
        holds=None, json_path=args.json, extra=extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
