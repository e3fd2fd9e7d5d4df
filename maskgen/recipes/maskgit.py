"""MaskGIT: class-conditional masked token modeling (Chang et al., "MaskGIT: Masked Generative Image
Transformer", arXiv 2202.04200), and a raster-order autoregressive baseline on the same backbone.

Training (Sec. 3.2): every example draws r ~ U(0, 1) and masks ceil(gamma(r) * N) of its N tokens
(at least one), chosen uniformly at random; the bidirectional transformer predicts the masked
tokens, and the loss is cross-entropy on masked positions only, with label smoothing (0.1 in the
paper). The class is replaced by a learned null class with probability `class_dropout`, so one
model serves classifier-free guidance (Ho & Salimans, arXiv 2207.12598; as in MUSE, arXiv
2301.00704). Sampling is `maskgen.sampling.iterative_decode`.

The `autoregressive` recipe trains the same backbone causally (next-token cross-entropy in raster
order, as in VQGAN's transformer, Esser et al. arXiv 2012.09841) and samples with a KV cache. It is
the fair baseline for MaskGIT's decoding-speed claim, not a second product.

Both train on token datasets written by `maskgen tokenize` (config.data.name = "tokens"); the
config's codebook size and token grid are checked against the dataset's metadata.json before
anything compiles.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from maskgen.config import Problems, boolean, int_tuple, integer, number, one_of, recipe_problems, string
from maskgen.data.tokens import TokenMetadataError, check_token_metadata
from maskgen.masking.schedules import mask_ratio, num_to_mask
from maskgen.models.token_transformer import TokenTransformer
from maskgen.recipes.base import Recipe, register
from maskgen.sampling.autoregressive import autoregressive_decode
from maskgen.sampling.iterative import CFG_SCHEDULES, POLICIES, TEMPERATURE_SCHEDULES, iterative_decode
from maskgen.sampling.categorical import PRECISIONS

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONDITIONINGS = ("adaln", "prefix")
POSITIONS = ("learned", "rope2d")


def random_token_mask(rng: jax.Array, num_masked: jax.Array, num_tokens: int) -> jax.Array:
    """bool [B, N]: exactly `num_masked[b]` positions of row b, uniformly at random."""
    scores = jax.random.uniform(rng, (num_masked.shape[0], num_tokens))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)  # a random permutation per row
    return ranks < num_masked[:, None]


def smoothed_cross_entropy(logits: jax.Array, targets: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-position cross-entropy against one-hot targets smoothed towards uniform."""
    vocab = logits.shape[-1]
    labels = optax.smooth_labels(jax.nn.one_hot(targets, vocab, dtype=jnp.float32), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)


# What each MaskGIT / AR setting may be (maskgen.config.check_spec). `sampling` holds the decoding
# defaults of `maskgen sample` and the generation evaluator (`iterative_decode` arguments).
CONFIG_SPEC = {
    "model.token_shape": int_tuple(1, length=2, why="(h, w) of the token grid"),
    "model.codebook_size": integer(min=2),
    "model.width": integer(min=1),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.conditioning": one_of(*CONDITIONINGS),
    "model.positions": one_of(*POSITIONS),
    "model.qk_norm": boolean(),
    "model.tie_head": boolean(),
    "loss.label_smoothing": number(0, 1, max_open=True),
    "loss.class_dropout": number(0, 1),
    "sampling.num_steps": integer(min=1, optional=True),
    "sampling.schedule": string(nonempty=True, optional=True),
    "sampling.choice_temperature": number(0, optional=True),
    "sampling.temperature": number(0, optional=True),
    "sampling.temperature_schedule": one_of(*TEMPERATURE_SCHEDULES, optional=True),
    "sampling.policy": one_of(*POLICIES, optional=True),
    "sampling.cfg_scale": number(0, optional=True),
    "sampling.cfg_schedule": one_of(*CFG_SCHEDULES, optional=True),
    "sampling.precision": one_of(*PRECISIONS, optional=True),
}


def _token_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any],
                   spec: dict = CONFIG_SPEC) -> Problems:
    """Checks shared by MaskGIT and the AR baseline: the spec, and a token dataset that fits."""
    m, problems = config.model, recipe_problems(config, data_info, spec, needs="tokens")
    if problems.ok("model.width", "model.mlp_ratio") and int(m.width * m.mlp_ratio) < 1:
        problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width {int(m.width * m.mlp_ratio)} at "
                        f"width={m.width}; it must give at least 1")
    for key in ("loss.mask_schedule", "sampling.schedule"):
        group, name = key.split(".")
        if key in spec and problems.ok(key) and name in config.get(group, {}):
            try:
                mask_ratio(config[group][name], 0.5, 2)
            except ValueError as err:
                problems.add(key, f"config.{key}={config[group][name]!r}: {err}")
    if not problems.ok("data.name"):
        return problems
    if problems.ok("model.codebook_size", "model.token_shape"):
        try:
            check_token_metadata(
                {"codebook_size": data_info["codebook_size"], "token_shape": data_info["token_shape"],
                 "tokenizer": data_info.get("tokenizer", {})},
                codebook_size=m.codebook_size, token_shape=tuple(m.token_shape), where="config.model",
            )
        except TokenMetadataError as err:
            problems.append(str(err))
    if data_info.get("num_levels", 1) != 1:
        problems.append(f"the tokens have {data_info['num_levels']} residual levels; {config.recipe} models one "
                        "token per position (tokenize with a vq/fsq/lfq tokenizer)")
    if not problems.ok("model.width", "model.num_heads", "model.positions"):
        pass
    elif m.width % m.num_heads:
        problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
    elif m.positions == "rope2d" and (m.width // m.num_heads) % 4:
        problems.append(f"positions='rope2d' needs a head width divisible by 4, got {m.width // m.num_heads}")
    if data_info.get("num_classes", 0) < 1:
        problems.append("the token dataset has no classes")
    return problems


class _TokenRecipe(Recipe):
    """What MaskGIT and the AR baseline share: the backbone, class dropout and the tokenizer link."""

    causal = False

    def __init__(self, *, token_shape, codebook_size: int, num_classes: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, conditioning: str, positions: str, qk_norm: bool,
                 tie_head: bool, label_smoothing: float, class_dropout: float, compute_dtype: str = "float32",
                 remat: str = "none", tokenizer: dict | None = None, sampling: dict | None = None):
        self.token_shape = tuple(int(s) for s in token_shape)
        self.num_tokens = self.token_shape[0] * self.token_shape[1]
        self.codebook_size, self.num_classes = int(codebook_size), int(num_classes)
        self.label_smoothing, self.class_dropout = float(label_smoothing), float(class_dropout)
        self.tokenizer = dict(tokenizer or {})
        self.sampling = dict(sampling or {})
        self.model_kwargs = dict(
            vocab_size=self.codebook_size, token_shape=self.token_shape, num_classes=self.num_classes,
            width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, conditioning=conditioning,
            positions=positions, qk_norm=qk_norm, tie_head=tie_head, causal=self.causal,
            dtype=_DTYPES[compute_dtype], remat=remat,
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]):
        m = config.model
        return cls(
            token_shape=tuple(m.token_shape), codebook_size=m.codebook_size, num_classes=data_info["num_classes"],
            width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
            conditioning=m.conditioning, positions=m.positions, qk_norm=m.qk_norm, tie_head=m.tie_head,
            label_smoothing=config.loss.label_smoothing, class_dropout=config.loss.class_dropout,
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"), tokenizer=data_info.get("tokenizer", {}),
            sampling=config.sampling.to_dict() if "sampling" in config else {}, **cls._own_settings(config),
        )

    @staticmethod
    def _own_settings(config: ml_collections.ConfigDict) -> dict:
        """Constructor arguments a subclass adds to the shared ones."""
        return {}

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        return _token_problems(config, data_info)

    def info(self) -> dict[str, Any]:
        return {"codebook_size": self.codebook_size, "token_shape": self.token_shape,
                "num_classes": self.num_classes, "tokenizer": self.tokenizer, "sampling": self.sampling,
                "generator": "autoregressive" if self.causal else "maskgit"}

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        return TokenTransformer(rngs=rngs, **self.model_kwargs)

    def _flat_tokens(self, batch) -> jax.Array:
        tokens = batch["tokens"]
        if tokens.shape[1:] != self.token_shape:
            raise ValueError(f"token grids are {tokens.shape[1:]}, the model expects {self.token_shape}")
        return tokens.reshape(tokens.shape[0], self.num_tokens)

    def _drop_classes(self, rng: jax.Array, labels: jax.Array, null_class: int) -> jax.Array:
        drop = jax.random.uniform(rng, labels.shape) < self.class_dropout
        return jnp.where(drop, null_class, labels)


@register("maskgit")
class MaskGITRecipe(_TokenRecipe):
    capabilities = frozenset({"generate", "infill"})

    def __init__(self, *, mask_schedule: str = "cosine", **kwargs):
        super().__init__(**kwargs)
        mask_ratio(mask_schedule, 0.5, self.num_tokens)  # fails early on an unknown schedule
        self.mask_schedule = mask_schedule

    @staticmethod
    def _own_settings(config):
        return {"mask_schedule": config.loss.mask_schedule}

    @staticmethod
    def validate(config, data_info):
        return _token_problems(config, data_info, {**CONFIG_SPEC, "loss.mask_schedule": string(nonempty=True)})

    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens, labels = self._flat_tokens(batch), batch["label"]
        ratio_rng, mask_rng, class_rng = jax.random.split(rng, 3)
        r = jax.random.uniform(ratio_rng, (tokens.shape[0],))
        masked = random_token_mask(mask_rng, num_to_mask(self.mask_schedule, r, self.num_tokens), self.num_tokens)
        inputs = jnp.where(masked, model.mask_token_id, tokens)
        logits = model(inputs, self._drop_classes(class_rng, labels, model.null_class))
        weights = masked.astype(jnp.float32)
        per_token = smoothed_cross_entropy(logits, tokens, self.label_smoothing)
        loss = jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32)
        return loss, {"masked_accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
                      "mask_ratio": jnp.mean(weights)}

    def generate(self, model: TokenTransformer, batch, rng, **settings):
        """Decodes token grids for `batch["label"]`; `batch["tokens"]`/`batch["known"]` (optional,
        [B, h, w]) give an initial grid for inpainting, outpainting and editing. `settings` are
        `iterative_decode` keyword arguments. Returns {"tokens" [B, h, w], "trajectory" [S, B, h, w],
        "masks" [S, B, h, w]}."""
        labels = batch["label"]
        b = labels.shape[0]
        if "tokens" in batch:
            tokens, known = self._flat_tokens(batch), batch["known"].reshape(b, self.num_tokens)
        else:
            tokens = jnp.zeros((b, self.num_tokens), jnp.int32)
            known = jnp.zeros((b, self.num_tokens), bool)
        result = iterative_decode(
            lambda t, y: model(t, y), tokens=tokens, known=known, labels=labels, rng=rng,
            mask_token_id=model.mask_token_id, null_label=model.null_class, **settings)
        grid = lambda x: x.reshape(x.shape[:-1] + self.token_shape)  # noqa: E731
        return {"tokens": grid(result.tokens), "trajectory": grid(result.trajectory), "masks": grid(result.masks)}


@register("autoregressive")
class AutoregressiveRecipe(_TokenRecipe):
    capabilities = frozenset({"generate"})  # left to right: it cannot infill
    decode_options = ("temperature", "cfg_scale", "precision")

    causal = True

    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens, labels = self._flat_tokens(batch), batch["label"]
        logits = model(tokens, self._drop_classes(rng, labels, model.null_class))  # position i predicts token i
        loss = jnp.mean(smoothed_cross_entropy(logits, tokens, self.label_smoothing))
        return loss, {"accuracy": jnp.mean((jnp.argmax(logits, -1) == tokens).astype(jnp.float32))}

    def generate(self, model: TokenTransformer, batch, rng, *, temperature: float = 1.0, cfg_scale: float = 1.0,
                 precision: str = "float64", **unused):
        """Raster-order sampling with a KV cache; decoding settings that only MaskGIT uses are ignored."""
        tokens = autoregressive_decode(model, batch["label"], rng, temperature=temperature, cfg_scale=cfg_scale,
                                       precision=precision)
        return {"tokens": tokens.reshape((-1,) + self.token_shape)}


__all__ = ["MaskGITRecipe", "AutoregressiveRecipe", "random_token_mask", "smoothed_cross_entropy"]
