r"""MaskGCT semantic-to-acoustic (S2A) on the local eSpeak NG speech (CPU), arXiv 2409.00750.

SoundStorm-like: K + 1 token streams per 50 Hz frame (semantic tokens from the frozen
`feature_tokenizer` run, K acoustic RVQ levels from the frozen mel `codec` run), summed embeddings.
Each example trains one level k (weights K - k: low levels favoured): lower levels given, level k
Bernoulli-masked (sin(pi t / 2): Amphion's S2A has no 0.2 floor), higher levels masked except in the prompt prefix
(U[min(T/4, 5), T/2) frames, absent 15% of the time for CFG). Decoding goes level by level with
`steps_per_level` (paper [25, 10, 1, ...]; here [10, 4, 1, 1]). See maskgen/recipes/maskgct.py;
the T2S stage and the launch lines are in experiments/maskgct_t2s_speech.py.

Arguments (`:semantic=DIR,codec=DIR,levels=4,size=tiny,steps=100`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch)
SIZES = {"tiny": (32, 1, 2, 20, 4), "small": (128, 4, 4, 1200, 16)}
ARGS = {
    "semantic": Arg("runs/semantic", "the semantic tokenizer run (a feature_tokenizer run, 50 Hz)"),
    "codec": Arg("runs/codec_mel", "the codec run whose RVQ levels are the acoustic tokens (50 Hz)"),
    "levels": Arg(4, "the codec run's RVQ levels K", integer(min=1)),
    "size": choice("small", "model size, steps and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "words": choice("digits", "the speech vocabulary", "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "maskgct_s2a"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=1,
                       words=args["words"], sample_rate=16000, clip_seconds=1.0, concat=2, trim=True)
    config.maskgct = dict(semantic_workdir=args["semantic"], codec_workdir=args["codec"])
    config.model = dict(width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, positions="learned",
                        num_levels=args["levels"], num_frames=100)
    config.loss = dict(min_mask_prob=0.0, prompt_drop=0.15, prompt_max_fraction=0.5, prompt_min_frames=5,
                       label_smoothing=0.0,
                       # > 0: that share of the examples takes the pair's real prompt clip as the prompt
                       # (inference's layout) instead of the paper's random prefix (docs/audio.md, B21).
                       prompt_boundary_prob=0.0)
    # Amphion's semantic2acoustic: temperature 1.5 annealed, CFG 2.5, steps [25, 10, 1, ...].
    config.sampling = dict(steps_per_level=(10, 4, 1, 1), temperature=1.5, choice_temperature=1.0, cfg_scale=2.5,
                           schedule="cosine", policy="confidence")
    config.optimizer.lr = 1e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    return config
