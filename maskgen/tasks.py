"""Conditioning and editing tasks: what a generator is given, as in MAGVIT's multi-task masked
modeling (Yu et al., arXiv 2212.05199), where one masked model serves several tasks that differ
only in which tokens are known and what condition comes with them.

Every task builds the same batch for a recipe's `generate(model, batch, rng, **settings)`:

  tokens  int32 [B, *token_shape]  the given tokens (ignored where not known)
  known   bool  [B, *token_shape]  True where a token is given and must not change
  label   int32 [B]                only for the "class" task

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
    """tokens [B, *shape] with `unknown` [B, *shape] (True = regenerate) -> the infill batch."""
    tokens, unknown = np.asarray(tokens, np.int32), np.asarray(unknown, bool)
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
