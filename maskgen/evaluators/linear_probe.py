"""Linear probe: accuracy of a softmax classifier trained on frozen features.

A linear classifier is fitted on the train split's features and scored on the held-out split.
Baselines in the same table: the same model at random initialisation, and raw pixels (images) or
the raw log-mel spectrogram (audio: "log_mel", the whole [frames, n_mels] grid flattened, and
"log_mel_stats", each mel bin's mean and std over time), computed with the MelConfig the recipe
publishes as `info["mel"]` (e.g. SSAST, arXiv 2110.09784). Two protocols
(`protocol=`):

- "quick" (the default): mean-pooled patch tokens, standardised with the train split's statistics,
  full-batch Adam with a small L2 penalty. Cheap, and a good fit on small data.
- "paper": MAE's linear probing (He et al., arXiv 2111.06377, Appendix A.2; main_linprobe.py):
  the class token of the encoder's final-norm output, a BatchNorm1d without affine parameters
  (eps 1e-6; batch statistics while training, running statistics at test) before the linear head
  (weight trunc-normal 0.01, bias 0), LARS (momentum 0.9, trust coefficient 0.001, no weight
  decay; the bias is not trust-scaled) at lr = base_lr x batch / 256 (base_lr 0.1), linear
  warm-up then half-cosine to 0, per iteration, over shuffled mini-batches (last partial batch
  dropped). Unlike the paper, features are computed once without augmentation (the paper's
  RandomResizedCrop + flip re-encode every epoch).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maskgen.audio.features import MelConfig, log_mel
from maskgen.config import integer, number, one_of, or_none
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


def lars(learning_rate) -> optax.GradientTransformation:
    """MAE's LARS (util/lars.py, from MoCo v3) without weight decay: each update of a parameter with
    more than one axis is scaled by 0.001 * |param| / |grad| (1 where either norm is 0), then
    momentum 0.9 accumulates it and the learning rate scales the sum. optax.lars applies the
    learning rate before the momentum, which differs while the rate changes (warm-up, cosine)."""
    trust = optax.masked(optax.scale_by_trust_ratio(trust_coefficient=1e-3),
                         lambda params: jax.tree.map(lambda p: p.ndim > 1, params))
    return optax.chain(trust, optax.trace(decay=0.9), optax.scale_by_learning_rate(learning_rate))


BATCHNORM_EPS = 1e-6  # main_linprobe.py's BatchNorm1d(affine=False, eps=1e-6)
BATCHNORM_MOMENTUM = 0.1  # torch's default: running = 0.9 running + 0.1 batch


@functools.partial(jax.jit, static_argnames=("num_classes", "batch_size", "steps_per_epoch", "epochs", "warmup_epochs",
                                             "learning_rate"))
def _fit_paper_probe(x, y, rng, *, num_classes: int, batch_size: int, steps_per_epoch: int, epochs: int,
                     warmup_epochs: int, learning_rate: float):
    """Trains BatchNorm(no affine) -> Linear with MAE's LARS schedule; returns (params, running stats)."""
    init_rng, shuffle_rng = jax.random.split(rng)
    dim = x.shape[1]
    params = {"w": 0.01 * jax.random.truncated_normal(init_rng, -2.0, 2.0, (dim, num_classes)),
              "b": jnp.zeros((num_classes,))}
    total = epochs * steps_per_epoch
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_epochs * steps_per_epoch, total, 0.0)
    tx = lars(schedule)

    def loss_fn(p, xb, yb):
        mean, var = xb.mean(0), xb.var(0)  # BatchNorm in training mode: batch statistics (biased variance)
        logits = ((xb - mean) / jnp.sqrt(var + BATCHNORM_EPS)) @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), (mean, var)

    def step(i, carry):
        p, opt_state, running_mean, running_var = carry
        epoch, index = i // steps_per_epoch, i % steps_per_epoch
        order = jax.random.permutation(jax.random.fold_in(shuffle_rng, epoch), x.shape[0])
        rows = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
        grads, (mean, var) = jax.grad(loss_fn, has_aux=True)(p, x[rows], y[rows])
        updates, opt_state = tx.update(grads, opt_state, p)
        unbiased = var * batch_size / max(batch_size - 1, 1)  # torch's running_var takes the unbiased one
        running_mean = (1 - BATCHNORM_MOMENTUM) * running_mean + BATCHNORM_MOMENTUM * mean
        running_var = (1 - BATCHNORM_MOMENTUM) * running_var + BATCHNORM_MOMENTUM * unbiased
        return optax.apply_updates(p, updates), opt_state, running_mean, running_var

    carry = (params, tx.init(params), jnp.zeros((dim,)), jnp.ones((dim,)))
    params, _, running_mean, running_var = jax.lax.fori_loop(0, total, step, carry)
    return params, running_mean, running_var


def paper_probe_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int, epochs: int = 90,
                         batch_size: int = 16384, base_learning_rate: float = 0.1, warmup_epochs: int = 10,
                         seed: int = 0) -> float:
    """MAE's linear probing protocol (module docstring) on precomputed features; returns test accuracy.

    A batch larger than the train split is cut to the split's size (the learning rate scales with
    the batch actually used).
    """
    if warmup_epochs >= epochs:
        raise ValueError(f"linear_probe: warmup_epochs={warmup_epochs} must be fewer than epochs={epochs}")
    n = len(train_x)
    batch = min(batch_size, n)
    params, running_mean, running_var = _fit_paper_probe(
        jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32), jax.random.key(seed),
        num_classes=num_classes, batch_size=batch, steps_per_epoch=n // batch, epochs=epochs,
        warmup_epochs=warmup_epochs, learning_rate=base_learning_rate * batch / 256,
    )
    normalised = (jnp.asarray(test_x, jnp.float32) - running_mean) / jnp.sqrt(running_var + BATCHNORM_EPS)
    logits = normalised @ params["w"] + params["b"]
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == np.asarray(test_y)))


PROTOCOLS = ("quick", "paper")
# Baselines that read the raw input instead of a model: name -> the input field they need.
RAW_BASELINES = {"pixels": "image", "log_mel": "audio", "log_mel_stats": "audio"}
BASELINES = ("random_init", *RAW_BASELINES)


@functools.lru_cache(maxsize=8)
def _log_mel_fn(mel: MelConfig):
    return jax.jit(lambda audio: log_mel(audio[..., 0], mel))


def raw_features(name: str, host: dict, info: dict) -> np.ndarray:
    """A raw-input baseline's features [B, D] from a host batch: "pixels" (the image flattened),
    "log_mel" (the natural-log mel spectrogram [frames, n_mels] flattened) or "log_mel_stats" (the
    mean and std over frames of each mel bin: [2 n_mels], blind to word order in time)."""
    field = RAW_BASELINES[name]
    if field not in host:
        raise ValueError(f"linear_probe: baseline {name!r} needs {field!r} data, but the batches hold "
                         f"{sorted(host)}; valid baselines for this data: "
                         f"{sorted(b for b, f in RAW_BASELINES.items() if f in host) + ['random_init']}")
    values = np.asarray(host[field])
    if name == "pixels":
        return values.reshape(len(values), -1)
    if "mel" not in info:
        raise ValueError(f"linear_probe: baseline {name!r} needs the run's mel settings (recipe info 'mel'); "
                         "this recipe publishes none")
    lm = np.asarray(_log_mel_fn(MelConfig.from_dict(dict(info["mel"])))(values.astype(np.float32)))
    if name == "log_mel":
        return lm.reshape(len(lm), -1)
    return np.concatenate([lm.mean(1), lm.std(1)], axis=1)


@register("linear_probe")
class LinearProbe:
    """protocol="quick": steps, learning_rate, weight_decay (Adam). protocol="paper": epochs,
    batch_size, base_learning_rate, warmup_epochs (MAE's LARS protocol; the module docstring)."""

    ARG_RULES = {"steps": integer(min=1), "learning_rate": number(0, min_open=True), "weight_decay": number(0),
                 "max_examples": or_none(integer(min=1)), "random_init_seed": integer(min=0),
                 "protocol": one_of(*PROTOCOLS), "epochs": integer(min=1), "batch_size": integer(min=2),
                 "base_learning_rate": number(0, min_open=True), "warmup_epochs": integer(min=0)}

    def __init__(self, train_split: str = "train", test_split: str = "test", baselines: tuple = ("random_init", "pixels"),
                 steps: int = 1000, learning_rate: float = 1e-2, weight_decay: float = 1e-4,
                 max_examples: int | None = None, random_init_seed: int = 12345, protocol: str = "quick",
                 epochs: int = 90, batch_size: int = 16384, base_learning_rate: float = 0.1, warmup_epochs: int = 10):
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"linear_probe: unknown baselines {sorted(unknown)}; valid: {sorted(BASELINES)}")
        if protocol == "paper" and warmup_epochs >= epochs:
            raise ValueError(f"linear_probe: warmup_epochs={warmup_epochs} must be fewer than epochs={epochs}")
        self.train_split, self.test_split = train_split, test_split
        self.baselines = tuple(baselines)
        self.steps, self.learning_rate, self.weight_decay = steps, learning_rate, weight_decay
        self.max_examples = max_examples
        self.random_init_seed = random_init_seed
        self.protocol = protocol
        self.epochs, self.batch_size = epochs, batch_size
        self.base_learning_rate, self.warmup_epochs = base_learning_rate, warmup_epochs

    def _collect(self, ctx: EvalContext, split: str, params_list: dict) -> tuple[dict, np.ndarray]:
        feats = {name: [] for name in params_list}
        raw = [name for name in self.baselines if name in RAW_BASELINES]
        feats.update({name: [] for name in raw})
        labels = []
        # The paper's probe reads the class token; the quick one the recipe's default (mean of patch tokens).
        pooling = {"pool": "cls"} if self.protocol == "paper" else {}
        for batch, valid in ctx.batches(split, self.max_examples):
            for name, params in params_list.items():
                out = ctx.to_host(ctx.apply("features", params, batch, ctx.rng, **pooling))
                feats[name].append(np.asarray(out)[valid])
            host = ctx.to_host(batch)
            for name in raw:
                feats[name].append(raw_features(name, host, ctx.info)[valid])
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
            if self.protocol == "paper":
                scalars[f"accuracy_{name}"] = paper_probe_accuracy(
                    train_feats[name], train_y, test_feats[name], test_y, num_classes=num_classes,
                    epochs=self.epochs, batch_size=self.batch_size, base_learning_rate=self.base_learning_rate,
                    warmup_epochs=self.warmup_epochs, seed=self.random_init_seed,
                )
            else:
                scalars[f"accuracy_{name}"] = probe_accuracy(
                    train_feats[name], train_y, test_feats[name], test_y, num_classes=num_classes,
                    steps=self.steps, learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                )
        return EvalResult(scalars=scalars)
