r"""Masked diffusion language model on local byte-level text (MDLM, Sahoo et al. arXiv 2406.07524;
MD4, Shi et al. arXiv 2406.04329), with the autoregressive baseline at the same budget.

The data are CPython's pydoc help topics as bytes (`data.name="pydoc_text"`: vocabulary 257 = 256
bytes + EOS, fixed windows of `seq_len` bytes, train/validation splits), so nothing is downloaded.
`model=ar` trains the `autoregressive` recipe on the same data with the same width, depth, batch,
steps and optimizer: the equal-budget baseline for the likelihood and Gen PPL comparisons.

Launch (2-core CPU):
  maskgen train --config experiments/mdm_text.py:size=cpu,model=ar --workdir runs/ar_text
  maskgen train --config experiments/mdm_text.py:size=cpu --workdir runs/mdm_text \
      --config.evals.samples.scorer_workdir=runs/ar_text
  maskgen eval --workdir runs/mdm_text            # bits/token bound, entropy, Gen PPL, samples

Sizes: tiny (width 64, depth 2, 64 bytes, 300 steps) trains in under a minute, for tests; cpu
(width 128, depth 4, 128 bytes, 800 steps, batch 32) in about 8 minutes on 2 shared cores.

Arguments (`:size=tiny,model=ar,steps=100,seq_len=64`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch, seq_len)
SIZES = {"tiny": (64, 2, 2, 300, 32, 64), "cpu": (128, 4, 4, 800, 32, 128)}
ARGS = {
    "size": choice("cpu", "model size, steps and batch (SIZES); tiny is for tests", *SIZES),
    "model": choice("mdm", "mdm (masked diffusion), or ar: the autoregressive baseline of the same size and "
                    "budget", "mdm", "ar"),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "seq_len": Arg(None, "bytes per example (default per size)", integer(min=2)),
    "schedule": choice("loglinear", "the MDM noise schedule alpha(t)", "loglinear", "linear", "cosine"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch, seq_len = SIZES[args["size"]]
    seq_len = args["seq_len"] or seq_len
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = {"mdm": "masked_diffusion", "ar": "autoregressive"}[args["model"]]
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="pydoc_text", data_dir="", image_size=0, augment="none", train_split="train",
                       read_threads=1, seq_len=seq_len)
    if config.recipe == "masked_diffusion":
        config.model = dict(token_shape=(seq_len,), vocab_size=257, width=width, depth=depth, num_heads=heads,
                            mlp_ratio=4.0, positions="rope", qk_norm=False, tie_head=True)
        # MDLM: log-linear schedule, antithetic t, t from 1e-3 (its sampling_eps).
        config.loss = dict(schedule=args["schedule"], antithetic=True, t_min=1e-3, likelihood_samples=4)
        # Ancestral sampling with as many steps as tokens (MDLM's T >= L), cached, 64-bit Gumbel.
        config.sampling = dict(sampler="ancestral", num_steps=seq_len, schedule="linear", cache=True,
                               precision="float64", temperature=1.0)
    else:
        config.model = dict(token_shape=(seq_len,), codebook_size=257, width=width, depth=depth, num_heads=heads,
                            mlp_ratio=4.0, conditioning="none", positions="rope", qk_norm=False, tie_head=True)
        # No label smoothing: the baseline is scored by its exact NLL, which smoothing would inflate.
        config.loss = dict(label_smoothing=0.0, class_dropout=0.0)
        config.sampling = dict(temperature=1.0, precision="float64")
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.98
    config.optimizer.weight_decay = 0.0  # MDLM trains without weight decay
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    # The EMA starts at the initial weights; its decay must suit the run length.
    config.ema_decay = 0.99 if config.total_steps >= 500 else 0.9
    config.eval_params = "ema"
    config.log_every = max(1, min(100, config.total_steps // 10))
    config.checkpoint_every = config.total_steps
    config.evals = dict(
        likelihood=dict(type="text_likelihood", every=0, split="validation", limit=None if not tiny else 2),
        samples=dict(type="text_samples", every=0, num_samples=4 if tiny else 16, batch_size=4 if tiny else 16,
                     seed=0, scorer_workdir=""),
    )
    return config
