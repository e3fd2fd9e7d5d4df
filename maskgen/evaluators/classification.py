"""Accuracy of a classifier run on a held-out split (e.g. SSAST fine-tuned on spoken words, arXiv
2110.09784, scored on voices it never heard).

The recipe's `classify(model, batch, rng) -> logits [B, num_classes]` is applied to every example
of the split; padding rows are left out.
"""

from __future__ import annotations

import numpy as np

from maskgen.config import integer, or_none
from maskgen.evaluators.base import EvalContext, EvalResult, register


@register("accuracy")
class Accuracy:
    """Top-1 accuracy (and the mean cross-entropy in nats) of the recipe's classifier on `split`."""

    ARG_RULES = {"max_examples": or_none(integer(min=1))}

    def __init__(self, split: str = "test", max_examples: int | None = None):
        self.split, self.max_examples = split, max_examples

    def run(self, ctx: EvalContext) -> EvalResult:
        correct, total, nll = 0, 0, 0.0
        for batch, valid in ctx.batches(self.split, self.max_examples):
            try:
                logits = ctx.apply("classify", ctx.params, batch, ctx.rng)
            except AttributeError:
                raise ValueError("accuracy: this run's recipe has no classifier (a `classify` method), e.g. an "
                                 "SSAST run with model.task='finetune'") from None
            logits = np.asarray(ctx.to_host(logits), np.float64)[valid]
            labels = np.asarray(ctx.to_host(batch)["label"])[valid]
            shifted = logits - logits.max(-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
            nll -= float(log_probs[np.arange(len(labels)), labels].sum())
            correct += int((logits.argmax(-1) == labels).sum())
            total += len(labels)
        if total == 0:
            raise ValueError(f"accuracy: the {self.split!r} split has no examples")
        return EvalResult(scalars={"accuracy": correct / total, "cross_entropy": nll / total, "examples": float(total)})
