r"""DiT / SiT on digits (Peebles & Xie arXiv 2212.09748; Ma et al. arXiv 2401.08740): the CPU demo,
with MicroDiT's masking and MoE (arXiv 2407.15811) and REPA (arXiv 2410.06940) as arguments.

By default a class-conditional diffusion transformer on 2x2 pixel patches of the 16x16 digits
(scikit-learn's 8x8 scans upsampled), trained with rectified flow (SiT's velocity objective) and
sampled with Heun steps and classifier-free guidance. The generation evaluator scores samples of
every class with maskgen's digit classifier (class consistency) and a Fréchet distance on its
features.

Launch (2-core CPU):
  maskgen train --config experiments/dit_digits.py --workdir runs/dit
  maskgen sample --workdir runs/dit --num 10 --out grid.png
  # MicroDiT: 75% of the patches dropped after a 1-block patch-mixer, then unmasked from step 1350
  maskgen train --config experiments/dit_digits.py:masking=deferred,ratio=0.75,finetune_from=1350 --workdir runs/microdit
  # REPA: align block 2 to a maskgen MAE run (experiments/mae_digits.py has the same 8x8 patch grid)
  maskgen train --config experiments/mae_digits.py --workdir runs/mae
  maskgen train --config experiments/dit_digits.py:repa=runs/mae --workdir runs/dit_repa
  # latents: a dataset written by `maskgen tokenize` from a KL tokenizer run
  maskgen train --config experiments/dit_digits.py:data=latents,latents_dir=runs/latents --workdir runs/dit_latent

Arguments (`:size=tiny,steps=100,...`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, flag, integer, number, parse_config_arg

# size: (width, depth, heads, steps, batch). "small" reaches class consistency >= 0.8 in a few CPU minutes.
SIZES = {"tiny": (32, 2, 2, 20, 16), "small": (96, 4, 4, 1500, 64)}
ARGS = {
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "data": choice("digits", "digits: 16x16 pixels in 2x2 patches; latents: a `maskgen tokenize` latent dataset",
                   "digits", "latents"),
    "latents_dir": Arg("runs/latents", "the latent dataset directory (`maskgen tokenize --out`, with data=latents)"),
    "objective": choice("rectified_flow", "the diffusion objective (maskgen.diffusion)", "rectified_flow", "edm",
                        "cosine"),
    "masking": choice("none", "MicroDiT patch masking: none, naive (drop before the backbone) or deferred "
                      "(a patch-mixer first)", "none", "naive", "deferred"),
    "ratio": Arg(0.75, "masking ratio (with masking=naive/deferred)", number(0, 1, max_open=True)),
    "finetune_from": Arg(0, "the step from which masking stops (MicroDiT's unmasked phase); 0: never",
                         integer(min=0)),
    "mixer_depth": Arg(1, "patch-mixer blocks (masking=deferred)", integer(min=1)),
    "experts": Arg(0, "MoE experts in every second block (0: dense)", integer(min=0)),
    "capacity": Arg(2.0, "MoE capacity factor", number(0, min_open=True)),
    "repa": Arg("", "a maskgen MAE run's workdir to align to ('' : no REPA)"),
    "repa_layer": Arg(2, "the backbone block aligned to the encoder (REPA)", integer(min=1)),
    "cfg": Arg(2.0, "classifier-free guidance scale for sampling and evaluation", number(0)),
    "evals": flag(1, "1: the generation evaluator at the end; 0: none"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "dit"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    if args["data"] == "digits":
        config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                           read_threads=1, max_upscale=2.0)
        patch_size = 2
    else:
        config.data = dict(name="tokens", data_dir=args["latents_dir"], image_size=0, augment="none",
                           train_split="train", read_threads=1)
        patch_size = 1
    masking = args["masking"]
    ratio = float(args["ratio"]) if masking != "none" else 0.0
    config.model = dict(
        patch_size=patch_size, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, qk_norm=False,
        mixer_depth=args["mixer_depth"] if masking == "deferred" else 0,
        num_experts=args["experts"], capacity_factor=float(args["capacity"]), moe_every=2, layerwise_scaling=False,
    )
    config.diffusion = {
        "rectified_flow": dict(objective="rectified_flow", time_sampling="uniform"),
        # MicroDiT's EDM settings (sigma_data 0.9 there, for latents); pixels in [-1, 1] have std ~0.5.
        "edm": dict(objective="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2),
        "cosine": dict(objective="cosine", prediction="v", num_timesteps=1000),
    }[args["objective"]]
    config.loss = dict(class_dropout=0.1)  # DiT's label dropout for classifier-free guidance
    schedule = ((0, ratio), (args["finetune_from"], 0.0)) if masking != "none" and args["finetune_from"] else ()
    config.masking = dict(mode=masking, ratio=ratio, schedule=schedule)
    config.repa = dict(encoder_workdir=args["repa"], layer=args["repa_layer"], weight=0.5,
                       projector_dim=4 * width)
    sampler = {"rectified_flow": "heun", "edm": "heun", "cosine": "ddim"}[args["objective"]]
    config.sampling = dict(sampler=sampler, num_steps=8 if tiny else 20, cfg_scale=float(args["cfg"]),
                           cfg_schedule="constant", cfg_interval=(0.0, 1.0), temperature=1.0)
    config.optimizer.lr = 1e-3
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.999 if config.total_steps >= 2000 else 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    config.evals = dict(
        generation=dict(type="generation", every=0 if args["evals"] else -1,
                        num_per_class=4 if tiny else 100, batch_size=40 if tiny else 250, seed=0),
    )
    return config
