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


# ---------------------------------------------------------------- preprocessing chosen by spec


def _stream(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_new_signature_gives_the_old_batches(digits_train, augment):
    from maskgen.data import make_preprocess, source_info

    preprocess = make_preprocess(source_info("digits")["fields"], image_size=12, augment=augment)
    new = _stream(train_dataset(digits_train, preprocess, seed=5, global_batch_size=8, process_index=1,
                                process_count=2), 30)
    old = _stream(train_dataset(digits_train, seed=5, global_batch_size=8, image_size=12, augment=augment,
                                process_index=1, process_count=2), 30)
    for a, b in zip(new, old, strict=True):
        assert list(a) == list(b) == ["image", "label"]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    new_eval = list(eval_batches(digits_train, preprocess, global_batch_size=16, limit=40))
    old_eval = list(eval_batches(digits_train, global_batch_size=16, image_size=12, limit=40))
    for (a, va), (b, vb) in zip(new_eval, old_eval, strict=True):
        np.testing.assert_array_equal(va, vb)
        np.testing.assert_array_equal(a["image"], b["image"])  # eval never augments
    with pytest.raises(TypeError, match="old form"):
        train_dataset(digits_train, preprocess, seed=0, global_batch_size=8, image_size=12)


def test_preprocess_maps_each_kind_by_its_spec():
    import pickle

    from maskgen.data import make_preprocess
    from maskgen.data.specs import AudioSpec, ImageSpec, LabelSpec, LatentSpec, TextSpec, TokenSpec

    fields = {"image": ImageSpec((None, None, 3)), "codes": TokenSpec((4, 4, 2), 16, 2), "text": TextSpec(6, 257, "bytes"),
              "z": LatentSpec((2, 2, 8), scale=0.2), "wave": AudioSpec((10, 1), 16000), "label": LabelSpec(3)}
    example = {"image": np.full((6, 10, 3), 255, np.uint8), "codes": np.ones((4, 4, 2), np.int64),
               "text": np.arange(6, dtype=np.uint8), "z": np.ones((2, 2, 8), np.float64),
               "wave": np.zeros((10, 1), np.float16), "label": 2, "extra": "dropped"}
    preprocess = pickle.loads(pickle.dumps(make_preprocess(fields, image_size=4)))
    out = preprocess(example)
    assert list(out) == list(fields)
    assert out["image"].shape == (4, 4, 3) and out["image"].dtype == np.float32 and np.all(out["image"] == 1.0)
    assert out["codes"].dtype == out["text"].dtype == out["label"].dtype == np.int32
    np.testing.assert_array_equal(out["text"], np.arange(6))
    assert out["z"].dtype == out["wave"].dtype == np.float32 and out["z"].shape == (2, 2, 8)
    # augmentation touches only images, with grain's rng
    aug = make_preprocess(fields, image_size=4, augment="crop_flip")
    a = aug.random_map(example, np.random.default_rng(0))
    np.testing.assert_array_equal(a["codes"], out["codes"])
    # labels are optional: a spec without one needs no label
    unlabelled = make_preprocess({"text": fields["text"]})
    assert list(unlabelled({"text": np.zeros(6)})) == ["text"]
    with pytest.raises(KeyError, match="no 'label'"):
        make_preprocess({"text": fields["text"], "label": LabelSpec(3)})({"text": np.zeros(6)})
    with pytest.raises(ValueError, match="crop_flip.*applies to images"):
        make_preprocess({"text": fields["text"]}, augment="crop_flip")
    with pytest.raises(ValueError, match="must be 0 for data without an image field"):
        make_preprocess({"text": fields["text"]}, image_size=16)
    with pytest.raises(ValueError, match="images need an int >= 1"):
        make_preprocess({"image": fields["image"]})


def test_preprocess_and_options_from_config():
    import ml_collections

    from maskgen.data import data_options, preprocess_from_config, source_info

    data = ml_collections.ConfigDict(dict(name="pydoc_text", data_dir="", image_size=0, augment="none",
                                          train_split="train", read_threads=1, seq_len=32))
    assert data_options(data) == {"seq_len": 32}
    info = source_info(data.name, None, data_options(data))
    preprocess = preprocess_from_config(data, info)
    assert preprocess.fields == info["fields"] and preprocess.image_size == 0
    # a data_info written by hand (no "fields") is read by its legacy keys
    legacy = {"token_shape": (8, 8), "codebook_size": 256, "num_levels": 1, "num_classes": 10, "image_shape": None}
    assert sorted(preprocess_from_config(data, legacy).fields) == ["label", "tokens"]
