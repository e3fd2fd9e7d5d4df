r"""The MAE family on one recipe, on handwritten digits moved and rescaled on a 32x32 canvas (`moved_digits`).

Every variant changes one thing of plain MAE (He et al., arXiv 2111.06377) at the same model,
data, batch and number of steps (docs/mae_family.md has the table this config makes):

  method=mae        plain MAE: random 75% masking, pixel target (norm_pix_loss)
  method=colormae   ColorMAE (arXiv 2407.13036): green filtered-noise masks instead of random ones
  method=hpm        HPM (arXiv 2304.05919): a loss predictor picks hard patches, easy -> hard
  method=gmml       GMML (arXiv 2111.15340): groups of patches replaced by noise; the full image is
                    encoded and the corrupted pixels reconstructed (L1)
  method=gmml_image GMML with another image's patches as the replacement
  method=maskalign  MaskAlign (arXiv 2211.08887): 30% visible, features aligned to a frozen teacher
                    at several layers, no pixel reconstruction
  method=dmae       DMAE (arXiv 2208.12256): MAE + L1 distillation of a teacher's intermediate block
  method=mrmae      MR-MAE (arXiv 2303.05475): MAE + mimicking of the teacher's features on the
                    visible tokens
  method=teacher    the teacher those three read: a larger plain MAE trained for longer
  method=mae_long   plain MAE trained COMPUTE_MATCHED_STEPS times as many steps: the compute of the
                    costliest teacher pipeline (the teacher paid in full, plus the student), so the
                    teacher variants can be read against plain MAE at equal compute too

The teacher variants read the run named by `teacher=` (default runs/mae_family/teacher, a trained
method=teacher run);
`python -m benchmarks.mae_family` trains it first, then every variant over seeds (the sweep:
SWEEP_METHODS x seeds 0, 1, 2).

Launch (2-core CPU, a few minutes each):
  maskgen train --config experiments/mae_family.py:method=mae,seed=0 --workdir runs/mae_family/mae-0
  maskgen eval --workdir runs/mae_family/mae-0

Arguments (`--config experiments/mae_family.py:method=mae,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

METHODS = ("mae", "colormae", "hpm", "gmml", "gmml_image", "maskalign", "dmae", "mrmae", "teacher", "mae_long")
SWEEP_METHODS = ("mae", "colormae", "hpm", "gmml", "gmml_image", "maskalign", "dmae", "mrmae", "mae_long")
# mae_long's steps as a multiple of the others'. Measured on the table's machine (docs/mae_family.md,
# "Cost per step"): the teacher's training costs 4.7 plain-MAE pretrainings (2,000 steps at 648 ms
# against 1,000 at 276 ms) and the costliest student, MR-MAE, 2.4 (its step is 2.39x plain MAE's):
# 4.7 + 2.4 = 7.1. MaskAlign's pipeline is 4.7 + 2.2, DMAE's 4.7 + 1.2.
COMPUTE_MATCHED_STEPS = 7
LABELS = {"mae": "plain MAE", "colormae": "ColorMAE (green)", "hpm": "HPM", "gmml": "GMML (noise)",
          "gmml_image": "GMML (other image)", "maskalign": "MaskAlign", "dmae": "DMAE", "mrmae": "MR-MAE",
          "teacher": "teacher (larger MAE)", "mae_long": f"plain MAE, {COMPUTE_MATCHED_STEPS}x steps (compute-matched)"}
# Each paper's claimed direction against plain MAE (docs/mae_family.md has the numbers).
CLAIMS = {
    "colormae": "green masks beat random (+0.2-0.8 ft on IN-1k)",
    "hpm": "beats MAE (ViT-B 200 ep: 83.0 vs 82.2 ft)",
    "gmml": "beats MAE-style training on small data",
    "gmml_image": "beats MAE-style training on small data",
    "maskalign": "beats MAE (ViT-B 200 ep: 85.4 ft)",
    "dmae": "beats MAE (ViT-B 100 ep: 84.0 ft)",
    "mrmae": "beats MAE (ViT-B 85.8 at 400 ep vs 83.6 at 1600)",
}
TEACHER_METHODS = ("maskalign", "dmae", "mrmae")


def needs_teacher(method: str) -> bool:
    return method in TEACHER_METHODS


# size: (width, depth, heads, decoder_width, decoder_depth, decoder_heads, steps, batch)
SIZES = {
    "tiny": (32, 2, 2, 32, 1, 2, 20, 32),  # tests: seconds
    "small": (96, 4, 4, 64, 1, 4, 1000, 128),  # the table: ~4 minutes per run on 2 CPU cores
}
# The teacher of MaskAlign / DMAE / MR-MAE: wider, twice as deep, trained 2x longer (paid once).
TEACHER_SIZES = {
    "tiny": (32, 2, 2, 32, 1, 2, 20, 32),
    "small": (128, 8, 4, 64, 1, 4, 2000, 128),
}
ARGS = {
    "method": choice("mae", "the variant (METHODS)", *METHODS),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "seed": Arg(0, "seed of the initialisation, masks and data order", integer(min=0)),
    "steps": Arg(None, "total training steps (default per size; mae_long trains COMPUTE_MATCHED_STEPS x this)",
                 integer(min=1)),
    "teacher": Arg("runs/mae_family/teacher", "the frozen teacher run of maskalign/dmae/mrmae (a method=teacher run)"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    method = args["method"]
    sizes = TEACHER_SIZES if method == "teacher" else SIZES
    width, depth, heads, dec_width, dec_depth, dec_heads, steps, batch = sizes[args["size"]]
    config = base_config()
    config.recipe = "mae"
    config.seed = args["seed"]
    config.total_steps = (args["steps"] or steps) * (COMPUTE_MATCHED_STEPS if method == "mae_long" else 1)
    config.batch_size = batch
    # Digits are not flipped or cropped (a mirrored 2 is not a 2): the renditions already vary the
    # digit's size (18-28 px) and place on the 32x32 canvas. background="photo" is the MNIST-M-like
    # variant, too hard for these model sizes (docs/mae_family.md).
    config.data = dict(name="moved_digits", data_dir="", image_size=32, augment="none", train_split="train",
                       read_threads=1, max_upscale=1.0, train_renditions=4, test_renditions=2,
                       background="none", digit_sides=(18, 28))
    config.model = dict(
        patch_size=4, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
        decoder_width=dec_width, decoder_depth=dec_depth, decoder_heads=dec_heads,
        mask_ratio=0.75, norm_pix_loss=True, sincos_order="x_first",
    )
    config.optimizer.lr = 1.5e-4 * batch / 256 * 10  # MAE's base lr x batch/256; x10 for a short run
    config.optimizer.warmup_steps = min(200, config.total_steps // 10)
    config.ema_decay = 0.995
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    config.evals = dict(
        # The quick probe (mean-pooled tokens + Adam), with the random-init and raw-pixel baselines.
        probe=dict(type="linear_probe", every=0, baselines=("random_init", "pixels"), train_split="train",
                   test_split="test", protocol="quick", steps=1000, learning_rate=1e-2, weight_decay=1e-4,
                   random_init_seed=12345, max_examples=None),
        # A short end-to-end fine-tune with MAE's layer-wise lr decay (~7 epochs); its from-scratch
        # baseline is the same fine-tune from a random init. Base lr 4x the paper's 1e-3: at a few
        # hundred steps the paper's rate leaves even the from-scratch model unconverged (docs/mae_family.md).
        finetune=dict(type="finetune", every=0, train_split="train", test_split="test", steps=300,
                      batch_size=128, base_learning_rate=4e-3, layer_decay=0.75, weight_decay=0.05,
                      warmup_fraction=0.05, label_smoothing=0.1, baselines=("random_init",), seed=0,
                      random_init_seed=12345, max_examples=None),
    )
    _apply_method(config, method, args["teacher"])
    return config


def _apply_method(config, method: str, teacher: str) -> None:
    """The one thing each variant changes (the paper's setting, scaled to this model)."""
    m = config.model
    if method == "colormae":
        m.masking, m.mask_color = "color", "green"  # the paper's best colour
    elif method == "hpm":
        m.masking, m.hpm_max_share, m.hpm_predictor_weight = "hard", 0.5, 1.0  # alpha_t: 0 -> 0.5
    elif method in ("gmml", "gmml_image"):
        # The full image is encoded; 50-75% of it, in patch-aligned groups, is replaced; L1 on it.
        m.objective, m.norm_pix_loss = "gmml", False
        m.gmml_replace = "noise" if method == "gmml" else "image"
        m.gmml_min_ratio, m.gmml_max_ratio = 0.5, 0.75
    elif method in TEACHER_METHODS:
        config.teacher = dict(workdir=teacher, kind=method, student_layers=(), teacher_layers=(), weight=1.0, loss="")
        if method == "maskalign":
            # 30% visible, no pixel loss; every student block fused onto the teacher's last 5.
            # The visible patches are drawn in proportion to the teacher's class-token attention.
            m.objective, m.mask_ratio, m.masking = "align", 0.7, "attention"
            config.teacher.loss = "smooth_l1"
        elif method == "dmae":
            config.teacher.loss = "l1"  # blocks 3/4 of the way down each encoder (the paper's 8 and 17)
        else:
            config.teacher.loss = "mse"  # the teacher's final features on the visible tokens
