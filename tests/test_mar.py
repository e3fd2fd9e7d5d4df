"""MAR (arXiv 2406.11838): masking, the diffusion head, the masked-token loss, the cosine iteration
counts, infill and generation under jit, and a short training run on digits."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import REPO

MAR_DIGITS = os.path.join(REPO, "experiments", "mar_digits.py")


@pytest.fixture(scope="module")
def mesh_context():
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def jit_init(make, *args):
    """nnx.split(make(*args, rngs=...), nnx.Param, ...) with the initialisers compiled as one program
    (eager initialisation dispatches every op on its own, which is slow on a busy CPU)."""
    graphdef = nnx.split(nnx.eval_shape(lambda: make(*args, rngs=nnx.Rngs(0))), nnx.Param, ...)[0]
    params, rest = jax.jit(lambda: nnx.split(make(*args, rngs=nnx.Rngs(0)), nnx.Param, ...)[1:])()
    return graphdef, params, rest


TINY = dict(data_shape=(8, 8, 1), num_classes=3, patch_size=2, width=32, depth=1, num_heads=2, decoder_width=32,
            decoder_depth=1, decoder_heads=2, mlp_ratio=2.0, buffer_size=2, head_width=32, head_depth=2)


@pytest.fixture(scope="module")
def tiny(mesh_context):
    """A tiny recipe and its model with noise on every parameter (so outputs depend on inputs)."""
    from maskgen.recipes.mar import MARRecipe

    recipe = MARRecipe(**TINY)
    graphdef, params, rest = jit_init(recipe.make_model)
    rng = np.random.default_rng(0)
    noisy = jax.tree.map(lambda x: (np.asarray(x) + 0.2 * rng.standard_normal(x.shape)).astype(np.float32), params)
    return recipe, graphdef, params, noisy, rest


def test_mask_ratio_is_one_per_batch_in_bounds_with_exact_counts():
    from maskgen.recipes.mar import min_masked, random_orders, sample_num_masked, training_mask

    n = 64
    counts = np.asarray(jax.jit(jax.vmap(lambda k: sample_num_masked(k, n, 0.7)))(
        jax.random.split(jax.random.key(0), 2000)))
    assert counts.min() >= math.ceil(0.7 * n) == min_masked(n, 0.7) == 45 and counts.max() <= n
    # The truncated normal N(1, 0.25) on [0.7, 1] peaks at 1: its mean ratio is 1 - 0.25 * (phi(0) - phi(-1.2))
    # / (Phi(0) - Phi(-1.2)) = 0.8660, and all masked happens (ceil(64 r) = 64 for r > 63/64).
    ratio_mean = 1 - 0.25 * (0.398942 - 0.194186) / (0.5 - 0.115070)
    assert abs(counts.mean() / n - ratio_mean) < 0.01
    assert (counts == n).any() and (counts <= 50).any()
    order = jax.jit(random_orders, static_argnums=(1, 2))(jax.random.key(1), 5, n)
    np.testing.assert_array_equal(np.sort(np.asarray(order), 1), np.tile(np.arange(n), (5, 1)))
    mask_of = jax.jit(training_mask, static_argnums=2)
    for num_masked in (45, 50, 64):  # a traced count: one compile
        masked, positions, valid = (np.asarray(a) for a in mask_of(order, jnp.int32(num_masked), n - 45))
        np.testing.assert_array_equal(masked.sum(1), [num_masked] * 5)
        np.testing.assert_array_equal(valid.sum(1), [n - num_masked] * 5)
        for row in range(5):  # the valid slots are exactly the visible positions, each once
            visible = positions[row][valid[row]]
            assert sorted(visible) == sorted(np.flatnonzero(~masked[row]))
            # and they are the last ranks of the order (MAR masks the first num_masked)
            np.testing.assert_array_equal(visible, np.asarray(order)[row, num_masked:])


def test_mask_counts_follow_mars_cosine_schedule():
    from maskgen.recipes.mar import cfg_scales, mask_counts

    # floor(16 cos(pi/8 k)) for k = 1, 2, 3: 14.78, 11.31, 6.12; then 0.
    np.testing.assert_array_equal(mask_counts(16, 4), [14, 11, 6, 0])
    for n, t in ((64, 1), (64, 2), (64, 16), (64, 64), (16, 16), (256, 64)):
        counts = mask_counts(n, t)
        revealed = np.concatenate([[n], counts[:-1]]) - counts
        assert revealed.sum() == n and counts[-1] == 0
        assert (revealed >= 1).all()  # strictly decreasing when T <= N
    assert mask_counts(64, 16)[0] == 63  # floor(64 cos(pi/32)) = 63
    assert list(mask_counts(3, 5)) == [2, 1, 1, 1, 0]  # T > N: MAR keeps one masked until the last
    # Linear CFG: 1 + (w - 1) (N - mask_len) / N, mask_len at least 1 (also on the last iteration).
    np.testing.assert_allclose(cfg_scales(16, np.array([14, 11, 6, 0]), 3.0, "linear"),
                               [1 + 2 * 2 / 16, 1 + 2 * 5 / 16, 1 + 2 * 10 / 16, 1 + 2 * 15 / 16], rtol=1e-6)
    np.testing.assert_allclose(cfg_scales(16, np.array([14, 0]), 3.0, "constant"), [3.0, 3.0])


def test_head_modulation_is_zero_at_init(mesh_context):
    from maskgen.models.mar import DiffusionHead

    graphdef, params, _ = jit_init(lambda rngs: DiffusionHead(token_dim=4, z_dim=8, width=16, depth=2, out_channels=8,
                                                              rngs=rngs))

    @jax.jit
    def outputs(params, x, t, z):
        head = nnx.merge(graphdef, params, {})
        moved = jnp.stack([head(x, t + 7.0, z), head(x, t, z * -3.0), head(x + 1.0, t, z)])
        return head(x, t, z), moved, head.out(head.final_norm(head.input_proj(x)))

    x = jax.random.normal(jax.random.key(0), (5, 4))
    t, z = jnp.arange(5.0) * 100, jax.random.normal(jax.random.key(1), (5, 8))
    base, _, _ = outputs(params, x, t, z)
    np.testing.assert_array_equal(base, 0.0)  # zero output layer
    # With a non-zero output layer but zero modulations, every residual block is the identity and the
    # final layer is LN(input_proj(x)): the output depends on x_t only, not on t or z.
    params = nnx.to_pure_dict(params)
    params["out"]["kernel"] = jax.random.normal(jax.random.key(2), params["out"]["kernel"].shape)
    base, (new_t, new_z, new_x), expected = outputs(params, x, t, z)
    np.testing.assert_allclose(base, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new_t, base)
    np.testing.assert_array_equal(new_z, base)
    assert not np.allclose(new_x, base)
    # Once the modulations are non-zero, t and z enter through them.
    for i, block in params["blocks"].items():
        block["modulation"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(3 + i), block["modulation"]["kernel"].shape)
    base, (new_t, new_z, _), _ = outputs(params, x, t, z)
    assert not np.allclose(new_t, base) and not np.allclose(new_z, base)


def test_encoder_hides_padding_slots_exactly(tiny):
    recipe, graphdef, _, noisy, rest = tiny
    tokens = jax.random.normal(jax.random.key(0), (2, 5, recipe.token_dim))
    positions = jnp.array([[3, 0, 9, 1, 1], [15, 2, 4, 1, 1]])
    valid = jnp.array([[True, True, True, False, False]] * 2)
    labels = jnp.array([0, 3])  # 3 is the null class

    @jax.jit
    def conditions(params):
        model = nnx.merge(graphdef, params, rest)
        return (model(tokens, positions, valid, labels), model(tokens.at[:, 3:].set(50.0), positions, valid, labels),
                model(tokens[:, :3], positions[:, :3], valid[:, :3], labels))

    z, padded_changed, unpadded = conditions(noisy)
    assert z.shape == (2, recipe.num_positions, 32)
    np.testing.assert_array_equal(z, padded_changed)
    np.testing.assert_array_equal(z, unpadded)


def test_loss_is_on_masked_tokens_only_and_repeats_each_token(tiny):
    recipe, graphdef, _, noisy, rest = tiny
    assert recipe.diffusion_batch_mul == 4 and recipe.objective.learn_sigma
    n, d = recipe.num_positions, recipe.token_dim
    tokens = jax.random.normal(jax.random.key(0), (3, n, d))
    z = jax.random.normal(jax.random.key(1), (3, n, 32))
    masked = jax.random.uniform(jax.random.key(2), (3, n)) < 0.7
    first = np.argwhere(np.asarray(masked))[0]

    @jax.jit
    def losses(params):
        head = nnx.merge(graphdef, params, rest).head
        loss, per_draw = recipe.diffusion_loss(head, tokens, z, masked, jax.random.key(3))
        # Unmasked targets changed; one masked target changed.
        unmasked_moved = recipe.diffusion_loss(head, jnp.where(masked[..., None], tokens, tokens + 5.0), z, masked,
                                               jax.random.key(3))[0]
        masked_moved = recipe.diffusion_loss(head, tokens.at[first[0], first[1]].add(5.0), z, masked,
                                             jax.random.key(3))[0]
        return loss, per_draw, unmasked_moved, masked_moved

    loss, per_draw, unmasked_moved, masked_moved = losses(noisy)
    assert per_draw.shape == (4, 3, n)
    # Each token's 4 draws have their own t and noise.
    assert not np.allclose(per_draw[0], per_draw[1])
    np.testing.assert_allclose(loss, np.asarray(per_draw)[:, np.asarray(masked)].mean(), rtol=1e-5)
    np.testing.assert_array_equal(unmasked_moved, loss)
    assert masked_moved != loss


@pytest.fixture(scope="module")
def generated(tiny):
    """One jitted call: an infill batch and a guided class batch, 4 iterations of 3 DDPM steps."""
    recipe, graphdef, _, noisy, rest = tiny
    data = jax.random.normal(jax.random.key(0), (4,) + recipe.data_shape)
    known = jax.random.uniform(jax.random.key(1), (4,) + recipe.token_shape) < 0.5
    known = known.at[3].set(False)  # a row with nothing known
    settings = dict(num_steps=4, diffusion_steps=3, temperature=1.0)

    @jax.jit
    def run(params, data, known, labels):
        model = nnx.merge(graphdef, params, rest)
        infill = recipe.generate(model, {"tokens": data, "known": known, "label": labels}, jax.random.key(2),
                                 cfg_scale=1.0, **settings)
        guided = recipe.generate(model, {"label": labels}, jax.random.key(3), cfg_scale=3.0, **settings)
        return infill["tokens"], guided["tokens"], infill["nfe"], guided["nfe"]

    labels = jnp.array([0, 1, 2, 0])
    return recipe, data, known, run(noisy, data, known, labels)


def test_infill_keeps_known_tokens_bit_exact(generated):
    recipe, data, known, (infill, guided, nfe, guided_nfe) = generated
    assert infill.shape == guided.shape == (4,) + recipe.data_shape and infill.dtype == jnp.float32
    p = recipe.patch_size
    pixel_known = np.repeat(np.repeat(np.asarray(known), p, 1), p, 2)
    np.testing.assert_array_equal(np.asarray(infill)[pixel_known], np.asarray(data)[pixel_known])
    # Every unknown position was sampled (no zero left from the start), finitely.
    assert np.isfinite(infill).all() and np.isfinite(guided).all()
    assert (np.abs(np.asarray(infill)[~pixel_known]) > 0).all() and (np.abs(np.asarray(guided)) > 0).all()
    assert int(nfe) == int(guided_nfe) == 4 * 3  # iterations x head steps


def test_generation_is_static_shape_and_checks_its_batch(tiny):
    recipe, graphdef, params, _, rest = tiny
    model = nnx.merge(graphdef, params, rest)
    # One trace for any known mask: the known count is data, not shape.
    traced = jax.make_jaxpr(lambda d, k: recipe.generate(model, {"tokens": d, "known": k}, jax.random.key(0),
                                                         num_steps=3, diffusion_steps=2)["tokens"])
    data = jnp.zeros((2,) + recipe.data_shape)
    jaxpr = str(traced(data, jnp.zeros((2,) + recipe.token_shape, bool)))
    # lax loops (fori_loop lowers to scan), no Python loop over iterations or head steps: the
    # head is traced once (its output Dense appears once per call site, not per step).
    assert "scan[" in jaxpr or "while[" in jaxpr
    assert jaxpr.count("scan[") + jaxpr.count("while[") == 2
    with pytest.raises(ValueError, match="per position"):
        recipe.generate(model, {"tokens": data, "known": jnp.zeros((2,) + recipe.data_shape, bool)}, jax.random.key(0))
    with pytest.raises(ValueError, match="needs a batch with 'label'"):
        recipe.generate(model, {}, jax.random.key(0))
    assert recipe.supported_tasks() == {"class", "infill"} and recipe.supported_tasks() <= recipe.tasks
    info = recipe.info()
    assert info["token_shape"] == (4, 4) and info["data_shape"] == (8, 8, 1) and info["num_classes"] == 3


def _config(*args):
    from maskgen import config as config_lib

    return config_lib.load_config_file(f"{MAR_DIGITS}:" + ",".join(("size=tiny",) + args))


def test_config_problems_are_named():
    from maskgen.data import source_info
    from maskgen.recipes.mar import MARRecipe

    info = source_info("digits", None)
    assert MARRecipe.validate(_config(), info) == []
    config = _config()
    config.model.patch_size = 3
    config.loss.mask_ratio_min = 0.0
    config.sampling.sampler = "leapfrog"
    problems = "\n".join(MARRecipe.validate(config, info))
    assert "patch_size=3 does not divide config.data.image_size 16x16" in problems
    assert "config.loss.mask_ratio_min=0.0: must be a number in (0, 1]" in problems
    assert "config.sampling.sampler='leapfrog'" in problems and "'ddpm'" in problems
    text = source_info("pydoc_text", None)
    assert any("trains on images" in p for p in MARRecipe.validate(_config(), text))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from maskgen import config as config_lib
    from maskgen import train as train_lib

    workdir = str(tmp_path_factory.mktemp("mar") / "run")
    config = _config("steps=40")
    config_lib.apply_overrides(config, ["evals.generation.every=-1", "log_every=4", "optimizer.warmup_steps=4"])
    train_lib.train(config, workdir)
    return workdir


def test_loss_falls_on_digits(tiny_run):
    with open(os.path.join(tiny_run, "metrics.jsonl")) as f:
        losses = [row["loss"] for row in map(json.loads, f) if "loss" in row]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2]), losses


@pytest.mark.slow
def test_small_config_draws_digits_of_the_asked_class(tmp_path):
    from maskgen import config as config_lib
    from maskgen import train as train_lib

    config = config_lib.load_config_file(MAR_DIGITS)
    result = train_lib.train(config, str(tmp_path / "run"))
    scalars = result["evals"]["generation"].scalars
    assert scalars["class_consistency"] >= 0.8, scalars
