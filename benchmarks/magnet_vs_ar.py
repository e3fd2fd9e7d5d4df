r"""B20: MAGNeT against autoregressive decoding of the same codec tokens: quality, network calls and
wall time at batch 1 and 16, and MAGNeT's two unreleased decoders (AR rescoring, Hybrid-MAGNeT).

MAGNeT (Ziv et al., arXiv 2401.04577) decodes a clip's [T, K] codec tokens level by level in
sum(steps_per_level) parallel passes (each pass over all T frames, a 2B batch with classifier-free
guidance), where an autoregressive model of the same tokens (MusicGen, arXiv 2306.05284) makes T
sequential KV-cached calls of one frame each (also 2B rows with guidance). The paper reports 7x
lower latency than AR at batch 1 on a GPU, with AR catching up at large batch (Sec. 4, Fig. 2).
It also proposes rescoring MAGNeT's samples with the AR model (Sec. 3.3, weight 0.7) and
Hybrid-MAGNeT (Sec. 3.4: AR writes the first seconds, MAGNeT the rest); audiocraft releases neither.

Given a trained MAGNeT run (`experiments/magnet_speech.py`) and an AR run on the same token data
(`experiments/ar_speech.py`), four decoders are compared, each one jitted function:
  * MAGNeT: the run's `config.sampling` (steps per level, span re-masking, annealed temperature
    and guidance, top-p);
  * AR: `AutoregressiveRecipe.generate` with its run's `config.sampling` (temperature, guidance);
  * MAGNeT + rescoring: the same, with `ar_rescorer` (the AR model's teacher-forced log-probs)
    mixed into the re-masking confidence with weight 1 - w (w = `--rescore-weight`, 0.7);
  * Hybrid-MAGNeT: `hybrid_decode`, the AR model writes the first `--prefix-frames` frames (10 of
    50 = 0.2 s), MAGNeT decodes the rest with them as a known prompt, same steps per level.
Quality (with `--num-per-class` > 0): the `audio_generation` evaluator's measures on the clips
decoded through the codec run that made the tokens: word consistency (maskgen's word classifier;
chance 1/words) and the Fréchet distance of its features to the real test clips, beside the same
distance from as many real train clips (the real-vs-real floor at this sample size).
Cost: network calls per clip (rows per call in brackets), and the median wall time of the whole
decode at each batch (compiled ahead of time; compile time apart; contenders alternated round by
round; several repeats), with the AR / MAGNeT ratio measured in the same run.

Roofline (the model of benchmarks/maskgit_vs_autoregressive.py, B2): one step costs
max(FLOPs / peak, bytes / bandwidth) from XLA's cost analysis of that step (MAGNeT: one decoding
step, i.e. a full forward at [2B, T, K] plus sampling and span re-masking; AR: one cached
decode_step at [2B, 1, K] plus sampling), with this CPU's matmul peak and memory bandwidth measured
in the same run, and on this CPU a measured per-call floor (a width-16 model of the same depth
decoded the same way). The decode is calls x step. At batch 1 an AR step is memory-bound (all the
weights read for one frame), a MAGNeT step reads them once for T frames; the per-call floor bounds
the ratio by calls_AR / calls_MAGNeT = T / sum(steps) when both are latency-bound.

    python -m benchmarks.magnet_vs_ar --magnet-workdir runs/magnet --ar-workdir runs/ar --num-per-class 20
    python -m benchmarks.magnet_vs_ar --size smoke     # random-init tiny configs: speed only
"""

from __future__ import annotations

import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "MAGNeT vs AR decoding of the same codec tokens: quality, calls, wall time; AR rescoring and Hybrid-MAGNeT"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
METHODS = ("magnet", "ar", "magnet_rescored", "hybrid")
NAMES = {"magnet": "MAGNeT", "ar": "AR (KV cache)", "magnet_rescored": "MAGNeT + AR rescoring",
         "hybrid": "Hybrid-MAGNeT"}


# ------------------------------------------------------------------------------------------ runs

def random_runs(size: str):
    """(MAGNeT Run, variables, AR Run, variables) of the speech configs at `size`, randomly initialised
    on a stand-in of the [50, 4] codec token data (speed does not depend on the weights)."""
    import jax

    from maskgen import config as config_lib
    from maskgen.data.specs import LabelSpec, TokenSpec, legacy_info
    from maskgen.runs import setup

    info = legacy_info({"tokens": TokenSpec((50, 4), 256, 4), "label": LabelSpec(10)}, {"train": 2560, "test": 640})
    out = []
    for seed, name in enumerate(("magnet_speech.py", "ar_speech.py")):
        run = setup(config_lib.load_config_file(os.path.join(EXPERIMENTS, f"{name}:size={size}")), info)
        with run.context():
            out += [run, run.init_variables(jax.random.key(seed))]
    return tuple(out)


def trained_runs(magnet_workdir: str, ar_workdir: str):
    """(MAGNeT Run, variables, AR Run, variables) restored from the two workdirs, checked to model the
    same tokens (frames, levels, codebook)."""
    from maskgen.data.run_info import load_run_data_info
    from maskgen.runs import load_run_config, restore_variables, setup

    out = []
    for workdir, recipe in ((magnet_workdir, "magnet"), (ar_workdir, "autoregressive")):
        config = load_run_config(workdir)
        if config.recipe != recipe:
            raise SystemExit(f"{workdir} is a {config.recipe!r} run; expected a {recipe!r} run")
        run = setup(config, load_run_data_info(workdir))
        out += [run, restore_variables(run, workdir)[1]]
    check_same_tokens(out[0], out[2], magnet_workdir, ar_workdir)
    return tuple(out)


def check_same_tokens(mg_run, ar_run, mg_name: str = "MAGNeT", ar_name: str = "AR") -> None:
    mg, ar = mg_run.recipe, ar_run.recipe
    if tuple(mg.token_shape) != tuple(ar.token_shape) or mg.codebook_size != ar.codebook_size:
        raise SystemExit(f"the runs model different tokens: {mg_name} {tuple(mg.token_shape)} x {mg.codebook_size} "
                         f"codes, {ar_name} {tuple(ar.token_shape)} x {ar.codebook_size} codes; train the AR run on "
                         "the MAGNeT run's token data (experiments/ar_speech.py:tokens=...)")


def run_settings(run) -> dict:
    """The run's decoding settings (config.sampling) that its recipe's generate takes."""
    return {k: v for k, v in run.recipe.sampling.items() if k in run.recipe.decode_options}


# -------------------------------------------------------------------------------------- decoders

def decoders(mg_run, ar_run, *, prefix_frames: int, rescore_weight: float, mg_settings: dict | None = None,
             ar_settings: dict | None = None) -> dict:
    """The four whole decodes, each fn(mg_vars, ar_vars, labels, rng) -> (tokens [B, T, K], MAGNeT nfe)."""
    import jax.numpy as jnp

    from maskgen.sampling.rescoring import ar_rescorer, hybrid_decode

    mg, ar = mg_run.recipe, ar_run.recipe
    mg_settings = run_settings(mg_run) if mg_settings is None else mg_settings
    ar_settings = run_settings(ar_run) if ar_settings is None else ar_settings
    mg_settings = {k: v for k, v in mg_settings.items() if k != "rescore_weight"}

    def magnet(mg_vars, ar_vars, labels, rng):
        out = mg.generate(mg_run.merge(mg_vars), {"label": labels}, rng, **mg_settings)
        return out["tokens"], out["nfe"]

    def autoregressive(mg_vars, ar_vars, labels, rng):
        return ar.generate(ar_run.merge(ar_vars), {"label": labels}, rng, **ar_settings)["tokens"], jnp.int32(0)

    def rescored(mg_vars, ar_vars, labels, rng):
        rescorer = ar_rescorer(ar_run.merge(ar_vars), labels)
        out = mg.generate(mg_run.merge(mg_vars), {"label": labels}, rng, rescorer=rescorer,
                          rescore_weight=rescore_weight, **mg_settings)
        return out["tokens"], out["nfe"]

    def hybrid(mg_vars, ar_vars, labels, rng):
        masked = functools.partial(mg.generate, mg_run.merge(mg_vars), **mg_settings)
        out = hybrid_decode(ar_run.merge(ar_vars), lambda batch, key: masked(batch, key), labels, rng,
                            token_shape=mg.token_shape, prefix_frames=prefix_frames,
                            ar_settings={k: v for k, v in ar_settings.items()
                                         if k in ("temperature", "cfg_scale", "precision")})
        return out["tokens"], out["nfe"]

    return {"magnet": magnet, "ar": autoregressive, "magnet_rescored": rescored, "hybrid": hybrid}


def network_calls(method: str, mg_run, ar_run, nfe: int, prefix_frames: int, batch: int) -> dict:
    """Calls per decode and the rows each call runs (a guided call batches the null label in)."""
    mg_guided = float(mg_run.recipe.sampling.get("cfg_scale", 10.0)) != 1.0 or \
        float(mg_run.recipe.sampling.get("cfg_min_scale", 1.0)) != 1.0
    ar_guided = float(run_settings(ar_run).get("cfg_scale", 1.0)) != 1.0
    frames = mg_run.recipe.token_shape[0]
    steps = sum(mg_run.recipe.sampling.get("steps_per_level") or ())
    mg_rows, ar_rows = (2 if mg_guided else 1) * batch, (2 if ar_guided else 1) * batch
    if method == "ar":
        return {"calls": frames, "text": f"{frames} AR x [{ar_rows}, 1 frame]", "sequential": frames}
    if method == "magnet":
        return {"calls": nfe, "text": f"{nfe} x [{mg_rows}, {frames}]", "sequential": nfe}
    if method == "magnet_rescored":
        # nfe counts MAGNeT's guided passes and the greedy fills (B rows); the AR scores once per step.
        return {"calls": nfe + steps, "text": f"{nfe} MAGNeT + {steps} AR x [{batch}, {frames}]",
                "sequential": nfe + steps}
    return {"calls": prefix_frames + nfe, "text": f"{prefix_frames} AR x [{ar_rows}, 1] + {nfe} x [{mg_rows}, {frames}]",
            "sequential": prefix_frames + nfe}


# -------------------------------------------------------------------------------------- roofline

def step_costs(mg_run, ar_run, mg_vars, ar_vars, batch: int, mg_settings: dict, ar_settings: dict) -> dict:
    """FLOPs and bytes (XLA cost analysis) of one MAGNeT decoding step and one AR decoding step at `batch`.

    MAGNeT: a decode with one step per level, over the K levels (a scan's body is counted once, so
    this is one step's cost whatever the steps). AR: the body of the cached loop (decode_step +
    sampling), its cache donated as the loop updates it in place."""
    import jax
    import jax.numpy as jnp

    from maskgen.sampling.categorical import sample_categorical

    k = mg_run.recipe.token_shape[-1]
    one_step = {**mg_settings, "steps_per_level": (1,) * k}
    labels, rng = jax.ShapeDtypeStruct((batch,), jnp.int32), jax.random.key(0)

    def magnet(variables, labels, rng):
        return mg_run.recipe.generate(mg_run.merge(variables), {"label": labels}, rng, **one_step)["tokens"]

    mg_cost = common.compile_fn(magnet, mg_vars, labels, rng)
    guided = float(ar_settings.get("cfg_scale", 1.0)) != 1.0
    rows = 2 * batch if guided else batch

    def ar_step(variables, cache, prev, index, labels, rng):
        model = ar_run.merge(variables)
        logits, cache = model.decode_step(cache, prev, index, labels)
        if guided:
            logits = logits[batch:] + ar_settings["cfg_scale"] * (logits[:batch] - logits[batch:])
        return cache, sample_categorical(jax.random.fold_in(rng, index), logits, ar_settings.get("temperature", 1.0))

    cache = jax.eval_shape(lambda v: ar_run.merge(v).init_cache(rows), ar_vars)
    streams = ar_run.recipe.token_shape[-1:] if ar_run.recipe.num_streams > 1 else ()
    ar_cost = common.compile_fn(jax.jit(ar_step, donate_argnums=1), ar_vars, cache,
                                jax.ShapeDtypeStruct((rows,) + streams, jnp.int32), jax.ShapeDtypeStruct((), jnp.int32),
                                jax.ShapeDtypeStruct((rows,), jnp.int32), rng)
    return {"magnet": {"flops": mg_cost.flops / k, "bytes": mg_cost.bytes_accessed / k},
            "ar": {"flops": ar_cost.flops, "bytes": ar_cost.bytes_accessed}}


def project(costs: dict, calls: dict, peak: float, bandwidth: float, bytes_scale: float = 1.0,
            floor: dict | None = None) -> dict:
    """Roofline decode times: calls x max(FLOPs / peak, bytes / bandwidth) (+ a per-call floor)."""
    from benchmarks.maskgit_vs_autoregressive import roofline

    out = {}
    for name in ("magnet", "ar"):
        t, bound = roofline(costs[name]["flops"], costs[name]["bytes"] * bytes_scale, peak, bandwidth)
        out[name] = calls[name] * (t + (floor or {}).get(name, 0.0))
        out[name + "_bound"] = bound
    out["ratio"] = out["ar"] / out["magnet"]
    return out


def paper_runs():
    """Abstract (never allocated) MAGNeT-small at paper scale (experiments/magnet_small_32k.py: 10 s,
    [500, 4] x 2048 codes, width 1024, depth 24, 16 heads, steps (20, 10, 10, 10)) and an AR model of
    the same backbone on the same tokens (MusicGen-small's size; its guidance 3)."""
    from maskgen import config as config_lib
    from maskgen.data.specs import LabelSpec, TokenSpec, legacy_info
    from maskgen.runs import abstract_variables, setup

    info = legacy_info({"tokens": TokenSpec((500, 4), 2048, 4), "label": LabelSpec(10)}, {"train": 10 ** 5})
    mg_config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "magnet_small_32k.py"))
    m = mg_config.model
    ar_config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "ar_speech.py:frames=500,levels=4,"
                                                          "codebook_size=2048"))
    config_lib.apply_overrides(ar_config, [f"model.width={m.width}", f"model.depth={m.depth}",
                                           f"model.num_heads={m.num_heads}", f"model.conditioning={m.conditioning}",
                                           f"model.tie_head={m.tie_head}", "batch_size=64"])
    mg_run, ar_run = setup(mg_config, info), setup(ar_config, info)
    return mg_run, abstract_variables(mg_run), ar_run, abstract_variables(ar_run)


def least_traffic(costs: dict, mg_run, ar_run, mg_vars, batch: int, mg_settings: dict, ar_settings: dict,
                  bytes_per_value: int = 2) -> dict:
    """The same FLOPs with the least traffic a step needs, in bf16 (B2's `min_traffic_costs`): the
    weights read once, plus the AR model's KV cache read and MAGNeT's logits written; everything
    else (attention scores, MLP activations) assumed fused on chip, as an accelerator keeps them."""
    import jax

    params = sum(x.size for x in jax.tree.leaves(mg_vars["params"]))
    frames, levels = mg_run.recipe.token_shape
    vocab = mg_run.recipe.codebook_size
    mg_rows = (2 if float(mg_settings.get("cfg_scale", 1.0)) != 1.0 else 1) * batch
    ar_rows = (2 if float(ar_settings.get("cfg_scale", 1.0)) != 1.0 else 1) * batch
    width, depth = ar_run.recipe.model_kwargs["width"], ar_run.recipe.model_kwargs["depth"]
    kv_cache = ar_rows * depth * 2 * frames * width
    return {"magnet": {"flops": costs["magnet"]["flops"],
                       "bytes": bytes_per_value * (params + mg_rows * frames * levels * vocab)},
            "ar": {"flops": costs["ar"]["flops"], "bytes": bytes_per_value * (params + kv_cache + ar_rows * levels * vocab)}}


def per_call_floor(size_config: str, steps_per_level, batch: int, repeats: int) -> dict:
    """Measured seconds per call of width-16 models (same depth, frames and levels) at `batch`: the
    fixed cost of one decoding call on this CPU (dispatch, loop, sampling bookkeeping)."""
    import jax
    import jax.numpy as jnp

    from maskgen import config as config_lib
    from maskgen.data.specs import LabelSpec, TokenSpec, legacy_info
    from maskgen.runs import setup

    info = legacy_info({"tokens": TokenSpec((50, 4), 16, 4), "label": LabelSpec(10)}, {"train": 2560, "test": 640})
    runs = []
    for name in ("magnet_speech.py", "ar_speech.py"):
        config = config_lib.load_config_file(os.path.join(EXPERIMENTS, f"{name}:size={size_config},codebook_size=16"))
        config_lib.apply_overrides(config, ["model.width=16", "model.num_heads=2"])
        run = setup(config, info)
        with run.context():
            runs += [run, run.init_variables(jax.random.key(0))]
    mg_run, mg_vars, ar_run, ar_vars = runs
    fns = decoders(mg_run, ar_run, prefix_frames=1, rescore_weight=0.7,
                   mg_settings={**run_settings(mg_run), "steps_per_level": tuple(steps_per_level)})
    labels, rng = jnp.zeros((batch,), jnp.int32), jax.random.key(0)
    compiled = {m: common.compile_fn(fns[m], mg_vars, ar_vars, labels, rng) for m in ("magnet", "ar")}
    nfe = int(compiled["magnet"].call(mg_vars, ar_vars, labels, rng)[1])
    times = common.alternate({m: (lambda c=c: c.call(mg_vars, ar_vars, labels, rng)) for m, c in compiled.items()},
                             repeats=repeats, rounds=2)
    return {"magnet": common.median(times["magnet"]) / nfe, "ar": common.median(times["ar"]) / 50}


# -------------------------------------------------------------------------------------- quality

def quality(tokens_by_method: dict, labels, decoder, words: str, seed_note: str = "") -> dict:
    """Word consistency and word-feature Fréchet distance of each method's decoded samples, and the
    real-vs-real floor (as many real train clips as samples, against the real test clips)."""
    import numpy as np

    from maskgen.evaluators.audio import _fit_length, _frechet, _word_classifier

    real = decoder.reference("test", None)
    real_audio = np.asarray(real["audio"], np.float32)
    classifier = _word_classifier(words, decoder.sample_rate, real_audio.shape[1])
    real_features = classifier.features(real_audio)
    n = len(labels)
    floor_audio = np.asarray(decoder.reference("train", n)["audio"], np.float32)
    out = {"_real": {"word_accuracy_real": classifier.accuracy(real_audio, real["label"]),
                     "frechet_floor": _frechet(classifier.features(floor_audio), real_features),
                     "num_real": len(real_audio), "num_floor": len(floor_audio), "num_samples": n}}
    for method, tokens in tokens_by_method.items():
        start = time.perf_counter()
        audio = _fit_length(np.asarray(decoder.decode(tokens)["audio"], np.float32), real_audio.shape[1])
        out[method] = {"word_consistency": classifier.accuracy(audio, labels),
                       "frechet": _frechet(classifier.features(audio), real_features)}
        print(f"quality {NAMES[method]}: {out[method]} (decode + classify {time.perf_counter() - start:.0f} s)",
              flush=True)
    return out


def sample_all(compiled, mg_vars, ar_vars, labels, chunk: int, seed: int) -> tuple:
    """Tokens for every label with a decode compiled for `chunk` rows (the last chunk padded and cut)."""
    import jax
    import numpy as np

    tokens, nfes = [], []
    for i, start in enumerate(range(0, len(labels), chunk)):
        part = labels[start:start + chunk]
        padded = np.concatenate([part, np.zeros(chunk - len(part), np.int32)])
        out_tokens, nfe = compiled.call(mg_vars, ar_vars, jax.numpy.asarray(padded), jax.random.fold_in(
            jax.random.key(seed), i))
        tokens.append(np.asarray(out_tokens)[: len(part)])
        nfes.append(int(nfe))
    return np.concatenate(tokens), nfes


# -------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--magnet-workdir", default=None, help="a trained MAGNeT run (default: random-init configs)")
    p.add_argument("--ar-workdir", default=None, help="an AR run on the same token data (experiments/ar_speech.py)")
    p.add_argument("--batches", default=None, help="batch sizes (default 1,16; smoke 1,2)")
    p.add_argument("--num-per-class", type=int, default=None,
                   help="samples per word for the quality columns (default 20 with workdirs; 0: cost only)")
    p.add_argument("--prefix-frames", type=int, default=10, help="Hybrid-MAGNeT: frames the AR model writes")
    p.add_argument("--rescore-weight", type=float, default=0.7, help="w of w p_MAGNeT + (1 - w) p_AR (paper: 0.7)")
    p.add_argument("--words", default=None, help="the speech vocabulary (default: the MAGNeT run's, else digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--floor", action=argparse_bool(), default=None,
                   help="measure the per-call floor with width-16 models (default: on, off at --size smoke)")
    p.add_argument("--paper", action=argparse_bool(), default=None,
                   help="also compile (never run) MAGNeT-small at paper scale and its AR twin for the roofline "
                        "projection (default: on, off at --size smoke)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    if bool(args.magnet_workdir) != bool(args.ar_workdir):
        p.error("give both --magnet-workdir and --ar-workdir (or neither, for random-init configs)")
    batches = common.positive_ints(p, "--batches", args.batches or ("1,2" if smoke else "1,16"))
    repeats = args.repeats or (1 if smoke else 3)
    trained = bool(args.magnet_workdir)
    num_per_class = args.num_per_class if args.num_per_class is not None else ((1 if smoke else 20) if trained else 0)
    if num_per_class and not trained:
        p.error("--num-per-class needs trained runs (--magnet-workdir and --ar-workdir)")
    if not 0.0 <= args.rescore_weight <= 1.0:
        p.error(f"--rescore-weight must be in [0, 1], got {args.rescore_weight}")

    import jax
    import jax.numpy as jnp
    import numpy as np
    from absl import flags

    from benchmarks.maskgit_vs_autoregressive import ACCEL_BYTES_SCALE, ACCELERATORS, measure_peaks

    flags.FLAGS.mark_as_parsed()
    t_start = time.perf_counter()
    runs = trained_runs(args.magnet_workdir, args.ar_workdir) if trained else random_runs("tiny" if smoke else "small")
    mg_run, mg_vars, ar_run, ar_vars = runs
    check_same_tokens(mg_run, ar_run)
    frames, levels = mg_run.recipe.token_shape
    if not 1 <= args.prefix_frames < frames:
        p.error(f"--prefix-frames must be in [1, {frames - 1}] (clips have {frames} frames)")
    mg_settings, ar_settings = run_settings(mg_run), run_settings(ar_run)
    steps = tuple(mg_settings.get("steps_per_level") or ())
    print(f"MAGNeT: {args.magnet_workdir or '(random init)'}, {dict(mg_settings)}")
    print(f"AR: {args.ar_workdir or '(random init)'}, {dict(ar_settings)}; tokens [{frames}, {levels}] x "
          f"{mg_run.recipe.codebook_size} codes; hybrid prefix {args.prefix_frames} frames; rescoring w = "
          f"{args.rescore_weight}", flush=True)
    fns = decoders(mg_run, ar_run, prefix_frames=args.prefix_frames, rescore_weight=args.rescore_weight)

    # ---- cost: compile each decode per batch (compile time apart), then alternate the timed calls
    timing, compiled_by_batch, calls = {}, {}, {}
    for batch in batches:
        labels = jnp.asarray(np.arange(batch) % max(1, mg_run.recipe.num_classes), jnp.int32)
        rng = jax.random.key(batch)
        compiled = {}
        for m in METHODS:
            compiled[m] = common.compile_fn(fns[m], mg_vars, ar_vars, labels, rng)
            tokens, nfe = compiled[m].call(mg_vars, ar_vars, labels, rng)  # warm-up and validity check
            tokens = np.asarray(tokens)
            if tokens.shape != (batch, frames, levels) or tokens.min() < 0 or tokens.max() >= mg_run.recipe.codebook_size:
                raise AssertionError(f"{NAMES[m]} produced invalid tokens {tokens.shape} in [{tokens.min()}, "
                                     f"{tokens.max()}]")
            calls[(m, batch)] = network_calls(m, mg_run, ar_run, int(nfe), args.prefix_frames, batch)
            print(f"batch {batch}, {NAMES[m]}: compiled in {compiled[m].compile_s:.1f} s; calls "
                  f"{calls[(m, batch)]['text']}", flush=True)
        times = common.alternate({m: (lambda c=c: c.call(mg_vars, ar_vars, labels, rng)) for m, c in compiled.items()},
                                 repeats=repeats, rounds=3 if not smoke else 1, warmup=0)
        timing[batch] = {m: {"median_s": common.median(t), "n": len(t), "compile_s": compiled[m].compile_s}
                         for m, t in times.items()}
        compiled_by_batch[batch] = compiled
        print(f"batch {batch}: " + ", ".join(f"{NAMES[m]} {common.fmt_seconds(v['median_s'])}"
                                              for m, v in timing[batch].items()), flush=True)

    # ---- roofline
    peak, bandwidth = measure_peaks(512 if smoke else 2048, 2 ** 20 if smoke else 2 ** 25, repeats=3)
    print(f"this CPU, measured: f32 matmul {peak / 1e9:.1f} GFLOP/s, memory {bandwidth / 1e9:.1f} GB/s", flush=True)
    do_floor = (not smoke) if args.floor is None else args.floor
    floor = per_call_floor("small", steps, 1, repeats) if do_floor else None
    if floor:
        print(f"per-call floor (width-16 models, batch 1): MAGNeT {common.fmt_seconds(floor['magnet'])}, "
              f"AR {common.fmt_seconds(floor['ar'])}", flush=True)
    roof = {}
    for batch in batches:
        costs = step_costs(mg_run, ar_run, mg_vars, ar_vars, batch, mg_settings, ar_settings)
        step_calls = {"magnet": calls[("magnet", batch)]["calls"], "ar": calls[("ar", batch)]["calls"]}
        roof[batch] = {"costs": costs, "cpu": project(costs, step_calls, peak, bandwidth),
                       "cpu_floor": project(costs, step_calls, peak, bandwidth, floor=floor) if floor else None}
        for hw, (pk, bw) in ACCELERATORS.items():
            roof[batch][hw] = project(costs, step_calls, pk, bw, bytes_scale=ACCEL_BYTES_SCALE)

    paper = {}
    if (not smoke) if args.paper is None else args.paper:
        start = time.perf_counter()
        pm_run, pm_vars, pa_run, pa_vars = paper_runs()
        p_settings = run_settings(pm_run), run_settings(pa_run)
        p_calls = {"magnet": sum(p_settings[0]["steps_per_level"]), "ar": pm_run.recipe.token_shape[0]}
        for batch in (1, 16):
            costs = step_costs(pm_run, pa_run, pm_vars, pa_vars, batch, *p_settings)
            paper[batch] = {"costs": costs, "calls": p_calls, "cpu": project(costs, p_calls, peak, bandwidth)}
            least = least_traffic(costs, pm_run, pa_run, pm_vars, batch, *p_settings)
            for hw, (pk, bw) in ACCELERATORS.items():
                paper[batch][hw] = project(costs, p_calls, pk, bw, bytes_scale=ACCEL_BYTES_SCALE)
                paper[batch][hw + " least traffic"] = project(least, p_calls, pk, bw)
        print(f"paper-scale step costs compiled from abstract shapes in {time.perf_counter() - start:.0f} s",
              flush=True)

    # ---- quality
    scores = {}
    if num_per_class:
        from maskgen.runs import make_decoder

        decoder = make_decoder(mg_run.config, mg_run.data_info)
        words = args.words or mg_run.recipe.info().get("words") or "digits"
        labels = np.tile(np.arange(mg_run.recipe.num_classes, dtype=np.int32), num_per_class)
        chunk = max(batches)
        tokens_by_method, nfe_seen = {}, {}
        for m in METHODS:
            start = time.perf_counter()
            tokens_by_method[m], nfe_seen[m] = sample_all(compiled_by_batch[chunk][m], mg_vars, ar_vars, labels,
                                                          chunk, args.seed)
            print(f"sampled {len(labels)} clips with {NAMES[m]} in {time.perf_counter() - start:.0f} s", flush=True)
        scores = quality(tokens_by_method, labels, decoder, words)

    # ---- report
    b_lo, b_hi = min(batches), max(batches)
    header = ["decoder", f"network calls x [rows, frames] (batch {b_lo})", "sequential calls"]
    header += [f"wall, batch {b}" for b in batches] + [f"AR / this, batch {b}" for b in batches]
    header += ["word consistency", "Fréchet (words)"]
    rows = []
    for m in METHODS:
        row = [NAMES[m], calls[(m, b_lo)]["text"], calls[(m, b_lo)]["sequential"]]
        row += [common.fmt_seconds(timing[b][m]["median_s"]) for b in batches]
        row += [f"{timing[b]['ar']['median_s'] / timing[b][m]['median_s']:.2f}" for b in batches]
        q = scores.get(m)
        row += [f"{q['word_consistency']:.3f}" if q else "-", f"{q['frechet']:.2f}" if q else "-"]
        rows.append(row)
    ratio = {b: timing[b]["ar"]["median_s"] / timing[b]["magnet"]["median_s"] for b in batches}
    print()
    print("Roofline (B2's model): decode = calls x max(FLOPs/peak, bytes/bandwidth) per step; AR / MAGNeT ratio, "
          "in brackets what bounds each step (C compute, M memory). Accelerators: bf16 bytes, no per-call overhead.")
    print("| batch | measured (this CPU) | calls ratio | this CPU roofline | + per-call floor | "
          + " | ".join(ACCELERATORS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(ACCELERATORS))
    for b in batches:
        r = roof[b]
        cells = [f"{r[hw]['ratio']:.2f} (AR {r[hw]['ar_bound']}, MAGNeT {r[hw]['magnet_bound']})" for hw in ACCELERATORS]
        with_floor = f"{r['cpu_floor']['ratio']:.2f}" if r["cpu_floor"] else "-"
        print(f"| {b} | {ratio[b]:.2f} | {calls[('ar', b)]['calls'] / calls[('magnet', b)]['calls']:.2f} | "
              f"{r['cpu']['ratio']:.2f} (AR {r['cpu']['ar_bound']}, MAGNeT {r['cpu']['magnet_bound']}) | "
              f"{with_floor} | " + " | ".join(cells) + " |")
        c = r["costs"]
        print(f"  batch {b}: MAGNeT step {c['magnet']['flops'] / 1e9:.3g} GFLOP / {c['magnet']['bytes'] / 1e9:.3g} GB "
              f"({c['magnet']['flops'] / max(c['magnet']['bytes'], 1):.1f} FLOP/B); AR step "
              f"{c['ar']['flops'] / 1e9:.3g} GFLOP / {c['ar']['bytes'] / 1e9:.3g} GB "
              f"({c['ar']['flops'] / max(c['ar']['bytes'], 1):.1f} FLOP/B)")
    for b, r in paper.items():
        c = r["costs"]
        print(f"paper scale (MAGNeT-small, [500, 4] x 2048, {r['calls']['magnet']} vs {r['calls']['ar']} calls), batch "
              f"{b}: calls ratio {r['calls']['ar'] / r['calls']['magnet']:.1f}; roofline "
              + ", ".join(f"{hw} {r[hw]['ratio']:.2f} (AR {r[hw]['ar_bound']}, MAGNeT {r[hw]['magnet_bound']})"
                          for hw in ("cpu", *ACCELERATORS, *(h + " least traffic" for h in ACCELERATORS)))
              + f"; MAGNeT step {c['magnet']['flops'] / 1e12:.3g} TFLOP / {c['magnet']['bytes'] / 1e9:.3g} GB, AR step "
              f"{c['ar']['flops'] / 1e9:.3g} GFLOP / {c['ar']['bytes'] / 1e9:.3g} GB (f32 counts)")
    headline = (f"AR / MAGNeT wall time {ratio[b_lo]:.2f}x at batch {b_lo}, {ratio[b_hi]:.2f}x at batch {b_hi} "
                f"(calls {calls[('ar', b_lo)]['calls']} vs {calls[('magnet', b_lo)]['calls']}); roofline "
                f"{roof[b_lo]['cpu']['ratio']:.2f}x / {roof[b_hi]['cpu']['ratio']:.2f}x on this CPU")
    if paper:
        h100 = "H100 SXM"
        least = h100 + " least traffic"
        headline += (f"; paper scale on {h100} (roofline, no per-call overhead): {paper[1][h100]['ratio']:.1f}x at "
                     f"batch 1, {paper[16][h100]['ratio']:.1f}x at batch 16 (least traffic "
                     f"{paper[1][least]['ratio']:.1f}x / {paper[16][least]['ratio']:.1f}x), overhead-bound limit "
                     f"{paper[1]['calls']['ar'] / paper[1]['calls']['magnet']:.0f}x")
    if scores:
        real = scores["_real"]
        headline += ("; word consistency " + ", ".join(f"{NAMES[m]} {scores[m]['word_consistency']:.2f}" for m in METHODS)
                     + f" (real {real['word_accuracy_real']:.2f}); Fréchet "
                     + ", ".join(f"{NAMES[m]} {scores[m]['frechet']:.1f}" for m in METHODS)
                     + f" (real-vs-real floor {real['frechet_floor']:.1f})")
    extra = {"magnet_workdir": args.magnet_workdir or "(random init)", "ar_workdir": args.ar_workdir or "(random init)",
             "magnet_settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in mg_settings.items()},
             "ar_settings": ar_settings, "prefix_frames": args.prefix_frames, "rescore_weight": args.rescore_weight,
             "token_shape": [frames, levels], "timing": {str(b): v for b, v in timing.items()},
             "calls": {f"{m}|b{b}": v for (m, b), v in calls.items()}, "cpu_peak_flops": peak,
             "cpu_bandwidth": bandwidth, "per_call_floor_s": floor,
             "roofline": {str(b): v for b, v in roof.items()}, "paper_roofline": {str(b): v for b, v in paper.items()},
             "quality": scores,
             "num_per_class": num_per_class, "total_s": time.perf_counter() - t_start}
    return common.report("B20", TITLE, header, rows, headline, ratio=ratio[b_lo],
                         claim="MAGNeT: 7x lower latency than AR at batch 1 on a GPU; AR catches up at large batch",
                         holds=None, json_path=args.json, extra=extra)


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


if __name__ == "__main__":
    main()
