"""What a semantic tokenizer's tokens keep: word and speaker information, probed linearly.

MaskGCT (arXiv 2409.00750) wants semantic tokens that carry the content and leave the voice to the
prompt. This script scores a `feature_tokenizer` run (and, optionally, the first level of a codec
run) on the local speech data with logistic-regression probes (scikit-learn):

- word: trained on the train split (32 voices), tested on the 8 held-out voices (chance 0.10);
- speaker: the train voices only, renditions 0-3 against 4-7 (chance 1/32);

each from a clip's token histogram and from its one-hot token sequence, beside codebook usage and
perplexity, and the probes of the encoder's continuous features averaged over time.

    python -m benchmarks.semantic_tokens --workdir runs/semantic [--codec-workdir runs/codec_mel]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def _batched(fn, audio, batch_size: int = 64):
    import jax.numpy as jnp

    return np.concatenate([np.asarray(fn(jnp.asarray(audio[i:i + batch_size, :, None])))
                           for i in range(0, len(audio), batch_size)])


def _probe(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    classifier.fit(x_train, y_train)
    return float(classifier.score(x_test, y_test))


def _histogram(codes, vocab):
    counts = np.stack([np.bincount(c.reshape(-1), minlength=vocab) for c in codes]).astype(np.float32)
    return counts / counts.sum(1, keepdims=True)


def _one_hot(codes, vocab):
    return np.eye(vocab, dtype=np.float32)[codes].reshape(len(codes), -1)


def _usage(codes, vocab) -> dict:
    counts = np.bincount(codes.reshape(-1), minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {"usage": float((counts > 0).mean()), "perplexity": float(np.exp(-(p * np.log(p)).sum()))}


def _token_probes(codes_train, codes_test, vocab, labels_train, labels_test, voices_train, first_half) -> dict:
    out = {"test": _usage(codes_test, vocab)}
    for name, features in (("histogram", _histogram), ("sequence", _one_hot)):
        x_train, x_test = features(codes_train, vocab), features(codes_test, vocab)
        out[f"word_{name}"] = _probe(x_train, labels_train, x_test, labels_test)
        out[f"speaker_{name}"] = _probe(x_train[first_half], voices_train[first_half], x_train[~first_half],
                                        voices_train[~first_half])
    return out


def run(workdir: str, codec_workdir: str | None = None) -> dict:
    import jax

    from maskgen.data.speech import speech_arrays
    from maskgen.recipes.frozen import load_frozen_run

    semantic = load_frozen_run(workdir, role="--workdir", recipes=("feature_tokenizer",))
    data = semantic.config.data
    options = dict(words=data.words, sample_rate=int(data.sample_rate), clip_seconds=float(data.clip_seconds))
    audio_train, labels_train, voices_train = speech_arrays("train", **options)
    audio_test, labels_test, _ = speech_arrays("test", **options)
    first_half = (np.arange(len(audio_train)) % 8) < 4  # renditions 0-3 (the speaker probe's training half)
    vocab = int(semantic.info["codebook_size"])
    encode = jax.jit(lambda a: semantic.call("encode", {"audio": a}))
    codes_train, codes_test = _batched(encode, audio_train), _batched(encode, audio_test)
    out = {"semantic": _token_probes(codes_train, codes_test, vocab, labels_train, labels_test, voices_train,
                                     first_half)}
    features = jax.jit(lambda a: semantic.recipe.encoder_features(a))
    mean_train = _batched(features, audio_train).mean(1)
    mean_test = _batched(features, audio_test).mean(1)
    out["encoder_features_mean"] = {
        "word": _probe(mean_train, labels_train, mean_test, labels_test),
        "speaker": _probe(mean_train[first_half], voices_train[first_half], mean_train[~first_half],
                          voices_train[~first_half])}
    if codec_workdir:
        codec = load_frozen_run(codec_workdir, role="--codec-workdir", recipes=("codec",))
        codec_encode = jax.jit(lambda a: codec.call("encode", {"audio": a}))
        level0_train = _batched(codec_encode, audio_train)[..., 0]
        level0_test = _batched(codec_encode, audio_test)[..., 0]
        out["codec_level0"] = _token_probes(level0_train, level0_test, int(codec.info["codebook_size"]),
                                            labels_train, labels_test, voices_train, first_half)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a feature_tokenizer run (experiments/semantic_speech.py)")
    parser.add_argument("--codec-workdir", default=None, help="also probe this codec run's first level")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)
    out = run(args.workdir, args.codec_workdir)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
