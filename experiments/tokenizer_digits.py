r"""Image tokenizer on scikit-learn's digits upsampled to 16x16: 8x8 token grids (CPU).

A MaskGIT-style conv autoencoder (Chang et al., arXiv 2202.04200) with a pluggable quantizer:
VQ (l2-normalised codes, k-means init, dead-code restart), FSQ (arXiv 2309.15505), LFQ
(MAGVIT-v2, arXiv 2310.05737) or residual VQ (SoundStream/EnCodec). All four have 256 codes
per level (RVQ: 2 levels), so they compare on the same budget.

Launch (2-core CPU, a few minutes each):
  maskgen train --config experiments/tokenizer_digits.py:quantizer=vq --workdir /tmp/tok_vq
  maskgen eval --workdir /tmp/tok_vq
  maskgen tokenize --tokenizer-workdir /tmp/tok_vq --data digits --out /tmp/tokens_vq

Arguments (`:quantizer=lfq,steps=100,gan=1,perceptual=1,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, flag, integer, parse_config_arg

# size: (base_channels, num_res_blocks, steps, batch)
SIZES = {"tiny": (8, 1, 20, 16), "small": (32, 1, 1000, 64)}
ARGS = {
    "quantizer": choice("vq", "the quantizer, each with 256 codes per level", "vq", "fsq", "lfq", "rvq"),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "gan": flag(0, "1 adds the adversarial loss (patch discriminator, hinge, LeCam) from mid-training"),
    "perceptual": flag(0, "1 adds a perceptual loss on the features of the digit classifier trained in maskgen"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    channels, res_blocks, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "tokenizer"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    # The digits are 8x8 scans; 16x16 inputs with one 2x downsampling give an 8x8 token grid.
    # The 8x8 scans are upsampled to 16x16 on purpose (max_upscale=2); 32 would be refused.
    config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                       read_threads=1, max_upscale=2.0)
    config.model = dict(
        base_channels=channels, channel_multipliers=(1, 2), num_res_blocks=res_blocks,
        quantizer=args["quantizer"], embed_dim=16, codebook_size=256,
        vq=dict(l2_normalize=True, commitment_weight=0.25, codebook_weight=1.0, use_ema=False, ema_decay=0.99,
                kmeans_init=True, kmeans_iters=10, restart_dead_codes=True, dead_code_threshold=0.1,
                entropy_weight=0.0, entropy_temperature=0.01),
        fsq_levels=(4, 4, 4, 4),  # 256 codes
        fsq_bound="paper",
        lfq_bits=8,  # 256 codes
        lfq=dict(entropy_weight=0.1, commitment_weight=0.25, temperature=0.01, diversity_weight=1.0),
        lfq_group_norm=False,
        rvq_levels=2, quantizer_dropout=0.5,
        conv_variant="maskgen", pixel_range="minus_one_to_one",
        discriminator="patch", discriminator_channels=16, discriminator_downsamples=2,
        stylegan_channel_multiplier=1, stylegan_max_channels=16, stylegan_blur_resample=True,
    )
    config.loss = dict(
        reconstruction="l1", reconstruction_weight=1.0,
        perceptual_weight=0.1 if args["perceptual"] else 0.0, perceptual_network="digit_classifier",
        adversarial_weight=0.1 if args["gan"] else 0.0, gan_loss="hinge",
        gan_start_step=config.total_steps // 2, lecam_weight=0.001, lecam_decay=0.99, r1_weight=0.0,
        discriminator_lr=1e-4, discriminator_b1=0.5, adaptive_gan_weight=False,
        entropy_anneal_factor=0.0, entropy_anneal_steps=0,
    )
    config.optimizer.lr = 1e-3
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.99
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    config.evals = dict(
        reconstruction=dict(type="reconstruction", every=0, split="test", num_grid=16, max_examples=None,
                            frechet=True, feature_net="digit_classifier", seed=0),
    )
    return config
