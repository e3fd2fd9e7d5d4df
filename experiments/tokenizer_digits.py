r"""Image tokenizer on scikit-learn's digits upsampled to 16x16: 8x8 token grids (CPU).

A MaskGIT-style conv autoencoder (Chang et al., arXiv 2202.04200) with a pluggable quantizer:
VQ (l2-normalised codes, k-means init, dead-code restart), FSQ (arXiv 2309.15505), LFQ
(MAGVIT-v2, arXiv 2310.05737) or residual VQ (SoundStream/EnCodec). All four have 256 codes
per level (RVQ: 2 levels), so they compare on the same budget.

`quantizer=kl` is the continuous autoencoder instead (LDM's KL bottleneck, Rombach et al.,
arXiv 2112.10752, as MAR and MicroDiT use): an 8x8 grid of 4-channel float latents, KL weight
`kl_weight` (default 1e-5. Measured at size=small, 1,000 steps: 1e-5 gives 44.1 dB PSNR with all 4
channels used and a latent std of 1.14; LDM's 1e-6 gives 44.8 dB but latents of std 1.96 and a
posterior std of 0.045, nearly a plain autoencoder; 1e-4 costs 4 dB (40.5) and collapses one
channel to std 0.14. docs/diffusion.md has the table). `maskgen tokenize` then writes latents
scaled to unit variance, for the continuous generators (dit, mar) to train on.

Launch (2-core CPU, a few minutes each):
  maskgen train --config experiments/tokenizer_digits.py:quantizer=vq --workdir /tmp/tok_vq
  maskgen eval --workdir /tmp/tok_vq
  maskgen tokenize --tokenizer-workdir /tmp/tok_vq --data digits --out /tmp/tokens_vq
  maskgen train --config experiments/tokenizer_digits.py:quantizer=kl --workdir /tmp/tok_kl
  maskgen tokenize --tokenizer-workdir /tmp/tok_kl --data digits --out /tmp/latents_kl

Arguments (`:quantizer=lfq,steps=100,gan=1,perceptual=1,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, flag, integer, number, parse_config_arg

# size: (base_channels, num_res_blocks, steps, batch)
SIZES = {"tiny": (8, 1, 20, 16), "small": (32, 1, 1000, 64)}
ARGS = {
    "quantizer": choice("vq", "the quantizer, each with 256 codes per level, or kl: continuous 4-channel latents",
                        "vq", "fsq", "lfq", "rvq", "kl"),
    "kl_weight": Arg(1e-5, "quantizer=kl: weight of the KL term (LDM: 1e-6)", number(0)),
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
        # kl: 4 latent channels on the 8x8 grid (the encoder outputs 8: mean and log-variance).
        quantizer=args["quantizer"], embed_dim=4 if args["quantizer"] == "kl" else 16, codebook_size=256,
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
        entropy_anneal_factor=0.0, entropy_anneal_steps=0, kl_weight=args["kl_weight"],
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
