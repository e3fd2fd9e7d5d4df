"""HPM's hard-patch mining (Wang et al., "Hard Patches Mining for Masked Image Modeling", arXiv 2304.05919).

HPM adds a loss predictor to MAE: a second decoder branch that predicts each patch's reconstruction
loss. An EMA copy of the model scores the patches of the (unmasked) image, and the mask then hides
the highest-scored ("hard") patches for a share alpha_t of the mask budget and random patches for
the rest, with alpha_t rising from easy to hard over training. The predictor learns a ranking, not
the loss values: a pairwise binary cross-entropy on which of two masked patches has the larger true
loss (the "relative" loss), with the true losses detached.

Pure functions with static shapes:
- `hard_patch_mask(rng, scores, count, hard_share)`: the mask for a (traced) hard share;
- `hard_share(step, total_steps, max_share)`: the easy-to-hard schedule alpha_t;
- `relative_loss(predicted, true_loss, mask)`: the predictor's ranking objective.

Where maskgen differs from HPM's code (github.com/Haochen-Wang409/HPM): the hard count is
round(alpha count) (the code truncates), the schedule is per step (the code's is per epoch,
(epoch + 1) / epochs, so it never starts at exactly 0), and the relative loss uses a stable
log-sigmoid (the code adds 1e-6 inside the log, which caps each pair's loss near 13.8).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp


def _is_int(value) -> bool:
    """True for Python and numpy integers (not bools, floats or arrays)."""
    if isinstance(value, bool):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


@functools.partial(jax.jit, static_argnames=("count",))
def hard_patch_mask(rng: jax.Array, scores: jax.Array, count: int, hard_share) -> jax.Array:
    """HPM mask: bool [B, N], exactly `count` True per row.

    The round(hard_share * count) highest-`scores` positions of each row are masked (ties by
    position), and the rest of the budget goes to positions drawn uniformly at random among the
    others. `hard_share` may be a traced scalar (clipped to [0, 1]); `count` is static.

    Args:
      rng: PRNG key.
      scores: float [B, N], the predicted per-patch loss (higher = harder).
      count: masked positions per row, 0 <= count <= N.
      hard_share: the share of `count` given to the highest scores (HPM's alpha_t).
    """
    scores = jnp.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"hard_patch_mask: scores must be [batch, positions], got shape {scores.shape}")
    batch, positions = scores.shape
    if not _is_int(count) or not 0 <= count <= positions:
        raise ValueError(f"hard_patch_mask: count must be an int in [0, {positions}], got {count!r}")
    share = jnp.clip(jnp.asarray(hard_share, jnp.float32), 0.0, 1.0)
    hard_count = jnp.round(share * count).astype(jnp.int32)
    # Rank 0 = highest score; a stable sort of the negated scores breaks ties by position.
    score_rank = jnp.argsort(jnp.argsort(-scores, axis=-1, stable=True), axis=-1)
    hard = score_rank < hard_count
    # Hard positions sort first (key -1); the others in uniformly random order (keys in [0, 1)).
    key = jnp.where(hard, -1.0, jax.random.uniform(rng, (batch, positions)))
    return jnp.argsort(jnp.argsort(key, axis=-1), axis=-1) < count


def hard_share(step, total_steps: int, max_share: float = 0.5) -> jax.Array:
    """HPM's easy-to-hard schedule: alpha_t = max_share * step / total_steps, clipped to
    [0, max_share]; a float32 scalar (`step` may be traced). HPM uses max_share = 0.5."""
    if not _is_int(total_steps) or total_steps < 1:
        raise ValueError(f"hard_share: total_steps must be an int >= 1, got {total_steps!r}")
    if not 0.0 <= max_share <= 1.0:
        raise ValueError(f"hard_share: max_share must be in [0, 1], got {max_share!r}")
    progress = jnp.asarray(step, jnp.float32) / total_steps
    return jnp.clip(max_share * progress, 0.0, max_share).astype(jnp.float32)


@jax.jit
def relative_loss(predicted: jax.Array, true_loss: jax.Array, mask: jax.Array) -> jax.Array:
    """HPM's relative loss: a scalar, the mean over ordered pairs (i, j) of masked patches of the
    same image with true_i > true_j of -log sigmoid(predicted_i - predicted_j) (binary
    cross-entropy on sigmoid(pred_i - pred_j) against 1[true_i > true_j]; pairs with equal true
    losses carry no label and are left out, as in HPM's code). `true_loss` is stop-gradient'ed.
    Unmasked patches take no part. 0 when no pair qualifies.

    Args:
      predicted: float [B, N], the loss predictor's outputs.
      true_loss: float [B, N], the per-patch reconstruction loss.
      mask: bool [B, N], True = masked.
    """
    predicted = jnp.asarray(predicted, jnp.float32)
    true_loss = jax.lax.stop_gradient(jnp.asarray(true_loss, jnp.float32))
    mask = jnp.asarray(mask, jnp.bool_)
    if predicted.ndim != 2 or predicted.shape != true_loss.shape or predicted.shape != mask.shape:
        raise ValueError(f"relative_loss: predicted, true_loss and mask must share one [batch, positions] "
                         f"shape, got {predicted.shape}, {true_loss.shape}, {mask.shape}")
    both_masked = mask[:, :, None] & mask[:, None, :]  # [B, N, N]
    harder = both_masked & (true_loss[:, :, None] > true_loss[:, None, :])  # pair (i, j): i is harder
    margin = predicted[:, :, None] - predicted[:, None, :]
    pair_loss = -jax.nn.log_sigmoid(margin)
    pairs = harder.sum()
    return jnp.where(harder, pair_loss, 0.0).sum() / jnp.maximum(pairs, 1).astype(jnp.float32)
