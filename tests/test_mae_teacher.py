"""maskgen.recipes.mae_teacher: MaskAlign / DMAE / MR-MAE targets from a frozen maskgen MAE run.

One tiny MAE run (digits 16x16, patch 4, width 32, depth 2, two steps) is the teacher for the whole
module; the student is a separate ViT encoder (width 24, depth 3) on the same 4x4 patch grid.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from conftest import tiny_mae_config
from maskgen.models.vit import ViTEncoder, patchify
from maskgen.recipes import mae_teacher
from maskgen.recipes.mae_teacher import TEACHER_SPEC, make_teacher_target, teacher_problems

PATCH, IMAGE, CHANNELS, GRID = 4, 16, 1, (4, 4)
STUDENT_WIDTH, STUDENT_DEPTH, TEACHER_WIDTH, TEACHER_DEPTH = 24, 3, 32, 2
BATCH, VISIBLE = 4, 5  # 5 of 16 patches: MaskAlign's 30% kept


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from maskgen import train as train_lib

    workdir = str(tmp_path_factory.mktemp("teacher") / "mae")
    config = tiny_mae_config(f"model.patch_size={PATCH}", f"model.depth={TEACHER_DEPTH}", "batch_size=8",
                             "checkpoint_every=2", "log_every=2", "eval_params=params", steps=2)
    train_lib.train(config, workdir)
    return workdir


@pytest.fixture(scope="module")
def frozen(teacher_run):
    """The teacher run restored once (as make_teacher_target restores it) for the tests that reuse it."""
    from maskgen.recipes.frozen import load_frozen_run

    return load_frozen_run(teacher_run, role=mae_teacher.ROLE, recipes=("mae",), capability="features")


STUDENT = dict(student_width=STUDENT_WIDTH, student_depth=STUDENT_DEPTH, grid=GRID, patch_size=PATCH,
               image_size=IMAGE, channels=CHANNELS)


def _target(workdir, kind, **overrides):
    return make_teacher_target(**{"workdir": workdir, "kind": kind, **STUDENT, **overrides})


def _from_run(frozen, kind, **overrides):
    return mae_teacher.target_from_run(frozen, **{"kind": kind, **STUDENT, **overrides})


def _unsharded(build):
    """Modules built outside a mesh (their logical axis names are kept as metadata only)."""
    with nnx.use_eager_sharding(False):
        return build()


def _random_student():
    """A student ViT encoder with random weights drawn by numpy (normal(0, 0.1) kernels, unit
    LayerNorm scales, zero biases): no JAX initialiser to compile."""
    build = lambda: ViTEncoder(patch_dim=PATCH * PATCH * CHANNELS, grid=GRID, width=STUDENT_WIDTH,  # noqa: E731
                               depth=STUDENT_DEPTH, num_heads=2, mlp_ratio=2.0, rngs=nnx.Rngs(1))
    graphdef, abstract = nnx.split(_unsharded(lambda: nnx.eval_shape(build)))
    rng = np.random.default_rng(1)

    def draw(path, leaf):
        name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(draw, nnx.to_pure_dict(abstract)))


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (BATCH, IMAGE, IMAGE, CHANNELS)).astype(np.float32)
    visible = np.stack([np.sort(rng.permutation(GRID[0] * GRID[1])[:VISIBLE]) for _ in range(BATCH)]).astype(np.int32)
    return patchify(jnp.asarray(images), PATCH), jnp.asarray(visible), _random_student()


def _train_step(target, head, student, optimizer):
    """One jitted step: the loss as the recipe computes it, its gradients with respect to the head,
    the student and the teacher weights, and an optimizer update of the head alone."""
    head_graph, _, head_rest = nnx.split(head, nnx.Param, ...)
    student_graph, _, student_rest = nnx.split(student, nnx.Param, ...)

    def loss(head_params, student_params, teacher_params, patches, visible):
        encoder = nnx.merge(student_graph, student_params, student_rest)
        hidden = encoder.hidden_states(patches, visible)
        frozen = dataclasses.replace(target.frozen, params=teacher_params)
        return dataclasses.replace(target, frozen=frozen).loss(
            head=nnx.merge(head_graph, head_params, head_rest), student_hidden=hidden,
            student_final=encoder.final_norm(hidden[-1]), patches=patches, visible=visible, rng=jax.random.key(0))

    @jax.jit
    def step(head_params, opt_state, student_params, teacher_params, patches, visible):
        (value, metrics), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
            head_params, student_params, teacher_params, patches, visible)
        updates, opt_state = optimizer.update(grads[0], opt_state)
        return value, metrics, grads, optax.apply_updates(head_params, updates), opt_state

    return step


def _max_abs(tree):
    return max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tree))


def test_bad_teacher_runs_give_clear_errors(teacher_run, frozen, tmp_path):
    with pytest.raises(ValueError, match=r"config\.teacher\.workdir=.*nowhere.*is not a directory"):
        _target(str(tmp_path / "nowhere"), "maskalign")
    # A run of another recipe: the teacher's config.json with recipe 'maskgit' (it is refused before
    # any weight is read).
    other = tmp_path / "maskgit_run"
    (other / "checkpoints").mkdir(parents=True)
    config = json.loads(open(os.path.join(teacher_run, "config.json")).read())
    (other / "config.json").write_text(json.dumps({**config, "recipe": "maskgit"}))
    with pytest.raises(ValueError, match=r"config\.teacher\.workdir=.*'maskgit' run; it must be a run of: mae"):
        _target(str(other), "maskalign")
    # A student with 2x2 patches (an 8x8 grid) against the teacher's 4x4 patches: both values named.
    with pytest.raises(ValueError, match=r"patch size is 4 for the teacher and 2 for the student "
                                         r"\(config\.model\.patch_size\).*patch grid is 4x4 for the teacher and 8x8"):
        _from_run(frozen, "dmae", patch_size=2, grid=(8, 8))
    with pytest.raises(ValueError, match=r"channel count is 1 for the teacher and 3 for the student"):
        _from_run(frozen, "mrmae", channels=3)
    with pytest.raises(ValueError, match=r"teacher_layers=\(0, 2\): block 2 is out of range; the teacher run's encoder "
                                         r"has depth 2 \(0-based block indices 0\.\.1\)"):
        _from_run(frozen, "maskalign", teacher_layers=(0, 2))
    with pytest.raises(ValueError, match=r"student_layers=\(3,\): block 3 is out of range; the student encoder has "
                                         r"depth 3"):
        _from_run(frozen, "dmae", student_layers=(3,))
    with pytest.raises(ValueError, match=r"kind='dmae' aligns one student block with one teacher block"):
        _from_run(frozen, "dmae", teacher_layers=(0, 1))
    with pytest.raises(ValueError, match=r"config\.teacher\.kind='mim': must be one of maskalign, dmae, mrmae"):
        _target(teacher_run, "mim")


def test_defaults_follow_the_papers(teacher_run, frozen):
    align = _target(teacher_run, "maskalign")  # the real restore, as the recipe does it
    assert align.frozen.step == 2 and (align.teacher_width, align.teacher_depth) == (TEACHER_WIDTH, TEACHER_DEPTH)
    # Every student block feeds the fusion; the teacher's last 5 blocks (all 2 here) are targets.
    assert align.student_layers == (0, 1, 2) and align.teacher_layers == (0, 1) and align.loss_name == "smooth_l1"
    # Fusion starts at 0.01 + 1 at the same relative depth: teacher 0 (1/2) -> student 1 (2/3), teacher 1 -> 2.
    np.testing.assert_allclose(mae_teacher.fusion_init((0, 1, 2), 3, (0, 1), 2),
                               [[0.01, 1.01, 0.01], [0.01, 0.01, 1.01]])
    np.testing.assert_allclose(mae_teacher.fusion_init(range(12), 12, range(7, 12), 12), np.eye(12)[7:] + 0.01)
    dmae = _from_run(frozen, "dmae")
    assert (dmae.student_layers, dmae.teacher_layers, dmae.loss_name) == ((1,), (1,), "l1")
    # The paper's blocks: student 8 of 12, teacher 17 of 24.
    assert mae_teacher._resolve_layers("dmae", (), (), 12, 24) == ((8,), (17,))
    mrmae = _from_run(frozen, "mrmae", weight=0.5)
    assert (mrmae.student_layers, mrmae.teacher_layers, mrmae.loss_name, mrmae.weight) == ((), (), "mse", 0.5)


# MaskAlign (the most parts: fusion, adapters, several layers) in the default suite; the others with -m slow.
@pytest.mark.parametrize("kind", [k if k == "maskalign" else pytest.param(k, marks=pytest.mark.slow)
                                  for k in mae_teacher.KINDS])
def test_loss_trains_the_student_and_head_only_and_falls(frozen, inputs, kind):
    patches, visible, student = inputs
    target = _from_run(frozen, kind)
    head = _unsharded(lambda: target.make_head(nnx.Rngs(2)))
    optimizer = optax.adam(3e-2)
    step = _train_step(target, head, student, optimizer)
    head_params, student_params = nnx.state(head, nnx.Param), nnx.state(student, nnx.Param)
    opt_state = optimizer.init(head_params)
    first, metrics, (head_grad, student_grad, teacher_grad), head_params, opt_state = step(
        head_params, opt_state, student_params, frozen.params, patches, visible)
    assert np.isfinite(float(first)) and float(first) > 0
    np.testing.assert_allclose(float(metrics["teacher_loss"]) * target.weight, float(first), rtol=1e-6)
    assert _max_abs(head_grad) > 0 and _max_abs(student_grad) > 0
    assert _max_abs(teacher_grad) == 0.0  # the teacher is frozen: stop_gradient on its weights
    # Gradient descent on the head alone lowers the loss.
    for _ in range(20):
        last, _, _, head_params, opt_state = step(head_params, opt_state, student_params, frozen.params, patches,
                                                  visible)
    assert float(last) < 0.8 * float(first), (kind, float(first), float(last))


def _layer_norm(x, eps=1e-5):  # by hand: LayerNorm without affine over the features
    x = np.asarray(x, np.float64)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)


def test_maskalign_targets_are_whitened_intact_image_features_and_a_perfect_head_scores_zero(frozen, inputs):
    patches, visible, _ = inputs
    target = _from_run(frozen, "maskalign", student_width=TEACHER_WIDTH, student_depth=TEACHER_DEPTH)

    @jax.jit
    def teacher_run_by_hand(patches, visible):
        teacher = target.frozen.module().encoder
        x, states = teacher.embed(patches), []
        for block in teacher.transformer.blocks:  # the teacher's blocks on the intact image
            x = block(x)
            states.append(x)
        return states, target.targets(patches, visible)

    states, targets = teacher_run_by_hand(patches, visible)
    rows = np.concatenate([np.zeros((BATCH, 1), np.int64), 1 + np.asarray(visible)], axis=1)  # [class, visible...]
    expected = [_layer_norm(np.take_along_axis(np.asarray(x), rows[..., None], axis=1)) for x in states]
    assert len(targets) == 2 and targets[0].shape == (BATCH, 1 + VISIBLE, TEACHER_WIDTH)
    for got, want in zip(targets, expected):
        np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)
    # A head whose prediction is the whitened target: one-hot fusion (teacher block t <- input t) and
    # identity adapters, fed the targets themselves as the "student" states: the loss is 0.
    head = _unsharded(lambda: target.make_head(nnx.Rngs(0)))
    head.fusion[...] = jnp.eye(2, 2)
    for adapter in head.adapters:
        adapter.kernel[...] = jnp.eye(TEACHER_WIDTH)
        adapter.bias[...] = jnp.zeros(TEACHER_WIDTH)
    loss = jax.jit(lambda states: target.loss(head=head, student_hidden=states, student_final=states[-1],
                                              patches=patches, visible=visible)[0])
    states = [jnp.asarray(e, jnp.float32) for e in expected]
    assert abs(float(loss(states))) < 1e-9
    # Shift the predictions by 0.5 and by 3: 2 x SmoothL1(beta 1) is d^2 = 0.25, then 2|d| - 1 = 5.
    for shift, expected_loss in ((0.5, 0.25), (3.0, 5.0)):
        np.testing.assert_allclose(float(loss([s + shift for s in states])), expected_loss, rtol=1e-5)


def test_dmae_teacher_sees_only_the_visible_patches(frozen, inputs):
    patches, visible, _ = inputs
    target = _from_run(frozen, "dmae", teacher_layers=(1,))

    @jax.jit
    def features(patches, visible):
        teacher = target.frozen.module().encoder
        return target.targets(patches, visible)[0], teacher.hidden_states(patches, visible)[1], \
            teacher.hidden_states(patches)[1]

    got, subset, full = features(patches, visible)
    rows = jnp.concatenate([jnp.zeros((BATCH, 1), jnp.int32), 1 + visible], axis=1)
    full_at_visible = jnp.take_along_axis(full, rows[..., None], axis=1)
    norm = lambda x: np.asarray(x) / np.linalg.norm(np.asarray(x), axis=-1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(np.asarray(got), norm(subset), atol=1e-5)
    assert got.shape == (BATCH, 1 + VISIBLE, TEACHER_WIDTH)
    # A teacher on the intact image gives other features at the same positions.
    assert np.abs(np.asarray(got) - norm(full_at_visible)).max() > 1e-2


def test_mrmae_targets_are_the_teachers_final_features_at_visible_patches(frozen, inputs):
    patches, visible, _ = inputs
    target = _from_run(frozen, "mrmae")
    got, final = jax.jit(lambda p, v: (target.targets(p, v)[0], target.frozen.module().encoder(p)))(patches, visible)
    final = np.asarray(final)[:, 1:]  # post-norm, class token dropped
    want = _layer_norm(np.take_along_axis(final, np.asarray(visible)[..., None], axis=1))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)


def test_attention_guided_visible_patches(frozen, inputs):
    patches, _, _ = inputs
    target = _from_run(frozen, "maskalign")
    scores = jax.jit(target.attention_scores)(patches)
    assert scores.shape == (BATCH, 16) and float(scores.min()) >= 0
    assert np.all(np.asarray(scores.sum(-1)) < 1.0)  # the class token's own share is left out
    # Sampling without replacement in proportion to the scores: distinct positions, and a position
    # with almost all the weight is always drawn.
    peaked = jnp.full((2, 16), 1e-4).at[:, 3].set(1.0)
    picks = np.asarray(mae_teacher.sample_visible(jax.random.key(0), peaked, 5))
    assert all(len(set(row)) == 5 and 3 in row for row in picks)


def test_teacher_config_checks():
    from maskgen.config import check_spec

    def config(**teacher):
        return ml_collections.ConfigDict({"model": {"depth": 3}, "teacher": teacher})

    assert teacher_problems(ml_collections.ConfigDict({"model": {"depth": 3}}), {}) == []
    good = config(workdir="/runs/t", kind="maskalign", student_layers=(0, 1, 2), teacher_layers=(), weight=1.0,
                  loss="smooth_l1")
    assert not check_spec(good, TEACHER_SPEC) and teacher_problems(good, {}) == []
    bad = check_spec(config(workdir="", kind="mim", student_layers=(-1,), weight=0.0, loss="huber"), TEACHER_SPEC)
    assert bad.bad_keys == {"teacher.workdir", "teacher.kind", "teacher.student_layers", "teacher.weight",
                            "teacher.loss"}
    problems = " | ".join(teacher_problems(config(kind="dmae", student_layers=(1, 5)), {}))
    assert "config.teacher.workdir is missing" in problems
    assert "DMAE aligns one student block with one teacher block" in problems
    assert "block 5 does not exist; the student encoder has config.model.depth=3 blocks" in problems
    mrmae = teacher_problems(config(workdir="w", kind="mrmae", teacher_layers=(1,)), {})
    assert len(mrmae) == 1 and "MR-MAE mimics the final (post-norm) features" in mrmae[0]


@pytest.mark.slow  # trains three tiny students through the MAE recipe (three train-step compiles): ~1 min on 2 cores
@pytest.mark.parametrize("kind,objective", [("maskalign", "align"), ("dmae", "reconstruct"), ("mrmae", "reconstruct")])
def test_students_train_with_each_teacher_kind(teacher_run, tmp_path, kind, objective):
    from maskgen import train as train_lib

    config = tiny_mae_config(f"model.patch_size={PATCH}", "model.depth=3", "batch_size=8", "checkpoint_every=4",
                             "log_every=1", "eval_params=params", steps=4)
    with config.unlocked():
        config.model.objective = objective
        config.model.mask_ratio = 0.7 if kind == "maskalign" else 0.75
        config.teacher = dict(workdir=teacher_run, kind=kind, student_layers=(), teacher_layers=(), weight=1.0,
                              loss=mae_teacher.DEFAULT_LOSS[kind])
    train_lib.train(config, str(tmp_path / kind))
    rows = [json.loads(line) for line in open(tmp_path / kind / "metrics.jsonl")]
    teacher_losses = [r["teacher_loss"] for r in rows if "teacher_loss" in r]
    assert len(teacher_losses) == 4 and all(np.isfinite(teacher_losses))
    if kind == "maskalign":  # the teacher's loss is the whole loss (no pixel decoder)
        assert all(abs(r["loss"] - r["teacher_loss"]) < 1e-6 for r in rows if "teacher_loss" in r)
    assert teacher_losses[-1] < teacher_losses[0]
