"""The end-to-end fine-tuning evaluator (MAE's protocol, arXiv 2111.06377 A.3): layer-wise lr decay,
AdamW groups, learning on digits, and the evaluated variables left as they were."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskgen import runs
from maskgen.evaluators import build_evaluator
from maskgen.evaluators.finetune import (FineTune, finetune_optimizer, init_head, layer_id, lr_scale,
                                         parameter_groups, path_keys)
from tests.conftest import tiny_mae_config


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised tiny MAE (digits 16x16, patch 4, width 32, 2 encoder blocks) and its context."""
    config = tiny_mae_config("model.depth=2", "model.patch_size=4", "model.width=32", "batch_size=64")
    run = runs.setup(config)
    with run.context():
        variables = run.init_variables(jax.random.key(0))
    return run, variables, runs.make_eval_context(run, variables, step=0)


def _finetune(**args):
    return build_evaluator("finetune", {"type": "finetune", "every": 0, **args})


def test_layer_id_rule_on_key_paths():
    # BEiT / MAE: embeddings 0, block i -> i + 1, the rest L + 1; scale = decay^(L + 1 - id).
    assert layer_id(("encoder", "patch_embed", "kernel"), 12) == 0
    assert layer_id(("encoder", "cls_token"), 12) == 0
    assert layer_id(("pos_embed",), 12) == 0
    assert layer_id(("encoder", "transformer", "blocks", 0, "mlp", "fc1", "kernel"), 12) == 1
    assert layer_id(("blocks", 11, "norm1", "scale"), 12) == 12
    assert layer_id(("encoder", "transformer", "norm", "scale"), 12) == 13
    assert layer_id(("head", "kernel"), 12) == 13
    assert lr_scale(0, 12, 0.75) == pytest.approx(0.75 ** 13)
    assert lr_scale(13, 12, 0.75) == 1.0
    with pytest.raises(ValueError, match="block 12, but the encoder has 12 blocks"):
        layer_id(("blocks", 12, "attn"), 12)


def test_lr_scales_and_weight_decay_on_the_mae_tree(tiny):
    run, variables, ctx = tiny
    features = ctx.method("features")
    example = next(ctx.batches("train"))[0]
    trainable = {"model": variables["params"], "head": init_head(0, 32, 10)}
    used = {"model": FineTune._used(features, variables, example), "head": jax.tree.map(lambda _: True, trainable["head"])}
    labels, groups, num_blocks = parameter_groups(trainable, used, layer_decay=0.5)
    assert num_blocks == 2  # read off the encoder's paths; the decoder's blocks are not counted

    # Hand-computed with L = 2, decay 0.5: embeddings 0.5^3, block 0 0.5^2, block 1 0.5, the rest 1.
    kernels = ("attn/qkv/kernel", "attn/out/kernel", "mlp/fc1/kernel", "mlp/fc2/kernel")
    others = ("attn/qkv/bias", "attn/out/bias", "mlp/fc1/bias", "mlp/fc2/bias", "norm1/scale", "norm1/bias",
              "norm2/scale", "norm2/bias")
    expected = {"model/encoder/cls_token": (0.125, False), "model/encoder/patch_embed/kernel": (0.125, True),
                "model/encoder/patch_embed/bias": (0.125, False),
                "model/encoder/transformer/norm/scale": (1.0, False), "model/encoder/transformer/norm/bias": (1.0, False),
                "head/head/kernel": (1.0, True), "head/head/bias": (1.0, False),
                "head/fc_norm/scale": (1.0, False), "head/fc_norm/bias": (1.0, False)}
    for block, scale in ((0, 0.25), (1, 0.5)):
        expected.update({f"model/encoder/transformer/blocks/{block}/{k}": (scale, True) for k in kernels})
        expected.update({f"model/encoder/transformer/blocks/{block}/{k}": (scale, False) for k in others})
    got = {"/".join(map(str, path_keys(path))): groups[label]
           for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]}
    for name, value in got.items():
        if name.startswith(("model/decoder", "model/mask_token")):
            assert value == (0.0, False), name  # the features never read the decoder: frozen
        else:
            assert value == expected.pop(name), name
    assert not expected, f"parameters missing from the tree: {sorted(expected)}"


def test_optimizer_scales_each_group_and_decays_kernels_only():
    # Two AdamW steps with constant gradients 1: step 0 runs at lr 0 (warm-up starts at 0), step 1 at
    # peak / 2 with an Adam direction of 1, so x -= lr1 x scale x (1 + wd x x).
    params = {"x": jnp.full((3,), 2.0), "y": jnp.full((3,), 2.0), "z": jnp.full((3,), 2.0)}
    labels = {"x": "a", "y": "b", "z": "frozen"}
    groups = {"a": (0.5, True), "b": (0.25, False), "frozen": (0.0, False)}
    tx = finetune_optimizer(labels, groups, learning_rate=0.1, total_steps=10, warmup_steps=2, weight_decay=0.1)
    state, update = tx.init(params), jax.jit(tx.update)
    grads = jax.tree.map(jnp.ones_like, params)
    for _ in range(2):
        updates, state = update(grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_allclose(params["x"], 2.0 - 0.05 * 0.5 * (1.0 + 0.1 * 2.0), rtol=1e-6)
    np.testing.assert_allclose(params["y"], 2.0 - 0.05 * 0.25, rtol=1e-6)
    np.testing.assert_array_equal(params["z"], 2.0)


def test_finetune_learns_digits_and_leaves_the_run_untouched(tiny):
    run, variables, ctx = tiny
    before = jax.device_get(variables)
    # ~9 epochs of the 1,438 training digits at batch 64; lr = 0.04 x 64 / 256 = 0.01.
    result = _finetune(steps=200, batch_size=64, base_learning_rate=0.04, warmup_fraction=0.1).run(ctx)
    scalars = result.scalars
    # Chance is 0.1; a random-init encoder fine-tuned end to end reaches ~0.95 here.
    assert scalars["accuracy_model"] > 0.8, scalars
    assert scalars["final_loss_model"] < 1.2, scalars  # ln 10 = 2.30 at the start
    assert scalars["relative_change_model"] > 0.05, scalars  # the encoder itself was trained, not only the head
    after = jax.device_get(ctx.params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(variables))


def test_context_method_is_the_recipes_pure_function(tiny):
    _, variables, ctx = tiny
    batch = next(ctx.batches("test"))[0]
    np.testing.assert_allclose(jax.jit(ctx.method("features"))(variables, batch, ctx.rng),
                               ctx.apply("features", variables, batch, ctx.rng), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="recipe has no method 'logits'"):
        ctx.method("logits")


@pytest.mark.parametrize("args, message", [
    (dict(learning_rate=0.1), r"unknown argument\(s\) \['learning_rate'\]; valid: .*base_learning_rate"),
    (dict(steps=10, epochs=2), "give steps .* or epochs .*, not both"),
    (dict(layer_decay=1.5), "config.evals.finetune.layer_decay"),
    (dict(label_smoothing=1.0), "config.evals.finetune.label_smoothing"),
    (dict(steps=0), "config.evals.finetune.steps"),
    (dict(baselines=("pixels",)), r"unknown baselines \['pixels'\]; valid: a tuple of \['random_init'\]"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        _finetune(**args)
