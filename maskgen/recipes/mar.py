"""MAR: masked autoregressive generation of continuous tokens with a per-token diffusion loss (Li et
al., "Autoregressive Image Generation without Vector Quantization", arXiv 2406.11838; official code
LTH14/mar).

Tokens are continuous: pixel patches of an image (`model.patch_size` p: [H/p * W/p, p*p*C]) or the
latents of a KL tokenizer run written by `maskgen tokenize` (already multiplied by the stored scale
factor; patch size 1 on an h x w x D grid). The model is `maskgen.models.mar.MAR`: an MAE-style
encoder/decoder that gives a condition z per position, and a small diffusion MLP head for
p(token | z).

Training (Sec. 3.3-3.4): each example gets a random order; ONE mask ratio per batch is drawn from a
truncated normal (mean 1, std 0.25, clipped to [mask_ratio_min, 1]; MAR: 0.7), the first
ceil(N * ratio) positions of each order are masked, the encoder sees the class buffer and the
visible tokens, and the diffusion loss (`maskgen.diffusion` "cosine" objective: epsilon
prediction, learned variance, 1000 steps) is averaged over the masked tokens only, each token
repeated `diffusion_batch_mul` (4) times with its own t and noise. The class is replaced by the
null class with probability `class_dropout` (0.1) for classifier-free guidance.

Static shapes: the visible count is traced (it depends on the drawn ratio), so the encoder gets
a FIXED number of slots, K = N - ceil(mask_ratio_min * N) (the most that can be visible), filled
by each example's order from rank num_masked on; slots past the last position are hidden from
attention (a key mask), which is exactly an encoder on the visible tokens alone.

Generation (Sec. 3.4, Alg. in LTH14/mar `sample_tokens`): `num_steps` (MAR's num_iter) outer
iterations; after iteration k, floor(N cos(pi/2 (k+1)/T)) positions stay masked (at least 1 and
at most one fewer than before; 0 after the last), the next ones of a random order being revealed:
the encoder/decoder runs on the tokens known so far, and the head samples each revealed token by
DDPM (`diffusion_steps`, MAR: 100) with temperature tau on each step's noise and classifier-free
guidance 1 + (w - 1) (N - mask_len) / N ("linear") or w ("constant"). Known tokens of an infill
batch count as already revealed and never change. Static shapes again: each iteration samples a
fixed number of slots (the most any iteration reveals), unused ones discarded.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskgen.config import boolean, data_problems, integer, number, one_of, check_spec
from maskgen.diffusion import SAMPLERS, guided_network, make_objective, sample
from maskgen.models.mar import MAR
from maskgen.models.vit import patchify, unpatchify
from maskgen.recipes.base import Recipe, register
from maskgen.tasks import check_tasks

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
CFG_SCHEDULES = ("linear", "constant")  # MAR's cfg_schedule choices
PREDICTIONS = ("epsilon", "v")

CONFIG_SPEC = {
    "model.patch_size": integer(min=1, why="pixels (or latent cells) per token side"),
    "model.width": integer(min=1),
    "model.depth": integer(min=1, why="encoder blocks"),
    "model.num_heads": integer(min=1),
    "model.decoder_width": integer(min=1),
    "model.decoder_depth": integer(min=1),
    "model.decoder_heads": integer(min=1),
    "model.mlp_ratio": number(0, min_open=True),
    "model.buffer_size": integer(min=1, why="class tokens in front; at mask ratio 1 the encoder sees only them"),
    "model.head_width": integer(min=1),
    "model.head_depth": integer(min=1, why="residual blocks of the diffusion MLP"),
    "model.dropout": number(0, 1, max_open=True, optional=True),
    "loss.mask_ratio_min": number(0, 1, min_open=True, why="the lowest mask ratio of the truncated normal"),
    "loss.mask_ratio_std": number(0, min_open=True, optional=True),
    "loss.class_dropout": number(0, 1, max_open=True),
    "loss.diffusion_batch_mul": integer(min=1, why="diffusion draws per masked token"),
    "loss.prediction": one_of(*PREDICTIONS, optional=True),
    "loss.learn_sigma": boolean(optional=True),
    "loss.num_timesteps": integer(min=2, optional=True),
    "sampling.num_steps": integer(min=1, optional=True, why="outer iterations, MAR's num_iter"),
    "sampling.diffusion_steps": integer(min=1, optional=True, why="the head's sampling steps per token"),
    "sampling.sampler": one_of(*SAMPLERS, optional=True),
    "sampling.temperature": number(0, optional=True),
    "sampling.cfg_scale": number(0, optional=True),
    "sampling.cfg_schedule": one_of(*CFG_SCHEDULES, optional=True),
}


# ---------------------------------------------------------------------------------------------
# Masking and schedules (pure functions, tested on their own)
# ---------------------------------------------------------------------------------------------
def min_masked(num_positions: int, mask_ratio_min: float) -> int:
    """ceil(N * mask_ratio_min): the fewest masked positions a training batch can have."""
    return min(num_positions, max(1, math.ceil(num_positions * mask_ratio_min - 1e-9)))


def sample_num_masked(rng: jax.Array, num_positions: int, mask_ratio_min: float, std: float = 0.25) -> jax.Array:
    """int32 scalar: ceil(N * r) with ONE r per batch from a normal(1, std) truncated to
    [mask_ratio_min, 1] (MAR's `truncnorm((min - 1) / std, 0, loc=1, scale=std)`)."""
    z = jax.random.truncated_normal(rng, (mask_ratio_min - 1.0) / std, 0.0, (), jnp.float32)
    ratio = jnp.clip(1.0 + std * z, mask_ratio_min, 1.0)
    count = jnp.ceil(num_positions * ratio).astype(jnp.int32)
    return jnp.clip(count, min_masked(num_positions, mask_ratio_min), num_positions)


def random_orders(rng: jax.Array, batch_size: int, num_positions: int) -> jax.Array:
    """int32 [B, N]: a uniformly random permutation of the positions per example (order[b, r] is the
    position of rank r)."""
    return jnp.argsort(jax.random.uniform(rng, (batch_size, num_positions)), axis=-1).astype(jnp.int32)


def training_mask(order: jax.Array, num_masked: jax.Array, num_slots: int):
    """The masked positions and the encoder's visible slots for a batch.

    order int [B, N] (random_orders); num_masked a traced scalar (the first `num_masked` ranks are
    masked, as MAR's mask_by_order). Returns (masked bool [B, N], positions int [B, K], valid bool
    [B, K]): slot j holds the position of rank num_masked + j, valid while that rank is < N.
    """
    n = order.shape[1]
    rank = jnp.argsort(order, axis=-1)
    masked = rank < num_masked
    slot_rank = num_masked + jnp.arange(num_slots, dtype=jnp.int32)
    valid = jnp.broadcast_to(slot_rank < n, (order.shape[0], num_slots))
    positions = jnp.take(order, jnp.minimum(slot_rank, n - 1), axis=1)
    return masked, positions, valid


def mask_counts(num_positions: int, num_iter: int) -> np.ndarray:
    """int [T]: how many positions are still masked after each of the T iterations (MAR's cosine
    schedule: floor(N cos(pi/2 (k+1)/T)), at least 1 and at most the previous count minus 1, then 0
    after the last iteration; with T > N the count stays at 1 until the last)."""
    counts, previous = [], num_positions
    for k in range(num_iter):
        if k == num_iter - 1:
            count = 0
        else:
            count = max(1, min(previous - 1, math.floor(num_positions * math.cos(math.pi / 2 * (k + 1) / num_iter))))
        counts.append(count)
        previous = count
    return np.asarray(counts, np.int32)


def cfg_scales(num_positions: int, counts: np.ndarray, cfg_scale: float, schedule: str) -> np.ndarray:
    """float32 [T]: the guidance scale of each iteration. "linear": 1 + (w - 1) (N - mask_len) / N
    with mask_len the count after the iteration, at least 1 (MAR computes it so on the last
    iteration too); "constant": w."""
    if schedule not in CFG_SCHEDULES:
        raise ValueError(f"unknown cfg_schedule {schedule!r}; valid: {', '.join(CFG_SCHEDULES)}")
    if schedule == "constant":
        return np.full(len(counts), cfg_scale, np.float32)
    mask_len = np.maximum(counts, 1)
    return (1.0 + (cfg_scale - 1.0) * (num_positions - mask_len) / num_positions).astype(np.float32)


def masked_token_mean(per_token: jax.Array, masked: jax.Array) -> jax.Array:
    """Mean of per-token losses over the masked tokens of the whole batch (MAR's (loss * mask).sum()
    / mask.sum())."""
    weights = masked.astype(jnp.float32)
    return jnp.sum(per_token * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _data_field(data_info: dict[str, Any]) -> tuple[str, Any] | None:
    """("latents", LatentSpec) or ("image", ImageSpec) of the data (latents first), None if neither."""
    fields = data_info.get("fields") or {}
    for kind in ("latents", "image"):
        for name, spec in fields.items():
            if spec.kind == kind:
                return name, spec
    if data_info.get("image_shape") is not None:  # a hand-written data_info without fields
        return "image", None
    return None


@register("mar")
class MARRecipe(Recipe):
    capabilities = frozenset({"generate", "infill"})
    tasks = check_tasks({"none", "class", "infill"})
    decode_options = ("num_steps", "diffusion_steps", "sampler", "temperature", "cfg_scale", "cfg_schedule")

    def __init__(self, *, data_shape, data_field: str = "image", num_classes: int, patch_size: int, width: int,
                 depth: int, num_heads: int, decoder_width: int, decoder_depth: int, decoder_heads: int,
                 mlp_ratio: float, buffer_size: int, head_width: int, head_depth: int, mask_ratio_min: float = 0.7,
                 mask_ratio_std: float = 0.25, class_dropout: float = 0.1, diffusion_batch_mul: int = 4,
                 prediction: str = "epsilon", learn_sigma: bool = True, num_timesteps: int = 1000,
                 dropout: float = 0.0, compute_dtype: str = "float32", remat: str = "none",
                 sampling: dict | None = None, tokenizer: dict | None = None):
        self.data_shape = tuple(int(s) for s in data_shape)
        height, width_px, channels = self.data_shape
        if height % patch_size or width_px % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide the data's {height}x{width_px} grid")
        self.data_field = data_field
        self.patch_size = int(patch_size)
        self.token_shape = (height // patch_size, width_px // patch_size)
        self.num_positions = self.token_shape[0] * self.token_shape[1]
        self.token_dim = patch_size * patch_size * channels
        self.num_classes = int(num_classes)
        self.conditioned = self.num_classes > 0
        self.mask_ratio_min, self.mask_ratio_std = float(mask_ratio_min), float(mask_ratio_std)
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ValueError(f"mask_ratio_min must be in (0, 1], got {mask_ratio_min}")
        # The most positions a training batch can leave visible: the encoder's static slot count.
        self.num_slots = self.num_positions - min_masked(self.num_positions, self.mask_ratio_min)
        self.class_dropout = float(class_dropout) if self.conditioned else 0.0
        self.diffusion_batch_mul = int(diffusion_batch_mul)
        self.objective = make_objective("cosine", prediction=prediction, num_timesteps=int(num_timesteps),
                                        learn_sigma=bool(learn_sigma))
        self.dropout = float(dropout)
        self.sampling = dict(sampling or {})
        self.tokenizer = dict(tokenizer or {})
        self.model_kwargs = dict(
            token_dim=self.token_dim, num_positions=self.num_positions, num_classes=self.num_classes,
            buffer_size=buffer_size, width=width, depth=depth, num_heads=num_heads, decoder_width=decoder_width,
            decoder_depth=decoder_depth, decoder_heads=decoder_heads, mlp_ratio=mlp_ratio, head_width=head_width,
            head_depth=head_depth, head_out_channels=self.objective.output_channels(self.token_dim),
            dropout=self.dropout, dtype=_DTYPES[compute_dtype], remat=remat)

    # ---- config
    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> "MARRecipe":
        m, loss = config.model, config.loss
        name, spec = _data_field(data_info)
        if name == "image":
            shape = (config.data.image_size, config.data.image_size, int(data_info["image_shape"][-1]))
        else:
            shape = tuple(spec.shape)
        return cls(
            data_shape=shape, data_field=name, num_classes=data_info.get("num_classes", 0),
            patch_size=m.patch_size, width=m.width, depth=m.depth, num_heads=m.num_heads,
            decoder_width=m.decoder_width, decoder_depth=m.decoder_depth, decoder_heads=m.decoder_heads,
            mlp_ratio=m.mlp_ratio, buffer_size=m.buffer_size, head_width=m.head_width, head_depth=m.head_depth,
            dropout=m.get("dropout", 0.0), mask_ratio_min=loss.mask_ratio_min,
            mask_ratio_std=loss.get("mask_ratio_std", 0.25), class_dropout=loss.class_dropout,
            diffusion_batch_mul=loss.diffusion_batch_mul, prediction=loss.get("prediction", "epsilon"),
            learn_sigma=loss.get("learn_sigma", True), num_timesteps=loss.get("num_timesteps", 1000),
            compute_dtype=config.compute_dtype, remat=config.get("remat", "none"),
            sampling=config.sampling.to_dict() if "sampling" in config else {},
            tokenizer=data_info.get("tokenizer", {}))

    @staticmethod
    def validate(config: ml_collections.ConfigDict, data_info: dict[str, Any]) -> list[str]:
        m, problems = config.model, check_spec(config, CONFIG_SPEC)
        found = _data_field(data_info)
        # Pixels or latents: check the data as what it is; anything else is refused as not images.
        needs = "latents" if found and found[0] != "image" else "images"
        problems = data_problems(config, data_info, needs, problems)
        if found is None:
            problems.append("recipe 'mar' trains on continuous tokens: images (pixel patches, e.g. data.name="
                            "'digits') or the latents of a KL tokenizer run (`maskgen tokenize` of a "
                            "model.quantizer='kl' run)")
            return problems
        name, spec = found
        if problems.ok("model.patch_size"):
            if name == "image" and problems.ok("data.image_size"):
                grid = (config.data.image_size, config.data.image_size)
            elif name != "image":
                grid = tuple(spec.shape[:2])
            else:
                grid = None
            if grid and (grid[0] % m.patch_size or grid[1] % m.patch_size):
                what = "config.data.image_size" if name == "image" else "the latent grid"
                problems.append(f"config.model.patch_size={m.patch_size} does not divide {what} "
                                f"{grid[0]}x{grid[1]}")
            elif grid and problems.ok("loss.mask_ratio_min"):
                n = (grid[0] // m.patch_size) * (grid[1] // m.patch_size)
                if n < 2:
                    problems.append(f"config.model.patch_size={m.patch_size} leaves {n} token position(s); MAR "
                                    "needs at least 2 (some known, some to generate)")
        for width_key, heads_key in (("width", "num_heads"), ("decoder_width", "decoder_heads")):
            if problems.ok(f"model.{width_key}", f"model.{heads_key}") and m[width_key] % m[heads_key]:
                problems.append(f"config.model.{width_key}={m[width_key]} is not divisible by "
                                f"{heads_key}={m[heads_key]}")
            if problems.ok(f"model.{width_key}", "model.mlp_ratio") and int(m[width_key] * m.mlp_ratio) < 1:
                problems.append(f"config.model.mlp_ratio={m.mlp_ratio} gives MLPs of width "
                                f"{int(m[width_key] * m.mlp_ratio)} at {width_key}={m[width_key]}; it must give at least 1")
        return problems

    def info(self) -> dict[str, Any]:
        return {"token_shape": self.token_shape, "data_shape": self.data_shape, "num_classes": self.num_classes,
                "sampling": self.sampling, "tokenizer": self.tokenizer, "tasks": sorted(self.supported_tasks()),
                "data_field": self.data_field, "patch_size": self.patch_size, "generator": "mar"}

    def supported_tasks(self) -> frozenset:
        return check_tasks({"class", "infill"} if self.conditioned else {"none", "infill"})

    def make_model(self, rngs: nnx.Rngs) -> MAR:
        return MAR(rngs=rngs, **self.model_kwargs)

    # ---- tokens
    def to_tokens(self, data: jax.Array) -> jax.Array:
        """[B, *data_shape] -> continuous tokens [B, N, token_dim] (patches in raster order)."""
        if tuple(data.shape[1:]) != self.data_shape:
            raise ValueError(f"MAR expects data of shape {self.data_shape} per example, got {tuple(data.shape[1:])}")
        return patchify(data.astype(jnp.float32), self.patch_size)

    def from_tokens(self, tokens: jax.Array) -> jax.Array:
        """[B, N, token_dim] -> [B, *data_shape]."""
        return unpatchify(tokens, self.patch_size, self.data_shape[0], self.data_shape[1])

    def _batch_data(self, batch) -> jax.Array:
        if self.data_field not in batch:
            raise ValueError(f"a MAR batch needs {self.data_field!r} (the run's data field); got {sorted(batch)}")
        return batch[self.data_field]

    def _train_labels(self, rng: jax.Array, batch, batch_size: int) -> jax.Array:
        """Labels with class dropout to the null class (all null for an unconditional model)."""
        null = jnp.full((batch_size,), self.num_classes, jnp.int32)
        if not self.conditioned:
            return null
        drop = jax.random.uniform(rng, (batch_size,)) < self.class_dropout
        return jnp.where(drop, null, batch["label"].astype(jnp.int32))

    # ---- training
    def diffusion_loss(self, head, tokens: jax.Array, z: jax.Array, masked: jax.Array, rng: jax.Array):
        """The per-token diffusion loss on every token, each repeated `diffusion_batch_mul` times with
        its own t and noise, averaged over the masked ones. tokens [B, N, D], z [B, N, width],
        masked bool [B, N]. Returns (loss, per-draw losses [mul, B, N])."""
        mul = self.diffusion_batch_mul
        x0 = jnp.broadcast_to(tokens[None], (mul,) + tokens.shape).reshape(-1, tokens.shape[-1])
        cond = jnp.broadcast_to(z[None], (mul,) + z.shape).reshape(-1, z.shape[-1])
        noisy = self.objective.corrupt(x0, rng)
        per_draw = self.objective.loss(head(noisy["x_in"], noisy["time"], cond), noisy)
        per_draw = per_draw.reshape((mul,) + tokens.shape[:2])
        return masked_token_mean(per_draw, jnp.broadcast_to(masked[None], per_draw.shape)), per_draw

    def loss(self, model: MAR, batch, rng, step=None):
        tokens = self.to_tokens(self._batch_data(batch))
        b = tokens.shape[0]
        order_rng, ratio_rng, class_rng, diffusion_rng, dropout_rng = jax.random.split(rng, 5)
        num_masked = sample_num_masked(ratio_rng, self.num_positions, self.mask_ratio_min, self.mask_ratio_std)
        masked, positions, valid = training_mask(random_orders(order_rng, b, self.num_positions), num_masked,
                                                 self.num_slots)
        visible = jnp.take_along_axis(tokens, positions[..., None], axis=1)
        z = model(visible, positions, valid, self._train_labels(class_rng, batch, b),
                  dropout_rng=dropout_rng if self.dropout > 0 else None, remat=True)
        loss, _ = self.diffusion_loss(model.head, tokens, z, masked, diffusion_rng)
        return loss, {"mask_ratio": num_masked.astype(jnp.float32) / self.num_positions}

    # ---- generation
    def _start(self, batch) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(tokens [B, N, D] float32, known bool [B, N], labels int32 [B]) of a task batch."""
        if "tokens" in batch or "known" in batch:
            if "tokens" not in batch or "known" not in batch:
                raise ValueError("batch['tokens'] and batch['known'] go together: the known mask says which "
                                 "positions are given")
            data, known = batch["tokens"], batch["known"]
            b = data.shape[0]
            if tuple(known.shape[1:]) != self.token_shape:
                raise ValueError(f"batch['known'] is {tuple(known.shape[1:])} per example; MAR's known mask is per "
                                 f"position, {self.token_shape}")
            if jnp.issubdtype(data.dtype, jnp.integer):
                # An integer placeholder grid (maskgen.tasks.unconditional_batch) carries no token values.
                data = jnp.zeros((b,) + self.data_shape, jnp.float32)
            tokens, known = self.to_tokens(data), known.reshape(b, self.num_positions).astype(bool)
        elif "label" in batch:
            b = batch["label"].shape[0]
            tokens = jnp.zeros((b, self.num_positions, self.token_dim), jnp.float32)
            known = jnp.zeros((b, self.num_positions), bool)
        else:
            raise ValueError("generate needs a batch with 'label' (class task), or 'tokens' and 'known' (infill)")
        if self.conditioned and "label" in batch:
            labels = batch["label"].astype(jnp.int32)
        elif self.conditioned and "tokens" not in batch:
            raise ValueError("a class-conditional MAR needs batch['label']")
        else:  # unconditional model, or an infill without a class: the null class
            labels = jnp.full((b,), self.num_classes, jnp.int32)
        return tokens, known, labels

    def generate(self, model: MAR, batch, rng, *, num_steps: int = 64, diffusion_steps: int = 100,
                 sampler: str = "ddpm", temperature: float = 1.0, cfg_scale: float = 1.0,
                 cfg_schedule: str = "linear", **unused):
        """MAR's iterative generation (see the module docstring). `batch`: {"label" [B]} (class task)
        or {"tokens" float [B, *data_shape], "known" bool [B, *token_shape], optional "label"}
        (infill: known positions are kept bit-exact). Settings: `num_steps` outer iterations (MAR's
        num_iter), `diffusion_steps` and `sampler` of the head, `temperature` (tau, on the head's
        sampling noise), `cfg_scale` (w; 1 runs no unconditional pass) and `cfg_schedule`.
        Returns {"tokens" float32 [B, *data_shape], "nfe": head evaluations (int)}."""
        del unused  # other generators' settings (e.g. MaskGIT's choice_temperature, an edit's start_step)
        start, known, labels = self._start(batch)
        b, n, d = start.shape
        counts = mask_counts(n, int(num_steps))
        previous = np.concatenate([[n], counts[:-1]]).astype(np.int32)
        num_reveal = int(np.max(previous - counts))  # the most any iteration reveals: static slot count
        guided = self.conditioned and float(cfg_scale) != 1.0
        scales = jnp.asarray(cfg_scales(n, counts, float(cfg_scale), cfg_schedule))
        counts, previous = jnp.asarray(counts), jnp.asarray(previous)

        order_rng, loop_rng = jax.random.split(rng)
        # Unknown positions first, in a random order; known ones last (already revealed).
        order = jnp.argsort(jnp.where(known, 2.0, jax.random.uniform(order_rng, (b, n))), axis=-1).astype(jnp.int32)
        rank = jnp.argsort(order, axis=-1)
        num_unknown = jnp.sum(~known, axis=-1).astype(jnp.int32)
        all_positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        null = jnp.full_like(labels, self.num_classes)
        rows = jnp.arange(b)[:, None]
        nfe_per_iteration = []

        def step(k, carry):
            tokens, rng = carry
            rng, noise_rng, sample_rng = jax.random.split(rng, 3)
            still = jnp.minimum(previous[k], num_unknown)  # masked before this iteration
            after = jnp.minimum(counts[k], num_unknown)  # masked after it
            valid = rank >= still[:, None]
            slot_rank = after[:, None] + jnp.arange(num_reveal, dtype=jnp.int32)[None]
            reveal = slot_rank < still[:, None]
            slot_pos = jnp.take_along_axis(order, jnp.minimum(slot_rank, n - 1), axis=1)

            def head_condition(z):
                picked = jnp.take_along_axis(z, slot_pos[..., None], axis=1)
                return model.head.condition(picked.reshape(b * num_reveal, -1))

            if guided:
                z = model(jnp.concatenate([tokens, tokens]), jnp.concatenate([all_positions, all_positions]),
                          jnp.concatenate([valid, valid]), jnp.concatenate([labels, null]))
                network = guided_network(
                    self.objective, lambda x, t, c: model.head(x, t, c, z_embedded=True),
                    head_condition(z[:b]), head_condition(z[b:]), scales[k], schedule="constant")
            else:
                cond = head_condition(model(tokens, all_positions, valid, labels))
                network = lambda x, t: model.head(x, t, cond, z_embedded=True)  # noqa: E731
            noise = jax.random.normal(noise_rng, (b * num_reveal, d), jnp.float32)
            sampled, nfe = sample(self.objective, network, noise, sample_rng, sampler=sampler,
                                  num_steps=int(diffusion_steps), temperature=float(temperature))
            nfe_per_iteration.append(nfe)
            target = jnp.where(reveal, slot_pos, n)  # index n: dropped
            tokens = tokens.at[rows, target].set(sampled.reshape(b, num_reveal, d).astype(tokens.dtype), mode="drop")
            return tokens, rng

        tokens, _ = jax.lax.fori_loop(0, int(num_steps), step, (start, loop_rng))
        tokens = jnp.where(known[..., None], start, tokens)  # known tokens bit-exact
        return {"tokens": self.from_tokens(tokens), "nfe": int(num_steps) * int(nfe_per_iteration[0])}

    def sample(self, model: MAR, batch, rng):
        """Rows for a grid (pixel data only: latents need the tokenizer run, see the generation
        evaluator): "original", "known" (the top half, the rest grey), "infilled" (the bottom half
        regenerated for the example's class) and "generated" (new samples of the same classes)."""
        if self.data_field != "image":
            raise ValueError("MAR's sample grid shows pixels; a latent-space run is shown through its tokenizer "
                             "run by the generation evaluator (samples grid), not by image_grid")
        images = self._batch_data(batch).astype(jnp.float32)
        b = images.shape[0]
        known = jnp.broadcast_to(jnp.arange(self.token_shape[0])[:, None] < self.token_shape[0] // 2,
                                 self.token_shape)
        known = jnp.broadcast_to(known, (b,) + self.token_shape)
        settings = {k: v for k, v in self.sampling.items() if k in self.decode_options}
        infill_rng, class_rng = jax.random.split(rng)
        task = {"tokens": images, "known": known}
        label_batch = {"label": batch["label"]} if self.conditioned and "label" in batch else {}
        infilled = self.generate(model, {**task, **label_batch}, infill_rng, **settings)["tokens"]
        pixel_known = jnp.repeat(jnp.repeat(known, self.patch_size, axis=1), self.patch_size, axis=2)[..., None]
        rows = {"original": images, "known": jnp.where(pixel_known, images, 0.0),
                "infilled": jnp.clip(infilled, -1.0, 1.0)}
        if label_batch:
            rows["generated"] = jnp.clip(self.generate(model, label_batch, class_rng, **settings)["tokens"], -1.0, 1.0)
        return rows


__all__ = ["MARRecipe", "CONFIG_SPEC", "mask_counts", "cfg_scales", "sample_num_masked", "random_orders",
           "training_mask", "masked_token_mean", "min_masked"]
