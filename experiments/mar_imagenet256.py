r"""MAR-B at paper scale: class-conditional ImageNet 256x256 on KL-16 latents (16x16x16), for a TPU pod.

Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838, and the
official code LTH14/mar (models/mar.py `mar_base`, main_mar.py, README): an MAE-style encoder and
decoder of 12 blocks each, width 768, 12 heads, MLP ratio 4, LayerNorm eps 1e-6, a buffer of 64
class tokens, attention and projection dropout 0.1; the DiffLoss MLP of 6 residual blocks of
width 1024 (MAR-B's `--diffloss_d 6 --diffloss_w 1024`); tokens are the 16x16x16 latents of the
KL-16 tokenizer at patch size 1 (256 positions), scaled to unit variance by the stored factor
(MAR's 0.2325 for its KL-16). Training: a truncated-normal mask ratio >= 0.7 per batch, label
dropout 0.1, the diffusion loss (cosine schedule, 1000 steps, epsilon with learned variance) on
each masked token repeated 4 times; AdamW b = (0.9, 0.95), weight decay 0.02, lr 8e-4
(blr 1e-4 x batch 2048 / 256), 100 warmup epochs then constant, gradient clipping 3.0, EMA
0.9999, 800 epochs at batch 2048. Sampling (README's MAR-B evaluation): 256 iterations
(`num_steps`; main_mar.py's default and the README's faster setting is 64), 100 DDPM steps of
the head, temperature 1.0, CFG 2.9 with the linear schedule (without CFG: cfg_scale=1.0,
temperature=0.95). Reported (claim): FID 2.31 (MAR-B, with CFG, 800 epochs).

Where maskgen differs: the latents are those `maskgen tokenize` wrote once per image (MAR caches
the posterior's moments of each image and its flip, and samples the posterior every epoch;
maskgen's digits-scale data keep one latent per image; see docs/diffusion.md); weight decay
applies to every parameter (MAR's add_weight_decay skips biases and norms).

Launch (after training a KL tokenizer and writing its latents):
  maskgen train --config experiments/tokenizer_imagenet.py:quantizer=kl ... --workdir /gcs/BUCKET/kl16
  maskgen tokenize --tokenizer-workdir /gcs/BUCKET/kl16 --data tfds:imagenet2012 --out /gcs/BUCKET/in256_kl16
  maskgen train --config experiments/mar_imagenet256.py:latents=/gcs/BUCKET/in256_kl16 --workdir /gcs/BUCKET/mar_b
FID: as experiments/maskgit_imagenet256.py (InceptionV3 weights and ADM's reference batch, never downloaded):
  maskgen eval --workdir /gcs/BUCKET/mar_b --config.evals.fid.inception_weights=PATH \
      --config.evals.fid.adm_reference=/path/VIRTUAL_imagenet256_labeled.npz

Arguments (`:latents=DIR,size=tiny,epochs=400`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

IMAGENET_TRAIN_EXAMPLES = 1_281_167
BATCH = 2048
ARGS = {
    "latents": Arg("", "the latent dataset directory (`maskgen tokenize --out` of a KL-16 tokenizer run)"),
    "size": choice("base", "base: MAR-B; tiny: a 1-block CPU smoke test on the latents of a small KL run",
                   "base", "tiny"),
    "epochs": Arg(800, "training epochs (MAR-B: 800; ignored by size=tiny)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // BATCH
    config = base_config()
    config.recipe = "mar"
    config.batch_size = 8 if tiny else BATCH
    config.total_steps = 10 if tiny else args["epochs"] * steps_per_epoch
    config.data = dict(name="tokens", data_dir=args["latents"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    width, depth, heads = (32, 1, 2) if tiny else (768, 12, 12)
    config.model = dict(
        patch_size=1, width=width, depth=depth, num_heads=heads, decoder_width=width, decoder_depth=depth,
        decoder_heads=heads, mlp_ratio=4.0, buffer_size=4 if tiny else 64,
        head_width=32 if tiny else 1024, head_depth=2 if tiny else 6, dropout=0.1)
    config.loss = dict(mask_ratio_min=0.7, mask_ratio_std=0.25, class_dropout=0.1, diffusion_batch_mul=4,
                       prediction="epsilon", learn_sigma=True, num_timesteps=1000)
    config.sampling = dict(num_steps=4 if tiny else 256, diffusion_steps=5 if tiny else 100, sampler="ddpm",
                           temperature=1.0, cfg_scale=2.9, cfg_schedule="linear")
    config.optimizer = dict(lr=1e-4 * config.batch_size / 256, b1=0.9, b2=0.95, weight_decay=0.02,
                            warmup_steps=2 if tiny else 100 * steps_per_epoch, min_lr_ratio=1.0, grad_clip_norm=3.0)
    config.ema_decay = 0.9999
    config.eval_params = "ema"
    config.compute_dtype = "float32" if tiny else "bfloat16"
    config.remat = "none" if tiny else "block"  # MAR trains with --grad_checkpointing
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    config.log_every = 1 if tiny else 100
    config.checkpoint_every = 5 if tiny else 5000
    # FID-50k against ADM's reference batch, as experiments/maskgit_imagenet256.py.
    config.evals = dict(
        fid=dict(type="generation", every=-1, num_per_class=2 if tiny else 50, batch_size=8 if tiny else 256,
                 seed=0, classifier="", feature_net="inception", inception_weights="", reference="adm",
                 adm_reference="", adm_statistics="auto", uint8=True, real_split="validation", floor_split="",
                 max_real=16 if tiny else None, trajectory_samples=0),
    )
    return config
