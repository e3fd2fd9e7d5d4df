r"""MaskGIT (Chang et al., arXiv 2202.04200) on DiGIT's k-means tokens (Zhu et al., arXiv 2410.12490).

The demo MaskGIT of experiments/maskgit_digits.py (with MaskGIT's own decoding: temperature 1, no
guidance), class-conditional, on the 8x8 token grids that `maskgen tokenize` writes from a DiGIT
tokenizer run (experiments/digit_tokenizer_digits.py: k-means on an MAE run's patch features).
Samples decode through that run's per-code mean patches, so `maskgen sample` writes image grids and
the generation evaluator scores them with maskgen's digit classifier. DiGIT's claim: generating
SSL-feature tokens beats generating VQ tokens; compare with experiments/maskgit_digits.py on the VQ
tokens at the same steps (docs/mae_family.md: here it does not hold, largely for the decoder).

Launch (2-core CPU; the tokens from experiments/digit_tokenizer_digits.py's launch lines):
  maskgen train --config experiments/maskgit_digit_tokens.py:tokens=runs/digit_tokens --workdir runs/maskgit_digit
  maskgen sample --workdir runs/maskgit_digit --num 10 --steps 8 --out grid.png

Arguments (`:tokens=DIR,codebook=256,size=tiny,steps=100`): ARGS below.
"""

import importlib.util
import os

from maskgen.config import Arg, choice, integer, parse_config_arg

ARGS = {
    "tokens": Arg("runs/digit_tokens", "the token dataset directory (`maskgen tokenize --out` of a DiGIT "
                  "tokenizer run)"),
    "codebook": Arg(256, "the tokenizer run's k-means codebook size (its model.codebook_size)", integer(min=2)),
    "size": choice("small", "model size and batch (maskgit_digits.py's SIZES); tiny is for tests", "tiny", "small"),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "model": choice("maskgit", "maskgit, or ar: the causal, KV-cached baseline on the same backbone", "maskgit", "ar"),
}


def _maskgit_digits():
    """experiments/maskgit_digits.py, whose settings this file shares (one place to change them)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "maskgit_digits.py")
    spec = importlib.util.spec_from_file_location("experiment_maskgit_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    base = {"tokens": args["tokens"], "size": args["size"], "model": args["model"]}
    if args["steps"]:
        base["steps"] = args["steps"]
    config = _maskgit_digits().get_config(",".join(f"{k}={v}" for k, v in base.items()))
    config.model.codebook_size = args["codebook"]
    if config.recipe == "maskgit":
        # MaskGIT's own decoding (sampling temperature 1, no guidance). maskgit_digits.py's tuned
        # temperature 1.2 with guidance rising to 2 suits the VQ tokens; on these k-means tokens
        # (one run, 1,000 steps, docs/mae_family.md) it gave class consistency 0.751 against 0.925.
        config.sampling.temperature = 1.0
        config.sampling.cfg_scale = 1.0
        config.sampling.cfg_schedule = "constant"
    return config
