"""DiT / SiT: a diffusion transformer on pixel patches or continuous latents, with MicroDiT's patch
masking and mixture of experts, and REPA's representation alignment, as options.

References:
  DiT: Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748
    (class-conditional, labels dropped to a null label with probability 0.1 for classifier-free
    guidance, Ho & Salimans arXiv 2207.12598).
  SiT: Ma et al., arXiv 2401.08740 (rectified flow / linear interpolant, velocity prediction).
  MicroDiT: Sehwag et al., "Stretching Each Dollar: Diffusion Training from Scratch on a
    Micro-Budget", arXiv 2407.15811 (SonyResearch/micro_diffusion).
  REPA: Yu et al., "Representation Alignment for Generation: Training Diffusion Transformers Is
    Easier Than You Think", arXiv 2410.06940 (sihyun-yu/REPA).

Training: the data x0 ([B, H, W, C] images in [-1, 1], or [B, h, w, D] latents already scaled to
unit variance) is corrupted by the objective chosen with `config.diffusion.objective`
(`maskgen.diffusion`: rectified_flow for SiT/REPA, edm for MicroDiT, cosine), patchified
(p x p patches, `maskgen.models.vit.patchify`), and the `DiffusionTransformer` predicts the
objective's target. The objective gives a per-position loss; the recipe averages it per patch,
then over the patches the backbone saw (all of them without masking), then over the batch.

MicroDiT (`config.masking`): with ratio r, every example keeps a fixed count K = N - round(r N)
of its N patches, chosen by an argsort of uniform noise; "naive" drops the others right after the
patch embedding, "deferred" first runs `model.mixer_depth` patch-mixer blocks over every patch.
The loss is on the visible patches only (no decoder, no reconstruction loss); dropped outputs are
zeros. `masking.schedule` ((start_step, ratio), ...) switches the ratio at given steps (MicroDiT's
unmasked fine-tuning phase) inside the one jitted step: `lax.switch` over the stages' static keep
counts. Resolution stages are separate runs chained with `config.init_from`. MoE: expert-choice
MLPs (`model.num_experts`, `model.capacity_factor`, every `model.moe_every`-th block).

REPA (`config.repa.encoder_workdir`): the clean images go through a frozen encoder (a maskgen MAE
run: `load_alignment_encoder`), whose patch tokens are the targets; the states after backbone
block `repa.layer` go through the model's 3-layer SiLU projector; the alignment loss is the
negative cosine similarity per token, averaged (over the visible tokens when masking), and the
total is the diffusion loss + `repa.weight` x alignment.

Generation: Gaussian noise of the data's shape, integrated by `maskgen.diffusion.sample` with
classifier-free guidance (`maskgen.diffusion.guided_network`) as `config.sampling` says. A
latent run's samples are scaled latents; the run's decoder turns them into images.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskgen.config import Rule, boolean, integer, number, one_of, recipe_problems, string
from maskgen.masking import num_masked
from maskgen.models.dit import DiffusionTransformer
from maskgen.models.vit import patchify, unpatchify
from maskgen.recipes.base import Recipe, register
from maskgen.tasks import check_tasks

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MASKING_MODES = ("none", "naive", "deferred")
# MicroDiT's layer-wise scaling: attention width ratio 0.5 -> 1.0 and MLP ratio 0.5 -> 4.0 over depth.
LAYERWISE_SCALING = ((0.5, 1.0), (0.5, 4.0))
# The diffusion settings each objective takes besides its name (maskgen.diffusion.make_objective).
DECODE_OPTIONS = ("sampler", "num_steps", "cfg_scale", "cfg_schedule", "cfg_interval", "temperature")


def _is_schedule(value) -> bool:
    """((start_step, ratio), ...): starts are ints, the first 0, strictly increasing; ratios in [0, 1)."""
    try:
        stages = [(s, r) for s, r in value]
    except (TypeError, ValueError):
        return False
    if not stages or stages[0][0] != 0:
        return False
    starts = [s for s, _ in stages]
    return (all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in starts)
            and all(a < b for a, b in zip(starts, starts[1:]))
            and all(isinstance(r, (int, float)) and not isinstance(r, bool) and 0 <= r < 1 for _, r in stages))


CONFIG_SPEC = {
    "model.patch_size": integer(min=1),
    "model.width": integer(min=4),
    "model.depth": integer(min=1),
    "model.num_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.qk_norm": boolean(optional=True),
    "model.mixer_depth": integer(min=0, optional=True, why="MicroDiT's patch-mixer blocks before the drop"),
    "model.num_experts": integer(min=0, optional=True, why="0: dense MLPs"),
    "model.capacity_factor": number(0, min_open=True, optional=True),
    "model.moe_every": integer(min=1, optional=True),
    "model.layerwise_scaling": boolean(optional=True),
    "diffusion.objective": string(nonempty=True),
    "loss.class_dropout": number(0, 1),
    "masking.mode": one_of(*MASKING_MODES, optional=True),
    "masking.ratio": number(0, 1, max_open=True, optional=True),
    "masking.schedule": Rule("a tuple of (start_step, ratio) pairs: the first start 0, starts increasing, "
                             "ratios in [0, 1); () for the constant masking.ratio",
                             lambda v: v == () or v == [] or _is_schedule(v), optional=True),
    "repa.encoder_workdir": string(optional=True, why="a maskgen MAE run; '' turns REPA off"),
    "repa.layer": integer(min=1, optional=True, why="the backbone block whose output is aligned"),
    "repa.weight": number(0, optional=True),
    "repa.projector_dim": integer(min=1, optional=True),
    "sampling.sampler": string(nonempty=True, optional=True),
    "sampling.num_steps": integer(min=1, optional=True),
    "sampling.cfg_scale": number(0, optional=True),
    "sampling.cfg_schedule": string(nonempty=True, optional=True),
    "sampling.cfg_interval": Rule("a pair (lo, hi) with 0 <= lo <= hi <= 1",
                                  lambda v: len(v) == 2 and 0 <= v[0] <= v[1] <= 1, optional=True),
    "sampling.temperature": number(0, optional=True),
}


# ------------------------------------------------------------------------------------ pure parts

def random_keep_indices(rng: jax.Array, batch: int, num_tokens: int, keep: int) -> jax.Array:
    """int32 [B, keep]: the positions each example keeps, the first `keep` of a random permutation
    (argsort of uniform noise, as MicroDiT and MAE draw them), in raster order."""
    order = jnp.argsort(jax.random.uniform(rng, (batch, num_tokens)), axis=-1)
    return jnp.sort(order[:, :keep], axis=-1).astype(jnp.int32)


def per_patch_loss(per_position: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W] per-position losses -> [B, N] means over each p x p patch (raster order)."""
    return patchify(per_position[..., None], patch_size).mean(-1)


def visible_mean(per_patch: jax.Array, keep: jax.Array | None) -> jax.Array:
    """The mean over the patches each example kept ([B, K] indices; None: all), then over the batch.
    Every example keeps the same count, so this is also the mean over all kept patches."""
    if keep is not None:
        per_patch = jnp.take_along_axis(per_patch, keep, axis=1)
    return jnp.mean(per_patch)


def alignment_loss(projected: jax.Array, target: jax.Array) -> jax.Array:
    """REPA: the negative cosine similarity between projected states and encoder features
    ([B, K, D] each), per token, averaged over tokens and batch."""
    a = projected / jnp.maximum(jnp.linalg.norm(projected, axis=-1, keepdims=True), 1e-6)
    b = target / jnp.maximum(jnp.linalg.norm(target, axis=-1, keepdims=True), 1e-6)
    return -jnp.mean(jnp.sum(a * b, axis=-1))


def masking_stages(mode: str, ratio: float, schedule, num_tokens: int) -> tuple[tuple[int, int], ...]:
    """((start_step, keep_count), ...) of a masking config; keep_count N means no masking.
    A stage that keeps no patch is an error naming it."""
    if mode == "none":
        return ((0, num_tokens),)
    stages = tuple((int(s), float(r)) for s, r in schedule) if schedule else ((0, float(ratio)),)
    out = []
    for start, r in stages:
        keep = num_tokens - num_masked(num_tokens, r)
        if keep < 1:
            raise ValueError(f"masking ratio {r} (from step {start}) leaves no visible patch of the {num_tokens}; "
                             f"use a ratio below {1 - 0.5 / num_tokens:.4g}")
        out.append((start, keep))
    return tuple(out)


def stage_index(step: jax.Array, starts: tuple[int, ...]) -> jax.Array:
    """The index of the last stage whose start is <= step."""
    return jnp.sum(jnp.asarray(step) >= jnp.asarray(starts[1:], jnp.int32)).astype(jnp.int32)


# ------------------------------------------------------------------- REPA's frozen encoder, pluggable

def _mae_encoder_info(workdir: str, config) -> dict:
    from maskgen.data import source_info
    from maskgen.data.run_info import load_run_data_info

    info = load_run_data_info(workdir) or source_info(config.data.name, config.data.data_dir or None)
    side, patch = int(config.data.image_size), int(config.model.patch_size)
    return {"grid": (side // patch, side // patch), "width": int(config.model.width),
            "image_shape": (side, side, int(info["image_shape"][-1]))}


def _mae_encoder_features(workdir: str):
    from maskgen.recipes.mae import load_encoder_features

    encode = load_encoder_features(workdir)
    return lambda images: encode(images)[:, 1:]  # drop the class token: patch tokens only


# Recipe name -> (info(workdir, config) -> {"grid", "width", "image_shape"}, load(workdir) -> images ->
# [B, N, width] patch features). Another run type whose recipe offers token features plugs in here.
ALIGNMENT_ENCODERS: dict[str, tuple[Callable, Callable]] = {"mae": (_mae_encoder_info, _mae_encoder_features)}


def alignment_encoder_info(workdir: str) -> dict:
    """What a REPA encoder run gives: {"grid": (h, w) patch grid, "width": feature width,
    "image_shape": (H, W, C) it takes}. Reads the run's config only (no weights)."""
    from maskgen.checkpoint import load_run_config

    if not os.path.isdir(workdir):
        raise ValueError(f"config.repa.encoder_workdir={workdir!r} is not a directory (a trained maskgen MAE run)")
    config = load_run_config(workdir)
    if config.recipe not in ALIGNMENT_ENCODERS:
        raise ValueError(f"config.repa.encoder_workdir={workdir!r} is a {config.recipe!r} run; REPA's encoder must be "
                         f"one of: {', '.join(sorted(ALIGNMENT_ENCODERS))}")
    return ALIGNMENT_ENCODERS[config.recipe][0](workdir, config)


def load_alignment_encoder(workdir: str) -> Callable[[jax.Array], jax.Array]:
    """The frozen patch features of an encoder run: images [B, H, W, C] in [-1, 1] -> float32
    [B, N, width] (its weights are constants of the returned function, so it runs inside a jitted
    loss). The one place that knows how to open each kind of encoder run."""
    from maskgen.checkpoint import load_run_config

    return ALIGNMENT_ENCODERS[load_run_config(workdir).recipe][1](workdir)


# ---------------------------------------------------------------------------------------- recipe

def _data_field(data_info: dict[str, Any]) -> tuple[str | None, tuple | None]:
    """What the model generates: ("latents", [h, w, D]) when the dataset has latents (a dataset may
    also keep the images, for REPA's encoder), else ("image", [H, W, C]), or (None, None)."""
    from maskgen.data.specs import first_field

    fields = data_info.get("fields") or {}
    _, spec = first_field(fields, "latents")
    if spec is None:
        _, spec = first_field(fields, "image")
    if spec is None:
        if data_info.get("image_shape") is not None:
            return "image", tuple(data_info["image_shape"])
        return None, None
    return spec.kind, tuple(spec.shape)


def _has_images(data_info: dict[str, Any]) -> bool:
    """Whether batches carry the clean images (REPA's encoder input)."""
    fields = data_info.get("fields") or {}
    return any(spec.kind == "image" for spec in fields.values()) or (
        not fields and data_info.get("image_shape") is not None)


def _data_shape(kind: str, shape: tuple, image_size: int) -> tuple[int, int, int]:
    """The per-example array the model generates: images at config.data.image_size, or latents as stored."""
    if kind == "image":
        return (int(image_size), int(image_size), int(shape[-1]))
    return tuple(int(s) for s in shape)


@register("dit")
class DiTRecipe(Recipe):
    capabilities = frozenset({"generate"})
    decode_options = DECODE_OPTIONS

    def __init__(self, *, data_kind: str, data_shape, num_classes: int, patch_size: int, width: int, depth: int,
                 num_heads: int, mlp_ratio: float, diffusion: dict, class_dropout: float = 0.1,
                 qk_norm: bool = False, mixer_depth: int = 0, num_experts: int = 0, capacity_factor: float = 2.0,
                 moe_every: int = 2, layerwise_scaling: bool = False, masking_mode: str = "none",
                 masking_ratio: float = 0.0, masking_schedule=(), repa_workdir: str = "", repa_layer: int = 8,
                 repa_weight: float = 0.5, repa_projector_dim: int = 2048, compute_dtype: str = "float32",
                 remat: str = "none", sampling: dict | None = None, encoder_info: dict | None = None,
                 has_images: bool | None = None, encoder: Callable[[jax.Array], jax.Array] | None = None):
        from maskgen.diffusion import make_objective

        if data_kind not in ("image", "latents"):
            raise ValueError(f"the dit recipe trains on images or latents, got data of kind {data_kind!r}")
        self.data_kind = data_kind
        self.data_key = "image" if data_kind == "image" else "latents"
        self.data_shape = tuple(int(s) for s in data_shape)
        h, w, channels = self.data_shape
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the data's {h}x{w} grid")
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.num_classes = int(num_classes)
        self.conditioned = self.num_classes > 0
        self.class_dropout = float(class_dropout) if self.conditioned else 0.0
        self.objective = make_objective(diffusion["objective"], **{k: v for k, v in diffusion.items()
                                                                    if k != "objective"})
        self.sampling = dict(sampling or {})
        if masking_mode not in MASKING_MODES:
            raise ValueError(f"unknown masking mode {masking_mode!r}; valid: {MASKING_MODES}")
        if masking_mode == "deferred" and mixer_depth < 1:
            raise ValueError("masking.mode='deferred' needs a patch-mixer: set model.mixer_depth >= 1")
        if masking_mode == "naive" and mixer_depth > 0:
            raise ValueError(f"masking.mode='naive' drops patches before any block, but model.mixer_depth="
                             f"{mixer_depth}: use mode 'deferred', or mixer_depth=0")
        self.masking_mode = masking_mode
        self.stages = masking_stages(masking_mode, masking_ratio, masking_schedule, self.num_tokens)
        self.repa_workdir = repa_workdir
        self.repa_layer = int(repa_layer) if repa_workdir else None
        self.repa_weight = float(repa_weight)
        if repa_workdir:
            if not (data_kind == "image" if has_images is None else has_images):
                raise ValueError("REPA aligns to an encoder of the clean images, but this run's data is latents "
                                 "without images; train on images or turn REPA off (repa.encoder_workdir='')")
            if not 1 <= self.repa_layer <= depth:
                raise ValueError(f"repa.layer={self.repa_layer} must name a backbone block in 1..{depth}")
            encoder_info = encoder_info or alignment_encoder_info(repa_workdir)
            if tuple(encoder_info["grid"]) != self.grid:
                raise ValueError(f"the REPA encoder run {repa_workdir} has a {encoder_info['grid'][0]}x"
                                 f"{encoder_info['grid'][1]} patch grid, but this model's token grid is "
                                 f"{self.grid[0]}x{self.grid[1]}; their tokens must correspond one to one")
            self.encoder_info = dict(encoder_info)
        else:
            self.encoder_info = None
        # The frozen encoder (images -> patch features), loaded by from_config outside any trace.
        self._encoder = encoder
        patch_in = patch_size * patch_size * channels
        self.model_kwargs = dict(
            in_dim=patch_in, out_dim=patch_size * patch_size * self.objective.output_channels(channels),
            grid=self.grid, num_classes=self.num_classes, width=width, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, mixer_depth=mixer_depth, num_experts=num_experts,
            capacity_factor=capacity_factor, moe_every=moe_every,
            layerwise_scaling=LAYERWISE_SCALING if layerwise_scaling else None, qk_norm=qk_norm,
            projector=(repa_projector_dim, self.encoder_info["width"]) if repa_workdir else None,
            dtype=_DTYPES[compute_dtype], remat=remat)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "DiTRecipe":
        m = config.model
        kind, shape = _data_field(data_info)
        masking = config.get("masking", ml_collections.ConfigDict())
        repa = config.get("repa", ml_collections.ConfigDict())
        return cls(
            data_kind=kind, data_shape=_data_shape(kind, shape, config.data.image_size),
            num_classes=data_info.get("num_classes", 0), patch_size=m.patch_size, width=m.width, depth=m.depth,
            num_heads=m.num_heads, mlp_ratio=m.mlp_ratio, diffusion=config.diffusion.to_dict(),
            class_dropout=config.loss.class_dropout, qk_norm=m.get("qk_norm", False),
            mixer_depth=m.get("mixer_depth", 0), num_experts=m.get("num_experts", 0),
            capacity_factor=m.get("capacity_factor", 2.0), moe_every=m.get("moe_every", 2),
            layerwise_scaling=m.get("layerwise_scaling", False), masking_mode=masking.get("mode", "none"),
            masking_ratio=masking.get("ratio", 0.0), masking_schedule=tuple(masking.get("schedule", ())),
            repa_workdir=repa.get("encoder_workdir", ""), repa_layer=repa.get("layer", 8),
            repa_weight=repa.get("weight", 0.5), repa_projector_dim=repa.get("projector_dim", 2048),
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"),
            sampling=config.sampling.to_dict() if "sampling" in config else {},
            has_images=_has_images(data_info),
            # Loaded here, outside the jitted step, as the tokenizer's perceptual network is.
            encoder=load_alignment_encoder(repa.encoder_workdir) if repa.get("encoder_workdir", "") else None,
        )

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        from maskgen.diffusion import GUIDANCE_SCHEDULES, OBJECTIVES, SAMPLERS, make_objective

        kind, shape = _data_field(data_info)
        # Images or latents: the data checks ask for whichever the dataset has (images if neither).
        problems = recipe_problems(config, data_info, CONFIG_SPEC, needs="latents" if kind == "latents" else "images")
        m = config.model
        if problems.ok("diffusion.objective"):
            settings = config.diffusion.to_dict()
            if settings["objective"] not in OBJECTIVES:
                problems.add("diffusion.objective", f"config.diffusion.objective={settings['objective']!r}: must be "
                                                    f"one of {', '.join(OBJECTIVES)}")
            else:
                try:
                    make_objective(settings.pop("objective"), **settings)
                except (TypeError, ValueError) as err:
                    problems.append(f"config.diffusion: {err}")
        sampling = config.get("sampling", {})
        if problems.ok("sampling.sampler") and "sampler" in sampling and sampling["sampler"] not in SAMPLERS:
            problems.append(f"config.sampling.sampler={sampling['sampler']!r}: must be one of {', '.join(SAMPLERS)}")
        if (problems.ok("sampling.cfg_schedule") and "cfg_schedule" in sampling
                and sampling["cfg_schedule"] not in GUIDANCE_SCHEDULES):
            problems.append(f"config.sampling.cfg_schedule={sampling['cfg_schedule']!r}: must be one of "
                            f"{', '.join(GUIDANCE_SCHEDULES)}")
        if problems.ok("model.width", "model.num_heads") and m.width % m.num_heads:
            problems.append(f"config.model.width={m.width} is not divisible by num_heads={m.num_heads}")
        if problems.ok("model.width") and m.width % 4:
            problems.append(f"config.model.width={m.width} must be divisible by 4 (2D sin-cos positions)")
        if kind is None or not problems.ok("model.patch_size", "data.image_size"):
            return problems
        data_shape = _data_shape(kind, shape, config.data.image_size)
        if data_shape[0] % m.patch_size or data_shape[1] % m.patch_size:
            problems.append(f"config.model.patch_size={m.patch_size} does not divide the data's "
                            f"{data_shape[0]}x{data_shape[1]} grid")
            return problems
        num_tokens = (data_shape[0] // m.patch_size) * (data_shape[1] // m.patch_size)
        masking = config.get("masking", {})
        mode = masking.get("mode", "none")
        if problems.ok("masking.mode", "masking.ratio", "masking.schedule", "model.mixer_depth"):
            mixer = m.get("mixer_depth", 0)
            if mode == "deferred" and mixer < 1:
                problems.append("config.masking.mode='deferred' needs a patch-mixer: set config.model.mixer_depth >= 1")
            if mode == "naive" and mixer > 0:
                problems.append(f"config.masking.mode='naive' drops patches before any block, but "
                                f"config.model.mixer_depth={mixer}: use mode 'deferred', or mixer_depth=0")
            if mode == "none" and (masking.get("ratio", 0.0) > 0 or masking.get("schedule", ())):
                problems.append("config.masking.ratio/schedule mask patches, but config.masking.mode='none': set "
                                "mode to 'naive' or 'deferred'")
            try:
                masking_stages(mode, masking.get("ratio", 0.0), tuple(masking.get("schedule", ())), num_tokens)
            except ValueError as err:
                problems.append(f"config.masking: {err}")
        repa = config.get("repa", {})
        if problems.ok("repa.encoder_workdir", "repa.layer") and repa.get("encoder_workdir", ""):
            if not _has_images(data_info):
                problems.append("config.repa.encoder_workdir: REPA aligns to an encoder of the clean images, but "
                                f"config.data.name={config.data.name!r} is latent data without images; train on "
                                "images or set repa.encoder_workdir=''")
            elif problems.ok("model.depth") and not 1 <= repa.get("layer", 8) <= m.depth:
                problems.append(f"config.repa.layer={repa.get('layer', 8)} must name a backbone block in 1..{m.depth}")
            else:
                try:
                    info = alignment_encoder_info(repa.encoder_workdir)
                except (ValueError, FileNotFoundError) as err:
                    problems.append(str(err))
                else:
                    grid = (data_shape[0] // m.patch_size, data_shape[1] // m.patch_size)
                    if tuple(info["grid"]) != grid:
                        problems.append(
                            f"config.repa.encoder_workdir={repa.encoder_workdir!r}: the encoder's patch grid is "
                            f"{info['grid'][0]}x{info['grid'][1]}, the model's token grid is {grid[0]}x{grid[1]} "
                            f"(data {data_shape[0]}x{data_shape[1]}, patch_size {m.patch_size}); they must match")
        return problems

    # ------------------------------------------------------------------------------------- model

    def supported_tasks(self) -> frozenset:
        return check_tasks({"class"} if self.conditioned else {"none"})

    def info(self) -> dict[str, Any]:
        return {"token_shape": self.grid, "data_shape": self.data_shape, "num_classes": self.num_classes,
                "sampling": self.sampling, "generator": "dit", "tasks": sorted(self.supported_tasks())}

    def make_model(self, rngs: nnx.Rngs) -> DiffusionTransformer:
        return DiffusionTransformer(rngs=rngs, **self.model_kwargs)

    def _data(self, batch) -> jax.Array:
        if self.data_key not in batch:
            raise ValueError(f"the dit recipe trains on batch[{self.data_key!r}]; the batch has {sorted(batch)}")
        x = batch[self.data_key]
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(f"batch[{self.data_key!r}] is {tuple(x.shape[1:])} per example, the model expects "
                             f"{self.data_shape}")
        return x.astype(jnp.float32)

    def _labels(self, batch) -> jax.Array | None:
        if not self.conditioned:
            return None
        if "label" not in batch:
            raise ValueError("a class-conditional dit model needs batch['label']")
        return batch["label"]

    def apply(self, model: DiffusionTransformer, x_in: jax.Array, time: jax.Array, labels, keep=None,
              return_hidden=None):
        """The network on data-shaped inputs: x_in [B, H, W, C] -> output [B, H, W, C'] (and states)."""
        h, w = self.data_shape[:2]
        out = model(patchify(x_in, self.patch_size), time, labels, keep_indices=keep, return_hidden=return_hidden)
        hidden = None
        if return_hidden is not None:
            out, hidden = out
        out = unpatchify(out, self.patch_size, h, w)
        return out if return_hidden is None else (out, hidden)

    def encoder_features(self, images: jax.Array) -> jax.Array:
        """REPA's targets: the frozen encoder's patch features [B, N, width] of the clean images
        (resized to the encoder's image size when the grids match but the pixel sizes do not)."""
        if self._encoder is None:
            raise ValueError(f"REPA's encoder ({self.repa_workdir}) was not loaded: build the recipe with "
                             "DiTRecipe.from_config, or pass encoder=load_alignment_encoder(workdir)")
        wanted = tuple(self.encoder_info["image_shape"])
        if tuple(images.shape[1:]) != wanted:
            if images.shape[-1] != wanted[-1]:
                raise ValueError(f"the REPA encoder takes {wanted[-1]}-channel images, the data has {images.shape[-1]}")
            images = jax.image.resize(images, (images.shape[0],) + wanted, "bilinear")
        return jax.lax.stop_gradient(self._encoder(images))

    def loss(self, model: DiffusionTransformer, batch, rng, step):
        x0 = self._data(batch)
        b = x0.shape[0]
        noise_rng, class_rng, mask_rng = jax.random.split(rng, 3)
        noisy = self.objective.corrupt(x0, noise_rng)
        labels = self._labels(batch)
        if labels is not None:
            drop = jax.random.uniform(class_rng, labels.shape) < self.class_dropout
            labels = jnp.where(drop, model.null_class, labels)
        targets = self.encoder_features(batch["image"].astype(jnp.float32)) if self.repa_layer else None

        def stage(keep_count: int):
            keep = (None if keep_count == self.num_tokens
                    else random_keep_indices(mask_rng, b, self.num_tokens, keep_count))
            out = self.apply(model, noisy["x_in"], noisy["time"], labels, keep, self.repa_layer)
            output, hidden = out if self.repa_layer else (out, None)
            diffusion = visible_mean(per_patch_loss(self.objective.loss(output, noisy), self.patch_size), keep)
            if hidden is None:
                return diffusion, jnp.zeros((), jnp.float32)
            kept = targets if keep is None else jnp.take_along_axis(targets, keep[..., None], axis=1)
            return diffusion, alignment_loss(model.project(hidden), kept)

        if len(self.stages) == 1:
            diffusion, align = stage(self.stages[0][1])
            visible = jnp.float32(self.stages[0][1] / self.num_tokens)
        else:
            index = stage_index(step, tuple(s for s, _ in self.stages))
            diffusion, align = jax.lax.switch(index, [lambda k=k: stage(k) for _, k in self.stages])
            fractions = jnp.asarray([k / self.num_tokens for _, k in self.stages], jnp.float32)
            visible = fractions[index]
        total = diffusion + self.repa_weight * align if self.repa_layer else diffusion
        metrics = {"diffusion_loss": diffusion, "visible_fraction": visible}
        if self.repa_layer:
            metrics["alignment_loss"] = align
        return total, metrics

    # -------------------------------------------------------------------------------- sampling

    def _batch_size(self, batch) -> int:
        for name in ("label", "tokens"):
            if name in batch:
                return batch[name].shape[0]
        raise ValueError("generate needs a batch with 'label' (or 'tokens' for an unconditional model) to size it")

    def generate(self, model: DiffusionTransformer, batch, rng, *, sampler: str = "euler", num_steps: int = 50,
                 cfg_scale: float = 1.0, cfg_schedule: str = "constant", cfg_interval=(0.0, 1.0),
                 temperature: float = 1.0, **unused):
        """Samples from noise for `batch["label"]` [B] (class-conditional models). Returns
        {"tokens": float32 [B, *data_shape] (images in [-1, 1] or scaled latents), "nfe"}."""
        from maskgen.diffusion import guided_network, sample

        b = self._batch_size(batch)
        labels = self._labels(batch)
        noise_rng, sample_rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, (b,) + self.data_shape, jnp.float32)

        def apply(x_in, time, y):
            return self.apply(model, x_in, time, y)

        if labels is not None and cfg_scale != 1.0:
            network = guided_network(self.objective, apply, labels, jnp.full_like(labels, model.null_class), cfg_scale,
                                     schedule=cfg_schedule, interval=tuple(cfg_interval))
        else:
            network = lambda x_in, time: apply(x_in, time, labels)  # noqa: E731
        x0, nfe = sample(self.objective, network, noise, sample_rng, sampler=sampler, num_steps=int(num_steps),
                         temperature=temperature)
        return {"tokens": x0.astype(jnp.float32), "nfe": jnp.int32(nfe)}

    def sample(self, model: DiffusionTransformer, batch, rng):
        """Image rows for a grid: the batch's real images and samples of the same classes (pixel runs;
        a latent run's samples are latents: its generation evaluator decodes them)."""
        if self.data_kind != "image":
            raise ValueError("a latent dit run's samples are latents: use the generation evaluator (or `maskgen "
                             "sample`), which decodes them with the tokenizer run")
        settings = {k: v for k, v in self.sampling.items() if k in DECODE_OPTIONS}
        if "cfg_interval" in settings:
            settings["cfg_interval"] = tuple(settings["cfg_interval"])
        out = self.generate(model, batch, rng, **settings)
        return {"original": batch["image"], "samples": jnp.clip(out["tokens"], -1.0, 1.0)}


__all__ = ["DiTRecipe", "MASKING_MODES", "LAYERWISE_SCALING", "ALIGNMENT_ENCODERS", "alignment_encoder_info",
           "alignment_loss", "load_alignment_encoder", "masking_stages", "per_patch_loss", "random_keep_indices",
           "stage_index", "visible_mean"]
