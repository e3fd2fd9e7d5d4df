"""The modality-agnostic spine: output writers, the task registry, the recipe contract, and runs
restored for inference without an optimizer."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from maskgen import outputs, tasks
from maskgen.metrics import MetricWriter
from conftest import tiny_mae_config


# ------------------------------------------------------------------------------------ writers
def test_png_wav_and_text_writers_round_trip(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = outputs.write_png(str(tmp_path / "a" / "x.png"), image, zoom=2)
    back = np.asarray(Image.open(path))
    np.testing.assert_array_equal(back[::2, ::2], image)
    assert back.shape == (10, 14, 3)

    audio = np.sin(np.linspace(0, 40, 800))[:, None] * np.array([[0.5, -0.25]])
    path = outputs.write_wav(str(tmp_path / "b.wav"), audio, 8000)
    read, rate = outputs.read_wav(path)
    assert rate == 8000 and read.shape == (800, 2)
    np.testing.assert_allclose(read, audio, atol=1 / 32767 + 1e-6)

    text = "héllo\nwörld ✓"
    with open(outputs.write_text(str(tmp_path / "c.txt"), text), encoding="utf-8") as f:
        assert f.read() == text
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_writers_refuse_what_they_cannot_write(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        outputs.write_png(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="sample_rate"):
        outputs.write_wav(str(tmp_path / "x.wav"), np.zeros(10), 0)
    with pytest.raises(ValueError, match=r"\[T\] or \[T, C\]"):
        outputs.write_wav(str(tmp_path / "x.wav"), np.zeros((2, 3, 4)), 16000)


def test_metric_writer_writes_every_output_kind_to_files_and_tensorboard(tmp_path):
    writer = MetricWriter(str(tmp_path), True)
    paths = writer.write_outputs(
        7, "ev", images={"grid": np.zeros((4, 4, 1), np.uint8)},
        audio={"clip": (np.zeros((160, 1), np.float32), 16000)}, texts={"samples": "a sample"})
    writer.close()
    names = sorted(os.path.relpath(p, tmp_path) for p in paths)
    assert names == ["audio/ev_clip_0000007.wav", "images/ev_grid_0000007.png", "texts/ev_samples_0000007.txt"]
    kinds = {}
    for value in _summary_values(str(tmp_path / "tensorboard")):
        kinds[value.tag] = value.WhichOneof("value")
    assert kinds.get("ev/grid") == "image" and kinds.get("ev/clip") == "audio", kinds
    assert any(tag.startswith("ev/samples") for tag in kinds), kinds


def _summary_values(logdir: str):
    """Every Summary.Value in the TFRecord event files of `logdir` (read without TensorFlow)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    for name in sorted(os.listdir(logdir)):
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 16 + length
            yield from event.summary.value


# ------------------------------------------------------------------------------------ tasks
def test_task_batches():
    assert tasks.task_names() == ["class", "infill", "none", "prefix"]
    batch = tasks.unconditional_batch(3, (2, 4))
    assert batch["tokens"].shape == (3, 2, 4) and not batch["known"].any()
    batch = tasks.class_batch([1, 2], (8,))
    assert batch["label"].tolist() == [1, 2] and batch["tokens"].shape == (2, 8)
    batch = tasks.prefix_batch(np.array([[5, 6, 7]]), (2, 3))
    assert batch["known"].reshape(-1).tolist() == [True] * 3 + [False] * 3
    assert batch["tokens"].reshape(-1)[:3].tolist() == [5, 6, 7]
    unknown = np.array([[False, True, True, False]])
    batch = tasks.infill_batch(np.array([[1, 2, 3, 4]]), unknown)
    assert (batch["known"] == ~unknown).all()
    with pytest.raises(ValueError, match="longer than the model's 4 positions"):
        tasks.prefix_batch(np.zeros((1, 5)), (4,))
    with pytest.raises(ValueError, match="same shape"):
        tasks.infill_batch(np.zeros((1, 4)), np.zeros((1, 3), bool))
    with pytest.raises(ValueError, match="unknown task"):
        tasks.check_tasks({"class", "caption"})


# ------------------------------------------------------------------------------------ recipe contract
def test_every_recipe_implements_what_it_declares():
    from maskgen.recipes import get_recipe, recipe_names
    from maskgen.recipes.base import CAPABILITIES, check_capabilities

    for name in recipe_names():
        check_capabilities(get_recipe(name))
    assert set(CAPABILITIES) >= {"generate", "infill", "encode", "decode", "features", "likelihood", "reconstruct"}


def test_undeclared_or_unimplemented_capabilities_are_refused():
    from maskgen.recipes.base import Recipe, check_capabilities

    class Claims(Recipe):
        name = "claims"
        capabilities = frozenset({"generate"})

    with pytest.raises(ValueError, match="declares 'generate' but does not implement generate"):
        check_capabilities(Claims)
    Claims.capabilities = frozenset({"teleport"})
    with pytest.raises(ValueError, match="unknown capabilities"):
        check_capabilities(Claims)


def test_no_caller_compares_recipe_names():
    """Outside recipes/, code asks a recipe what it can do; it never branches on its name."""
    import re

    pattern = re.compile(r"recipe\s*(==|!=|in)\s*[\"'(\[]|GENERATORS")
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "maskgen")
    hits = []
    for folder, _, files in os.walk(root):
        if os.path.basename(folder) == "recipes":
            continue
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if pattern.search(line)]
    assert not hits, hits


# ------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def mae_run(tmp_path_factory):
    from maskgen import train as train_lib

    workdir = str(tmp_path_factory.mktemp("spine") / "run")
    train_lib.train(tiny_mae_config("checkpoint_every=2", steps=2), workdir)
    return workdir


def test_a_run_is_restored_and_used_without_building_an_optimizer(mae_run, monkeypatch):
    from maskgen import runs, train as train_lib

    def no_optimizer(*args, **kwargs):
        raise AssertionError("an optimizer was built to restore a run for inference")

    monkeypatch.setattr(train_lib, "make_optimizer", no_optimizer)
    import optax

    monkeypatch.setattr(optax, "adamw", no_optimizer)
    handle = runs.RunHandle(mae_run, which="params")
    assert handle.step == 2 and handle.can("features")
    images = np.zeros((3, 16, 16, 1), np.float32)
    features = handle.apply("features", {"image": images, "label": np.zeros(3, np.int32)})
    assert features.shape[0] == 3 and np.isfinite(features).all()
    # What was restored is exactly the trained params (as the full restore that resuming uses reads them).
    from maskgen.checkpoint import Checkpointer

    monkeypatch.undo()
    run = train_lib.setup(handle.config)
    tx, _ = train_lib.make_optimizer(run.config.optimizer, run.config.total_steps)
    _, (abstract_state, _), _ = train_lib._state_initializer(run, tx)
    checkpointer = Checkpointer(os.path.join(mae_run, "checkpoints"), 3)
    full = checkpointer.restore(2, abstract_state=abstract_state)
    checkpointer.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(handle.variables["params"]),
                 jax.device_get(full.state["params"]))


def test_eval_context_decodes_image_data_as_pixels(mae_run):
    """Pixel data decodes to itself (clipped), with the run's own split as the reference (issue 16:
    continuous generators on pixels); only data of no known kind has no decoder."""
    from maskgen import runs

    handle = runs.RunHandle(mae_run)
    pixels = np.full((1, 16, 16, 1), 3.0, np.float32)
    np.testing.assert_array_equal(handle.ctx.decode(pixels)["images"], np.ones_like(pixels))
    first = next(handle.ctx.batches("test"))[0]
    np.testing.assert_array_equal(handle.ctx.reference("test", 2)["image"], np.asarray(first["image"])[:2])
    decoder = runs._LazyDecoder(handle.config, {"fields": {}, "image_shape": None})
    with pytest.raises(ValueError, match="has no decoder"):
        decoder.decode(np.zeros((1, 4), np.int32))
