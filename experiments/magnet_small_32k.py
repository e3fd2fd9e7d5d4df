r"""MAGNeT-small at paper scale: 10 s of 32 kHz EnCodec tokens, 4 levels x 2048 codes at 50 Hz.

Sources: MAGNeT (Ziv et al., arXiv 2401.04577, Sec. 3-4) and its audiocraft code
(`config/solver/magnet/magnet_32khz.yaml`, `audiocraft/grids/magnet/magnet_32khz.py`,
`config/model/lm/model_scale/small.yaml`, `config/model/lm/musicgen_lm.yaml`,
`config/solver/musicgen/default.yaml`, `audiocraft/solvers/magnet.py`, `audiocraft/models/lm_magnet.py`):
  * tokens: EnCodec 32 kHz (total stride 640: 50 frames/s), 4 RVQ levels x 2048 codes, no quantizer
    dropout; 10 s segments -> [500, 4] streams (the 10 s grid of magnet_32khz.py);
  * model (MAGNeT-small, 300M; 320M here with the prefix condition): 24 pre-norm layers, width
    1024, 16 heads, MLP x 4, the 4 codebook embeddings summed and 4 untied heads ("parallel"
    pattern); levels > 0 attend +-5 frames (`subcodes_context: 5`, ~200 ms);
  * training: one level k per step, span masking of level k with spans of 3 frames (60 ms) at rate
    cos(pi/2 u) (the span-start table of `_calc_mean_maskrate_to_u_LUT`), levels > k masked, CE on
    the masked level-k tokens; condition dropout 0.3 (`classifier_free_guidance.training_dropout`);
    batch 576 (10 s grid, 32 GPUs); 500 epochs x 2,000 updates = 1M steps; cosine schedule with
    4,000 warmup steps to 0; AdamW betas (0.9, 0.95), weight decay 0.1, gradient clipping 1.0; EMA
    0.99 every 10 updates (~0.999 per step);
  * decoding: steps (20, 10, 10, 10) for 10 s, temperature 3 annealed to 0 in each level, top-p 0.9,
    CFG 10 -> 1 with the mask rate, span scoring "max" over non-overlapping 3-frame spans;
    rescoring weight 0.7 (paper, Sec. 3.3; audiocraft does not release rescoring).
Differences (maskgen):
  * the condition is the token data's class label as a prefix token (which attends only to itself, so
    the local attention of levels > 0 stays local), not T5 text through cross-attention; adaLN
    (`conditioning=adaln`) would add 6 x 1024^2 parameters per block, 153M in all (320M -> 473M);
  * learned positions, not sinusoidal;
  * AdamW at 1e-4 (the lr of audiocraft's MAGNeT-medium grid): maskgen has no D-Adaptation, which
    the small model uses (`optimizer: dadam, lr: 1`);
  * each example draws its own level (`loss.level_choice="example"`); `level_choice=step` is
    audiocraft's per-batch draw.
The codec is a config choice: any `codec` run whose tokens are [500, 4] with 2048 codes (e.g.
`experiments/codec_encodec24k.py` retargeted to 32 kHz with strides giving 640 samples per frame,
4 levels, 2048 codes, no quantizer dropout). A codec of another level count is refused before
anything compiles (the error names both counts).

Launch (accelerator):
  maskgen tokenize --tokenizer-workdir runs/encodec32k --data audio_folder --data-dir /data/music --out runs/tok32k
  maskgen train --config experiments/magnet_small_32k.py:tokens=runs/tok32k --workdir runs/magnet_small
  maskgen sample --workdir runs/magnet_small --num 2

Arguments (`:tokens=DIR,size=tiny,steps=N,conditioning=adaln`): ARGS below; `size=tiny` keeps the
[500, 4] x 2048 token layout with a 1-block model (a CPU smoke test).
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

FRAME_RATE, SECONDS, LEVELS, CODEBOOK = 50, 10, 4, 2048
ARGS = {
    "tokens": Arg("runs/tok32k", "the token dataset (`maskgen tokenize --out` of a 32 kHz codec run)"),
    "size": choice("small", "small: MAGNeT-small (300M); tiny: a 1-block CPU smoke model", "small", "tiny"),
    "steps": Arg(None, "training steps (default 1M; tiny 20)", integer(min=1)),
    "conditioning": choice("prefix", "prefix: the class (the token data's label) as a prefix token; adaln: "
                           "through adaLN-Zero (+153M parameters at this size); none: unconditional",
                           "prefix", "adaln", "none"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "magnet"
    config.total_steps = args["steps"] or (20 if tiny else 1_000_000)
    config.batch_size = 2 if tiny else 576
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none", train_split="train",
                       read_threads=1 if tiny else 8)
    config.model = dict(
        num_frames=FRAME_RATE * SECONDS, num_levels=LEVELS, codebook_size=CODEBOOK,
        width=32 if tiny else 1024, depth=1 if tiny else 24, num_heads=2 if tiny else 16, mlp_ratio=4.0,
        conditioning=args["conditioning"], positions="learned", qk_norm=False, tie_head=False, dropout=0.0,
        local_window=5,
    )
    config.loss = dict(span_length=3, class_dropout=0.3, label_smoothing=0.0, weighting="per_token",
                       level_choice="example")
    config.sampling = dict(steps_per_level=(20, 10, 10, 10), span_score="max", temperature=3.0,
                           anneal_temperature=True, top_p=0.9, cfg_scale=10.0, cfg_min_scale=1.0, rescore_weight=0.7)
    config.optimizer.lr = 1e-4
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 0.1
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.warmup_steps = 0 if tiny else min(4000, config.total_steps // 10)
    config.optimizer.min_lr_ratio = 0.0
    config.ema_decay = 0.999
    config.eval_params = "ema"
    config.log_every = config.total_steps if tiny else 100
    config.checkpoint_every = config.total_steps if tiny else 10_000
    config.evals = dict()
    return config
