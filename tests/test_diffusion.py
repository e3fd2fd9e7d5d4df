"""maskgen.diffusion: objectives against hand formulas, samplers against the exact Gaussian flow,
classifier-free guidance, jit-ability."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from maskgen.diffusion import (GUIDANCE_SCHEDULES, OBJECTIVES, SAMPLERS, guided_network, make_objective, sample,
                               scale_schedule)
from maskgen.diffusion.analytic import gaussian_map, gaussian_network, mixture_posterior
from maskgen.diffusion.objectives import cosine_schedule, respaced_steps
from maskgen.diffusion.samplers import step_coefficients

MEAN, STD = 0.5, 0.3  # the Gaussian data of the sampler tests
X0 = jax.random.normal(jax.random.key(0), (3, 4, 2))


def cosine_alpha_bar(s):  # improved DDPM's f(s) / f(0) before clipping, by hand
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return f(s) / f(0)


# ---------------------------------------------------------------------------------------------
# objectives
# ---------------------------------------------------------------------------------------------


def test_make_objective_names_bad_kinds_and_settings():
    assert OBJECTIVES == ("rectified_flow", "cosine", "edm")
    with pytest.raises(ValueError, match="unknown diffusion objective 'flow'.*rectified_flow"):
        make_objective("flow")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['sigma_data'\].*'prediction'"):
        make_objective("cosine", sigma_data=0.5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        make_objective("cosine", prediction="x0")
    with pytest.raises(ValueError, match="num_timesteps must be an integer"):
        make_objective("cosine", num_timesteps=2.5)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        make_objective("edm", sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="time_sampling"):
        make_objective("rectified_flow", time_sampling="beta")
    # Hashable and equal across construction: usable as a static jit argument.
    assert make_objective("edm", sigma_data=0.9, p_mean=-0.6) == make_objective("edm", sigma_data=0.9, p_mean=-0.6)
    assert hash(make_objective("cosine", num_timesteps=np.int64(1000))) == hash(make_objective("cosine"))
    assert make_objective("cosine", learn_sigma=True).output_channels(16) == 32
    assert make_objective("edm").output_channels(16) == 16


def test_rectified_flow_interpolates_and_regresses_the_velocity():
    objective = make_objective("rectified_flow")
    noisy = objective.corrupt(X0, jax.random.key(1))
    t = noisy["time"][:, None, None]
    assert noisy["time"].shape == (3,) and noisy["time"].dtype == jnp.float32
    np.testing.assert_allclose(noisy["x_in"], (1 - t) * X0 + t * noisy["noise"], atol=1e-6)
    target = noisy["noise"] - X0
    assert np.allclose(objective.loss(target, noisy), 0.0)
    output = jnp.zeros_like(X0)
    loss = objective.loss(output, noisy)
    assert loss.shape == (3, 4) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, np.mean(np.square(np.asarray(target)), axis=-1), rtol=1e-6)
    times = make_objective("rectified_flow", time_sampling="logit_normal", logit_mean=0.5,
                           logit_std=0.7).sample_time(jax.random.key(2), 20000)
    logits = np.log(times / (1 - times))
    assert abs(logits.mean() - 0.5) < 0.03 and abs(logits.std() - 0.7) < 0.03


def test_cosine_schedule_matches_improved_ddpm():
    tables = cosine_schedule(1000)
    abar, betas = tables["alpha_bar"], tables["betas"]
    np.testing.assert_allclose(abar[0], cosine_alpha_bar(1 / 1000), rtol=1e-12)
    np.testing.assert_allclose(abar[500], cosine_alpha_bar(501 / 1000), rtol=1e-9)
    np.testing.assert_allclose(abar[998], cosine_alpha_bar(999 / 1000), rtol=1e-6)
    assert betas[-1] == 0.999  # the last beta, 1 - 0 / f((T-1)/T), clipped
    np.testing.assert_allclose(abar[999], abar[998] * 0.001, rtol=1e-12)
    assert np.all(np.diff(abar) < 0) and 0 < abar[-1] < 1e-8
    # improved DDPM's space_timesteps, including its (banker's) rounding
    assert respaced_steps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert respaced_steps(1000, 3) == [0, 500, 999]
    assert respaced_steps(1000, 1000) == list(range(1000))
    with pytest.raises(ValueError, match="cannot take 1001"):
        respaced_steps(1000, 1001)


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_cosine_corrupts_at_an_integer_step_and_regresses_eps_or_v(prediction):
    objective = make_objective("cosine", prediction=prediction)
    noisy = objective.corrupt(X0, jax.random.key(3))
    step = np.asarray(noisy["step"])
    np.testing.assert_array_equal(noisy["time"], step.astype(np.float32))
    abar = cosine_schedule(1000)["alpha_bar"][step][:, None, None]
    np.testing.assert_allclose(noisy["x_in"], np.sqrt(abar) * X0 + np.sqrt(1 - abar) * noisy["noise"], atol=1e-5)
    target = noisy["noise"] if prediction == "epsilon" else np.sqrt(abar) * noisy["noise"] - np.sqrt(1 - abar) * X0
    assert np.allclose(objective.loss(jnp.asarray(target, jnp.float32), noisy), 0.0, atol=1e-10)
    np.testing.assert_allclose(objective.loss(jnp.ones_like(X0), noisy),
                               np.mean(np.square(1 - np.asarray(target)), axis=-1), rtol=1e-5)


def numpy_vlb_bits(x0, x_t, eps_pred, var_interp, step, tables):
    """improved DDPM's L_vlb term, transcribed in float64 NumPy (scipy's normal CDF)."""
    betas, abar, abar_prev = tables["betas"][step], tables["alpha_bar"][step], tables["alpha_bar_prev"][step]
    beta_tilde = tables["beta_tilde"][max(step, 1)]  # clipped at step 0
    x0_hat = (x_t - np.sqrt(1 - abar) * eps_pred) / np.sqrt(abar)

    def posterior_mean(start):
        return (betas * np.sqrt(abar_prev) / (1 - abar)) * start + ((1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)) * x_t

    frac = (var_interp + 1) / 2
    model_log_var = frac * np.log(betas) + (1 - frac) * np.log(beta_tilde)
    model_mean = posterior_mean(x0_hat)
    if step == 0:
        std = np.exp(0.5 * model_log_var)
        cdf = lambda z: stats.norm.cdf((z - model_mean) / std)  # noqa: E731
        probs = np.where(x0 < -0.999, cdf(x0 + 1 / 255), np.where(x0 > 0.999, 1 - cdf(x0 - 1 / 255),
                                                                   cdf(x0 + 1 / 255) - cdf(x0 - 1 / 255)))
        return -np.mean(np.log(np.maximum(probs, 1e-12)), axis=-1) / np.log(2)
    true_log_var = np.log(beta_tilde)
    kl = 0.5 * (-1 + model_log_var - true_log_var + np.exp(true_log_var - model_log_var)
                + (posterior_mean(x0) - model_mean) ** 2 * np.exp(-model_log_var))
    return np.mean(kl, axis=-1) / np.log(2)


def test_learned_variance_adds_the_vlb_term_with_the_mean_stop_gradiented():
    objective = make_objective("cosine", learn_sigma=True)
    tables = cosine_schedule(1000)
    rng = np.random.default_rng(0)
    steps = np.array([0, 0, 7, 999])
    x0 = np.clip(rng.normal(size=(4, 3)) * 0.6, -1, 1)
    x0[1, 0] = 1.0  # an open edge bin
    noise = rng.normal(size=(4, 3))
    abar = tables["alpha_bar"][steps][:, None]
    x_t = np.sqrt(abar) * x0 + np.sqrt(1 - abar) * noise
    eps_pred = noise + 0.1 * rng.normal(size=(4, 3))
    var_interp = rng.uniform(-1, 1, size=(4, 3))
    noisy = {"x_in": jnp.asarray(x_t, jnp.float32), "time": jnp.asarray(steps, jnp.float32),
             "step": jnp.asarray(steps), "x0": jnp.asarray(x0, jnp.float32), "noise": jnp.asarray(noise, jnp.float32)}
    output = jnp.asarray(np.concatenate([eps_pred, var_interp], -1), jnp.float32)
    loss_and_grad = jax.jit(jax.value_and_grad(lambda out: objective.loss(out, noisy).sum()))
    loss = jax.jit(objective.loss)(output, noisy)
    mse = np.mean((eps_pred - noise) ** 2, axis=-1)
    vlb = np.array([numpy_vlb_bits(x0[i], x_t[i], eps_pred[i], var_interp[i], steps[i], tables) for i in range(4)])
    assert np.all(vlb > 0)
    np.testing.assert_allclose(np.asarray(loss) - mse, vlb, rtol=2e-3, atol=1e-4)
    # The VLB trains only the variance: the gradient on the prediction is the MSE's alone.
    grad = loss_and_grad(output)[1]
    np.testing.assert_allclose(grad[:, :3], 2 * (eps_pred - noise) / 3, rtol=1e-4, atol=1e-6)
    assert np.all(np.abs(grad[:, 3:]) > 0)


def test_edm_preconditioning_and_weighting_at_a_sigma():
    objective = make_objective("edm")  # sigma_data 0.5
    c_skip, c_out, c_in, c_noise = objective.preconditioning(jnp.float32(1.0))
    np.testing.assert_allclose([c_skip, c_out, c_in, c_noise], [0.25 / 1.25, 0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25),
                                                                 0.0], rtol=1e-6)
    np.testing.assert_allclose(objective.loss_weight(jnp.float32(1.0)), 1.25 / 0.25, rtol=1e-6)
    micro = make_objective("edm", sigma_data=0.9, p_mean=-0.6, p_std=1.2)
    noisy = micro.corrupt(X0, jax.random.key(4))
    sigma = noisy["sigma"][:, None, None]
    np.testing.assert_allclose(noisy["time"], np.log(noisy["sigma"]) / 4, rtol=1e-6, atol=1e-7)
    x_noisy = X0 + sigma * noisy["noise"]
    np.testing.assert_allclose(noisy["x_in"], x_noisy / np.sqrt(sigma**2 + 0.81), rtol=1e-5, atol=1e-6)
    # lambda c_out^2 = 1: the weighted loss is the plain MSE on F against its target.
    c_skip, c_out = 0.81 / (sigma**2 + 0.81), sigma * 0.9 / np.sqrt(sigma**2 + 0.81)
    output = jax.random.normal(jax.random.key(5), X0.shape)
    f_target = (X0 - c_skip * x_noisy) / c_out
    np.testing.assert_allclose(micro.loss(output, noisy), np.mean((output - f_target) ** 2, axis=-1), rtol=2e-4)
    assert np.allclose(micro.loss(jnp.asarray(f_target, jnp.float32), noisy), 0.0, atol=1e-8)
    log_sigmas = np.log(micro.corrupt(jnp.zeros((4096, 1)), jax.random.key(6))["sigma"])
    assert abs(log_sigmas.mean() + 0.6) < 0.06 and abs(log_sigmas.std() - 1.2) < 0.06


def test_noise_fraction_is_the_rectified_flow_time_of_equal_snr():
    np.testing.assert_allclose(make_objective("rectified_flow").noise_fraction(jnp.array([0.0, 0.3, 1.0])), [0, 0.3, 1])
    edm = make_objective("edm", sigma_data=0.5)
    np.testing.assert_allclose(edm.noise_fraction(jnp.log(jnp.array([0.5, 80.0])) / 4), [0.5, 80 / 80.5], rtol=1e-5)
    cosine = make_objective("cosine")
    fractions = np.asarray(cosine.noise_fraction(jnp.arange(1000.0)))
    assert np.all(np.diff(fractions) > 0) and fractions[0] < 0.01 and fractions[-1] > 0.9999
    abar = cosine_schedule(1000)["alpha_bar"][400]
    np.testing.assert_allclose(fractions[400], np.sqrt(1 - abar) / (np.sqrt(abar) + np.sqrt(1 - abar)), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# samplers on Gaussian data, where the exact flow is known
# ---------------------------------------------------------------------------------------------

OBJECTIVE_CASES = {"rectified_flow": {}, "cosine": {}, "cosine_v": {"prediction": "v"}, "edm": {}}
NOISE = jax.random.normal(jax.random.key(7), (2048, 2))
_COMPILED = {}


def run_sampler(case, sampler, num_steps, *, temperature=1.0, variance_interp=-1.0, learn_sigma=False, seed=0):
    settings = dict(OBJECTIVE_CASES[case], **({"learn_sigma": True} if learn_sigma else {}))
    objective = make_objective("cosine" if case == "cosine_v" else case, **settings)
    key = (case, sampler, num_steps, learn_sigma)
    if key not in _COMPILED:
        def run(noise, rng, temperature, variance_interp):
            network = gaussian_network(objective, MEAN, STD, variance_interp=variance_interp)
            return sample(objective, network, noise, rng, sampler=sampler, num_steps=num_steps, temperature=temperature)[0]
        _COMPILED[key] = jax.jit(run)
    x = _COMPILED[key](NOISE, jax.random.key(seed), temperature, variance_interp)
    return np.asarray(x, np.float64)


def test_mixture_posterior_satisfies_tweedies_formula():
    """E[x0 | x] = (x + sigma^2 d/dx log p(x)) / alpha and E[eps | x] = -sigma d/dx log p(x)."""
    means, std, weights, alpha, sigma = (-0.6, 0.1, 0.9), 0.2, (0.2, 0.3, 0.5), 0.6, 0.8
    variance = alpha**2 * std**2 + sigma**2

    def log_density(x):
        return jax.scipy.special.logsumexp(jnp.array([jnp.log(w) - 0.5 * (x - alpha * m) ** 2 / variance
                                                      for m, w in zip(means, weights)]))

    x = jnp.linspace(-2.0, 2.0, 9)
    score = jax.vmap(jax.grad(log_density))(x)
    x0_hat, eps_hat = mixture_posterior(x, alpha, sigma, means, std, weights)
    np.testing.assert_allclose(x0_hat, (x + sigma**2 * score) / alpha, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eps_hat, -sigma * score, rtol=1e-5, atol=1e-6)


def map_error(x):
    return float(np.max(np.abs(x - np.asarray(gaussian_map(NOISE, MEAN, STD)))))


@pytest.mark.parametrize("case", sorted(OBJECTIVE_CASES))
def test_ode_samplers_converge_to_the_exact_flow_and_heun_beats_euler(case):
    euler_31 = map_error(run_sampler(case, "euler", 31))
    heun_16 = map_error(run_sampler(case, "heun", 16))  # 31 network calls too
    heun_64 = map_error(run_sampler(case, "heun", 64))
    assert heun_16 < 0.9 * euler_31, (heun_16, euler_31)
    assert heun_64 < 0.01, heun_64  # second order: the exact map mean + std z
    assert euler_31 < 0.2
    # DDIM (eta = 0) is the Euler step of the same ODE, computed in the same form.
    np.testing.assert_array_equal(run_sampler(case, "ddim", 31), run_sampler(case, "euler", 31))


def test_heun_is_euler_with_one_step_and_counts_its_network_calls():
    objective = make_objective("rectified_flow")
    network = gaussian_network(objective, MEAN, STD)
    x_heun, nfe_heun = sample(objective, network, NOISE[:8], jax.random.key(0), sampler="heun", num_steps=1)
    x_euler, nfe_euler = sample(objective, network, NOISE[:8], jax.random.key(0), sampler="euler", num_steps=1)
    np.testing.assert_array_equal(x_heun, x_euler)
    assert (nfe_heun, nfe_euler) == (1, 1)
    assert [sample(objective, network, NOISE[:8], jax.random.key(0), sampler=s, num_steps=5)[1] for s in SAMPLERS] \
        == [5, 9, 5, 5]


def edm_algorithm_1(x, sigmas, denoise):
    """EDM's Algorithm 1 (deterministic Heun), transcribed in float64 NumPy."""
    for i in range(len(sigmas) - 1):
        t, t_next = sigmas[i], sigmas[i + 1]
        d = (x - denoise(x, t)) / t
        x_next = x + (t_next - t) * d
        if t_next != 0:
            d_next = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t) * (d + d_next) / 2
        x = x_next
    return x


def test_edm_heun_matches_a_transcription_of_edm_algorithm_1():
    objective = make_objective("edm")
    n, rho = 6, 7.0
    sigmas = [(80 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho for i in range(n)] + [0.0]

    def denoise(x, sigma):
        return MEAN + STD**2 / (STD**2 + sigma**2) * (x - MEAN)

    noise = np.asarray(NOISE[:64], np.float64)
    expected = edm_algorithm_1(80.0 * noise, sigmas, denoise)
    got, nfe = sample(objective, gaussian_network(objective, MEAN, STD), NOISE[:64], jax.random.key(0),
                      sampler="heun", num_steps=n)
    assert nfe == 2 * n - 1
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["cosine", "rectified_flow", "edm"])
def test_ddpm_samples_have_the_data_mean_and_std(case):
    x = run_sampler(case, "ddpm", 250)
    # 4096 draws: the standard errors of the mean and std are ~0.005 and ~0.0033.
    assert abs(x.mean() - MEAN) < 0.02 and abs(x.std() - STD) < 0.012, (x.mean(), x.std())
    # and they are samples, not the ODE's deterministic map of the same noise
    assert map_error(x) > 0.5


def test_ddpm_learned_variance_and_temperature_scale_the_added_noise():
    # Two respaced steps (999 -> 0 -> clean): only the first adds noise, and the rest is affine in it.
    deterministic = run_sampler("cosine", "ddpm", 2, temperature=0.0, learn_sigma=True)
    tilde = run_sampler("cosine", "ddpm", 2, variance_interp=-1.0, learn_sigma=True) - deterministic
    np.testing.assert_allclose(tilde + deterministic, run_sampler("cosine", "ddpm", 2), rtol=1e-5, atol=1e-6)
    beta = run_sampler("cosine", "ddpm", 2, variance_interp=1.0, learn_sigma=True) - deterministic
    half = run_sampler("cosine", "ddpm", 2, temperature=0.5, learn_sigma=True) - deterministic
    abar = cosine_schedule(1000)["alpha_bar"]
    ratio = np.sqrt((1 - abar[999]) / (1 - abar[0]))  # sqrt(beta / beta_tilde) of the respaced step
    np.testing.assert_allclose(beta, ratio * tilde, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(half, 0.5 * tilde, rtol=1e-3, atol=1e-6)
    assert np.std(tilde) > 1e-3


def test_respaced_ddpm_coefficients_are_improved_ddpms():
    grid = make_objective("cosine").sampling_grid(3)
    np.testing.assert_array_equal(grid["time"], [999, 500, 0, 0])
    coefs = step_coefficients(grid)
    abar = cosine_schedule(1000)["alpha_bar"]
    beta = 1 - abar[999] / abar[500]  # the respaced beta of the reverse step 999 -> 500
    np.testing.assert_allclose(coefs["log_beta"][0], np.log(beta), rtol=1e-9)
    np.testing.assert_allclose(np.exp(coefs["log_beta_tilde"][0]), beta * (1 - abar[500]) / (1 - abar[999]), rtol=1e-9)
    np.testing.assert_allclose(coefs["mean_coef_x0"][0], beta * np.sqrt(abar[500]) / (1 - abar[999]), rtol=1e-9)
    np.testing.assert_allclose(coefs["mean_coef_x"][0], (1 - abar[500]) * np.sqrt(1 - beta) / (1 - abar[999]),
                               rtol=1e-7)
    np.testing.assert_array_equal(coefs["adds_noise"], [1, 1, 0])


def test_samplers_jit_as_one_loop_whatever_the_step_count():
    objective = make_objective("cosine", learn_sigma=True)
    calls = []

    def network(x_in, time):
        calls.append(x_in.shape)
        return jnp.concatenate([x_in * 0.1, jnp.zeros_like(x_in)], -1) + time[:, None] * 0

    for sampler, traced_calls in (("euler", 1), ("heun", 3), ("ddim", 1), ("ddpm", 1)):
        for num_steps in (4, 50):
            calls.clear()
            jaxpr = jax.make_jaxpr(lambda z: sample(objective, network, z, jax.random.key(0), sampler=sampler,
                                                    num_steps=num_steps)[0])(NOISE[:4])
            assert len(calls) == traced_calls, (sampler, num_steps, calls)  # no Python loop over steps
            assert "scan" in str(jaxpr) or "while" in str(jaxpr)
            assert jaxpr.out_avals[0].shape == (4, 2)


def test_sample_rejects_bad_arguments():
    objective = make_objective("cosine")
    network = gaussian_network(objective, MEAN, STD)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'.*'euler', 'heun', 'ddim', 'ddpm'"):
        sample(objective, network, NOISE, jax.random.key(0), sampler="dpm", num_steps=4)
    with pytest.raises(ValueError, match="num_steps must be a Python integer >= 1"):
        sample(objective, network, NOISE, jax.random.key(0), sampler="ddim", num_steps=0)
    with pytest.raises(ValueError, match="cannot take 2000 sampling steps from a 1000-step schedule"):
        sample(objective, network, NOISE, jax.random.key(0), sampler="ddim", num_steps=2000)
    with pytest.raises(ValueError, match="noise must be a float array"):
        sample(objective, network, NOISE[0], jax.random.key(0), sampler="ddim", num_steps=4)


# ---------------------------------------------------------------------------------------------
# classifier-free guidance
# ---------------------------------------------------------------------------------------------


def toy_apply(counter):
    def apply(x_in, time, labels):
        counter.append(x_in.shape[0])
        return x_in * (1.0 + labels[:, None]) + time[:, None]
    return apply


def test_guidance_is_uncond_plus_scale_times_the_difference_in_one_call():
    objective = make_objective("rectified_flow")
    x = jax.random.normal(jax.random.key(8), (3, 2))
    time = jnp.array([0.2, 0.5, 0.9])
    labels, null = jnp.array([1.0, 2.0, 3.0]), jnp.zeros(3)
    counter = []
    cond, uncond = toy_apply([])(x, time, labels), toy_apply([])(x, time, null)
    np.testing.assert_allclose(guided_network(objective, toy_apply(counter), labels, null, 1.0)(x, time), cond,
                               rtol=1e-6)
    assert counter == [6]  # one call on the doubled batch
    np.testing.assert_allclose(guided_network(objective, toy_apply([]), labels, null, 3.0)(x, time),
                               uncond + 3.0 * (cond - uncond), rtol=1e-5)
    linear = guided_network(objective, toy_apply([]), labels, null, 3.0, schedule="linear")(x, time)
    s = 1 + 2.0 * (1 - time[:, None])
    np.testing.assert_allclose(linear, uncond + s * (cond - uncond), rtol=1e-5)
    # a traced scale
    traced = jax.jit(lambda scale: guided_network(objective, toy_apply([]), labels, null, scale)(x, time))(2.5)
    np.testing.assert_allclose(traced, uncond + 2.5 * (cond - uncond), rtol=1e-5)


def test_guidance_interval_switches_at_its_boundary():
    objective = make_objective("rectified_flow")
    x = jnp.ones((4, 2))
    time = jnp.array([0.05, 0.7, 0.7001, 1.0])
    labels, null = jnp.ones(4), jnp.zeros(4)
    out = guided_network(objective, toy_apply([]), labels, null, 4.0, schedule="interval", interval=(0.1, 0.7))(x, time)
    cond, uncond = toy_apply([])(x, time, labels), toy_apply([])(x, time, null)
    guided = uncond + 4.0 * (cond - uncond)
    np.testing.assert_allclose(out, np.where(np.array([False, True, False, False])[:, None], guided, cond), rtol=1e-6)
    np.testing.assert_allclose(scale_schedule("interval", 4.0, jnp.array([0.0, 0.1, 0.7, 0.71]), interval=(0.1, 0.7)),
                               [1, 4, 4, 1])
    assert GUIDANCE_SCHEDULES == ("constant", "linear", "interval")
    with pytest.raises(ValueError, match="unknown guidance schedule 'cosine'"):
        guided_network(objective, toy_apply([]), labels, null, 4.0, schedule="cosine")
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        guided_network(objective, toy_apply([]), labels, null, 4.0, schedule="interval", interval=(0.8, 0.2))


def test_guidance_leaves_the_learned_variance_conditional():
    objective = make_objective("cosine", learn_sigma=True)
    x = jax.random.normal(jax.random.key(9), (3, 4))  # 2 data channels, 2 variance channels
    time = jnp.array([10.0, 500.0, 999.0])
    labels, null = jnp.array([1.0, 2.0, 3.0]), jnp.zeros(3)
    out = guided_network(objective, toy_apply([]), labels, null, 5.0)(x, time)
    cond, uncond = toy_apply([])(x, time, labels), toy_apply([])(x, time, null)
    np.testing.assert_allclose(out[:, :2], uncond[:, :2] + 5.0 * (cond[:, :2] - uncond[:, :2]), rtol=1e-5)
    np.testing.assert_array_equal(out[:, 2:], cond[:, 2:])


def test_guided_sampling_of_two_gaussians_moves_toward_the_conditional_one():
    """CFG inside the sampler: scale 1 samples the class's Gaussian, scale 0 the null one."""
    objective = make_objective("rectified_flow")
    class_networks = {1: gaussian_network(objective, 1.0, 0.2), 0: gaussian_network(objective, -1.0, 0.2)}

    def apply(x_in, time, labels):
        return jnp.where(labels[:, None] == 1, class_networks[1](x_in, time), class_networks[0](x_in, time))

    labels, null = jnp.ones(256, jnp.int32), jnp.zeros(256, jnp.int32)
    for scale, mean in ((1.0, 1.0), (0.0, -1.0)):
        x, _ = sample(objective, guided_network(objective, apply, labels, null, scale), NOISE[:256],
                      jax.random.key(0), sampler="heun", num_steps=16)
        assert abs(float(x.mean()) - mean) < 0.05
