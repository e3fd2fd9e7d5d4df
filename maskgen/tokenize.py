"""`maskgen tokenize`: writes a dataset's token grids (with labels) as ArrayRecord shards for masked
models to train on, with a trained tokenizer run (`maskgen.runs.TokenizerHandle`: jitted, sharded
`encode`/`decode`, restored without an optimizer).

A continuous (`model.quantizer="kl"`) tokenizer run writes a "latents" field instead: float32
[h, w, D], the encoder's means, stored unscaled. Its LatentSpec records LDM's scale factor
(Rombach et al., arXiv 2112.10752; `scale_factor` in its code): scale = 1 / std of the train
split's latents, the std taken over all their elements (every example, position and channel,
about their one overall mean: LDM's `1 / z.flatten().std()`, which LDM takes from its first
batch and maskgen from the whole train split, in float64). The input pipeline multiplies by it,
so generators train on unit-variance latents. When "train" is not among the splits written, the
first split written gives the factor (metadata "tokenizer"["scale_split"] names the split used).

Audio (a `codec` run, whose info has decodes_to "audio"): each clip becomes its K-level code stream,
int32 [frames, K] (TokenSpec shape (frames, K), num_levels K). Tokenizing the source the run was
trained on reuses the run's source options (e.g. the speech source's words, sample_rate,
clip_seconds) and data_dir unless others are given; the data's audio must have the run's sample
rate and clip length, else the error names both.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from maskgen import parallel
from maskgen.data import LatentSpec, TokenSpec, data_options, eval_batches, make_preprocess, make_source, source_info
from maskgen.data.tokens import write_token_metadata, write_token_split
from maskgen.runs import TokenizerHandle  # noqa: F401  (re-exported: `maskgen.tokenize.TokenizerHandle`)

log = logging.getLogger("maskgen")


def _audio_spec(fields: dict):
    return next((spec for spec in fields.values() if spec.kind == "audio"), None)


def _check_audio_matches(run_info: dict, info: dict, data: str, workdir: str) -> None:
    """The data's audio must be what the tokenizer run was trained on (sample rate, clip shape)."""
    want, got = _audio_spec(run_info.get("fields") or {}), _audio_spec(info.get("fields") or {})
    if want is None:
        return
    if got is None:
        raise ValueError(f"{workdir} encodes audio, but {data!r} has no audio field (fields "
                         f"{sorted(info.get('fields') or {})})")
    if (got.sample_rate, tuple(got.shape)) != (want.sample_rate, tuple(want.shape)):
        raise ValueError(f"{data!r} has audio of shape {tuple(got.shape)} at {got.sample_rate} Hz, but {workdir} was "
                         f"trained on {tuple(want.shape)} at {want.sample_rate} Hz: set the source's sample_rate and "
                         f"clip_seconds to match")


def tokenize_dataset(tokenizer_workdir: str, data: str, out_dir: str, *, data_dir: str | None = None,
                     splits: list[str] | None = None, step: int | None = None, num_shards: int = 1,
                     options: dict | None = None) -> dict:
    """Encodes every example of each split of `data`; writes token shards and metadata.json.

    The records hold named arrays (maskgen.data.tokens, format v2): the codes as "tokens"
    ([h, w], or [h, w, K] for K residual levels; [frames, K] for an audio codec), or for a
    continuous tokenizer the latent means as "latents" ([h, w, D] float32, unscaled; the scale
    factor is in the LatentSpec), and the label when the data has one.

    `options`: the source's options; None reuses the tokenizer run's own (and its data_dir when
    `data_dir` is None) if `data` is the source it was trained on, else the source's defaults.
    """
    handle = TokenizerHandle(tokenizer_workdir, step)
    run_data = handle.config.data
    if options is None and data == run_data.name:
        options = data_options(run_data)
        data_dir = data_dir or run_data.data_dir or None
    info = source_info(data, data_dir, options)
    _check_audio_matches(handle.run.data_info, info, data, tokenizer_workdir)
    splits = splits or list(info["splits"])
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "metadata.json")
    if os.path.exists(stale):
        os.remove(stale)  # written again last, once every shard is complete
    config = handle.config
    # The tokenizer run's own preprocessing (its image size), applied to the data being tokenized.
    preprocess = make_preprocess(info["fields"], image_size=config.data.image_size)
    has_label = info.get("num_classes", 0) > 0
    continuous = bool(handle.info.get("continuous", False))
    field = "latents" if continuous else "tokens"
    written, latent_moments = {}, {}
    for split in splits:
        source = make_source(data, split, data_dir, options)
        rows = []
        for batch, valid in eval_batches(source, preprocess, global_batch_size=config.batch_size,
                                         process_index=jax.process_index(), process_count=jax.process_count()):
            global_batch = parallel.global_batch(batch, handle.run.mesh, handle.run.rules)
            tokens = np.asarray(parallel.to_host(handle.ctx.apply("encode", handle.variables, global_batch,
                                                                  jax.random.key(0))))
            labels = np.asarray(parallel.to_host(global_batch["label"])) if has_label else None
            for i in np.flatnonzero(valid):
                rows.append({field: tokens[i], **({"label": int(labels[i])} if has_label else {})})
        if continuous and rows:
            latent_moments[split] = _moments(np.stack([row[field] for row in rows]))
        if jax.process_index() == 0:
            written[split] = write_token_split(out_dir, split, rows, num_shards)
        log.info("tokenized %s/%s: %d examples", data, split, len(rows))
    metadata = {}
    if jax.process_index() == 0:
        tokenizer = {"workdir": os.path.abspath(tokenizer_workdir), "step": handle.step,
                     "quantizer": handle.info["quantizer"], "image_size": config.data.image_size,
                     "data": data, "eval_params": config.eval_params, "data_options": dict(options or {})}
        if handle.info.get("decodes_to"):
            tokenizer.update({k: handle.info[k] for k in ("decodes_to", "sample_rate") if k in handle.info})
        if continuous:
            if not latent_moments:
                raise ValueError(f"no examples to tokenize in the splits {splits} of {data!r}: the scale factor "
                                 "needs latents")
            scale_split = "train" if "train" in latent_moments else next(iter(latent_moments))
            std = latent_moments[scale_split]["std"]
            if not np.isfinite(std) or std <= 0:
                raise ValueError(f"the {scale_split} split's latents have std {std}: no scale factor can make them "
                                 f"unit-variance (is {tokenizer_workdir} trained?)")
            shape = tuple(handle.info["token_shape"]) + (int(handle.info["latent_channels"]),)
            fields = {"latents": LatentSpec(shape, scale=1.0 / std)}
            tokenizer.update(scale_split=scale_split, latent_std=std, latent_mean=latent_moments[scale_split]["mean"])
        else:
            fields = {"tokens": TokenSpec(tuple(handle.info["token_shape"]), int(handle.info["codebook_size"]),
                                          int(handle.info["num_levels"]))}
        metadata = write_token_metadata(out_dir, fields=fields, num_classes=info.get("num_classes", 0),
                                        splits=written, tokenizer=tokenizer)
    return metadata


def _moments(latents: np.ndarray) -> dict:
    """Mean and std over every element (float64), as plain floats for metadata.json."""
    values = np.asarray(latents, np.float64)
    return {"mean": float(values.mean()), "std": float(values.std())}
