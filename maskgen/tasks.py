"""Conditioning and editing tasks: what a generator is given, as in MAGVIT's multi-task masked
modeling (Yu et al., arXiv 2212.05199), where one masked model serves several tasks that differ
only in which tokens are known and what condition comes with them.

Every task builds the same batch for a recipe's `generate(model, batch, rng, **settings)`:

  tokens  int32 [B, *token_shape]  the given tokens (ignored where not known)
  known   bool  [B, *token_shape]  True where a token is given and must not change
  label   int32 [B]                only for the "class" task

A continuous generator (DiT, MAR on pixels or KL latents) takes float "tokens" [B, *data_shape]
(images [H, W, C] or latents [h, w, D]) with "known" over its grid of positions
(info()["token_shape"], e.g. its patch grid): `infill_batch` keeps the float dtype and accepts a
mask whose axes tile the data's leading axes.

| task     | known                        | extra      | e.g.                                   |
|----------|------------------------------|------------|----------------------------------------|
| none     | nothing                      | -          | unconditional text, unconditional MDM  |
| class    | nothing                      | label      | class-conditional MaskGIT              |
| prefix   | the first P positions        | -          | prompt continuation (AR, MAGNeT)       |
| infill   | everything outside a mask    | (label)    | inpainting, outpainting, text infill   |

Recipes say which tasks they support (`Recipe.supported_tasks()`); callers build batches here and
never look at a recipe's name.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    description: str
    needs_label: bool = False


TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


register_task(Task("none", "unconditional generation: no token is given"))
register_task(Task("class", "class-conditional generation: a class id per example", needs_label=True))
register_task(Task("prefix", "continuation: the first tokens (a prompt) are given"))
register_task(Task("infill", "editing: every token outside a mask is given (inpainting, span infilling)"))


def task_names() -> list[str]:
    return sorted(TASKS)


def check_tasks(names) -> frozenset:
    """Validates a recipe's declared tasks (used by tests and recipes)."""
    unknown = set(names) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {task_names()}")
    return frozenset(names)


def unconditional_batch(num: int, token_shape: Sequence[int]) -> dict:
    shape = (int(num), *(int(s) for s in token_shape))
    return {"tokens": np.zeros(shape, np.int32), "known": np.zeros(shape, bool)}


def class_batch(labels, token_shape: Sequence[int]) -> dict:
    labels = np.asarray(labels, np.int32)
    return {**unconditional_batch(len(labels), token_shape), "label": labels}


def prefix_batch(prompts: np.ndarray, token_shape: Sequence[int]) -> dict:
    """prompts int [B, P] (P <= the number of positions), laid at the start of the flattened sequence."""
    prompts = np.asarray(prompts, np.int32)
    batch = unconditional_batch(len(prompts), token_shape)
    flat_tokens, flat_known = batch["tokens"].reshape(len(prompts), -1), batch["known"].reshape(len(prompts), -1)
    if prompts.shape[1] > flat_tokens.shape[1]:
        raise ValueError(f"a prompt of {prompts.shape[1]} tokens is longer than the model's {flat_tokens.shape[1]} positions")
    flat_tokens[:, :prompts.shape[1]] = prompts
    flat_known[:, :prompts.shape[1]] = True
    return batch


def infill_batch(tokens: np.ndarray, unknown: np.ndarray) -> dict:
    """tokens [B, *shape] with `unknown` (True = regenerate) -> the infill batch {"tokens", "known"}.

    Integer token ids (cast to int32) take a mask of their own shape [B, *shape]. Float data
    (continuous generators; the dtype is kept) also take a mask over the model's position grid
    [B, g1, ..., gk], k <= the data's axes, where each g divides the data axis it covers (a patch
    grid over [B, H, W, C] images, or the latent grid of [B, h, w, D] latents): "known" is then that
    position mask, as the generator's info()["token_shape"] describes it.
    """
    tokens, unknown = np.asarray(tokens), np.asarray(unknown, bool)
    if np.issubdtype(tokens.dtype, np.floating):
        grid_ok = (unknown.ndim <= tokens.ndim and unknown.shape[:1] == tokens.shape[:1]
                   and all(g > 0 and d % g == 0 for g, d in zip(unknown.shape[1:], tokens.shape[1:])))
        if not grid_ok:
            raise ValueError(f"tokens {tokens.shape} and the infill mask {unknown.shape} must have the same shape, "
                             "or (float data) the mask is [B, *position grid] with each grid axis dividing the "
                             "data axis it covers")
        return {"tokens": tokens, "known": ~unknown}
    if not (np.issubdtype(tokens.dtype, np.integer) or tokens.dtype == np.bool_):
        raise ValueError(f"infill tokens must be int ids or float data, got {tokens.dtype}")
    tokens = tokens.astype(np.int32)
    if tokens.shape != unknown.shape:
        raise ValueError(f"tokens {tokens.shape} and the infill mask {unknown.shape} must have the same shape")
    return {"tokens": tokens, "known": ~unknown}


def generate_unconditional(ctx, token_shape: Sequence[int], num: int, settings: dict, seed: int,
                           batch_size: int = 256) -> dict:
    """`num` unconditional samples through an EvalContext's `apply("generate", ...)`, in equal
    chunks (one compilation; the last chunk padded). Returns host arrays {"tokens" [num, ...], and
    the first chunk's other outputs (trajectory, masks, nfe)}."""
    multiple = ctx.batch_multiple
    chunk = -(-min(batch_size, num) // multiple) * multiple
    tokens, first = [], None
    for i, start in enumerate(range(0, num, chunk)):
        rng = jax.random.fold_in(jax.random.key(seed), i)
        out = ctx.to_host(ctx.apply("generate", ctx.params, ctx.shard(unconditional_batch(chunk, token_shape)), rng,
                                    **settings))
        tokens.append(np.asarray(out["tokens"])[: min(chunk, num - start)])
        if first is None:
            first = {k: np.asarray(v) for k, v in out.items() if k != "tokens"}
    return {"tokens": np.concatenate(tokens), **(first or {})}
