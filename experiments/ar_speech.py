r"""The autoregressive baseline and rescorer for MAGNeT on the local eSpeak NG speech (CPU).

MAGNeT (Ziv et al., arXiv 2401.04577) compares its parallel decoding against an autoregressive
model of the same codec tokens (MusicGen, Copet et al., arXiv 2306.05284) and uses such a model to
rescore its samples (Sec. 3.3) and to write the first seconds of Hybrid-MAGNeT (Sec. 3.4). This is
that model in maskgen: the `autoregressive` recipe with K code streams (`model.num_streams`) on the
[50, 4] codec frames MAGNeT trains on (`experiments/magnet_speech.py`: the same token data, width,
depth, heads, conditioning, optimizer, batch and steps, so the comparison is fair). Each frame's
4 level embeddings are summed and 4 heads predict the next frame's 4 tokens together (MusicGen's
"parallel" pattern: T = 50 sequential steps per clip, each a KV-cached call on one frame).
The word conditions it through adaLN, with class dropout for classifier-free guidance.

Launch (2-core CPU; `small` trains in a few minutes):
  maskgen train --config experiments/ar_speech.py:tokens=runs/codec_tokens --workdir runs/ar
  maskgen eval --workdir runs/ar
  maskgen sample --workdir runs/ar --num 2 --out runs/ar/samples
  python -m benchmarks.magnet_vs_ar --magnet-workdir runs/magnet --ar-workdir runs/ar

Arguments (`:tokens=DIR,size=tiny,steps=100,frames=50,levels=4`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch): experiments/magnet_speech.py's, for a fair comparison.
SIZES = {"tiny": (32, 2, 2, 20, 8), "small": (128, 4, 4, 3000, 32)}
ARGS = {
    "tokens": Arg("runs/codec_tokens", "the token dataset (`maskgen tokenize --out` of a codec run)"),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "frames": Arg(50, "codec frames per clip (the tokens' token_shape[0])", integer(min=1)),
    "levels": Arg(4, "codec RVQ levels K (the tokens' num_levels): the model's code streams", integer(min=1)),
    "codebook_size": Arg(256, "the codec run's codebook size", integer(min=2)),
    "words": choice("digits", "the speech vocabulary the tokens were made from (picks the word classifier)",
                    "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    levels = args["levels"]
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "autoregressive"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    config.model = dict(
        # The data's per-example shape (frames, levels); the transformer runs over the frames with
        # one stream per level.
        token_shape=(args["frames"], levels) if levels > 1 else (args["frames"],), num_streams=levels,
        codebook_size=args["codebook_size"], width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        conditioning="adaln", positions="learned", qk_norm=False, tie_head=True, architecture="pre_ln", dropout=0.0,
    )
    # MAGNeT's loss settings (experiments/magnet_speech.py): no label smoothing, class dropout 0.1.
    config.loss = dict(label_smoothing=0.0, class_dropout=0.1)
    # MusicGen samples with guidance 3 at temperature 1.
    config.sampling = dict(temperature=1.0, cfg_scale=3.0)
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
        # As for MAGNeT: word consistency and the word-feature Fréchet distance of decoded samples.
        generation=dict(type="audio_generation", every=0, num_per_class=2 if tiny else 20,
                        batch_size=20 if tiny else 100, seed=0, words=args["words"]),
    )
    return config
