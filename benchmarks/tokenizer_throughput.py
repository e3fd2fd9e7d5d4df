"""B7: tokenizer encode + decode throughput (images/s) for each quantizer maskgen has (VQ, FSQ, LFQ, RVQ).

The digits tokenizer (experiments/tokenizer_digits.py, size "small": a MaskGIT-style conv
autoencoder, base 32 channels, multipliers (1, 2), one res block, 16x16 inputs -> 8x8 token
grid, 256 codes per level) is built through the training loop's own `setup` for each
`quantizer=` option, and the recipe's inference methods (`encode`: encoder -> quantizer codes;
`decode`: codes -> images, as `maskgen tokenize` and the evaluators call them) are jitted as one
round trip, plus each half alone. No claim: the numbers show what the quantizer choice costs at
inference (VQ/RVQ search a codebook, FSQ rounds, LFQ takes signs). Weights are random values of
the model's shapes (see `_random_variables`); throughput does not depend on training.

    python -m benchmarks.tokenizer_throughput                # batch 256 (< 1 minute on 2 CPU cores)
    python -m benchmarks.tokenizer_throughput --size smoke   # the tiny config, batch 16
"""

from __future__ import annotations

import os

import jax
import numpy as np

from benchmarks import common
from maskgen import train as train_lib
from maskgen.config import load_config_file
from maskgen.recipes.tokenizer import QUANTIZERS

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                      "tokenizer_digits.py")


def _random_variables(run, seed: int = 0):
    """Variables of the model's shapes and shardings, filled on the host (float ~ N(0, 0.1), the rest
    zero). Compiling the real initialiser costs more than the whole measurement, and encode/decode
    time does not depend on the weights' values (nothing in them is data-dependent control flow)."""
    with run.context():
        abstract = jax.eval_shape(run.init_variables, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(a, sharding):
        x = rng.normal(0.0, 0.1, a.shape) if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape)
        return jax.device_put(x.astype(a.dtype), sharding)

    return jax.tree.map(fill, abstract, run.variable_shardings)


def _contenders(quantizer: str, size: str, batch: int):
    config = load_config_file(f"{CONFIG}:quantizer={quantizer},size={size}")
    run = train_lib.setup(config)
    variables = _random_variables(run)
    recipe = run.recipe
    image_size, channels = config.data.image_size, recipe.channels
    images = jax.random.uniform(jax.random.key(1), (batch, image_size, image_size, channels), minval=-1, maxval=1)
    rng = jax.random.key(2)

    def encode(v, x):
        return recipe.encode(run.merge(v), {"image": x}, rng)

    def decode(v, codes):
        return recipe.decode(run.merge(v), {"codes": codes}, rng)

    def round_trip(v, x):
        return decode(v, encode(v, x))

    with jax.set_mesh(run.mesh):
        c_rt = common.compile_fn(round_trip, variables, images)
        c_enc = common.compile_fn(encode, variables, images)
        codes = c_enc.call(variables, images)
        c_dec = common.compile_fn(decode, variables, codes)
    return run, {"round trip": (c_rt, (variables, images)), "encode": (c_enc, (variables, images)),
                 "decode": (c_dec, (variables, codes))}, tuple(codes.shape[1:])


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="images per call (default 256; smoke 16)")
    args = p.parse_args()
    smoke = args.size == "smoke"
    batch = args.batch or (16 if smoke else 256)
    repeats = args.repeats or (2 if smoke else 5)
    config_size = "tiny" if smoke else "small"
    built = {}
    for q in QUANTIZERS:
        built[q] = _contenders(q, config_size, batch)
    # One alternation over every (quantizer, part) pair, so drift hits all of them alike.
    calls = {f"{q}/{part}": (lambda c=c, a=a: c.call(*a))
             for q, (_, parts, _) in built.items() for part, (c, a) in parts.items()}
    run0 = built[QUANTIZERS[0]][0]
    with jax.set_mesh(run0.mesh):
        times = common.alternate(calls, repeats=repeats, rounds=2)
    rows, rates = [], {}
    for q, (run, parts, code_shape) in built.items():
        t = {part: common.median(times[f"{q}/{part}"]) for part in parts}
        rates[q] = batch / t["round trip"]
        rows.append([q, f"{code_shape} x {run.recipe.codebook_size}", f"{rates[q]:,.0f}",
                     common.fmt_seconds(t["round trip"]), common.fmt_seconds(t["encode"]),
                     common.fmt_seconds(t["decode"]), f"{batch / t['encode']:,.0f} / {batch / t['decode']:,.0f}",
                     f"{parts['round trip'][0].compile_s:.1f}"])
    print(f"config experiments/tokenizer_digits.py:size={config_size}, batch {batch}, "
          f"{len(times[next(iter(calls))])} timed calls per contender")
    headline = "encode+decode images/s: " + ", ".join(f"{q} {r:,.0f}" for q, r in rates.items())
    common.report("B7", f"tokenizer encode+decode throughput per quantizer (digits {config_size}, batch {batch})",
                  ["quantizer", "tokens x codes", "images/s (enc+dec)", "median / batch", "encode only",
                   "decode only", "images/s enc / dec", "compile (s)"],
                  rows, headline, ratio=None, claim="", holds=None,
                  extra={"images_per_s": rates, "batch": batch}, json_path=args.json)


if __name__ == "__main__":
    main()
