r"""SpecMaskGIT on the local eSpeak NG speech (CPU): MaskGIT on mel-spectrogram VQ tokens, word-conditioned.

SpecMaskGIT (Comunità et al., arXiv 2406.17672; no public code) generates the VQ tokens of a mel
spectrogram with MaskGIT (Chang et al., arXiv 2202.04200) in at most 16 decoding steps. Here the
tokens are the 8 x 16 grids (mel bands x time) of `experiments/tokenizer_speech_mel.py`, written by
`maskgen tokenize`, and the condition is the spoken word (the token dataset's label) through
adaLN, with class dropout for classifier-free guidance; the paper conditions on CLAP text/audio
embeddings instead (there is no CLAP model in maskgen, and the speech data's words are classes).
Samples are decoded by the tokenizer run and turned into audio with Griffin-Lim
(`maskgen.runs.AudioDecoder`). Time inpainting and bandwidth extension are `maskgen edit --audio`
with a `time:` or `band:` mask over the token grid.

Launch (2-core CPU, a few minutes each):
  maskgen train --config experiments/tokenizer_speech_mel.py --workdir runs/mel_tok
  maskgen tokenize --tokenizer-workdir runs/mel_tok --data speech --out runs/mel_tokens
  maskgen train --config experiments/specmaskgit_speech.py:tokens=runs/mel_tokens --workdir runs/specmaskgit
  maskgen sample --workdir runs/specmaskgit --num 4 --steps 8 --out runs/specmaskgit/samples
  maskgen edit --workdir runs/specmaskgit --audio test:0 --mask time:0.3-0.6 --out inpainted.wav
  maskgen edit --workdir runs/specmaskgit --audio test:0 --mask band:high:0.5 --out wideband.wav

Arguments (`:tokens=DIR,size=tiny,steps=100`): ARGS below; any other is refused.
"""

from maskgen.config import Arg, base_config, choice, integer, parse_config_arg

# size: (width, depth, heads, steps, batch); "small" trains in about 5 minutes on an idle 2-core CPU.
SIZES = {"tiny": (32, 2, 2, 20, 16), "small": (96, 4, 4, 1500, 32)}
ARGS = {
    "tokens": Arg("runs/mel_tokens", "the token dataset directory (`maskgen tokenize --out` of a mel tokenizer run)"),
    "size": choice("small", "model size and batch (SIZES); tiny is for tests", *SIZES),
    "steps": Arg(None, "training steps (default per size)", integer(min=1)),
    "codebook_size": Arg(256, "the tokenizer run's codebook size", integer(min=2)),
    "words": choice("digits", "the speech vocabulary the tokens were made from (picks the word classifier)",
                    "digits", "commands", "all"),
}


def get_config(arg=None):
    args = parse_config_arg(arg, ARGS)
    width, depth, heads, steps, batch = SIZES[args["size"]]
    config = base_config()
    config.recipe = "maskgit"
    config.total_steps = args["steps"] or steps
    config.batch_size = batch
    config.data = dict(name="tokens", data_dir=args["tokens"], image_size=0, augment="none",
                       train_split="train", read_threads=1)
    config.model = dict(
        # The tokenizer run's grid (mel bands / f, frames / f); another tokenizer: --config.model.token_shape.
        token_shape=(8, 16), codebook_size=args["codebook_size"], width=width, depth=depth,
        num_heads=heads, mlp_ratio=4.0, conditioning="adaln", positions="learned", qk_norm=False, tie_head=True,
        architecture="pre_ln", dropout=0.0,
    )
    config.loss = dict(mask_schedule="cosine", label_smoothing=0.1, class_dropout=0.1, weighting="per_example")
    # SpecMaskGIT decodes in at most 16 steps (the paper's real-time claim); 8 here, with the
    # guidance and temperatures of the digits demo (experiments/maskgit_digits.py).
    config.sampling = dict(num_steps=8, schedule="cosine", choice_temperature=4.5, temperature=1.0,
                           policy="confidence", cfg_scale=2.0, cfg_schedule="linear")
    config.optimizer.lr = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.96
    config.optimizer.weight_decay = 0.045
    config.optimizer.warmup_steps = min(200, config.total_steps // 10)
    config.ema_decay = 0.99 if config.total_steps >= 300 else 0.9
    config.eval_params = "ema"
    config.log_every = min(100, max(1, config.total_steps // 10))
    config.checkpoint_every = min(1000, config.total_steps)
    config.evals = dict(
        # Word consistency (the word classifier trained in maskgen, on Griffin-Lim audio) and the
        # Fréchet distance on its features (an FAD stand-in), with WAVs and spectrograms per word.
        generation=dict(type="audio_generation", every=0, num_per_class=20 if args["size"] != "tiny" else 2,
                        batch_size=100 if args["size"] != "tiny" else 20, seed=0, words=args["words"]),
    )
    return config
