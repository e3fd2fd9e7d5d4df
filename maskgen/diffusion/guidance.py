r"""Classifier-free guidance for the diffusion samplers, with a scale schedule over the noise level.

Classifier-free guidance (Ho & Salimans, arXiv 2207.12598): the network runs once on the doubled
batch [x; x] with [labels; null labels] and returns uncond + s (cond - uncond), on the prediction
channels only (with a learned variance the variance half is the conditional one, as MAR's
DiffLoss does, arXiv 2406.11838). Guiding v (rectified flow), eps or v (cosine) or EDM's F is the
same thing as guiding the denoised x0: each is affine in the output at a fixed x.

The scale may change with the noise level, through `objective.noise_fraction(time)` in [0, 1]
(1 = pure noise; the rectified-flow t with the same signal-to-noise ratio):
  "constant": s = scale;
  "linear":   s = 1 + (scale - 1) (1 - noise_fraction), no guidance at pure noise, full at clean;
  "interval": s = scale when interval[0] <= noise_fraction <= interval[1], else 1: guidance only in
              a limited interval (Kynkäänniemi et al., arXiv 2404.07724); REPA (arXiv 2410.06940)
              guides only for t <= 0.7, interval (0, 0.7).
MAR's schedule, 1 + (w - 1) x (revealed fraction of tokens), runs over the outer token loop, not
over diffusion time: its recipe passes that scale as a traced scalar with schedule "constant".
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from maskgen.diffusion.objectives import per_example

GUIDANCE_SCHEDULES = ("constant", "linear", "interval")


def check_interval(interval) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"guidance interval must be two numbers (low, high); got {interval!r}") from None
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"guidance interval must satisfy 0 <= low <= high <= 1 (noise fractions); got {interval!r}")
    return low, high


def scale_schedule(schedule: str, scale, noise_fraction: jax.Array, *, interval=(0.0, 1.0)) -> jax.Array:
    """The guidance scale at each noise fraction [B] (float32 [B]); `scale` may be traced."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}; expected one of {GUIDANCE_SCHEDULES}")
    noise_fraction = jnp.asarray(noise_fraction, jnp.float32)
    scale = jnp.asarray(scale, jnp.float32)
    if schedule == "constant":
        return jnp.broadcast_to(scale, noise_fraction.shape)
    if schedule == "linear":
        return 1 + (scale - 1) * (1 - noise_fraction)
    low, high = check_interval(interval)
    inside = (noise_fraction >= low) & (noise_fraction <= high)
    return jnp.where(inside, scale, jnp.ones_like(noise_fraction))


def guided_network(objective, apply: Callable, labels: jax.Array, null_labels: jax.Array, scale, *,
                   schedule: str = "constant", interval=(0.0, 1.0)) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """network(x_in, time) for `sample`: apply(x_in, time, labels) once on the doubled batch, guided.

    labels / null_labels: [B, ...] (any array the model takes as its condition); scale a number or
    a traced scalar. The returned network has objective.output_channels(C) output channels.
    """
    if schedule not in GUIDANCE_SCHEDULES:
        raise ValueError(f"unknown guidance schedule {schedule!r}; expected one of {GUIDANCE_SCHEDULES}")
    if schedule == "interval":
        interval = check_interval(interval)
    if labels.shape != null_labels.shape:
        raise ValueError(f"labels {labels.shape} and null_labels {null_labels.shape} must have the same shape")
    both_labels = jnp.concatenate([labels, null_labels.astype(labels.dtype)])

    def network(x_in: jax.Array, time: jax.Array) -> jax.Array:
        batch = x_in.shape[0]
        if labels.shape[0] != batch:
            raise ValueError(f"guided_network was given {labels.shape[0]} labels for a batch of {batch}")
        output = apply(jnp.concatenate([x_in, x_in]), jnp.concatenate([time, time]), both_labels)
        cond, uncond = output[:batch], output[batch:]
        s = per_example(scale_schedule(schedule, scale, objective.noise_fraction(time), interval=interval),
                        cond).astype(cond.dtype)
        if not objective.learn_sigma:
            return uncond + s * (cond - uncond)
        channels = cond.shape[-1] // 2
        guided = uncond[..., :channels] + s * (cond[..., :channels] - uncond[..., :channels])
        return jnp.concatenate([guided, cond[..., channels:]], axis=-1)

    return network
