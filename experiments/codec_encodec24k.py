r"""EnCodec-like 24 kHz codec (paper scale): 75 Hz frames, 32 RVQ levels x 1024 codes (1.5-24 kbit/s).

Sources: EnCodec (Défossez et al., arXiv 2210.13438), sections 3-4 and its audiocraft code
(`config/solver/compression/default.yaml`, `encodec_base_24khz.yaml`, `config/model/encodec/default.yaml`):
  * SEANet strides (2, 4, 5, 8) = 320 samples per frame: 75 Hz at 24 kHz; 32 filters doubling at
    each stride (32 -> 512), 128-d latents, one residual block per level;
  * residual VQ of 1024 codes (10 bits) per level: 750 bit/s per level, so 1.5 / 3 / 6 / 12 / 24
    kbit/s are the first 2 / 4 / 8 / 16 / 32 levels (decode with `num_levels`); EMA codebooks
    (decay 0.99), k-means init (50 iterations), dead-code restarts (audiocraft restarts a code whose
    EMA count falls below 2 vectors: with 64 x 75 = 4,800 vectors a batch over 1,024 codes that is
    2 x 1024 / 4800 = 0.43 of the uniform share, maskgen's unit), commitment weight 1;
  * bandwidth sampled during training: every example draws its number of levels uniformly from
    1..32 (`quantizer_dropout=1.0`; audiocraft draws one per batch, DAC per example);
  * losses: L1 x 0.1, multi-scale mel (windows 2^6..2^10, hop / 4, 64 HTK bins from 64 Hz; L1 on the
    mel plus MSE on log10 mel, normalised) x 2, hinge adversarial x 4 and L1 feature matching x 4 from
    an MS-STFT discriminator (FFT sizes 1024, 2048, 512, 256, 128; 32 filters), from step 0;
  * Adam lr 3e-4, betas (0.5, 0.9), no weight decay, no clipping; batch 64 one-second clips;
    200 epochs x 2,000 updates; EMA of the weights 0.99.
Differences (maskgen): no gradient balancer (the weights above multiply the losses directly;
audiocraft's balancer rescales each loss's gradient at the decoder output to the share
weight / sum(weights) of a unit norm), GroupNorm/swish residual blocks without the LSTM and without
weight normalisation, the discriminator updated at every step, per-example quantizer dropout.
The data here is maskgen's local eSpeak NG speech resampled to 24 kHz (EnCodec trained on speech,
music and general audio).

Launch (accelerator):
  maskgen train --config experiments/codec_encodec24k.py --workdir runs/encodec24k

Arguments (`:levels=32,steps=...`; `size=tiny`: a 20-step CPU smoke test of the same pipeline with
tiny widths, 4 levels of 16 codes and a 2-scale discriminator): ARGS below.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

ARGS = {
    "size": choice("paper", "paper: EnCodec's sizes; tiny: a 20-step CPU smoke test", "paper", "tiny"),
    "levels": Arg(32, "RVQ levels (32 = 24 kbit/s)", integer(min=1)),
    "steps": Arg(400_000, "training steps (EnCodec: 200 epochs x 2,000 updates)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    levels = min(args["levels"], 4) if tiny else args["levels"]
    config = base_config()
    config.recipe = "codec"
    config.total_steps = 20 if tiny else args["steps"]
    config.batch_size = 2 if tiny else 64
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train",
                       read_threads=1 if tiny else 4, words="all", sample_rate=24000, clip_seconds=1.0)
    config.model = dict(
        base_channels=2 if tiny else 32, channel_multipliers=(1, 2, 4, 8, 16), strides=(2, 4, 5, 8), num_res_blocks=1,
        embed_dim=8 if tiny else 128, codebook_size=16 if tiny else 1024, num_levels=levels, quantizer_dropout=1.0,
        codebook_dim=0,
        vq=dict(l2_normalize=False, commitment_weight=1.0, codebook_weight=1.0, use_ema=True, ema_decay=0.99,
                kmeans_init=True, kmeans_iters=5 if tiny else 50, restart_dead_codes=True, dead_code_threshold=0.43,
                entropy_weight=0.0, entropy_temperature=0.01),
        discriminator_ffts=(256, 128) if tiny else (1024, 2048, 512, 256, 128),
        discriminator_channels=2 if tiny else 32,
    )
    config.loss = dict(
        l1_weight=0.1, mel_weight=2.0, mel_windows=(64, 128, 256, 512, 1024), mel_bins=64, mel_fmin=64.0,
        stft_weight=0.0, stft_windows=(512, 1024, 2048),
        adversarial_weight=4.0, feature_weight=4.0, gan_start_step=0,
        discriminator_lr=3e-4, discriminator_b1=0.5, discriminator_b2=0.9,
    )
    config.optimizer.lr = 3e-4
    config.optimizer.b1 = 0.5
    config.optimizer.b2 = 0.9
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 0
    config.optimizer.min_lr_ratio = 1.0  # a constant learning rate, as audiocraft's (no schedule)
    config.optimizer.grad_clip_norm = 0.0
    config.ema_decay = 0.99
    config.eval_params = "ema"
    config.log_every = 5 if tiny else 100
    config.checkpoint_every = 20 if tiny else 5000
    # Bandwidths 1.5 / 3 / 6 / 12 / 24 kbit/s = the first 2 / 4 / 8 / 16 / 32 levels.
    config.evals = dict(
        reconstruction=dict(type="audio_reconstruction", every=0 if tiny else 25_000, split="test",
                            max_examples=8 if tiny else 1024,
                            levels=tuple(k for k in (2, 4, 8, 16, 32) if k <= levels), num_audio=4,
                            word_accuracy=not tiny, words="all", seed=0),
    )
    return config
