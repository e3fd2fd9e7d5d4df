r"""DiGIT's image tokens (Zhu et al., arXiv 2410.12490) on digits: k-means on an MAE run's patch features.

DiGIT clusters the third-to-last block of DINOv2-B/14 (with registers) into K = 8192 codes, one per
patch (16x16 tokens at 224 px). Here the encoder is maskgen's own MAE run on the digits
(experiments/mae_digits.py: 16x16 images, 2x2 patches, so 8x8 tokens, the grid of the VQ digits
tokenizer), its block features normalised per dimension by statistics of the first `stats_steps`
batches and clustered by EMA mini-batch k-means (maskgen.recipes.feature_tokenizer). Images decode
to each code's mean patch (a blurry ceiling, not a VQGAN decoder; docs/mae_family.md).

Launch (2-core CPU):
  maskgen train --config experiments/mae_digits.py --workdir runs/mae_digits
  maskgen train --config experiments/digit_tokenizer_digits.py:encoder=runs/mae_digits --workdir runs/digit
  maskgen sample --workdir runs/digit --out runs/digit/recon.png     # originals and mean-patch decodes
  maskgen tokenize --tokenizer-workdir runs/digit --data digits --out runs/digit_tokens  # [8, 8] per image
  maskgen train --config experiments/maskgit_digit_tokens.py:tokens=runs/digit_tokens --workdir runs/maskgit_digit

Arguments (`:encoder=DIR,layer=1,codebook=256,size=tiny`): ARGS below. `encoder` must name a trained
MAE run: a missing one is refused when the run is set up, naming config.encoder.workdir.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (codebook, steps, statistics steps, batch)
SIZES = {
    "tiny": (16, 6, 2, 8),  # tests: seconds
    "small": (256, 400, 20, 64),  # ~2 min on 2 CPU cores; 20 x 64 x 64 = 82k patches for the statistics
}
ARGS = {
    "size": choice("small", "codebook size and steps (SIZES); tiny is for tests", *SIZES),
    "encoder": Arg("runs/mae_digits", "the frozen encoder: a trained MAE run's workdir (experiments/mae_digits.py)"),
    "layer": Arg(1, "the encoder layer: -1 the final output, k the output of block k (DiGIT: the third-to-last "
                    "block, depth - 2: 1 for the small MAE of depth 3)", integer(min=-1)),
    "codebook": Arg(None, "number of k-means centroids (default per size; DiGIT: 8192)", integer(min=2)),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    codebook, steps, stats_steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "feature_tokenizer"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    # The MAE digits run's data: the 8x8 scans upsampled to 16x16, no augmentation.
    config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                       read_threads=1, max_upscale=2.0)
    config.encoder = dict(workdir=args["encoder"], layer=args["layer"])
    config.model = dict(codebook_size=args["codebook"] or codebook,
                        stats_steps=max(1, min(stats_steps, config.total_steps // 2)), ema_decay=0.99, kmeans_iters=10,
                        # A centroid used by under 1/20 of the uniform share restarts on a patch's features.
                        dead_code_threshold=0.05)
    # Nothing is trained by gradient (k-means and the mean patches are set in place): the optimizer
    # only steps zeros, and evaluation uses the codebook as it is, not an average of it over steps.
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = 0
    config.eval_params = "params"
    config.log_every = min(50, max(1, config.total_steps // 10))
    config.checkpoint_every = config.total_steps
    return config
