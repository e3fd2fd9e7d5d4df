r"""Audio codec on the local eSpeak NG speech (spoken digits at 8 kHz, 1 s clips): 50 Hz x 8 RVQ levels (CPU).

An EnCodec/DAC-style codec (SoundStream arXiv 2107.03312, EnCodec arXiv 2210.13438, DAC arXiv
2306.06546) at CPU scale: maskgen's 1-D conv encoder/decoder with strided convolutions (2, 4, 5, 4)
-> 160 samples per frame, 50 frames per second at 8 kHz; a residual VQ of 8 levels x 256 codes
(8 bits per level: 400 bit/s per level, 3.2 kbit/s with all 8) with EMA codebooks, k-means init and
dead-code restarts; per-example quantizer dropout (half of each batch uses a random 1..8 levels),
so one model serves every bitrate. Losses as EnCodec's code weights them: L1 x 0.1, multi-scale mel
x 2 (windows 2^6..2^9 here, 2^6..2^10 in EnCodec; from 0 Hz here, EnCodec's 64 Hz floor let the
decoder fill 0-64 Hz with a large drift that the weak L1 term alone did not remove), plus `gan=1`: the MS-STFT discriminator (hinge
x 4, feature matching x 4; 3 scales of 8 filters here). docs/audio.md has the bitrate sweep.

Why 8 kHz: the convolutions at the full sample rate dominate the cost, and on a shared 2-core CPU
16 kHz (strides (2, 4, 5, 8), the same 50 Hz) doubles a step's time; `sample_rate=16000` selects it.

Launch (2-core CPU, a few minutes):
  maskgen train --config experiments/codec_speech.py --workdir /tmp/codec
  maskgen tokenize --tokenizer-workdir /tmp/codec --data speech --out /tmp/codec_tokens   # [50, 8] streams
  python -m benchmarks.codec_bitrate                  # B17: quality vs levels, dropout on vs off

Arguments (`:size=tiny,steps=50,dropout=0,gan=1,factorised=1`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, flag, integer, number, one_of, parse_config_arg

# size: (base_channels, channel_multipliers, embed_dim, levels, codebook, steps, batch). Narrow at
# the full sample rate (4 channels), wide at the frame rate (64), where convolutions are cheap.
SIZES = {"tiny": (2, (1, 1, 2, 2, 2), 8, 4, 16, 20, 4),
         "small": (4, (1, 2, 4, 8, 16), 32, 8, 256, 1000, 8)}
# sample rate -> strides giving 50 frames per second
STRIDES = {8000: (2, 4, 5, 4), 16000: (2, 4, 5, 8)}
ARGS = {
    "size": choice("small", "model size, levels and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "dropout": Arg(0.5, "fraction of each batch that uses a random 1..K levels (0: always all K)", number(0, 1)),
    "gan": flag(0, "1 adds the MS-STFT discriminator (hinge x 4, feature matching x 4) from a quarter of training"),
    "factorised": flag(0, "1: DAC's factorised codes (8-d l2-normalised lookup space)"),
    "words": choice("digits", "the speech source's word set", "digits", "commands", "all"),
    "sample_rate": Arg(8000, "8000 or 16000 (both 50 frames per second)", one_of(*STRIDES)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    channels, multipliers, embed_dim, levels, codebook, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "codec"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train",
                       read_threads=1, words=args["words"], sample_rate=args["sample_rate"], clip_seconds=1.0,
                       renditions=8)
    config.model = dict(
        base_channels=channels, channel_multipliers=multipliers, strides=STRIDES[args["sample_rate"]],
        num_res_blocks=1,
        embed_dim=embed_dim, codebook_size=codebook, num_levels=levels, quantizer_dropout=args["dropout"],
        codebook_dim=8 if args["factorised"] else 0,
        # EMA codebooks (decay 0.99), k-means init, dead-code restarts: EnCodec's RVQ. A code is
        # restarted below 0.05 x the uniform share (under 1 of the 400 vectors a batch has, over 256 codes).
        vq=dict(l2_normalize=bool(args["factorised"]), commitment_weight=1.0, codebook_weight=1.0, use_ema=True,
                ema_decay=0.99, kmeans_init=True, kmeans_iters=10, restart_dead_codes=True, dead_code_threshold=0.05,
                entropy_weight=0.0, entropy_temperature=0.01),
        discriminator_ffts=(128, 256, 512), discriminator_channels=8,
    )
    config.loss = dict(
        l1_weight=0.1, mel_weight=2.0, mel_windows=(64, 128, 256, 512), mel_bins=64, mel_fmin=0.0,
        stft_weight=0.0, stft_windows=(128, 256, 512),
        adversarial_weight=4.0 if args["gan"] else 0.0, feature_weight=4.0 if args["gan"] else 0.0,
        gan_start_step=config.total_steps // 4, discriminator_lr=3e-4, discriminator_b1=0.5, discriminator_b2=0.9,
    )
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.5
    config.optimizer.b2 = 0.9
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.optimizer.min_lr_ratio = 0.1
    config.optimizer.grad_clip_norm = 1.0
    config.ema_decay = 0.99
    config.eval_params = "params"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    # maskgen.evaluators.audio: mel distance, SI-SNR, word accuracy (maskgen's word classifier, trained
    # and cached on first use) and codebook usage, at all levels and at the first 1, 2, 4, 8 (_k1 ...).
    tiny = args["size"] == "tiny"
    config.evals = dict(
        reconstruction=dict(type="audio_reconstruction", every=0, split="test", max_examples=16 if tiny else None,
                            levels=tuple(k for k in (1, 2, 4, 8) if k <= levels), num_audio=4,
                            word_accuracy=not tiny, words=args["words"], seed=0),
    )
    return config
