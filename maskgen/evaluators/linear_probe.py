"""Linear probe: accuracy of a softmax classifier trained on frozen features.

The protocol follows MAE's linear probing (He et al., arXiv 2111.06377): features are normalised
per dimension (MAE uses a BatchNorm without affine parameters, which is the same thing at eval)
and a linear classifier is fitted on the train split and scored on the held-out split. Baselines
in the same table: the same model at random initialisation, and raw pixels.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskgen.config import integer, number, or_none
from maskgen.evaluators.base import EvalContext, EvalResult, register


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit_softmax(x, y, *, num_classes: int, steps: int, learning_rate: float, weight_decay: float):
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    tx = optax.adam(learning_rate)

    def loss_fn(p):
        logits = x @ p["w"] + p["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 0.5 * weight_decay * jnp.sum(jnp.square(p["w"]))

    def step(_, carry):
        p, opt_state = carry
        grads = jax.grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return params


def probe_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int, steps: int = 1000,
                   learning_rate: float = 1e-2, weight_decay: float = 1e-4) -> float:
    """Fits a linear classifier on standardised train features; returns test accuracy."""
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    fit = _fit_softmax(
        jnp.asarray((train_x - mean) / std, jnp.float32), jnp.asarray(train_y, jnp.int32),
        num_classes=num_classes, steps=steps, learning_rate=learning_rate, weight_decay=weight_decay,
    )
    logits = jnp.asarray((test_x - mean) / std, jnp.float32) @ fit["w"] + fit["b"]
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == np.asarray(test_y)))


@register("linear_probe")
class LinearProbe:
    ARG_RULES = {"steps": integer(min=1), "learning_rate": number(0, min_open=True), "weight_decay": number(0),
                 "max_examples": or_none(integer(min=1)), "random_init_seed": integer(min=0)}

    def __init__(self, train_split: str = "train", test_split: str = "test", baselines: tuple = ("random_init", "pixels"),
                 steps: int = 1000, learning_rate: float = 1e-2, weight_decay: float = 1e-4,
                 max_examples: int | None = None, random_init_seed: int = 12345):
        unknown = set(baselines) - {"random_init", "pixels"}
        if unknown:
            raise ValueError(f"linear_probe: unknown baselines {sorted(unknown)}; valid: ['pixels', 'random_init']")
        self.train_split, self.test_split = train_split, test_split
        self.baselines = tuple(baselines)
        self.steps, self.learning_rate, self.weight_decay = steps, learning_rate, weight_decay
        self.max_examples = max_examples
        self.random_init_seed = random_init_seed

    def _collect(self, ctx: EvalContext, split: str, params_list: dict) -> tuple[dict, np.ndarray]:
        feats = {name: [] for name in params_list}
        if "pixels" in self.baselines:
            feats["pixels"] = []
        labels = []
        for batch, valid in ctx.batches(split, self.max_examples):
            for name, params in params_list.items():
                out = ctx.to_host(ctx.apply("features", params, batch, ctx.rng))
                feats[name].append(np.asarray(out)[valid])
            host = ctx.to_host(batch)
            if "pixels" in feats:
                feats["pixels"].append(np.asarray(host["image"]).reshape(len(valid), -1)[valid])
            labels.append(np.asarray(host["label"])[valid])
        return {k: np.concatenate(v) for k, v in feats.items()}, np.concatenate(labels)

    def run(self, ctx: EvalContext) -> EvalResult:
        params_list = {"model": ctx.params}
        if "random_init" in self.baselines:
            params_list["random_init"] = ctx.init_params(self.random_init_seed)
        train_feats, train_y = self._collect(ctx, self.train_split, params_list)
        test_feats, test_y = self._collect(ctx, self.test_split, params_list)
        num_classes = int(max(train_y.max(), test_y.max())) + 1
        scalars = {}
        for name in train_feats:
            scalars[f"accuracy_{name}"] = probe_accuracy(
                train_feats[name], train_y, test_feats[name], test_y, num_classes=num_classes,
                steps=self.steps, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
            )
        return EvalResult(scalars=scalars)
