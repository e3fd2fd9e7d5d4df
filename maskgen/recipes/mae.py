"""MAE pretraining recipe (He et al., "Masked Autoencoders Are Scalable Vision Learners", arXiv 2111.06377).

Random masking with a fixed keep count, an encoder on visible patches only, a light decoder with
mask tokens, and MSE on per-patch-normalised pixels of the masked patches only.

Matches facebookresearch/mae's models_mae.py where it matters for loading its weights
(maskgen.weights.mae_torch): the 2-D sin-cos position layout (`model.sincos_order="x_first"`; runs
saved before this setting existed used "y_first" and keep it), LayerNorm eps 1e-6, the patch
layout (p, p, C), and the `norm_pix_loss` target with torch's unbiased patch variance.

The MAE family (issue 19, docs/mae_family.md) lives in this one recipe as options; their defaults
are plain MAE, bit for bit:
  - `model.masking` picks which patches are hidden, always exactly round(mask_ratio * N) of them:
    "random" (MAE), "block" (SSAST's clusters, Gong et al., arXiv 2110.09784), "color" (ColorMAE's
    filtered-noise patterns, Hinojosa et al., arXiv 2407.13036) or "hard" (HPM, Wang et al., arXiv
    2304.05919: a loss-predictor branch scores the patches of the full image; the top share of the
    mask goes to the hardest, that share rising from 0 to `hpm_max_share` over training) or
    "attention" (MaskAlign: visible patches drawn in proportion to the teacher's class-token attention).
  - `model.objective` picks what is learnt: "reconstruct" (MAE's pixels), "gmml" (GMML, Atito et
    al., arXiv 2111.15340: groups of patches replaced by noise or by another image, the whole
    corrupted image encoded, L1 on the corrupted patches' original pixels) or "align" (MaskAlign,
    Xue et al., arXiv 2211.08887: no decoder, no pixel loss; only the teacher's loss trains).
  - the optional `teacher` group (maskgen.recipes.mae_teacher) adds a loss on the student's hidden
    states against a frozen maskgen MAE run (MaskAlign, DMAE arXiv 2208.12256, MR-MAE arXiv 2303.05475).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import boolean, int_tuple, integer, number, one_of, recipe_problems
from maskgen.masking import block_mask, num_masked, random_mask
from maskgen.masking.generators import masked_indices
from maskgen.models.vit import MAE, SINCOS_ORDERS, patchify, unpatchify
from maskgen.recipes.base import Recipe, register

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

MASKINGS = ("random", "block", "color", "hard", "attention")
OBJECTIVES = ("reconstruct", "gmml", "align")
GMML_REPLACEMENTS = ("noise", "image")
MASK_COLORS = ("red", "blue", "green", "purple")  # maskgen.masking.colored_noise.COLORS (a test keeps them equal)
# What the optional family keys mean when a config lacks them: plain MAE, and each paper's setting.
FAMILY_DEFAULTS = dict(
    masking="random", block_sizes=(3, 4, 5), mask_color="green",  # SSAST's sides; ColorMAE's best colour
    hpm_max_share=0.5, hpm_predictor_weight=1.0,  # HPM: alpha_t = 0.5 t / T
    objective="reconstruct", gmml_replace="noise", gmml_min_ratio=0.5, gmml_max_ratio=0.75,
)

# What each MAE setting may be (maskgen.config.check_spec); `validate` adds the cross-key checks.
CONFIG_SPEC = {
    "model.patch_size": integer(min=1),
    "model.width": integer(min=1),
    "model.depth": integer(min=1, why="encoder blocks"),
    "model.num_heads": integer(min=1),
    "model.decoder_width": integer(min=1),
    "model.decoder_depth": integer(min=1, why="masked patches see the visible ones only through decoder blocks"),
    "model.decoder_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.mask_ratio": number(0, 1, min_open=True, max_open=True),
    "model.norm_pix_loss": boolean(),
    # Optional: a config.json without it is a run from before issue 15, trained with "y_first".
    "model.sincos_order": one_of(*SINCOS_ORDERS, optional=True),
    # The MAE family (issue 19). All optional; absent means plain MAE (FAMILY_DEFAULTS).
    "model.masking": one_of(*MASKINGS, optional=True),
    "model.block_sizes": int_tuple(min=1, optional=True, why="block sides in patches, one drawn per image"),
    "model.mask_color": one_of(*MASK_COLORS, optional=True),
    "model.hpm_max_share": number(0, 1, optional=True, why="HPM's final share of the mask given to hard patches"),
    "model.hpm_predictor_weight": number(0, optional=True, why="weight of HPM's loss-predictor objective"),
    "model.objective": one_of(*OBJECTIVES, optional=True),
    "model.gmml_replace": one_of(*GMML_REPLACEMENTS, optional=True),
    "model.gmml_min_ratio": number(0, 1, min_open=True, max_open=True, optional=True),
    "model.gmml_max_ratio": number(0, 1, min_open=True, max_open=True, optional=True),
}

# What `model.sincos_order` means when a config lacks it: the layout such (older) runs were trained with.
LEGACY_SINCOS_ORDER = "y_first"


def patch_mean_std(patches: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
    """Per-patch mean and sqrt(var + eps) over the last axis, with the unbiased variance (sum of
    squares over n - 1), as MAE's `target.var(dim=-1)` computes it (torch.var's default)."""
    n = patches.shape[-1]
    if n < 2:
        raise ValueError(f"norm_pix_loss needs patches of at least 2 values for their variance, got {n}")
    mean = patches.mean(-1, keepdims=True)
    var = jnp.square(patches - mean).sum(-1, keepdims=True) / (n - 1)
    return mean, jnp.sqrt(var + eps)


def normalized_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """MAE's `norm_pix_loss` target: each patch minus its mean, over sqrt(unbiased var + eps)."""
    mean, std = patch_mean_std(patches, eps)
    return (patches - mean) / std


def rank_correlation(scores: jax.Array, values: jax.Array) -> jax.Array:
    """Spearman correlation between two [B, M] arrays along M, averaged over B (ties not averaged:
    both are continuous here)."""
    def ranks(x):
        r = jnp.argsort(jnp.argsort(x, axis=-1), axis=-1).astype(jnp.float32)
        return r - r.mean(-1, keepdims=True)

    a, b = ranks(scores), ranks(values)
    corr = (a * b).sum(-1) / jnp.sqrt((a * a).sum(-1) * (b * b).sum(-1) + 1e-12)
    return corr.mean()


def masked_mean(per_patch: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of per_patch [B, N] over the True positions of mask [B, N] (over all rows together)."""
    weights = mask.astype(jnp.float32)
    return (per_patch * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def _family(m: ml_collections.ConfigDict, key: str):
    return m.get(key, FAMILY_DEFAULTS[key])


def _has_teacher(config: ml_collections.ConfigDict) -> bool:
    return "teacher" in config and bool(config.teacher.get("workdir", ""))


def _family_problems(config: ml_collections.ConfigDict, problems) -> None:
    """Cross-key checks of the MAE-family settings (masking, objective, teacher)."""
    m = config.model
    keys = ("model.masking", "model.objective", "model.block_sizes", "model.gmml_min_ratio", "model.gmml_max_ratio",
            "model.norm_pix_loss", "model.patch_size", "data.image_size")
    if not problems.ok(*keys) or config.data.image_size % m.patch_size:
        return
    masking, objective = _family(m, "masking"), _family(m, "objective")
    side = config.data.image_size // m.patch_size
    patches = side * side
    if masking == "block" and max(_family(m, "block_sizes")) > side:
        problems.append(f"config.model.block_sizes={tuple(_family(m, 'block_sizes'))} has a side larger than the "
                        f"{side}x{side} patch grid")
    if objective == "gmml":
        if masking != "random":
            problems.append(f"config.model.masking={masking!r} does not apply to objective='gmml': GMML corrupts its "
                            "own group masks (model.gmml_min_ratio / model.gmml_max_ratio); leave masking='random'")
        low, high = _family(m, "gmml_min_ratio"), _family(m, "gmml_max_ratio")
        if low > high:
            problems.append(f"config.model.gmml_min_ratio={low} is above config.model.gmml_max_ratio={high}")
        elif not (1 <= round(low * patches) and round(high * patches) <= patches - 1):
            problems.append(f"config.model.gmml_min_ratio={low} / gmml_max_ratio={high} corrupt "
                            f"{round(low * patches)} to {round(high * patches)} of the {patches} patches; "
                            "at least one must be corrupted and one left intact")
        if m.norm_pix_loss:
            problems.append("config.model.norm_pix_loss=True does not apply to objective='gmml': GMML's L1 target is "
                            "the original pixels; set model.norm_pix_loss=False")
        if _has_teacher(config):
            problems.append("config.teacher does not apply to objective='gmml': teacher targets take the student's "
                            "visible patches, and GMML encodes every (corrupted) patch")
    if objective == "align":
        if not _has_teacher(config):
            problems.append("config.model.objective='align' (MaskAlign) has no pixel loss: it needs a teacher "
                            "(config.teacher.workdir, a maskgen MAE run) whose loss alone trains the encoder")
        if masking == "hard":
            problems.append("config.model.masking='hard' needs the pixel decoder's loss (HPM's predictor learns it); "
                            "objective='align' has no decoder")
    if ("teacher" in config and config.teacher.get("kind", "") == "maskalign" and objective != "align"
            and problems.ok("teacher.kind")):
        problems.append(f"config.teacher.kind='maskalign' has no pixel loss (MaskAlign): set model.objective='align', "
                        f"not {objective!r}")
    if masking == "attention" and not _has_teacher(config):
        problems.append("config.model.masking='attention' (MaskAlign) samples the visible patches from a teacher's "
                        "class-token attention: it needs config.teacher.workdir")


@register("mae")
class MAERecipe(Recipe):
    capabilities = frozenset({"features"})

    def __init__(self, *, image_size: int, channels: int, patch_size: int, width: int, depth: int,
                 num_heads: int, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mlp_ratio: float, mask_ratio: float, norm_pix_loss: bool, compute_dtype: str = "float32",
                 remat: str = "none", sincos_order: str = "x_first", masking: str = "random",
                 block_sizes: tuple[int, ...] = (3, 4, 5), mask_color: str = "green", hpm_max_share: float = 0.5,
                 hpm_predictor_weight: float = 1.0, total_steps: int | None = None, objective: str = "reconstruct",
                 gmml_replace: str = "noise", gmml_min_ratio: float = 0.5, gmml_max_ratio: float = 0.75,
                 teacher=None):
        if masking not in MASKINGS:
            raise ValueError(f"unknown MAE masking {masking!r}; valid: {', '.join(MASKINGS)}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown MAE objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
        if objective == "align" and teacher is None:
            raise ValueError("objective='align' (MaskAlign) has no pixel loss: it needs a teacher target")
        if masking == "attention" and teacher is None:
            raise ValueError("masking='attention' (MaskAlign) samples from a teacher's attention: it needs a teacher")
        if masking == "hard" and (total_steps is None or total_steps < 1):
            raise ValueError("masking='hard' (HPM) needs total_steps >= 1 for its easy-to-hard schedule")
        self.image_size = image_size
        self.channels = channels
        self.patch_size = patch_size
        self.grid = (image_size // patch_size, image_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_visible = self.num_patches - num_masked(self.num_patches, mask_ratio)
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.masking, self.objective = masking, objective
        self.block_sizes = tuple(block_sizes)
        self.mask_color = mask_color
        self.hpm_max_share, self.hpm_predictor_weight = float(hpm_max_share), float(hpm_predictor_weight)
        self.total_steps = total_steps
        self.gmml_replace = gmml_replace
        self.gmml_ratios = (float(gmml_min_ratio), float(gmml_max_ratio))
        self.teacher = teacher
        self.model_kwargs = dict(
            patch_dim=patch_size * patch_size * channels, grid=self.grid, width=width, depth=depth,
            num_heads=num_heads, decoder_width=decoder_width, decoder_depth=decoder_depth,
            decoder_heads=decoder_heads, mlp_ratio=mlp_ratio, dtype=_DTYPES[compute_dtype], remat=remat,
            sincos_order=sincos_order,
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "MAERecipe":
        m = config.model
        channels = int(data_info["image_shape"][-1])
        grid = (config.data.image_size // m.patch_size,) * 2
        teacher = None
        if _has_teacher(config):
            from maskgen.recipes.mae_teacher import make_teacher_target

            t = config.teacher
            teacher = make_teacher_target(  # absent keys: the kind's defaults (mae_teacher)
                workdir=t.workdir, kind=t.get("kind", None), student_layers=tuple(t.get("student_layers", ())),
                teacher_layers=tuple(t.get("teacher_layers", ())), weight=t.get("weight", None),
                loss=t.get("loss", None), student_width=m.width,
                student_depth=m.depth, grid=grid, patch_size=m.patch_size, image_size=config.data.image_size,
                channels=channels)
        return cls(
            image_size=config.data.image_size, channels=channels,
            patch_size=m.patch_size, width=m.width, depth=m.depth, num_heads=m.num_heads,
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            mlp_ratio=m.mlp_ratio, mask_ratio=m.mask_ratio, norm_pix_loss=m.norm_pix_loss,
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"),
            sincos_order=m.get("sincos_order", LEGACY_SINCOS_ORDER),
            total_steps=config.total_steps, teacher=teacher,
            **{key: _family(m, key) for key in FAMILY_DEFAULTS},
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        spec = CONFIG_SPEC
        if "teacher" in config:
            from maskgen.recipes.mae_teacher import TEACHER_SPEC

            spec = {**CONFIG_SPEC, **TEACHER_SPEC}
        m, problems = config.model, recipe_problems(config, data_info, spec, needs="images")
        if problems.ok("model.patch_size", "data.image_size") and config.data.image_size % m.patch_size:
            problems.append(
                f"config.model.patch_size={m.patch_size} does not divide config.data.image_size={config.data.image_size}"
            )
        elif (problems.ok("model.patch_size", "data.image_size", "model.mask_ratio", "model.objective")
              and _family(m, "objective") != "gmml"):  # GMML encodes every patch: mask_ratio is not read
            patches = (config.data.image_size // m.patch_size) ** 2
            masked = num_masked(patches, m.mask_ratio)
            if not 0 < masked < patches:
                problems.append(f"config.model.mask_ratio={m.mask_ratio} masks {masked} of the {patches} patches; "
                                "at least one must be masked and one visible")
        if (problems.ok("model.patch_size", "model.norm_pix_loss") and m.norm_pix_loss and data_info.get("image_shape")
                and m.patch_size ** 2 * int(data_info["image_shape"][-1]) < 2):
            problems.append(f"config.model.norm_pix_loss=True needs patches of at least 2 values (their variance); "
                            f"patch_size={m.patch_size} with {data_info['image_shape'][-1]} channel(s) gives 1")
        for width_key, heads_key in (("width", "num_heads"), ("decoder_width", "decoder_heads")):
            if problems.ok(f"model.{width_key}", "model.mlp_ratio") and int(m[width_key] * m.mlp_ratio) < 1:
                problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width "
                                f"{int(m[width_key] * m.mlp_ratio)} at {width_key}={m[width_key]}; it must give at least 1")
            if not problems.ok(f"model.{width_key}", f"model.{heads_key}"):
                continue
            if m[width_key] % m[heads_key]:
                problems.append(f"config.model.{width_key}={m[width_key]} is not divisible by {heads_key}={m[heads_key]}")
            if m[width_key] % 4:
                problems.append(f"config.model.{width_key}={m[width_key]} must be divisible by 4 (2D sin-cos positions)")
        _family_problems(config, problems)
        if "teacher" in config:
            from maskgen.recipes.mae_teacher import teacher_problems

            problems.extend(teacher_problems(config, data_info))
        return problems

    def make_model(self, rngs: nnx.Rngs) -> MAE:
        model = MAE(rngs=rngs, pixel_decoder=self.objective != "align", loss_predictor=self.masking == "hard",
                    **self.model_kwargs)
        if self.teacher is not None:  # built last: the same seed gives plain MAE's weights
            model.teacher_head = nnx.data(self.teacher.make_head(rngs))  # replaces MAE's None
        return model

    # ---- Masks: exactly N - num_visible masked positions per image, whatever the generator.
    def _draw_mask(self, model: MAE, patches: jax.Array, rng: jax.Array, step) -> jax.Array:
        batch, count = patches.shape[0], self.num_patches - self.num_visible
        if self.masking == "random":
            return random_mask(rng, (batch, self.num_patches), self.mask_ratio)
        if self.masking == "block":
            return block_mask(rng, batch, self.grid, count, self.block_sizes)
        if self.masking == "color":
            from maskgen.masking.colored_noise import color_mask, noise_fields

            # Precomputed host fields, baked into the compiled step as a constant (no parameters).
            fields = noise_fields(self.mask_color, size=max(64, 2 * max(self.grid)))
            return color_mask(rng, jnp.asarray(fields), batch, self.grid, count)
        if self.masking == "attention":
            from maskgen.recipes.mae_teacher import sample_visible

            # MaskAlign: the visible patches are drawn without replacement with probability proportional
            # to the frozen teacher's class-token attention on the intact image.
            scores = jax.lax.stop_gradient(self.teacher.attention_scores(patches))
            visible = sample_visible(rng, scores, self.num_visible)
            return jnp.ones((batch, self.num_patches), bool).at[jnp.arange(batch)[:, None], visible].set(False)
        from maskgen.masking.hard_patches import hard_patch_mask

        # HPM scores patches with a model that sees the whole image: the current weights under
        # stop_gradient here (HPM's code uses its EMA teacher; docs/mae_family.md).
        scores = jax.lax.stop_gradient(self._full_image_loss_scores(model, patches))
        share = self._hard_share(step)
        return hard_patch_mask(rng, scores, count, share)

    def _hard_share(self, step):
        from maskgen.masking.hard_patches import hard_share

        # No step (sampling, a bare loss call): the end of the schedule, the hardest masks.
        return hard_share(self.total_steps if step is None else step, self.total_steps, self.hpm_max_share)

    def _full_image_loss_scores(self, model: MAE, patches: jax.Array) -> jax.Array:
        """HPM's predicted per-patch loss [B, N] with every patch visible (no mask tokens)."""
        order = jnp.broadcast_to(jnp.arange(self.num_patches), patches.shape[:2])
        latent = model.encoder(patches)
        return model.predict_loss(model.decoder_tokens(latent, order, self.num_patches))

    def _mask_order(self, rng: jax.Array, batch_size: int, model: MAE | None = None, patches=None,
                    step=None) -> tuple[jax.Array, jax.Array]:
        if self.masking == "random":
            mask = random_mask(rng, (batch_size, self.num_patches), self.mask_ratio)
        else:
            mask = self._draw_mask(model, patches, rng, step)
        # Visible positions first (in raster order), then masked ones.
        order = jnp.argsort(mask.astype(jnp.int32), axis=-1, stable=True)
        return mask, order

    def _target(self, patches: jax.Array) -> jax.Array:
        return normalized_patches(patches) if self.norm_pix_loss else patches

    def loss(self, model: MAE, batch, rng, step=None):
        patches = patchify(batch["image"], self.patch_size)
        if self.objective == "gmml":
            return self._gmml_loss(model, patches, rng)
        mask, order = self._mask_order(rng, patches.shape[0], model, patches, step)
        visible = order[:, :self.num_visible]
        if self.teacher is None:
            latent, hidden = model.encoder(patches, visible), None
        else:
            hidden = model.encoder.hidden_states(patches, visible)
            latent = model.encoder.final_norm(hidden[-1])
        loss, metrics = jnp.zeros((), jnp.float32), {}
        if self.objective == "reconstruct":
            tokens = model.decoder_tokens(latent, order, self.num_visible)
            pred = model.decode(tokens)
            per_patch = jnp.square(pred - self._target(patches)).mean(-1)
            masked = mask.astype(jnp.float32)
            loss = (per_patch * masked).sum() / masked.sum()
            visible_mse = (per_patch * (1.0 - masked)).sum() / (1.0 - masked).sum()
            metrics = {"mse_masked": loss, "mse_visible": visible_mse}
            if self.masking == "hard":
                predictor_loss, predictor_metrics = self._predictor_loss(model, tokens, per_patch, mask)
                loss = loss + self.hpm_predictor_weight * predictor_loss
                metrics.update(predictor_metrics, hpm_hard_share=self._hard_share(step))
        if self.teacher is not None:
            teacher_loss, teacher_metrics = self.teacher.loss(
                head=model.teacher_head, student_hidden=hidden, student_final=latent, patches=patches,
                visible=visible.astype(jnp.int32), rng=jax.random.fold_in(rng, 1))
            loss = loss + teacher_loss
            metrics.update(teacher_metrics)
        return loss, metrics

    def _predictor_loss(self, model: MAE, tokens: jax.Array, per_patch: jax.Array, mask: jax.Array):
        """HPM's relative loss of the predictor branch on the masked patches, and how well it ranks them."""
        from maskgen.masking.hard_patches import relative_loss

        predicted = model.predict_loss(tokens)
        true_loss = jax.lax.stop_gradient(per_patch)
        index = masked_indices(mask, self.num_patches - self.num_visible)
        correlation = rank_correlation(jnp.take_along_axis(predicted, index, 1), jnp.take_along_axis(true_loss, index, 1))
        relative = relative_loss(predicted, true_loss, mask)
        return relative, {"hpm_predictor_loss": relative, "hpm_rank_correlation": jax.lax.stop_gradient(correlation)}

    # ---- GMML: corrupt groups of patches, encode everything, L1 on the corrupted ones.
    def gmml_corrupt(self, patches: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(corrupted patches [B, N, P], corruption mask bool [B, N]). "noise": uniform noise over the
        pixel range [-1, 1]; "image": the same positions of the next image in the batch (a roll)."""
        from maskgen.masking.generators import group_mask

        mask_rng, noise_rng = jax.random.split(rng)
        mask = group_mask(mask_rng, patches.shape[0], self.grid, *self.gmml_ratios)
        if self.gmml_replace == "noise":
            replacement = jax.random.uniform(noise_rng, patches.shape, patches.dtype, -1.0, 1.0)
        else:
            replacement = jnp.roll(patches, 1, axis=0)
        return jnp.where(mask[..., None], replacement, patches), mask

    def gmml_reconstruct(self, model: MAE, corrupted: jax.Array) -> jax.Array:
        """Every patch encoded (no mask tokens), the MAE decoder run on all of them: [B, N, P]."""
        order = jnp.broadcast_to(jnp.arange(self.num_patches), corrupted.shape[:2])
        return model.decode(model.decoder_tokens(model.encoder(corrupted), order, self.num_patches))

    def _gmml_loss(self, model: MAE, patches: jax.Array, rng: jax.Array):
        corrupted, mask = self.gmml_corrupt(patches, rng)
        per_patch = jnp.abs(self.gmml_reconstruct(model, corrupted) - patches).mean(-1)
        loss = masked_mean(per_patch, mask)
        return loss, {"l1_corrupted": loss, "l1_intact": masked_mean(per_patch, ~mask),
                      "corrupted_share": mask.astype(jnp.float32).mean()}

    def sample(self, model: MAE, batch, rng):
        """Original, masked input (masked patches grey; GMML: the corrupted input) and the
        reconstruction with the visible (intact) patches pasted. MaskAlign has no decoder: no reconstruction."""
        images = batch["image"]
        patches = patchify(images, self.patch_size)
        h = w = self.image_size
        if self.objective == "gmml":
            corrupted, mask = self.gmml_corrupt(patches, rng)
            pred = self.gmml_reconstruct(model, corrupted)
            reconstruction = jnp.where(mask[..., None], jnp.clip(pred, -1.0, 1.0), patches)
            return {"original": images, "masked": unpatchify(corrupted, self.patch_size, h, w),
                    "reconstruction": unpatchify(reconstruction, self.patch_size, h, w)}
        mask, order = self._mask_order(rng, patches.shape[0], model, patches)
        m = mask[..., None]
        masked_input = jnp.where(m, 0.0, patches)
        rows = {"original": images, "masked": unpatchify(masked_input, self.patch_size, h, w)}
        if self.objective == "align":
            return rows
        pred = model(patches, order, self.num_visible)
        if self.norm_pix_loss:  # Undo the per-patch normalisation with the true patch statistics.
            mean, std = patch_mean_std(patches)
            pred = pred * std + mean
        reconstruction = jnp.where(m, jnp.clip(pred, -1.0, 1.0), patches)
        return {**rows, "reconstruction": unpatchify(reconstruction, self.patch_size, h, w)}

    def features(self, model: MAE, batch, rng, pool: str = "mean"):
        """[B, width] encoder features: pool="mean" over patch tokens, or "cls" (MAE's linear probe)."""
        return model.features(patchify(batch["image"], self.patch_size), pool)


def load_encoder_features(workdir: str, step: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """Frozen token features of a trained MAE run's encoder (its EMA weights), for perceptual losses.

    Returns `features(images [B, H, W, C] in [-1, 1]) -> [B, 1 + N, width]`: the encoder's output
    tokens on all patches. The images must have the MAE run's size and channels.
    """
    from maskgen.checkpoint import load_run_config, restore_run_model
    from maskgen.data import source_info
    from maskgen.data.run_info import load_run_data_info

    config = load_run_config(workdir)
    if config.recipe != "mae":
        raise ValueError(f"{workdir} is a {config.recipe!r} run; a perceptual network needs an 'mae' run")
    # An imported run (`maskgen import-weights`) records its data shapes; its dataset need not be here.
    info = load_run_data_info(workdir) or source_info(config.data.name, config.data.data_dir or None)
    recipe = MAERecipe.from_config(config, info)
    with nnx.use_eager_sharding(False):  # a frozen single-device copy: no mesh needed
        graphdef, abstract_params, abstract_rest = nnx.split(
            nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0))), nnx.Param, ...)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    on_device = lambda tree: jax.tree.map(  # noqa: E731
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), nnx.to_pure_dict(tree))
    # The EMA weights only: the optimizer state of the MAE run is never read.
    _, restored = restore_run_model(workdir, {"params": on_device(abstract_params), "model_state": on_device(abstract_rest)},
                                    step=step, which="ema", keep=config.keep_checkpoints)
    params = jax.tree.map(lambda x: jax.numpy.asarray(jax.device_get(x)), restored["params"])
    expected = (recipe.image_size, recipe.image_size, recipe.channels)

    def features(images: jax.Array) -> jax.Array:
        if tuple(images.shape[1:]) != expected:
            raise ValueError(f"the MAE perceptual network in {workdir} takes images {expected}, got {images.shape[1:]}")
        model = nnx.merge(graphdef, jax.lax.stop_gradient(params), restored["model_state"])
        return model.encoder(patchify(images, recipe.patch_size)).astype(jnp.float32)

    return features
