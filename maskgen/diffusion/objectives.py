r"""Diffusion training objectives on continuous data: rectified flow, the cosine schedule, EDM.

Each objective is a frozen (hashable) dataclass with pure-jnp methods, so a recipe can pass it as
a static argument of a jitted function. Data `x0` is float [B, ..., C] (channels last); every
per-example quantity (time, sigma) is [B].

All three are Gaussian paths x_t = alpha_t * x0 + sigma_t * eps. The samplers in
`maskgen.diffusion.samplers` only need that view of them: `sampling_grid` (alpha, sigma, the
network's time input and the ODE coordinate at each point of a sampling grid) and `denoise` (the
network's output turned into the predicted x0 and eps).

* `RectifiedFlow` — SiT (Ma et al., arXiv 2401.08740) / rectified flow (Liu et al., arXiv
  2209.03003): x_t = (1 - t) x0 + t eps, target velocity v = eps - x0, plain MSE. t ~ U(0, 1)
  (SiT, REPA) or logit-normal, t = sigmoid(N(m, s)) (Esser et al., SD3). The network is fed t.
* `CosineDiffusion` — DDPM (Ho et al., arXiv 2006.11239) on the cosine schedule of improved DDPM
  (Nichol & Dhariwal, arXiv 2102.09672) as ADM (arXiv 2105.05233) builds it: alpha_bar(s) =
  cos((s + 0.008) / 1.008 * pi / 2)^2, beta_i = min(1 - alpha_bar((i+1)/T) / alpha_bar(i/T), 0.999)
  over T = 1000 integer steps, step ~ U{0..T-1}. Prediction "epsilon" or "v" (v = sqrt(abar) eps
  - sqrt(1 - abar) x0, Salimans & Ho, arXiv 2202.00512). With learn_sigma the network outputs 2C
  channels: the prediction and an interpolation value v in [-1, 1] with log var = frac log(beta)
  + (1 - frac) log(beta_tilde), frac = (v + 1) / 2, trained by the VLB term (KL between the true
  and the predicted posterior, the discretised Gaussian decoder NLL at step 0, in bits, with the
  predicted mean stop-gradiented) added to the MSE: improved DDPM's L_hybrid with lambda = 1, as
  MAR's DiffLoss trains it (Li et al., arXiv 2406.11838: epsilon, learn_sigma, 1000 steps). The
  network is fed the integer step as a float.
* `EDM` — Karras et al. (arXiv 2206.00364), Table 1: D(x; sigma) = c_skip x + c_out F(c_in x;
  c_noise) with c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
  c_in = 1 / sqrt(sigma^2 + sd^2), c_noise = ln(sigma) / 4; ln sigma ~ N(P_mean, P_std^2); loss
  lambda(sigma) |D - x0|^2 with lambda = (sigma^2 + sd^2) / (sigma sd)^2. The defaults are EDM's
  (sd 0.5, P_mean -1.2, P_std 1.2); MicroDiT (arXiv 2407.15811) uses 0.9 / -0.6 / 1.2.

`loss(output, noisy)` is the per-position loss: float32 [B, ...], the squared error averaged over
the last (channel) axis only, with the objective's weighting. The recipe masks and averages
positions (MicroDiT: visible patches; MAR: masked tokens).

`noise_fraction(time)` puts every objective on one [0, 1] noise axis for guidance schedules: the
rectified-flow time with the same signal-to-noise ratio, sigma / (alpha + sigma) (EDM measures
sigma in units of sigma_data). It is t itself for rectified flow, so REPA's "CFG for t <= 0.7"
is the interval (0, 0.7) on every objective.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

OBJECTIVES = ("rectified_flow", "cosine", "edm")
TIME_SAMPLINGS = ("uniform", "logit_normal")
PREDICTIONS = ("epsilon", "v")


def per_example(values: jax.Array, x: jax.Array) -> jax.Array:
    """[B] -> [B, 1, ..., 1], broadcastable against x [B, ...]."""
    return jnp.reshape(values, values.shape + (1,) * (x.ndim - values.ndim))


def channel_mean(values: jax.Array) -> jax.Array:
    """The mean over the last (channel) axis, in float32: the per-position loss."""
    return jnp.mean(values.astype(jnp.float32), axis=-1)


def _check_data(x0: jax.Array) -> None:
    if x0.ndim < 2:
        raise ValueError(f"diffusion data must be [B, ..., C] (a batch axis and a channel axis); got shape {x0.shape}")


# ---------------------------------------------------------------------------------------------
# Rectified flow (SiT / REPA)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RectifiedFlow:
    """x_t = (1 - t) x0 + t eps; the network predicts v = eps - x0 from (x_t, t)."""

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    kind = "rectified_flow"
    learn_sigma = False

    def __post_init__(self):
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"rectified_flow time_sampling must be one of {TIME_SAMPLINGS}; got {self.time_sampling!r}")
        if not self.logit_std > 0:
            raise ValueError(f"rectified_flow logit_std must be > 0; got {self.logit_std}")

    def output_channels(self, channels: int) -> int:
        return channels

    def sample_time(self, rng: jax.Array, batch: int) -> jax.Array:
        if self.time_sampling == "uniform":
            return jax.random.uniform(rng, (batch,), jnp.float32)
        return jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(rng, (batch,), jnp.float32))

    def corrupt(self, x0: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        _check_data(x0)
        time_rng, noise_rng = jax.random.split(rng)
        t = self.sample_time(time_rng, x0.shape[0])
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        tb = per_example(t, x0).astype(x0.dtype)
        return {"x_in": (1 - tb) * x0 + tb * noise, "time": t, "x0": x0, "noise": noise}

    def loss(self, output: jax.Array, noisy: dict[str, jax.Array]) -> jax.Array:
        target = noisy["noise"] - noisy["x0"]
        return channel_mean(jnp.square(output.astype(jnp.float32) - target.astype(jnp.float32)))

    def path(self, time: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha, sigma) float32 [B] of x = alpha x0 + sigma eps at the network's time input."""
        t = jnp.asarray(time, jnp.float32)
        return 1 - t, t

    def noise_fraction(self, time: jax.Array) -> jax.Array:
        return jnp.clip(jnp.asarray(time, jnp.float32), 0.0, 1.0)

    # -- sampling -------------------------------------------------------------------------------
    def sampling_grid(self, num_steps: int) -> dict[str, np.ndarray]:
        """t from 1 (pure noise) to 0 in equal steps; the ODE is integrated in t with slope v."""
        t = np.linspace(1.0, 0.0, num_steps + 1)
        return {"alpha": 1.0 - t, "sigma": t, "time": t, "coord": t, "scale": np.ones_like(t)}

    def network_input(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return x

    def denoise(self, output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array):
        """(x0_hat, eps_hat) from v: x0 = x_t - t v, eps = x_t + (1 - t) v."""
        return x - sigma * output, x + alpha * output

    def ode_slope(self, x0_hat: jax.Array, eps_hat: jax.Array) -> jax.Array:
        return eps_hat - x0_hat  # dx/dt = v


# ---------------------------------------------------------------------------------------------
# Cosine schedule (improved DDPM / ADM; MAR's DiffLoss)
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def cosine_schedule(num_timesteps: int) -> dict[str, np.ndarray]:
    """improved DDPM's cosine betas (ADM's `betas_for_alpha_bar`, max beta 0.999) and derived
    float64 tables: betas, alpha_bar, alpha_bar_prev, beta_tilde, log_beta_tilde_clipped and the
    square roots of alpha_bar and 1 - alpha_bar."""

    def alpha_bar(s):
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), 0.999)
                      for i in range(num_timesteps)], np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    beta_tilde = betas * (1.0 - abar_prev) / (1.0 - abar)
    # beta_tilde[0] = 0: improved DDPM clips its log with beta_tilde[1] (step 0 adds no noise anyway).
    log_beta_tilde_clipped = np.log(np.append(beta_tilde[1], beta_tilde[1:]))
    tables = {"betas": betas, "alpha_bar": abar, "alpha_bar_prev": abar_prev, "beta_tilde": beta_tilde,
              "log_beta_tilde_clipped": log_beta_tilde_clipped,
              # in float64 before the cast: 1 - alpha_bar near step 0 loses digits in float32
              "sqrt_alpha_bar": np.sqrt(abar), "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - abar)}
    for table in tables.values():
        table.setflags(write=False)  # cached: shared by every caller
    return tables


def respaced_steps(num_timesteps: int, num_steps: int) -> list[int]:
    """improved DDPM's `space_timesteps` with one section: `num_steps` evenly spaced steps of
    0..T-1 including both ends, round(i (T - 1) / (N - 1)), the position accumulated in floating
    point and rounded with Python's round, as there. One step is the last step (T - 1), where the
    reference would take step 0 (a network asked to denoise pure noise at step 0)."""
    if num_steps > num_timesteps:
        raise ValueError(f"cannot take {num_steps} sampling steps from a {num_timesteps}-step schedule")
    if num_steps == 1:
        return [num_timesteps - 1]
    stride, position, steps = (num_timesteps - 1) / (num_steps - 1), 0.0, []
    for _ in range(num_steps):
        steps.append(round(position))
        position += stride
    return steps


def normal_kl(mean1, log_var1, mean2, log_var2):
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) elementwise, in nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                  + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def discretized_gaussian_log_likelihood(x, mean, log_scale, *, bin_width: float = 2.0 / 255.0):
    """log P(x) of data in [-1, 1] quantised to 256 levels under N(mean, exp(log_scale)^2), the edge
    bins open and every log-probability floored at log(1e-12) (improved DDPM's decoder L_0). maskgen
    uses the exact normal CDF (log_ndtr) where the reference uses a tanh approximation."""
    log_ndtr = jax.scipy.special.log_ndtr
    inv_std = jnp.exp(-log_scale)
    upper = inv_std * (x - mean + bin_width / 2)
    lower = inv_std * (x - mean - bin_width / 2)

    def log_difference(log_big, log_small):  # log(exp(log_big) - exp(log_small)), log_big >= log_small
        return log_big + jnp.log1p(-jnp.minimum(jnp.exp(log_small - log_big), 1.0 - 1e-7))

    # Phi(upper) - Phi(lower), through the survival function above the mean to avoid cancellation.
    log_bin = jnp.where(x - mean > 0, log_difference(log_ndtr(-lower), log_ndtr(-upper)),
                        log_difference(log_ndtr(upper), log_ndtr(lower)))
    log_probs = jnp.where(x < -0.999, log_ndtr(upper), jnp.where(x > 0.999, log_ndtr(-lower), log_bin))
    return jnp.maximum(log_probs, math.log(1e-12))


@dataclasses.dataclass(frozen=True)
class CosineDiffusion:
    """DDPM on improved DDPM's cosine schedule; epsilon or v prediction, optionally learned variance."""

    prediction: str = "epsilon"
    num_timesteps: int = 1000
    learn_sigma: bool = False

    kind = "cosine"

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"cosine prediction must be one of {PREDICTIONS}; got {self.prediction!r}")
        if not (isinstance(self.num_timesteps, int) and self.num_timesteps >= 2):
            raise ValueError(f"cosine num_timesteps must be an integer >= 2; got {self.num_timesteps!r}")
        if not isinstance(self.learn_sigma, bool):
            raise ValueError(f"cosine learn_sigma must be a bool; got {self.learn_sigma!r}")

    def output_channels(self, channels: int) -> int:
        return 2 * channels if self.learn_sigma else channels

    def table(self, name: str) -> jax.Array:
        return jnp.asarray(cosine_schedule(self.num_timesteps)[name], jnp.float32)

    def split_output(self, output: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """(prediction [.., C], variance interpolation [.., C] or None)."""
        if not self.learn_sigma:
            return output, None
        channels = output.shape[-1] // 2
        return output[..., :channels], output[..., channels:]

    def corrupt(self, x0: jax.Array, rng: jax.Array) -> dict[str, Any]:
        _check_data(x0)
        step_rng, noise_rng = jax.random.split(rng)
        step = jax.random.randint(step_rng, (x0.shape[0],), 0, self.num_timesteps)
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        alpha, sigma = (per_example(v, x0).astype(x0.dtype) for v in self.path(step))
        x_t = alpha * x0 + sigma * noise
        return {"x_in": x_t, "time": step.astype(jnp.float32), "step": step, "x0": x0, "noise": noise}

    def predict_x0(self, prediction: jax.Array, x_t: jax.Array, alpha: jax.Array, sigma: jax.Array):
        """(x0_hat, eps_hat) from an epsilon or v prediction at x_t = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1)."""
        if self.prediction == "epsilon":
            return (x_t - sigma * prediction) / alpha, prediction
        return alpha * x_t - sigma * prediction, sigma * x_t + alpha * prediction

    def loss(self, output: jax.Array, noisy: dict[str, Any]) -> jax.Array:
        x0, noise, x_t, step = (noisy[k].astype(jnp.float32) if k != "step" else noisy[k]
                                for k in ("x0", "noise", "x_in", "step"))
        prediction, var_interp = self.split_output(output.astype(jnp.float32))
        alpha, sigma = (per_example(v, x0) for v in self.path(step))
        target = noise if self.prediction == "epsilon" else alpha * noise - sigma * x0
        mse = channel_mean(jnp.square(prediction - target))
        if not self.learn_sigma:
            return mse
        return mse + self.variational_bound(jax.lax.stop_gradient(prediction), var_interp, x0, x_t, step)

    def variational_bound(self, prediction, var_interp, x0, x_t, step) -> jax.Array:
        """improved DDPM's L_vlb term per position in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) for
        step > 0 and the discretised decoder NLL -log p(x0|x1) at step 0, averaged over channels."""
        alpha, sigma = (per_example(v, x0) for v in self.path(step))
        x0_hat, _ = self.predict_x0(prediction, x_t, alpha, sigma)
        true_mean = self.posterior_mean(x0, x_t, step)
        model_mean = self.posterior_mean(x0_hat, x_t, step)
        true_log_var = per_example(self.table("log_beta_tilde_clipped")[step], x0)
        model_log_var = self.model_log_variance(var_interp, step)
        kl = channel_mean(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / math.log(2.0)
        decoder_nll = -channel_mean(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / math.log(2.0)
        return jnp.where(per_example(step, kl) == 0, decoder_nll, kl)

    def posterior_mean(self, x0: jax.Array, x_t: jax.Array, step: jax.Array) -> jax.Array:
        """The mean of q(x_{t-1} | x_t, x0) on the full schedule."""
        tables = cosine_schedule(self.num_timesteps)
        betas, abar, abar_prev = (np.asarray(tables[k]) for k in ("betas", "alpha_bar", "alpha_bar_prev"))
        coef_x0 = jnp.asarray(betas * np.sqrt(abar_prev) / (1 - abar), jnp.float32)[step]
        coef_xt = jnp.asarray((1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar), jnp.float32)[step]
        return per_example(coef_x0, x0) * x0 + per_example(coef_xt, x_t) * x_t

    def model_log_variance(self, var_interp: jax.Array, step: jax.Array) -> jax.Array:
        """log var = frac log(beta) + (1 - frac) log(beta_tilde), frac = (v + 1) / 2, on the full schedule."""
        frac = (var_interp + 1) / 2
        log_beta = per_example(jnp.log(self.table("betas"))[step], var_interp)
        log_beta_tilde = per_example(self.table("log_beta_tilde_clipped")[step], var_interp)
        return frac * log_beta + (1 - frac) * log_beta_tilde

    def path(self, time: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha, sigma) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) float32 [B] at the step `time`."""
        step = jnp.clip(jnp.round(jnp.asarray(time, jnp.float32)).astype(jnp.int32), 0, self.num_timesteps - 1)
        return self.table("sqrt_alpha_bar")[step], self.table("sqrt_one_minus_alpha_bar")[step]

    def noise_fraction(self, time: jax.Array) -> jax.Array:
        alpha, sigma = self.path(time)
        return sigma / (alpha + sigma)

    # -- sampling -------------------------------------------------------------------------------
    def sampling_grid(self, num_steps: int) -> dict[str, np.ndarray]:
        """The respaced steps from T-1 down to 0, then the clean point (alpha_bar 1).

        The probability-flow ODE is integrated on the rectified-flow path with the same
        signal-to-noise ratio: state x / (alpha + sigma), time tau = sigma / (alpha + sigma), slope
        eps - x0 (Euler is DDIM in any such coordinate). Near alpha_bar_{T-1} ~ 2e-9 it is far
        better conditioned for Heun than DDIM's coordinate sigma / alpha (~2e4 there)."""
        steps = np.array(respaced_steps(self.num_timesteps, num_steps)[::-1], np.int64)
        abar = np.append(cosine_schedule(self.num_timesteps)["alpha_bar"][steps], 1.0)
        alpha, sigma = np.sqrt(abar), np.sqrt(1 - abar)
        return {"alpha": alpha, "sigma": sigma, "time": np.append(steps, 0).astype(np.float64),
                "coord": sigma / (alpha + sigma), "scale": alpha + sigma}

    def network_input(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return x

    def denoise(self, output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array):
        prediction, _ = self.split_output(output)
        return self.predict_x0(prediction, x, alpha, sigma)

    def ode_slope(self, x0_hat: jax.Array, eps_hat: jax.Array) -> jax.Array:
        return eps_hat - x0_hat  # d(x / (alpha + sigma)) / d(sigma / (alpha + sigma)) = eps - x0


# ---------------------------------------------------------------------------------------------
# EDM (Karras et al.; MicroDiT)
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EDM:
    """EDM preconditioning and loss weighting; x_sigma = x0 + sigma eps (variance exploding)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    kind = "edm"
    learn_sigma = False

    def __post_init__(self):
        for name in ("sigma_data", "p_std", "sigma_min", "sigma_max", "rho"):
            if not getattr(self, name) > 0:
                raise ValueError(f"edm {name} must be > 0; got {getattr(self, name)}")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"edm needs sigma_min < sigma_max; got {self.sigma_min} and {self.sigma_max}")

    def output_channels(self, channels: int) -> int:
        return channels

    def preconditioning(self, sigma: jax.Array):
        """(c_skip, c_out, c_in, c_noise) of EDM's Table 1."""
        sd2, s2 = self.sigma_data**2, jnp.square(sigma)
        return (sd2 / (s2 + sd2), sigma * self.sigma_data / jnp.sqrt(s2 + sd2), 1 / jnp.sqrt(s2 + sd2),
                jnp.log(sigma) / 4)

    def loss_weight(self, sigma: jax.Array) -> jax.Array:
        return (jnp.square(sigma) + self.sigma_data**2) / jnp.square(sigma * self.sigma_data)

    def corrupt(self, x0: jax.Array, rng: jax.Array) -> dict[str, jax.Array]:
        _check_data(x0)
        sigma_rng, noise_rng = jax.random.split(rng)
        sigma = jnp.exp(self.p_mean + self.p_std * jax.random.normal(sigma_rng, (x0.shape[0],), jnp.float32))
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        x_noisy = x0 + per_example(sigma, x0).astype(x0.dtype) * noise
        _, _, c_in, c_noise = self.preconditioning(sigma)
        return {"x_in": per_example(c_in, x0).astype(x0.dtype) * x_noisy, "time": c_noise, "sigma": sigma,
                "x_noisy": x_noisy, "x0": x0, "noise": noise}

    def denoised(self, output: jax.Array, x_noisy: jax.Array, sigma: jax.Array) -> jax.Array:
        """D(x; sigma) = c_skip x + c_out F, sigma [B]."""
        c_skip, c_out, _, _ = self.preconditioning(sigma)
        return per_example(c_skip, x_noisy) * x_noisy + per_example(c_out, x_noisy) * output

    def loss(self, output: jax.Array, noisy: dict[str, jax.Array]) -> jax.Array:
        sigma = noisy["sigma"]
        denoised = self.denoised(output.astype(jnp.float32), noisy["x_noisy"].astype(jnp.float32), sigma)
        error = channel_mean(jnp.square(denoised - noisy["x0"].astype(jnp.float32)))
        return per_example(self.loss_weight(sigma), error) * error

    def path(self, time: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(alpha, sigma) = (1, exp(4 c_noise)) float32 [B] of the unscaled x = x0 + sigma eps."""
        sigma = jnp.exp(4 * jnp.asarray(time, jnp.float32))
        return jnp.ones_like(sigma), sigma

    def noise_fraction(self, time: jax.Array) -> jax.Array:
        _, sigma = self.path(time)
        return sigma / (self.sigma_data + sigma)

    # -- sampling -------------------------------------------------------------------------------
    def sampling_grid(self, num_steps: int) -> dict[str, np.ndarray]:
        """EDM's Eq. 5: sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then 0;
        the ODE dx/dsigma = (x - D) / sigma is integrated in sigma."""
        ramp = np.linspace(0.0, 1.0, num_steps) if num_steps > 1 else np.zeros(1)
        inv_rho = 1.0 / self.rho
        sigmas = (self.sigma_max**inv_rho + ramp * (self.sigma_min**inv_rho - self.sigma_max**inv_rho)) ** self.rho
        sigmas = np.append(sigmas, 0.0)
        with np.errstate(divide="ignore"):
            time = np.where(sigmas > 0, np.log(np.maximum(sigmas, 1e-30)) / 4, 0.0)
        return {"alpha": np.ones_like(sigmas), "sigma": sigmas, "time": time, "coord": sigmas,
                "scale": np.ones_like(sigmas)}

    def network_input(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
        return x / jnp.sqrt(jnp.square(sigma) + self.sigma_data**2)

    def denoise(self, output: jax.Array, x: jax.Array, alpha: jax.Array, sigma: jax.Array):
        c_skip, c_out, _, _ = self.preconditioning(sigma)
        x0_hat = c_skip * x + c_out * output
        return x0_hat, (x - x0_hat) / sigma

    def ode_slope(self, x0_hat: jax.Array, eps_hat: jax.Array) -> jax.Array:
        return eps_hat  # dx/dsigma = (x - D) / sigma


_CLASSES = {"rectified_flow": RectifiedFlow, "cosine": CosineDiffusion, "edm": EDM}


def make_objective(kind: str, **settings):
    """The objective `kind` (one of OBJECTIVES) with its settings; unknown kinds or settings raise ValueError."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown diffusion objective {kind!r}; expected one of {OBJECTIVES}")
    cls = _CLASSES[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for the {kind!r} objective; it takes {sorted(fields)}")
    clean = {}
    for name, value in settings.items():
        default = fields[name].default
        # Config values may arrive as numpy scalars or ints; store plain Python values so the
        # dataclass stays hashable and equal across runs.
        if isinstance(default, bool):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{kind} setting {name} must be a bool; got {value!r}")
            value = bool(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not (isinstance(value, (int, np.integer))
                                               or (isinstance(value, float) and value.is_integer())):
                raise ValueError(f"{kind} setting {name} must be an integer; got {value!r}")
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{kind} setting {name} must be a number; got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ValueError(f"{kind} setting {name} must be a string; got {value!r}")
        clean[name] = value
    return cls(**clean)
