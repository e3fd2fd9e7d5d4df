r"""MAR on digits (Li et al., "Autoregressive Image Generation without Vector Quantization", arXiv
2406.11838; LTH14/mar): continuous tokens with a per-token diffusion head, the CPU demo.

By default the tokens are pixel patches of the 16x16 digits: 4x4 patches, a 4x4 grid of 16-value
tokens (as many values per token as MAR's KL-16 latents; `--config.model.patch_size=2` gives the
8x8 grid of the MaskGIT demo's VQ tokens, at about 4x the training cost). With `data=latents` they are the latents of a
KL tokenizer run written by `maskgen tokenize` (`latents_dir=...`; patch size 1 on its grid).
Samples are judged like MaskGIT's: class consistency under maskgen's digit classifier and the
Fréchet distance on its features (the `generation` evaluator, which decodes latents through the
tokenizer run).

Launch (2-core CPU):
  maskgen train --config experiments/mar_digits.py --workdir runs/mar
  maskgen sample --workdir runs/mar --num 10 --steps 16 --out grid.png
  # on KL latents:
  maskgen train --config experiments/tokenizer_digits.py:quantizer=kl --workdir runs/kl
  maskgen tokenize --tokenizer-workdir runs/kl --data digits --out runs/latents
  maskgen train --config experiments/mar_digits.py:data=latents,latents_dir=runs/latents --workdir runs/mar_kl

Arguments (`:size=tiny,steps=100,data=latents,latents_dir=DIR`): ARGS below; any other is refused.
MAR's paper settings are in experiments/mar_imagenet256.py; here the model is small, the buffer 4
tokens (MAR: 64), the run short (constant lr after warmup, as MAR; EMA 0.99 for a short run) and
the head samples with all 1000 diffusion steps (MAR: 100 respaced; see `config.sampling`).
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, decoder depth, heads, head width, head depth, steps, batch)
SIZES = {"tiny": (32, 1, 1, 2, 32, 2, 20, 16), "small": (128, 3, 3, 4, 128, 3, 1500, 64)}
ARGS = {
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "data": choice("digits", "digits: 16x16 pixels in 4x4 patches; latents: a `maskgen tokenize` latent dataset of "
                   "a model.quantizer='kl' tokenizer run", "digits", "latents"),
    "latents_dir": Arg("runs/latents", "with data=latents: the output of `maskgen tokenize` for a "
                       "model.quantizer='kl' tokenizer run"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, decoder_depth, heads, head_width, head_depth, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "mar"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    if args["data"] == "digits":
        # Not flipped or cropped (a mirrored 2 is not a 2); the 8x8 scans upsampled to 16x16 on purpose.
        config.data = dict(name="digits", data_dir="", image_size=16, augment="none", train_split="train",
                           read_threads=1, max_upscale=2.0)
    else:
        config.data = dict(name="tokens", data_dir=args["latents_dir"], image_size=0, augment="none",
                           train_split="train", read_threads=1)
    # 4x4 pixel patches; one latent cell per token (`--config.model.patch_size=2` groups 2x2 cells).
    patch_size = 4 if args["data"] == "digits" else 1
    config.model = dict(
        patch_size=patch_size, width=width, depth=depth, num_heads=heads, decoder_width=width,
        decoder_depth=decoder_depth, decoder_heads=heads, mlp_ratio=4.0, buffer_size=4,
        head_width=head_width, head_depth=head_depth, dropout=0.0)
    # MAR's: truncated-normal mask ratio >= 0.7, label dropout 0.1, 4 diffusion draws per token,
    # epsilon prediction with learned variance on the 1000-step cosine schedule.
    config.loss = dict(mask_ratio_min=0.7, mask_ratio_std=0.25, class_dropout=0.1, diffusion_batch_mul=4,
                       prediction="epsilon", learn_sigma=True, num_timesteps=1000)
    # Decoding: 16 outer iterations (one token each on the 4x4 grid; MAR: 64-256 over 256), DDPM
    # of the head on all 1000 training steps, temperature 1.0 and linear CFG 2. MAR samples with 100
    # respaced steps; this small head does not survive them: on the small run (1,500 steps), 100
    # steps give class consistency 0.29 and Frechet distance 172 (cfg 1), 250 steps 0.87 / 26,
    # 1000 steps 0.98 / 14.6 (cfg 2; 0.98 / 20.1 at cfg 3). The first respaced step (t = 999 ->
    # 989) multiplies the head's epsilon error by alpha_989 / alpha_999 ~ 350 (docs/diffusion.md).
    config.sampling = dict(num_steps=16, diffusion_steps=1000, sampler="ddpm", temperature=1.0, cfg_scale=2.0,
                           cfg_schedule="linear")
    if args["size"] == "tiny":
        config.sampling.update(num_steps=4, diffusion_steps=10)
    config.optimizer.lr = 1e-3
    config.optimizer.b1, config.optimizer.b2 = 0.9, 0.95  # MAR's AdamW betas
    config.optimizer.weight_decay = 0.02  # MAR's
    config.optimizer.warmup_steps = min(100, config.total_steps // 10)
    config.optimizer.min_lr_ratio = 1.0  # MAR's constant schedule after warmup
    config.optimizer.grad_clip_norm = 3.0  # MAR's
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    tiny = args["size"] == "tiny"
    config.evals = dict(
        generation=dict(type="generation", every=0, num_per_class=4 if tiny else 50,
                        batch_size=40 if tiny else 250, seed=0),
    )
    return config
