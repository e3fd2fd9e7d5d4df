"""Teacher-feature targets for the MAE recipe: a frozen maskgen MAE run's encoder features as targets.

Three papers, each one target on the same MAE recipe (maskgen.recipes.mae), each with its loss:

* MaskAlign (Xue et al., "Stare at What You See: Masked Image Modeling without Reconstruction",
  arXiv 2211.08887; OpenDriveLab/maskalign). The teacher sees the INTACT image. The student's
  visible tokens (class token included) at `student_layers` (default: every block) go through
  *dynamic alignment*: a learned fusion matrix W [T, S] makes each teacher layer's input a weighted
  sum of the S student layers (W initialised to 0.01 plus 1 at the student layer of the same
  relative depth: the reference's `eye + 0.01` when depths are equal), then a per-teacher-layer
  linear adapter (the reference's recommended `head_type linear`). Targets: the teacher's block
  outputs at `teacher_layers` (default: the last 5, `loss_weights top5`), before its final norm,
  at the class token and the same visible positions, whitened per token (LayerNorm without affine,
  `target_norm whiten`). Loss: mean over the T layers of 2 x SmoothL1(beta=1) (the reference's
  `2 * F.smooth_l1_loss`: d^2 below |d| = 1, 2|d| - 1 above). The student keeps 30% of the patches
  (`model.mask_ratio=0.7`, set by the config) and has no pixel decoder (`model.objective=align`).
  MaskAlign picks the visible patches by sampling from the teacher's CLS attention; maskgen's
  recipe uses its mask generator (random by default). `attention_scores` gives the teacher's CLS
  attention and `sample_visible` samples visible patches from it as the reference's
  `attention_masking` does, for a recipe that wants that option.
* DMAE (Bai et al., "Masked Autoencoders Enable Efficient Knowledge Distillers", arXiv 2208.12256;
  UCSC-VLAA/DMAE). The MAE pixel loss (kept by the recipe) plus L1 between the L2-normalised
  linear projection of the student's block `student_layers[0]` output and the L2-normalised output
  of the teacher's block `teacher_layers[0]` (both before the final norm, class token included, as
  the reference's `F.normalize` + `nn.L1Loss` over the whole sequence). The teacher runs ONLY on the
  student's visible patches (the reference feeds the teacher's encoder the same `ids_keep`).
  Default blocks: 3/4 of each depth (the paper's student block 8 of 12, teacher block 17 of 24,
  0-based).
* MR-MAE (Gao et al., "Mimic before Reconstruct: Enhancing Masked Autoencoders with Feature
  Mimicking", arXiv 2303.05475). A linear head on the student encoder's final (post-norm) visible
  patch tokens predicts the teacher's final (post-norm) features of the intact image at those
  positions; MSE against per-token whitened targets; the recipe keeps the pixel loss on the masked
  patches. The paper's code is not public (Alpha-VL/ConvMAE only links the paper), so the target
  whitening is maskgen's choice, the one MaskAlign uses; the class token is left out (the paper
  mimics the visible patch tokens).

Every teacher is a maskgen MAE run restored frozen (maskgen.recipes.frozen.load_frozen_run: its
weights behind stop_gradient, so no gradient reaches them); nothing is downloaded. The papers'
teachers are CLIP/DINO/MAE-L; here they are smaller MAE runs of the same data. Layer indices are
0-based block indices. `teacher.loss` overrides each kind's distance ("smooth_l1", "l1", "mse",
"cosine"); the normalisation of targets stays the kind's.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskgen.config import Rule, number, one_of, string
from maskgen.models.layers import Dense, logical_param

KINDS = ("maskalign", "dmae", "mrmae")
LOSSES = ("smooth_l1", "l1", "mse", "cosine")
# Each paper's distance between the head's prediction and the (normalised) teacher features.
DEFAULT_LOSS = {"maskalign": "smooth_l1", "dmae": "l1", "mrmae": "mse"}
MASKALIGN_TOP_LAYERS = 5  # MaskAlign's `loss_weights top5`: the teacher's last 5 blocks
DMAE_RELATIVE_DEPTH = 0.75  # DMAE aligns student block 8 of 12 with teacher block 17 of 24 (0-based)
WHITEN_EPS = 1e-5  # torch's F.layer_norm default, which MaskAlign's `whiten` uses


def _layers_rule(why: str) -> Rule:
    def ok(v):
        return isinstance(v, (tuple, list)) and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)

    return Rule(f"a tuple of ints >= 0 ({why}); () takes the kind's default", ok, optional=True)


# The `teacher.*` keys (optional: only teacher variants have the group). Cross-key checks: teacher_problems.
TEACHER_SPEC = {
    "teacher.workdir": string(nonempty=True, optional=True, why="a trained maskgen MAE run, the frozen teacher"),
    "teacher.kind": one_of(*KINDS, optional=True),
    "teacher.student_layers": _layers_rule("0-based student encoder blocks"),
    "teacher.teacher_layers": _layers_rule("0-based teacher encoder blocks"),
    "teacher.weight": number(0, min_open=True, optional=True, why="x the teacher loss added to the total"),
    "teacher.loss": one_of(*LOSSES, optional=True),
}


def teacher_problems(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
    """Cross-key checks of the `teacher` group (after TEACHER_SPEC's per-key checks passed; keys that
    failed them are skipped). The teacher run itself is opened, and checked, when the recipe is built."""
    del data_info  # the teacher's shapes are checked against the student's in make_teacher_target
    teacher = config.get("teacher", None)
    if teacher is None:
        return []
    problems = []
    for key in ("workdir", "kind"):
        if key not in teacher:
            problems.append(f"config.teacher.{key} is missing: a teacher target needs it "
                            f"({'a trained maskgen MAE run' if key == 'workdir' else 'one of ' + ', '.join(KINDS)})")

    def valid(key, default):  # a key that failed its TEACHER_SPEC rule is not combined with others
        value = teacher.get(key, default)
        return value if TEACHER_SPEC[f"teacher.{key}"].problem(key, value) is None else default

    kind = valid("kind", None)
    student, teacher_layers = tuple(valid("student_layers", ())), tuple(valid("teacher_layers", ()))
    if kind == "dmae":
        for key, value in (("student_layers", student), ("teacher_layers", teacher_layers)):
            if len(value) > 1:
                problems.append(f"config.teacher.{key}={value}: DMAE aligns one student block with one teacher "
                                "block; give exactly one index (or () for the default, 3/4 of the depth)")
    if kind == "mrmae" and (student or teacher_layers):
        problems.append(f"config.teacher.student_layers={student} / teacher_layers={teacher_layers}: MR-MAE mimics the "
                        "final (post-norm) features of both encoders; set both to ()")
    depth = config.get("model", {}).get("depth", None)
    if isinstance(depth, int) and student and max(student) >= depth:
        problems.append(f"config.teacher.student_layers={student}: block {max(student)} does not exist; the student "
                        f"encoder has config.model.depth={depth} blocks (indices 0..{depth - 1})")
    if len(set(student)) != len(student) or len(set(teacher_layers)) != len(teacher_layers):
        problems.append(f"config.teacher.student_layers={student} / teacher_layers={teacher_layers}: an index is "
                        "repeated; name each block once")
    return problems


# ----------------------------------------------------------------------------------- losses


def whiten(features: jax.Array, eps: float = WHITEN_EPS) -> jax.Array:
    """Per-token standardisation over the feature axis (LayerNorm without affine), in float32."""
    x = features.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


def l2_normalize(features: jax.Array, eps: float = 1e-12) -> jax.Array:
    """x / max(||x||, eps) over the feature axis (torch's F.normalize), in float32."""
    x = features.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def feature_distance(loss: str, prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean distance over all tokens and features (cosine: over tokens). smooth_l1 is MaskAlign's
    2 x SmoothL1(beta=1): d^2 where |d| < 1, else 2|d| - 1 (MSE's scale for small errors)."""
    prediction, target = prediction.astype(jnp.float32), target.astype(jnp.float32)
    diff = prediction - target
    if loss == "smooth_l1":
        absolute = jnp.abs(diff)
        return jnp.where(absolute < 1.0, jnp.square(diff), 2.0 * absolute - 1.0).mean()
    if loss == "l1":
        return jnp.abs(diff).mean()
    if loss == "mse":
        return jnp.square(diff).mean()
    if loss == "cosine":
        return (1.0 - (l2_normalize(prediction) * l2_normalize(target)).sum(-1)).mean()
    raise ValueError(f"unknown teacher loss {loss!r}; valid: {', '.join(LOSSES)}")


def _at_visible(tokens: jax.Array, visible: jax.Array, keep_cls: bool) -> jax.Array:
    """[B, 1+N, W] tokens of all patches -> [B, (1+)K, W] at the visible positions (raster indices)."""
    patches = jnp.take_along_axis(tokens[:, 1:], visible[..., None], axis=1)
    return jnp.concatenate([tokens[:, :1], patches], axis=1) if keep_cls else patches


# ------------------------------------------------------------------------------------- head


def fusion_init(student_layers: Sequence[int], student_depth: int, teacher_layers: Sequence[int],
                teacher_depth: int) -> np.ndarray:
    """MaskAlign's fusion start [T, S]: 0.01 everywhere plus 1 at the student layer closest in
    relative depth ((i + 1) / depth) to each teacher layer (`eye + 0.01` when the depths match)."""
    weights = np.full((len(teacher_layers), len(student_layers)), 0.01, np.float32)
    student_depths = np.array([(s + 1) / student_depth for s in student_layers])
    for row, t in enumerate(teacher_layers):
        weights[row, int(np.argmin(np.abs(student_depths - (t + 1) / teacher_depth)))] += 1.0
    return weights


class TeacherHead(nnx.Module):
    """The trainable map from student features to teacher features.

    fusion [T, S] (MaskAlign's dynamic alignment; None for DMAE/MR-MAE): output t's input is
    sum_s fusion[t, s] * student_states[s]. Then one linear adapter per output (nn.Linear in the
    references: Glorot-uniform kernel, zero bias), student width -> teacher width.
    """

    def __init__(self, *, student_width: int, teacher_width: int, num_outputs: int, rngs: nnx.Rngs,
                 fusion: np.ndarray | None = None):
        if fusion is not None:
            start = jnp.asarray(fusion, jnp.float32)
            self.fusion = logical_param(rngs, lambda key, shape, dtype: start.astype(dtype), start.shape, (None, None))
        else:
            self.fusion = None
        # The teacher's width is another axis than the student's `embed`: left unsharded (None).
        self.adapters = nnx.List([Dense((student_width,), (teacher_width,), ("embed", None), rngs=rngs)
                                  for _ in range(num_outputs)])

    def __call__(self, student_states: Sequence[jax.Array]) -> list[jax.Array]:
        """S states [B, T, student_width] -> num_outputs predictions [B, T, teacher_width] (float32)."""
        inputs = [x.astype(jnp.float32) for x in student_states]
        if self.fusion is not None:
            stacked = jnp.stack(inputs, axis=0)
            inputs = list(jnp.einsum("ts,sbkw->tbkw", self.fusion[...], stacked))
        if len(inputs) != len(self.adapters):
            raise ValueError(f"the teacher head maps {len(self.adapters)} inputs, got {len(inputs)}")
        return [adapter(x).astype(jnp.float32) for adapter, x in zip(self.adapters, inputs)]


# ----------------------------------------------------------------------------------- target


@dataclasses.dataclass
class TeacherTarget:
    """A frozen teacher run and what the student learns from it (see the module docstring).

    `frozen` is a maskgen.recipes.frozen.FrozenRun of an MAE run; layers are resolved (no defaults left).
    """

    frozen: Any
    kind: str
    student_layers: tuple[int, ...]
    teacher_layers: tuple[int, ...]
    weight: float
    loss_name: str
    student_width: int
    student_depth: int
    teacher_width: int
    teacher_depth: int

    def make_head(self, rngs: nnx.Rngs) -> TeacherHead:
        if self.kind == "maskalign":
            return TeacherHead(student_width=self.student_width, teacher_width=self.teacher_width,
                               num_outputs=len(self.teacher_layers), rngs=rngs,
                               fusion=fusion_init(self.student_layers, self.student_depth, self.teacher_layers,
                                                  self.teacher_depth))
        return TeacherHead(student_width=self.student_width, teacher_width=self.teacher_width, num_outputs=1, rngs=rngs)

    def teacher_encoder(self):
        """The teacher's ViT encoder, its weights behind stop_gradient (call while tracing)."""
        return self.frozen.module().encoder

    def targets(self, patches: jax.Array, visible: jax.Array) -> list[jax.Array]:
        """The kind's normalised teacher features, aligned with the student's visible tokens:
        maskalign: T x [B, 1+K, Wt] (intact image, whitened); dmae: [B, 1+K, Wt] (visible patches
        only, L2-normalised); mrmae: [B, K, Wt] (intact image, final features, whitened)."""
        encoder = self.teacher_encoder()
        if self.kind == "maskalign":
            states = encoder.hidden_states(patches)
            return [whiten(_at_visible(states[t], visible, keep_cls=True)) for t in self.teacher_layers]
        if self.kind == "dmae":
            return [l2_normalize(encoder.hidden_states(patches, visible)[self.teacher_layers[0]])]
        return [whiten(_at_visible(encoder(patches), visible, keep_cls=False))]

    def predictions(self, head: TeacherHead, student_hidden: Sequence[jax.Array],
                    student_final: jax.Array) -> list[jax.Array]:
        """The head's predictions, shaped like `targets` (DMAE's are L2-normalised, as its targets)."""
        if self.kind == "mrmae":
            return head([student_final[:, 1:]])
        predicted = head([student_hidden[s] for s in self.student_layers])
        return [l2_normalize(p) for p in predicted] if self.kind == "dmae" else predicted

    def loss(self, head: TeacherHead, student_hidden: Sequence[jax.Array], student_final: jax.Array,
             patches: jax.Array, visible: jax.Array, rng: jax.Array | None = None):
        """(weight x the mean over target layers of the distance, metrics). student_hidden: the student
        encoder's per-block [B, 1+K, Ws] on the visible patches; student_final: its post-norm output;
        patches [B, N, P] all patches; visible int [B, K] raster indices. rng is unused (all three
        kinds are deterministic given the mask)."""
        del rng
        if len(student_hidden) != self.student_depth:
            raise ValueError(f"the teacher target was built for a student of {self.student_depth} blocks; got "
                             f"{len(student_hidden)} hidden states")
        targets = jax.lax.stop_gradient(self.targets(patches, visible))
        per_layer = [feature_distance(self.loss_name, p, t)
                     for p, t in zip(self.predictions(head, student_hidden, student_final), targets)]
        value = sum(per_layer) / len(per_layer)
        metrics = {"teacher_loss": value}
        if len(per_layer) > 1:
            metrics.update({f"teacher_loss_block{t}": v for t, v in zip(self.teacher_layers, per_layer)})
        return self.weight * value, metrics

    # MaskAlign's attention-guided masking, for a recipe that offers it as a masking option.
    def attention_scores(self, patches: jax.Array) -> jax.Array:
        """[B, N] the teacher's last-block attention from the class token to each patch, averaged over
        heads (the intact image): MaskAlign's `attentions[-1][:, :, 0, 1:].mean(1)`."""
        encoder = self.teacher_encoder()
        states = encoder.hidden_states(patches)
        block = encoder.transformer.blocks[len(states) - 1]
        block_input = states[-2] if len(states) > 1 else encoder.embed(patches)
        q, k, _ = block.attn.project(block.norm1(block_input))
        logits = jnp.einsum("bhd,bhkd->bhk", q[:, :, 0] * block.attn.scale, k).astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1)[:, :, 1:].mean(1)


def sample_visible(rng: jax.Array, scores: jax.Array, count: int) -> jax.Array:
    """int [B, count] positions drawn without replacement with probability proportional to `scores`
    [B, N] (>= 0), as torch.multinomial(scores, N, replacement=False)[:, :count] (Gumbel top-k)."""
    gumbel = jax.random.gumbel(rng, scores.shape)
    keys = jnp.log(jnp.maximum(scores.astype(jnp.float32), 1e-30)) + gumbel
    return jax.lax.top_k(keys, count)[1]


# ---------------------------------------------------------------------------------- loading

ROLE = "config.teacher.workdir"


def _at_relative_depth(depth: int) -> tuple[int]:
    """DMAE's block for an encoder of `depth` blocks: the one ending 3/4 of the way (8 of 12, 17 of 24)."""
    return (max(0, math.floor(DMAE_RELATIVE_DEPTH * depth + 0.5) - 1),)


def _resolve_layers(kind: str, student_layers, teacher_layers, student_depth: int,
                    teacher_depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    student_layers, teacher_layers = tuple(student_layers or ()), tuple(teacher_layers or ())
    if kind == "mrmae":
        if student_layers or teacher_layers:
            raise ValueError(f"config.teacher.kind='mrmae' mimics the final features of both encoders: "
                             f"student_layers={student_layers} and teacher_layers={teacher_layers} must be ()")
        return (), ()
    if kind == "maskalign":
        student_layers = student_layers or tuple(range(student_depth))
        teacher_layers = teacher_layers or tuple(range(max(0, teacher_depth - MASKALIGN_TOP_LAYERS), teacher_depth))
    else:
        student_layers = student_layers or _at_relative_depth(student_depth)
        teacher_layers = teacher_layers or _at_relative_depth(teacher_depth)
        if len(student_layers) != 1 or len(teacher_layers) != 1:
            raise ValueError(f"config.teacher.kind='dmae' aligns one student block with one teacher block; got "
                             f"student_layers={student_layers}, teacher_layers={teacher_layers}")
    for key, layers, depth, whose in (
            ("student_layers", student_layers, student_depth, "the student encoder has"),
            ("teacher_layers", teacher_layers, teacher_depth, "the teacher run's encoder has")):
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"config.teacher.{key}={layers}: block {bad[0]} is out of range; {whose} depth {depth} "
                             f"(0-based block indices 0..{depth - 1})")
    return student_layers, teacher_layers


def make_teacher_target(*, workdir: str, kind: str, student_layers=(), teacher_layers=(), weight: float | None = None,
                        loss: str | None = None, student_width: int, student_depth: int, grid: tuple[int, int],
                        patch_size: int, image_size: int, channels: int) -> TeacherTarget:
    """Restores the teacher run in `workdir` and checks it against the student.

    student_layers / teacher_layers: () or None take the kind's default (module docstring);
    weight None: 1.0; loss None: the kind's (DEFAULT_LOSS). Raises ValueError (naming
    config.teacher.workdir and both values) when the run is missing, not an MAE run, or its image
    size, channels, patch size or patch grid differ from the student's; and when a layer index is
    out of range for its encoder's depth.
    """
    from maskgen.recipes.frozen import load_frozen_run

    _settings(kind, loss, weight)  # a bad kind, loss or weight fails before the run is read
    return target_from_run(load_frozen_run(workdir, role=ROLE, recipes=("mae",), capability="features"),
                           kind=kind, student_layers=student_layers, teacher_layers=teacher_layers, weight=weight,
                           loss=loss, student_width=student_width, student_depth=student_depth, grid=grid,
                           patch_size=patch_size, image_size=image_size, channels=channels)


def _settings(kind: str, loss: str | None, weight: float | None) -> tuple[str, float]:
    """(loss, weight) with the kind's defaults; ValueError naming the key for a bad value."""
    if kind not in KINDS:
        raise ValueError(f"config.teacher.kind={kind!r}: must be one of {', '.join(KINDS)}")
    loss = DEFAULT_LOSS[kind] if loss is None else loss
    if loss not in LOSSES:
        raise ValueError(f"config.teacher.loss={loss!r}: must be one of {', '.join(LOSSES)}")
    weight = 1.0 if weight is None else float(weight)
    if not weight > 0:
        raise ValueError(f"config.teacher.weight={weight}: must be > 0")
    return loss, weight


def target_from_run(frozen, *, kind: str, student_layers=(), teacher_layers=(), weight: float | None = None,
                    loss: str | None = None, student_width: int, student_depth: int, grid: tuple[int, int],
                    patch_size: int, image_size: int, channels: int) -> TeacherTarget:
    """make_teacher_target's checks and defaults on an already restored MAE run (a FrozenRun)."""
    loss, weight = _settings(kind, loss, weight)
    teacher = frozen.recipe
    workdir = frozen.workdir
    mismatches = [
        f"{what} is {theirs} for the teacher and {ours} for the student ({key})"
        for what, key, theirs, ours in (
            ("the image size", "config.data.image_size", teacher.image_size, image_size),
            ("the channel count", "the data's image_shape[-1]", teacher.channels, channels),
            ("the patch size", "config.model.patch_size", teacher.patch_size, patch_size),
            ("the patch grid", "image_size / patch_size", "x".join(map(str, teacher.grid)),
             "x".join(map(str, tuple(grid)))),
        ) if theirs != ours]
    if mismatches:
        raise ValueError(f"{ROLE}={str(workdir)!r}: the teacher run does not fit the student: {'; '.join(mismatches)}. "
                         "The teacher's features are compared patch by patch, so both must see the same patches.")
    teacher_width, teacher_depth = int(frozen.config.model.width), int(frozen.config.model.depth)
    student_layers, teacher_layers = _resolve_layers(kind, student_layers, teacher_layers, student_depth, teacher_depth)
    return TeacherTarget(frozen=frozen, kind=kind, student_layers=student_layers, teacher_layers=teacher_layers,
                         weight=weight, loss_name=loss, student_width=int(student_width),
                         student_depth=int(student_depth), teacher_width=teacher_width, teacher_depth=teacher_depth)
