r"""SpecMaskGIT at paper scale (Comunità et al., arXiv 2406.17672): 10 s clips, 80 mels x 848 frames,
16 x 16 mel patches -> a 5 x 53 grid of 265 tokens over a 1024-code VQ, MaskGIT in <= 16 steps.

The paper has no public code; what it states and what this file assumes:
- paper: 10 s AudioSet-style clips as 80-bin mel spectrograms of 848 frames, a VQ tokenizer with a
  1024-entry codebook on 16 x 16 patches (5 x 53 = 265 tokens), MaskGIT decoding in at most 16
  steps with classifier-free guidance, real-time generation on 4 CPU cores;
- assumed (the usual SpecVQGAN / HiFi-GAN mel settings): 22,050 Hz audio, n_fft 1024, hop 256, so a
  10 s clip has 861 frames of which the first 848 (53 x 16) are kept; a VQGAN-style conv
  tokenizer (maskgen's, f = 16 from 4 downsamplings) with 256-d codes; a 12-layer, 768-wide
  transformer;
- changed: the paper conditions on CLAP embeddings of a text or audio prompt; maskgen has no CLAP
  model, so the condition is a class label (the clip's folder) through adaLN, with class dropout
  for guidance. Audio is heard through Griffin-Lim, not a neural vocoder.

Data: a folder of labelled WAV/FLAC clips (the `audio_folder` source: data_dir/<class>/*.wav;
resampled to 22,050 Hz, padded or cut to 10 s). Two stages, one file (`task=`):
  maskgen train --config experiments/specmaskgit_audioset.py:task=tokenizer,data=/data/clips --workdir runs/as_tok
  maskgen tokenize --tokenizer-workdir runs/as_tok --data audio_folder --data-dir /data/clips --out runs/as_tokens
  maskgen train --config experiments/specmaskgit_audioset.py:task=maskgit,tokens=runs/as_tokens --workdir runs/as_mg
  maskgen sample --workdir runs/as_mg --num 2 --steps 16 --cfg 3.0
(`size=tiny`: the same grids with 1-block models, a CPU smoke test.)

Arguments: ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

SAMPLE_RATE, CLIP_SECONDS = 22050, 10.0
MEL_FRAMES = 848  # of the 861 frames (10 s at hop 256): 53 x 16
ARGS = {
    "task": choice("maskgit", "tokenizer: the mel VQ; maskgit: the generator on its tokens", "tokenizer", "maskgit"),
    "data": Arg("/data/audio_clips", "task=tokenizer: the audio_folder directory (data_dir/<class>/*.wav)"),
    "tokens": Arg("runs/as_tokens", "task=maskgit: the token dataset (`maskgen tokenize --out`)"),
    "size": choice("full", "full: the paper-scale models; tiny: 1-block CPU smoke models on the same 5 x 53 grid",
                   "full", "tiny"),
    "steps": Arg(None, "training steps (default: 400k tokenizer, 500k maskgit; tiny 20)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    config = _tokenizer(args) if args["task"] == "tokenizer" else _maskgit(args)
    if args["size"] == "tiny":  # same data and grid, CPU-sized models
        config.total_steps = args["steps"] or 20
        config.batch_size = 2
        config.optimizer.warmup_steps = 0
        config.log_every = config.checkpoint_every = config.total_steps
        if args["task"] == "tokenizer":
            config.model.base_channels, config.model.num_res_blocks = 8, 1
            config.model.channel_multipliers = (1, 1, 1, 1, 1)
            config.model.discriminator_channels = 8
            config.evals.reconstruction.max_examples = 4
        else:
            config.model.width, config.model.depth, config.model.num_heads = 32, 1, 2
    return config


def _common(config, steps: int) -> None:
    config.total_steps = steps
    config.optimizer.warmup_steps = min(5000, steps // 10)  # 5000 at the paper-scale step counts
    config.ema_decay = 0.999
    config.eval_params = "ema"
    config.log_every = 100
    config.checkpoint_every = 5000


def _tokenizer(args):
    config = base_config()
    config.recipe = "tokenizer"
    _common(config, args["steps"] or 400_000)
    config.batch_size = 64
    config.data = dict(name="audio_folder", data_dir=args["data"], image_size=0, augment="none", train_split="train",
                       read_threads=8, sample_rate=SAMPLE_RATE, clip_seconds=CLIP_SECONDS)
    config.mel = dict(n_fft=1024, hop=256, win_length=None, n_mels=80, f_min=0.0, f_max=None, mel_scale="slaney",
                      norm="slaney", power=1.0, log_floor=1e-5)
    config.model = dict(
        input="log_mel", mel_frames=MEL_FRAMES, griffin_lim_iters=64,
        # f = 16: 80 x 848 -> 5 x 53.
        base_channels=128, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2,
        quantizer="vq", embed_dim=256, codebook_size=1024,
        vq=dict(l2_normalize=True, commitment_weight=0.25, codebook_weight=1.0, use_ema=False, ema_decay=0.99,
                kmeans_init=True, kmeans_iters=10, restart_dead_codes=True, dead_code_threshold=0.1,
                entropy_weight=0.0, entropy_temperature=0.01),
        conv_variant="maskgen", pixel_range="minus_one_to_one",
        discriminator="patch", discriminator_channels=64, discriminator_downsamples=3,
    )
    config.loss = dict(
        reconstruction="l1", reconstruction_weight=1.0, perceptual_weight=0.0, perceptual_network="digit_classifier",
        adversarial_weight=0.1, gan_loss="hinge", gan_start_step=50_000, lecam_weight=0.001, lecam_decay=0.99,
        r1_weight=0.0, discriminator_lr=1e-4, discriminator_b1=0.5,
    )
    config.optimizer.lr = 1e-4
    config.optimizer.b1 = 0.5
    config.optimizer.b2 = 0.9
    config.optimizer.weight_decay = 1e-4
    config.evals = dict(
        reconstruction=dict(type="audio_reconstruction", every=20_000, split="test", max_examples=256),
    )
    return config


def _maskgit(args):
    config = base_config()
    config.recipe = "maskgit"
    _common(config, args["steps"] or 500_000)
    config.batch_size = 256
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none", train_split="train",
                       read_threads=8)
    config.model = dict(
        token_shape=(5, 53), codebook_size=1024, width=768, depth=12, num_heads=12, mlp_ratio=4.0,
        conditioning="adaln", positions="learned", qk_norm=False, tie_head=True, architecture="pre_ln", dropout=0.0,
    )
    config.loss = dict(mask_schedule="cosine", label_smoothing=0.1, class_dropout=0.1, weighting="per_example")
    # <= 16 steps (the paper's real-time setting), guided.
    config.sampling = dict(num_steps=16, schedule="cosine", choice_temperature=4.5, temperature=1.0,
                           policy="confidence", cfg_scale=3.0, cfg_schedule="linear")
    config.optimizer.lr = 1e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.96
    config.optimizer.weight_decay = 0.045
    config.evals = dict()
    return config
