r"""B17: the speech codec's reconstruction against bitrate (RVQ levels decoded), with and without
per-example quantizer dropout: does one model serve every bitrate?

SoundStream (arXiv 2107.03312) and DAC (arXiv 2306.06546) train one RVQ codec for every bitrate by
dropping the upper quantizer levels during training (DAC: per example, for half of each batch);
without it, decoding only the first k levels is out of distribution for the decoder. Two
`experiments/codec_speech.py` runs, identical but for `dropout` (0.5 vs 0), are trained on maskgen's
local eSpeak NG spoken digits (8 kHz, 50 frames/s, 8 levels x 256 codes: 400 bit/s per level) and
decoded with the first k = 1, 2, 4, 8 levels on the held-out-voice test split by the
`audio_reconstruction` evaluator (maskgen.evaluators.audio). Per k: the log-mel L1 distance (the
codec's evaluation mel, info()["mel"]), SI-SNR (dB) and the accuracy of maskgen's spoken-word
classifier (`maskgen.perception.word_classifier`, trained on the speech train split at the same
rate) on the reconstructions, with its accuracy on the originals as the ceiling.

    python -m benchmarks.codec_bitrate                        # full: 2 x 1000 steps (5-10 min each, 2 cores)
    python -m benchmarks.codec_bitrate --steps 400 --workdir /tmp/b17
    python -m benchmarks.codec_bitrate --size smoke           # tiny runs: only checks the script
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

TITLE = "Codec on spoken digits: reconstruction vs RVQ levels, per-example quantizer dropout on vs off"
EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")


def sweep(config, workdir: str, levels: tuple[int, ...]) -> tuple[dict, dict]:
    """The `audio_reconstruction` evaluator (maskgen.evaluators.audio) on a trained run: metrics per
    number of levels decoded, and the originals' word accuracy."""
    from maskgen.runs import evaluate

    _, results = evaluate(config, workdir)
    scalars = results["reconstruction"].scalars
    out = {k: {"kbps": scalars[f"bitrate_kbps_k{k}"], "mel_distance": scalars[f"mel_distance_k{k}"],
               "si_snr": scalars[f"si_snr_k{k}"],
               **({"word_accuracy": scalars[f"word_accuracy_k{k}"]} if f"word_accuracy_k{k}" in scalars else {})}
           for k in levels}
    originals = {k: v for k, v in scalars.items() if k.startswith("word_accuracy_original")}
    usage = {k: v for k, v in scalars.items() if k.startswith("usage_level")}
    return out, {"word_accuracy": originals.get("word_accuracy_original"), "usage": usage}


def main(argv=None) -> dict:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="steps of each codec run (default 1000; smoke 2)")
    p.add_argument("--levels", default=None, help="levels to decode, comma-separated (default 1,2,4,8; smoke 1,2,4)")
    p.add_argument("--limit", type=int, default=None, help="test clips (default all 640; smoke 8)")
    p.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary directory); "
                                                   "runs already trained there are reused")
    args = p.parse_args(argv)
    smoke = args.size == "smoke"
    steps = args.steps or (2 if smoke else 1000)
    levels = common.positive_ints(p, "--levels", args.levels or ("1,2,4" if smoke else "1,2,4,8"))
    limit = args.limit or (8 if smoke else None)

    from absl import flags

    from maskgen import config as config_lib
    from maskgen import train as train_lib

    flags.FLAGS.mark_as_parsed()
    results, seconds, originals = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or tmp
        for name, dropout in (("dropout", 0.5), ("no_dropout", 0.0)):
            arg = f"size={'tiny' if smoke else 'small'},steps={steps},dropout={dropout}"
            config = config_lib.load_config_file(os.path.join(EXPERIMENTS, "codec_speech.py") + ":" + arg)
            if max(levels) > config.model.num_levels:
                p.error(f"--levels {levels}: the codec has {config.model.num_levels} levels")
            config_lib.apply_overrides(config, [f"evals.reconstruction.levels={levels}", "evals.reconstruction.every=-1",
                                                f"evals.reconstruction.max_examples={limit}"])
            workdir = os.path.join(root, name)
            start = time.perf_counter()
            if not os.path.exists(os.path.join(workdir, "checkpoints")):
                train_lib.train(config, workdir)
            seconds[name] = time.perf_counter() - start
            results[name], originals[name] = sweep(config, workdir, levels)
            print(name, results[name], flush=True)
    rows = []
    for k in levels:
        on, off = results["dropout"][k], results["no_dropout"][k]
        rows.append([k, f"{on['kbps']:.1f}",
                     f"{on['mel_distance']:.3f}", f"{off['mel_distance']:.3f}",
                     f"{on['si_snr']:.1f}", f"{off['si_snr']:.1f}",
                     f"{on.get('word_accuracy', float('nan')):.3f}", f"{off.get('word_accuracy', float('nan')):.3f}"])
    low, high = min(levels), max(levels)
    on, off = results["dropout"], results["no_dropout"]
    ratio = off[low]["mel_distance"] / on[low]["mel_distance"]
    headline = (f"at {low} level(s) ({on[low]['kbps']:.1f} kbit/s) dropout gives mel distance {on[low]['mel_distance']:.3f} "
                f"vs {off[low]['mel_distance']:.3f} without ({ratio:.2f}x), SI-SNR {on[low]['si_snr']:.1f} vs "
                f"{off[low]['si_snr']:.1f} dB; at {high} levels {on[high]['mel_distance']:.3f} vs "
                f"{off[high]['mel_distance']:.3f}")
    if "word_accuracy" in on[low]:
        headline += (f"; word accuracy {on[low]['word_accuracy']:.2f} vs {off[low]['word_accuracy']:.2f} at {low}, "
                     f"{on[high]['word_accuracy']:.2f} vs {off[high]['word_accuracy']:.2f} at {high} (originals "
                     f"{originals['dropout']['word_accuracy']:.2f})")
    # One model serves every bitrate: better at the lowest bitrate, no more than 10% worse at the highest.
    holds = on[low]["mel_distance"] < off[low]["mel_distance"] and on[high]["mel_distance"] <= 1.1 * off[high]["mel_distance"]
    return common.report("B17", TITLE,
                         ["levels", "kbit/s", "mel dist (dropout)", "mel dist (none)", "SI-SNR dB (dropout)",
                          "SI-SNR dB (none)", "word acc (dropout)", "word acc (none)"], rows,
                         headline, ratio=ratio,
                         claim="SoundStream/DAC: quantizer dropout lets one codec serve every bitrate",
                         holds=None if smoke else holds, json_path=args.json,
                         extra={"results": {n: {str(k): v for k, v in r.items()} for n, r in results.items()},
                                "originals": originals, "seconds": seconds, "steps": steps})


if __name__ == "__main__":
    main()
