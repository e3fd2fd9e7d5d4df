"""Bad inputs get clear errors or warnings, not tracebacks or silent damage: corrupt ArrayRecord
shards, out-of-range `test:INDEX` examples, masks of the wrong size, 16-bit images, and tiny or
elongated images in `maskgen prepare --source folder`.

Everything here is a unit test on a function, except one `maskgen prepare` CLI run for the
printed summary; no model is trained (the `edit` helpers get a stand-in tokenizer).
"""

import json
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from maskgen.data import make_source
from maskgen.data.prepare import prepare_digits, prepare_image_folder


# ---------------------------------------------------------------- corrupt ArrayRecord shards


@pytest.fixture
def digits_dir(tmp_path):
    """`maskgen prepare --source digits` output, one shard per split."""
    out = tmp_path / "digits"
    prepare_digits(str(out))
    return out


def _test_shard(digits_dir) -> str:
    return str(digits_dir / "test.array_record-00000-of-00001")


def test_corrupt_record_names_shard_and_record(digits_dir):
    shard = _test_shard(digits_dir)
    data = bytearray(open(shard, "rb").read())
    data[1000:1016] = b"\xff" * 16  # inside an early record's chunk: its hash no longer matches
    open(shard, "wb").write(bytes(data))
    source = make_source("array_record", "test", str(digits_dir))  # the footer is intact: opening works
    with pytest.raises(ValueError, match=re.escape(shard)) as info:
        for i in range(len(source)):
            source[i]
    message = str(info.value)
    assert re.search(r"cannot read its record (\d+) \(example \1 of split 'test'\)", message), message
    assert "hash mismatch" in message and "maskgen prepare" in message
    with pytest.raises(ValueError, match=re.escape(shard) + r": cannot read its record \d+"):
        source.__getitems__(list(range(len(source))))  # the batched read names the record too


@pytest.mark.parametrize("keep", [0, 65536], ids=["empty", "truncated"])
def test_truncated_shard_names_file_on_open(digits_dir, keep):
    shard = _test_shard(digits_dir)
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[:keep])
    with pytest.raises(ValueError, match=re.escape(f"corrupt ArrayRecord shard {shard} ({keep} bytes): cannot open")):
        make_source("array_record", "test", str(digits_dir))
    make_source("array_record", "train", str(digits_dir))  # the other split's shard still opens


# ---------------------------------------------------------------- `maskgen edit --image test:INDEX`


class _Tokenizer:
    """Stands in for a TokenizerHandle: what generate.load_image reads from one (digits data)."""

    def __init__(self, image_size=16, channels=1):
        self.config = SimpleNamespace(data=SimpleNamespace(name="digits", data_dir="", image_size=image_size))
        self.run = SimpleNamespace(data_info={"image_shape": (8, 8, channels)})


def test_example_index_out_of_range_or_malformed():
    from maskgen.data.digits import DigitsSource
    from maskgen.data.pipeline import ToModelInput
    from maskgen.generate import load_image

    tokenizer = _Tokenizer()
    for spec in ("test:99999", "test:359", "test:-1"):
        with pytest.raises(ValueError, match=re.escape(f"{spec} is out of range: the test split has 359 examples "
                                                       "(0..358)")):
            load_image(spec, tokenizer)
    with pytest.raises(ValueError, match=re.escape("test:abc is not test:INDEX with a whole-number INDEX: "
                                                   "the test split has 359 examples (0..358)")):
        load_image("test:abc", tokenizer)
    with pytest.raises(ValueError, match=r"train:1\.5 is not train:INDEX .* the train split has 1438 examples"):
        load_image("train:1.5", tokenizer)
    image, label = load_image("test:358", tokenizer)  # the last one still loads, as the model's input
    expected = ToModelInput(16)(DigitsSource("test")[358])
    np.testing.assert_array_equal(image, expected["image"])
    assert label == int(expected["label"])


# ---------------------------------------------------------------- mask PNGs of the wrong size


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def test_mask_of_another_size_is_refused_unless_resized(tmp_path):
    from maskgen.generate import load_mask

    left = np.zeros((40, 40), np.uint8)
    left[:, :20] = 255
    path = _save(tmp_path / "mask40.png", left)
    with pytest.raises(ValueError, match=re.escape(f"mask {path!r} is 40x40 pixels but the image is 16x16: ")
                       + r".*--resize-mask"):
        load_mask(path, 16)
    mask = load_mask(path, 16, resize=True)  # nearest neighbour: still exactly the left half
    assert mask.shape == (16, 16) and mask[:, :8].all() and not mask[:, 8:].any()
    assert load_mask(_save(tmp_path / "mask16.png", left[:16, 12:28]), 16)[:, :8].all()  # the right size: as is
    # A mask drawn on a 64x32 image file follows the image's centre crop (x 16..48) and resize to 16.
    right = np.zeros((32, 64), np.uint8)
    right[:, 40:] = 255
    wide = _save(tmp_path / "wide.png", right)
    mask = load_mask(wide, 16, image_shape=(32, 64))
    assert mask[:, 12:].all() and not mask[:, :12].any()
    with pytest.raises(ValueError, match="is 64x32 pixels but the image is 16x16"):
        load_mask(wide, 16)  # for test:INDEX (no file) the image is the model's 16x16 input


def test_edit_checks_the_mask_against_the_image_file(tmp_path):
    from maskgen import generate
    from maskgen.main import _parser

    image = _save(tmp_path / "in.png", np.full((32, 64), 128, np.uint8))
    mask = _save(tmp_path / "mask.png", np.full((16, 16), 255, np.uint8))
    seen = []

    def edit(image, pixel_mask, label, **kwargs):
        seen.append(pixel_mask)
        return {"edited": image, "token_mask": np.zeros((4, 4), bool)}

    handle = SimpleNamespace(tokenizer=_Tokenizer(), edit=edit)
    out = str(tmp_path / "out.png")
    with pytest.raises(ValueError, match="is 16x16 pixels but the image is 64x32"):
        generate.edit_to_png(handle, image, mask, 0, out)
    generate.edit_to_png(handle, image, mask, 0, out, resize_mask=True)
    assert seen[0].shape == (16, 16) and seen[0].all() and os.path.isfile(out)
    args = _parser().parse_args(["edit", "--workdir", "w", "--image", image, "--mask", mask, "--class", "0",
                                 "--out", out, "--resize-mask"])
    assert args.resize_mask


# ---------------------------------------------------------------- 16-bit and float images


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    from maskgen.generate import load_image

    gradient = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
    path = tmp_path / "grey16" / "g.png"
    _save(path, gradient)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # PIL keeps the 16 bits
    prepare_image_folder(str(tmp_path / "grey16"), str(tmp_path / "out"), resolution=64, test_fraction=0.0)
    image = make_source("array_record", "train", str(tmp_path / "out"))[0]["image"]
    assert image.shape == (64, 64, 3) and (image == image[..., :1]).all()
    assert np.abs(image[..., 0].astype(float) - gradient / 257).max() <= 1
    edited, _ = load_image(str(path), _Tokenizer(image_size=64))  # `maskgen edit --image` reads the same way
    assert np.abs((edited[..., 0] + 1) * 127.5 - gradient / 257).max() <= 1


def test_32bit_and_float_images_are_scaled():
    from maskgen.data.prepare import to_8bit

    ints = Image.fromarray(np.array([[0, 257, 65535]], np.int32))  # "I" holding 16-bit values
    np.testing.assert_array_equal(np.asarray(to_8bit(ints)), [[0, 1, 255]])
    wide = Image.fromarray(np.array([[-5, 2**30, 2**31 - 1]], np.int32))  # the full 32-bit range
    np.testing.assert_array_equal(np.asarray(to_8bit(wide)), [[0, 128, 255]])
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0, 2.0, np.nan]], np.float32))
    np.testing.assert_array_equal(np.asarray(to_8bit(floats)), [[0, 128, 255, 255, 0]])
    rgb = Image.new("RGB", (2, 2))
    assert to_8bit(rgb) is rgb


# ---------------------------------------------------------------- tiny and elongated images


@pytest.fixture
def mixed_sizes(tmp_path):
    root = tmp_path / "shapes"
    _save(root / "a" / "fine.png", np.full((40, 40, 3), 10, np.uint8))
    _save(root / "a" / "tiny.png", np.full((12, 10, 3), 20, np.uint8))  # 10x12: below 32
    _save(root / "b" / "long.png", np.full((40, 200, 3), 30, np.uint8))  # 200x40: aspect 5
    return root


def test_small_and_elongated_images_are_listed(mixed_sizes, tmp_path):
    out = tmp_path / "out"
    meta = prepare_image_folder(str(mixed_sizes), str(out), resolution=32, test_fraction=0.0)
    assert meta["splits"]["train"]["num_examples"] == 3 and meta["skipped"] == []  # kept, as before
    warned = {os.path.basename(w["path"]): w["warning"] for w in meta["warnings"]}
    assert warned == {
        "tiny.png": "10x12, smaller than --resolution 32: upscaled 3.2x",
        "long.png": "200x40, aspect ratio 5.0 > 4: the centre crop keeps 20% of it",
    }
    assert json.loads((out / "metadata.json").read_text())["warnings"] == meta["warnings"]
    meta = prepare_image_folder(str(mixed_sizes), str(out), resolution=32, test_fraction=0.0, min_size=16)
    assert meta["splits"]["train"]["num_examples"] == 2
    assert [(os.path.basename(s["path"]), s["error"]) for s in meta["skipped"]] == [
        ("tiny.png", "10x12, shorter side below --min-size 16")]
    assert [os.path.basename(w["path"]) for w in meta["warnings"]] == ["long.png"]
    with pytest.raises(ValueError, match="min_size must be a non-negative integer"):
        prepare_image_folder(str(mixed_sizes), str(out), resolution=32, min_size=-1)


def test_prepare_command_prints_warnings_and_min_size_skips(mixed_sizes, tmp_path):
    out = str(tmp_path / "out")
    result = run_cli("prepare", "--source", "folder", "--input", str(mixed_sizes), "--out", out,
                     "--resolution", "32", "--test-fraction", "0", "--min-size", "16", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped 1 unreadable or too small file(s):" in result.stdout
    assert "tiny.png: 10x12, shorter side below --min-size 16" in result.stdout
    assert "warning: 1 image(s) smaller than --resolution or elongated" in result.stdout
    assert "long.png: 200x40, aspect ratio 5.0 > 4" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["sample", "--workdir", "w", "--num", "0"], "argument --num: must be >= 1, got 0"),  # was a StopIteration
    (["eval", "--workdir", "w", "--step", "-1"], "argument --step: must be >= 0, got -1"),
    (["prepare", "--source", "digits", "--out", "o", "--num-shards", "x"], "argument --num-shards: 'x' is not a whole number"),
    (["sample", "--workdir", "w", "--steps", "0"], "argument --steps: must be >= 1, got 0"),
])
def test_command_line_counts_are_checked(argv, message, capsys):
    from maskgen.main import _parser

    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_corrupt_token_shard_names_file_and_record(tmp_path):
    """The token datasets `maskgen tokenize` writes get the same errors as prepared images."""
    from maskgen.data.tokens import TokenSource, write_token_metadata, write_token_split

    rng = np.random.default_rng(0)
    rows = [(rng.integers(0, 16, (8, 8), dtype=np.int32), i % 10) for i in range(400)]
    split = write_token_split(str(tmp_path), "test", rows)
    write_token_metadata(str(tmp_path), token_shape=(8, 8), codebook_size=16, num_levels=1, num_classes=10,
                         splits={"test": split}, tokenizer={})
    shard = str(tmp_path / split["shards"][0])
    data = bytearray(open(shard, "rb").read())
    data[1000:1016] = b"\xff" * 16
    open(shard, "wb").write(bytes(data))
    source = TokenSource(str(tmp_path), "test")
    with pytest.raises(ValueError, match=re.escape(shard) + r": cannot read its record \d+ \(example \d+ of split") as info:
        for i in range(len(source)):
            source[i]
    assert "maskgen tokenize" in str(info.value)
    open(shard, "wb").write(bytes(data[:65536]))
    with pytest.raises(ValueError, match=re.escape(f"corrupt ArrayRecord shard {shard} (65536 bytes): cannot open")):
        TokenSource(str(tmp_path), "test")
