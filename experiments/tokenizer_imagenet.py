r"""The MaskGIT VQGAN tokenizer at paper scale: ImageNet 256x256, f16 (16x16 tokens), 1024 codes.

Chang et al., arXiv 2202.04200, with the values of google-research/maskgit's
maskgit/configs/vqgan_config.py: conv encoder/decoder without attention, GroupNorm + swish,
channel multipliers [1, 1, 2, 2, 4] on 128 base channels, 2 residual blocks, codebook 1024 x 256,
commitment 0.25 and the VQ entropy loss (weight 0.1, temperature 0.01) with neither k-means init
nor dead-code restarts (the reference uses neither; set model.vq.kmeans_init /
restart_dead_codes to add them), a non-saturating GAN loss with weight 0.1 (fixed: neither
MaskGIT's config nor MAGVIT's trainer uses VQGAN's adaptive weight) and the StyleGAN
discriminator, R1 10 (full strength), LeCam 0.001 (MAGVIT), EMA 0.999 of the generator.
LFQ (MAGVIT-v2, arXiv 2310.05737): temperature 0.01, a GroupNorm before LFQ and MAGVIT's
entropy-loss annealing (the factor 3 over 5,000 steps is maskgen's choice: neither paper gives
numbers). FSQ: the paper's bound. The paper's perceptual loss uses
pretrained VGG/LPIPS weights, which maskgen does not download: set
`--config.loss.perceptual_weight=0.1` only with a feature network of your own (see docs/tokenizers.md).

`quantizer=kl`: MAR's KL-16 tokenizer (Li et al., arXiv 2406.11838: 16x16x16 continuous tokens at
256 px), which is LDM's KL-f16 autoencoder (Rombach et al., arXiv 2112.10752; CompVis/latent-diffusion
configs/autoencoder/autoencoder_kl_16x16x16.yaml, and LTH14/mar models/vae.py `AutoencoderKL(embed_dim=16,
ch_mult=(1, 1, 2, 2, 4))`): 16 latent channels at 16x downsampling, 128 base channels, multipliers
[1, 1, 2, 2, 4], 2 residual blocks, KL weight 1e-6, L1 reconstruction, a PatchGAN discriminator
(3 downsamplings, 64 channels) with hinge loss, VQGAN's adaptive weight times 0.5 from step 50,001,
no LeCam or R1. maskgen differs: its conv encoder/decoder has no attention block at 16x16 (LDM's
attn_resolutions [16]), and the perceptual (LPIPS) term is off unless you give a feature network.
`maskgen tokenize` then writes the means with scale factor 1 / std of the train split's latents.

Launch (TPU pod slice, data on an on-disk TFDS copy):
  maskgen train --config experiments/tokenizer_imagenet.py --workdir /gcs/BUCKET/vqgan_f16 \
      --config.data.data_dir=/mnt/tfds
Tiny CPU smoke test: `:size=tiny` (32 px, 2 levels, 20 steps).

Arguments (`:quantizer=fsq,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import base_config, choice, parse_config_arg

ARGS = {
    "quantizer": choice("vq", "the quantizer, or kl: MAR's KL-16 continuous tokenizer", "vq", "fsq", "lfq", "rvq",
                        "kl"),
    "size": choice("full", "full: the paper's VQGAN at 256 px; tiny: a 20-step CPU smoke test at 32 px", "full", "tiny"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    kl = args["quantizer"] == "kl"
    config = base_config()
    config.recipe = "tokenizer"
    config.batch_size = 8 if tiny else 256
    config.total_steps = 20 if tiny else 1_000_000
    config.data = dict(name="tfds:imagenet2012", data_dir="", image_size=32 if tiny else 256, augment="crop_flip",
                       train_split="train", read_threads=16)
    config.model = dict(
        base_channels=8 if tiny else 128, channel_multipliers=(1, 2) if tiny else (1, 1, 2, 2, 4),
        num_res_blocks=1 if tiny else 2, quantizer=args["quantizer"], embed_dim=16 if kl else 256, codebook_size=1024,
        vq=dict(l2_normalize=False, commitment_weight=0.25, codebook_weight=1.0, use_ema=False, ema_decay=0.99,
                kmeans_init=False, kmeans_iters=10, restart_dead_codes=False, dead_code_threshold=0.1,
                entropy_weight=0.1, entropy_temperature=0.01),
        fsq_levels=(8, 8, 8, 5, 5, 5),  # 64,000 codes (FSQ paper's large setting)
        fsq_bound="paper",
        lfq_bits=10,  # 1024 codes
        lfq=dict(entropy_weight=0.1, commitment_weight=0.25, temperature=0.01, diversity_weight=1.0),
        lfq_group_norm=True,
        rvq_levels=4, quantizer_dropout=0.0,
        conv_variant="maskgen", pixel_range="minus_one_to_one",
        discriminator="patch" if kl else "stylegan", stylegan_channel_multiplier=1,
        stylegan_max_channels=16 if tiny else 512,
        stylegan_blur_resample=True,
        # The patch discriminator's settings, used with model.discriminator="patch".
        discriminator_channels=8 if tiny else 64, discriminator_downsamples=2 if tiny else 3,
    )
    config.loss = dict(
        reconstruction="l2", reconstruction_weight=1.0, perceptual_weight=0.0, perceptual_network="digit_classifier",
        adversarial_weight=0.1, gan_loss="non_saturating", adaptive_gan_weight=False,
        gan_start_step=5 if tiny else 20_000, lecam_weight=0.001,
        lecam_decay=0.999, r1_weight=10.0, discriminator_lr=1e-4, discriminator_b1=0.0,
        entropy_anneal_factor=3.0 if args["quantizer"] == "lfq" else 0.0, entropy_anneal_steps=10 if tiny else 5000,
        kl_weight=1e-6,  # LDM's (used with quantizer=kl only)
    )
    if kl:  # LDM's LPIPSWithDiscriminator settings for its KL autoencoders
        config.loss.update(reconstruction="l1", adversarial_weight=0.5, gan_loss="hinge", adaptive_gan_weight=True,
                           gan_start_step=5 if tiny else 50_001, lecam_weight=0.0, r1_weight=0.0)
    config.optimizer = dict(lr=1e-4, b1=0.0 if not tiny else 0.9, b2=0.99, weight_decay=1e-4,
                            warmup_steps=2 if tiny else 5000, min_lr_ratio=0.1, grad_clip_norm=1.0)
    config.ema_decay = 0.999
    config.compute_dtype = "float32" if tiny else "bfloat16"
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    config.log_every = 1 if tiny else 100
    config.checkpoint_every = 10 if tiny else 5000
    config.evals = dict(
        # The Fréchet distance here uses the digits classifier only on digits; at full scale use
        # Inception features (the MaskGIT issue adds them); PSNR and codebook usage apply anywhere.
        reconstruction=dict(type="reconstruction", every=0 if tiny else 10_000, split="validation",
                            num_grid=8 if tiny else 16, max_examples=16 if tiny else 10_000, frechet=False,
                            feature_net="digit_classifier", seed=0),
    )
    return config
