r"""MAGNeT on the local eSpeak NG speech (CPU): word-conditioned masked generation of codec streams.

MAGNeT (Ziv et al., arXiv 2401.04577; audiocraft's `MagnetSolver`) on the [50, 4] code streams of
maskgen's mel codec at 50 Hz (`experiments/codec_speech_mel.py`, tokenized by `maskgen tokenize`:
1 s clips, 4 RVQ levels x 256 codes), conditioned on the spoken word (the token data's label,
adaLN, class dropout for classifier-free guidance; the paper conditions on T5 text embeddings by
cross-attention). Training draws one level per example, span-masks it (spans of 3 frames = 60 ms,
rate cos(pi/2 u)), hides the levels above it, and scores the masked level only; levels above 0
attend +-5 frames. Decoding is level by level with span re-masking, annealed temperature and
guidance (maskgen.recipes.magnet). Samples become audio through the codec run that made the tokens
(`maskgen.runs.AudioDecoder`); the `audio_generation` evaluator measures word consistency (the
maskgen word classifier on the samples; chance is 10% on digits) and a word-feature Fréchet distance.

Launch (2-core CPU; `small`, 3,000 steps, took 30 min on a 2-core CPU shared with ~6 other jobs
(load ~13); on an idle machine it is several times faster):
  maskgen train --config experiments/codec_speech_mel.py --workdir runs/codec_mel
  maskgen tokenize --tokenizer-workdir runs/codec_mel --data speech --out runs/codec_tokens   # [50, 4]
  maskgen train --config experiments/magnet_speech.py:tokens=runs/codec_tokens --workdir runs/magnet
  maskgen eval --workdir runs/magnet
  maskgen sample --workdir runs/magnet --num 2 --out runs/magnet/samples
  maskgen sample --workdir runs/magnet --num 2 --config.sampling.steps_per_level="(20,10,10,10)"
  maskgen edit --workdir runs/magnet --audio test:0 --mask time:0.3-0.6 --out infilled.wav

Arguments (`:tokens=DIR,size=tiny,steps=100,frames=50,levels=4`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch). small: 1.36M parameters; word consistency 0.95 after
# 3,000 steps (docs/audio.md).
SIZES = {"tiny": (32, 2, 2, 20, 8), "small": (128, 4, 4, 3000, 32)}
ARGS = {
    "tokens": Arg("runs/codec_tokens", "the token dataset (`maskgen tokenize --out` of a codec run)"),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "frames": Arg(50, "codec frames per clip (the tokens' token_shape[0])", integer(min=1)),
    "levels": Arg(4, "codec RVQ levels K (the tokens' num_levels)", integer(min=1)),
    "codebook_size": Arg(256, "the codec run's codebook size", integer(min=2)),
    "words": choice("digits", "the speech vocabulary the tokens were made from (picks the word classifier)",
                    "digits", "commands", "all"),
}
# Decoding steps per level for 1 s (50 frames, 16 spans of 3): the paper's 20/10/10/10 serve 500
# frames; fewer spans need fewer steps. Levels beyond the fourth get 2 steps.
CPU_STEPS_PER_LEVEL = (10, 4, 2, 2)


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    levels = args["levels"]
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "magnet"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    config.model = dict(
        num_frames=args["frames"], num_levels=levels, codebook_size=args["codebook_size"], width=width,
        depth=depth, num_heads=heads, mlp_ratio=4.0, conditioning="adaln", positions="learned", qk_norm=False,
        tie_head=True, dropout=0.0,
        local_window=5,  # audiocraft's subcodes_context: levels > 0 attend +-5 frames (100 ms at 50 Hz)
    )
    config.loss = dict(span_length=3, class_dropout=0.1, label_smoothing=0.0, weighting="per_token",
                       level_choice="example")
    config.sampling = dict(
        steps_per_level=(CPU_STEPS_PER_LEVEL + (2,) * levels)[:levels], span_score="max",
        # The paper's: temperature 3 annealed to 0 in each level, top-p 0.9, CFG 10 -> 1 with the mask rate.
        temperature=3.0, anneal_temperature=True, top_p=0.9, cfg_scale=10.0, cfg_min_scale=1.0,
        rescore_weight=0.7,
    )
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.95
    config.optimizer.weight_decay = 0.1
    config.optimizer.warmup_steps = min(200, config.total_steps // 10)
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    config.evals = dict(
        # Word consistency (maskgen's word classifier on the decoded audio) and the Fréchet distance
        # on its features (an FAD stand-in), with WAVs and spectrograms per word.
        generation=dict(type="audio_generation", every=0, num_per_class=2 if tiny else 20,
                        batch_size=20 if tiny else 100, seed=0, words=args["words"]),
    )
    return config
