"""Text evaluators: likelihood (bits per token) and unconditional samples (entropy, generative
perplexity), shared by the masked diffusion recipe and the autoregressive baseline.

Measurement follows the masked-diffusion papers:
  MDLM (Sahoo et al., arXiv 2406.07524): validation perplexity; for a diffusion model it is the
    bound exp(negative ELBO per token), for an AR model the exact value, so the two are compared as
    "MDM within x% of AR".
  Zheng et al. (arXiv 2409.02908): generative perplexity of samples under an AR model is only
    meaningful beside the samples' unigram entropy (a sampler that repeats tokens scores a low,
    flattering Gen PPL), so both are always reported.

Here the text is byte-level: samples are scored by an AR run on the same bytes (`scorer_workdir`),
not retokenised for GPT-2 as in the papers, and the whole fixed-length sample is scored, not
only up to the first EOS.

`text_likelihood` reports `bits_per_token`, `nats_per_token` and `perplexity` over a split, from
the recipe's `log_likelihood` (the "likelihood" capability). `text_samples` reports
`unigram_entropy` (mean over samples of the entropy, nats, of each sample's token-id histogram),
`gen_ppl` (with a scorer), `nfe`, and writes the decoded samples as the text `samples`.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from maskgen.config import integer, or_none, string
from maskgen.outputs import join_samples
from maskgen.evaluators.base import EvalContext, EvalResult, register


def unigram_entropy(tokens: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each row's token-id histogram: int [n, L] -> float64 [n]."""
    tokens = np.asarray(tokens)
    out = np.empty(len(tokens))
    for i, row in enumerate(tokens):
        _, counts = np.unique(row, return_counts=True)
        p = counts / counts.sum()
        out[i] = -np.sum(p * np.log(p))
    return out


def per_token_summary(nll_sum: float, num_tokens: float) -> dict[str, float]:
    """Summed nats over summed tokens -> nats/token, bits/token and perplexity."""
    nats = nll_sum / max(num_tokens, 1.0)
    return {"nats_per_token": nats, "bits_per_token": nats / math.log(2.0), "perplexity": math.exp(nats)}


@register("text_likelihood")
class TextLikelihood:
    """Bits per token over `split` (`limit` batches at most): exact for AR, an upper bound for MDM."""

    ARG_RULES = {"split": string(nonempty=True), "limit": or_none(integer(min=1)), "seed": integer(min=0)}

    def __init__(self, split: str = "validation", limit: int | None = None, seed: int = 0,
                 settings: dict | None = None):
        self.split, self.limit, self.seed = split, limit, seed
        self.settings = dict(settings or {})  # static keyword arguments of log_likelihood (num_samples)

    def run(self, ctx: EvalContext) -> EvalResult:
        nll_sum, token_sum = 0.0, 0.0
        for i, (batch, valid) in enumerate(ctx.batches(self.split, self.limit)):
            # The ELBO draws its times and masks from this key; a fixed seed gives a fixed estimate.
            rng = jax.random.fold_in(jax.random.key(self.seed), i)
            out = ctx.to_host(ctx.apply("log_likelihood", ctx.params, {"tokens": batch["tokens"]}, rng,
                                        **self.settings))
            valid = np.asarray(valid, bool)
            nll_sum += float(np.sum(np.asarray(out["nll"], np.float64)[valid]))
            token_sum += float(np.sum(np.asarray(out["num_tokens"], np.float64)[valid]))
        if token_sum == 0:
            raise ValueError(f"text_likelihood: the {self.split!r} split gave no tokens")
        return EvalResult(scalars=per_token_summary(nll_sum, token_sum))


def generate_texts(ctx: EvalContext, num: int, seq_len: int, settings: dict, seed: int,
                   batch_size: int) -> dict[str, np.ndarray]:
    """`num` unconditional samples int [num, L] and the network evaluations of each chunk, in equal
    chunks of at most `batch_size` rows (one compile; the last chunk is padded and cut)."""
    multiple = ctx.batch_multiple
    chunk = -(-min(batch_size, num) // multiple) * multiple
    tokens, nfe = [], []
    for i, start in enumerate(range(0, num, chunk)):
        batch = {"tokens": np.zeros((chunk, seq_len), np.int32), "known": np.zeros((chunk, seq_len), bool)}
        rng = jax.random.fold_in(jax.random.key(seed), i)
        out = ctx.to_host(ctx.apply("generate", ctx.params, ctx.shard(batch), rng, **settings))
        tokens.append(np.asarray(out["tokens"]).reshape(chunk, seq_len)[: num - start])
        if "nfe" in out:
            nfe.append(float(np.mean(out["nfe"])))
    return {"tokens": np.concatenate(tokens), "nfe": np.asarray(nfe)}


def score_texts(scorer, tokens: np.ndarray, seed: int, batch_size: int) -> dict[str, float]:
    """Gen PPL of `tokens` under another run's `log_likelihood` (an AR run on the same vocabulary)."""
    info = scorer.info
    shape = tuple(info.get("token_shape") or ())
    if shape and shape != tokens.shape[1:]:
        raise ValueError(f"text_samples: the scorer run models sequences {shape}, the samples are {tokens.shape[1:]}")
    nll_sum, token_sum = 0.0, 0.0
    for i, start in enumerate(range(0, len(tokens), batch_size)):
        part = tokens[start:start + batch_size]
        out = scorer.apply("log_likelihood", {"tokens": part}, jax.random.fold_in(jax.random.key(seed), i))
        nll_sum += float(np.sum(np.asarray(out["nll"], np.float64)))
        token_sum += float(np.sum(np.asarray(out["num_tokens"], np.float64)))
    return {"gen_ppl": math.exp(nll_sum / max(token_sum, 1.0))}


@register("text_samples")
class TextSamples:
    """Unconditional samples: unigram entropy, Gen PPL under `scorer_workdir`, NFE, and the texts."""

    ARG_RULES = {"num_samples": integer(min=1), "batch_size": integer(min=1), "seed": integer(min=0),
                 "scorer_workdir": string(), "show": integer(min=0)}

    def __init__(self, num_samples: int = 16, batch_size: int = 64, seed: int = 0, decode: dict | None = None,
                 scorer_workdir: str = "", show: int = 8):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.decode = dict(decode or {})  # overrides of the run's config.sampling
        self.scorer_workdir, self.show = scorer_workdir, show

    def run(self, ctx: EvalContext) -> EvalResult:
        settings = {**ctx.info.get("sampling", {}), **self.decode}
        settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings.items()}
        seq_len = int(tuple(ctx.info["token_shape"])[-1])
        out = generate_texts(ctx, self.num_samples, seq_len, settings, self.seed, self.batch_size)
        scalars = {"unigram_entropy": float(np.mean(unigram_entropy(out["tokens"])))}
        if out["nfe"].size:
            scalars["nfe"] = float(np.mean(out["nfe"]))
        if self.scorer_workdir:
            if ctx.open_run is None:
                raise ValueError("text_samples: scorer_workdir needs an evaluation context that can open runs")
            scorer = ctx.open_run(self.scorer_workdir)
            scalars.update(score_texts(scorer, out["tokens"], self.seed, self.batch_size))
        texts = {}
        if self.show and ctx.decode is not None:
            decoded = ctx.decode(out["tokens"][: self.show])["texts"]
            texts["samples"] = join_samples(decoded)
        return EvalResult(scalars=scalars, texts=texts)


__all__ = ["TextLikelihood", "TextSamples", "unigram_entropy", "per_token_summary", "generate_texts", "score_texts"]
