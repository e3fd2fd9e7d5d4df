r"""Samplers for the diffusion objectives: Euler and Heun ODE steps, DDIM and DDPM ancestral steps.

Every objective is a Gaussian path x = alpha x0 + sigma eps, and its `sampling_grid(N)` gives
N + 1 points from (nearly) pure noise to clean data: alpha, sigma, the network's time input, and
the coordinate c and scale k of its probability-flow ODE, d(x / k) / dc = slope(x0_hat, eps_hat).
One network call at a point gives (x0_hat, eps_hat) through `objective.denoise`. From point t to
the next point s:

* "euler": x_s = x_t + (c_s - c_t) slope in x / k. On all three objectives this is exactly the
  DDIM step below (rectified flow: Euler in t with slope v, SiT arXiv 2401.08740; EDM: Euler in
  sigma with slope (x - D) / sigma, arXiv 2206.00364; cosine: Euler in sigma / alpha, the DDIM ODE
  of Song et al. arXiv 2010.02502 Sec. 4.3), so it is computed in the DDIM form, which stays
  accurate where alpha is tiny.
* "heun": Heun's 2nd-order method on the same ODE, averaging the slopes at t and at the Euler
  point s; the last step (to clean data) is a plain Euler step, as EDM's Algorithm 1 and SiT do.
  2N - 1 network calls.
* "ddim": DDIM with eta = 0 (Song et al.): x_s = alpha_s x0_hat + sigma_s eps_hat.
* "ddpm": ancestral sampling from q(x_s | x_t, x0 = x0_hat) (Ho et al., arXiv 2006.11239), for
  the general path: alpha_ts = alpha_t / alpha_s, sigma_ts^2 = sigma_t^2 - alpha_ts^2 sigma_s^2,
  mean = alpha_ts sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_ts^2 / sigma_t^2 x0_hat,
  variance beta_tilde = sigma_ts^2 sigma_s^2 / sigma_t^2 or, with a learned variance (improved
  DDPM, arXiv 2102.09672), exp(frac log sigma_ts^2 + (1 - frac) log beta_tilde). On the cosine
  schedule sigma_ts^2 is the respaced beta, 1 - alpha_bar_t / alpha_bar_s, as improved DDPM's
  respacing recomputes it. `temperature` multiplies the noise's std (MAR's tau, arXiv 2406.11838);
  the last step adds none.

Cosine sampling runs on N respaced steps (evenly spaced in 0..T-1, both ends included, as improved
DDPM's `space_timesteps`), the network fed the original step; EDM on its Karras grid (rho = 7)
from sigma_max down to sigma_min, then 0; rectified flow on t = 1, 1 - 1/N, ..., 0.

All loops are `jax.lax.fori_loop`s over static grids: the function is jit-able and shards like
the network inside it. The grid and step coefficients are computed on the host in float64.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SAMPLERS = ("euler", "heun", "ddim", "ddpm")


def step_coefficients(grid: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-step float64 coefficients [N] for the steps point i -> point i + 1 of `grid`."""
    alpha_t, sigma_t = grid["alpha"][:-1], grid["sigma"][:-1]
    alpha_s, sigma_s = grid["alpha"][1:], grid["sigma"][1:]
    alpha_ts = alpha_t / alpha_s
    sigma_ts2 = np.maximum(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0)
    beta_tilde = sigma_ts2 * sigma_s**2 / sigma_t**2
    adds_noise = sigma_s > 0
    # Where no noise is added (the last step) the variances are unused; keep their logs finite.
    log_beta_tilde = np.log(np.where(adds_noise & (beta_tilde > 0), beta_tilde, 1.0))
    log_beta = np.log(np.where(sigma_ts2 > 0, sigma_ts2, 1.0))
    return {
        "alpha_t": alpha_t, "sigma_t": sigma_t, "time_t": grid["time"][:-1],
        "alpha_s": alpha_s, "sigma_s": sigma_s, "time_s": grid["time"][1:],
        "mean_coef_x": alpha_ts * sigma_s**2 / sigma_t**2, "mean_coef_x0": alpha_s * sigma_ts2 / sigma_t**2,
        "log_beta_tilde": log_beta_tilde, "log_beta": log_beta, "adds_noise": adds_noise.astype(np.float64),
        # Heun's correction in x: k_s (c_s - c_t) / 2 * (slope_s - slope_t).
        "heun_coef": grid["scale"][1:] * (grid["coord"][1:] - grid["coord"][:-1]) / 2,
    }


def _check(objective, noise, sampler: str, num_steps) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} for the {objective.kind!r} objective; expected one of {SAMPLERS}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a Python integer >= 1 (it fixes the loop's length); got {num_steps!r}")
    if not jnp.issubdtype(noise.dtype, jnp.floating) or noise.ndim < 2:
        raise ValueError(f"noise must be a float array [B, ..., C]; got {noise.dtype} {noise.shape}")


def sample(objective, network: Callable[[jax.Array, jax.Array], jax.Array], noise: jax.Array, rng: jax.Array, *,
           sampler: str, num_steps: int, temperature=1.0) -> tuple[jax.Array, int]:
    """Integrates `objective`'s reverse process from `noise` (standard normal [B, ..., C]).

    network(x_in, time [B]) -> output with objective.output_channels(C) channels. Returns the sample
    [B, ..., C] and the number of network calls (N, or 2N - 1 for Heun). `rng` drives DDPM's noise.
    """
    _check(objective, noise, sampler, num_steps)
    num_steps = int(num_steps)
    dtype = noise.dtype
    coefs = {k: jnp.asarray(v, dtype) for k, v in step_coefficients(objective.sampling_grid(num_steps)).items()}
    batch = noise.shape[0]
    channels = noise.shape[-1]

    def predict(x, alpha, sigma, time):
        output = network(objective.network_input(x, sigma), jnp.full((batch,), time, jnp.float32))
        x0_hat, eps_hat = objective.denoise(output, x, alpha, sigma)
        return output, x0_hat, eps_hat

    def at(i, prefix):
        return coefs["alpha" + prefix][i], coefs["sigma" + prefix][i], coefs["time" + prefix][i]

    def ddim_step(i, x):
        _, x0_hat, eps_hat = predict(x, *at(i, "_t"))
        return coefs["alpha_s"][i] * x0_hat + coefs["sigma_s"][i] * eps_hat

    def ddpm_step(i, x):
        output, x0_hat, _ = predict(x, *at(i, "_t"))
        mean = coefs["mean_coef_x"][i] * x + coefs["mean_coef_x0"][i] * x0_hat
        if objective.learn_sigma:
            frac = (output[..., channels:] + 1) / 2
            log_var = frac * coefs["log_beta"][i] + (1 - frac) * coefs["log_beta_tilde"][i]
        else:
            log_var = coefs["log_beta_tilde"][i]
        z = jax.random.normal(jax.random.fold_in(rng, i), x.shape, dtype)
        return mean + coefs["adds_noise"][i] * jnp.exp(0.5 * log_var) * temperature * z

    def heun_step(i, x):
        _, x0_hat, eps_hat = predict(x, *at(i, "_t"))
        euler = coefs["alpha_s"][i] * x0_hat + coefs["sigma_s"][i] * eps_hat
        _, x0_next, eps_next = predict(euler, *at(i, "_s"))
        slope_change = objective.ode_slope(x0_next, eps_next) - objective.ode_slope(x0_hat, eps_hat)
        return euler + coefs["heun_coef"][i] * slope_change

    x = noise * coefs["sigma_t"][0]
    if sampler in ("euler", "ddim"):
        return jax.lax.fori_loop(0, num_steps, ddim_step, x), num_steps
    if sampler == "ddpm":
        return jax.lax.fori_loop(0, num_steps, ddpm_step, x), num_steps
    x = jax.lax.fori_loop(0, num_steps - 1, heun_step, x)
    return ddim_step(num_steps - 1, x), 2 * num_steps - 1
