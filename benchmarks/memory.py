"""B8: memory of the train step with and without remat, and the README demo's peak resident memory.

Two measures of the train step, for the two transformer recipes of the README demo's family
(MaskGIT on 8x8 digit tokens, MAE on 16x16 digits), at each `config.remat` policy:

  * `compiled.memory_analysis()` of the real train step (`maskgen.train.make_train_step`):
    argument, output, alias and temporary bytes as XLA's buffer assignment plans them;
  * the bytes the backward pass keeps, the residuals of `jax.vjp` of the loss (traced, nothing
    runs), as in benchmarks/scaling_model.py. On TPU/GPU these are what remat trades for FLOPs.
    XLA:CPU's buffer assignment does not show remat's saving in `temp` bytes (its scheduler keeps
    recomputed values live as long as the saved ones would be), so the residuals are the measure
    of the saving; the temp column is printed for what the CPU really allocates.

Then the README demo (`maskgen demo`: tokenizer -> tokens -> MaskGIT -> evaluation -> samples and
an edit) runs in a child process with every stage's training shortened to a few steps (peak
memory is set by the shapes, the compiled programs and the evaluation, not by the step count) and
its peak resident set size is read from `getrusage(RUSAGE_CHILDREN)`. Claim: under 4 GiB.

    python -m benchmarks.memory                 # the demo's configs (about 2 minutes)
    python -m benchmarks.memory --size smoke    # tiny configs and the tiny demo
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONE_DEVICE_MESH = "mesh=(('data', 1), ('fsdp', 1), ('tensor', 1))"
REMATS = ("none", "block", "block_save_dots")
GIB, MIB = 2**30, 2**20
# (label, config spec, the dataset facts the recipe needs instead of reading a dataset)
STEPS = (
    ("MaskGIT digits", "experiments/maskgit_digits.py:tokens=/nonexistent,size={size}",
     {"token_shape": (8, 8), "codebook_size": 256, "num_levels": 1, "num_classes": 10,
      "splits": {"train": 1438, "test": 359}, "image_shape": None, "tokenizer": {}}),
    ("MAE digits", "experiments/mae_digits.py:size={size}", None),
)

DEMO_CHILD = """
import sys
from maskgen.demo import run_demo
size, steps, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
shorter = [f"total_steps={steps}", f"optimizer.warmup_steps={int(steps) // 10}",
           f"checkpoint_every={steps}", f"log_every={steps}"]
run_demo(workdir, size=size, tokenizer_overrides=shorter, maskgit_overrides=shorter, num_per_class=10)
"""


def _load(spec: str, overrides):
    from maskgen.config import apply_overrides, load_config_file

    path, _, arg = spec.partition(":")
    config = load_config_file(os.path.join(REPO, path) + (f":{arg}" if arg else ""))
    apply_overrides(config, [ONE_DEVICE_MESH, *overrides])
    return config


def _abstract_batch(run, config):
    import jax
    import jax.numpy as jnp

    b = config.batch_size
    if config.recipe == "mae":
        s, c = config.data.image_size, run.recipe.channels
        return {"image": jax.ShapeDtypeStruct((b, s, s, c), jnp.float32),
                "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
    return {"tokens": jax.ShapeDtypeStruct((b,) + tuple(config.model.token_shape), jnp.int32),
            "label": jax.ShapeDtypeStruct((b,), jnp.int32)}


def step_memory(spec: str, data_info, remat: str) -> dict:
    """memory_analysis() of the compiled train step and the VJP residual bytes, for one remat policy."""
    import jax

    from benchmarks.scaling_model import residual_bytes
    from maskgen import train

    config = _load(spec, [f"remat={remat}"])
    run = train.setup(config, data_info)
    tx, schedule = train.make_optimizer(config.optimizer, config.total_steps, *run.recipe.optimizer_groups())
    _, (state, ema), _ = train._state_initializer(run, tx)
    batch = _abstract_batch(run, config)
    step = train.make_train_step(run, tx, schedule, jax.random.key(1))
    with run.context():
        start = time.perf_counter()
        compiled = jax.jit(step).lower(state, ema, batch).compile()
        compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    residuals = residual_bytes(run, state, batch)
    return {"argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
            "alias": mem.alias_size_in_bytes, "temp": mem.temp_size_in_bytes,
            "residuals": residuals["bytes"], "compile_s": compile_s, "batch": config.batch_size}


def demo_peak_rss(size: str, steps: int) -> tuple[float, float]:
    """Runs the demo in a child process; returns (peak RSS bytes, wall seconds)."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run([sys.executable, "-c", DEMO_CHILD, size, str(steps), os.path.join(workdir, "demo")],
                              cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"the demo child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
        if peak_kib <= before:
            # ru_maxrss of children is the maximum over all waited-for children; an earlier bigger
            # child would hide this one. Nothing else runs children before this in this script.
            raise RuntimeError("could not attribute the peak RSS to the demo child")
        return peak_kib * 1024, wall


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--demo-steps", type=int, default=None, help="training steps per demo stage (default 30; smoke 2)")
    args = p.parse_args()
    size = "tiny" if args.size == "smoke" else "small"
    info = common.machine()
    rows = []
    savings = {}
    remats = REMATS if args.size == "default" else REMATS[:2]
    for label, spec, data_info in STEPS if args.size == "default" else STEPS[:1]:
        spec = spec.format(size=size)
        results = {remat: step_memory(spec, data_info, remat) for remat in remats}
        base = results["none"]
        savings[label] = 1 - results["block"]["residuals"] / base["residuals"]
        for remat, r in results.items():
            rows.append([label, r["batch"], remat, f"{r['argument'] / MIB:.2f}", f"{r['temp'] / MIB:.2f}",
                         f"{r['residuals'] / MIB:.2f}", f"{r['residuals'] / base['residuals']:.2f}",
                         f"{r['compile_s']:.1f}"])
    steps = args.demo_steps or (2 if args.size == "smoke" else 30)
    # Peak RSS before the demo child: this process (the compiled steps above) for comparison.
    self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak, wall = demo_peak_rss(size, steps)
    rows.append([f"`maskgen demo` (size={size}, {steps} steps per stage), peak RSS", "", "", "", "", "", "",
                 f"{peak / GIB:.2f} GiB in {wall:.0f} s"])
    headline = (f"demo peak RSS {peak / GIB:.2f} GiB (claim < 4 GiB); remat=block keeps "
                + ", ".join(f"{(1 - s) * 100:.0f}% of the residuals ({label})" for label, s in savings.items()))
    print(f"(this benchmark process itself peaked at {self_rss / GIB:.2f} GiB)")
    common.report("B8", "train-step memory with and without remat; the demo's peak memory",
                  ["train step", "batch", "remat", "arguments (MiB)", "XLA:CPU temp (MiB)",
                   "backward residuals (MiB)", "residuals vs none", "compile (s)"], rows, headline,
                  ratio=peak / GIB, claim="demo peak RSS < 4 GiB", holds=peak < 4 * GIB,
                  extra={"demo_peak_rss_bytes": peak, "remat_block_residual_saving": savings},
                  json_path=args.json, info=info)


if __name__ == "__main__":
    main()
