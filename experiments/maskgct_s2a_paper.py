r"""MaskGCT semantic-to-acoustic (S2A) at the paper's size (Wang et al., arXiv 2409.00750): validated,
not trained here.

Sources: the paper and Amphion's released inference code and config (open-mmlab/Amphion,
models/tts/maskgct/config/maskgct.json `s2a_model.s2a_full`, maskgct_s2a.py, maskgct_utils.py):
- S2A: hidden 1024, 16 layers, 16 heads; 12 acoustic RVQ levels x 1024 codes at 24 kHz and 50 Hz
  (the acoustic codec), semantic condition with 8192 codes;
- training: one level per step with weights K - k (`mask_layer_schedule="linear"`), that level
  Bernoulli-masked with probability sin(pi t / 2) (no 0.2 floor in Amphion's S2A), higher levels masked
  except in the prompt prefix U[min(T/4, 5), T/2), prompt absent with probability 0.15;
- inference: steps per level [25, 10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], temperature 1.5 annealed, CFG 2.5.
Assumed: MLP ratio 4, 10 s examples (500 frames). Amphion runs a separate 1-level model for level 0;
maskgen trains one model for all levels. The codec here is maskgen's waveform `codec` recipe at
24 kHz (experiments/codec_encodec24k.py with 12 levels at 50 Hz, or any codec run with 12 levels);
the data is the local speech source at 24 kHz as a stand-in for Emilia.

Arguments (`:semantic=DIR,codec=DIR,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, batch)
SIZES = {"tiny": (32, 1, 2, 2), "paper": (1024, 16, 16, 256)}
LEVELS = 12
ARGS = {
    "semantic": Arg("runs/semantic_8192", "the semantic tokenizer run (50 Hz, one token per frame)"),
    "codec": Arg("runs/codec_24k_12x1024", "the acoustic codec run (24 kHz, 50 Hz, 12 x 1024 RVQ)"),
    "size": choice("paper", "model size (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default 500k)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "maskgct_s2a"
    config.total_steps = args["steps"] or 500_000
    config.batch_size = batch
    config.compute_dtype = "bfloat16"
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=4,
                       words="all", sample_rate=24000, clip_seconds=5.0, concat=2, trim=True)
    config.maskgct = dict(semantic_workdir=args["semantic"], codec_workdir=args["codec"])
    config.model = dict(width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, positions="rope",
                        num_levels=LEVELS, num_frames=500)
    config.loss = dict(min_mask_prob=0.0, prompt_drop=0.15, prompt_max_fraction=0.5, prompt_min_frames=5,
                       label_smoothing=0.0)
    config.sampling = dict(steps_per_level=(25, 10) + (1,) * (LEVELS - 2), temperature=1.5, choice_temperature=1.0,
                           cfg_scale=2.5, schedule="cosine", policy="confidence")
    config.optimizer.lr = 1e-4
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.98
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_steps = min(32_000, config.total_steps // 10)
    config.ema_decay = 0.999
    config.log_every = 100
    config.checkpoint_every = 5000
    return config
