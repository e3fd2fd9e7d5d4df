r"""MAE pretraining on scikit-learn's handwritten digits (the CPU demo).

He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377, scaled down to
1,797 real 8x8 digits upsampled to 16x16, 2x2 patches (64 per image), 75% masking.

Launch (2-core CPU, a few minutes):
  maskgen train --config experiments/mae_digits.py --workdir /tmp/mae_digits
  maskgen eval --workdir /tmp/mae_digits
  maskgen sample --workdir /tmp/mae_digits --out /tmp/mae_digits/recon.png

Arguments (`--config experiments/mae_digits.py:size=tiny,steps=50`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, decoder_width, decoder_depth, decoder_heads, steps, batch)
SIZES = {
    "tiny": (32, 1, 2, 32, 1, 2, 20, 32),  # tests: seconds
    "small": (96, 3, 3, 64, 1, 4, 1500, 128),  # the README demo: ~4 min on 2 CPU cores
    "base": (192, 6, 6, 128, 2, 4, 6000, 256),
}
ARGS = {
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "total training steps (default per size)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, dec_width, dec_depth, dec_heads, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "mae"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    # Digits are not flipped or cropped: a mirrored 2 is not a 2. See docs/data.md for the split.
    # The 8x8 scans are upsampled to 16x16 on purpose (max_upscale=2); 32 would be refused.
    config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                       read_threads=1, max_upscale=2.0)
    config.model = dict(
        patch_size=2, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        decoder_width=dec_width, decoder_depth=dec_depth, decoder_heads=dec_heads,
        mask_ratio=0.75, norm_pix_loss=True, sincos_order="x_first",
    )
    config.optimizer.lr = 1.5e-4 * batch / 256 * 10  # MAE's base lr x batch/256; x10 for a short run
    config.optimizer.warmup_steps = min(200, config.total_steps // 10)
    config.ema_decay = 0.995
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(500, config.total_steps)
    config.evals = dict(
        # protocol="quick": mean-pooled tokens + full-batch Adam (steps, learning_rate, weight_decay).
        # protocol="paper" (--config.evals.probe.protocol=paper): MAE's class token + BatchNorm + LARS
        # probe (Appendix A.2) at batch 256. LARS moves the weights by about lr x 0.001 of their norm
        # per step, so the paper's 90 epochs of 1.28M images become 3,000 epochs of these 1,438
        # (15k steps, about a minute; 90 epochs leave the head near its random start: docs/mae.md).
        probe=dict(type="linear_probe", every=0, baselines=("random_init", "pixels"), train_split="train",
                   test_split="test", protocol="quick", steps=1000, learning_rate=1e-2, weight_decay=1e-4,
                   epochs=3000, batch_size=256, base_learning_rate=0.1, warmup_epochs=300),
        reconstruction=dict(type="image_grid", every=0, split="test", num=16,
                            rows=("original", "masked", "reconstruction")),
    )
    return config
