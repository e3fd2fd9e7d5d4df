r"""Masked diffusion language model at MDLM's OpenWebText scale (Sahoo et al., arXiv 2406.07524,
Sec. 4.1 and Table 2), with the equal-budget AR baseline (`model=ar`).

MDLM "small": a 12-layer, 768-wide, 12-head bidirectional transformer (DiT-style in the paper,
here maskgen's TokenTransformer with rotary positions and no time conditioning), sequences of 1024
tokens, batch 512, AdamW lr 3e-4 with 2,500 warm-up steps, 1M steps, EMA 0.9999, log-linear
schedule, antithetic time sampling. Reported: OWT test perplexity <= 23.21 (MDLM) vs 17.54 (AR),
and Gen PPL under GPT-2 Large at 1,000 sampling steps.

What differs from the paper, on purpose or for want of pieces maskgen does not have:
  * Tokens are UTF-8 bytes (V = 257, maskgen.data.text), not GPT-2 BPE (V = 50,257): 1024 bytes
    are about 250 BPE tokens of context, and bits per byte are not comparable with the paper's
    per-BPE-token perplexities. The architecture, optimiser and schedule are the paper's.
  * tfds text examples are one document each, cut or EOS-padded to seq_len (MDLM's padded LM1B
    setting), not the concatenated-and-wrapped OWT stream.
  * OpenWebText has only a train split; the last 1% is held out for validation (MDLM holds out
    the last 100k documents).
  * No dropout (the paper's DiT uses 0.1).

Launch (TPU pod; data prepared with `tfds build openwebtext` into DATA):
  maskgen train --config experiments/mdm_owt.py:data_dir=DATA --workdir gs://BUCKET/mdlm_owt
  maskgen train --config experiments/mdm_owt.py:data_dir=DATA,model=ar --workdir gs://BUCKET/ar_owt
  maskgen eval --workdir gs://BUCKET/mdlm_owt --config.evals.samples.scorer_workdir=gs://BUCKET/ar_owt

`size=tiny` is a CI smoke variant of the same file on the local pydoc text (no download).

Arguments (`:data_dir=DIR,size=full,model=mdm,steps=N`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

ARGS = {
    "data_dir": Arg("", "the tfds data directory holding openwebtext (size=full)"),
    "size": choice("full", "full: MDLM small on OWT; tiny: a 1-block smoke test on the local pydoc text",
                   "full", "tiny"),
    "model": choice("mdm", "mdm (masked diffusion), or ar: the autoregressive baseline of the same size", "mdm", "ar"),
    "steps": Arg(None, "training steps (default: 1M for full, 10 for tiny)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    width, depth, heads, seq_len, batch = (32, 1, 2, 64, 8) if tiny else (768, 12, 12, 1024, 512)
    config = base_config()
    config.recipe = {"mdm": "masked_diffusion", "ar": "autoregressive"}[args["model"]]
    config.total_steps = args["steps"] or (10 if tiny else 1_000_000)
    config.batch_size = batch
    if tiny:
        config.data = dict(name="pydoc_text", data_dir="", image_size=0, augment="none", train_split="train",
                           read_threads=1, seq_len=seq_len)
        eval_split = "validation"
    else:
        config.data = dict(name="tfds:openwebtext", data_dir=args["data_dir"], image_size=0, augment="none",
                           train_split="train[:99%]", read_threads=16, seq_len=seq_len)
        eval_split = "train[99%:]"
    if config.recipe == "masked_diffusion":
        config.model = dict(token_shape=(seq_len,), vocab_size=257, width=width, depth=depth, num_heads=heads,
                            mlp_ratio=4.0, positions="rope", qk_norm=False, tie_head=True)
        config.loss = dict(schedule="loglinear", antithetic=True, t_min=1e-3, likelihood_samples=4)
        # MDLM samples OWT with T = 1000 ancestral steps and its cache.
        config.sampling = dict(sampler="ancestral", num_steps=16 if tiny else 1000, schedule="linear", cache=True,
                               precision="float64", temperature=1.0)
    else:
        config.model = dict(token_shape=(seq_len,), codebook_size=257, width=width, depth=depth, num_heads=heads,
                            mlp_ratio=4.0, conditioning="none", positions="rope", qk_norm=False, tie_head=True)
        config.loss = dict(label_smoothing=0.0, class_dropout=0.0)
        config.sampling = dict(temperature=1.0, precision="float64")
    config.compute_dtype = "float32" if tiny else "bfloat16"
    config.optimizer.lr = 3e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(2500, config.total_steps // 10)
    config.optimizer.min_lr_ratio = 1.0  # MDLM keeps the learning rate constant after warm-up
    config.ema_decay = 0.9 if tiny else 0.9999
    # The byte vocabulary (257 ids) does not split over a tensor axis, so the output bias and logits
    # stay replicated along the vocabulary; heads and MLPs still shard over `tensor`.
    config.sharding_rules = tuple((axis, None if axis == "vocab" else mesh_axes)
                                  for axis, mesh_axes in config.sharding_rules)
    config.eval_params = "ema"
    config.log_every = 1 if tiny else 1000
    config.checkpoint_every = config.total_steps if tiny else 10_000
    config.evals = dict(
        likelihood=dict(type="text_likelihood", every=0 if tiny else 50_000, split=eval_split,
                        limit=1 if tiny else None),
        samples=dict(type="text_samples", every=0 if tiny else 100_000, num_samples=2 if tiny else 64,
                     batch_size=2 if tiny else 64, seed=0, scorer_workdir=""),
    )
    return config
