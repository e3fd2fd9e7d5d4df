r"""MaskGCT text-to-semantic (T2S) on the local eSpeak NG speech (CPU), arXiv 2409.00750.

A bidirectional transformer over [eSpeak NG phonemes of prompt word + target word | 100 semantic
frames]: the semantic tokens of 2 s examples (a prompt clip and a target clip of the same voice,
trimmed, back to back, `concat=2, trim=True`) from a frozen `feature_tokenizer` run (k-means of SSAST
frame-token features, 50 Hz). Masked with MaskGCT's per-token rule (max(sin(pi t / 2), 0.2)), a
prompt prefix of U[min(T/4, 5), 0.4 T) frames never masked, absent 15% of the time for CFG. See
maskgen/recipes/maskgct.py and docs/audio.md. The S2A stage is experiments/maskgct_s2a_speech.py.

Launch (2-core CPU, minutes):
  maskgen train --config experiments/ssast_speech.py:tokens=frame --config.model.num_frames=100 \
      --workdir runs/ssast_frame
  maskgen train --config experiments/semantic_speech.py:encoder=runs/ssast_frame --workdir runs/semantic
  maskgen train --config experiments/codec_speech_mel.py --workdir runs/codec_mel
  maskgen train --config experiments/maskgct_t2s_speech.py --workdir runs/t2s
  maskgen train --config experiments/maskgct_s2a_speech.py --workdir runs/s2a
  maskgen sample --workdir runs/s2a --t2s-workdir runs/t2s --text "seven" --prompt-audio test:0 --out voice/

Arguments (`:semantic=DIR,size=tiny,steps=100`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch)
SIZES = {"tiny": (32, 1, 2, 20, 4), "small": (128, 4, 4, 1200, 16)}
ARGS = {
    "semantic": Arg("runs/semantic", "the semantic tokenizer run (a feature_tokenizer run, 50 Hz)"),
    "size": choice("small", "model size, steps and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "words": choice("digits", "the speech vocabulary", "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "maskgct_t2s"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=1,
                       words=args["words"], sample_rate=16000, clip_seconds=1.0, concat=2, trim=True)
    config.maskgct = dict(semantic_workdir=args["semantic"])
    # 2 s at 50 Hz = 100 frames; two digit words take at most 16 phoneme ids (with word boundaries).
    config.model = dict(width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, positions="learned",
                        max_phones=24, num_frames=100)
    config.loss = dict(min_mask_prob=0.2, prompt_drop=0.15, prompt_max_fraction=0.4, prompt_min_frames=5,
                       label_smoothing=0.0,
                       # > 0: that share of the examples takes the pair's real prompt clip as the prompt
                       # (inference's layout) instead of the paper's random prefix (docs/audio.md, B21).
                       prompt_boundary_prob=0.0)
    # Amphion's text2semantic: 25-50 steps, temperature 0.9 annealed, CFG 2.5, last step greedy.
    config.sampling = dict(num_steps=16, temperature=0.9, choice_temperature=1.0, cfg_scale=2.5, schedule="cosine",
                           policy="confidence")
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    return config
