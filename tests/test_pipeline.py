"""The grain training stream: per-process rows of global batches, epochs, restore, augmentation."""

import numpy as np
import pytest

from maskgen.data import make_source
from maskgen.data.pipeline import RandomResizedCropFlip, ToModelInput, eval_batches, train_dataset


@pytest.fixture(scope="module")
def digits_train():
    return make_source("digits", "train")


def _take(source, n, **kwargs):
    it = iter(train_dataset(source, seed=3, global_batch_size=8, image_size=8, **kwargs))
    return [next(it) for _ in range(n)]


def test_processes_read_disjoint_rows_of_the_same_global_batches(digits_train):
    whole = _take(digits_train, 4)
    parts = [_take(digits_train, 4, process_index=p, process_count=2) for p in range(2)]
    for step in range(4):
        assert parts[0][step]["image"].shape == (4, 8, 8, 1)
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, whole[step]["image"])


def test_each_epoch_is_a_new_permutation(digits_train):
    source = [digits_train[i] for i in range(16)]
    for i, ex in enumerate(source):
        ex["label"] = np.int32(i)  # label = index, to read the order back
    batches = _take(source, 6)  # 3 epochs of 2 batches
    epochs = [np.concatenate([b["label"] for b in batches[2 * e:2 * e + 2]]) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(16))
    assert not np.array_equal(epochs[0], epochs[1])


def test_iterator_state_restores_the_stream(digits_train):
    ds = train_dataset(digits_train, seed=3, global_batch_size=8, image_size=8, augment="crop_flip")
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["image"] for _ in range(3)]
    fresh = iter(ds)
    fresh.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(fresh)["image"], want)


def test_model_input_range_and_center_crop():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 5:15] = 255  # the centre square is white, the sides black
    out = ToModelInput(4)({"image": image, "label": 1})
    assert out["image"].shape == (4, 4, 3) and out["image"].dtype == np.float32
    np.testing.assert_allclose(out["image"], 1.0)
    assert out["label"].dtype == np.int32
    with pytest.raises(ValueError, match="expected a uint8 image"):
        ToModelInput(4)({"image": np.zeros((4, 4)), "label": 0})


def test_random_crop_flip_is_seeded_and_varied():
    rng_image = np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8)
    aug = RandomResizedCropFlip(16)
    a = aug.random_map({"image": rng_image, "label": 0}, np.random.default_rng(1))["image"]
    b = aug.random_map({"image": rng_image, "label": 0}, np.random.default_rng(1))["image"]
    c = aug.random_map({"image": rng_image, "label": 0}, np.random.default_rng(2))["image"]
    assert a.shape == (16, 16, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_eval_batches_cover_every_example_once(digits_train):
    source = [digits_train[i] for i in range(21)]
    seen = []
    for batch, valid in eval_batches(source, global_batch_size=8, image_size=8):
        assert batch["image"].shape[0] == 8 and valid.shape == (8,)
        seen.append(batch["label"][valid])
    assert sum(len(s) for s in seen) == 21
    np.testing.assert_array_equal(np.concatenate(seen), [int(ex["label"]) for ex in source])
