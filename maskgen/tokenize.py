"""Using a trained tokenizer run: jitted, sharded `encode`/`decode`, and `maskgen tokenize`, which
writes a dataset's token grids (with labels) as ArrayRecord shards for masked models to train on.

This sits beside `train.py` (it restores runs through it); recipes never import it.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from maskgen import parallel
from maskgen.data import make_source, source_info
from maskgen.data.pipeline import eval_batches
from maskgen.data.tokens import write_token_metadata, write_token_split
from maskgen import train as train_lib
from maskgen.recipes import get_recipe, recipes_with

log = logging.getLogger("maskgen")


class TokenizerHandle:
    """A restored tokenizer: `encode(images) -> int tokens` and `decode(tokens) -> images`.

    Images are float [B, H, W, C] in [-1, 1] at the run's `config.data.image_size`; tokens are
    int32 [B, h, w] (or [B, h, w, K] for residual VQ). Both are compiled once per shape, run on
    the run's mesh with the batch sharded over the data axes, and return numpy arrays.
    """

    def __init__(self, workdir: str, step: int | None = None, which: str | None = None):
        self.workdir = workdir
        self.config = train_lib.load_run_config(workdir)
        if not {"encode", "decode"} <= get_recipe(self.config.recipe).capabilities:
            raise ValueError(f"{workdir} is a {self.config.recipe!r} run, not a tokenizer run "
                             f"({', '.join(recipes_with('encode'))})")
        self.run = train_lib.setup(self.config)
        self.step, self.variables = train_lib.restore_variables(self.run, workdir, step, which)
        self.info = self.run.recipe.info()
        self._ctx = train_lib.make_eval_context(self.run, self.variables, self.step, workdir)
        self._multiple = parallel.batch_sharding(self.run.mesh, self.run.rules).num_devices

    def _call(self, method: str, batch: dict, rows: int):
        out = self._ctx.apply(method, self.variables, parallel.global_batch(batch, self.run.mesh, self.run.rules),
                              jax.random.key(0))
        return jax.tree.map(lambda a: np.asarray(a)[:rows], parallel.to_host(out))

    def _pad(self, x: np.ndarray) -> np.ndarray:
        pad = (-len(x)) % self._multiple  # the batch must split evenly over the data-parallel devices
        return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x

    def encode(self, images) -> np.ndarray:
        images = np.asarray(images, np.float32)
        expected = (self.config.data.image_size,) * 2
        if images.ndim != 4 or images.shape[1:3] != expected:
            raise ValueError(f"encode expects images [B, {expected[0]}, {expected[1]}, C] in [-1, 1], got {images.shape}")
        return self._call("encode", {"image": self._pad(images)}, len(images))

    def decode(self, tokens) -> np.ndarray:
        tokens = np.asarray(tokens, np.int32)
        shape = tuple(self.info["token_shape"])
        if tokens.shape[1:] != shape:
            raise ValueError(f"decode expects tokens [B, {', '.join(map(str, shape))}], got {tokens.shape}")
        if tokens.min() < 0 or tokens.max() >= self.info["codebook_size"]:
            raise ValueError(f"token ids must be in [0, {self.info['codebook_size']}), got [{tokens.min()}, {tokens.max()}]")
        return self._call("decode", {"codes": self._pad(tokens)}, len(tokens))


def tokenize_dataset(tokenizer_workdir: str, data: str, out_dir: str, *, data_dir: str | None = None,
                     splits: list[str] | None = None, step: int | None = None, num_shards: int = 1) -> dict:
    """Encodes every example of each split of `data`; writes token shards and metadata.json."""
    handle = TokenizerHandle(tokenizer_workdir, step)
    info = source_info(data, data_dir)
    splits = splits or list(info["splits"])
    os.makedirs(out_dir, exist_ok=True)
    stale = os.path.join(out_dir, "metadata.json")
    if os.path.exists(stale):
        os.remove(stale)  # written again last, once every shard is complete
    config = handle.config
    written = {}
    for split in splits:
        source = make_source(data, split, data_dir)
        rows = []
        for batch, valid in eval_batches(source, global_batch_size=config.batch_size, image_size=config.data.image_size,
                                         process_index=jax.process_index(), process_count=jax.process_count()):
            global_batch = parallel.global_batch(batch, handle.run.mesh, handle.run.rules)
            tokens = parallel.to_host(handle._ctx.apply("encode", handle.variables, global_batch, jax.random.key(0)))
            labels = parallel.to_host(global_batch["label"])
            rows += [(t, int(l)) for t, l, ok in zip(np.asarray(tokens), np.asarray(labels), valid) if ok]
        if jax.process_index() == 0:
            written[split] = write_token_split(out_dir, split, rows, num_shards)
        log.info("tokenized %s/%s: %d examples", data, split, len(rows))
    metadata = {}
    if jax.process_index() == 0:
        metadata = write_token_metadata(
            out_dir, token_shape=handle.info["token_shape"], codebook_size=handle.info["codebook_size"],
            num_levels=handle.info["num_levels"], num_classes=info["num_classes"], splits=written,
            tokenizer={"workdir": os.path.abspath(tokenizer_workdir), "step": handle.step,
                       "quantizer": handle.info["quantizer"], "image_size": config.data.image_size,
                       "data": data, "eval_params": config.eval_params},
        )
    return metadata
