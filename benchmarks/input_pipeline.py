"""B6: grain input pipeline throughput vs the train step's consumption, for images and for tokens.

The loop (maskgen/train.py `_train`) feeds every step with `next(data_iter)` from
`maskgen.data.pipeline.train_dataset` (grain: seeded shuffle, repeat, map to model inputs, batch,
`config.data.read_threads` read threads) and `parallel.global_batch` (host numpy -> global jax arrays). This
script builds exactly that, with each experiment config's own batch size, and the loop's own
jitted update (`setup`, `make_optimizer`, `make_train_step`: recipe loss + AdamW + EMA, state
donated), for:

  * MAE on digits images (experiments/mae_digits.py, "small": batch 128);
  * the digits tokenizer on the same images (experiments/tokenizer_digits.py, "small", VQ: batch 64);
  * MaskGIT on 8x8 token grids (experiments/maskgit_digits.py, "small": batch 64), reading a
    token dataset written with `maskgen tokenize`'s own writers (ArrayRecord shards + metadata.json)
    into a temporary directory, with random token ids (1,438 examples, the digits train split size).

Pipeline rate: N batches after the first (warm-up) batch, each converted to the global arrays the
step receives (blocked on). Step rate: M steps on one fixed batch. Loop rate: M iterations of
next batch + conversion + step, i.e. what the training loop actually does. Contenders alternate
round by round; medians over rounds. Claim: headroom = pipeline batches/s / train steps/s >= 10x.

    python -m benchmarks.input_pipeline                # the three configs (< 1.5 minutes on 2 CPU cores)
    python -m benchmarks.input_pipeline --size smoke   # tiny MAE and MaskGIT configs, a few batches
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np

from benchmarks import common
from maskgen import parallel
from maskgen import train as train_lib
from maskgen.config import load_config_file
from maskgen.data import data_options, make_source, source_info
from maskgen.data.pipeline import train_dataset
from maskgen.data.tokens import write_token_metadata, write_token_split

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
NUM_TRAIN_DIGITS = 1438  # the digits train split (maskgen/data/digits.py)


def write_random_tokens(out_dir: str, *, token_shape=(8, 8), codebook_size=256, num_classes=10,
                        num_examples=NUM_TRAIN_DIGITS, seed=0) -> dict:
    """A token dataset in `maskgen tokenize`'s format, with random ids instead of a tokenizer's."""
    rng = np.random.default_rng(seed)
    rows = [(rng.integers(0, codebook_size, token_shape, dtype=np.int32), int(i % num_classes))
            for i in range(num_examples)]
    os.makedirs(out_dir, exist_ok=True)
    written = {"train": write_token_split(out_dir, "train", rows)}
    return write_token_metadata(out_dir, token_shape=token_shape, codebook_size=codebook_size, num_levels=1,
                                num_classes=num_classes, splits=written,
                                tokenizer={"workdir": "(random ids: benchmarks/input_pipeline.py)", "quantizer": "none"})


def _case(name: str, spec: str, pipeline_batches: int, steps: int, rounds: int) -> dict:
    config = load_config_file(spec)
    run = train_lib.setup(config)
    tx, schedule = train_lib.make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    init_key, train_key = train_lib._keys(config.seed)
    jit_init, _, (state_sh, ema_sh) = train_lib._state_initializer(run, tx)
    with run.context():
        state, ema = jit_init(init_key)
        step_fn = jax.jit(train_lib.make_train_step(run, tx, schedule, train_key),
                          in_shardings=(state_sh, ema_sh, None),
                          out_shardings=(state_sh, ema_sh, parallel.replicated(run.mesh)), donate_argnums=(0, 1))

    # The loop's own pipeline (one process: process_index 0 of 1).
    source = make_source(config.data.name, config.data.train_split, config.data.data_dir or None,
                         data_options(config.data))
    data_iter = iter(train_dataset(source, run.preprocess, seed=config.seed, global_batch_size=config.batch_size,
                                   read_threads=config.data.read_threads))

    def next_batch():
        return parallel.global_batch(next(data_iter), run.mesh, run.rules)

    first = next_batch()  # warm-up: starts grain's threads and fills its prefetch buffer
    holder = {"state": state, "ema": ema}
    with jax.set_mesh(run.mesh):
        compiled = common.compile_fn(step_fn, holder["state"], holder["ema"], first)

    def one_step(batch):
        holder["state"], holder["ema"], metrics = compiled.call(holder["state"], holder["ema"], batch)
        return metrics

    def pipeline():
        for _ in range(pipeline_batches):
            batch = next_batch()
        return batch

    def steps_only():
        for _ in range(steps):
            metrics = one_step(first)
        return metrics

    def loop():
        for _ in range(steps):
            metrics = one_step(next_batch())
        return metrics

    with jax.set_mesh(run.mesh):
        times = common.alternate({"pipeline": pipeline, "step": steps_only, "loop": loop}, repeats=1, rounds=rounds)
    batch_shapes = {k: tuple(v.shape) for k, v in first.items()}
    t_pipe = common.median(times["pipeline"]) / pipeline_batches
    t_step = common.median(times["step"]) / steps
    t_loop = common.median(times["loop"]) / steps
    return {"name": name, "config": spec.split("/")[-1], "batch": config.batch_size, "shapes": batch_shapes,
            "pipe_bps": 1 / t_pipe, "step_sps": 1 / t_step, "loop_sps": 1 / t_loop, "compile_s": compiled.compile_s,
            "headroom": t_step / t_pipe}


def main():
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    smoke = args.size == "smoke"
    size = "tiny" if smoke else "small"
    pipeline_batches, steps = (8, 2) if smoke else (50, 4)
    rounds = args.repeats or (2 if smoke else 3)
    with tempfile.TemporaryDirectory(prefix="maskgen_bench_tokens_") as tokens_dir:
        write_random_tokens(tokens_dir)
        assert source_info("tokens", tokens_dir)["token_shape"] == (8, 8)
        specs = [
            ("MAE (images)", f"{EXPERIMENTS}/mae_digits.py:size={size}"),
            ("tokenizer VQ (images)", f"{EXPERIMENTS}/tokenizer_digits.py:size={size},quantizer=vq"),
            ("MaskGIT (tokens)", f"{EXPERIMENTS}/maskgit_digits.py:size={size},tokens={tokens_dir}"),
        ]
        if smoke:  # one image and one token pipeline: the tokenizer's is MAE's at another batch size
            specs = [specs[0], specs[2]]
        results = [_case(name, spec, pipeline_batches, steps, rounds) for name, spec in specs]
    rows = []
    for r in results:
        shapes = ", ".join(f"{k} {list(v)}" for k, v in r["shapes"].items())
        rows.append([r["name"], r["batch"], shapes, f"{r['pipe_bps']:.1f}", f"{r['pipe_bps'] * r['batch']:,.0f}",
                     f"{r['step_sps']:.1f}", f"{r['loop_sps']:.1f}", f"{r['headroom']:.1f}x",
                     f"{r['compile_s']:.1f}"])
    worst = min(r["headroom"] for r in results)
    print(f"{pipeline_batches} batches per pipeline measurement, {steps} steps per step/loop measurement, "
          f"{rounds} alternating rounds (medians); 'loop' = next batch + conversion + step, as maskgen/train.py runs")
    headline = ("pipeline headroom (batches/s / train steps/s): "
                + ", ".join(f"{r['name']} {r['headroom']:.1f}x" for r in results)
                + "; loop vs step-only: " + ", ".join(f"{r['loop_sps'] / r['step_sps']:.2f}" for r in results)
                + " (claim: headroom >= 10x)")
    common.report("B6", f"grain input pipeline vs train step (digits configs, size {size})",
                  ["config", "batch", "arrays per batch", "pipeline batches/s", "pipeline examples/s",
                   "train steps/s", "loop steps/s", "headroom", "step compile (s)"],
                  rows, headline, ratio=worst, claim=">= 10x", holds=(worst >= 10) if not smoke else None,
                  extra={r["name"]: {k: v for k, v in r.items() if k != "shapes"} for r in results},
                  json_path=args.json)


if __name__ == "__main__":
    main()
