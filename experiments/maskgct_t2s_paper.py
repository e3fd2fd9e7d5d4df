r"""MaskGCT text-to-semantic (T2S) at the paper's size (Wang et al., arXiv 2409.00750): validated, not
trained here.

Sources: the paper (Sec. 3 and App. A) and Amphion's released inference code and config
(open-mmlab/Amphion, models/tts/maskgct/config/maskgct.json, maskgct_t2s.py, maskgct_utils.py):
- T2S: a bidirectional Llama, hidden 1536, 16 layers, 16 heads (maskgct.json `t2s_model`), phones as
  a prefix; semantic codebook 8192 (a VQ of normalised w2v-BERT 2.0 layer-17 features, 50 Hz);
- training: mask probability max(sin(pi t / 2), 0.2) per token, a prompt prefix U[min(T/4, 5), 0.4 T)
  never masked and absent with probability 0.15 (`cfg_scale` 0.15 in the config);
- inference: 50 steps (25 in the demo), temperature 0.9 annealed by (1 - i / T), last step greedy,
  CFG 2.5 (on features, rescaled 0.75 toward the conditional std: maskgen guides logits);
- duration: 50 Hz x prompt seconds x target phones / prompt phones.
Assumed: 24 kHz audio (the acoustic codec's rate); MLP ratio 4; at most 256 phones; 10 s examples
(500 frames). The paper trains on Emilia (100k hours); maskgen has no such data, so the data here is
the local speech source at 24 kHz as a stand-in (5 s clips, prompt + target = 10 s); a real run
needs a transcribed corpus. The semantic tokenizer is any `encode` run at 50 Hz with one token per
frame (maskgen: experiments/semantic_speech.py with codebook=8192 on an SSAST run).

Arguments (`:semantic=DIR,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, batch)
SIZES = {"tiny": (32, 1, 2, 2), "paper": (1536, 16, 16, 256)}
ARGS = {
    "semantic": Arg("runs/semantic_8192", "the semantic tokenizer run (50 Hz, one token per frame)"),
    "size": choice("paper", "model size (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default 500k)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "maskgct_t2s"
    config.total_steps = args["steps"] or 500_000
    config.batch_size = batch
    config.compute_dtype = "bfloat16"
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=4,
                       words="all", sample_rate=24000, clip_seconds=5.0, concat=2, trim=True)
    config.maskgct = dict(semantic_workdir=args["semantic"])
    config.model = dict(width=width, depth=depth, num_heads=heads, mlp_ratio=4.0, positions="rope",
                        max_phones=256, num_frames=500)
    config.loss = dict(min_mask_prob=0.2, prompt_drop=0.15, prompt_max_fraction=0.4, prompt_min_frames=5,
                       label_smoothing=0.0)
    config.sampling = dict(num_steps=50, temperature=0.9, choice_temperature=1.0, cfg_scale=2.5, schedule="cosine",
                           policy="confidence")
    config.optimizer.lr = 1e-4
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.98
    config.optimizer.weight_decay = 0.01
    config.optimizer.warmup_steps = min(32_000, config.total_steps // 10)
    config.ema_decay = 0.999
    config.log_every = 100
    config.checkpoint_every = 5000
    return config
