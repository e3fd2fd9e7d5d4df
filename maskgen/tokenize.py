"""`maskgen tokenize`: writes a dataset's token grids (with labels) as ArrayRecord shards for masked
models to train on, with a trained tokenizer run (`maskgen.runs.TokenizerHandle`: jitted, sharded
`encode`/`decode`, restored without an optimizer).

This sits beside `train.py`, above `maskgen.runs`; recipes never import it.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from maskgen import parallel
from maskgen.data import TokenSpec, eval_batches, make_preprocess, make_source, source_info
from maskgen.data.tokens import write_token_metadata, write_token_split
from maskgen.runs import TokenizerHandle  # noqa: F401  (re-exported: `maskgen.tokenize.TokenizerHandle`)

log = logging.getLogger("maskgen")


def tokenize_dataset(tokenizer_workdir: str, data: str, out_dir: str, *, data_dir: str | None = None,
                     splits: list[str] | None = None, step: int | None = None, num_shards: int = 1) -> dict:
    """Encodes every example of each split of `data`; writes token shards and metadata.json.

    The records hold named arrays (maskgen.data.tokens, format v2): the codes as "tokens"
    ([h, w], or [h, w, K] for K residual levels) and the label when the data has one.
    """
    handle = TokenizerHandle(tokenizer_workdir, step)
    info = source_info(data, data_dir)
    splits = splits or list(info["splits"])
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "metadata.json")
    if os.path.exists(stale):
        os.remove(stale)  # written again last, once every shard is complete
    config = handle.config
    # The tokenizer run's own preprocessing (its image size), applied to the data being tokenized.
    preprocess = make_preprocess(info["fields"], image_size=config.data.image_size)
    has_label = info.get("num_classes", 0) > 0
    written = {}
    for split in splits:
        source = make_source(data, split, data_dir)
        rows = []
        for batch, valid in eval_batches(source, preprocess, global_batch_size=config.batch_size,
                                         process_index=jax.process_index(), process_count=jax.process_count()):
            global_batch = parallel.global_batch(batch, handle.run.mesh, handle.run.rules)
            tokens = np.asarray(parallel.to_host(handle.ctx.apply("encode", handle.variables, global_batch,
                                                                  jax.random.key(0))))
            labels = np.asarray(parallel.to_host(global_batch["label"])) if has_label else None
            for i in np.flatnonzero(valid):
                rows.append({"tokens": tokens[i], **({"label": int(labels[i])} if has_label else {})})
        if jax.process_index() == 0:
            written[split] = write_token_split(out_dir, split, rows, num_shards)
        log.info("tokenized %s/%s: %d examples", data, split, len(rows))
    metadata = {}
    if jax.process_index() == 0:
        fields = {"tokens": TokenSpec(tuple(handle.info["token_shape"]), int(handle.info["codebook_size"]),
                                      int(handle.info["num_levels"]))}
        metadata = write_token_metadata(
            out_dir, fields=fields, num_classes=info.get("num_classes", 0), splits=written,
            tokenizer={"workdir": os.path.abspath(tokenizer_workdir), "step": handle.step,
                       "quantizer": handle.info["quantizer"], "image_size": config.data.image_size,
                       "data": data, "eval_params": config.eval_params},
        )
    return metadata
