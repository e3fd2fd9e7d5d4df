"""MaskGIT: masked token modeling (Chang et al., "MaskGIT: Masked Generative Image Transformer", arXiv
2202.04200), and a left-to-right autoregressive baseline on the same backbone, for tokens of any
modality: text [L], image grids [h, w], video [t, h, w].

Training (Sec. 3.2): every example draws r ~ U(0, 1) and masks ceil(gamma(r) * N) of its N tokens
(at least one), chosen uniformly at random; the bidirectional transformer predicts the masked
tokens, and the loss is cross-entropy on masked positions only, with label smoothing (0.1 in the
paper), averaged over each example's masked tokens and then over the batch, as the reference code
does (`loss.weighting`, LOSS_WEIGHTINGS). A class-conditional model replaces the class by a learned null class with probability
`class_dropout`, so one model serves classifier-free guidance (Ho & Salimans, arXiv 2207.12598;
as in MUSE, arXiv 2301.00704); an unconditional one (conditioning="none", e.g. for unlabeled
text) has no classes at all. Sampling is `maskgen.sampling.iterative_decode`. The backbone is
maskgen's pre-LN `TokenTransformer`, or with `model.architecture="bert"` the official MaskGIT
transformer (post-LN BERT with an MLM head; `model.dropout`, 0.1 there, acts in training only:
`loss` passes the model a dropout key, sampling never does).

The `autoregressive` recipe trains the same backbone causally (next-token cross-entropy in reading
order, as in VQGAN's transformer, Esser et al. arXiv 2012.09841) and samples with a KV cache,
continuing a prompt if one is given. It is the fair baseline for MaskGIT's decoding-speed claim,
and its exact `log_likelihood` scores samples of other models (generative perplexity).

Both train on token datasets (config.data.name = "tokens", or text datasets through the same
`source_info` dict); the config's codebook size and token shape are checked against the data's
before anything compiles.

K code streams (`model.num_streams` K > 1, default 1): the K residual levels of a codec's frames
[T, K] (`maskgen tokenize` of a `codec` run; data num_levels K, token_shape (T, K)) are modelled as
K parallel streams of one position, as in MusicGen (Copet et al., arXiv 2306.05284): their
embeddings are summed and K heads predict them (`TokenTransformer(token_shape=(T,), num_streams=K)`).
`config.model.token_shape` stays the data's (T, K). MaskGIT then masks the T x K tokens uniformly
at random; the AR model predicts all K tokens of frame t from the frames before it (MusicGen's
"parallel" pattern, T sequential steps) and gives their teacher-forced log-probabilities
(`token_log_probs`), which rescore MAGNeT's samples (Ziv et al., arXiv 2401.04577, Sec. 3.3;
`maskgen.sampling.rescoring`).
"""

from __future__ import annotations

from typing import Any

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from maskgen.config import Problems, Rule, boolean, int_tuple, integer, number, one_of, recipe_problems, string
from maskgen.data.tokens import TokenMetadataError, check_token_metadata
from maskgen.masking.schedules import mask_ratio, num_to_mask
from maskgen.models.token_transformer import ARCHITECTURES, TokenTransformer
from maskgen.recipes.base import Recipe, register
from maskgen.sampling.autoregressive import autoregressive_decode
from maskgen.sampling.iterative import CFG_SCHEDULES, POLICIES, TEMPERATURE_SCHEDULES, iterative_decode
from maskgen.sampling.rescoring import teacher_forced_log_probs
from maskgen.sampling.categorical import PRECISIONS
from maskgen.tasks import check_tasks

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONDITIONINGS = ("adaln", "prefix", "none")
POSITIONS = ("learned", "rope", "rope2d")


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


# How masked-token losses are averaged. "per_example" (MaskGIT's and MAGVIT's reference code): the
# mean over each example's masked tokens, then the mean over the batch, so an example with few
# masked tokens (a late decoding step) weighs as much as one with many. "per_token": the sum over
# all masked tokens of the batch over their count, which under the cosine schedule gives examples
# with mask ratio < 0.5 about 13% of the weight instead of 33%.
LOSS_WEIGHTINGS = ("per_example", "per_token")


def masked_mean(values: jax.Array, weights: jax.Array, weighting: str = "per_example") -> jax.Array:
    """Mean of `values` [B, N] over positions with weight 1 in `weights` [B, N], by `weighting`
    (LOSS_WEIGHTINGS). Rows with no weight count as 0 in the per-example mean."""
    if weighting == "per_token":
        return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    per_example = jnp.sum(values * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return jnp.mean(per_example)


# The TokenTransformer settings every token recipe on it shares (MaskGIT, AR, MAGNeT).
BACKBONE_SPEC = {
    "model.codebook_size": integer(min=2),
    "model.width": integer(min=1),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.conditioning": one_of(*CONDITIONINGS),
    "model.positions": one_of(*POSITIONS),
    "model.qk_norm": boolean(),
    "model.tie_head": boolean(),
}

# What each MaskGIT / AR setting may be (maskgen.config.check_spec). `sampling` holds the decoding
# defaults of `maskgen sample` and the generation evaluator (`iterative_decode` arguments).
CONFIG_SPEC = {
    "model.token_shape": Rule("a tuple of 2 ints >= 1 ((h, w) images), or of 1 ((L,) text) or 3 ((t, h, w) video)",
                              lambda v: int_tuple(1).test(v) and len(v) <= 3),
    # K parallel code streams per position (a codec's RVQ levels); token_shape then ends in K.
    "model.num_streams": integer(min=1, optional=True),
    **BACKBONE_SPEC,
    # "pre_ln": maskgen's block; "bert": the official MaskGIT transformer (post-LN, embedding norm,
    # MLM head; see maskgen.models.token_transformer). Dropout: the reference's 0.1, training only.
    "model.architecture": one_of(*ARCHITECTURES, optional=True),
    "model.dropout": number(0, 1, max_open=True, optional=True),
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
    if (problems.ok("model.architecture", "model.conditioning") and m.get("architecture", "pre_ln") == "bert"
            and m.conditioning == "adaln"):
        problems.append("config.model.architecture='bert' (the official MaskGIT transformer) takes the class as a "
                        "prefix token: set config.model.conditioning='prefix' (or 'none'); adaLN modulates "
                        "pre-norms, which its post-LN blocks do not have")
    streams = m.get("num_streams", 1)
    if problems.ok("model.num_streams", "model.token_shape") and streams > 1 and (
            len(m.token_shape) < 2 or m.token_shape[-1] != streams):
        problems.add("model.num_streams", f"config.model.num_streams={streams} needs config.model.token_shape to end "
                                          f"in the {streams} streams, e.g. (frames, {streams}); got "
                                          f"{tuple(m.token_shape)}")
    if problems.ok("model.width", "model.num_heads", "model.positions", "model.token_shape", "model.num_streams"):
        rank = len(m.token_shape) - (1 if streams > 1 else 0)  # the position axes; the stream axis has none
        if m.width % m.num_heads:
            problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
        elif m.positions == "rope2d" and rank != 2:
            problems.append(f"positions='rope2d' is for 2D token grids, config.model.token_shape is "
                            f"{tuple(m.token_shape)}; use positions='rope'")
        elif m.positions in ("rope", "rope2d") and (m.width // m.num_heads) % (2 * rank):
            problems.append(f"positions={m.positions!r} on a rank-{rank} token_shape needs a head width divisible "
                            f"by {2 * rank}, got {m.width // m.num_heads}")
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
            problems.append(f"{err}{_mismatch_hint(m, data_info)}")
    levels = data_info.get("num_levels", 1)
    if problems.ok("model.num_streams") and levels != streams:
        if streams == 1:
            problems.append(f"the tokens have {levels} residual levels, but {config.recipe} models one token per "
                            f"position (config.model.num_streams=1): set config.model.num_streams={levels} to model "
                            "them as parallel streams, or tokenize with a vq/fsq/lfq tokenizer")
        else:
            problems.add("model.num_streams", f"the token data's codec run has {levels} residual levels, but the "
                                              f"model has config.model.num_streams={streams}: the number of levels "
                                              f"must equal the model's (set config.model.num_streams={levels})")
    if problems.ok("model.conditioning") and m.conditioning != "none" and data_info.get("num_classes", 0) < 1:
        problems.append(f"config.model.conditioning={m.conditioning!r} is class-conditional, but the data has no "
                        "classes (num_classes=0, e.g. text); set config.model.conditioning='none'")
    return problems


def _mismatch_hint(m: ml_collections.ConfigDict, data_info: dict[str, Any]) -> str:
    """What a config/data mismatch usually is, in the data's words (text: vocabulary, sequence length)."""
    hints = []
    if int(m.codebook_size) != int(data_info["codebook_size"]):
        hints.append(f"a tokenizer and model vocabulary mismatch: set config.model.codebook_size="
                     f"{data_info['codebook_size']}")
    data_shape, model_shape = tuple(data_info["token_shape"]), tuple(m.token_shape)
    if data_shape != model_shape:
        if len(data_shape) == len(model_shape) == 1 and data_shape[0] > model_shape[0]:
            hints.append(f"a sequence longer than the model's positions ({data_shape[0]} > {model_shape[0]})")
        hints.append(f"set config.model.token_shape={data_shape}")
    return " (" + "; ".join(hints) + ")" if hints else ""


class _TokenRecipe(Recipe):
    """What MaskGIT and the AR baseline share: the backbone, class dropout and the tokenizer link."""

    causal = False

    def __init__(self, *, token_shape, codebook_size: int, num_classes: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, conditioning: str, positions: str, qk_norm: bool,
                 tie_head: bool, label_smoothing: float, class_dropout: float, compute_dtype: str = "float32",
                 remat: str = "none", tokenizer: dict | None = None, sampling: dict | None = None,
                 architecture: str = "pre_ln", dropout: float = 0.0, num_streams: int = 1):
        self.token_shape = tuple(int(s) for s in token_shape)  # per example, the streams' axis K last when K > 1
        self.num_streams = int(num_streams)
        if self.num_streams > 1 and (len(self.token_shape) < 2 or self.token_shape[-1] != self.num_streams):
            raise ValueError(f"num_streams={self.num_streams} needs a token_shape ending in the streams, e.g. "
                             f"(frames, {self.num_streams}); got {self.token_shape}")
        # The positions the transformer sees; each holds K tokens (one per stream).
        self.position_shape = self.token_shape[:-1] if self.num_streams > 1 else self.token_shape
        self.num_positions = math.prod(self.position_shape)
        self.num_tokens = math.prod(self.token_shape)  # all tokens of an example: positions x streams
        self.codebook_size, self.num_classes = int(codebook_size), int(num_classes)
        self.conditioning = conditioning
        self.conditioned = conditioning != "none"
        # Unconditional models have no class table, so there is nothing to drop.
        self.label_smoothing = float(label_smoothing)
        self.class_dropout = float(class_dropout) if self.conditioned else 0.0
        self.tokenizer = dict(tokenizer or {})
        self.sampling = dict(sampling or {})
        self.model_kwargs = dict(
            vocab_size=self.codebook_size, token_shape=self.position_shape, num_streams=self.num_streams,
            num_classes=self.num_classes if self.conditioned else 0,
            width=width, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, conditioning=conditioning,
            positions=positions, qk_norm=qk_norm, tie_head=tie_head, causal=self.causal,
            dtype=_DTYPES[compute_dtype], remat=remat, architecture=architecture, dropout=dropout,
        )
        self.dropout = float(dropout)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]):
        m = config.model
        return cls(
            token_shape=tuple(m.token_shape), codebook_size=m.codebook_size,
            num_classes=data_info.get("num_classes", 0),
            width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_ratio,
            conditioning=m.conditioning, positions=m.positions, qk_norm=m.qk_norm, tie_head=m.tie_head,
            label_smoothing=config.loss.label_smoothing, class_dropout=config.loss.class_dropout,
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"), tokenizer=data_info.get("tokenizer", {}),
            sampling=config.sampling.to_dict() if "sampling" in config else {},
            architecture=m.get("architecture", "pre_ln"), dropout=m.get("dropout", 0.0),
            num_streams=m.get("num_streams", 1), **cls._own_settings(config),
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
                "num_streams": self.num_streams, "num_classes": self.num_classes, "tokenizer": self.tokenizer, "sampling": self.sampling,
                "conditioning": self.conditioning, "tasks": sorted(self.supported_tasks()),
                "generator": "autoregressive" if self.causal else "maskgit"}

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        return TokenTransformer(rngs=rngs, **self.model_kwargs)

    def _flat(self, x: jax.Array, what: str = "tokens") -> jax.Array:
        """[B, *token_shape] -> [B, N] ([B, N, K] with K streams), with a message naming both shapes."""
        if x.shape[1:] != self.token_shape:
            raise ValueError(f"batch[{what!r}] is {tuple(x.shape[1:])} per example, the model expects "
                             f"{self.token_shape}")
        streams = (self.num_streams,) if self.num_streams > 1 else ()
        return x.reshape((x.shape[0], self.num_positions) + streams)

    def _flat_tokens(self, batch) -> jax.Array:
        return self._flat(batch["tokens"])

    def _labels(self, batch) -> jax.Array | None:
        """The batch's labels for a class-conditional model, None for an unconditional one."""
        if not self.conditioned:
            return None
        if "label" not in batch:
            raise ValueError(f"a class-conditional model (conditioning={self.conditioning!r}) needs batch['label']")
        return batch["label"]

    def _train_labels(self, rng: jax.Array, batch, null_class) -> jax.Array | None:
        """Labels with class dropout to the null class (classifier-free guidance training)."""
        labels = self._labels(batch)
        if labels is None:
            return None
        drop = jax.random.uniform(rng, labels.shape) < self.class_dropout
        return jnp.where(drop, null_class, labels)

    def _dropout_rng(self, rng: jax.Array) -> jax.Array | None:
        """The model's dropout key for a training step (None without dropout). Folded in, not split
        off, so a model without dropout draws its masks and class drops exactly as before."""
        return jax.random.fold_in(rng, 0x0D0) if self.dropout > 0 else None

    def _batch_size(self, batch) -> int:
        for name in ("tokens", "known", "label"):
            if name in batch:
                return batch[name].shape[0]
        raise ValueError("generate needs a batch with 'label', or 'tokens' and 'known', to size the batch")

    def _start(self, batch) -> tuple[jax.Array, jax.Array]:
        """Initial tokens and known mask [B, N] (nothing known when the batch gives none)."""
        b = self._batch_size(batch)
        if "tokens" in batch or "known" in batch:
            if "tokens" not in batch or "known" not in batch:
                raise ValueError("batch['tokens'] and batch['known'] go together: the known mask says which "
                                 "tokens are given")
            return self._flat(batch["tokens"]).astype(jnp.int32), self._flat(batch["known"], "known").astype(bool)
        shape = (b, self.num_positions) + ((self.num_streams,) if self.num_streams > 1 else ())
        return jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)


@register("maskgit")
class MaskGITRecipe(_TokenRecipe):
    capabilities = frozenset({"generate", "infill"})
    tasks = check_tasks({"none", "class", "prefix", "infill"})  # over all configurations; `supported_tasks()`: this one
    # `iterative_decode`'s settings; others (e.g. a masked-diffusion `sampler`) are ignored with a warning.
    decode_options = ("num_steps", "schedule", "choice_temperature", "temperature", "temperature_schedule", "policy",
                      "cfg_scale", "cfg_schedule", "start_step", "precision", "cache")

    def __init__(self, *, mask_schedule: str = "cosine", loss_weighting: str = "per_example", **kwargs):
        super().__init__(**kwargs)
        mask_ratio(mask_schedule, 0.5, self.num_tokens)  # fails early on an unknown schedule
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {loss_weighting!r}; valid: {LOSS_WEIGHTINGS}")
        self.mask_schedule = mask_schedule
        self.loss_weighting = loss_weighting

    @staticmethod
    def _own_settings(config):
        return {"mask_schedule": config.loss.mask_schedule,
                "loss_weighting": config.loss.get("weighting", "per_example")}

    @staticmethod
    def validate(config, data_info):
        return _token_problems(config, data_info, {**CONFIG_SPEC, "loss.mask_schedule": string(nonempty=True),
                                                   "loss.weighting": one_of(*LOSS_WEIGHTINGS, optional=True)})

    def supported_tasks(self) -> frozenset:
        # Any known set is an infill, a prefix included; a class model always generates for a class.
        return check_tasks({"class", "infill"} if self.conditioned else {"none", "prefix", "infill"})

    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens = self._flat_tokens(batch)  # [B, N] or, with K streams, [B, N, K]
        ratio_rng, mask_rng, class_rng = jax.random.split(rng, 3)
        b = tokens.shape[0]
        r = jax.random.uniform(ratio_rng, (b,))
        # With K streams the N x K tokens are masked uniformly, as if they were one sequence.
        masked = random_token_mask(mask_rng, num_to_mask(self.mask_schedule, r, self.num_tokens), self.num_tokens)
        masked = masked.reshape(tokens.shape)
        inputs = jnp.where(masked, model.mask_token_id, tokens)
        logits = model(inputs, self._train_labels(class_rng, batch, model.null_class),
                       dropout_rng=self._dropout_rng(rng))
        weights = masked.astype(jnp.float32).reshape(b, self.num_tokens)
        per_token = smoothed_cross_entropy(logits, tokens, self.label_smoothing).reshape(b, self.num_tokens)
        loss = masked_mean(per_token, weights, self.loss_weighting)
        correct = (jnp.argmax(logits, -1) == tokens).astype(jnp.float32).reshape(b, self.num_tokens)
        return loss, {"masked_accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
                      "mask_ratio": jnp.mean(weights)}

    def generate(self, model: TokenTransformer, batch, rng, **settings):
        """Decodes tokens with `iterative_decode`. `batch["label"]` [B] is the class (class-conditional
        models; ignored otherwise); `batch["tokens"]`/`batch["known"]` (optional, [B, *token_shape])
        give the known tokens for infilling, prompting and editing (known all False: generation).
        `settings` are `iterative_decode` keyword arguments. Returns {"tokens" [B, *token_shape],
        "trajectory"/"masks" [S, B, *token_shape], "nfe" int32 scalar}."""
        tokens, known = self._start(batch)
        labels = self._labels(batch)
        uncond = None if labels is None else jnp.full_like(labels, model.null_class)
        result = iterative_decode(
            lambda t, y: model(t, y), tokens=tokens.reshape((-1,) + self.token_shape),
            known=known.reshape((-1,) + self.token_shape), cond=labels, uncond=uncond, rng=rng,
            mask_token_id=model.mask_token_id, **settings)
        return {"tokens": result.tokens, "trajectory": result.trajectory, "masks": result.masks, "nfe": result.nfe}


@register("autoregressive")
class AutoregressiveRecipe(_TokenRecipe):
    capabilities = frozenset({"generate", "likelihood"})  # left to right: it cannot infill
    decode_options = ("temperature", "cfg_scale", "precision")
    tasks = check_tasks({"none", "class", "prefix"})

    causal = True

    def supported_tasks(self) -> frozenset:
        return check_tasks({"class" if self.conditioned else "none", "prefix"})

    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens = self._flat_tokens(batch)
        # Position i predicts token i.
        logits = model(tokens, self._train_labels(rng, batch, model.null_class), dropout_rng=self._dropout_rng(rng))
        loss = jnp.mean(smoothed_cross_entropy(logits, tokens, self.label_smoothing))
        return loss, {"accuracy": jnp.mean((jnp.argmax(logits, -1) == tokens).astype(jnp.float32))}

    def token_log_probs(self, model: TokenTransformer, batch, rng) -> jax.Array:
        """Teacher-forced log p of every token of `batch["tokens"]` given the tokens before it (and the
        label): float32 [B, *token_shape], i.e. [B, T, K] for K code streams, where the K tokens of
        frame t are predicted from frames < t. No label smoothing, no class dropout. The MAGNeT
        rescorer (`maskgen.sampling.rescoring.ar_rescorer`) computes the same inside a decode."""
        del rng  # deterministic: kept for the recipe method signature
        tokens = self._flat_tokens(batch).astype(jnp.int32)
        return teacher_forced_log_probs(model, tokens, self._labels(batch)).reshape(batch["tokens"].shape)

    def log_likelihood(self, model: TokenTransformer, batch, rng):
        """Exact teacher-forced log-likelihood of `batch["tokens"]` (no label smoothing, no class dropout):
        {"nll": float32 [B], the summed -log p over the tokens in nats, "num_tokens": float32 [B]}
        (with K streams every one of the T x K tokens counts). Perplexity is exp(sum nll / sum
        num_tokens); bits per token divide by log 2."""
        del rng  # deterministic: kept for the recipe method signature
        tokens = self._flat_tokens(batch).astype(jnp.int32)
        token_log_probs = teacher_forced_log_probs(model, tokens, self._labels(batch))
        return {"nll": -jnp.sum(token_log_probs.reshape(tokens.shape[0], self.num_tokens), axis=-1),
                "num_tokens": jnp.full((tokens.shape[0],), self.num_tokens, jnp.float32)}

    def generate(self, model: TokenTransformer, batch, rng, *, temperature: float = 1.0, cfg_scale: float = 1.0,
                 precision: str = "float64", **unused):
        """Left-to-right sampling with a KV cache; decoding settings that only MaskGIT uses are ignored.

        `batch["tokens"]`/`batch["known"]` ([B, *token_shape], optional) give a prompt: the known
        positions before each row's first unknown one (in reading order) are forced. A left-to-right
        model cannot condition on later tokens, so known positions after that first gap are
        resampled like the rest; use MaskGIT to infill. With K streams a frame counts as known when
        all its K tokens are. Returns {"tokens" [B, *token_shape]}.
        """
        tokens, known = self._start(batch)
        labels = self._labels(batch)
        if self.num_streams > 1:
            known = jnp.all(known, axis=-1)
        prompt_length = jnp.sum(jnp.cumprod(known.astype(jnp.int32), axis=-1), axis=-1)  # the known prefix
        out = autoregressive_decode(model, labels, rng, batch_size=tokens.shape[0], prompt=tokens,
                                    prompt_length=prompt_length, temperature=temperature,
                                    cfg_scale=cfg_scale, precision=precision)
        return {"tokens": out.reshape((-1,) + self.token_shape)}


__all__ = ["MaskGITRecipe", "AutoregressiveRecipe", "BACKBONE_SPEC", "LOSS_WEIGHTINGS", "masked_mean", "random_token_mask",
           "smoothed_cross_entropy"]
