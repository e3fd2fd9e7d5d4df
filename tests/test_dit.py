"""The diffusion transformer (DiT/SiT adaLN-Zero, keep_indices, patch-mixer, expert-choice MoE,
layer-wise scaling) and the `dit` recipe with MicroDiT's masking and REPA's alignment."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import REPO
from maskgen.config import DEFAULT_SHARDING_RULES, ConfigError, load_config_file, apply_overrides
from maskgen.models.dit import DiffusionTransformer, layerwise_ratios, moe_blocks, timestep_frequencies
from maskgen.models.layers import ExpertChoiceMLP, gelu
from maskgen.recipes.dit import (DiTRecipe, alignment_loss, masking_stages, per_patch_loss, random_keep_indices,
                                 stage_index, visible_mean)

DIT_DIGITS = os.path.join(REPO, "experiments", "dit_digits.py")
TINY = dict(in_dim=4, out_dim=4, grid=(4, 4), num_classes=3, width=32, depth=3, num_heads=2, mlp_ratio=2.0)
B, N = 2, 16


pytestmark = pytest.mark.usefixtures("one_device_mesh")


def make(seed=0, **overrides) -> DiffusionTransformer:
    return DiffusionTransformer(**{**TINY, **overrides}, rngs=nnx.Rngs(seed))


def perturbed(model, scale=0.3, seed=1):
    """Noise on every parameter (numpy: no per-shape compiles), so zero-initialised layers act."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + scale * rng.standard_normal(x.shape), jnp.float32),
                          params)
    return nnx.merge(graphdef, params, rest)


# One compile per model structure and argument layout (eager op-by-op dispatch is slower here).
forward = nnx.jit(lambda model, x, t, y, keep=None: model(x, t, y, keep_indices=keep))


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((B, N, 4)), jnp.float32), jnp.asarray([0.2, 0.9], jnp.float32),
            jnp.asarray([1, 3], jnp.int32))


# ------------------------------------------------------------------------------------ the model

def test_zero_output_and_identity_blocks_at_init():
    """adaLN-Zero: every block is the identity and the final layer outputs zeros at init (DiT)."""
    model = make(mixer_depth=1, num_experts=2)
    x, t, y = inputs()
    assert np.all(np.asarray(forward(model, x, t, y)) == 0.0)
    h = jax.random.normal(jax.random.key(0), (B, N, 32))
    cond = model._cond(t, y, B)
    for block in list(model.mixer) + list(model.blocks):
        np.testing.assert_array_equal(np.asarray(block(h, cond)[0]), np.asarray(h))
    # Once trained (perturbed), time and class both change the output.
    trained = perturbed(model)
    base = np.asarray(forward(trained, x, t, y))
    assert not np.allclose(base, np.asarray(forward(trained, x, t + 0.3, y)))
    assert not np.allclose(base, np.asarray(forward(trained, x, t, jnp.asarray([0, 3]))))


def test_timestep_frequencies_are_dits():
    t = jnp.asarray([0.0, 3.5])
    emb = np.asarray(timestep_frequencies(t, dim=8))
    freqs = np.exp(-np.log(10000.0) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3.5 * freqs), np.sin(3.5 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])


def _by_hand(model, x, t, y, keep):
    """The backbone run on the gathered tokens only, written out from the model's parts."""
    c = model._cond(t, y, B)
    from maskgen.models.vit import sincos_2d

    h = model.patch_embed(x) + jnp.asarray(sincos_2d(4, 4, 32))
    for block in model.mixer:
        h = block(h, c)[0]
    h = jnp.take_along_axis(h, keep[..., None], axis=1)
    for block in model.blocks:
        h = block(h, c)[0]
    shift, scale = jnp.unstack(model.final_modulation(c), axis=1)
    return model.final_linear(model.final_norm(h) * (1 + scale[:, None]) + shift[:, None])


@pytest.mark.parametrize("mixer_depth", [0, 1], ids=["naive", "deferred"])
def test_keep_indices_run_the_backbone_on_the_gathered_tokens(mixer_depth):
    model = perturbed(make(mixer_depth=mixer_depth))
    x, t, y = inputs()
    keep = jnp.asarray([[0, 5, 6, 15], [2, 3, 9, 12]], jnp.int32)
    out = np.asarray(forward(model, x, t, y, keep))
    expected = np.asarray(_by_hand(model, x, t, y, keep))
    rows = np.arange(B)[:, None]
    np.testing.assert_allclose(out[rows, np.asarray(keep)], expected, rtol=1e-5, atol=1e-5)
    dropped = np.ones((B, N), bool)
    dropped[rows, np.asarray(keep)] = False
    assert np.all(out[dropped] == 0.0)  # MicroDiT's zero, non-learned mask token
    # Without a mixer the dropped patches' values cannot matter; with one they do.
    x2 = jnp.where(jnp.asarray(dropped)[..., None], 5.0, x)
    changed = not np.allclose(np.asarray(forward(model, x2, t, y, keep)), out)
    assert changed == (mixer_depth > 0)


def test_deferred_and_naive_differ_only_by_the_mixer():
    deferred = perturbed(make(mixer_depth=1))
    naive = make()
    # The naive model takes every parameter of the deferred one but the mixer's.
    shared = {k: v for k, v in nnx.to_pure_dict(nnx.state(deferred, nnx.Param)).items() if k != "mixer"}
    nnx.update(naive, shared)
    x, t, y = inputs()
    keep = jnp.asarray([[1, 4, 7, 8], [0, 2, 10, 11]], jnp.int32)
    a = np.asarray(forward(deferred, x, t, y, keep))
    b = np.asarray(forward(naive, x, t, y, keep))
    assert not np.allclose(a, b)
    # A mixer that is the identity (zero modulation: its state at init) makes them equal.
    mod = deferred.mixer[0].modulation
    mod.kernel[...] = jnp.zeros_like(mod.kernel[...])
    mod.bias[...] = jnp.zeros_like(mod.bias[...])
    np.testing.assert_allclose(np.asarray(forward(deferred, x, t, y, keep)), b, rtol=1e-6, atol=1e-6)


def test_return_hidden_is_the_state_after_block_k():
    model = perturbed(make())
    x, t, y = inputs()
    _, hidden = model(x, t, y, return_hidden=2)
    c = model._cond(t, y, B)
    from maskgen.models.vit import sincos_2d

    h = model.patch_embed(x) + jnp.asarray(sincos_2d(4, 4, 32))
    for block in model.blocks[:2]:
        h = block(h, c)[0]
    np.testing.assert_allclose(np.asarray(hidden), np.asarray(h), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must name a backbone block in 1..3"):
        model(x, t, y, return_hidden=4)


def test_layerwise_scaling_and_moe_placement():
    assert layerwise_ratios(3, 0.5, 1.0) == [0.5, 0.75, 1.0]
    assert moe_blocks(6, 2) == [False, True, False, True, False, False]  # every second, never the last
    model = nnx.eval_shape(lambda: make(depth=4, num_heads=4, layerwise_scaling=((0.5, 1.0), (0.5, 4.0)),
                                        num_experts=2))
    assert model.block_heads == [2, 3, 3, 4]
    assert [blk.attn.head_dim for blk in model.blocks] == [8] * 4
    assert [blk.mlp.fc1.kernel.shape[-1] if hasattr(blk.mlp, "fc1") else blk.mlp.fc1_kernel.shape[-1]
            for blk in model.blocks] == [16, 53, 90, 128]
    assert [isinstance(blk.mlp, ExpertChoiceMLP) for blk in model.blocks] == [False, True, False, False]


# --------------------------------------------------------------------------------------- MoE

def test_expert_choice_routes_capacity_tokens_and_matches_a_dense_computation():
    moe = ExpertChoiceMLP(8, 6, num_experts=3, capacity_factor=1.5, rngs=nnx.Rngs(0))
    moe = perturbed(moe, scale=0.5)
    x = jax.random.normal(jax.random.key(3), (2, 6, 8))
    capacity = moe.capacity(6)
    assert capacity == 3  # 1.5 * 6 tokens / 3 experts
    gates, picked = moe.route(x)
    assert picked.shape == (2, 3, capacity)
    for row in np.asarray(picked).reshape(-1, capacity):  # each expert picks `capacity` distinct tokens
        assert len(set(row.tolist())) == capacity
    # By hand: softmax gates over experts; each expert takes its top-C tokens by gate.
    p = {k: np.asarray(v) for k, v in nnx.to_pure_dict(nnx.state(moe, nnx.Param)).items() if k != "router"}
    router = nnx.to_pure_dict(nnx.state(moe.router, nnx.Param))
    xs = np.asarray(x, np.float64)
    logits = xs @ np.asarray(router["kernel"]) + np.asarray(router["bias"])
    g = np.exp(logits - logits.max(-1, keepdims=True))
    g /= g.sum(-1, keepdims=True)
    expected = np.zeros_like(xs)
    for b in range(2):
        for e in range(3):
            top = np.argsort(-g[b, :, e], kind="stable")[:capacity]
            assert sorted(top.tolist()) == sorted(np.asarray(picked)[b, e].tolist())
            for tok in top:
                h = np.asarray(gelu(jnp.asarray(xs[b, tok] @ p["fc1_kernel"][e] + p["fc1_bias"][e])), np.float64)
                expected[b, tok] += g[b, tok, e] * (h @ p["fc2_kernel"][e] + p["fc2_bias"][e])
    np.testing.assert_allclose(np.asarray(moe(x)), expected, rtol=2e-5, atol=2e-5)


def test_moe_parameters_carry_the_expert_axis():
    moe = ExpertChoiceMLP(8, 6, num_experts=4, capacity_factor=2.0, rngs=nnx.Rngs(0))
    names = {k: v.out_sharding for k, v in nnx.to_flat_state(nnx.state(moe, nnx.Param))}
    assert names[("fc1_kernel",)] == ("expert", "embed", "mlp")
    assert names[("fc2_kernel",)] == ("expert", "mlp", "embed")
    assert names[("router", "kernel")] == ("embed", "expert")
    assert ("expert", None) in DEFAULT_SHARDING_RULES


# ------------------------------------------------------------------------------------ recipe parts

def test_keep_indices_and_visible_mean():
    keep = np.asarray(random_keep_indices(jax.random.key(0), 3, 16, 4))
    assert keep.shape == (3, 4) and all(len(set(r)) == 4 and list(r) == sorted(r) for r in keep)
    values = jnp.arange(32, dtype=jnp.float32).reshape(2, 16)
    keep = jnp.asarray([[0, 1], [2, 15]])
    assert float(visible_mean(values, keep)) == pytest.approx((0 + 1 + 18 + 31) / 4)
    assert float(visible_mean(values, None)) == pytest.approx(15.5)
    per_position = jnp.arange(16, dtype=jnp.float32).reshape(1, 4, 4)
    np.testing.assert_allclose(np.asarray(per_patch_loss(per_position, 2))[0], [2.5, 4.5, 10.5, 12.5])


def test_masking_stages_and_a_ratio_with_no_visible_patch():
    assert masking_stages("none", 0.0, (), 16) == ((0, 16),)
    assert masking_stages("deferred", 0.75, (), 16) == ((0, 4),)
    assert masking_stages("naive", 0.0, ((0, 0.5), (100, 0.0)), 16) == ((0, 8), (100, 16))
    assert [int(stage_index(s, (0, 100))) for s in (0, 99, 100, 500)] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="leaves no visible patch of the 4"):
        masking_stages("naive", 0.9, (), 4)


def test_alignment_loss_by_hand():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((2, 3, 5))
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert float(alignment_loss(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(-cos.mean(), rel=1e-5)
    assert float(alignment_loss(jnp.asarray(a), jnp.asarray(3 * a))) == pytest.approx(-1.0, rel=1e-6)


# ----------------------------------------------------------------------------------- the recipe

def tiny_config(*overrides, arg=""):
    config = load_config_file(f"{DIT_DIGITS}:size=tiny,evals=0{',' + arg if arg else ''}")
    apply_overrides(config, list(overrides))
    return config


@pytest.fixture(scope="module")
def digits():
    from maskgen.data import source_info
    from maskgen.data.digits import load_all, split_indices

    info = source_info("digits", None)
    images, labels = load_all()
    train = split_indices("train")
    return info, images[train], labels[train]


def _batch(digits, n=16):
    """16x16 digits in [-1, 1] (the pipeline's nearest-2x upsample stands in for its resize)."""
    _, images, labels = digits
    x = np.asarray(images[:n], np.float32) / 127.5 - 1.0
    x = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    return {"image": jnp.asarray(x), "label": jnp.asarray(labels[:n], jnp.int32)}


def _recipe(digits, *overrides, arg=""):
    config = tiny_config(*overrides, arg=arg)
    problems = DiTRecipe.validate(config, digits[0])
    assert not problems, problems
    return DiTRecipe.from_config(config, digits[0])


def test_loss_falls_on_digits(digits):
    recipe = _recipe(digits, "model.depth=3", arg="masking=deferred,ratio=0.5,experts=2")
    model = recipe.make_model(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(2e-3)
    opt = tx.init(params)
    batch = _batch(digits)
    rng = jax.random.key(1)  # the same noise every step: the loss on it must fall

    @jax.jit
    def step(params, opt, i):
        def loss_fn(p):
            return recipe.loss(nnx.merge(graphdef, p), batch, rng, i)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, loss, metrics

    losses = []
    for i in range(25):
        params, opt, loss, metrics = step(params, opt, jnp.int32(i))
        losses.append(float(loss))
    assert float(metrics["visible_fraction"]) == 0.5
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_visible_only_loss_ignores_masked_patches(digits):
    recipe = _recipe(digits, arg="masking=naive,ratio=0.75")
    model = perturbed(recipe.make_model(nnx.Rngs(0)), scale=0.05)
    batch = _batch(digits, 4)
    rng = jax.random.key(7)
    loss_of = jax.jit(lambda images: recipe.loss(model, dict(batch, image=images), rng, jnp.int32(0))[0])
    loss = float(loss_of(batch["image"]))
    keep = random_keep_indices(jax.random.split(rng, 3)[2], 4, 64, 16)
    visible = np.zeros((4, 64), bool)
    visible[np.arange(4)[:, None], np.asarray(keep)] = True
    pixel_visible = np.repeat(np.repeat(visible.reshape(4, 8, 8), 2, 1), 2, 2)[..., None]
    hidden_changed = jnp.where(pixel_visible, batch["image"], 0.3)
    assert float(loss_of(hidden_changed)) == pytest.approx(loss, rel=1e-6)
    visible_changed = jnp.where(pixel_visible, 0.3, batch["image"])
    assert float(loss_of(visible_changed)) != pytest.approx(loss, rel=1e-3)


def test_masking_schedule_switches_inside_one_step(digits):
    recipe = _recipe(digits, arg="masking=deferred,ratio=0.75,finetune_from=10")
    model = recipe.make_model(nnx.Rngs(0))
    batch = _batch(digits, 4)
    run = jax.jit(lambda s: recipe.loss(model, batch, jax.random.key(0), s)[1]["visible_fraction"])
    assert [float(run(jnp.int32(s))) for s in (0, 9, 10)] == [0.25, 0.25, 1.0]


class _FakeEncoder:
    """Fixed random features [B, 64, 6] of the images (a linear map of the 2x2 patches)."""

    def __init__(self):
        self.w = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6)), jnp.float32)

    def __call__(self, images):
        from maskgen.models.vit import patchify

        return patchify(images, 2) @ self.w


def test_repa_loss_is_diffusion_plus_weighted_alignment(digits):
    info = {"grid": (8, 8), "width": 6, "image_shape": (16, 16, 1)}
    config = tiny_config(arg="masking=naive,ratio=0.5")
    recipe = DiTRecipe(**{**_recipe_kwargs(config, digits[0]), "repa_workdir": "/nonexistent", "repa_layer": 1,
                          "repa_weight": 0.5, "repa_projector_dim": 8, "encoder_info": info})
    recipe._encoder = _FakeEncoder()
    model = perturbed(recipe.make_model(nnx.Rngs(0)), scale=0.05)
    batch = _batch(digits, 4)
    rng = jax.random.key(3)
    total, metrics = recipe.loss(model, batch, rng, jnp.int32(0))
    # By hand: the states after block 1 on the kept tokens, projected, against the kept features.
    noise_rng, class_rng, mask_rng = jax.random.split(rng, 3)
    noisy = recipe.objective.corrupt(batch["image"], noise_rng)
    labels = jnp.where(jax.random.uniform(class_rng, (4,)) < 0.1, 10, batch["label"])
    keep = random_keep_indices(mask_rng, 4, 64, 32)
    _, hidden = recipe.apply(model, noisy["x_in"], noisy["time"], labels, keep, 1)
    target = jnp.take_along_axis(_FakeEncoder()(batch["image"]), keep[..., None], axis=1)
    p, t = np.asarray(model.project(hidden), np.float64), np.asarray(target, np.float64)
    cos = (p * t).sum(-1) / np.linalg.norm(p, axis=-1) / np.linalg.norm(t, axis=-1)
    assert float(metrics["alignment_loss"]) == pytest.approx(-cos.mean(), rel=1e-4)
    assert float(total) == pytest.approx(float(metrics["diffusion_loss"]) - 0.5 * cos.mean(), rel=1e-5)


def _recipe_kwargs(config, info):
    """DiTRecipe's arguments from a config (as from_config builds them), to vary one."""
    built = {}
    original = DiTRecipe.__init__

    def capture(self, **kwargs):
        built.update(kwargs)
        original(self, **kwargs)

    DiTRecipe.__init__ = capture
    try:
        DiTRecipe.from_config(config, info)
    finally:
        DiTRecipe.__init__ = original
    return built


def _fake_mae_run(tmp_path, patch_size):
    """A workdir with just an MAE run's config.json (the grid check reads no weights)."""
    from maskgen.config import config_to_json

    config = load_config_file(os.path.join(REPO, "experiments", "mae_digits.py") + ":size=tiny")
    workdir = tmp_path / f"mae_p{patch_size}"
    workdir.mkdir()
    with config.unlocked():
        config.model.patch_size = patch_size
    (workdir / "config.json").write_text(config_to_json(config))
    return str(workdir)


def test_repa_encoder_grid_mismatch_and_latent_data_are_clear_errors(digits, tmp_path):
    workdir = _fake_mae_run(tmp_path, patch_size=4)
    problems = DiTRecipe.validate(tiny_config(arg=f"repa={workdir}"), digits[0])
    assert any("patch grid is 4x4, the model's token grid is 8x8" in p for p in problems), problems
    good = _fake_mae_run(tmp_path, patch_size=2)
    assert not DiTRecipe.validate(tiny_config(arg=f"repa={good}"), digits[0])
    problems = DiTRecipe.validate(tiny_config(arg="masking=naive,ratio=0.995"), digits[0])
    assert any("leaves no visible patch" in p for p in problems), problems
    from maskgen.data.specs import LabelSpec, LatentSpec

    latent_info = {"fields": {"latents": LatentSpec((4, 4, 8), 0.5), "label": LabelSpec(10)}, "num_classes": 10,
                   "splits": {"train": 100}, "image_shape": None}
    config = tiny_config(f"repa.encoder_workdir={good}", "data.name=tokens", "data.image_size=0", "model.patch_size=1")
    problems = DiTRecipe.validate(config, latent_info)
    assert any("latent data without images" in p for p in problems), problems


def test_generate_returns_data_shaped_samples(digits):
    recipe = _recipe(digits)
    model = perturbed(recipe.make_model(nnx.Rngs(0)), scale=0.05)
    out = jax.jit(lambda rng: recipe.generate(model, {"label": jnp.arange(3)}, rng, sampler="heun", num_steps=3,
                                              cfg_scale=2.0))(jax.random.key(0))
    assert out["tokens"].shape == (3, 16, 16, 1) and np.all(np.isfinite(np.asarray(out["tokens"])))
    assert int(out["nfe"]) > 0
    assert recipe.info()["token_shape"] == (8, 8) and recipe.info()["data_shape"] == (16, 16, 1)


# --------------------------------------------------------------------------- resume with MoE on

@pytest.mark.slow  # ~50 s; the default suite's resume test is tests/test_train.py::test_sigkill_then_rerun_is_bit_identical[0]
def test_sigkill_then_rerun_is_bit_identical_with_moe(tmp_path):
    """A MoE run killed (SIGKILL) after a mid-run checkpoint and rerun with the same command ends
    with exactly the state, EMA and logged losses of an uninterrupted run."""
    import signal
    import subprocess
    import sys

    from conftest import run_cli
    from test_train import _wait_for_checkpoint, assert_trees_equal, load_item, read_metrics

    args = ["train", "--config", f"{DIT_DIGITS}:size=tiny,evals=0,experts=2,steps=120", "--config.model.depth=3",
            "--config.checkpoint_every=10", "--config.log_every=1"]
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    result = run_cli(*args, "--workdir", reference)
    assert result.returncode == 0, result.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, "-m", "maskgen", *args, "--workdir", killed], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_checkpoint(killed, at_least=20)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.isdir(os.path.join(killed, "checkpoints", "120"))
    result = run_cli(*args, "--workdir", killed)
    assert result.returncode == 0 and "resumed from checkpoint at step" in result.stderr, result.stderr[-3000:]
    for item in ("state", "ema"):
        assert_trees_equal(load_item(killed, 120, item), load_item(reference, 120, item))
    assert ([(r["step"], r["loss"]) for r in read_metrics(killed) if "loss" in r]
            == [(r["step"], r["loss"]) for r in read_metrics(reference) if "loss" in r])


def test_config_arguments_are_checked():
    with pytest.raises(ConfigError, match="ratio"):
        load_config_file(f"{DIT_DIGITS}:ratio=1.5")
    config = load_config_file(f"{DIT_DIGITS}:masking=deferred,ratio=0.75,finetune_from=100,experts=4")
    assert config.masking.schedule == ((0, 0.75), (100, 0.0)) and config.model.mixer_depth == 1
    assert isinstance(config, ml_collections.ConfigDict)


@pytest.mark.slow
def test_small_digits_config_samples_the_asked_class(tmp_path):
    """`experiments/dit_digits.py` (small) on a 2-core CPU: class consistency >= 0.8."""
    from maskgen.train import train

    workdir = str(tmp_path / "run")
    train(load_config_file(DIT_DIGITS), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        evals = [json.loads(line) for line in f if "generation/class_consistency" in line]
    assert evals[-1]["generation/class_consistency"] >= 0.8, evals[-1]
