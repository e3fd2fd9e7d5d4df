r"""The exact network for Gaussian (mixture) data: a reference against which samplers are measured.

For data x0 ~ N(mean, std^2) in every dimension and x = alpha x0 + sigma eps, the optimal denoiser
is linear: with v = alpha^2 std^2 + sigma^2,
  E[x0 | x] = mean + alpha std^2 / v (x - alpha mean),    E[eps | x] = sigma / v (x - alpha mean),
and the probability-flow ODE maps pure noise z to mean + std z. For a mixture of such Gaussians
(weights w_k, means m_k, one std) each component's expectation is weighted by its responsibility
r_k(x) ~ w_k N(x; alpha m_k, v): the flow is no longer linear, and its map is known only through
a fine reference solve. `mixture_network(objective, ...)` returns the network each objective's
training would converge to (velocity, epsilon or v, EDM's F), fed exactly what `objective.corrupt`
feeds a network, so a sampler's error against the exact map or the exact marginal is its
discretisation error alone (the test and benchmark of the samplers; the closed forms are the usual
ones, e.g. Karras et al. arXiv 2206.00364 App. B.3).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from maskgen.diffusion.objectives import per_example


def gaussian_posterior(x: jax.Array, alpha: jax.Array, sigma: jax.Array, mean: float, std: float):
    """(E[x0 | x], E[eps | x]) for x = alpha x0 + sigma eps, x0 ~ N(mean, std^2)."""
    variance = jnp.square(alpha) * std**2 + jnp.square(sigma)
    centred = x - alpha * mean
    return mean + alpha * std**2 / variance * centred, sigma / variance * centred


def mixture_posterior(x: jax.Array, alpha: jax.Array, sigma: jax.Array, means, std: float, weights=None):
    """(E[x0 | x], E[eps | x]) for x0 from the mixture sum_k w_k N(m_k, std^2), per dimension."""
    weights = [1.0 / len(means)] * len(means) if weights is None else weights
    variance = jnp.square(alpha) * std**2 + jnp.square(sigma)
    parts = [gaussian_posterior(x, alpha, sigma, m, std) for m in means]
    log_resp = jnp.stack([jnp.log(w) - 0.5 * jnp.square(x - alpha * m) / variance for m, w in zip(means, weights)])
    resp = jax.nn.softmax(log_resp, axis=0)  # [K, ...]: the shared variance cancels
    return (jnp.sum(resp * jnp.stack([p[0] for p in parts]), axis=0),
            jnp.sum(resp * jnp.stack([p[1] for p in parts]), axis=0))


def gaussian_network(objective, mean: float, std: float, *, variance_interp: float = -1.0
                     ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """network(x_in, time [B]) -> the optimal output of `objective` for N(mean, std^2) data.

    With a learned variance the variance channels are the constant `variance_interp` in [-1, 1]
    (-1: beta_tilde, +1: beta).
    """
    return mixture_network(objective, (mean,), std, variance_interp=variance_interp)


def mixture_network(objective, means, std: float, weights=None, *, variance_interp: float = -1.0
                    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """network(x_in, time [B]) -> the optimal output of `objective` for sum_k w_k N(m_k, std^2) data."""
    means = tuple(float(m) for m in means)

    def network(x_in: jax.Array, time: jax.Array) -> jax.Array:
        alpha, sigma = (per_example(v, x_in) for v in objective.path(time))
        if objective.kind == "edm":
            _, _, c_in, _ = objective.preconditioning(sigma)
            x = x_in / c_in
        else:
            x = x_in
        if len(means) == 1:
            x0_hat, eps_hat = gaussian_posterior(x, alpha, sigma, means[0], std)
        else:
            x0_hat, eps_hat = mixture_posterior(x, alpha, sigma, means, std, weights)
        if objective.kind == "rectified_flow":
            return eps_hat - x0_hat
        if objective.kind == "edm":
            c_skip, c_out, _, _ = objective.preconditioning(sigma)
            return (x0_hat - c_skip * x) / c_out
        output = eps_hat if objective.prediction == "epsilon" else alpha * eps_hat - sigma * x0_hat
        if objective.learn_sigma:
            output = jnp.concatenate([output, jnp.full_like(output, variance_interp)], axis=-1)
        return output

    return network


def gaussian_map(noise: jax.Array, mean: float, std: float) -> jax.Array:
    """Where the exact probability-flow ODE takes standard-normal `noise`: mean + std * noise."""
    return mean + std * noise
