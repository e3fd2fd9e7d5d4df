"""Text and the named-array formats: byte tokenizer, pydoc_text, text_files, tfds text, token records v1/v2, specs."""

import json
import os
import pickle
import sys

import numpy as np
import pytest

from maskgen.data import make_source, source_info, text
from maskgen.data.specs import (AudioSpec, ImageSpec, LabelSpec, LatentSpec, TextSpec, TokenSpec, spec_from_json,
                                spec_to_json)

# ---------------------------------------------------------------- specs


def test_specs_round_trip_through_json():
    specs = [ImageSpec((None, None, 3)), TokenSpec((10, 4), 1024, 4), TokenSpec((8, 8), 256),
             TextSpec(128, 257, "bytes", 256), LatentSpec((4, 4, 8), scale=0.18215), AudioSpec((None, 1), 22050),
             LabelSpec(10)]
    for spec in specs:
        data = json.loads(json.dumps(spec_to_json(spec)))
        assert spec_from_json(data) == spec
    assert spec_to_json(TokenSpec((10, 4), 1024, 4)) == {"kind": "tokens", "shape": [10, 4], "vocab_size": 1024,
                                                        "num_levels": 4}
    with pytest.raises(ValueError, match="unknown field kind 'video'"):
        spec_from_json({"kind": "video", "shape": [1]})
    with pytest.raises(ValueError, match=r"4 levels needs shape \[..., 4\]"):
        TokenSpec((10, 3), 16, 4)


# ---------------------------------------------------------------- the byte tokenizer


def test_bytes_round_trip_and_decode_of_any_ids():
    s = "naïve café — ∑ 🐍"
    ids = text.encode(s)
    assert ids.dtype == np.int32 and ids.max() < 256 and text.decode(ids) == s
    assert text.decode(np.concatenate([ids, [text.EOS, 65, 66]])) == s  # stops at EOS
    assert text.decode([0xFF, 0x41, 0xC3]) == "\ufffdA\ufffd"  # random bytes still print
    assert (text.VOCAB_SIZE, text.EOS) == (257, 256)
    with pytest.raises(ValueError, match="byte ids must be in"):
        text.decode([300])
    np.testing.assert_array_equal(text.fixed_length("ab", 4), [97, 98, 256, 256])
    np.testing.assert_array_equal(text.fixed_length(b"abcdef", 4), [97, 98, 99, 100])


# ---------------------------------------------------------------- pydoc_text


def test_pydoc_text_windows_decode_to_the_topics():
    from pydoc_data.topics import topics

    seq_len = 64
    info = source_info("pydoc_text", options={"seq_len": seq_len})
    assert info["fields"] == {"tokens": TextSpec(seq_len, 257, "bytes", 256)}
    assert info["token_shape"] == (seq_len,) and info["codebook_size"] == 257 and info["num_classes"] == 0
    assert info["image_shape"] is None and info["tokenizer"] == {"name": "bytes"}
    train_names, val_names = text.pydoc_split_topics("train"), text.pydoc_split_topics("validation")
    assert not set(train_names) & set(val_names) and sorted(train_names + val_names) == sorted(topics)
    share = info["splits"]["validation"] / (info["splits"]["train"] + info["splits"]["validation"])
    assert 0.07 < share < 0.13, share
    for split, names in (("train", train_names), ("validation", val_names)):
        source = pickle.loads(pickle.dumps(make_source("pydoc_text", split, options={"seq_len": seq_len})))
        assert len(source) == info["splits"][split]
        ids = np.concatenate([source[i]["tokens"] for i in range(len(source))])
        assert ids.dtype == np.int32 and source[0]["tokens"].shape == (seq_len,)
        # the windows are the documents, in order, each followed by EOS (the tail shorter than one window dropped)
        expected = b"".join(topics[n].encode() + b"\x00" for n in names)  # NUL stands for EOS here
        assert b"\x00" not in b"".join(topics[n].encode() for n in names)
        got = np.where(ids == text.EOS, 0, ids).astype(np.uint8).tobytes()
        assert expected.startswith(got) and len(expected) - len(got) < seq_len
        assert int((ids == text.EOS).sum()) >= len(names) - 1
        assert text.decode(source[0]["tokens"]) == topics[names[0]][:len(text.decode(source[0]["tokens"]))]


def test_text_option_errors():
    with pytest.raises(ValueError, match="seq_len=1: must be an int >= 2"):
        make_source("pydoc_text", "train", options={"seq_len": 1})
    with pytest.raises(ValueError, match=r"takes no option 'seqlen'; its options are: seq_len"):
        source_info("pydoc_text", options={"seqlen": 64})
    with pytest.raises(ValueError, match=r"fewer than one window of seq_len=10000000"):
        make_source("pydoc_text", "validation", options={"seq_len": 10_000_000})
    with pytest.raises(ValueError, match=r"valid splits are \['train', 'validation'\]"):
        make_source("pydoc_text", "test")


# ---------------------------------------------------------------- text_files


def test_text_files_folder_splits_by_file(tmp_path):
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon"]
    texts = {}
    for i in range(12):
        body = " ".join(rng.choice(words, size=int(rng.integers(40, 120))))
        sub = tmp_path / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        (sub / f"{i:02d}.txt").write_text(body, encoding="utf-8")
        texts[os.path.join(sub.name, f"{i:02d}.txt")] = body.encode()
    (tmp_path / ".hidden.txt").write_text("never read")
    (tmp_path / "notes.md").write_text("not a .txt")
    info = source_info("text_files", str(tmp_path), {"seq_len": 16})
    streams = {}
    for split in ("train", "validation"):
        source = make_source("text_files", split, str(tmp_path), {"seq_len": 16})
        assert len(source) == info["splits"][split] > 0
        streams[split] = np.concatenate([source[i]["tokens"] for i in range(len(source))])
    order = sorted(texts)  # files in relative-path order
    held = text.validation_documents([len(texts[k]) for k in order])
    assert any(held) and not all(held)
    for split, want_held in (("train", False), ("validation", True)):
        expected = np.concatenate([np.append(np.frombuffer(texts[k], np.uint8), text.EOS)
                                   for k, h in zip(order, held) if h == want_held])
        n = len(streams[split])
        np.testing.assert_array_equal(streams[split], expected[:n])
        assert len(expected) - n < 16
    assert b"never read" not in streams["train"].astype(np.uint8).tobytes()


def test_text_files_single_file_holds_out_its_tail(tmp_path):
    path = tmp_path / "book.txt"
    body = ("It was the best of times, it was the worst of times. " * 40).encode()
    path.write_bytes(body)
    train = make_source("text_files", "train", str(path), {"seq_len": 32})
    val = make_source("text_files", "validation", str(path), {"seq_len": 32})
    cut = len(body) - len(body) // 10
    assert len(train) == (cut + 1) // 32 and len(val) == (len(body) - cut + 1) // 32
    assert text.decode(val[0]["tokens"]) == body[cut:cut + 32].decode()


def test_text_files_errors(tmp_path):
    bad = tmp_path / "corpus" / "latin1.txt"
    bad.parent.mkdir()
    (tmp_path / "corpus" / "fine.txt").write_text("ok " * 100)
    bad.write_bytes("caf".encode() + b"\xe9 au lait")  # Latin-1 é
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8: byte offset 3 \(0xe9\)"):
        source_info("text_files", str(tmp_path / "corpus"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_source("text_files", "train", str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.txt files"):
        make_source("text_files", "train", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="needs data_dir"):
        make_source("text_files", "train")
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("short")
    with pytest.raises(ValueError, match="fewer than one window"):
        make_source("text_files", "validation", str(tiny), {"seq_len": 64})


# ---------------------------------------------------------------- tfds text (lm1b's layout), without TensorFlow


SENTENCES = ["The cat sat on the mat .", "Stocks fell sharply on Monday .", "Ça va très bien , merci .",
             "A much longer sentence that runs well past the sequence length of this test ."]


@pytest.fixture(scope="module")
def tfds_text(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    with tfds.core.registered.skip_registration():

        class MaskgenTinyLm1b(tfds.core.GeneratorBasedBuilder):
            """lm1b's features (one `text` string) and split names, four sentences per split."""

            VERSION = tfds.core.Version("1.1.0")

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text()}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(), "test": self._generate_examples()}

            def _generate_examples(self):
                for i, sentence in enumerate(SENTENCES):
                    yield i, {"text": sentence}

    root = tmp_path_factory.mktemp("tfds_text")
    MaskgenTinyLm1b(data_dir=str(root), file_format="array_record").download_and_prepare()
    assert "tensorflow" not in sys.modules
    return str(root)


def test_tfds_text_is_padded_bytes(tfds_text):
    info = source_info("tfds:maskgen_tiny_lm1b", tfds_text, {"seq_len": 40})
    assert info["fields"] == {"tokens": TextSpec(40, 257, "bytes", 256)} and info["num_classes"] == 0
    assert info["splits"] == {"train": 4, "test": 4}
    source = pickle.loads(pickle.dumps(make_source("tfds:maskgen_tiny_lm1b", "train", tfds_text, {"seq_len": 40})))
    rows = [source[i]["tokens"] for i in range(len(source))]
    assert all(r.dtype == np.int32 and r.shape == (40,) for r in rows)
    decoded = sorted(text.decode(r) for r in rows)  # tfds shuffles on write
    assert decoded == sorted(s.encode()[:40].decode("utf-8", "replace") for s in SENTENCES)
    short = next(r for r in rows if text.decode(r) == SENTENCES[0])
    n = len(SENTENCES[0])
    assert np.all(short[n:] == text.EOS)  # EOS ends the sentence and pads the rest
    assert not np.any(next(r for r in rows if text.decode(r).startswith("A much")) == text.EOS)  # cut, no EOS
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------- token records v2 (and v1)


def test_token_v2_round_trip_latents_and_level_codes(tmp_path):
    from maskgen.data.tokens import write_token_metadata, write_token_split

    rng = np.random.default_rng(0)
    examples = [{"latents": rng.normal(size=(4, 4, 8)).astype(np.float32),
                 "codes": rng.integers(0, 512, (10, 4)).astype(np.int32), "label": i % 3} for i in range(7)]
    out = str(tmp_path)
    splits = {"train": write_token_split(out, "train", examples, num_shards=2),
              "test": write_token_split(out, "test", examples[:2])}
    fields = {"latents": LatentSpec((4, 4, 8), scale=0.5), "codes": TokenSpec((10, 4), 512, 4)}
    write_token_metadata(out, fields=fields, num_classes=3, splits=splits, tokenizer={"workdir": "/tok"})
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert meta["format"] == "maskgen.tokens.v2"
    assert meta["token_shape"] == [10, 4] and meta["codebook_size"] == 512 and meta["num_levels"] == 4
    info = source_info("tokens", out)
    assert info["fields"] == {**fields, "label": LabelSpec(3)}
    assert info["splits"] == {"train": 7, "test": 2} and info["tokenizer"] == {"workdir": "/tok"}
    source = pickle.loads(pickle.dumps(make_source("tokens", "train", out)))
    assert source.fields == info["fields"]
    for i, want in enumerate(examples):
        got = source[i]
        assert list(got) == ["latents", "codes", "label"]
        assert got["latents"].dtype == np.float32 and got["codes"].dtype == np.int32
        np.testing.assert_array_equal(got["latents"], want["latents"])
        np.testing.assert_array_equal(got["codes"], want["codes"])
        assert got["label"] == want["label"] and isinstance(got["label"], np.int32)
    # latents only, no labels: the source yields exactly the stored fields
    only = str(tmp_path / "only")
    os.makedirs(only)
    split = write_token_split(only, "train", [{"latents": ex["latents"]} for ex in examples])
    write_token_metadata(only, fields={"latents": LatentSpec((4, 4, 8))}, num_classes=0, splits={"train": split},
                         tokenizer={})
    assert list(make_source("tokens", "train", only)[0]) == ["latents"]
    assert "token_shape" not in source_info("tokens", only)
    with pytest.raises(ValueError, match=r"example 1 has fields \['latents'\], example 0 has"):
        write_token_split(only, "test", [examples[0], {"latents": examples[0]["latents"]}])


def test_token_v1_directories_still_read(tmp_path):
    """A directory exactly as maskgen wrote it before v2: v1 records and v1 metadata.json."""
    from maskgen.data.tokens import encode_tokens, write_records

    rng = np.random.default_rng(1)
    grids = [rng.integers(0, 64, (4, 4, 2)).astype(np.int32) for _ in range(5)]
    split = write_records(str(tmp_path), "train", [encode_tokens(g, i % 2) for i, g in enumerate(grids)])
    (tmp_path / "metadata.json").write_text(json.dumps({
        "format": "maskgen.tokens.v1", "token_shape": [4, 4, 2], "codebook_size": 64, "num_levels": 2,
        "num_classes": 2, "splits": {"train": split}, "tokenizer": {"workdir": "/old"}, "created": "2024"}))
    info = source_info("tokens", str(tmp_path))
    assert info["fields"] == {"tokens": TokenSpec((4, 4, 2), 64, 2), "label": LabelSpec(2)}
    assert info["token_shape"] == (4, 4, 2) and info["num_levels"] == 2 and info["num_classes"] == 2
    source = make_source("tokens", "train", str(tmp_path))
    for i, grid in enumerate(grids):
        np.testing.assert_array_equal(source[i]["tokens"], grid)
        assert source[i]["label"] == i % 2


def test_v1_writer_keywords_still_work(tmp_path):
    """tokenize.py's current call: (tokens, label) rows and token_shape/codebook_size/num_levels."""
    from maskgen.data.tokens import write_token_metadata, write_token_split

    rows = [(np.full((2, 2), i, np.int32), i) for i in range(3)]
    split = write_token_split(str(tmp_path), "test", rows)
    meta = write_token_metadata(str(tmp_path), token_shape=(2, 2), codebook_size=8, num_levels=1, num_classes=3,
                                splits={"test": split}, tokenizer={})
    assert meta["token_shape"] == [2, 2] and meta["fields"]["tokens"]["kind"] == "tokens"
    ex = make_source("tokens", "test", str(tmp_path))[2]
    assert ex["tokens"].tolist() == [[2, 2], [2, 2]] and ex["label"] == 2
