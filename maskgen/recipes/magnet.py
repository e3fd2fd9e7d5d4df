"""MAGNeT: masked generation of codec token streams with a single non-autoregressive transformer
(Ziv et al., "Masked Audio Generation using a Single Non-Autoregressive Transformer", arXiv
2401.04577; reference code: facebookresearch/audiocraft, `MagnetSolver` and `MagnetLMModel`).

Data: the [T, K] code streams of a residual-VQ codec run (`maskgen tokenize` of a `codec` run:
T frames, K levels, token_shape (T, K), num_levels K). The model is maskgen's `TokenTransformer`
over the T frames with K parallel streams: the K codebook embeddings of a frame are summed into
one input vector, and K heads predict the K levels (MusicGen's parallel pattern, arXiv 2306.05284).

Training (Sec. 3.1): every example draws one codebook level k uniformly. Levels below k are
given, level k is span-masked at rate cos(pi/2 u), u ~ U(0, 1) drawn per example, and the levels
above k are fully masked. The loss is cross-entropy on the masked level-k positions only (by
default averaged over all of them in the batch, as audiocraft's `F.cross_entropy(...,
ignore_index)`). Spans are `maskgen.masking.generators.span_mask` (length 3 frames = 60 ms at
50 Hz; the rate is inverted to a number of span starts by the paper's table). Levels above 0 use
restricted attention: each frame sees only frames within +-`local_window` (5 in audiocraft) -
the paper's observation that finer levels depend on local context. The class (the spoken word)
conditions the model through adaLN (or a prefix token) and is dropped to a null class with
probability `class_dropout` for classifier-free guidance.

  Level choice: audiocraft draws ONE level per training step for the whole batch, because its
  attention mask (xformers) is a single tensor per call. Here attention masks are built per
  example for free ([B, 1, T, T] from a per-example flag), so by default each EXAMPLE draws its
  level (`loss.level_choice = "example"`): every batch then trains every level, the same
  expectation with less step-to-step variance. `level_choice = "step"` is audiocraft's.

Decoding (Sec. 3.2), level by level, each level one `maskgen.sampling.iterative_decode` call over
the [B, T] tokens of that level, with the lower levels (already decoded) fixed and the higher
ones shown as [MASK], exactly as in training:
  * its own number of steps per level (`steps_per_level`, the paper's [20, 10, 10, 10] for 10 s);
  * span re-masking: the spans of `span_length` frames with the highest 1 - max p (`span_score=
    "max"`) or 1 - prod p ("prod") of their sampled tokens stay masked, cos(pi/2 i/(n-1)) of the
    spans at step i (at least one until the last step);
  * temperature annealed linearly to 0 within each level (3 -> 0; the last step is argmax), nucleus
    sampling with `top_p` (0.9);
  * classifier-free guidance annealed with the mask rate m: s = m * cfg_scale + (1 - m) *
    cfg_min_scale (10 -> 1);
  * prompts and infills: known tokens (batch["known"]) are never re-masked. While a level below
    them is decoded, known tokens of higher levels are hidden as in training (the model never saw
    a higher level it was not asked to predict).
  * rescoring (Sec. 3.3, not released by audiocraft): an optional `rescorer` maps full token
    streams [B, T, K] to log-probs [B, T, K] (e.g. the K-stream AR model of the same tokens,
    `maskgen.sampling.rescoring.ar_rescorer`); the confidence of a level-k sample becomes
    w * p_magnet + (1 - w) * p_rescorer with w = `rescore_weight` (0.7, the paper's). The
    rescorer needs every level of the earlier frames, so while level k is decoded its levels
    above k are filled with MAGNeT's greedy (argmax) predictions from one extra forward pass on
    the step's samples (levels < k decoded, level k sampled, > k masked; local attention as the
    level k+1 decode uses). That pass is counted in `nfe`; its level-(k+1) predictions are
    exactly what the model was trained for (level k+1 fully masked above a complete level k).

Where maskgen differs from the paper's code: text conditioning through T5 cross-attention is the
word class here (adaLN, CFG by class dropout), positions are learned or rotary (audiocraft:
sinusoidal), and the level draw is per example (see above).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import Problems, boolean, int_tuple, integer, number, one_of, or_none, recipe_problems
from maskgen.masking.generators import span_mask
from maskgen.models.token_transformer import TokenTransformer
from maskgen.recipes.base import Recipe, register
from maskgen.recipes.maskgit import BACKBONE_SPEC, LOSS_WEIGHTINGS, masked_mean, smoothed_cross_entropy
from maskgen.sampling.categorical import PRECISIONS
from maskgen.sampling.iterative import iterative_decode, span_policy
from maskgen.tasks import check_tasks

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CONDITIONINGS = ("adaln", "prefix", "none")
POSITIONS = ("learned", "rope")
SPAN_SCORES = ("max", "prod")
LEVEL_CHOICES = ("example", "step")
# The paper's decoding (audiocraft's MAGNeT-small 10 s grid): steps per level for K = 4.
PAPER_STEPS_PER_LEVEL = (20, 10, 10, 10)
LEVELS_MISMATCH = "a codec run whose number of levels differs from the model's"

CONFIG_SPEC = {
    "model.num_frames": integer(min=1, why="T, codec frames per clip (the token data's token_shape[0])"),
    "model.num_levels": integer(min=1, why="K, the codec's RVQ levels (the token data's num_levels)"),
    **BACKBONE_SPEC,
    "model.dropout": number(0, 1, max_open=True, optional=True),
    # Frames either side that levels above 0 attend to (audiocraft's subcodes_context, 5); None: full.
    "model.local_window": or_none(integer(min=0)),
    "loss.span_length": integer(min=1, why="frames per masked span, in training and decoding (3 = 60 ms at 50 Hz)"),
    "loss.class_dropout": number(0, 1),
    "loss.label_smoothing": number(0, 1, max_open=True, optional=True),
    "loss.weighting": one_of(*LOSS_WEIGHTINGS, optional=True),
    "loss.level_choice": one_of(*LEVEL_CHOICES, optional=True),
    "sampling.steps_per_level": int_tuple(1, optional=True),
    "sampling.span_score": one_of(*SPAN_SCORES, optional=True),
    "sampling.temperature": number(0, optional=True),
    "sampling.anneal_temperature": boolean(optional=True),
    "sampling.top_p": number(0, 1, min_open=True, optional=True),
    "sampling.cfg_scale": number(0, optional=True),
    "sampling.cfg_min_scale": number(0, optional=True),
    "sampling.rescore_weight": number(0, 1, optional=True),
    "sampling.precision": one_of(*PRECISIONS, optional=True),
}


def levels_mismatch(data_levels: int, model_levels: int, tokenizer: dict | None = None) -> str:
    """The error for code streams whose level count is not the model's, naming both."""
    made_by = (tokenizer or {}).get("workdir")
    source = f" (made by the codec run {made_by})" if made_by else ""
    return (f"{LEVELS_MISMATCH}: the token data{source} has {data_levels} levels per frame, "
            f"config.model.num_levels is {model_levels}; set config.model.num_levels={data_levels} or tokenize "
            f"with a codec run of {model_levels} levels")


def check_steps_per_level(steps_per_level, num_levels: int) -> tuple[int, ...]:
    """`steps_per_level` as a tuple of K ints >= 1, or a ValueError naming what is wrong."""
    steps = tuple(steps_per_level)
    if len(steps) != num_levels or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
        raise ValueError(f"steps_per_level={steps} must give one int >= 1 per codec level: the model has "
                         f"{num_levels} levels")
    return steps


def level_masks(level: jax.Array, span: jax.Array, num_levels: int) -> tuple[jax.Array, jax.Array]:
    """The training masks for per-example levels `level` int [B] and level spans `span` bool [B, T]:
    (input_masked bool [B, T, K]: the span at level k and every level above k; loss_positions bool
    [B, T, K]: the span at level k only). Levels below k stay visible."""
    levels = jnp.arange(num_levels)[None, None, :]
    at_level = levels == level[:, None, None]
    loss_positions = at_level & span[:, :, None]
    return loss_positions | (levels > level[:, None, None]), loss_positions


def _problems(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> Problems:
    m, problems = config.model, recipe_problems(config, data_info, CONFIG_SPEC, needs="tokens")
    if problems.ok("model.width", "model.mlp_ratio") and int(m.width * m.mlp_ratio) < 1:
        problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width {int(m.width * m.mlp_ratio)} at "
                        f"width={m.width}; it must give at least 1")
    if problems.ok("model.width", "model.num_heads", "model.positions"):
        if m.width % m.num_heads:
            problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
        elif m.positions == "rope" and (m.width // m.num_heads) % 2:
            problems.append(f"positions='rope' needs an even head width, got {m.width // m.num_heads}")
    if problems.ok("loss.span_length", "model.num_frames") and config.loss.span_length > m.num_frames:
        problems.append(f"config.loss.span_length={config.loss.span_length} is longer than the "
                        f"{m.num_frames} frames of a clip")
    steps = config.get("sampling", {}).get("steps_per_level")
    if steps is not None and problems.ok("sampling.steps_per_level", "model.num_levels") and len(steps) != m.num_levels:
        problems.add("sampling.steps_per_level", f"config.sampling.steps_per_level={tuple(steps)} has "
                     f"{len(steps)} entries; it needs one per codec level (config.model.num_levels={m.num_levels})")
    if not problems.ok("data.name"):
        return problems
    shape = tuple(data_info.get("token_shape") or ())
    data_levels = int(data_info.get("num_levels", 1))
    if len(shape) != 2 or shape[1] != data_levels:
        problems.append(f"MAGNeT models codec code streams [frames, levels]; the token data is {shape} per example "
                        f"with num_levels={data_levels} (tokenize with a `codec` run)")
        return problems
    if problems.ok("model.num_levels") and data_levels != m.num_levels:
        problems.add("model.num_levels", levels_mismatch(data_levels, m.num_levels, data_info.get("tokenizer")))
    if problems.ok("model.num_frames") and shape[0] != m.num_frames:
        problems.add("model.num_frames", f"the token data has {shape[0]} frames per clip, config.model.num_frames is "
                     f"{m.num_frames}; set config.model.num_frames={shape[0]}")
    if problems.ok("model.codebook_size") and int(data_info["codebook_size"]) != m.codebook_size:
        problems.add("model.codebook_size", f"the codec's codebooks have {data_info['codebook_size']} codes, "
                     f"config.model.codebook_size is {m.codebook_size}")
    if problems.ok("model.conditioning") and m.conditioning != "none" and data_info.get("num_classes", 0) < 1:
        problems.append(f"config.model.conditioning={m.conditioning!r} is class-conditional, but the token data has "
                        "no classes; set config.model.conditioning='none'")
    return problems


@register("magnet")
class MAGNeTRecipe(Recipe):
    capabilities = frozenset({"generate", "infill"})
    tasks = check_tasks({"none", "class", "prefix", "infill"})  # over all configurations; supported_tasks(): this one
    decode_options = ("steps_per_level", "span_score", "temperature", "anneal_temperature", "top_p", "cfg_scale",
                      "cfg_min_scale", "rescore_weight", "precision")

    def __init__(self, *, num_frames: int, num_levels: int, codebook_size: int, num_classes: int, width: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0, conditioning: str = "adaln",
                 positions: str = "learned", qk_norm: bool = False, tie_head: bool = True, dropout: float = 0.0,
                 local_window: int | None = 5, span_length: int = 3, class_dropout: float = 0.1,
                 label_smoothing: float = 0.0, weighting: str = "per_token", level_choice: str = "example",
                 compute_dtype: str = "float32", remat: str = "none", tokenizer: dict | None = None,
                 sampling: dict | None = None):
        if weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {weighting!r}; valid: {LOSS_WEIGHTINGS}")
        if level_choice not in LEVEL_CHOICES:
            raise ValueError(f"unknown level_choice {level_choice!r}; valid: {LEVEL_CHOICES}")
        if not 1 <= span_length <= num_frames:
            raise ValueError(f"span_length must be in [1, num_frames={num_frames}], got {span_length}")
        self.num_frames, self.num_levels = int(num_frames), int(num_levels)
        self.token_shape = (self.num_frames, self.num_levels)
        self.codebook_size, self.num_classes = int(codebook_size), int(num_classes)
        self.conditioning = conditioning
        self.conditioned = conditioning != "none"
        self.class_dropout = float(class_dropout) if self.conditioned else 0.0
        self.label_smoothing, self.weighting, self.level_choice = float(label_smoothing), weighting, level_choice
        self.span_length = int(span_length)
        self.local_window = None if local_window is None else int(local_window)
        self.dropout = float(dropout)
        self.tokenizer = dict(tokenizer or {})
        self.sampling = dict(sampling or {})
        self.model_kwargs = dict(
            vocab_size=self.codebook_size, token_shape=(self.num_frames,), num_streams=self.num_levels,
            num_classes=self.num_classes if self.conditioned else 0, width=width, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, conditioning=conditioning, positions=positions, qk_norm=qk_norm,
            tie_head=tie_head, dtype=_DTYPES[compute_dtype], remat=remat, dropout=dropout,
            local_window=self.local_window)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]):
        m, loss = config.model, config.loss
        return cls(
            num_frames=m.num_frames, num_levels=m.num_levels, codebook_size=m.codebook_size,
            num_classes=data_info.get("num_classes", 0), width=m.width, depth=m.depth, num_heads=m.num_heads,
            mlp_ratio=m.mlp_ratio, conditioning=m.conditioning, positions=m.positions, qk_norm=m.qk_norm,
            tie_head=m.tie_head, dropout=m.get("dropout", 0.0), local_window=m.local_window,
            span_length=loss.span_length, class_dropout=loss.class_dropout,
            label_smoothing=loss.get("label_smoothing", 0.0), weighting=loss.get("weighting", "per_token"),
            level_choice=loss.get("level_choice", "example"), compute_dtype=config.compute_dtype,
            remat=config.get("remat", "none"), tokenizer=data_info.get("tokenizer", {}),
            sampling=config.sampling.to_dict() if "sampling" in config else {})

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        return _problems(config, data_info)

    def supported_tasks(self) -> frozenset:
        # A known prefix (prompt continuation) is an infill whose known frames come first.
        return check_tasks({"class", "infill"} if self.conditioned else {"none", "prefix", "infill"})

    def info(self) -> dict[str, Any]:
        info = {"codebook_size": self.codebook_size, "token_shape": self.token_shape, "num_levels": self.num_levels,
                "num_classes": self.num_classes, "tokenizer": self.tokenizer, "sampling": self.sampling,
                "conditioning": self.conditioning, "tasks": sorted(self.supported_tasks()), "generator": "magnet",
                "span_length": self.span_length, "local_window": self.local_window}
        # What the audio evaluators read: the codec's sample rate and the speech vocabulary.
        if "sample_rate" in self.tokenizer:
            info["sample_rate"] = int(self.tokenizer["sample_rate"])
        words = (self.tokenizer.get("data_options") or {}).get("words")
        if words:
            info["words"] = words
        return info

    def make_model(self, rngs: nnx.Rngs) -> TokenTransformer:
        return TokenTransformer(rngs=rngs, **self.model_kwargs)

    # ------------------------------------------------------------------------------------ batches

    def _tokens(self, x: jax.Array, what: str = "tokens") -> jax.Array:
        if tuple(x.shape[1:]) != self.token_shape:
            if x.ndim == 3 and x.shape[1] == self.num_frames:
                raise ValueError(f"batch[{what!r}] has {x.shape[2]} levels per frame; {LEVELS_MISMATCH} "
                                 f"({self.num_levels})")
            raise ValueError(f"batch[{what!r}] is {tuple(x.shape[1:])} per example, the model expects "
                             f"[frames, levels] = {self.token_shape}")
        return x

    def _labels(self, batch) -> jax.Array | None:
        if not self.conditioned:
            return None
        if "label" not in batch:
            raise ValueError(f"a class-conditional MAGNeT model (conditioning={self.conditioning!r}) needs "
                             "batch['label']")
        return batch["label"]

    def _start(self, batch) -> tuple[jax.Array, jax.Array]:
        """Initial tokens and known mask [B, T, K] (nothing known when the batch gives none)."""
        if "tokens" in batch or "known" in batch:
            if "tokens" not in batch or "known" not in batch:
                raise ValueError("batch['tokens'] and batch['known'] go together: the known mask says which "
                                 "tokens are given")
            return (self._tokens(batch["tokens"]).astype(jnp.int32),
                    self._tokens(batch["known"], "known").astype(bool))
        if "label" not in batch:
            raise ValueError("generate needs a batch with 'label', or 'tokens' and 'known', to size the batch")
        shape = (batch["label"].shape[0],) + self.token_shape
        return jnp.zeros(shape, jnp.int32), jnp.zeros(shape, bool)

    def _local(self, level) -> bool | jax.Array:
        """Whether (or, for traced levels, where) the restricted attention applies: levels above 0."""
        if self.local_window is None:
            return False
        return level > 0

    # --------------------------------------------------------------------------------- training

    def _draw_levels(self, rng: jax.Array, batch_size: int) -> jax.Array:
        if self.level_choice == "step":
            return jnp.full((batch_size,), jax.random.randint(rng, (), 0, self.num_levels), jnp.int32)
        return jax.random.randint(rng, (batch_size,), 0, self.num_levels)

    def loss(self, model: TokenTransformer, batch, rng, step):
        tokens = self._tokens(batch["tokens"]).astype(jnp.int32)
        b = tokens.shape[0]
        level_rng, rate_rng, span_rng, class_rng = jax.random.split(rng, 4)
        level = self._draw_levels(level_rng, b)
        rate = jnp.cos(0.5 * math.pi * jax.random.uniform(rate_rng, (b,)))
        span = span_mask(span_rng, rate, self.num_frames, self.span_length)
        input_masked, loss_positions = level_masks(level, span, self.num_levels)
        labels = self._labels(batch)
        if labels is not None:
            dropped = jax.random.uniform(class_rng, labels.shape) < self.class_dropout
            labels = jnp.where(dropped, model.null_class, labels)
        dropout_rng = jax.random.fold_in(rng, 0x0D0) if self.dropout > 0 else None
        logits = model(jnp.where(input_masked, model.mask_token_id, tokens), labels, dropout_rng=dropout_rng,
                       local=self._local(level))  # [B, T, K, V]
        pick = level[:, None, None]
        level_logits = jnp.take_along_axis(logits, pick[..., None], axis=2)[:, :, 0]  # [B, T, V]
        level_targets = jnp.take_along_axis(tokens, pick, axis=2)[:, :, 0]  # [B, T]
        weights = span.astype(jnp.float32)
        per_token = smoothed_cross_entropy(level_logits, level_targets, self.label_smoothing)
        loss = masked_mean(per_token, weights, self.weighting)
        correct = (jnp.argmax(level_logits, -1) == level_targets).astype(jnp.float32)
        metrics = {"masked_accuracy": jnp.sum(correct * weights) / jnp.maximum(jnp.sum(weights), 1.0),
                   "mask_ratio": jnp.mean(weights)}
        # Per level: the masked cross-entropy of the examples that drew it (NaN-free: 0 when none did).
        for k in range(self.num_levels):
            at_k = weights * (level == k)[:, None]
            metrics[f"ce_level{k}"] = jnp.sum(per_token * at_k) / jnp.maximum(jnp.sum(at_k), 1.0)
        return loss, metrics

    # --------------------------------------------------------------------------------- decoding

    def generate(self, model: TokenTransformer, batch, rng, *, steps_per_level=None, span_score: str = "max",
                 temperature: float = 3.0, anneal_temperature: bool = True, top_p: float = 0.9,
                 cfg_scale: float = 10.0, cfg_min_scale: float = 1.0,
                 rescorer: Callable[[jax.Array], jax.Array] | None = None, rescore_weight: float = 0.7,
                 precision: str = "float64", **unused):
        """MAGNeT's level-by-level decoding (see the module docstring).

        batch: {"label" [B]} (class-conditional models) and optionally {"tokens", "known"} [B, T, K]
        (prompt continuation / infill: known tokens are kept exactly). Settings: `steps_per_level`
        (K ints; default the config's, else the paper's (20, 10, 10, 10) for K = 4), `span_score`
        ("max" | "prod"), `temperature` (annealed linearly to 0 within each level when
        `anneal_temperature`), `top_p`, `cfg_scale` -> `cfg_min_scale` as the mask rate falls,
        `rescorer` (tokens [B, T, K] -> log-probs [B, T, K]) mixed in with weight 1 - `rescore_weight`.
        Other generators' settings (MaskGIT's num_steps, an edit's start_step) are ignored.
        Returns {"tokens" int32 [B, T, K], "nfe" int32 (network evaluations, a guided 2B batch once)}.
        """
        del unused
        if steps_per_level is None:
            steps_per_level = self.sampling.get("steps_per_level") or (
                PAPER_STEPS_PER_LEVEL if self.num_levels == 4 else (10,) * self.num_levels)
        steps = check_steps_per_level(steps_per_level, self.num_levels)
        if span_score not in SPAN_SCORES:
            raise ValueError(f"unknown span_score {span_score!r}; valid: {SPAN_SCORES}")
        tokens, known = self._start(batch)
        labels = self._labels(batch)
        unguided = all(isinstance(s, (int, float)) and float(s) == 1.0 for s in (cfg_scale, cfg_min_scale))
        guided = labels is not None and not unguided  # traced scales always guide
        guidance = (dict(cond=labels, uncond=jnp.full_like(labels, model.null_class), cfg_scale=cfg_scale,
                         cfg_schedule="mask_rate", cfg_min_scale=cfg_min_scale) if guided
                    else dict(cond=labels))
        mask_id = model.mask_token_id
        policy = span_policy(self.span_length, span_score)
        current = jnp.where(known, tokens, mask_id)
        nfe = jnp.zeros((), jnp.int32)
        for k in range(self.num_levels):
            # The decoded lower levels, level k (set per call), and the higher levels hidden.
            context = current.at[:, :, k:].set(mask_id)
            score_fn = None
            if rescorer is not None:
                score_fn = self._rescore_fn(model, rescorer, context, k, labels)
            result = iterative_decode(
                self._level_logits_fn(model, context, k), tokens=current[:, :, k], known=known[:, :, k],
                rng=jax.random.fold_in(rng, k), num_steps=steps[k], mask_token_id=mask_id, policy=policy,
                temperature=temperature,
                temperature_schedule="linear_to_zero" if anneal_temperature else "constant", top_p=top_p,
                score_fn=score_fn, score_weight=rescore_weight if score_fn is not None else 1.0,
                precision=precision, record_trajectory=False, **guidance)
            current = current.at[:, :, k].set(result.tokens)
            nfe = nfe + result.nfe
            if score_fn is not None and k < self.num_levels - 1:
                nfe = nfe + steps[k]  # the greedy fill pass of every step's rescoring
        return {"tokens": current, "nfe": nfe}

    def _level_logits_fn(self, model: TokenTransformer, context: jax.Array, level: int):
        """logits_fn for iterative_decode over level `level`: tokens [B', T] (B' = B or 2B when guided)
        -> that level's logits [B', T, V], with `context` [B, T, K] supplying the other levels."""
        local = self._local(level)

        def logits_fn(level_tokens, cond):
            full = jnp.tile(context, (level_tokens.shape[0] // context.shape[0], 1, 1))
            full = full.at[:, :, level].set(level_tokens)
            return model(full, cond, local=local)[:, :, level]

        return logits_fn

    def _rescore_fn(self, model: TokenTransformer, rescorer, context: jax.Array, level: int, labels):
        """score_fn for iterative_decode: the rescorer's log-probs of the level-`level` samples [B, T],
        seeing full streams whose higher levels are MAGNeT's greedy predictions (module docstring)."""

        def score_fn(sampled):
            full = context.at[:, :, level].set(sampled)
            if level < self.num_levels - 1:
                greedy = jnp.argmax(model(full, labels, local=self._local(level + 1)), axis=-1).astype(jnp.int32)
                full = full.at[:, :, level + 1:].set(greedy[:, :, level + 1:])
            log_probs = rescorer(full)
            if log_probs.shape != full.shape:
                raise ValueError(f"the rescorer must return log-probs [B, T, K] = {full.shape}, got {log_probs.shape}")
            return log_probs[:, :, level].astype(jnp.float32)

        return score_fn


__all__ = ["MAGNeTRecipe", "CONFIG_SPEC", "PAPER_STEPS_PER_LEVEL", "LEVELS_MISMATCH", "level_masks",
           "levels_mismatch", "check_steps_per_level"]
