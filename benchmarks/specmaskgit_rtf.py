r"""B19: SpecMaskGIT's speed and quality on this CPU: seconds of audio generated per second of wall time,
vocoder included, at batch 1 and a larger batch, and word consistency / Fréchet distance vs steps.

SpecMaskGIT (Comunità et al., arXiv 2406.17672) claims real-time generation on 4 CPU cores with <= 16
MaskGIT steps. A generated clip here goes through three timed stages, each a jitted function:
MaskGIT's `generate` (the token grid, with the run's guidance: two network passes per step), the
mel tokenizer's `decode` (tokens -> scaled log-mel) and Griffin-Lim (`features.mel_to_audio`, the
vocoder the numbers use; maskgen trains no neural vocoder). The speed is
`speed = batch x clip seconds / (generate + decode + Griffin-Lim seconds)`: above 1 is faster than
real time (the inverse of the usual real-time factor, which is printed too).

With `--workdir` (a trained SpecMaskGIT run, e.g. experiments/specmaskgit_speech.py) it times that
run and its tokenizer, and with `--num-per-class N` also scores each step count with the
`audio_generation` evaluator (word consistency, Fréchet distance on word-classifier features, an FAD
stand-in). Without it, randomly initialised models of the speech configs are timed (speed does not
depend on the weights); `--size smoke` uses the tiny configs.

  python -m benchmarks.specmaskgit_rtf --workdir runs/specmaskgit --num-per-class 20
  python -m benchmarks.specmaskgit_rtf --size smoke
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "SpecMaskGIT on CPU: audio seconds per wall second (Griffin-Lim included) and quality vs steps"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _random_runs(size: str):
    """(generator Run, its variables, tokenizer Run, its variables) of the speech configs, random init."""
    import jax

    from maskgen import config as config_lib
    from maskgen.data.specs import AudioSpec, LabelSpec, TokenSpec, legacy_info
    from maskgen.runs import setup

    tok_config = config_lib.load_config_file(os.path.join(EXPERIMENTS, f"tokenizer_speech_mel.py:size={size}"))
    speech = {**legacy_info({"audio": AudioSpec((16000, 1), 16000), "label": LabelSpec(10)},
                            {"train": 1000, "test": 100}), "sample_rate": 16000}
    tok_run = setup(tok_config, speech)
    info = tok_run.recipe.info()
    gen_config = config_lib.load_config_file(os.path.join(EXPERIMENTS, f"specmaskgit_speech.py:size={size}"))
    tokens = legacy_info({"tokens": TokenSpec(info["token_shape"], info["codebook_size"]), "label": LabelSpec(10)},
                         {"train": 1000, "test": 100})
    gen_run = setup(gen_config, tokens)
    with tok_run.context():
        tok_vars = tok_run.init_variables(jax.random.key(0))
    with gen_run.context():
        gen_vars = gen_run.init_variables(jax.random.key(1))
    return gen_run, gen_vars, tok_run, tok_vars


def _trained_runs(workdir: str):
    from maskgen.data.run_info import load_run_data_info
    from maskgen.runs import load_run_config, restore_variables, setup

    gen_run = setup(load_run_config(workdir), load_run_data_info(workdir))
    _, gen_vars = restore_variables(gen_run, workdir)
    tok_dir = (gen_run.data_info.get("tokenizer") or {}).get("workdir")
    if not tok_dir:
        raise SystemExit(f"{workdir}: its token dataset names no tokenizer run")
    tok_run = setup(load_run_config(tok_dir), load_run_data_info(tok_dir))
    _, tok_vars = restore_variables(tok_run, tok_dir)
    return gen_run, gen_vars, tok_run, tok_vars


def stages(gen_run, tok_run, num_steps: int):
    """The three jitted stages: generate(vars, labels, rng) -> tokens; decode(vars, tokens) -> scaled
    log-mel; vocode(scaled) -> audio [B, T]."""
    import jax
    import jax.numpy as jnp

    from maskgen.audio import features

    info = tok_run.recipe.info()
    mel = features.MelConfig.from_dict(info["mel"])
    settings = {**gen_run.recipe.sampling, "num_steps": num_steps}
    settings = {k: v for k, v in settings.items() if k in gen_run.recipe.decode_options}

    @jax.jit
    def generate(variables, labels, rng):
        return gen_run.recipe.generate(gen_run.merge(variables), {"label": labels}, rng, **settings)["tokens"]

    @jax.jit
    def decode(variables, tokens):
        return tok_run.recipe.decode(tok_run.merge(variables), {"codes": tokens}, None)

    @jax.jit
    def vocode(scaled):
        log_mel = features.unscale_log_mel(jnp.transpose(scaled[..., 0], (0, 2, 1)))
        return features.mel_to_audio(log_mel, mel, num_iters=info["griffin_lim_iters"])

    return generate, decode, vocode, info


def time_pipeline(gen_run, gen_vars, tok_run, tok_vars, num_steps: int, batch: int, repeats: int) -> dict:
    import jax
    import numpy as np

    generate, decode, vocode, info = stages(gen_run, tok_run, num_steps)
    labels = jax.numpy.asarray(np.arange(batch) % max(1, gen_run.recipe.num_classes), jax.numpy.int32)
    rng = jax.random.key(0)
    tokens = jax.block_until_ready(generate(gen_vars, labels, rng))  # compiles each stage once
    scaled = jax.block_until_ready(decode(tok_vars, tokens))
    jax.block_until_ready(vocode(scaled))
    times = {"generate": [], "decode": [], "griffin_lim": []}
    for _ in range(repeats):
        times["generate"].append(common.time_once(lambda: generate(gen_vars, labels, rng)))
        times["decode"].append(common.time_once(lambda: decode(tok_vars, tokens)))
        times["griffin_lim"].append(common.time_once(lambda: vocode(scaled)))
    med = {k: common.median(v) for k, v in times.items()}
    total = sum(med.values())
    clip_seconds = info["mel_frames"] * info["mel"]["hop"] / info["sample_rate"]
    return {**med, "total": total, "audio_seconds": batch * clip_seconds,
            "speed": batch * clip_seconds / total}


def quality(workdir: str, steps: tuple, num_per_class: int) -> dict:
    from maskgen.evaluators.audio import AudioGeneration
    from maskgen.generate import GeneratorHandle

    handle = GeneratorHandle(workdir)
    out = {}
    for s in steps:
        evaluator = AudioGeneration(num_per_class=num_per_class, decode={"num_steps": s}, num_audio_per_class=0,
                                    floor_split="train" if s == steps[0] else "")
        out[s] = evaluator.run(handle.ctx).scalars
        print(f"steps {s}: {out[s]}", flush=True)
    return out


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="a trained SpecMaskGIT run (default: random-init speech configs)")
    p.add_argument("--steps", default="4,8,16", help="MaskGIT decoding steps to compare")
    p.add_argument("--batches", default=None, help="batch sizes (default 1,16; smoke 1,2)")
    p.add_argument("--num-per-class", type=int, default=0,
                   help="with --workdir: samples per word for word consistency / Fréchet distance (0: speed only)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    steps = common.positive_ints(p, "--steps", args.steps if not smoke else "4")
    batches = common.positive_ints(p, "--batches", args.batches or ("1,2" if smoke else "1,16"))
    repeats = args.repeats or (1 if smoke else 3)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    if args.workdir:
        runs = _trained_runs(args.workdir)
    else:
        runs = _random_runs("tiny" if smoke else "small")
    scores = quality(args.workdir, steps, args.num_per_class) if args.workdir and args.num_per_class else {}
    rows, results = [], {}
    for s in steps:
        for b in batches:
            start = time.perf_counter()
            r = time_pipeline(*runs, num_steps=s, batch=b, repeats=repeats)
            results[f"{s}x{b}"] = r
            q = scores.get(s, {})
            rows.append([s, b, common.fmt_seconds(r["generate"]), common.fmt_seconds(r["decode"]),
                         common.fmt_seconds(r["griffin_lim"]), f"{r['speed']:.2f}x", f"{1 / r['speed']:.3f}",
                         f"{q['word_consistency']:.3f}" if q else "-",
                         f"{q['frechet_distance_words']:.2f}" if q else "-"])
            print(rows[-1], f"({time.perf_counter() - start:.0f} s with compilation)", flush=True)
    slowest = min(r["speed"] for k, r in results.items() if k.endswith("x1"))
    at16 = [r["speed"] for k, r in results.items() if k.startswith(f"{max(steps)}x") and k.endswith("x1")]
    headline = (f"batch 1, {max(steps)} steps: {at16[0]:.2f}x real time ({'' if at16[0] >= 1 else 'not '}real time); "
                f"slowest batch-1 setting {slowest:.2f}x; largest batch {max(batches)}: "
                f"{max(r['speed'] for k, r in results.items() if k.endswith(f'x{max(batches)}')):.2f}x")
    floor = next((q.get("frechet_distance_words_floor") for q in scores.values() if "frechet_distance_words_floor" in q),
                 None)
    return common.report(
        "B19", TITLE, ["steps", "batch", "generate", "decode", "Griffin-Lim", "audio s / wall s", "RTF",
                       "word consistency", "Fréchet (words)"], rows, headline, ratio=at16[0],
        claim="SpecMaskGIT: real time on 4 CPU cores with <= 16 steps", holds=at16[0] >= 1.0, json_path=args.json,
        extra={"results": results, "quality": {str(k): v for k, v in scores.items()}, "frechet_floor": floor,
               "workdir": args.workdir or "(random init)", "vocoder": "Griffin-Lim"})


if __name__ == "__main__":
    main()
