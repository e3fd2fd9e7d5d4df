r"""SSAST on the local eSpeak NG spoken digits (the CPU demo): pretraining, then fine-tuning.

Gong et al., "SSAST: Self-Supervised Audio Spectrogram Transformer", arXiv 2110.09784, scaled down:
1 s clips at 16 kHz, Kaldi-like log-mel (25 ms Hann window, 10 ms hop, 32 HTK mel bins of power),
96 frames, 8x8 patch tokens (4 x 12 = 48, 36 masked in 2-3 patch clusters) or 32x2 frame tokens
(48, 36 masked at random), a tiny ViT. The test split's voices never occur in training (docs/audio.md).

Launch (2-core CPU, a few minutes each):
  maskgen prepare --source speech
  maskgen train --config experiments/ssast_speech.py --workdir /tmp/ssast_pre
  maskgen eval --workdir /tmp/ssast_pre                         # linear probe vs random init vs log-mel
  maskgen train --config experiments/ssast_speech.py:task=finetune --workdir /tmp/ssast_ft \
      --config.init_from=/tmp/ssast_pre
  maskgen train --config experiments/ssast_speech.py:task=finetune --workdir /tmp/ssast_scratch  # baseline

Arguments (`--config experiments/ssast_speech.py:task=finetune,tokens=frame,size=tiny`): ARGS below.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, pretraining steps, fine-tuning steps, batch)
SIZES = {
    "tiny": (32, 1, 2, 20, 20, 16),  # tests: seconds
    "small": (64, 3, 4, 1500, 600, 32),  # the demo: a few minutes per run on 2 CPU cores
}
ARGS = {
    "size": choice("small", "model size and steps (SIZES); tiny is for tests", *SIZES),
    "task": choice("pretrain", "pretrain: SSAST's masked patch modeling; finetune: word classification",
                   "pretrain", "finetune"),
    "tokens": choice("patch", "patch: 8x8 patches, cluster masking; frame: 32x2 frames, random masking",
                     "patch", "frame"),
    "steps": Arg(None, "total training steps (default per size and task)", integer(min=1)),
}

# Kaldi-like fbank as SSAST computes it (torchaudio.compliance.kaldi.fbank: 25 ms window, 10 ms
# shift, n_fft 512, HTK mel of power, low frequency 20 Hz), with a Hann window and 32 bins (SSAST: 128).
MEL = dict(sample_rate=16000, n_fft=512, hop=160, win_length=400, n_mels=32, f_min=20.0, f_max=None,
           mel_scale="htk", norm=None, power=2.0, log_floor=1e-6)
# SSAST's dataset_mean / dataset_std, measured on the speech train split with these MEL settings
# (-8.99 and 6.36; 61% of the bins are digital silence at the floor, ln 1e-6 = -13.8)
# (maskgen.recipes.ssast.spectrogram_statistics).
INPUT_MEAN, INPUT_STD = -9.0, 6.4


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, pretrain_steps, finetune_steps, batch = SIZES[args["size"]]
    finetune = args["task"] == "finetune"
    config = base_config()
    config.recipe = "ssast"
    config.total_steps = args["steps"] or (finetune_steps if finetune else pretrain_steps)
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=1,
                       words="digits", sample_rate=16000, clip_seconds=1.0)
    frame_tokens = args["tokens"] == "frame"
    config.model = dict(
        task=args["task"], tokens=args["tokens"], mel=dict(MEL), num_frames=96,
        patch_shape=(MEL["n_mels"], 2) if frame_tokens else (8, 8),
        width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        # 36 of 48 tokens (75%; SSAST 400 of 512). The 4-row patch grid takes 2-3 patch clusters
        # (SSAST's 3-5 are for its 8 x 64 grid).
        num_masked=36, cluster_sizes=(2, 3),
        nce_weight=1.0, mse_weight=10.0, shared_mask=False, nce_softmax_over="targets",
        input_mean=INPUT_MEAN, input_std=INPUT_STD, num_classes=None,
    )
    # SSAST: Adam (betas 0.95, 0.999, weight decay 5e-7), 1000 warm-up steps, lr 1e-4 at batch 24
    # for pretraining and 2.5e-4 for fine-tuning; a short CPU run takes a larger rate.
    config.optimizer.lr = 5e-4 if finetune else 1e-3
    config.optimizer.b1, config.optimizer.b2 = 0.95, 0.999
    config.optimizer.weight_decay = 5e-7
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.99
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    if finetune:
        config.evals = dict(accuracy=dict(type="accuracy", every=0, split="test", max_examples=None))
    else:
        config.evals = dict(
            # log_mel: the raw log-mel grid flattened; log_mel_stats: each bin's mean and std over time.
            probe=dict(type="linear_probe", every=0, baselines=("random_init", "log_mel", "log_mel_stats"),
                       train_split="train", test_split="test", protocol="quick", steps=1000, learning_rate=1e-2,
                       weight_decay=1e-4, max_examples=None),
            spectrograms=dict(type="image_grid", every=0, split="test", num=8,
                              rows=("original", "masked", "reconstruction")),
        )
    return config
