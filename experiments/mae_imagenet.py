r"""MAE ViT pretraining on ImageNet-1k with the paper's settings, for a TPU pod.

He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377, Table/Sec. A.1:
ViT encoder on 224x224 images with 16x16 patches, decoder 8 blocks x 512, 75% random masking,
per-patch normalised pixel loss, AdamW (b1=0.9, b2=0.95, wd=0.05), base lr 1.5e-4 x batch/256,
batch 4096, 40 warm-up epochs then cosine, 800 epochs, random resized crop + flip.

The data is read from an on-disk TFDS copy of imagenet2012 (maskgen never downloads); prepare it
with tfds in ArrayRecord format, or convert a folder of images with `maskgen prepare`.

Launch (v5e-64 / v4-64 or similar; FSDP over 8 chips per data-parallel group):
  maskgen train --config experiments/mae_imagenet.py:size=B --workdir /gcs/BUCKET/mae_b16 \
      --config.data.data_dir=/mnt/tfds
Tiny CPU smoke test on a local TFDS-format copy:
  maskgen train --config experiments/mae_imagenet.py:size=tiny --workdir /tmp/mae_in \
      --config.data.data_dir=/path/to/tfds

Arguments (`:size=L,epochs=400`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

IMAGENET_TRAIN_EXAMPLES = 1_281_167

# size: (width, depth, heads, patch, image_size, batch)
SIZES = {
    "tiny": (32, 1, 2, 16, 32, 8),
    "B": (768, 12, 12, 16, 224, 4096),
    "L": (1024, 24, 16, 16, 224, 4096),
    "H": (1280, 32, 16, 14, 224, 4096),
}
ARGS = {
    "size": choice("B", "ViT size (SIZES); tiny is a 20-step CPU smoke test", *SIZES),
    "epochs": Arg(800, "training epochs (the paper: 800; ignored by size=tiny)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, patch, image_size, batch = SIZES[args["size"]]
    tiny = args["size"] == "tiny"
    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch
    config = base_config()
    config.recipe = "mae"
    config.batch_size = batch
    config.total_steps = 20 if tiny else args["epochs"] * steps_per_epoch
    config.data = dict(name="tfds:imagenet2012", data_dir="", image_size=image_size, augment="crop_flip",
                       train_split="train", read_threads=16)
    config.model = dict(
        patch_size=patch, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        decoder_width=32 if tiny else 512, decoder_depth=1 if tiny else 8, decoder_heads=2 if tiny else 16,
        mask_ratio=0.75, norm_pix_loss=True, sincos_order="x_first",  # util/pos_embed.py's layout
    )
    config.optimizer = dict(lr=1.5e-4 * batch / 256, b1=0.9, b2=0.95, weight_decay=0.05,
                            warmup_steps=2 if tiny else 40 * steps_per_epoch, min_lr_ratio=0.0,
                            grad_clip_norm=0.0)  # MAE pretraining uses no gradient clipping.
    config.ema_decay = 0.9999
    config.eval_params = "params"
    config.compute_dtype = "float32" if tiny else "bfloat16"
    # Parameters and optimizer state sharded over 8-way FSDP groups; the rest is data parallel.
    config.mesh = (("data", -1), ("fsdp", 1 if tiny else 8), ("tensor", 1))
    config.log_every = 1 if tiny else 100
    config.checkpoint_every = 10 if tiny else 2000
    config.evals = dict(
        # A quick probe (mean-pooled tokens + Adam) on 50k train images with the (ImageNet)
        # validation split as held-out set, to follow training.
        probe=dict(type="linear_probe", every=0 if tiny else 50_000, baselines=("random_init",),
                   train_split="train", test_split="validation", protocol="quick", steps=1000, learning_rate=1e-2,
                   weight_decay=1e-4, max_examples=64 if tiny else 50_000),
        reconstruction=dict(type="image_grid", every=0 if tiny else 10_000, split="validation", num=8 if tiny else 16,
                            rows=("original", "masked", "reconstruction")),
    )
    if not tiny:
        # The paper's linear probe (Appendix A.2, Table 9) at the end of training: the class token,
        # BatchNorm without affine, LARS at base lr 0.1 x 16384/256, no weight decay, 10 warm-up of
        # 90 epochs, on the whole train split (features computed once, without the paper's
        # RandomResizedCrop + flip: see docs/mae.md).
        config.evals.linprobe = dict(type="linear_probe", every=0, baselines=(), train_split="train",
                                     test_split="validation", protocol="paper", epochs=90, batch_size=16384,
                                     base_learning_rate=0.1, warmup_epochs=10, max_examples=None)
    return config
