"""MaskGIT end to end on tiny runs: token data in the loop, training, sampling, editing, the CLI.

One tiny VQ tokenizer and its token dataset are made once per module; the runs here check
plumbing and invariants (the class-consistency bar of the demo-length run is a slow test).
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, run_cli

TOKENIZER_DIGITS = os.path.join(REPO, "experiments", "tokenizer_digits.py")
MASKGIT_DIGITS = os.path.join(REPO, "experiments", "maskgit_digits.py")


def tiny_maskgit_config(tokens_dir, *overrides, steps=30, model="maskgit"):
    from maskgen import config as config_lib

    config = config_lib.load_config_file(f"{MASKGIT_DIGITS}:tokens={tokens_dir},size=tiny,steps={steps},model={model}")
    config_lib.apply_overrides(config, list(overrides))
    return config


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory):
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.tokenize import tokenize_dataset

    root = tmp_path_factory.mktemp("maskgit")
    config = config_lib.load_config_file(f"{TOKENIZER_DIGITS}:quantizer=vq,size=tiny,steps=30")
    config_lib.apply_overrides(config, ["evals.reconstruction.every=-1"])
    train_lib.train(config, str(root / "tokenizer"))
    out = str(root / "tokens")
    tokenize_dataset(str(root / "tokenizer"), "digits", out)
    return out


@pytest.fixture(scope="module")
def maskgit_run(tokens_dir, tmp_path_factory):
    from maskgen import train as train_lib

    workdir = str(tmp_path_factory.mktemp("mg") / "run")
    result = train_lib.train(tiny_maskgit_config(tokens_dir, "log_every=5", steps=60), workdir)
    return workdir, result


def test_random_token_mask_has_exact_counts():
    from maskgen.recipes.maskgit import random_token_mask

    counts = jnp.array([1, 5, 16, 9])
    mask = np.asarray(random_token_mask(jax.random.key(0), counts, 16))
    np.testing.assert_array_equal(mask.sum(1), [1, 5, 16, 9])
    # Different rows pick different positions (a fresh permutation per example).
    many = np.asarray(random_token_mask(jax.random.key(1), jnp.full((200,), 4), 16))
    assert len({tuple(np.flatnonzero(r)) for r in many}) > 150
    assert abs(many.mean(0) - 0.25).max() < 0.12  # every position about equally likely


def test_smoothed_cross_entropy_matches_the_formula():
    from maskgen.recipes.maskgit import smoothed_cross_entropy

    logits = jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
    got = float(smoothed_cross_entropy(logits, jnp.array([0]), 0.1)[0])
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert got == pytest.approx(-(target * np.log([0.7, 0.2, 0.1])).sum(), rel=1e-5)


def test_masked_loss_averages_per_example_then_over_the_batch():
    from maskgen.recipes.maskgit import masked_mean

    # Example 0 has 1 masked token with loss 4; example 1 has 3 masked tokens with loss 1 each.
    values = jnp.array([[4.0, 9.0, 9.0, 9.0], [1.0, 1.0, 1.0, 9.0]])
    weights = jnp.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    # MaskGIT/MAGVIT: mean over each example's masked tokens (4 and 1), then over the batch.
    np.testing.assert_allclose(masked_mean(values, weights, "per_example"), 2.5)
    # Token-weighted: (4 + 3) / 4 masked tokens.
    np.testing.assert_allclose(masked_mean(values, weights, "per_token"), 1.75)
    # A row with nothing masked contributes 0, not NaN.
    np.testing.assert_allclose(masked_mean(values, jnp.zeros_like(weights), "per_example"), 0.0)


def test_maskgit_configs_use_the_papers_loss_weighting():
    from maskgen.config import load_config_file

    for name in ("maskgit_digits.py", "maskgit_imagenet256.py"):
        config = load_config_file(f"{REPO}/experiments/{name}")
        assert config.loss.weighting == "per_example", name


def test_maskgit_trains_on_tokens_and_evaluates(maskgit_run):
    workdir, result = maskgit_run
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "loss" in line]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[0] == pytest.approx(np.log(256), abs=0.6)  # starts near uniform over 256 codes
    assert losses[-1] < losses[0] - 0.5, losses
    scalars = result["evals"]["generation"].scalars
    assert 0.0 <= scalars["class_consistency"] <= 1.0
    assert scalars["frechet_distance_digits"] > 0 and scalars["frechet_distance_digits_floor"] > 0
    images = result["evals"]["generation"].images
    assert images["samples"].shape[0] > images["samples"].shape[1] / 2  # 10 class rows
    assert "trajectory" in images


def test_token_config_mismatch_fails_before_compiling(tokens_dir, workdir):
    result = run_cli("train", "--config", f"{MASKGIT_DIGITS}:tokens={tokens_dir},size=tiny", "--workdir", workdir,
                     "--config.model.codebook_size=1024")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "codebook size: config.model says 1024, the tokens have 256" in result.stderr
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    result = run_cli("train", "--config", f"{MASKGIT_DIGITS}:size=tiny", "--workdir", workdir,
                     "--config.data.name=digits")
    assert result.returncode == 2 and "trains on token grids" in result.stderr


def test_edit_keeps_known_tokens_and_fills_the_mask(maskgit_run):
    from maskgen.generate import GeneratorHandle, load_image, load_mask

    handle = GeneratorHandle(maskgit_run[0])
    image, label = load_image("test:0", handle.tokenizer)
    mask = load_mask("bottom", image.shape[0])
    token_mask = handle.token_mask(mask)
    assert token_mask[:4].sum() == 0 and token_mask[4:].all()  # the bottom half of the 8x8 grid
    tokens = handle.tokenizer.encode(image[None])
    batch = {"label": np.full(handle.ctx.batch_multiple, label, np.int32),
             "tokens": np.repeat(tokens, handle.ctx.batch_multiple, 0),
             "known": np.repeat(~token_mask[None], handle.ctx.batch_multiple, 0)}
    out = handle.ctx.to_host(handle.ctx.apply("generate", handle.variables, handle.ctx.shard(batch),
                                              jax.random.key(0), **handle.settings(num_steps=4)))
    edited = np.asarray(out["tokens"])[0]
    np.testing.assert_array_equal(edited[:4], tokens[0, :4])  # known tokens never change
    traj = np.asarray(out["trajectory"])[:, 0]
    assert (traj[:, :4] == tokens[0, :4]).all()
    assert (edited >= 0).all() and (edited < 256).all()


def test_sample_and_edit_commands(maskgit_run, tmp_path):
    workdir = maskgit_run[0]
    grid, traj = str(tmp_path / "grid.png"), str(tmp_path / "traj.png")
    result = run_cli("sample", "--workdir", workdir, "--num", "3", "--steps", "4", "--cfg", "2.0",
                     "--classes", "1,7", "--out", grid, "--trajectory-out", traj)
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(grid) as g:
        assert g.size[1] < g.size[0]  # 2 rows (classes 1 and 7) of 3 samples
    assert os.path.exists(traj)
    out, compare = str(tmp_path / "edit.png"), str(tmp_path / "cmp.png")
    Image.fromarray(np.full((40, 40), 255, np.uint8)).save(tmp_path / "mask.png")
    result = run_cli("edit", "--workdir", workdir, "--image", "test:3", "--mask", "bottom", "--class", "3",
                     "--out", out, "--compare-out", compare, "--steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    with Image.open(out) as e:
        assert e.size == (128, 128)
    # Bad input: an unknown class and a missing mask file are named.
    result = run_cli("edit", "--workdir", workdir, "--image", "test:3", "--mask", "bottom", "--class", "12",
                     "--out", out)
    assert result.returncode == 1 and "class 12 is out of range" in result.stderr
    result = run_cli("edit", "--workdir", workdir, "--image", "test:3", "--mask", str(tmp_path / "nope.png"),
                     "--class", "3", "--out", out)
    assert result.returncode == 1 and "nope.png" in result.stderr


def test_autoregressive_baseline_trains_and_samples(tokens_dir, tmp_path):
    from maskgen import train as train_lib
    from maskgen.generate import GeneratorHandle

    workdir = str(tmp_path / "ar")
    train_lib.train(tiny_maskgit_config(tokens_dir, "log_every=5", "evals.generation.every=-1", steps=60,
                                        model="ar"), workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
    assert losses[-1] < losses[0] - 0.5, losses
    out = GeneratorHandle(workdir).sample(np.arange(4), seed=1)
    assert out["images"].shape == (4, 16, 16, 1) and "trajectory" not in out


def test_callers_ask_recipes_what_they_can_do():
    """generate.py, tokenize.py and main.py read capabilities, never recipe names."""
    from maskgen.recipes import get_recipe, recipes_with

    # Other generators (e.g. masked_diffusion) may register too; these two must be among them.
    assert {"autoregressive", "maskgit"} <= set(recipes_with("generate"))
    assert "maskgit" in recipes_with("infill") and "autoregressive" not in recipes_with("infill")
    assert "autoregressive" in recipes_with("likelihood")
    assert {"codec", "tokenizer"} <= set(recipes_with("encode")) and "generate" not in get_recipe("mae").capabilities
    # Every decoding setting MaskGIT reads is an iterative_decode argument; others (a diffusion sampler) are dropped.
    import inspect

    from maskgen.sampling.iterative import iterative_decode

    assert set(get_recipe("maskgit").decode_options) <= set(inspect.signature(iterative_decode).parameters)
    assert set(get_recipe("autoregressive").decode_options) == {"temperature", "cfg_scale", "precision"}


# ------------------------------------------------------------ text: any rank, no classes (fast)

TEXT_INFO = {"token_shape": (12,), "codebook_size": 16, "num_levels": 1, "num_classes": 0}
TEXT_MODEL = dict(token_shape=(12,), codebook_size=16, num_classes=0, width=32, depth=1, num_heads=2, mlp_ratio=2.0,
                  conditioning="none", positions="rope", qk_norm=False, tie_head=True, label_smoothing=0.1,
                  class_dropout=0.1)


def text_config(model="maskgit"):
    config = tiny_maskgit_config("/nonexistent/tokens", steps=10, model=model)
    config.model.token_shape, config.model.codebook_size, config.model.positions = (12,), 16, "rope"
    return config


def test_text_configs_are_checked_against_the_data():
    from maskgen.recipes import get_recipe

    config = text_config()
    validate = get_recipe("maskgit").validate
    problems = validate(config, TEXT_INFO)
    assert len(problems) == 1 and "no classes" in problems[0] and "conditioning='none'" in problems[0]
    config.model.conditioning = "none"
    assert validate(config, TEXT_INFO) == []
    config.model.codebook_size, config.model.token_shape = 20, (10,)
    [problem] = validate(config, TEXT_INFO)
    assert "codebook size: config.model says 20, the tokens have 16" in problem
    assert "a tokenizer and model vocabulary mismatch" in problem
    assert "a sequence longer than the model's positions (12 > 10)" in problem
    config.model.token_shape = (2, 2, 2, 2)
    assert any("or of 1 ((L,) text) or 3" in p for p in validate(config, TEXT_INFO))
    config.model.token_shape, config.model.codebook_size, config.model.positions = (12,), 16, "rope2d"
    assert any("rope2d" in p and "2D" in p for p in validate(config, TEXT_INFO))


@pytest.fixture
def mesh_context():
    from maskgen import parallel
    from maskgen.config import DEFAULT_SHARDING_RULES

    mesh = parallel.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    with parallel.sharding_context(mesh, DEFAULT_SHARDING_RULES):
        yield


def perturbed_model(recipe, seed=0):
    """The recipe's model with noise on every parameter (so that predictions depend on the input)."""
    from flax import nnx

    graphdef, params, rest = nnx.split(recipe.make_model(nnx.Rngs(seed)), nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (np.asarray(x) + 0.3 * rng.standard_normal(x.shape)).astype(np.float32), params)
    return graphdef, params, rest


def test_autoregressive_text_likelihood_and_prompted_generation(mesh_context):
    from flax import nnx

    from maskgen.recipes.maskgit import AutoregressiveRecipe

    recipe = AutoregressiveRecipe(**TEXT_MODEL)
    assert "likelihood" in recipe.capabilities and recipe.supported_tasks() == {"none", "prefix"}
    assert recipe.supported_tasks() <= recipe.tasks
    graphdef, params, rest = perturbed_model(recipe)
    tokens = jax.random.randint(jax.random.key(0), (3, 12), 0, 16)
    known = jnp.zeros((3, 12), bool).at[0, :4].set(True).at[1, :1].set(True).at[1, 5:].set(True)

    @jax.jit
    def run(params, tokens, known):
        model = nnx.merge(graphdef, params, rest)
        direct = jax.nn.log_softmax(model(tokens), axis=-1)
        return (recipe.log_likelihood(model, {"tokens": tokens}, jax.random.key(0)), direct,
                recipe.generate(model, {"tokens": tokens, "known": known}, jax.random.key(1))["tokens"])

    out, direct, generated = run(params, tokens, known)
    assert out["nll"].dtype == jnp.float32 and out["nll"].shape == (3,)
    expected = -np.take_along_axis(np.asarray(direct), np.asarray(tokens)[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(out["nll"], expected, rtol=1e-5)
    np.testing.assert_array_equal(out["num_tokens"], [12.0, 12.0, 12.0])
    # Only each row's known prefix is a prompt (row 1: just the first token; its later known tokens
    # cannot condition a left-to-right model).
    assert generated.shape == (3, 12)
    np.testing.assert_array_equal(generated[0, :4], tokens[0, :4])
    assert generated[1, 0] == tokens[1, 0]


def test_maskgit_unconditional_text_infills(mesh_context):
    from flax import nnx

    from maskgen.recipes.maskgit import MaskGITRecipe

    recipe = MaskGITRecipe(**TEXT_MODEL)
    assert recipe.supported_tasks() == {"none", "prefix", "infill"} and recipe.capabilities >= {"generate", "infill"}
    conditioned = MaskGITRecipe(**{**TEXT_MODEL, "conditioning": "adaln", "num_classes": 3, "token_shape": (2, 3, 2)})
    assert conditioned.supported_tasks() == {"class", "infill"}
    graphdef, params, rest = perturbed_model(recipe)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 16)
    known = jax.random.uniform(jax.random.key(1), (2, 12)) < 0.5

    @jax.jit
    def run(params, tokens, known):
        model = nnx.merge(graphdef, params, rest)
        batch = {"tokens": tokens, "known": known}
        loss, _ = recipe.loss(model, {"tokens": tokens}, jax.random.key(2), 0)  # no labels needed
        return loss, recipe.generate(model, batch, jax.random.key(3), num_steps=12, policy="first_hitting",
                                     cache=True)

    loss, out = run(params, tokens, known)
    assert np.isfinite(float(loss))
    assert out["tokens"].shape == (2, 12) and out["trajectory"].shape == (12, 2, 12)
    np.testing.assert_array_equal(np.asarray(out["tokens"])[np.asarray(known)], np.asarray(tokens)[np.asarray(known)])
    # First hitting reveals one token per step, so the network runs once per token of the longest
    # row; the steps after both rows are done skip it.
    assert int(out["nfe"]) == int((~np.asarray(known)).sum(-1).max())


def test_paper_config_uses_the_official_transformer_and_digits_keep_theirs():
    from maskgen.config import load_config_file
    from maskgen.recipes.maskgit import MaskGITRecipe

    paper = load_config_file(f"{REPO}/experiments/maskgit_imagenet256.py")
    assert (paper.model.architecture, paper.model.dropout, paper.model.conditioning) == ("bert", 0.1, "prefix")
    digits = tiny_maskgit_config("/nonexistent/tokens")
    assert (digits.model.architecture, digits.model.dropout) == ("pre_ln", 0.0)
    info = {"codebook_size": 256, "token_shape": (8, 8), "num_classes": 10, "tokenizer": {}}
    assert MaskGITRecipe.validate(digits, info) == []
    for key, value, match in [("architecture", "bert", "architecture='bert'.*conditioning='prefix'"),
                              ("architecture", "post_ln", "model.architecture"), ("dropout", 1.0, "model.dropout")]:
        config = tiny_maskgit_config("/nonexistent/tokens", "model.conditioning=adaln", f"model.{key}={value!r}"
                                     if isinstance(value, str) else f"model.{key}={value}")
        assert any(re.search(match, p) for p in MaskGITRecipe.validate(config, info)), (key, value)


def test_training_loss_applies_dropout_deterministically_per_key(mesh_context):
    from flax import nnx

    from maskgen.recipes.maskgit import MaskGITRecipe

    bert = {**TEXT_MODEL, "architecture": "bert", "positions": "learned"}
    with_dropout, without = MaskGITRecipe(**bert, dropout=0.1), MaskGITRecipe(**bert, dropout=0.0)
    graphdef, params, rest = perturbed_model(with_dropout)
    graphdef_without = nnx.split(without.make_model(nnx.Rngs(0)), nnx.Param, ...)[0]
    tokens = jax.random.randint(jax.random.key(0), (4, 12), 0, 16)

    @jax.jit
    def losses(params, rng):
        a, b = nnx.merge(graphdef, params, rest), nnx.merge(graphdef_without, params, rest)
        return with_dropout.loss(a, {"tokens": tokens}, rng, 0)[0], without.loss(b, {"tokens": tokens}, rng, 0)[0]

    key = jax.random.key(1, impl="rbg")  # RBG: XLA:CPU compiles threefry bit generation slowly
    dropped, plain = losses(params, key)
    again, plain_again = losses(params, key)
    # The key draws the same masks for both (the dropout key is folded in, not split off), so only
    # dropout differs; a given key always gives the same loss.
    assert float(dropped) != float(plain) and float(again) == float(dropped) and float(plain_again) == float(plain)
