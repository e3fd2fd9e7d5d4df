"""`maskgen demo`: the whole MaskGIT pipeline on scikit-learn's digits, on a CPU.

  1. train a VQ tokenizer (16x16 digits -> 8x8 tokens, 256 codes)   experiments/tokenizer_digits.py
  2. tokenize the train and test splits                              maskgen tokenize
  3. train MaskGIT on the token grids                                experiments/maskgit_digits.py
  4. evaluate: class consistency and Fréchet distance (with its real-vs-real floor)
  5. write a sample grid (one row per class), a decoding trajectory and an inpainting edit

Every stage resumes: rerunning the command after an interruption continues where it stopped, and
a finished stage is not repeated. Each stage is also a plain `maskgen` command (printed at the end).
"""

from __future__ import annotations

import logging
import os

from maskgen import config as config_lib
from maskgen import train as train_lib

log = logging.getLogger("maskgen")

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _config(name: str, arg: str, overrides: list[str]):
    path = os.path.join(EXPERIMENTS, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run the demo from a checkout of the maskgen repository")
    config = config_lib.load_config_file(f"{path}:{arg}" if arg else path)
    config_lib.apply_overrides(config, overrides)
    return config


def _tokens_current(tokens_dir: str, tokenizer_step: int) -> bool:
    from maskgen.data.tokens import read_token_metadata

    try:
        return read_token_metadata(tokens_dir)["tokenizer"]["step"] == tokenizer_step
    except (FileNotFoundError, ValueError, KeyError):
        return False


def _train_stage(config, stage_dir: str, workdir: str, size: str) -> dict:
    """Trains or resumes one stage; a stage made by another `--size` names the demo's fix."""
    try:
        return train_lib.train(config, stage_dir)
    except train_lib.ResumeConfigError as err:
        keys = ", ".join(f"config.{k}" for k in err.changes)
        raise train_lib.ConfigError(
            f"{workdir} holds a demo made with other settings ({keys} differ in {stage_dir}), perhaps another "
            f"--size than {size!r}: rerun with the --size it was made with, or pass another --workdir") from None


def run_demo(workdir: str, *, size: str = "small", tokenizer_overrides=(), maskgit_overrides=(),
             num_per_class: int = 10) -> dict:
    """Runs (or resumes) every stage under `workdir`; returns the paths and evaluation numbers."""
    from maskgen.generate import GeneratorHandle, edit_to_png, sample_to_png
    from maskgen.tokenize import tokenize_dataset

    paths = {name: os.path.join(workdir, name) for name in ("tokenizer", "tokens", "maskgit")}
    log.info("demo 1/5: tokenizer -> %s", paths["tokenizer"])
    tok_config = _config("tokenizer_digits.py", f"quantizer=vq,size={size}", list(tokenizer_overrides))
    _train_stage(tok_config, paths["tokenizer"], workdir, size)

    log.info("demo 2/5: tokens -> %s", paths["tokens"])
    if not _tokens_current(paths["tokens"], tok_config.total_steps):
        tokenize_dataset(paths["tokenizer"], "digits", paths["tokens"], step=tok_config.total_steps)

    log.info("demo 3/5: MaskGIT -> %s", paths["maskgit"])
    mg_config = _config("maskgit_digits.py", f"tokens={paths['tokens']},size={size}", list(maskgit_overrides))
    # A demo trained under older decoding defaults (config.sampling, resume-safe) resumes and is
    # evaluated with the current ones.
    result = _train_stage(mg_config, paths["maskgit"], workdir, size)

    log.info("demo 4/5: evaluation")
    evals = result.get("evals") or train_lib.evaluate(mg_config, paths["maskgit"])[1]
    scalars = {f"{name}/{k}": v for name, r in evals.items() for k, v in r.scalars.items()}

    log.info("demo 5/5: samples, trajectory and an edit")
    handle = GeneratorHandle(paths["maskgit"], config=mg_config)
    files = {"samples": os.path.join(workdir, "samples.png"), "trajectory": os.path.join(workdir, "trajectory.png"),
             "edit": os.path.join(workdir, "edit.png"), "edit_compare": os.path.join(workdir, "edit_compare.png")}
    sample_to_png(handle, files["samples"], num_per_class=num_per_class, trajectory_out=files["trajectory"])
    # Inpainting: the bottom half of the first test digit regenerated as its own class.
    from maskgen.generate import load_image

    _, label = load_image("test:0", handle.tokenizer)
    edit_to_png(handle, "test:0", "bottom", label, files["edit"], compare_out=files["edit_compare"])
    return {"scalars": scalars, "files": files, "edit_class": label, "paths": paths,
            "sampling": mg_config.sampling.to_dict()}


def describe_sampling(sampling: dict) -> str:
    """The decoding settings in words, e.g. `8 steps, cosine schedule, choice temperature 4.5, ...`."""
    text = (f"{sampling.get('num_steps', 8)} decoding steps, {sampling.get('schedule', 'cosine')} schedule, "
            f"choice temperature {sampling.get('choice_temperature', 4.5):g}, "
            f"temperature {sampling.get('temperature', 1.0):g}")
    if sampling.get("temperature_schedule", "constant") != "constant":
        text += f" ({sampling['temperature_schedule']})"
    text += f", guidance {sampling.get('cfg_scale', 1.0):g}"
    if sampling.get("cfg_schedule", "constant") != "constant":
        text += f" ({sampling['cfg_schedule']})"
    return text


def print_summary(workdir: str, summary: dict) -> None:
    paths, files = summary["paths"], summary["files"]
    sampling = summary.get("sampling", {})
    print(f"\nMaskGIT on digits: evaluation ({describe_sampling(sampling)}; experiments/maskgit_digits.py "
          "config.sampling)")
    for key, value in summary["scalars"].items():
        print(f"  {key:<45s} {value:.4f}")
    print(f"\nsample grid (row = class 0..9): {files['samples']}")
    print(f"decoding trajectory:            {files['trajectory']}")
    print(f"inpainting (input | masked | result, class {summary['edit_class']}): {files['edit_compare']}")
    print("\nthe same stages as commands:")
    print(f"  maskgen train --config experiments/tokenizer_digits.py --workdir {paths['tokenizer']}")
    print(f"  maskgen tokenize --tokenizer-workdir {paths['tokenizer']} --data digits --out {paths['tokens']}")
    print(f"  maskgen train --config experiments/maskgit_digits.py:tokens={paths['tokens']} --workdir {paths['maskgit']}")
    print(f"  maskgen sample --workdir {paths['maskgit']} --num 10 --out grid.png   # config.sampling's settings")
    print(f"  maskgen edit --workdir {paths['maskgit']} --image test:0 --mask bottom --class 3 --out edit.png")
