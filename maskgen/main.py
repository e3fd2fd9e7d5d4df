"""The `maskgen` command line: demo | train | eval | sample | edit | tokenize | prepare | inspect.

  maskgen demo   --workdir runs/demo      (tokenizer -> tokens -> MaskGIT -> scores, samples, an edit)
  maskgen inspect --config experiments/maskgit_imagenet256.py --devices 8 [--config.mesh=...]
  maskgen train  --config experiments/mae_digits.py[:arg] --workdir DIR [--config.key=value ...]
  maskgen eval   --workdir DIR [--step N] [--config FILE[:arg]] [--config.key=value ...]
  maskgen sample --workdir DIR --out grid.png [--num 16] [--step N]
  maskgen sample --workdir MASKGIT_DIR --num 10 --steps 8 --cfg 2.0 --out grid.png   (N per class)
  maskgen edit   --workdir MASKGIT_DIR --image in.png|test:INDEX --mask mask.png|bottom --class C --out out.png
  maskgen sample --workdir TEXT_DIR --num 4                    (text generators: prints and writes samples.txt)
  maskgen sample --workdir SPEECH_MASKGIT_DIR --num 4 --out DIR    (audio generators: WAVs + spectrograms.png)
  maskgen sample --workdir S2A_DIR --t2s-workdir T2S_DIR --text "seven" --prompt-audio in.wav|test:INDEX --out DIR
                                                                 (MaskGCT: the text in the prompt's voice, WAVs)
  maskgen edit   --workdir SPEECH_MASKGIT_DIR --audio in.wav|test:INDEX --mask time:0.3-0.6|band:high:0.5 --class W --out out.wav
  maskgen edit   --workdir TEXT_DIR --prefix "The " --span 20 --suffix " is" --out edited.txt
  maskgen tokenize --tokenizer-workdir DIR --data digits --out TOKENS_DIR   (a kl tokenizer: float latents)
  maskgen prepare --source digits --out DIR
  maskgen import-weights --format mae --weights mae_pretrain_vit_base.pth --workdir runs/mae_base
  maskgen prepare --source folder --input DIR --out DIR --resolution 32 [--skip-bad]
  maskgen prepare --source speech --out DIR [--words digits|commands|all --renditions 8]
  maskgen prepare --source audio_folder --input DIR --out DIR [--sample-rate 16000 --clip-seconds 1.0]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("maskgen")


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=v` (or `--config.a.b v`) overrides from the other arguments."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {arg} needs a value (--config.key=value)")
                body, i = f"{body}={argv[i + 1]}", i + 1
            overrides.append(body)
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _at_least(minimum: int):
    """An argparse type: an int >= minimum, refused with a message naming the bound."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def _parse_options(items: list[str]) -> dict:
    """`KEY=VALUE` strings -> dict; values are read as Python literals where they parse (12, 0.1, True)."""
    import ast

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --option {item!r} must be KEY=VALUE")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskgen", description="Masked generative modeling in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train (or resume) a run")
    train.add_argument("--config", required=True, help="experiments/<name>.py[:arg]")
    train.add_argument("--workdir", required=True)
    train.add_argument("--allow-change", action="append", default=[], metavar="KEY",
                       help="resume although config KEY (e.g. optimizer.lr) differs from the run's config.json")

    for name, text in (("eval", "run the config's evaluators on a checkpoint"),
                       ("sample", "write a grid of samples from a checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--workdir", required=True)
        p.add_argument("--config", default=None, help="default: the run's saved workdir/config.json")
        p.add_argument("--step", type=_at_least(0), default=None, help="checkpoint step (default: latest readable)")
        if name == "sample":
            p.add_argument("--out", default=None,
                           help="PNG path, a .txt for text generators, or a folder of WAVs for audio generators "
                                "(default: WORKDIR/samples.png, samples.txt or samples_audio/)")
            p.add_argument("--num", type=_at_least(1), default=None,
                           help="images (MAE, tokenizers), samples per class (class-conditional generators) or "
                                "samples (unconditional generators); default 16 (MaskGCT: 1)")
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--classes", default=None, help="generators: comma-separated classes (default: all)")
            p.add_argument("--trajectory-out", default=None, help="generators: PNG of one sample's decoding steps")
            _decode_args(p)
            speech = p.add_argument_group("speech (a word of a class-conditional audio run, or MaskGCT text-to-speech)")
            speech.add_argument("--text", default=None, help="the word to say (class-conditional audio runs), or the "
                                                             "text to say in the prompt's voice (MaskGCT)")
            speech.add_argument("--t2s-workdir", default=None, help="MaskGCT: the maskgct_t2s run (--workdir is the "
                                                                    "maskgct_s2a run)")
            speech.add_argument("--prompt-audio", default=None,
                                help="MaskGCT: the voice prompt, a mono WAV/FLAC at the runs' sample rate, or "
                                     "test:INDEX / train:INDEX")
            speech.add_argument("--prompt-text", default=None,
                                help="MaskGCT: what the prompt says (test:INDEX: its word)")
            speech.add_argument("--duration", type=float, default=None,
                                help="MaskGCT: target seconds (default: the prompt's phone rate x the text's phones)")
            speech.add_argument("--s2a-steps", default=None,
                                help="MaskGCT: S2A steps per RVQ level, comma-separated (the last repeats), "
                                     "e.g. 25,10,1")

    edit = sub.add_parser("edit", help="regenerate part of an input: the masked region of an image (MaskGIT), or a "
                                       "span of text between a prefix and a suffix (masked diffusion)")
    edit.add_argument("--workdir", required=True, help="a generator run that can infill")
    edit.add_argument("--image", default=None,
                      help="images: a file, or test:INDEX / train:INDEX of the tokenizer's data (of the run's own "
                           "data for a generator on pixels)")
    edit.add_argument("--audio", default=None,
                      help="audio: a mono WAV/FLAC (resampled to the tokenizer's rate, centred to its clip length), "
                           "or test:INDEX / train:INDEX of the tokenizer's data")
    edit.add_argument("--mask", default=None, help="images: PNG (white = regenerate) or top|bottom|left|right; audio: "
                                                   "time:START-END (seconds; time:START- to the end) or "
                                                   "band:low|high:FRACTION, joined with +")
    edit.add_argument("--class", dest="label", type=int, default=None,
                      help="images, audio: the class (word) to generate (audio test:INDEX: default its own)")
    edit.add_argument("--prefix", default=None, help="text: the text before the span (kept exactly)")
    edit.add_argument("--suffix", default="", help="text: the text after the span (kept exactly)")
    edit.add_argument("--span", type=_at_least(1), default=None, help="text: how many tokens to write between them")
    edit.add_argument("--out", required=True)
    edit.add_argument("--compare-out", default=None, help="also write input | masked | result side by side")
    edit.add_argument("--start-step", type=_at_least(0), default=0, help="begin decoding at this step of --steps")
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--step", type=_at_least(0), default=None, help="checkpoint step (default: latest readable)")
    edit.add_argument("--config", default=None, help="default: the run's saved workdir/config.json")
    edit.add_argument("--resize-mask", action="store_true",
                      help="resize a mask PNG of another size to the image's (nearest neighbour) instead of refusing it")
    _decode_args(edit)

    insp = sub.add_parser("inspect", help="where each parameter of a config's model lives on the mesh")
    insp.add_argument("--config", required=True, help="experiments/<name>.py[:arg]")
    insp.add_argument("--devices", type=_at_least(1), default=None,
                      help="simulate N CPU devices (sets XLA_FLAGS; must come before JAX starts)")

    demo = sub.add_parser("demo", help="tokenizer -> tokens -> MaskGIT -> scores, samples and an edit, on digits")
    demo.add_argument("--workdir", default="runs/demo")
    demo.add_argument("--size", default="small", choices=["tiny", "small"], help="tiny: a smoke run in about a minute")

    tok = sub.add_parser("tokenize", help="write a dataset's token grids (or, for a kl tokenizer, latents scaled to "
                                          "unit variance by a stored factor) with a trained tokenizer")
    tok.add_argument("--tokenizer-workdir", required=True, help="workdir of a `tokenizer` run")
    tok.add_argument("--data", required=True, help="digits | array_record | tfds:<name>")
    tok.add_argument("--data-dir", default=None)
    tok.add_argument("--out", required=True)
    tok.add_argument("--splits", default=None, help="comma-separated (default: all)")
    tok.add_argument("--step", type=_at_least(0), default=None, help="tokenizer checkpoint (default: latest)")
    tok.add_argument("--num-shards", type=_at_least(1), default=1)

    imp = sub.add_parser("import-weights", help="convert released weights (MAE, MaskGIT, its VQGAN) into a maskgen run")
    imp.add_argument("--format", required=True, help="mae | maskgit_transformer | maskgit_vqgan")
    imp.add_argument("--weights", required=True, help="the released file (.pth, .safetensors or a Flax checkpoint)")
    imp.add_argument("--workdir", required=True, help="a new directory for the run")
    imp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="importer options (e.g. num_heads=12, tokenizer=VQGAN_WORKDIR); repeatable")

    prep = sub.add_parser("prepare", help="write a dataset as ArrayRecord shards + metadata.json")
    prep.add_argument("--source", required=True, choices=["digits", "folder", "speech", "audio_folder"])
    prep.add_argument("--input", default=None, help="image folder (--source folder) or audio folder (audio_folder)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--resolution", type=_at_least(1), default=32)
    prep.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    prep.add_argument("--test-fraction", type=float, default=0.1)
    prep.add_argument("--num-shards", type=_at_least(1), default=1)
    prep.add_argument("--min-size", type=int, default=0,
                      help="skip images whose shorter side is below N pixels, listing them (default 0: keep all)")
    audio = prep.add_argument_group("audio (--source speech | audio_folder)")
    audio.add_argument("--sample-rate", type=_at_least(1000), default=16000, help="Hz (default 16000)")
    audio.add_argument("--clip-seconds", type=float, default=1.0, help="every clip is padded/cut to this (centred)")
    audio.add_argument("--words", default="digits", choices=["digits", "commands", "all"], help="speech: word set")
    audio.add_argument("--renditions", type=_at_least(1), default=8, help="speech: renditions per word and voice")
    audio.add_argument("--resample", action=argparse.BooleanOptionalAction, default=True,
                       help="audio_folder: resample clips at other rates (default) or refuse them (--no-resample)")
    audio.add_argument("--mix-to-mono", action="store_true", help="audio_folder: average multi-channel clips")
    audio.add_argument("--min-seconds", type=float, default=0.1, help="audio_folder: refuse shorter clips (0.1)")
    return parser


def _decode_args(p: argparse.ArgumentParser) -> None:
    """Decoding settings; unset ones come from the run's config.sampling."""
    p.add_argument("--steps", type=_at_least(1), default=None, help="decoding steps T")
    p.add_argument("--cfg", type=float, default=None, help="CFG scale: 0 unconditional, 1 conditional, >1 guided")
    p.add_argument("--cfg-schedule", default=None, choices=["constant", "linear", "cosine"])
    p.add_argument("--schedule", default=None, help="mask schedule: cosine | linear | square | powN | log | exp")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--choice-temperature", type=float, default=None)
    p.add_argument("--policy", default=None, help="which tokens to reveal: confidence | random (MaskGIT)")
    p.add_argument("--sampler", default=None,
                   help="masked diffusion: ancestral | ancestral_joint | first_hitting | maskgit (default: the run's config.sampling)")
    p.add_argument("--precision", default=None, choices=["float64", "float32"],
                   help="categorical sampling: 64-bit-resolution uniforms (default) or float32")


def _decode_overrides(args) -> dict:
    return {"num_steps": args.steps, "cfg_scale": args.cfg, "cfg_schedule": args.cfg_schedule,
            "schedule": args.schedule, "temperature": args.temperature,
            "choice_temperature": args.choice_temperature, "policy": args.policy, "sampler": args.sampler,
            "precision": args.precision}


def _load_config(args, overrides):
    from maskgen import config as config_lib
    from maskgen.runs import load_run_config

    if args.config:
        config = config_lib.load_config_file(args.config)
    else:
        config = load_run_config(args.workdir)
    config_lib.apply_overrides(config, overrides)
    return config


def main(argv: list[str]) -> int:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", stream=sys.stderr)
    from absl import flags, logging as absl_logging

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; we do not use absl's parser.
    absl_logging.set_verbosity(absl_logging.WARNING)

    from maskgen.config import ConfigError

    try:
        from maskgen.parallel.distributed import maybe_initialize

        maybe_initialize()  # multi-process runs (MASKGEN_* variables): before JAX touches a backend
        if args.command in ("prepare", "tokenize", "demo") and overrides:
            raise ConfigError(f"{args.command} takes no --config.* overrides")
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "tokenize":
            from maskgen.tokenize import tokenize_dataset

            meta = tokenize_dataset(args.tokenizer_workdir, args.data, args.out, data_dir=args.data_dir,
                                    splits=args.splits.split(",") if args.splits else None, step=args.step,
                                    num_shards=args.num_shards)
            splits = ", ".join(f"{k}: {v['num_examples']}" for k, v in meta["splits"].items())
            if "latents" in meta["fields"]:  # a continuous (kl) tokenizer: float latents and their scale factor
                latents = meta["fields"]["latents"]
                print(f"wrote {args.out}: {splits}; latents {tuple(latents['shape'])}, scale factor "
                      f"{latents['scale']:.6g} (1 / std of the {meta['tokenizer']['scale_split']} split), from step "
                      f"{meta['tokenizer']['step']}")
            else:
                print(f"wrote {args.out}: {splits}; token grid {tuple(meta['token_shape'])}, "
                      f"codebook {meta['codebook_size']}, from step {meta['tokenizer']['step']}")
            return 0
        if args.command == "import-weights":
            from maskgen.weights import import_weights

            summary = import_weights(args.format, args.weights, args.workdir, _parse_options(args.option), overrides)
            print(f"wrote {summary['workdir']}: a {summary['recipe']!r} run at step 0 with {summary['parameters']:,} "
                  f"parameters from {summary['weights']} ({summary['format']})")
            return 0
        if args.command == "demo":
            from maskgen.demo import print_summary, run_demo

            summary = run_demo(args.workdir, size=args.size)
            print_summary(args.workdir, summary)
            return 0
        if args.command == "inspect" and args.devices:
            flag = f"--xla_force_host_platform_device_count={args.devices}"
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
        config = _load_config(args, overrides)
        if args.command == "inspect":
            from maskgen.placement import format_table, parameter_table

            print(format_table(*parameter_table(config)))
            return 0
        from maskgen import train as train_lib

        if args.command == "edit":
            from maskgen.generate import GeneratorHandle, edit_to_png, infill_text_to_file

            handle = GeneratorHandle(args.workdir, args.step, config)
            if handle.kind == "audio":
                from maskgen.generate import edit_to_wav

                if args.audio is None or args.mask is None or args.image or args.prefix is not None:
                    raise ValueError(f"{args.workdir} generates audio: give --audio FILE|test:INDEX and --mask "
                                     "time:START-END|band:low|high:FRACTION (not --image/--prefix)")
                edit_to_wav(handle, args.audio, args.mask, args.label, args.out, seed=args.seed,
                            start_step=args.start_step, compare_out=args.compare_out, **_decode_overrides(args))
                print(f"wrote {args.out}" + (f" and {args.compare_out}" if args.compare_out else ""))
                return 0
            if handle.kind == "texts":
                if args.prefix is None or args.span is None or args.image or args.mask:
                    raise ValueError(f"{args.workdir} generates text: give --prefix TEXT --span N [--suffix TEXT] "
                                     "(not --image/--mask)")
                result = infill_text_to_file(handle, args.prefix, args.suffix, args.span, args.out, seed=args.seed,
                                             **_decode_overrides(args))
                print(result["text"])
                print(f"wrote {args.out}")
                return 0
            missing = [flag for flag, value in (("--image", args.image), ("--mask", args.mask), ("--class", args.label))
                       if value is None and not (flag == "--class" and not handle.num_classes)]
            if missing or args.prefix is not None or args.span is not None:
                raise ValueError(f"{args.workdir} generates images: give --image, --mask"
                                 f"{' and --class' if handle.num_classes else ''} (missing: {', '.join(missing) or 'none'}; "
                                 "--prefix/--span are for text)")
            edit_to_png(handle, args.image, args.mask, args.label or 0, args.out, seed=args.seed,
                        start_step=args.start_step, compare_out=args.compare_out, resize_mask=args.resize_mask,
                        **_decode_overrides(args))
            print(f"wrote {args.out}" + (f" and {args.compare_out}" if args.compare_out else ""))
            return 0

        if args.command == "train":
            result = train_lib.train(config, args.workdir, allow_changes=tuple(args.allow_change))
            _print_train_summary(args.workdir, result)
        elif args.command == "eval":
            step, results = train_lib.evaluate(config, args.workdir, args.step)
            _print_eval_table(step, results)
        elif args.command == "sample":
            out = args.out or os.path.join(args.workdir, "samples.png")
            decode = {k: v for k, v in _decode_overrides(args).items() if v is not None}
            from maskgen.generate import GeneratorHandle, sample_to_file
            from maskgen.recipes import get_recipe

            if args.t2s_workdir or args.prompt_audio or args.s2a_steps:
                return _sample_speech(args, decode)
            if "generate" in get_recipe(config.recipe).capabilities:
                handle = GeneratorHandle(args.workdir, args.step, config)
                if handle.kind in ("texts", "audio") and not args.out:
                    out = os.path.join(args.workdir, "samples.txt" if handle.kind == "texts" else "samples_audio")
                classes = [int(c) for c in args.classes.split(",")] if args.classes else None
                if args.text is not None:
                    from maskgen.generate import label_of_word

                    if classes is not None or handle.kind != "audio":
                        raise ValueError("--text picks the word of an audio generator: give it without --classes")
                    classes = [label_of_word(handle, args.text)]
                result = sample_to_file(handle, out, num=args.num or 16, classes=classes, seed=args.seed,
                                        trajectory_out=args.trajectory_out, **decode)
                if result.get("texts"):
                    from maskgen.outputs import join_samples

                    print(join_samples(result["texts"]), end="")
            else:
                if decode or args.classes or args.trajectory_out:
                    raise ValueError(f"decoding options apply to token generators; {args.workdir} is a "
                                     f"{config.recipe!r} run")
                train_lib.sample(config, args.workdir, out, num=args.num or 16, step=args.step, seed=args.seed)
            print(f"wrote {out}")
        return 0
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        from maskgen.checkpoint import CheckpointSaveError, NonFiniteStateError
        from maskgen.data.prepare import BadImageError
        from maskgen.train import NonFiniteError, WorkdirLockedError

        # Bad input (a missing file, an unknown split, a corrupt image, a NaN run, a full disk)
        # gets a message, not a traceback; set MASKGEN_TRACEBACK=1 to see where it came from.
        expected = (NonFiniteError, NonFiniteStateError, CheckpointSaveError, BadImageError, WorkdirLockedError,
                    OSError, ValueError, ImportError)
        if isinstance(err, expected) and not os.environ.get("MASKGEN_TRACEBACK"):
            # Orbax's writer threads may be printing tracebacks of a failed save at this moment, a
            # fragment at a time: one write that starts with a newline keeps this line whole, at the start of a line.
            sys.stderr.write(f"\nerror: {err}\n")
            sys.stderr.flush()
            return 1
        raise


def _sample_speech(args, decode: dict) -> int:
    """`maskgen sample --workdir S2A --t2s-workdir T2S --text TEXT --prompt-audio FILE|test:N` (MaskGCT)."""
    from maskgen.generate import maskgct_sample_to_wavs

    missing = [flag for flag, value in (("--t2s-workdir", args.t2s_workdir), ("--text", args.text),
                                        ("--prompt-audio", args.prompt_audio)) if not value]
    if missing:
        raise ValueError(f"MaskGCT voice prompting needs --workdir S2A_RUN --t2s-workdir T2S_RUN --text TEXT "
                         f"--prompt-audio FILE|test:INDEX (missing: {', '.join(missing)})")
    t2s = {k: v for k, v in decode.items() if k in ("num_steps", "cfg_scale", "temperature", "choice_temperature",
                                                     "schedule", "policy", "precision")}
    s2a = {k: v for k, v in t2s.items() if k != "num_steps"}
    if args.s2a_steps:
        try:
            s2a["steps_per_level"] = tuple(int(s) for s in args.s2a_steps.split(","))
        except ValueError:
            raise ValueError(f"--s2a-steps {args.s2a_steps!r}: give comma-separated whole numbers, "
                             "e.g. 25,10,1") from None
    out = args.out or os.path.join(args.workdir, "samples_voice")
    result = maskgct_sample_to_wavs(args.workdir, args.t2s_workdir, args.text, args.prompt_audio, out,
                                    prompt_text=args.prompt_text, num=args.num or 1,
                                    seed=args.seed, duration=args.duration, t2s_settings=t2s, s2a_settings=s2a)
    print(f"wrote {out}: {args.text!r} in the voice of {args.prompt_audio} (prompt says {result['prompt_text']!r}; "
          f"{result['nfe_t2s']} T2S + {result['nfe_s2a']} S2A network calls)")
    return 0


def _prepare_audio(args) -> int:
    from maskgen.data.prepare import prepare_audio_folder, prepare_speech

    if args.source == "speech":
        meta = prepare_speech(args.out, words=args.words, sample_rate=args.sample_rate,
                              clip_seconds=args.clip_seconds, renditions=args.renditions, num_shards=args.num_shards)
    else:
        if not args.input:
            raise SystemExit("error: --source audio_folder needs --input DIR")
        meta = prepare_audio_folder(args.input, args.out, sample_rate=args.sample_rate,
                                    clip_seconds=args.clip_seconds, resample=args.resample,
                                    mix_to_mono=args.mix_to_mono, min_seconds=args.min_seconds,
                                    skip_bad=args.skip_bad, test_fraction=args.test_fraction,
                                    num_shards=args.num_shards)
    splits = ", ".join(f"{k}: {v['num_examples']}" for k, v in meta["splits"].items())
    print(f"wrote {args.out}: {splits}; {meta['clip_seconds']:g} s clips at {meta['sample_rate']} Hz, "
          f"{meta['num_classes']} classes")
    resampled = meta.get("resampled", [])
    if resampled:
        rates = sorted({item["sample_rate"] for item in resampled})
        print(f"resampled {len(resampled)} clip(s) from {rates} Hz to {meta['sample_rate']} Hz (listed in metadata.json)")
    for item in meta.get("skipped", []):
        print(f"  skipped {item['path']}: {item['error']}")
    return 0


def _prepare(args) -> int:
    from maskgen.data.prepare import prepare_digits, prepare_image_folder

    if args.source in ("speech", "audio_folder"):
        return _prepare_audio(args)
    if args.source == "digits":
        meta = prepare_digits(args.out, num_shards=args.num_shards)
    else:
        if not args.input:
            raise SystemExit("error: --source folder needs --input DIR")
        meta = prepare_image_folder(args.input, args.out, args.resolution, skip_bad=args.skip_bad,
                                    test_fraction=args.test_fraction, num_shards=args.num_shards,
                                    min_size=args.min_size)
    splits = ", ".join(f"{k}: {v['num_examples']}" for k, v in meta["splits"].items())
    print(f"wrote {args.out}: {splits}; image shape {tuple(meta['image_shape'])}, {meta['num_classes']} classes")
    skipped = meta.get("skipped", [])
    if skipped:
        print(f"skipped {len(skipped)} unreadable{' or too small' if args.min_size else ''} file(s):")
        for item in skipped:
            print(f"  {item['path']}: {item['error']}")
    warnings = meta.get("warnings", [])
    if warnings:  # kept, but likely poor examples; all are in metadata.json, the first 10 here
        print(f"warning: {len(warnings)} image(s) smaller than --resolution or elongated (all in metadata.json):")
        for item in warnings[:10]:
            print(f"  {item['path']}: {item['warning']}")
        if len(warnings) > 10:
            print(f"  ... and {len(warnings) - 10} more")
    return 0


def _print_eval_table(step, results) -> None:
    print(f"\nevaluation at step {step}")
    for name, result in results.items():
        for key, value in result.scalars.items():
            print(f"  {name + '/' + key:<40s} {value:.4f}")
        for key in result.images:
            print(f"  {name + '/' + key:<40s} (image)")


def _print_train_summary(workdir, result) -> None:
    if "preempted_at" in result:
        print(f"stopped by SIGTERM at step {result['preempted_at']}; rerun the same command to resume")
        return
    if result.get("evals"):
        _print_eval_table("final", result["evals"])
    print(f"\nmetrics:     {os.path.join(workdir, 'metrics.jsonl')}")
    for kind in ("images", "texts", "audio"):
        if os.path.isdir(os.path.join(workdir, kind)):
            print(f"{kind + ':':<13}{os.path.join(workdir, kind)}")
    print(f"checkpoints: {os.path.join(workdir, 'checkpoints')}")
    print(f"tensorboard: tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


def run() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    run()
