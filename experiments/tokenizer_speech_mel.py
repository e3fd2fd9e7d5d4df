r"""Mel-spectrogram VQ tokenizer on the local eSpeak NG speech (CPU): SpecMaskGIT's tokenizer.

SpecMaskGIT (Comunità et al., arXiv 2406.17672) generates the VQ tokens of a mel spectrogram, cut
into patches by a SpecVQGAN-style 2-D conv tokenizer (Iashin & Rahtu, arXiv 2110.08791). Here it is
maskgen's image tokenizer (`experiments/tokenizer_digits.py`) with `model.input="log_mel"`: the
recipe turns each 1 s, 16 kHz clip of spoken words into a 32-mel x 64-frame log-mel (n_fft 1024,
hop 250, so 64 frames cover the clip exactly), scaled to about [-1, 1], and 2 downsamplings make
an 8 x 16 token grid (mel bands x time) over a 256-code VQ. `maskgen tokenize` then writes those
grids, with the word label, for `experiments/specmaskgit_speech.py`; decoded mels are turned back
into audio with Griffin-Lim (`model.griffin_lim_iters`).

Launch (2-core CPU, a few minutes):
  maskgen prepare --source speech --out runs/speech          (optional: the source makes its cache on first use)
  maskgen train --config experiments/tokenizer_speech_mel.py --workdir runs/mel_tok
  maskgen tokenize --tokenizer-workdir runs/mel_tok --data speech --out runs/mel_tokens

Arguments (`:size=tiny,steps=100`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (base_channels, num_res_blocks, steps, batch)
# "small" trains 800 steps in about 4 minutes on an idle 2-core CPU.
SIZES = {"tiny": (8, 1, 20, 8), "small": (16, 1, 800, 16)}
ARGS = {
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "words": choice("digits", "the speech source's vocabulary: digits (10), commands (10) or all (20)",
                    "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    channels, res_blocks, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "tokenizer"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train",
                       read_threads=1, words=args["words"])
    # maskgen.audio.features.MelConfig fields; the sample rate is the data's (16 kHz).
    config.mel = dict(n_fft=1024, hop=250, win_length=None, n_mels=32, f_min=0.0, f_max=None, mel_scale="slaney",
                      norm="slaney", power=1.0, log_floor=1e-5)
    config.model = dict(
        input="log_mel", mel_frames=0, griffin_lim_iters=32,
        # Channels double at each level, so the full-resolution level (32 x 64) is the narrowest.
        base_channels=channels, channel_multipliers=(1, 2, 4), num_res_blocks=res_blocks,
        quantizer="vq", embed_dim=16, codebook_size=256,
        vq=dict(l2_normalize=True, commitment_weight=0.25, codebook_weight=1.0, use_ema=False, ema_decay=0.99,
                kmeans_init=True, kmeans_iters=10, restart_dead_codes=True, dead_code_threshold=0.1,
                entropy_weight=0.0, entropy_temperature=0.01),
        conv_variant="maskgen", pixel_range="minus_one_to_one",
        discriminator="patch", discriminator_channels=16, discriminator_downsamples=2,
    )
    config.loss = dict(
        reconstruction="l1", reconstruction_weight=1.0, perceptual_weight=0.0, perceptual_network="digit_classifier",
        adversarial_weight=0.0, gan_loss="hinge", gan_start_step=config.total_steps // 2, lecam_weight=0.001,
        lecam_decay=0.99, r1_weight=0.0, discriminator_lr=1e-4, discriminator_b1=0.5,
    )
    config.optimizer.lr = 1e-3
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 1e-4
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    config.evals = dict(
        # Mel distance, word accuracy through Griffin-Lim (and of Griffin-Lim on the original mels),
        # codebook usage, WAVs and spectrograms (maskgen.evaluators.audio).
        reconstruction=dict(type="audio_reconstruction", every=0, split="test",
                            max_examples=None if args["size"] != "tiny" else 16, words=args["words"]),
        spectrograms=dict(type="image_grid", every=0, num=8, seed=0, rows=("original", "reconstruction")),
    )
    return config
