r"""SSAST on the local spoken digits: does masked spectrogram pretraining help on held-out voices?

SSAST (Gong et al., arXiv 2110.09784) pretrains an audio spectrogram transformer with joint
InfoNCE + 10 x MSE masked patch modeling and reports large gains over training from scratch
(e.g. Speech Commands V2: 98.0% vs 87.2% for patch-based SSAST-Base vs from scratch, Table 2).
Here, with `experiments/ssast_speech.py` (a tiny ViT on 1 s eSpeak NG digits; the test voices
never occur in training):

  * linear probe (frozen encoder, mean-pooled tokens) on the pretrained encoder vs the same encoder
    at random init vs the raw log-mel (flattened, and its per-bin mean+std over time);
  * fine-tuning accuracy from the pretrained encoder vs from scratch, at the same fine-tuning budget;
  * with `--ablation`: pretraining with InfoNCE alone and MSE alone, each probed and fine-tuned.

    python -m benchmarks.ssast_pretraining                  # full: ~8 min on 2 CPU cores
    python -m benchmarks.ssast_pretraining --ablation       # + NCE-only and MSE-only pretraining (~20 min)
    python -m benchmarks.ssast_pretraining --size smoke     # tiny runs: only checks the script
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "SSAST on spoken digits (held-out voices): probe and fine-tune accuracy, pretrained vs scratch vs log-mel"
# What "by a large margin" is taken to mean here: at least 2 points of test accuracy.
MARGIN = 0.02
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def _config(arg: str, overrides: list[str]):
    from maskgen import config as config_lib

    config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "ssast_speech.py") + ":" + arg)
    config_lib.apply_overrides(config, overrides)
    return config


def pretrain(root: str, name: str, size: str, steps: int, tokens: str, overrides: list[str],
             seed: int = 0) -> tuple[str, dict, float]:
    """Trains one pretraining run; returns (workdir, its probe scalars, seconds)."""
    from maskgen import train as train_lib

    quick = ["evals.probe.max_examples=64", "evals.probe.steps=20"] if size == "tiny" else []
    config = _config(f"size={size},task=pretrain,tokens={tokens},steps={steps}",
                     ["evals.spectrograms.every=-1", f"seed={seed}", *quick, *overrides])
    workdir = os.path.join(root, name)
    start = time.perf_counter()
    out = train_lib.train(config, workdir)
    return workdir, out["evals"]["probe"].scalars, time.perf_counter() - start


def finetune(root: str, name: str, size: str, steps: int, tokens: str, init_from: str,
             seed: int = 0) -> tuple[float, float]:
    """Trains one fine-tuning run; returns (test accuracy, seconds)."""
    from maskgen import train as train_lib

    quick = ["evals.accuracy.max_examples=64"] if size == "tiny" else []
    config = _config(f"size={size},task=finetune,tokens={tokens},steps={steps}",
                     [f"init_from={init_from}", f"seed={seed}", *quick])
    start = time.perf_counter()
    out = train_lib.train(config, os.path.join(root, name))
    return out["evals"]["accuracy"].scalars["accuracy"], time.perf_counter() - start


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default 1500; smoke 4)")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tuning steps (default 300; smoke 4)")
    p.add_argument("--tokens", choices=("patch", "frame"), default="patch")
    p.add_argument("--seed", type=int, default=0, help="config.seed of every run (init, masks, data order)")
    p.add_argument("--ablation", action="store_true", help="also pretrain with InfoNCE alone and MSE alone")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    size = "tiny" if smoke else "small"
    pre_steps = args.pretrain_steps or (4 if smoke else 1500)
    ft_steps = args.finetune_steps or (4 if smoke else 300)

    from absl import flags

    flags.FLAGS.mark_as_parsed()
    seconds, probes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        variants = [("joint", [])]
        if args.ablation:
            variants += [("nce_only", ["model.mse_weight=0.0"]), ("mse_only", ["model.nce_weight=0.0"])]
        workdirs = {}
        for name, overrides in variants:
            workdirs[name], probes[name], seconds[f"pretrain_{name}"] = pretrain(
                root, f"pretrain_{name}", size, pre_steps, args.tokens, overrides, args.seed)
            print(name, probes[name], flush=True)
        accuracy = {}
        starts = [(f"from_{name}", workdir) for name, workdir in workdirs.items()] + [("from_scratch", "")]
        for name, init in starts:
            accuracy[name], seconds[f"finetune_{name}"] = finetune(root, name, size, ft_steps, args.tokens, init,
                                                                   args.seed)
            print(name, accuracy[name], flush=True)
    joint = probes["joint"]
    rows = [["linear probe", "SSAST (NCE + 10 MSE)", f"{joint['accuracy_model']:.3f}"],
            ["linear probe", "random-init encoder", f"{joint['accuracy_random_init']:.3f}"],
            ["linear probe", "raw log-mel, flattened", f"{joint['accuracy_log_mel']:.3f}"],
            ["linear probe", "raw log-mel, mean+std over time", f"{joint['accuracy_log_mel_stats']:.3f}"]]
    for name in ("nce_only", "mse_only"):
        if name in probes:
            rows.append(["linear probe", f"SSAST, {name.replace('_', ' ')}", f"{probes[name]['accuracy_model']:.3f}"])
    rows.append(["fine-tune", f"from SSAST ({ft_steps} steps)", f"{accuracy['from_joint']:.3f}"])
    for name in ("nce_only", "mse_only"):
        if f"from_{name}" in accuracy:
            rows.append(["fine-tune", f"from SSAST, {name.replace('_', ' ')}", f"{accuracy[f'from_{name}']:.3f}"])
    rows.append(["fine-tune", f"from scratch ({ft_steps} steps)", f"{accuracy['from_scratch']:.3f}"])
    probe_gain = joint["accuracy_model"] - joint["accuracy_random_init"]
    ft_gain = accuracy["from_joint"] - accuracy["from_scratch"]
    headline = (f"fine-tune: from SSAST {accuracy['from_joint']:.3f} vs scratch {accuracy['from_scratch']:.3f} "
                f"({100 * ft_gain:+.1f} points); "
                f"probe: SSAST {joint['accuracy_model']:.3f} vs random init {joint['accuracy_random_init']:.3f} "
                f"({'above' if probe_gain > 0 else 'NOT above'}) vs log-mel {joint['accuracy_log_mel']:.3f} "
                f"({pre_steps} pretraining, {ft_steps} fine-tuning steps, {args.tokens} tokens)")
    return common.report("B18", TITLE, ["protocol", "features / start", "accuracy (held-out voices)"], rows, headline,
                         ratio=accuracy["from_joint"] / max(accuracy["from_scratch"], 1e-9),
                         claim="SSAST: fine-tuning from the pretrained encoder beats from-scratch by a large margin",
                         holds=ft_gain >= MARGIN, json_path=args.json,
                         extra={"probes": probes, "finetune_accuracy": accuracy, "seconds": seconds,
                                "pretrain_steps": pre_steps, "finetune_steps": ft_steps, "tokens": args.tokens,
                                "seed": args.seed})


if __name__ == "__main__":
    main()
