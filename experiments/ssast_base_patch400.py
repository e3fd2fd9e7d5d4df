r"""SSAST-Base-Patch-400 at paper scale (Gong et al., "SSAST: Self-Supervised Audio Spectrogram
Transformer", arXiv 2110.09784; settings from YuanGongND/ssast, src/pretrain/run_mask_patch.sh and
src/models/ast_models.py).

  * Input: 10.24 s at 16 kHz -> 128 Kaldi-style mel bins x 1024 frames (25 ms window, 10 ms hop),
    normalised with the AudioSet + LibriSpeech statistics (mean -4.2677393, std 4.5689974) as
    (x - mean) / (2 std).
  * Tokens: 16x16 patches, 8 x 64 = 512 (`tokens=frame`: 128x2 frames, 512, SSAST-Base-Frame-400).
  * Masking: 400 of 512 per clip, in clusters of c x c patches with c in {3, 4, 5} drawn per clip
    (frames: uniformly at random).
  * Model: ViT-Base (12 blocks, width 768, 12 heads, MLP 3072); `size=small` (384, 6 heads) and
    `size=tiny` (192, 3 heads) are SSAST's other sizes. SSAST starts from DeiT's *distilled*
    architecture (two class tokens); maskgen uses one class token (its features are the mean of the
    patch tokens either way).
  * Loss: InfoNCE + 10 x MSE, heads Linear-ReLU-Linear to the 256 values of a patch, each loss with
    its own mask and forward pass.
  * Optimiser: Adam, lr 1e-4, betas (0.95, 0.999), weight decay 5e-7, batch 24, linear warm-up
    over 1,000 steps; 10 epochs of AudioSet-2M + LibriSpeech-960 (about 2.28M clips: 950k steps).
    SSAST halves the rate when the validation pretext accuracy stops improving (ReduceLROnPlateau);
    maskgen's schedule is warm-up then cosine to 0.
  * Fine-tuning (`task=finetune`, `--config.init_from=<pretraining workdir>`): mean-pooled tokens,
    LayerNorm + Linear, cross-entropy; lr 2.5e-4 (SSAST's Speech Commands V2 setting). SSAST's
    fine-tuning also uses overlapping patches (stride 10), SpecAugment and mixup: not here.

The data is a folder of labelled clips (`audio_folder`, one subfolder per class; each clip padded or
cut to 10.24 s). Unlabelled pretraining data still needs the classifier's size: set
`--config.model.num_classes` to the fine-tuning task's (every SSAST model holds its classifier, so
that fine-tuning loads the pretraining weights unchanged).

  maskgen train --config experiments/ssast_base_patch400.py:data_dir=/data/as_ls --workdir runs/ssast_base \
      --config.model.num_classes=35
  maskgen train --config experiments/ssast_base_patch400.py:data_dir=/data/speechcommands,task=finetune \
      --workdir runs/ssast_sc --config.init_from=runs/ssast_base

Arguments: ARGS below.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, heads) of SSAST's model sizes; 12 blocks each.
SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
ARGS = {
    "size": choice("base", "SSAST model size (SIZES)", *SIZES),
    "task": choice("pretrain", "pretrain: joint InfoNCE + MSE; finetune: classification", "pretrain", "finetune"),
    "tokens": choice("patch", "patch: 16x16, cluster masking; frame: 128x2, random masking", "patch", "frame"),
    "data_dir": Arg("", "a folder of labelled clips, one subfolder per class (audio_folder)"),
    "steps": Arg(None, "total training steps (default: 950k pretraining, 60k fine-tuning)", integer(min=1)),
}

# torchaudio.compliance.kaldi.fbank as SSAST's dataloader calls it (hanning window, dither 0,
# htk_compat, 128 bins, 10 ms shift, 25 ms window zero-padded to 512, low frequency 20 Hz, log of
# power with a float32-epsilon floor). Kaldi's pre-emphasis and per-frame DC removal are not applied.
MEL = dict(sample_rate=16000, n_fft=512, hop=160, win_length=400, n_mels=128, f_min=20.0, f_max=None,
           mel_scale="htk", norm=None, power=2.0, log_floor=1.1920929e-07)


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, heads = SIZES[args["size"]]
    finetune = args["task"] == "finetune"
    frame_tokens = args["tokens"] == "frame"
    config = base_config()
    config.recipe = "ssast"
    config.total_steps = args["steps"] or (60_000 if finetune else 950_000)
    config.batch_size = 128 if finetune else 24
    config.data = dict(name="audio_folder", data_dir=args["data_dir"], image_size=0, augment="none",
                       train_split="train", sample_rate=16000, clip_seconds=10.24)
    config.model = dict(
        task=args["task"], tokens=args["tokens"], mel=dict(MEL), num_frames=1024,
        patch_shape=(128, 2) if frame_tokens else (16, 16),
        width=width, depth=12, num_heads=heads, mlp_ratio=4.0,
        num_masked=400, cluster_sizes=(3, 4, 5),
        nce_weight=1.0, mse_weight=10.0, shared_mask=False, nce_softmax_over="targets",
        input_mean=-4.2677393, input_std=4.5689974, num_classes=None,
    )
    config.optimizer.lr = 2.5e-4 if finetune else 1e-4
    config.optimizer.b1, config.optimizer.b2 = 0.95, 0.999
    config.optimizer.weight_decay = 5e-7
    config.optimizer.warmup_steps = min(1000, config.total_steps // 10)  # 1000 at the paper's step count
    config.optimizer.grad_clip_norm = 0.0  # SSAST does not clip gradients
    config.ema_decay = 0.9999
    config.log_every = 100
    config.checkpoint_every = 5000
    if finetune:
        config.evals = dict(accuracy=dict(type="accuracy", every=20_000, split="test"))
    else:
        config.evals = dict(
            probe=dict(type="linear_probe", every=-1, baselines=("random_init", "log_mel_stats"), train_split="train",
                       test_split="test", protocol="quick", max_examples=20_000),
            spectrograms=dict(type="image_grid", every=50_000, split="test", num=8,
                              rows=("original", "masked", "reconstruction")),
        )
    return config
