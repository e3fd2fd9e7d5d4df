"""Tests for maskgen.data.prepare: digits and image folders to ArrayRecord, bad-image handling."""

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from maskgen.data import BadImageError, make_source, prepare_digits, prepare_image_folder, source_info
from maskgen.data.prepare import find_images
from maskgen.data.records import decode_example, encode_example, write_shards


def _all(source):
    return [source[i] for i in range(len(source))]


def test_record_roundtrip_and_errors():
    ex = {"image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "label": np.int32(7)}
    back = decode_example(encode_example(ex))
    np.testing.assert_array_equal(back["image"], ex["image"])
    assert back["image"].flags.writeable and isinstance(back["label"], np.int32) and back["label"] == 7
    with pytest.raises(ValueError, match="uint8"):
        encode_example({"image": np.zeros((2, 2, 1), np.float32), "label": 0})
    with pytest.raises(ValueError, match="not a maskgen example record"):
        decode_example(b"\x00garbage")


def test_write_shards_keeps_order_across_shards(tmp_path):
    examples = [{"image": np.full((1, 1, 1), i, np.uint8), "label": i} for i in range(7)]
    names = write_shards(iter(examples), str(tmp_path), "train", 3)  # unknown length: buffered
    assert names == [f"train.array_record-{i:05d}-of-00003" for i in range(3)]
    from array_record.python.array_record_data_source import ArrayRecordDataSource

    source = ArrayRecordDataSource([str(tmp_path / n) for n in names])
    assert [int(decode_example(source[i])["label"]) for i in range(len(source))] == list(range(7))
    # more shards than examples: every shard still exists, order kept
    names = write_shards(examples[:2], str(tmp_path), "test", 4)
    assert all((tmp_path / n).exists() for n in names)
    assert len(ArrayRecordDataSource([str(tmp_path / n) for n in names])) == 2


def test_prepare_digits_roundtrip(tmp_path):
    out = str(tmp_path / "digits")
    meta = prepare_digits(out, num_shards=3)
    on_disk = json.loads((tmp_path / "digits" / "metadata.json").read_text())
    assert on_disk == meta
    assert meta["format"] == "maskgen.array_record.v1" and meta["source"] == "digits"
    assert meta["image_shape"] == [8, 8, 1] and meta["num_classes"] == 10
    assert meta["class_names"] == [str(c) for c in range(10)] and meta["skipped"] == []
    assert {s: v["num_examples"] for s, v in meta["splits"].items()} == {"train": 1438, "test": 359}
    assert source_info("array_record", out) == source_info("digits")
    for split in ("train", "test"):
        ours, ref = make_source("array_record", split, out), make_source("digits", split)
        ours = pickle.loads(pickle.dumps(ours))
        assert len(ours) == len(ref) and ours.fields == ref.fields
        for a, b in zip(_all(ours), _all(ref), strict=True):
            np.testing.assert_array_equal(a["image"], b["image"])
            assert a["image"].dtype == np.uint8 and isinstance(a["label"], np.int32) and a["label"] == b["label"]
    batch = make_source("array_record", "test", out).__getitems__([5, 0, -1])
    assert [int(x["label"]) for x in batch] == [int(ref[i]["label"]) for i in (5, 0, -1)]


# ---------------------------------------------------------------- image folders


def _save(path, array, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@pytest.fixture
def image_folder(tmp_path):
    """cat: 2 good images + 1 truncated PNG; dog: 2 good images + 1 file of random bytes."""
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    wide = np.zeros((12, 24, 3), np.uint8)
    wide[:, :6] = (255, 0, 0)  # red outside the center crop (x in [6, 18))
    wide[:, 18:] = (255, 0, 0)
    wide[:, 6:18] = (0, 0, 255)  # blue inside
    _save(root / "cat" / "wide.png", wide)
    _save(root / "cat" / "gray.png", np.full((16, 16), 100, np.uint8))  # mode L -> RGB
    noisy = root / "cat" / "truncated.png"
    _save(noisy, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    noisy.write_bytes(noisy.read_bytes()[: noisy.stat().st_size * 2 // 3])
    _save(root / "dog" / "photo.jpg", np.full((20, 10, 3), 200, np.uint8), quality=95)
    _save(root / "dog" / "sub" / "alpha.png", np.full((9, 9, 4), 50, np.uint8))  # RGBA, nested folder
    (root / "dog" / "corrupt.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_bad_image_stops_prepare_and_names_file(image_folder, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(BadImageError, match=r"(corrupt|truncated)\.png.*--skip-bad") as info:
        prepare_image_folder(str(image_folder), str(out), resolution=8, test_fraction=0.0)
    assert os.path.isfile(info.value.path) and info.value.reason
    assert not (out / "metadata.json").exists()
    assert not list(out.glob("*.array_record-*"))


def test_skip_bad_lists_files_and_roundtrips(image_folder, tmp_path):
    out = tmp_path / "out"
    meta = prepare_image_folder(str(image_folder), str(out), resolution=8, skip_bad=True, test_fraction=0.0,
                                num_workers=2)
    assert sorted(os.path.basename(s["path"]) for s in meta["skipped"]) == ["corrupt.png", "truncated.png"]
    assert all(s["error"] for s in meta["skipped"])
    assert json.loads((out / "metadata.json").read_text())["skipped"] == meta["skipped"]
    assert meta["class_names"] == ["cat", "dog"] and meta["num_classes"] == 2
    assert meta["image_shape"] == [8, 8, 3] and meta["source"] == "folder:" + str(image_folder)
    assert meta["splits"]["train"]["num_examples"] == 4 and meta["splits"]["test"]["num_examples"] == 0
    got = _all(make_source("array_record", "train", str(out)))
    assert [int(ex["label"]) for ex in got] == [0, 0, 1, 1]  # cat/gray, cat/wide, dog/photo, dog/sub/alpha
    assert all(ex["image"].shape == (8, 8, 3) and ex["image"].dtype == np.uint8 for ex in got)
    gray, wide, photo, alpha = (ex["image"] for ex in got)
    assert np.all(gray == 100) and np.all(alpha == 50)
    np.testing.assert_array_equal(wide, np.broadcast_to(np.array([0, 0, 255], np.uint8), (8, 8, 3)))
    assert np.abs(photo.astype(int) - 200).max() <= 2  # JPEG
    # a later failing run in the same directory removes the old metadata.json and shards
    with pytest.raises(BadImageError):
        prepare_image_folder(str(image_folder), str(out), resolution=8, test_fraction=0.0)
    assert not (out / "metadata.json").exists() and not list(out.glob("*.array_record-*"))


def test_split_folders_and_hash_split(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("b", "a"):
            for i in range(n):
                _save(root / split / cls / f"{i}.png", np.full((4, 4, 3), i, np.uint8))
    meta = prepare_image_folder(str(root), str(tmp_path / "out"), resolution=4)
    assert meta["class_names"] == ["a", "b"]
    assert {s: v["num_examples"] for s, v in meta["splits"].items()} == {"train": 6, "test": 4}
    assert [int(ex["label"]) for ex in _all(make_source("array_record", "test", str(tmp_path / "out")))] == [0, 0, 1, 1]

    flat = tmp_path / "flat"
    for i in range(20):
        _save(flat / "a" / f"{i:03d}.png", np.zeros((2, 2, 3), np.uint8))
    names, items = find_images(str(flat), test_fraction=0.25)
    assert names == ["a"]
    test_files = [os.path.relpath(p, flat) for p, _ in items["test"]]
    assert test_files == ["a/001.png", "a/002.png", "a/011.png", "a/015.png"]  # sha256 rule, pinned
    assert len(items["train"]) == 16


def test_single_class_folder_and_errors(tmp_path):
    root = tmp_path / "faces"
    for i in range(3):
        _save(root / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    names, items = find_images(str(root), test_fraction=0.0)
    assert names == ["faces"] and len(items["train"]) == 3
    with pytest.raises(FileNotFoundError, match="missing"):
        prepare_image_folder(str(tmp_path / "missing"), str(tmp_path / "o"), resolution=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        prepare_image_folder(str(tmp_path / "empty"), str(tmp_path / "o"), resolution=8)
    with pytest.raises(ValueError, match="resolution"):
        prepare_image_folder(str(root), str(tmp_path / "o"), resolution=0)
