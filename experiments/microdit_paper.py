r"""MicroDiT ("Stretching Each Dollar: Diffusion Training from Scratch on a Micro-Budget", Sehwag et
al., arXiv 2407.15811; SonyResearch/micro_diffusion), its four training stages, for a TPU pod.

The paper's model (the facts in maskgen's methods guide): a DiT backbone of 28 blocks x 1024 with
layer-wise scaling (attention width ratio 0.5 -> 1.0 and MLP ratio 0.5 -> 4.0, linear over
depth), expert-choice mixture-of-experts MLPs (8 experts, capacity factor 2) in every second
block but the last, a patch-mixer before the masking (deferred masking), 75% of the patches
dropped (argsort of noise, fixed keep count) with the EDM loss (sigma_data 0.9, P_mean -0.6,
P_std 1.2) on the visible patches only, no decoder; Heun sampling, 30 steps, CFG 5. Stages:
  1: 256 px, 75% masking     2: 256 px, no masking (fine-tuning)
  3: 512 px, 75% masking     4: 512 px, no masking
Each stage is one maskgen run, started from the previous stage's weights with
`config.init_from` (`init=WORKDIR`); the position embeddings are fixed sin-cos tables, so the
512-px stages load the 256-px weights on a 4x larger token grid unchanged.

Where maskgen differs, and why:
  * Class labels replace the captions: maskgen has no text encoder for image generation, so the
    mixer and backbone are conditioned on class + time by adaLN (no caption cross-attention).
  * The patch-mixer's 6 blocks have the backbone's width (the paper's XL mixer is 768 wide);
    maskgen's mixer is the same `TokenBlock` stack before the drop.
  * Latents are maskgen's own KL tokenizer's (`experiments/tokenizer_imagenet.py:quantizer=kl`,
    16x downsampling, so patch size 1 gives the paper's 16x16 tokens at 256 px and 32x32 at 512),
    written by `maskgen tokenize` at each resolution (`latents=DIR`).
  * Stage lengths, batch and learning rate below are the paper's as we read them (unverified);
    MicroDiT's own stage-2 alternative of a ratio schedule inside one run is
    `--config.masking.schedule='((0, 0.75), (N, 0.0))'`.

Launch:
  maskgen train --config experiments/microdit_paper.py:stage=1,latents=/gcs/B/lat256 --workdir /gcs/B/s1
  maskgen train --config experiments/microdit_paper.py:stage=2,latents=/gcs/B/lat256,init=/gcs/B/s1 --workdir /gcs/B/s2
  maskgen train --config experiments/microdit_paper.py:stage=3,latents=/gcs/B/lat512,init=/gcs/B/s2 --workdir /gcs/B/s3
  maskgen train --config experiments/microdit_paper.py:stage=4,latents=/gcs/B/lat512,init=/gcs/B/s3 --workdir /gcs/B/s4

Arguments (`:stage=2,init=...`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# stage: (resolution, masking ratio, steps) (unverified stage lengths).
STAGES = {1: (256, 0.75, 280_000), 2: (256, 0.0, 55_000), 3: (512, 0.75, 55_000), 4: (512, 0.0, 20_000)}
# size: (width, depth, heads, mixer blocks, batch). "tiny" is a CPU smoke test of the same recipe.
SIZES = {"paper": (1024, 28, 16, 6, 2048), "tiny": (32, 4, 2, 1, 8)}
ARGS = {
    "size": choice("paper", "model size (SIZES); tiny is a CPU smoke test", *SIZES),
    "stage": Arg(1, "the training stage (STAGES): 1 and 3 masked, 2 and 4 unmasked fine-tuning", integer(min=1, max=4)),
    "latents": Arg("", "the latent dataset directory at this stage's resolution (`maskgen tokenize --out`)"),
    "init": Arg("", "the previous stage's workdir (needed for stages 2-4)"),
    "steps": Arg(None, "training steps (default per stage)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    resolution, ratio, steps = STAGES[args["stage"]]
    if args["stage"] > 1 and not args["init"]:
        raise ValueError(f"MicroDiT stage {args['stage']} starts from the previous stage's weights: give "
                         f"init=<stage {args['stage'] - 1} workdir>")
    config = base_config()
    config.recipe = "dit"
    config.total_steps = args["steps"] or steps
    width, depth, heads, mixer, batch = SIZES[args["size"]]
    config.batch_size = batch
    config.init_from = args["init"]
    config.data = dict(name="tokens", data_dir=args["latents"], image_size=0, augment="none",
                       train_split="train", read_threads=16)
    config.model = dict(patch_size=1, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, qk_norm=False,
                        mixer_depth=mixer, num_experts=8, capacity_factor=2.0, moe_every=2, layerwise_scaling=True)
    config.diffusion = dict(objective="edm", sigma_data=0.9, p_mean=-0.6, p_std=1.2)
    config.loss = dict(class_dropout=0.1)
    # The mixer stays in the unmasked stages ("none" keeps model.mixer_depth): the same weights.
    config.masking = dict(mode="deferred" if ratio > 0 else "none", ratio=ratio, schedule=())
    config.repa = dict(encoder_workdir="", layer=8, weight=0.5, projector_dim=2048)
    config.sampling = dict(sampler="heun", num_steps=30, cfg_scale=5.0, cfg_schedule="constant",
                           cfg_interval=(0.0, 1.0), temperature=1.0)
    config.optimizer = dict(lr=2.4e-4 if args["stage"] == 1 else 8e-5, b1=0.9, b2=0.999, weight_decay=0.1,
                            warmup_steps=min(2500, config.total_steps) if args["stage"] == 1 else 0, min_lr_ratio=0.1, grad_clip_norm=0.5)
    config.ema_decay = 0.9995
    config.eval_params = "ema"
    config.compute_dtype = "bfloat16"
    # Experts sharded over an `expert` mesh axis; parameters FSDP over 8 chips.
    config.mesh = (("data", -1), ("fsdp", 8 if args["size"] == "paper" else 1), ("tensor", 1), ("expert", 1))
    config.sharding_rules = tuple(r if r[0] != "expert" else ("expert", "expert") for r in config.sharding_rules)
    config.log_every = 100
    config.checkpoint_every = 5_000
    config.evals = dict(
        generation=dict(type="generation", every=-1, num_per_class=10, batch_size=500, seed=0,
                        feature_net="inception", classifier="", inception_weights=""),
    )
    return config
