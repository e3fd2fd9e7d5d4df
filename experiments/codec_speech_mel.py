r"""Mel codec on the local eSpeak NG speech (spoken digits at 16 kHz, 1 s clips): 50 Hz x 4 RVQ levels (CPU).

The acoustic tokens of maskgen's masked audio generators, MAGNeT (Ziv et al., arXiv 2401.04577) and
MaskGCT (Wang et al., arXiv 2409.00750). Both papers use a waveform RVQ codec (EnCodec, arXiv
2210.13438, at 32 kHz for MAGNeT; a 12-level DAC-like codec, arXiv 2306.06546, for MaskGCT). At CPU
scale a waveform codec learns no phase (docs/audio.md), so this is the `codec` recipe with
`model.input="log_mel"`: the same 1-D conv encoder/decoder and residual VQ, over log-mel frames.

- Log-mel: SSAST's Kaldi-like front end (Gong et al., arXiv 2110.09784; experiments/ssast_speech.py):
  25 ms window (400 samples, n_fft 512), 10 ms hop (160: 100 frames/s), from 20 Hz, but 80 Slaney
  mels of magnitude (floor 1e-5, maskgen's `scale_log_mel` convention) instead of 128/32 HTK bins
  of power. Why 80: the codec's mels are also what Griffin-Lim hears; below 1 kHz Slaney filters
  are linear, and 80 of them over 20 Hz-8 kHz are 37 Hz apart (about 1.2 FFT bins at n_fft 512, the
  finest spacing that leaves no filter empty), which resolves the harmonics of voices with F0 above
  ~75 Hz: the pitch and formant detail that carry voice identity (MaskGCT's speaker similarity)
  survive the filterbank inversion. 64 mels would be 47 Hz apart and smear low male voices.
- Model: strides (2,) over frames -> 50 Hz tokens (1 s -> 50 frames, like SSAST frame tokens);
  widths 64 -> 128 (2 residual blocks per level), 32-d latents; RVQ of `levels` (4) x 256 codes with
  EMA codebooks (0.99), k-means init, dead-code restarts and per-example quantizer dropout (half
  of each batch uses a random 1..K levels, so one model serves every K).
- Loss: L1 on the scaled log-mel (+ the RVQ commitment). No discriminator (it refuses one).
- Steps: 600 at batch 16 (about 8 minutes on a shared 2-core CPU): on the 640 held-out-voice test
  clips, mel distance 0.436 and word accuracy 0.90 through Griffin-Lim (0.998 on Griffin-Lim of the
  original log-mel). `steps=1500` (about 13 minutes) reaches 0.333 and 0.98 and keeps more of the
  harmonics (voice identity); docs/audio.md has the level sweep.

Launch (2-core CPU, a few minutes):
  maskgen train --config experiments/codec_speech_mel.py --workdir /tmp/codec_mel
  maskgen eval --workdir /tmp/codec_mel          # mel distance, word accuracy through Griffin-Lim, per-level usage
  maskgen tokenize --tokenizer-workdir /tmp/codec_mel --data speech --out /tmp/codec_tokens   # [50, 4] streams

Arguments (`:size=tiny,steps=50,levels=4,dropout=0.5`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, number, parse_config_arg

# size: (base_channels, num_res_blocks, embed_dim, codebook, steps, batch)
SIZES = {"tiny": (8, 1, 8, 16, 20, 4),
         "small": (64, 2, 32, 256, 600, 16)}
# maskgen.audio.features.MelConfig fields; the sample rate is the data's (16 kHz).
MEL = dict(n_fft=512, hop=160, win_length=400, n_mels=80, f_min=20.0, f_max=None, mel_scale="slaney",
           norm="slaney", power=1.0, log_floor=1e-5)
ARGS = {
    "size": choice("small", "model size, codebook and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "levels": Arg(4, "RVQ levels K (the token streams per frame)", integer(min=1, max=16)),
    "dropout": Arg(0.5, "fraction of each batch that uses a random 1..K levels (0: always all K)", number(0, 1)),
    "words": choice("digits", "the speech source's word set", "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    channels, res_blocks, embed_dim, codebook, steps, batch = SIZES[args["size"]]
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "codec"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train",
                       read_threads=1, words=args["words"], sample_rate=16000, clip_seconds=1.0, renditions=8)
    config.mel = dict(MEL)
    config.model = dict(
        input="log_mel", mel_frames=0, griffin_lim_iters=32,
        base_channels=channels, channel_multipliers=(1, 2), strides=(2,), num_res_blocks=res_blocks,
        embed_dim=embed_dim, codebook_size=codebook, num_levels=args["levels"], quantizer_dropout=args["dropout"],
        codebook_dim=0,
        # EnCodec's RVQ: EMA codebooks, k-means init, dead-code restarts (below 0.05 x the uniform share).
        vq=dict(l2_normalize=False, commitment_weight=1.0, codebook_weight=1.0, use_ema=True, ema_decay=0.99,
                kmeans_init=True, kmeans_iters=10, restart_dead_codes=True, dead_code_threshold=0.05,
                entropy_weight=0.0, entropy_temperature=0.01),
    )
    config.loss = dict(l1_weight=1.0, mse_weight=0.0)
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.optimizer.min_lr_ratio = 0.1
    config.optimizer.grad_clip_norm = 1.0
    config.ema_decay = 0.99
    config.eval_params = "params"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    # maskgen.evaluators.audio: mel distance (decoded vs encoded log-mel), word accuracy of the
    # Griffin-Lim reconstructions (and of Griffin-Lim of the original log-mel), per-level codebook
    # usage, at all levels and at the first 1, 2, 4 (_k1 ...).
    config.evals = dict(
        reconstruction=dict(type="audio_reconstruction", every=0, split="test", max_examples=16 if tiny else None,
                            levels=tuple(k for k in (1, 2, 4) if k <= args["levels"]), num_audio=4,
                            word_accuracy=not tiny, words=args["words"], seed=0),
        spectrograms=dict(type="image_grid", every=0, num=8, seed=0, rows=("original", "reconstruction")),
    )
    return config
