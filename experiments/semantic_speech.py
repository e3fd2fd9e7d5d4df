r"""Semantic speech tokens (MaskGCT's, arXiv 2409.00750): k-means on normalised SSAST frame features.

MaskGCT quantises normalised w2v-BERT 2.0 layer-17 features (50 Hz) with an 8192-code VQ; here the
encoder is maskgen's own SSAST frame-token run on the local eSpeak NG speech (one token per 2 mel
frames of 10 ms: 50 Hz, like the 50 Hz mel codec of experiments/codec_speech_mel.py), its features
normalised per dimension by statistics of the first `stats_steps` batches, and quantised by EMA
mini-batch k-means with a k-means init and dead-code restarts (maskgen.recipes.feature_tokenizer).

Launch (2-core CPU; the SSAST run takes num_frames=100, so a 1 s clip gives 50 tokens, the frame
count of the 50 Hz codec: with its default 96 frames it would see 0.96 s and give 48):
  maskgen train --config experiments/ssast_speech.py:tokens=frame --config.model.num_frames=100 \
      --workdir /tmp/ssast_frame
  maskgen train --config experiments/semantic_speech.py:encoder=/tmp/ssast_frame --workdir /tmp/semantic
  maskgen tokenize --tokenizer-workdir /tmp/semantic --data speech --out /tmp/semantic_tokens  # [50] per clip

Arguments (`:size=tiny,encoder=DIR,layer=-1,codebook=256`): ARGS below.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (codebook, steps, statistics steps, batch)
SIZES = {
    "tiny": (16, 6, 2, 4),  # tests: seconds
    "small": (256, 600, 40, 32),  # a few minutes on 2 CPU cores (40 x 32 x 50 = 64k frames for the statistics)
}
ARGS = {
    "size": choice("small", "codebook size and steps (SIZES); tiny is for tests", *SIZES),
    "encoder": Arg("runs/ssast_frame", "the frozen encoder: a trained SSAST frame-token run's workdir"),
    "layer": Arg(-1, "the encoder layer: -1 the final output, k the output of block k", integer(min=-1)),
    "codebook": Arg(None, "number of k-means centroids (default per size; MaskGCT: 8192)", integer(min=2)),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    codebook, steps, stats_steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "feature_tokenizer"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="speech", data_dir="", image_size=0, augment="none", train_split="train", read_threads=1,
                       words="digits", sample_rate=16000, clip_seconds=1.0)
    config.encoder = dict(workdir=args["encoder"], layer=args["layer"])
    config.model = dict(codebook_size=args["codebook"] or codebook,
                        stats_steps=max(1, min(stats_steps, config.total_steps // 2)), ema_decay=0.99, kmeans_iters=10,
                        # A centroid used by under 1/20 of the uniform share (at 256 codes and 1,600
                        # frames a batch: under ~0.3 frames a batch, on average) restarts on a frame.
                        dead_code_threshold=0.05)
    # Nothing is trained by gradient (k-means sets the codebook in place): the optimizer only steps
    # zeros, and evaluation uses the codebook as it is, not an average of it over steps.
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 0
    config.eval_params = "params"
    config.log_every = min(50, max(1, config.total_steps // 10))
    config.checkpoint_every = config.total_steps
    return config
