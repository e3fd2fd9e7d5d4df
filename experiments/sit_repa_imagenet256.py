r"""SiT-XL/2 with REPA on ImageNet 256x256 latents, for a TPU pod.

Sources: SiT (Ma et al., arXiv 2401.08740): the DiT-XL backbone (28 blocks x 1152, 16 heads,
adaLN-Zero) trained with the linear interpolant / rectified flow x_t = (1 - t) x + t eps and velocity
prediction, t ~ U(0, 1); AdamW lr 1e-4, no weight decay, batch 256, EMA 0.9999, label dropout 0.1.
REPA (Yu et al., arXiv 2410.06940; sihyun-yu/REPA): the states after block 8 go through a 3-layer
SiLU MLP (hidden 2048) and are aligned, by negative cosine similarity per token with weight 0.5,
to the normalised patch tokens of a frozen encoder (DINOv2-B at 224 px, whose 16x16 patch grid
matches the 16x16 latent tokens); 4M steps for the paper's FID 1.42 (with CFG 1.8 for t <= 0.7,
250 SDE steps; claim, not reproduced here).

Where maskgen differs, and why:
  * The latents are maskgen's own KL-16 tokenizer's (`experiments/tokenizer_imagenet.py:quantizer=kl`,
    16x16x16 at 256 px, as MAR's) instead of SD-VAE's 32x32x4, so the patch size is 1: the same
    256 tokens per image as SiT-XL/2's 2x2 patches of 32x32 latents.
  * The frozen encoder is a maskgen MAE run (nothing is downloaded): `encoder=WORKDIR`. Its patch
    grid must be the model's 16x16 token grid, e.g. `experiments/mae_imagenet.py:size=H` (224 px,
    14-px patches) or an MAE at 256 px with 16-px patches; the recipe refuses another grid by name.
    The clean images are resized to the encoder's size (REPA: 224 for DINOv2).
  * REPA needs the clean images next to the latents: the latent dataset must keep the images
    (a dataset with both an "image" and a "latents" field); a latent-only dataset is refused.
  * Sampling: maskgen has no SDE sampler for rectified flow; the default is the Euler ODE with the
    paper's 250 steps, CFG 1.8 inside the guidance interval (noise fraction <= 0.7). `sampler=heun`
    with fewer steps is SiT's ODE alternative.

Launch (after the tokenizer, `maskgen tokenize` and an MAE run):
  maskgen train --config experiments/sit_repa_imagenet256.py:latents=/gcs/B/latents,encoder=/gcs/B/mae_h14 \
      --workdir /gcs/B/sit_xl_repa

Arguments (`:size=B,encoder=...`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, REPA layer). B's layer 4 follows REPA's SiT-B setting (unverified).
SIZES = {"XL": (1152, 28, 16, 8), "L": (1024, 24, 16, 8), "B": (768, 12, 12, 4)}
ARGS = {
    "size": choice("XL", "SiT size (SIZES)", *SIZES),
    "latents": Arg("", "the latent dataset directory (`maskgen tokenize --out` of a KL tokenizer run, with images)"),
    "encoder": Arg("", "REPA's frozen encoder: a maskgen MAE run's workdir with a 16x16 patch grid ('' : no REPA)"),
    "steps": Arg(4_000_000, "training steps (REPA's headline run: 4M)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, layer = SIZES[args["size"]]
    config = base_config()
    config.recipe = "dit"
    config.total_steps = args["steps"]
    config.batch_size = 256
    config.data = dict(name="tokens", data_dir=args["latents"], image_size=256, augment="none",
                       train_split="train", read_threads=16)
    config.model = dict(patch_size=1, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, qk_norm=False,
                        mixer_depth=0, num_experts=0, capacity_factor=2.0, moe_every=2, layerwise_scaling=False)
    config.diffusion = dict(objective="rectified_flow", time_sampling="uniform")
    config.loss = dict(class_dropout=0.1)
    config.masking = dict(mode="none", ratio=0.0, schedule=())
    config.repa = dict(encoder_workdir=args["encoder"], layer=layer, weight=0.5, projector_dim=2048)
    config.sampling = dict(sampler="euler", num_steps=250, cfg_scale=1.8, cfg_schedule="interval",
                           cfg_interval=(0.0, 0.7), temperature=1.0)
    config.optimizer = dict(lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.0, warmup_steps=0, min_lr_ratio=1.0,
                            grad_clip_norm=0.0)
    config.ema_decay = 0.9999
    config.eval_params = "ema"
    config.compute_dtype = "bfloat16"
    config.mesh = (("data", -1), ("fsdp", 8), ("tensor", 1))
    config.log_every = 100
    config.checkpoint_every = 10_000
    config.evals = dict(
        generation=dict(type="generation", every=50_000, num_per_class=10, batch_size=500, seed=0,
                        feature_net="inception", classifier="", inception_weights=""),
    )
    return config
