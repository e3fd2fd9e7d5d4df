r"""MaskGIT on digit tokens (Chang et al., arXiv 2202.04200): the CPU demo.

It trains on the 8x8 token grids that `maskgen tokenize` writes from a digits tokenizer run
(`experiments/tokenizer_digits.py`), and is evaluated by decoding samples with that tokenizer:
class consistency under maskgen's digit classifier, and a Fréchet distance on its features next to
the real-vs-real floor. `maskgen demo` runs the whole pipeline.

Launch (2-core CPU):
  maskgen train --config experiments/tokenizer_digits.py --workdir runs/tok
  maskgen tokenize --tokenizer-workdir runs/tok --data digits --out runs/tokens
  maskgen train --config experiments/maskgit_digits.py:tokens=runs/tokens --workdir runs/maskgit
  maskgen sample --workdir runs/maskgit --num 10 --steps 8 --out grid.png

Arguments (`:tokens=DIR,size=tiny,steps=100,model=ar`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch). "small" trains in about 3.5 minutes on 2 CPU cores.
SIZES = {"tiny": (32, 2, 2, 20, 32), "small": (96, 4, 4, 1000, 64)}
ARGS = {
    "tokens": Arg("runs/demo/tokens", "the token dataset directory (`maskgen tokenize --out`; the default is where "
                  "`maskgen demo` writes it)"),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "model": choice("maskgit", "maskgit, or ar: the causal, KV-cached baseline on the same backbone", "maskgit", "ar"),
    "conditioning": choice("adaln", "how the class enters the transformer", "adaln", "prefix"),
    "positions": choice("learned", "position embeddings", "learned", "rope2d"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = {"maskgit": "maskgit", "ar": "autoregressive"}[args["model"]]
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    config.model = dict(
        token_shape=(8, 8), codebook_size=256, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        conditioning=args["conditioning"], positions=args["positions"], qk_norm=False, tie_head=True,
        # maskgen's pre-LN block without dropout; "bert" (with dropout=0.1) is the official MaskGIT
        # transformer, which needs conditioning=prefix or none.
        architecture="pre_ln", dropout=0.0,
    )
    config.loss = dict(mask_schedule="cosine", label_smoothing=0.1, class_dropout=0.1, weighting="per_example")
    # Decoding defaults for `maskgen sample`, `maskgen edit` and the evaluator: MaskGIT's 8 steps,
    # cosine schedule and choice temperature 4.5, with sampling temperature 1.2 and guidance rising
    # linearly over the steps to 2 (s_t = 2 (t + 1) / 8). On the demo this is the frontier point of
    # `benchmarks/maskgit_frontier.py` with the lowest Fréchet distance at class consistency >= 0.97
    # (docs/maskgit.md: 13.1 at 0.990 over 3 seeds, against 14.8 at 0.987 for MaskGIT's unguided
    # decoding). Guidance costs a second (unconditional) network pass per step; temperature=1.0,
    # cfg_scale=1.0, cfg_schedule="constant" is MaskGIT's own setting.
    config.sampling = dict(num_steps=8, schedule="cosine", choice_temperature=4.5, temperature=1.2,
                           policy="confidence", cfg_scale=2.0, cfg_schedule="linear")
    if config.recipe == "autoregressive":
        config.sampling = dict(temperature=1.0, cfg_scale=1.0)
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.96
    config.optimizer.weight_decay = 0.045
    config.optimizer.warmup_steps = min(200, config.total_steps // 10)
    # The EMA starts at the initial weights, so its decay must suit the run length: 0.999 over
    # 1,000 steps still weighs the initial weights by 0.999^1000 = 0.37 (samples are then noise).
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    config.evals = dict(
        generation=dict(type="generation", every=0, num_per_class=100 if args["size"] != "tiny" else 4,
                        batch_size=250 if args["size"] != "tiny" else 40, seed=0),
    )
    return config
