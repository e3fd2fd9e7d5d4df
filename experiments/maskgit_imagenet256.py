r"""MaskGIT at paper scale: class-conditional ImageNet 256x256 on f16 VQGAN tokens, for a TPU pod.

Chang et al., arXiv 2202.04200, Sec. 4.1: a bidirectional transformer with 24 layers, 16 heads,
768 wide (3072 MLP), on the 16x16 token grids of the VQGAN tokenizer (codebook 1024,
`experiments/tokenizer_imagenet.py`). The model is the official release's exactly
(architecture="bert": a post-LN BERT with an embedding LayerNorm, an MLM head, LayerNorm eps
1e-12, tanh GELU, truncated-normal(0.02) init, dropout 0.1 on the embeddings, the attention
probabilities and the hidden states, the class as a prefix token), so the official checkpoint
loads into it (`maskgen import-weights --format maskgit_transformer`). Cosine mask schedule,
label smoothing 0.1, the loss averaged per example, AdamW with b = (0.9, 0.96), weight decay
0.045, lr 1e-4, batch 256, 300 epochs. Decoding: 8 steps, cosine schedule, choice temperature
4.5. Reported: FID 6.18 (ImageNet 256, 8 steps, no guidance). Class dropout 0.1 (for CFG) is
maskgen's addition; the paper trained without it (set `--config.loss.class_dropout=0`).
maskgen's own pre-LN block: `--config.model.architecture=pre_ln --config.model.dropout=0`.

Launch (after tokenizing ImageNet with `maskgen tokenize --tokenizer-workdir VQGAN --data tfds:imagenet2012 ...`):
  maskgen train --config experiments/maskgit_imagenet256.py:tokens=/gcs/BUCKET/in256_tokens \
      --workdir /gcs/BUCKET/maskgit_in256
FID needs the FID InceptionV3 weights and ADM's reference batch, which maskgen never downloads
(see docs/maskgit.md; the batch is VIRTUAL_imagenet256_labeled.npz from openai/guided-diffusion's
evaluations/README.md):
  maskgen eval --workdir /gcs/BUCKET/maskgit_in256 \
      --config.evals.fid.inception_weights=/path/pt_inception-2015-12-05.npz \
      --config.evals.fid.adm_reference=/path/VIRTUAL_imagenet256_labeled.npz

Arguments (`:tokens=DIR,size=tiny`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

IMAGENET_TRAIN_EXAMPLES = 1_281_167
ARGS = {
    "tokens": Arg("", "the token dataset directory (`maskgen tokenize --out` of the ImageNet tokenizer)"),
    "size": choice("full", "full: the paper's 24 x 768 model; tiny: a 1-block CPU smoke test on the 16x16 tokens "
                   "of `tokenizer_imagenet.py:size=tiny` (32 px images)", "full", "tiny"),
    "epochs": Arg(300, "training epochs (the paper: 300; ignored by size=tiny)", integer(min=1)),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    tiny = args["size"] == "tiny"
    config = base_config()
    config.recipe = "maskgit"
    config.batch_size = 8 if tiny else 256
    config.total_steps = 10 if tiny else args["epochs"] * (IMAGENET_TRAIN_EXAMPLES // 256)
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    config.model = dict(
        token_shape=(16, 16), codebook_size=1024, width=32 if tiny else 768,
        depth=1 if tiny else 24, num_heads=2 if tiny else 16, mlp_ratio=4.0, conditioning="prefix",
        positions="learned", qk_norm=False, tie_head=True, architecture="bert", dropout=0.1,
    )
    config.loss = dict(mask_schedule="cosine", label_smoothing=0.1, class_dropout=0.1, weighting="per_example")
    config.sampling = dict(num_steps=8, schedule="cosine", choice_temperature=4.5, temperature=1.0,
                           policy="confidence", cfg_scale=1.0, cfg_schedule="constant")
    config.optimizer = dict(lr=1e-4, b1=0.9, b2=0.96, weight_decay=0.045, warmup_steps=2 if tiny else 5000,
                            min_lr_ratio=0.0, grad_clip_norm=1.0)
    config.ema_decay = 0.9999
    config.eval_params = "ema"
    config.compute_dtype = "float32" if tiny else "bfloat16"
    config.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    config.log_every = 1 if tiny else 100
    config.checkpoint_every = 5 if tiny else 5000
    # FID-50k on InceptionV3 features against ADM's reference batch, as published ImageNet FIDs are
    # (run with `maskgen eval` once both files are given; an empty adm_reference is an error, never
    # a silent fall back to the validation split). Samples are rounded to uint8 first, as ADM's
    # evaluator reads them; adm_statistics="auto" uses the file's mu/sigma, as ADM's evaluator does.
    config.evals = dict(
        fid=dict(type="generation", every=-1, num_per_class=2 if tiny else 50, batch_size=8 if tiny else 500,
                 seed=0, classifier="", feature_net="inception", inception_weights="", reference="adm",
                 adm_reference="", adm_statistics="auto", uint8=True, real_split="validation", floor_split="",
                 max_real=16 if tiny else None, trajectory_samples=2),
    )
    return config
