"""SSAST (arXiv 2110.09784): cluster and frame masking, the full-sequence encoder with a mask
embedding, InfoNCE, training, fine-tuning from a pretraining run, and the raw log-mel probe baseline."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage

from maskgen.audio.features import MelConfig, log_mel
from maskgen.data.specs import AudioSpec, LabelSpec
from maskgen.masking.generators import block_mask, masked_indices, random_mask_count
from maskgen.models.ssast import patchify_2d, unpatchify_2d
from maskgen.recipes.ssast import SSASTRecipe, info_nce

from conftest import REPO

SSAST_SPEECH = os.path.join(REPO, "experiments", "ssast_speech.py")
MEL = MelConfig(sample_rate=16000, n_fft=256, hop=160, win_length=256, n_mels=16, f_min=20.0, mel_scale="htk",
                norm=None, power=2.0, log_floor=1e-6)


pytestmark = pytest.mark.usefixtures("one_device_mesh")


def _recipe(**overrides):
    kwargs = dict(mel=MEL, num_samples=16 * 160, num_frames=16, patch_shape=(4, 4), tokens="patch", task="pretrain",
                  width=32, depth=1, num_heads=2, mlp_ratio=2.0, num_classes=3, num_masked=10, cluster_sizes=(2, 3),
                  nce_weight=1.0, mse_weight=10.0, shared_mask=False, nce_softmax_over="targets", input_mean=-8.0,
                  input_std=5.0)
    return SSASTRecipe(**{**kwargs, **overrides})


def _tones(n: int, num_samples: int = 16 * 160, seed: int = 0) -> np.ndarray:
    """Clips of one of three pitches with random phase and loudness: [n, T, 1] and labels [n]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    t = np.arange(num_samples) / 16000
    freq = np.array([300.0, 1200.0, 4000.0])[labels][:, None]
    audio = rng.uniform(0.2, 0.8, (n, 1)) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3, (n, 1)))
    return audio[..., None].astype(np.float32), labels.astype(np.int32)


# ---------------------------------------------------------------- masking
@pytest.mark.parametrize("grid, count, sizes", [((8, 64), 400, (3, 4, 5)), ((4, 12), 36, (2, 3)), ((5, 7), 1, (3,)),
                                                ((6, 6), 35, (2,))])
def test_block_mask_hits_the_exact_count(grid, count, sizes):
    mask = np.asarray(block_mask(jax.random.key(0), 16, grid, count, sizes))
    assert mask.shape == (16, grid[0] * grid[1]) and mask.dtype == bool
    np.testing.assert_array_equal(mask.sum(1), count)
    np.testing.assert_array_equal(mask, np.asarray(block_mask(jax.random.key(0), 16, grid, count, sizes)))
    assert not np.array_equal(mask, np.asarray(block_mask(jax.random.key(1), 16, grid, count, sizes)))


def test_block_mask_is_clustered_and_covers_the_grid_evenly():
    grid, count = (12, 12), 18
    blocks = np.asarray(block_mask(jax.random.key(2), 500, grid, count, (3,))).reshape(500, *grid)
    scattered = np.asarray(random_mask_count(jax.random.key(2), (500, 144), count)).reshape(500, *grid)
    pieces = lambda masks: np.mean([ndimage.label(m)[1] for m in masks])  # noqa: E731  4-connected components
    # 18 cells in 3x3 blocks: two or three clusters (the last block's kept part may split off); random: ~15.
    assert pieces(blocks) < 4.0 < 12.0 < pieces(scattered)
    # The first block is a whole 3x3 square wherever it lies inside the grid: masks of 9 are one
    # square unless the block hangs over an edge (then a second block completes the count).
    nine = np.asarray(block_mask(jax.random.key(3), 400, grid, 9, (3,))).reshape(400, *grid)
    squares = [m for m in nine if ndimage.label(m)[1] == 1 and m.any(0).sum() == 3 and m.any(1).sum() == 3]
    assert len(squares) > 0.5 * len(nine)
    # Blocks may hang over the edges, so corners are masked about as often as the centre.
    freq = np.asarray(block_mask(jax.random.key(4), 2000, (8, 12), 36, (2, 3))).mean(0)
    assert np.all(np.abs(freq - 36 / 96) < 0.08), freq.reshape(8, 12)


def test_frame_mask_and_masked_indices():
    mask = random_mask_count(jax.random.key(0), (64, 48), 36)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 36)
    freq = np.asarray(random_mask_count(jax.random.key(1), (4000, 10), 3)).mean(0)
    assert np.all(np.abs(freq - 0.3) < 0.04)
    index = masked_indices(jnp.array([[False, True, True, False, True]]), 3)
    np.testing.assert_array_equal(index, [[1, 2, 4]])
    with pytest.raises(ValueError, match="count=11"):
        random_mask_count(jax.random.key(0), (1, 10), 11)
    with pytest.raises(ValueError, match="count=50"):
        block_mask(jax.random.key(0), 1, (4, 12), 50)


# ---------------------------------------------------------------- model and losses
def test_patchify_2d_layout():
    grid = jnp.arange(2 * 4 * 6, dtype=jnp.float32).reshape(2, 4, 6)
    patches = patchify_2d(grid, (2, 3))
    assert patches.shape == (2, 4, 6)
    np.testing.assert_array_equal(patches[0, 1], grid[0, 0:2, 3:6].reshape(-1))  # raster order, row-major patch
    np.testing.assert_array_equal(unpatchify_2d(patches, (2, 3), 4, 6), grid)


def test_encoder_sees_every_token_with_the_mask_embedding():
    recipe = _recipe()
    graphdef, params = nnx.split(recipe.make_model(nnx.Rngs(0)))
    encode = jax.jit(lambda params, patches, mask: nnx.merge(graphdef, params).encode(patches, mask))
    patches = jax.random.normal(jax.random.key(1), (2, recipe.num_patches, 16))
    mask = block_mask(jax.random.key(2), 2, recipe.grid, recipe.num_masked, recipe.cluster_sizes)
    out = encode(params, patches, mask)
    assert out.shape == (2, 1 + recipe.num_patches, 32)  # the class token and every patch, masked or not
    # What lies under the mask never reaches the encoder ...
    scrambled = jnp.where(mask[..., None], 100.0 * jax.random.normal(jax.random.key(3), patches.shape), patches)
    np.testing.assert_allclose(encode(params, scrambled, mask), out, atol=1e-5)
    # ... the learned mask embedding does, and through attention every visible token sees it (a
    # random direction: LayerNorm would remove a constant shift).
    assert params["mask_embed"].value.shape == (32,)
    params["mask_embed"].value = params["mask_embed"].value + jax.random.normal(jax.random.key(4), (32,))
    changed = np.abs(np.asarray(encode(params, patches, mask) - out)).max(-1)  # [B, 1 + N]
    assert np.all(changed[:, 1:][~np.asarray(mask)] > 1e-4) and np.all(changed[:, 0] > 1e-4)


def test_info_nce_matches_a_hand_computation():
    pred = jnp.array([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])
    target = jnp.array([[[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]])
    scores = np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 6.0], [2.0, 2.0, 3.0]])  # pred_i . target_j
    over_targets = -np.mean([scores[i, i] - np.log(np.exp(scores[i]).sum()) for i in range(3)])
    over_predictions = -np.mean([scores[j, j] - np.log(np.exp(scores[:, j]).sum()) for j in range(3)])
    loss, accuracy = info_nce(pred, target, "targets")
    np.testing.assert_allclose(loss, over_targets, rtol=1e-6)
    np.testing.assert_allclose(info_nce(pred, target, "predictions")[0], over_predictions, rtol=1e-6)
    assert abs(over_targets - over_predictions) > 0.05  # the two normalisations differ here
    # Each prediction's best target: 0 -> 0 (right), 1 -> 2 (wrong), 2 -> 2 (right).
    np.testing.assert_allclose(accuracy, 2 / 3)


def test_spectrogram_is_normalised_cut_or_padded():
    recipe = _recipe(num_frames=20)  # the clip gives 16 frames: 4 padded with 0 (the data mean)
    audio, _ = _tones(2)
    spec = np.asarray(recipe.spectrogram(jnp.asarray(audio)))
    expected = (np.asarray(log_mel(jnp.asarray(audio[..., 0]), MEL)) + 8.0) / 10.0
    assert spec.shape == (2, 16, 20)
    np.testing.assert_allclose(spec[:, :, :16], expected.transpose(0, 2, 1), atol=1e-5)
    np.testing.assert_array_equal(spec[:, :, 16:], 0.0)
    assert _recipe(num_frames=8).spectrogram(jnp.asarray(audio)).shape == (2, 16, 8)


@pytest.mark.parametrize("overrides", [{}, {"tokens": "frame", "patch_shape": (16, 2), "num_masked": 6,
                                            "shared_mask": True}])
def test_pretraining_loss_falls(overrides):
    recipe = _recipe(**overrides)
    model = recipe.make_model(nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    audio, labels = _tones(16)
    batch = {"audio": jnp.asarray(audio), "label": jnp.asarray(labels)}
    tx = __import__("optax").adam(3e-3)

    @jax.jit
    def step(params, opt_state, i):
        def loss_fn(p):
            loss, metrics = recipe.loss(nnx.merge(graphdef, p), batch, jax.random.key(0), i)  # the same masks
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return __import__("optax").apply_updates(params, updates), opt_state, loss, metrics

    opt_state = tx.init(params)
    losses = []
    for i in range(20):
        params, opt_state, loss, metrics = step(params, opt_state, i)
        losses.append(float(loss))
    assert set(metrics) == {"nce", "nce_accuracy", "mse"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_one_loss_alone_runs_one_forward_pass():
    audio, labels = _tones(4)
    batch = {"audio": jnp.asarray(audio), "label": jnp.asarray(labels)}
    for weights, names in (((1.0, 0.0), {"nce", "nce_accuracy"}), ((0.0, 10.0), {"mse"})):
        recipe = _recipe(nce_weight=weights[0], mse_weight=weights[1], depth=0)
        graphdef, params = nnx.split(recipe.make_model(nnx.Rngs(0)))
        loss, metrics = jax.jit(lambda p: recipe.loss(nnx.merge(graphdef, p), batch, jax.random.key(0), 0))(params)
        assert set(metrics) == names
        np.testing.assert_allclose(loss, sum(w * metrics[n] for w, n in zip(weights, ("nce", "mse")) if w), rtol=1e-6)


# ---------------------------------------------------------------- config checks
def _speech_info(num_samples=16000, sample_rate=16000):
    return {"fields": {"audio": AudioSpec((num_samples, 1), sample_rate), "label": LabelSpec(10)}, "num_classes": 10,
            "splits": {"train": 2560, "test": 640}, "sample_rate": sample_rate}


@pytest.mark.parametrize("arg, override, expected", [
    ("", "model.num_masked=48", "config.model.num_masked=48 must be fewer than the 48 tokens (4 x 12)"),
    ("tokens=frame", "model.patch_shape=(8, 2)", "config.model.tokens='frame' needs patch_shape[0] = n_mels = 32"),
    ("", "model.patch_shape=(5, 8)", "config.model.patch_shape=(5, 8) must divide the log-mel grid"),
    ("", "model.mel.sample_rate=22050", "config.model.mel.sample_rate=22050: the 'speech' audio is at 16000 Hz"),
    ("", "model.nce_weight=0.0", "nce_weight and mse_weight are both 0"),
    ("", "model.mel.mel_scale='mels'", "mel_scale must be one of"),
])
def test_config_problems_are_named(arg, override, expected):
    from maskgen import config as config_lib

    config = config_lib.load_config_file(f"{SSAST_SPEECH}:size=tiny" + (f",{arg}" if arg else ""))
    overrides = [override] + (["model.mse_weight=0.0"] if "nce_weight" in override else [])
    config_lib.apply_overrides(config, overrides)
    problems = SSASTRecipe.validate(config, _speech_info())
    assert any(expected in p for p in problems), problems
    assert not SSASTRecipe.validate(config_lib.load_config_file(f"{SSAST_SPEECH}:size=tiny"), _speech_info())


# ---------------------------------------------------------------- the log-mel probe baseline
def test_log_mel_probe_baselines():
    from maskgen.evaluators.linear_probe import LinearProbe, raw_features

    audio, _ = _tones(3)
    lm = np.asarray(log_mel(jnp.asarray(audio[..., 0]), MEL))  # [3, 16, 16]
    info = {"mel": MEL.to_dict()}
    np.testing.assert_allclose(raw_features("log_mel", {"audio": audio}, info), lm.reshape(3, -1), atol=1e-5)
    stats = raw_features("log_mel_stats", {"audio": audio}, info)
    np.testing.assert_allclose(stats, np.concatenate([lm.mean(1), lm.std(1)], 1), atol=1e-4)
    # The three pitches light up different mel bins: the pooled features tell them apart.
    assert np.argmax(stats[0, :16]) < np.argmax(stats[1, :16]) < np.argmax(stats[2, :16])
    images = np.zeros((2, 4, 4, 1), np.float32)
    np.testing.assert_array_equal(raw_features("pixels", {"image": images}, {}), np.zeros((2, 16)))
    with pytest.raises(ValueError, match="baseline 'pixels' needs 'image' data.*'log_mel'"):
        raw_features("pixels", {"audio": audio, "label": None}, info)
    with pytest.raises(ValueError, match="needs the run's mel settings"):
        raw_features("log_mel", {"audio": audio}, {})
    with pytest.raises(ValueError, match="unknown baselines \\['mfcc'\\]"):
        LinearProbe(baselines=("mfcc",))


# ---------------------------------------------------------------- fine-tuning from a pretraining run
@pytest.fixture(scope="module")
def tone_folder(tmp_path_factory):
    import soundfile

    root = tmp_path_factory.mktemp("tones")
    audio, labels = _tones(30, num_samples=4000, seed=1)
    for i, (clip, label) in enumerate(zip(audio, labels)):
        os.makedirs(root / f"pitch{label}", exist_ok=True)
        soundfile.write(str(root / f"pitch{label}" / f"{i:02d}.wav"), clip[:, 0], 16000)
    return str(root)


def test_pretraining_and_finetuning_models_have_one_parameter_tree():
    """`config.init_from` needs the same tree: every head exists in both tasks."""
    shapes = {}
    for task in ("pretrain", "finetune"):
        abstract = nnx.eval_shape(lambda: _recipe(task=task).make_model(nnx.Rngs(0)))
        shapes[task] = {jax.tree_util.keystr(path): leaf.shape
                        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(abstract, nnx.Param))}
    assert shapes["pretrain"] == shapes["finetune"]
    names = " ".join(shapes["pretrain"])
    assert all(head in names for head in ("nce_head", "mse_head", "classifier", "mask_embed"))


def test_finetune_logits_and_loss():
    recipe = _recipe(task="finetune", depth=0)
    graphdef, params = nnx.split(recipe.make_model(nnx.Rngs(0)))
    audio, labels = _tones(6)
    batch = {"audio": jnp.asarray(audio), "label": jnp.asarray(labels)}
    loss, metrics = jax.jit(lambda p: recipe.loss(nnx.merge(graphdef, p), batch, jax.random.key(0), 0))(params)
    logits = jax.jit(lambda p: recipe.classify(nnx.merge(graphdef, p), batch, None))(params)
    assert logits.shape == (6, 3)
    expected = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(6), labels])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], np.mean(np.argmax(logits, -1) == labels))


@pytest.mark.slow
def test_finetune_starts_from_the_pretrained_encoder(tone_folder, tmp_path):
    from maskgen import config as config_lib
    from maskgen import train as train_lib
    from maskgen.checkpoint import restore_run_model
    from maskgen.runs import abstract_variables, setup

    from maskgen.evaluators import evaluator_types

    def config(task, *extra):
        c = config_lib.load_config_file(f"{SSAST_SPEECH}:size=tiny,task={task},steps=2")
        with c.unlocked():  # a folder of 0.25 s tones instead of the speech source
            c.data = dict(name="audio_folder", data_dir=tone_folder, image_size=0, augment="none",
                          train_split="train", read_threads=1, clip_seconds=0.25)
        if task == "pretrain":
            extra = ("evals.probe.every=-1", "evals.spectrograms.every=-1", *extra)
        config_lib.apply_overrides(c, ["batch_size=8", "model.num_frames=24", "model.patch_shape=(8, 8)",
                                       "model.num_masked=6", *extra])
        return c

    pretrained = str(tmp_path / "pre")
    train_lib.train(config("pretrain"), pretrained)
    # A learning rate of ~0 (Adam's first step moves each weight by about the rate): the fine-tuned
    # run's weights after one step are the pretrained ones.
    finetuned = str(tmp_path / "ft")
    assert "accuracy" in evaluator_types()  # registered by maskgen.evaluators itself
    out = train_lib.train(config("finetune", f"init_from='{pretrained}'", "optimizer.lr=1e-9",
                                 "optimizer.warmup_steps=0"), finetuned)
    assert 0.0 <= out["evals"]["accuracy"].scalars["accuracy"] <= 1.0
    run = setup(config("finetune"))
    _, pre = restore_run_model(pretrained, abstract_variables(run), which="ema")
    _, ft = restore_run_model(finetuned, abstract_variables(run), which="params")
    pre_leaves = jax.tree_util.tree_leaves_with_path(pre["params"])
    ft_leaves = dict(jax.tree_util.tree_leaves_with_path(ft["params"]))
    assert len(pre_leaves) == len(ft_leaves) and any("classifier" in jax.tree_util.keystr(p) for p, _ in pre_leaves)
    for path, value in pre_leaves:
        np.testing.assert_allclose(ft_leaves[path], value, atol=1e-7, err_msg=jax.tree_util.keystr(path))
    # A fresh init differs by far more than that.
    fresh = jax.tree_util.tree_leaves(run.init_variables(jax.random.key(5))["params"])
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(fresh, jax.tree_util.tree_leaves(pre["params"]))) > 1e-2
