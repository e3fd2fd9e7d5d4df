"""A run, below the training loop: its config, its model on the mesh, and its weights.

`setup(config)` checks a config against the devices and the data and builds what training,
evaluation and sampling share (the `Run`: mesh, recipe, sharded model template).
`restore_variables` loads a run's params or EMA *without building an optimizer*: only the model's
arrays are read from the checkpoint (`Checkpointer.restore_model`). `RunHandle` is a restored run
that callers use through the recipe's declared methods (`apply("generate", ...)`), and
`TokenizerHandle` one that encodes and decodes. `make_eval_context` gives evaluators what they may
use: the recipe's methods under jit, ordered data batches, a decoder for the data's outputs
(tokens -> images through the tokenizer run that made them, scaled latents -> images through the
KL tokenizer run that made them, audio tokens -> waveforms through the codec or mel tokenizer run that
made them, pixel arrays -> clipped images, token ids -> text) and other runs
(`open_run`, e.g. an AR model that scores samples), so evaluators import nothing above their layer.

`train.py` (the loop), `tokenize.py` and `generate.py` sit above this module; recipes,
evaluators and data sit below it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from maskgen import parallel
from maskgen.audio import features as audio_features
from maskgen.checkpoint import load_run_config, restore_run_model  # noqa: F401 (load_run_config: re-exported)
from maskgen.config import ConfigError, validate_common
from maskgen.data.run_info import load_run_data_info
from maskgen.data import data_options, eval_batches, make_source, preprocess_from_config, source_info
from maskgen.evaluators import EvalContext, EvalResult, build_evaluator
from maskgen.metrics import MetricWriter
from maskgen.recipes import Recipe, get_recipe, recipe_names, recipes_with

log = logging.getLogger("maskgen")


@dataclasses.dataclass
class Run:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: tuple
    data_info: dict
    recipe: Recipe
    graphdef: Any
    # Model variables are {"params": trainable nnx.Param values, "model_state": everything else
    # (e.g. EMA codebooks, usage counters)}, both pure dicts; shardings have the same tree.
    variable_shardings: Any
    init_variables: Callable[[jax.Array], Any]  # key -> sharded variables (jitted; call inside `context()`)
    # Example -> model input, chosen by the data's field specs (images resized to data.image_size,
    # token ids and text passed through, ...): nothing else in the loop knows what the data is.
    preprocess: Any = None
    compiled_methods: dict = dataclasses.field(default_factory=dict)  # recipe method name -> jitted fn

    @property
    def param_shardings(self):
        return self.variable_shardings["params"]

    def merge(self, variables) -> nnx.Module:
        """The NNX module for `{"params", "model_state"}` (inside jit: a pure rebuild)."""
        return nnx.merge(self.graphdef, variables["params"], variables["model_state"])

    def context(self):
        """Mesh + logical rules, needed while tracing anything that creates parameters."""
        return parallel.sharding_context(self.mesh, self.rules)


def setup(config: ml_collections.ConfigDict, data_info: dict | None = None) -> Run:
    """Checks the config against the devices and data, and builds what train/eval/sample share.

    `data_info` (the dataset's shapes, as `source_info` returns them) is read from the data source
    unless given, e.g. by tools that only compile the model for a dataset that is not on this machine.
    """
    validate_common(config, jax.device_count(), jax.process_count(), recipe_names())
    recipe_cls = get_recipe(config.recipe)
    if data_info is None:
        data_info = source_info(config.data.name, config.data.data_dir or None, data_options(config.data))
    problems = recipe_cls.validate(config, data_info)
    for name, spec in config.evals.items():
        try:
            build_evaluator(name, spec.to_dict())
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    recipe = recipe_cls.from_config(config, data_info)
    mesh = parallel.make_mesh(config.mesh)
    rules = parallel.logical_rules(config.sharding_rules)
    try:
        with parallel.sharding_context(mesh, rules):
            abstract_model = nnx.eval_shape(lambda: recipe.make_model(nnx.Rngs(0)))
            graphdef, abstract_params, abstract_rest = nnx.split(abstract_model, nnx.Param, ...)
            variable_shardings = {
                "params": nnx.to_pure_dict(nnx.get_named_sharding(abstract_params, mesh)),
                "model_state": nnx.to_pure_dict(nnx.get_named_sharding(abstract_rest, mesh)),
            }
    except ValueError as err:
        if "not found in mesh" not in str(err):
            raise
        # A logical axis with no rule is taken for a mesh axis of that name (flax's fallback).
        raise ConfigError(
            f"config.sharding_rules has no rule for a logical axis the model's parameters use ({err}); give every "
            f"logical axis a rule, mapping it to mesh axes of {tuple(mesh.shape)} or to None (the defaults are "
            "maskgen.config.DEFAULT_SHARDING_RULES)") from None

    def make_variables(key):
        _, params, rest = nnx.split(recipe.make_model(nnx.Rngs(params=key)), nnx.Param, ...)
        return {"params": nnx.to_pure_dict(params), "model_state": nnx.to_pure_dict(rest)}

    init_variables = jax.jit(make_variables, out_shardings=variable_shardings)
    preprocess = preprocess_from_config(config.data, data_info)
    return Run(config, mesh, rules, data_info, recipe, graphdef, variable_shardings, init_variables, preprocess)




# --------------------------------------------------------------------------------------------
# Restoring a run's weights: the model only, never the optimizer.
# --------------------------------------------------------------------------------------------
def abstract_variables(run: Run):
    """The model's variables as sharded ShapeDtypeStructs (nothing is allocated)."""
    with run.context():
        shapes = jax.eval_shape(run.init_variables, jax.random.key(0))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes,
                        run.variable_shardings)


def restore_variables(run: Run, workdir: str, step: int | None = None, which: str | None = None):
    """Loads `params` or `ema` (default: `config.eval_params`) of a step (default: the newest
    readable one), with the non-trainable model state. Returns `(step, {"params", "model_state"})`.

    Only the model's arrays are read; the optimizer state is neither built nor loaded.
    """
    return restore_run_model(workdir, abstract_variables(run), step=step, which=which or run.config.eval_params,
                             keep=run.config.keep_checkpoints)


# --------------------------------------------------------------------------------------------
# Evaluation plumbing shared by the loop and `maskgen eval` / `maskgen sample`.
# --------------------------------------------------------------------------------------------
def make_eval_context(run: Run, params, step: int, workdir: str = "") -> EvalContext:
    config, cache, sources = run.config, run.compiled_methods, {}

    def pure_method(name: str, **static):
        """The recipe's `name` as an un-jitted `(variables, batch, rng) -> output` (EvalContext.method)."""
        if name.startswith("_") or not callable(getattr(run.recipe, name, None)):
            raise ValueError(f"the {config.recipe!r} recipe has no method {name!r}")

        def fn(variables, batch, rng):
            return getattr(run.recipe, name)(run.merge(variables), batch, rng, **static)

        return fn

    def apply(method: str, params, batch, rng, **static):
        # `static` settings (e.g. decoding steps) are baked into the compiled function, one per value.
        key = (method, tuple(sorted(static.items())))
        if key not in cache:
            cache[key] = jax.jit(pure_method(method, **static))
        with jax.set_mesh(run.mesh):
            return cache[key](params, batch, rng)

    batch_multiple = parallel.batch_sharding(run.mesh, run.rules).num_devices

    def shard(full_batch):
        """A host batch that every process holds in full -> global arrays (this process's rows)."""
        rows = len(next(iter(full_batch.values())))
        if rows % batch_multiple:
            raise ValueError(f"batch of {rows} rows does not split over {batch_multiple} data-parallel devices")
        local = rows // jax.process_count()
        start = jax.process_index() * local
        return parallel.global_batch({k: np.asarray(v)[start:start + local] for k, v in full_batch.items()},
                                     run.mesh, run.rules)

    def batches(split: str, limit: int | None = None):
        if split not in sources:
            sources[split] = make_source(config.data.name, split, config.data.data_dir or None,
                                          data_options(config.data))
        for local, valid in eval_batches(sources[split], run.preprocess, global_batch_size=config.batch_size,
                                         process_index=jax.process_index(), process_count=jax.process_count(),
                                         limit=limit):
            yield parallel.global_batch(local, run.mesh, run.rules), valid

    def init_params(seed: int):
        with run.context():
            return run.init_variables(jax.random.key(seed))

    decoder = _LazyDecoder(config, run.data_info)
    return EvalContext(
        step=step, params=params, apply=apply, init_params=init_params,
        batches=batches, to_host=parallel.to_host, rng=jax.random.key(config.seed + 7),
        info=run.recipe.info(), workdir=workdir, shard=shard, batch_multiple=batch_multiple,
        decode=decoder.decode, reference=decoder.reference, open_run=open_run, method=pure_method,
    )


class _LazyDecoder:
    """Builds the run's decoder (which may restore a tokenizer run) only when an evaluator asks."""

    def __init__(self, config, data_info):
        self.config, self.data_info, self._decoder = config, data_info, None

    def _get(self) -> Decoder:
        if self._decoder is None:
            self._decoder = make_decoder(self.config, self.data_info)
            if self._decoder is None:
                raise ValueError(f"the {self.config.data.name!r} data of this run has no decoder: decoding applies "
                                 "to image, latent, token (image or audio) and text datasets")
        return self._decoder

    def decode(self, tokens):
        return self._get().decode(tokens)

    def reference(self, split: str, limit: int | None = None):
        return self._get().reference(split, limit)


def run_evaluators(run: Run, params, step: int, writer: MetricWriter, names=None) -> dict[str, EvalResult]:
    results = {}
    ctx = make_eval_context(run, params, step, writer.workdir)
    for name, spec in run.config.evals.items():
        if names is not None and name not in names:
            continue
        start = time.perf_counter()
        result = build_evaluator(name, spec.to_dict()).run(ctx)
        scalars = {f"{name}/{k}": v for k, v in result.scalars.items()}
        if scalars:
            writer.write_scalars(step, scalars)
        for path in writer.write_outputs(step, name, images=result.images, audio=result.audio, texts=result.texts):
            log.info("[%s] wrote %s", name, path)
        log.info("[%s] step %d (%.1fs): %s", name, step, time.perf_counter() - start,
                 ", ".join(f"{k}={v:.4f}" for k, v in scalars.items()) or "outputs only")
        results[name] = result
    return results




# --------------------------------------------------------------------------------------------
# What a run's outputs decode to, and the reference data they are compared with.
# --------------------------------------------------------------------------------------------
class Decoder:
    """Turns a model's outputs (its data arrays: token ids, latents, pixels) into what they stand for
    (images, text), and gives the reference data those are compared with. `decode(tokens) ->
    {"images": float [n, H, W, C] in [-1, 1]}` or `{"texts": [str]}`; `reference(split, limit) ->
    {"image": ..., "label": ...}` (host arrays of model inputs) for images.

    Image decoders also have `encode(images [B, H, W, C] in [-1, 1]) -> the generator's data array`
    (for `maskgen edit`), and `data_config` / `channels`: the data group and channel count of the
    images they decode to (the tokenizer run's for token and latent data, the run's own for pixels),
    which `maskgen.generate.load_image` reads."""

    kind = ""

    def decode(self, tokens: np.ndarray) -> dict:
        raise NotImplementedError

    def reference(self, split: str, limit: int | None = None) -> dict:
        raise NotImplementedError

    def encode(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot encode images")


def _in_batches(fn: Callable[[np.ndarray], np.ndarray], array: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """fn over `array` in row chunks of at most batch_size (bounded memory on a large sample set)."""
    return np.concatenate([fn(array[i:i + batch_size]) for i in range(0, len(array), batch_size)])


class TokenizerDecoder(Decoder):
    """Token grids made by `maskgen tokenize` -> images, through the tokenizer run that made them."""

    kind = "images"

    def __init__(self, tokenizer: "TokenizerHandle"):
        self.tokenizer = tokenizer

    @property
    def data_config(self):
        return self.tokenizer.config.data

    @property
    def channels(self) -> int:
        return int(self.tokenizer.run.data_info["image_shape"][-1])

    def decode(self, tokens: np.ndarray, batch_size: int = 256) -> dict:
        return {"images": np.clip(_in_batches(self.tokenizer.decode, np.asarray(tokens), batch_size), -1.0, 1.0)}

    def reference(self, split: str, limit: int | None = None) -> dict:
        return self.tokenizer.dataset(split, limit)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images [B, H, W, C] in [-1, 1] -> the tokenizer's int token grids."""
        return self.tokenizer.encode(images)


class LatentDecoder(TokenizerDecoder):
    """Latents made by `maskgen tokenize` from a KL tokenizer run -> images. The generator's latents
    are scaled (the pipeline multiplied the stored means by `scale`); decoding divides by it and
    runs the tokenizer's decoder, and `encode` is the tokenizer's encoder (its means) times `scale`."""

    def __init__(self, tokenizer: "TokenizerHandle", scale: float):
        if not tokenizer.info.get("continuous", False):
            raise ValueError(f"latent data needs a continuous (model.quantizer='kl') tokenizer run to decode it; "
                             f"{tokenizer.workdir} is a {tokenizer.info.get('quantizer')!r} tokenizer")
        super().__init__(tokenizer)
        self.scale = float(scale)

    def decode(self, latents: np.ndarray, batch_size: int = 256) -> dict:
        unscaled = np.asarray(latents, np.float32) / np.float32(self.scale)
        return {"images": np.clip(_in_batches(self.tokenizer.decode, unscaled, batch_size), -1.0, 1.0)}

    def encode(self, images: np.ndarray) -> np.ndarray:
        """images [B, H, W, C] in [-1, 1] -> scaled latents [B, h, w, D], as the generator trained on."""
        return np.asarray(self.tokenizer.encode(images), np.float32) * np.float32(self.scale)


class AudioDecoder(Decoder):
    """Token grids or code streams made by `maskgen tokenize` from an audio tokenizer run -> audio.

    The tokenizer run's info says what its `decode` returns ("decodes_to"): "log_mel", the scaled
    log-mel grid [n, n_mels, frames, 1] of the mel tokenizer (SpecMaskGIT, arXiv 2406.17672) or of
    the log-mel codec (`codec` with model.input="log_mel": [frames, K] code streams, the acoustic
    tokens of MAGNeT and MaskGCT), which is unscaled and turned into a waveform by Griffin-Lim
    (`features.mel_to_audio` with the run's info()["mel"] and `griffin_lim_iters`; maskgen trains no
    neural vocoder); or "audio", a waveform [n, T, 1] (the waveform codec), whose log-mel is
    computed from it. `decode(tokens) -> {"audio": float32 [n, T, 1] in
    [-1, 1], "sample_rate": int, "log_mel": float32 [n, frames, n_mels] (natural-log mel, for
    spectrogram images)}`, T the tokenizer data's clip length; `reference(split, limit) -> {"audio",
    "label"}` (the tokenizer run's data); `encode(audio [B, T, 1]) -> tokens` (for `maskgen edit`)."""

    kind = "audio"

    def __init__(self, tokenizer: "TokenizerHandle", griffin_lim_iters: int | None = None):
        info = tokenizer.info
        self.tokenizer, self.decodes_to = tokenizer, info["decodes_to"]
        if self.decodes_to not in ("audio", "log_mel"):
            raise ValueError(f"{tokenizer.workdir}: decodes_to={self.decodes_to!r}; audio decoding needs 'audio' or "
                             "'log_mel'")
        self.sample_rate = int(info["sample_rate"])
        self.mel = audio_features.MelConfig.from_dict(info["mel"])
        fields = tokenizer.run.data_info.get("fields") or {}
        audio_spec = next((spec for spec in fields.values() if getattr(spec, "kind", None) == "audio"), None)
        self.num_samples = int(info.get("num_samples") or (audio_spec.shape[0] if audio_spec else 0)) or None
        self.class_names = list(tokenizer.run.data_info.get("class_names") or [])
        self.griffin_lim_iters = int(griffin_lim_iters or info.get("griffin_lim_iters", 32))
        self._vocoder = jax.jit(functools.partial(audio_features.mel_to_audio, cfg=self.mel,
                                                  num_iters=self.griffin_lim_iters))
        self._log_mel = jax.jit(functools.partial(audio_features.log_mel, cfg=self.mel))

    @property
    def token_shape(self) -> tuple:
        return tuple(self.tokenizer.info["token_shape"])

    @property
    def seconds_per_frame(self) -> float:
        return self.mel.hop / self.sample_rate

    def _fit_length(self, audio: np.ndarray) -> np.ndarray:
        """[n, t] -> [n, num_samples]: zero-padded at the end (the mel tokenizer may keep fewer frames
        than the clip has, e.g. SpecMaskGIT's 848 of 861) or cut."""
        if self.num_samples is None or audio.shape[1] == self.num_samples:
            return audio
        if audio.shape[1] > self.num_samples:
            return audio[:, :self.num_samples]
        return np.pad(audio, ((0, 0), (0, self.num_samples - audio.shape[1])))

    def vocode(self, log_mel: np.ndarray) -> np.ndarray:
        """Natural-log mel [n, frames, n_mels] -> waveform [n, T] (Griffin-Lim), clipped to [-1, 1]."""
        audio = np.asarray(self._vocoder(np.asarray(log_mel, np.float32)))
        return np.clip(self._fit_length(audio), -1.0, 1.0)

    def decode(self, tokens: np.ndarray, batch_size: int = 64) -> dict:
        tokens = np.asarray(tokens)
        if self.decodes_to == "log_mel":
            scaled = _in_batches(self.tokenizer.decode, tokens, batch_size)  # [n, n_mels, frames, 1]
            log_mel = np.asarray(audio_features.unscale_log_mel(np.transpose(scaled[..., 0], (0, 2, 1))))
            audio = _in_batches(self.vocode, log_mel, batch_size)
        else:
            audio = np.clip(_in_batches(self.tokenizer.decode, tokens, batch_size)[..., 0], -1.0, 1.0)
            audio = self._fit_length(audio)
            log_mel = _in_batches(lambda a: np.asarray(self._log_mel(a)), audio, batch_size)
        return {"audio": audio[..., None].astype(np.float32), "sample_rate": self.sample_rate,
                "log_mel": np.asarray(log_mel, np.float32)}

    def reference(self, split: str, limit: int | None = None) -> dict:
        return self.tokenizer.dataset(split, limit)

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """audio [B, T, 1] in [-1, 1] (T the tokenizer data's clip length) -> the tokenizer's tokens."""
        audio = np.asarray(audio, np.float32)
        if audio.ndim != 3 or audio.shape[-1] != 1 or (self.num_samples and audio.shape[1] != self.num_samples):
            raise ValueError(f"encode expects mono audio [B, {self.num_samples or 'T'}, 1], got {audio.shape}")
        return self.tokenizer.apply("encode", {"audio": audio})


class ImageDecoder(Decoder):
    """Pixel data (e.g. digits) for a generator that models pixels: its outputs are images already.
    decode clips to [-1, 1]; reference is the run's own data split; encode is the identity."""

    kind = "images"

    def __init__(self, data_config, data_info: dict, batch_size: int = 256):
        from maskgen.data import preprocess_from_config

        self.data_config, self.data_info, self.batch_size = data_config, data_info, batch_size
        self.channels = int(data_info["image_shape"][-1])
        # The run's own deterministic preprocessing (its image size), without augmentation.
        data = {k: v for k, v in data_config.items()} | {"augment": "none"}
        self._preprocess = preprocess_from_config(data, data_info)

    def decode(self, images: np.ndarray) -> dict:
        return {"images": np.clip(np.asarray(images, np.float32), -1.0, 1.0)}

    @functools.lru_cache(maxsize=8)
    def reference(self, split: str, limit: int | None = None) -> dict:
        """The run's data split as model inputs {"image", "label"} (cached; do not modify)."""
        data = self.data_config
        source = make_source(data.name, split, data.data_dir or None, data_options(data))
        count = len(source) if limit is None else min(limit, len(source))
        batches = [b for b, _ in eval_batches(source, self._preprocess, global_batch_size=self.batch_size,
                                               limit=count)]
        return {k: np.concatenate([np.asarray(b[k]) for b in batches])[:count] for k in batches[0]}

    def encode(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != self.channels:
            raise ValueError(f"encode expects images [B, H, W, {self.channels}] in [-1, 1], got {images.shape}")
        return images


class TextDecoder(Decoder):
    """Token ids -> text, with the text source's own tokenizer."""

    kind = "texts"

    def __init__(self, data_name: str, data_dir: str | None, options: dict):
        self.data_name, self.data_dir, self.options = data_name, data_dir, options

    def decode(self, tokens: np.ndarray) -> dict:
        from maskgen.data import text

        return {"texts": [text.decode(row) for row in np.asarray(tokens).reshape(len(tokens), -1)]}

    def reference(self, split: str, limit: int | None = None) -> dict:
        source = make_source(self.data_name, split, self.data_dir, self.options)
        count = len(source) if limit is None else min(limit, len(source))
        return {"tokens": np.stack([np.asarray(source[i]["tokens"], np.int32) for i in range(count)])}


def _field_of_kind(data_info: dict, kind: str):
    """The first (name, spec) of data_info's fields of this kind, or (None, None)."""
    for name, spec in (data_info.get("fields") or {}).items():
        if getattr(spec, "kind", None) == kind:
            return name, spec
    return None, None


def _is_text(data_info: dict) -> bool:
    return _field_of_kind(data_info, "text")[1] is not None


def make_decoder(config: ml_collections.ConfigDict, data_info: dict) -> Decoder | None:
    """The decoder for a run's data: text for text sources; for a dataset written by `maskgen
    tokenize`, the tokenizer run it names (LatentDecoder for latents, AudioDecoder when the
    tokenizer decodes to audio or a log-mel, TokenizerDecoder for image token ids); ImageDecoder
    for pixel data; else None."""
    if _is_text(data_info):
        return TextDecoder(config.data.name, config.data.data_dir or None, data_options(config.data))
    tokenizer = data_info.get("tokenizer") or {}
    latent_name, latents = _field_of_kind(data_info, "latents")
    if latents is not None:
        if not tokenizer.get("workdir"):
            raise ValueError(f"the latent dataset {config.data.data_dir or config.data.name!r} names no tokenizer "
                             "run in its metadata.json, so its latents cannot be decoded; write it with "
                             "`maskgen tokenize`")
        if latents.scale is None:
            from maskgen.data.specs import missing_scale_error

            raise missing_scale_error(latent_name, config.data.data_dir or config.data.name)
        return LatentDecoder(open_tokenizer(tokenizer["workdir"], tokenizer.get("step")), latents.scale)
    if tokenizer.get("workdir"):
        handle = open_tokenizer(tokenizer["workdir"], tokenizer.get("step"))
        if handle.info.get("decodes_to") in ("audio", "log_mel"):
            return AudioDecoder(handle)
        return TokenizerDecoder(handle)
    if data_info.get("image_shape") is not None:
        return ImageDecoder(config.data, data_info, config.get("batch_size", 256))
    return None




# --------------------------------------------------------------------------------------------
# Restored runs, used through the recipe's declared methods.
# --------------------------------------------------------------------------------------------
class RunHandle:
    """A trained run, restored for inference: `apply(method, host_batch, rng, **static)` runs one
    of the recipe's declared methods (jitted, sharded over the run's mesh) on a host batch of any
    row count and returns host numpy arrays with the same rows."""

    def __init__(self, workdir: str, step: int | None = None, which: str | None = None, config=None):
        self.workdir = workdir
        self.config = config if config is not None else load_run_config(workdir)
        self.recipe_cls = get_recipe(self.config.recipe)
        # An imported run (maskgen.weights) saved its data shapes, since its dataset may not be here.
        self.run = setup(self.config, load_run_data_info(workdir))
        self.recipe = self.run.recipe
        self.step, self.variables = restore_variables(self.run, workdir, step, which)
        self.info = self.recipe.info()
        self.ctx = make_eval_context(self.run, self.variables, self.step, workdir)
        self.batch_multiple = self.ctx.batch_multiple

    def can(self, capability: str) -> bool:
        return capability in self.recipe_cls.capabilities

    def require(self, capability: str, doing: str) -> None:
        if not self.can(capability):
            raise ValueError(f"{doing} needs a run whose recipe can {capability!r} ({', '.join(recipes_with(capability))}); "
                             f"{self.workdir} is a {self.config.recipe!r} run")

    def apply(self, method: str, batch: dict, rng: jax.Array | int = 0, **static):
        rows = len(next(iter(batch.values())))
        pad = (-rows) % self.batch_multiple  # the batch must split evenly over the data-parallel devices
        padded = {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[-1:], pad, axis=0)]) if pad else np.asarray(v)
                  for k, v in batch.items()}
        key = jax.random.key(rng) if isinstance(rng, int) else rng
        out = self.ctx.to_host(self.ctx.apply(method, self.variables, self.ctx.shard(padded), key, **static))
        return jax.tree.map(lambda a: np.asarray(a)[:rows] if np.ndim(a) and len(a) == rows + pad else np.asarray(a), out)


class TokenizerHandle(RunHandle):
    """A restored tokenizer: `encode(images) -> int tokens` and `decode(tokens) -> images`.

    Images are float [B, H, W, C] in [-1, 1] at the run's `config.data.image_size`; tokens are
    int32 [B, h, w] (or [B, h, w, K] for residual VQ), or for a continuous (kl) tokenizer the
    unscaled latent means, float32 [B, h, w, D]. Both are compiled once per shape, run on the run's
    mesh with the batch sharded over the data axes, and return numpy arrays.
    """

    def __init__(self, workdir: str, step: int | None = None, which: str | None = None):
        config = load_run_config(workdir)
        if "encode" not in get_recipe(config.recipe).capabilities:
            raise ValueError(f"{workdir} is a {config.recipe!r} run, not a tokenizer run "
                             f"({', '.join(recipes_with('encode'))})")
        super().__init__(workdir, step, which, config)
        self._multiple = self.batch_multiple

    def encode(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        expected = (self.config.data.image_size,) * 2
        if images.ndim != 4 or images.shape[1:3] != expected:
            raise ValueError(f"encode expects images [B, {expected[0]}, {expected[1]}, C] in [-1, 1], got {images.shape}")
        return self.apply("encode", {"image": images})

    @property
    def continuous(self) -> bool:
        return bool(self.info.get("continuous", False))

    def decode(self, tokens) -> np.ndarray:
        self.require("decode", "decoding tokens")  # an encode-only run (feature_tokenizer) has no decoder
        if self.continuous:
            latents = np.asarray(tokens, np.float32)
            shape = tuple(self.info["token_shape"]) + (int(self.info["latent_channels"]),)
            if latents.shape[1:] != shape:
                raise ValueError(f"decode expects latents [B, {', '.join(map(str, shape))}], got {latents.shape}")
            if not np.all(np.isfinite(latents)):
                raise ValueError("decode got non-finite latents (NaN or inf)")
            return self.apply("decode", {"codes": latents})
        tokens = np.asarray(tokens, np.int32)
        shape = tuple(self.info["token_shape"])
        if tokens.shape[1:] != shape:
            raise ValueError(f"decode expects tokens [B, {', '.join(map(str, shape))}], got {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.info["codebook_size"]:
            raise ValueError(f"token ids must be in [0, {self.info['codebook_size']}), got [{tokens.min()}, {tokens.max()}]")
        return self.apply("decode", {"codes": tokens})

    @functools.lru_cache(maxsize=8)
    def dataset(self, split: str, limit: int | None = None) -> dict:
        """This tokenizer's own dataset split as model inputs {"image", "label"} (what its tokens were
        made from); cached, so repeated evaluations decode the images once. Do not modify."""
        data = self.config.data
        source = make_source(data.name, split, data.data_dir or None, data_options(data))
        count = len(source) if limit is None else min(limit, len(source))
        batches = [b for b, _ in _eval_batches(source, self.run, count)]
        out = {k: np.concatenate([np.asarray(b[k]) for b in batches])[:count] for k in batches[0]}
        return out


@functools.lru_cache(maxsize=4)
def open_tokenizer(workdir: str, step: int | None = None) -> TokenizerHandle:
    return TokenizerHandle(workdir, step)


@functools.lru_cache(maxsize=4)
def open_run(workdir: str, step: int | None = None) -> RunHandle:
    """A restored run (cached per process), e.g. the AR model that scores another run's samples."""
    return RunHandle(workdir, step)


def _eval_batches(source, run: Run, limit: int | None = None, batch_size: int | None = None):
    """Host batches of a source in order, preprocessed for `run`'s model (one process's view)."""
    return eval_batches(source, run.preprocess, global_batch_size=batch_size or run.config.batch_size, limit=limit)


# --------------------------------------------------------------------------------------------
# Evaluating and sampling a saved run.
# --------------------------------------------------------------------------------------------
def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
             names=None) -> tuple[int, dict[str, EvalResult]]:
    """Runs the config's evaluators (or those in `names`) on a checkpoint of `workdir`."""
    run = setup(config)
    step, variables = restore_variables(run, workdir, step)
    writer = MetricWriter(os.path.join(workdir, "eval"), jax.process_index() == 0, tensorboard=False)
    results = run_evaluators(run, variables, step, writer, names)
    writer.close()
    return step, results


def sample(config: ml_collections.ConfigDict, workdir: str, out: str, num: int = 16, step: int | None = None,
           seed: int = 0) -> str:
    """Writes a grid of the recipe's samples (for MAE: masked test images and reconstructions)."""
    from maskgen.evaluators.image_grid import ImageGrid
    from maskgen.outputs import write_png

    run = setup(config)
    step, variables = restore_variables(run, workdir, step)
    grid_specs = [dict(s) for s in config.evals.values() if s.type == "image_grid"]
    rows = tuple(grid_specs[0].get("rows", ())) if grid_specs else ()
    grid = ImageGrid(num=num, seed=seed, rows=rows).run(make_eval_context(run, variables, step, workdir)).images["grid"]
    if jax.process_index() == 0:
        write_png(out, grid)
    return out
