"""Mask schedules: t in [0, 1] -> fraction of tokens masked, shared by training and decoding.

MaskGIT (Chang et al., arXiv 2202.04200, Sec. 3.3) draws the training mask ratio as gamma(r) for
r ~ U(0, 1) and decodes step t of T with gamma((t + 1) / T). gamma is 1 at r = 0 (everything
masked) and decreasing. The family follows the paper and its official release: cosine (the
default), linear ("uniform" there), pow-N (square is pow2, cubic pow3), log and exp; the ratio is
clamped to [1e-6, 1].
"""

from __future__ import annotations

import math

import jax.numpy as jnp

SCHEDULES = ("cosine", "linear", "square", "cubic", "powN (e.g. pow1.5)", "log", "exp")


def mask_ratio(schedule: str, r, num_tokens: int | None = None):
    """gamma(r): the fraction of tokens masked at progress r in [0, 1] (array or float).

    `log` and `exp` need `num_tokens` (they are scaled so that one token stays masked at the end,
    as in the official MaskGIT code).
    """
    r = jnp.asarray(r, jnp.float32)
    if schedule == "cosine":
        ratio = jnp.cos(math.pi / 2.0 * r)
    elif schedule == "linear":
        ratio = 1.0 - r
    elif schedule in ("square", "cubic") or schedule.startswith("pow"):
        exponent = {"square": 2.0, "cubic": 3.0}.get(schedule)
        if exponent is None:
            try:
                exponent = float(schedule[3:])
            except ValueError:
                raise ValueError(f"bad pow schedule {schedule!r}; write e.g. 'pow2' or 'pow1.5'") from None
        ratio = 1.0 - r ** exponent
    elif schedule in ("log", "exp"):
        if not num_tokens or num_tokens < 2:
            raise ValueError(f"the {schedule!r} schedule needs num_tokens >= 2, got {num_tokens}")
        log_n = math.log2(num_tokens)
        if schedule == "log":
            ratio = -jnp.log2(jnp.maximum(r, 1e-12)) / log_n
        else:
            ratio = 1.0 - jnp.exp2(-log_n * (1.0 - r))
    else:
        raise ValueError(f"unknown mask schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return jnp.clip(ratio, 1e-6, 1.0)


def num_to_mask(schedule: str, r, num_tokens: int):
    """ceil(gamma(r) * N), at least 1: MaskGIT's training mask count for ratio draw r."""
    count = jnp.ceil(mask_ratio(schedule, r, num_tokens) * num_tokens).astype(jnp.int32)
    return jnp.clip(count, 1, num_tokens)
