"""Tests for maskgen.data sources: digits split, array_record errors, TFDS read without TensorFlow."""

import hashlib
import io
import pickle
import sys

import numpy as np
import pytest

from maskgen.data import (DataSource, ImageSpec, LabelSpec, digits, make_source, prepare_digits, register_source,
                          source_info, source_names)


def _all(source):
    return [source[i] for i in range(len(source))]


# ---------------------------------------------------------------- digits


def test_digits_split_sizes_and_examples():
    train, test = make_source("digits", "train"), make_source("digits", "test")
    assert (len(train), len(test)) == (1438, 359)
    assert len(train) + len(test) == 1797
    ex = train[0]
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1)
    assert isinstance(ex["label"], np.int32) and ex["label"].shape == ()
    images, labels = digits.load_all()
    assert images.min() == 0 and images.max() == 255
    assert source_info("digits") == {"image_shape": (8, 8, 1), "num_classes": 10,
                                      "splits": {"train": 1438, "test": 359},
                                      "fields": {"image": ImageSpec((8, 8, 1)), "label": LabelSpec(10)}}


def test_digits_split_is_disjoint_stratified_and_fixed():
    train_idx, test_idx = digits.split_indices("train"), digits.split_indices("test")
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    _, labels = digits.load_all()
    for c in range(10):
        n_c = int((labels == c).sum())
        assert int((labels[test_idx] == c).sum()) == round(n_c / 5)
        assert int((labels[train_idx] == c).sum()) == n_c - round(n_c / 5)
    # The split rule is hash based and must never change: pin it.
    key = ",".join(map(str, test_idx.tolist())).encode()
    assert hashlib.sha256(key).hexdigest() == "8bfa9232e315b7782df7c5347442d1881a0f2aa2e330f73f8d291626d870a249"
    # Examples are the indexed digits, and images are not shared between the splits by index.
    images, _ = digits.load_all()
    test = make_source("digits", "test")
    for i in (0, 100, len(test) - 1):
        np.testing.assert_array_equal(test[i]["image"], images[test_idx[i]])
        assert test[i]["label"] == labels[test_idx[i]]


def test_digits_deterministic_and_pickles():
    a, b = _all(make_source("digits", "test")), _all(pickle.loads(pickle.dumps(make_source("digits", "test"))))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["label"] == y["label"]
    # the returned image is a copy: mutating it leaves the cache alone
    a[0]["image"][:] = 7
    assert not np.all(make_source("digits", "test")[0]["image"] == 7)


def test_digits_errors():
    with pytest.raises(ValueError, match=r"valid splits are \['train', 'test'\]"):
        make_source("digits", "validation")
    with pytest.raises(IndexError):
        make_source("digits", "test")[359]
    assert make_source("digits", "test")[-1]["image"].shape == (8, 8, 1)


def test_digits_through_grain():
    import grain

    ds = grain.MapDataset.source(make_source("digits", "train")).shuffle(seed=0).batch(16, drop_remainder=True)
    batch = ds[0]
    assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (16,)


# ---------------------------------------------------------------- errors


def test_unknown_source_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown data source 'mnist'.*digits.*array_record.*tfds:"):
        make_source("mnist", "train")
    with pytest.raises(ValueError, match="valid names"):
        source_info("cifar10")
    with pytest.raises(ValueError, match=r"unknown data source 'tfds'.*'tfds:<dataset>"):  # a prefix needs its rest
        make_source("tfds", "train")


def test_registry_lists_names_and_takes_new_sources(monkeypatch):
    from maskgen.data import sources

    monkeypatch.setattr(sources, "_REGISTRY", dict(sources._REGISTRY))  # the test's source leaves with it
    assert source_names()[:6] == ["digits", "array_record", "tfds:<dataset>[/<config>][:<version>]", "tokens",
                                  "pydoc_text", "text_files"]

    @register_source("maskgen_test_squares")
    class Squares(DataSource):
        options = {"n": 4}

        def info(self, data_dir, options):
            return {"splits": {"train": options["n"]}}

        def open(self, split, data_dir, options):
            return [{"x": np.int32(i * i)} for i in range(options["n"])]

    assert "maskgen_test_squares" in source_names()
    assert source_info("maskgen_test_squares", options={"n": 3}) == {"splits": {"train": 3}}
    assert [int(ex["x"]) for ex in make_source("maskgen_test_squares", "train")] == [0, 1, 4, 9]
    with pytest.raises(ValueError, match=r"'maskgen_test_squares' takes no option 'm'; its options are: n"):
        make_source("maskgen_test_squares", "train", options={"m": 1})
    with pytest.raises(ValueError, match="takes no option 'seq_len'; its options are: none"):
        source_info("digits", options={"seq_len": 8})
    with pytest.raises(ValueError, match="already registered"):
        register_source("digits")(Squares)


def test_array_record_missing_dir_names_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_source("array_record", "train", str(missing))
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        make_source("array_record", "train", str(tmp_path))
    with pytest.raises(ValueError, match="data_dir"):
        make_source("array_record", "train", None)


def test_array_record_unknown_split_lists_splits(tmp_path):
    prepare_digits(str(tmp_path))
    with pytest.raises(ValueError, match=r"valid splits are \['test', 'train'\]"):
        make_source("array_record", "validation", str(tmp_path))


# ---------------------------------------------------------------- tfds without TensorFlow


def _png(array):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_digits():
    images, labels = digits.load_all()
    return images[:40], labels[:40]


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """Two tiny TFDS datasets built locally (array_record, no TensorFlow): raw tensors and PNG images."""
    tfds = pytest.importorskip("tensorflow_datasets")
    images, labels = _tiny_digits()

    with tfds.core.registered.skip_registration():

        class MaskgenTinyDigits(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("1.0.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(0, 30), "test": self._generate_examples(30, 40)}

            def _generate_examples(self, start, stop):
                for i in range(start, stop):
                    yield i, {"image": images[i], "label": int(labels[i])}

        class MaskgenTinyPng(MaskgenTinyDigits):
            """Same data through tfds.features.Image: encoded here with PIL, decoded by tfds with PIL."""

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }))

            def _generate_examples(self, start, stop):
                for i in range(start, stop):
                    yield i, {"image": _png(images[i][..., 0]), "label": int(labels[i])}

    root = tmp_path_factory.mktemp("tfds")
    for cls in (MaskgenTinyDigits, MaskgenTinyPng):
        cls(data_dir=str(root), file_format="array_record").download_and_prepare()
    assert "tensorflow" not in sys.modules
    return root


def _as_multiset(examples):
    return sorted((ex["image"].tobytes(), int(ex["label"])) for ex in examples)


@pytest.mark.parametrize("ds_name", ["maskgen_tiny_digits", "maskgen_tiny_png"])
def test_tfds_reads_without_tensorflow(tfds_dir, ds_name):
    images, labels = _tiny_digits()
    source = make_source(f"tfds:{ds_name}", "train", data_dir=str(tfds_dir))
    assert len(source) == 30
    got = _all(source)
    assert all(ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1) for ex in got)
    assert all(isinstance(ex["label"], np.int32) for ex in got)
    # tfds shuffles on write, so compare contents, not order
    expected = [{"image": images[i], "label": labels[i]} for i in range(30)]
    assert _as_multiset(got) == _as_multiset(expected)
    assert source_info(f"tfds:{ds_name}", str(tfds_dir)) == {
        "image_shape": (8, 8, 1), "num_classes": 10, "splits": {"train": 30, "test": 10},
        "fields": {"image": ImageSpec((8, 8, 1)), "label": LabelSpec(10)}}
    assert source.fields == {"image": ImageSpec((8, 8, 1)), "label": LabelSpec(10)}
    assert "tensorflow" not in sys.modules


def test_tfds_data_dir_forms_and_pickle(tfds_dir):
    versioned = tfds_dir / "maskgen_tiny_digits" / "1.0.0"
    by_root = make_source("tfds:maskgen_tiny_digits:1.0.0", "test", data_dir=str(tfds_dir))
    by_dir = make_source("tfds:maskgen_tiny_digits", "test", data_dir=str(versioned))
    assert by_root.builder_dir == by_dir.builder_dir == str(versioned)
    assert _as_multiset(_all(by_root)) == _as_multiset(_all(pickle.loads(pickle.dumps(by_dir))))
    assert len(make_source("tfds:maskgen_tiny_digits", "train[:10]", data_dir=str(tfds_dir))) == 10


def test_tfds_errors(tfds_dir, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"looked for .*imagenet2012.*never downloads"):
        make_source("tfds:imagenet2012", "train", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="2.0.0"):
        make_source("tfds:maskgen_tiny_digits:2.0.0", "train", data_dir=str(tfds_dir))
    with pytest.raises(ValueError, match=r"valid splits are \['test', 'train'\]"):
        make_source("tfds:maskgen_tiny_digits", "validation", data_dir=str(tfds_dir))
    # tfrecord-format datasets have no random access without TensorFlow: clear error, not a crash
    import shutil

    tfrecord = tmp_path / "tfr" / "maskgen_tiny_digits" / "1.0.0"
    shutil.copytree(tfds_dir / "maskgen_tiny_digits" / "1.0.0", tfrecord)
    info = tfrecord / "dataset_info.json"
    info.write_text(info.read_text().replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"'))
    with pytest.raises(ValueError, match="stored as tfrecord.*array_record"):
        make_source("tfds:maskgen_tiny_digits", "train", data_dir=str(tmp_path / "tfr"))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match=r"pip install maskgen\[tfds\]"):
        make_source("tfds:maskgen_tiny_digits", "train", data_dir=str(tfds_dir))
