r"""The MAE family at paper scale: ViT-B/16 on ImageNet-1k, each variant with its paper's settings.

The CPU table (experiments/mae_family.py, docs/mae_family.md) changes one thing of plain MAE at a
time; this file sets the same switches to the values the papers report, on MAE's ViT-B/16 recipe
(He et al., arXiv 2111.06377: 224 px, 16 px patches, decoder 8 x 512, AdamW b=(0.9, 0.95), wd 0.05,
base lr 1.5e-4 x batch/256, batch 4096, 40 warm-up epochs then cosine, random resized crop + flip).

  method=mae        plain MAE, 800 epochs (the paper's ViT-B fine-tune 83.6 is at 1600).
  method=colormae   ColorMAE (Hinojosa et al., arXiv 2407.13036): green noise masks at 75%, 800
                    epochs (their fine-tune 83.0 / 83.6 / 83.8 at 300 / 800 / 1600 epochs).
  method=hpm        HPM (Wang et al., arXiv 2304.05919): a loss predictor and hard-patch masking,
                    alpha rising to 0.5, 200 epochs (83.0 vs MAE 82.2 fine-tune).
  method=gmml       GMML (Atito et al., arXiv 2111.15340): 50-75% of the image in patch groups
                    replaced by noise, the whole image encoded, L1 on the corrupted pixels.
  method=maskalign  MaskAlign (Xue et al., arXiv 2211.08887): 30% visible by teacher attention, no
                    decoder loss, every student block fused onto the teacher's last 5; 200 epochs
                    (85.4 fine-tune with a CLIP-B/16 teacher).
  method=dmae       DMAE (Bai et al., arXiv 2208.12256): MAE + L1 from student block 8 to teacher
                    block 17 of an MAE ViT-L on the visible patches; 100 epochs (84.0 fine-tune).
  method=mrmae      MR-MAE (Gao et al., arXiv 2303.05475): MAE + mimicking of the teacher's
                    features on the visible tokens; 400 epochs (85.8 vs MAE's 83.6 at 1600).

Differences from the papers, by design: every teacher is a maskgen run (nothing is downloaded),
so MaskAlign and MR-MAE read an MAE ViT-L run (`teacher=`) where the papers read CLIP-B/16 and
CLIP + DINO; DMAE's teacher is the MAE ViT-L the paper uses. Train the teacher first with
experiments/mae_imagenet.py:size=L (or import facebookresearch/mae's ViT-L weights with
`maskgen import-weights`). The data is an on-disk TFDS copy of imagenet2012 (maskgen never downloads).

Launch (TPU pod, as experiments/mae_imagenet.py):
  maskgen train --config experiments/mae_family_imagenet.py:method=hpm --workdir /gcs/BUCKET/hpm_b16 \
      --config.data.data_dir=/mnt/tfds

Arguments (`:method=dmae,teacher=/gcs/BUCKET/mae_l16`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

IMAGENET_TRAIN_EXAMPLES = 1_281_167
# method: pretraining epochs the paper reports its headline number at.
EPOCHS = {"mae": 800, "colormae": 800, "hpm": 200, "gmml": 800, "maskalign": 200, "dmae": 100, "mrmae": 400}
TEACHER_METHODS = ("maskalign", "dmae", "mrmae")
ARGS = {
    "method": choice("mae", "the variant (EPOCHS)", *EPOCHS),
    "size": choice("B", "B: ViT-B/16 at 224 px (the papers); tiny: a 20-step CPU smoke test on a local TFDS copy",
                   "B", "tiny"),
    "epochs": Arg(None, "pretraining epochs (default: the paper's, EPOCHS)", integer(min=1)),
    "teacher": Arg("runs/mae_l16", "the frozen teacher of maskalign/dmae/mrmae: an MAE ViT-L/16 run at 224 px"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    method, tiny = args["method"], args["size"] == "tiny"
    batch = 8 if tiny else 4096
    steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch
    config = base_config()
    config.recipe = "mae"
    config.batch_size = batch
    config.total_steps = 20 if tiny else (args["epochs"] or EPOCHS[method]) * steps_per_epoch
    config.data = dict(name="tfds:imagenet2012", data_dir="", image_size=32 if tiny else 224, augment="crop_flip",
                       train_split="train", read_threads=16)
    width, depth, heads, dec_width, dec_depth, dec_heads = (32, 2, 2, 32, 1, 2) if tiny else (768, 12, 12, 512, 8, 16)
    config.model = dict(patch_size=16, width=width, depth=depth, num_heads=heads, mlp_ratio=4.0,
                        decoder_width=dec_width, decoder_depth=dec_depth, decoder_heads=dec_heads, mask_ratio=0.75,
                        norm_pix_loss=True, sincos_order="x_first")
    config.optimizer = dict(lr=1.5e-4 * batch / 256, b1=0.9, b2=0.95, weight_decay=0.05,
                            warmup_steps=2 if tiny else 40 * steps_per_epoch, min_lr_ratio=0.0, grad_clip_norm=0.0)
    config.ema_decay = 0.9999
    config.eval_params = "params"
    config.compute_dtype = "float32" if tiny else "bfloat16"
    config.mesh = (("data", -1), ("fsdp", 1 if tiny else 8), ("tensor", 1))
    config.log_every = 1 if tiny else 100
    config.checkpoint_every = 10 if tiny else 2000
    config.evals = dict(
        probe=dict(type="linear_probe", every=0 if tiny else 50_000, baselines=("random_init",), train_split="train",
                   test_split="validation", protocol="quick", steps=1000, learning_rate=1e-2, weight_decay=1e-4,
                   max_examples=64 if tiny else 50_000),
    )
    m = config.model
    if method == "colormae":
        m.masking, m.mask_color = "color", "green"
    elif method == "hpm":
        m.masking, m.hpm_max_share, m.hpm_predictor_weight = "hard", 0.5, 1.0
    elif method == "gmml":
        m.objective, m.norm_pix_loss, m.gmml_replace = "gmml", False, "noise"
        m.gmml_min_ratio, m.gmml_max_ratio = 0.5, 0.75
    elif method in TEACHER_METHODS:
        config.teacher = dict(workdir=args["teacher"], kind=method, student_layers=(), teacher_layers=(), weight=1.0,
                              loss={"maskalign": "smooth_l1", "dmae": "l1", "mrmae": "mse"}[method])
        if method == "maskalign":
            m.objective, m.mask_ratio, m.masking = "align", 0.7, "attention"
    return config
