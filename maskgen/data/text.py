"""Byte-level text tokenizer and the local text sources ("pydoc_text", "text_files").

Ids 0..255 are the UTF-8 bytes of the text and id 256 is end-of-text (EOS): it separates
documents, and pads fixed-length examples (the padded lm1b setting of MDLM, arXiv:2406.07524).
A byte vocabulary needs no trained tokenizer and no download, and any id sequence decodes.

Both sources concatenate a split's documents, each followed by EOS, and cut the stream into
non-overlapping windows of `seq_len` ids (the tail shorter than a window is dropped); an example
is {"tokens": int32 [seq_len]}.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from maskgen.data.specs import TextSpec

EOS = 256
VOCAB_SIZE = 257
TOKENIZER = "bytes"
SPLITS = ("train", "validation")
VALIDATION_SHARE = 0.1  # of the bytes, for the document-level splits below


def encode(text: str) -> np.ndarray:
    """UTF-8 bytes of `text` as int32 ids [n] (no EOS added)."""
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)


def decode(ids) -> str:
    """Text of `ids` up to the first EOS. Bytes that are not valid UTF-8 (a model's samples can be
    anything) become U+FFFD, and ids outside 0..256 raise."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() > EOS):
        raise ValueError(f"byte ids must be in [0, {EOS}], got [{ids.min()}, {ids.max()}]")
    end = np.flatnonzero(ids == EOS)
    ids = ids[:end[0]] if end.size else ids
    return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def text_spec(seq_len: int) -> TextSpec:
    return TextSpec(seq_len, VOCAB_SIZE, TOKENIZER, EOS)


def check_seq_len(seq_len) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 2:
        raise ValueError(f"option seq_len={seq_len!r}: must be an int >= 2 (ids per example)")
    return int(seq_len)


def fixed_length(text: bytes | str, seq_len: int) -> np.ndarray:
    """One document as int32 [seq_len]: its bytes, then EOS, cut or padded with EOS to seq_len."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    out = np.full(seq_len, EOS, np.int32)
    head = np.frombuffer(data[:seq_len], np.uint8)
    out[:len(head)] = head
    return out


def validation_documents(sizes: list[int]) -> list[bool]:
    """Which documents (in the given order) go to validation: a document does when that keeps
    validation's share of the bytes seen so far at or under VALIDATION_SHARE. Deterministic,
    close to 10% of the bytes, and spread over the whole order (not a block at one end). With two
    or more documents and none chosen (e.g. two of equal size), the last one is validation, so
    that both splits have text."""
    chosen, seen, held = [], 0, 0
    for size in sizes:
        seen += size
        take = held + size <= VALIDATION_SHARE * seen
        held += size if take else 0
        chosen.append(take)
    if len(chosen) > 1 and not any(chosen):
        chosen[-1] = True
    return chosen


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown text split {split!r}; valid splits are {list(SPLITS)}")


def concat_documents(documents: list[bytes]) -> np.ndarray:
    """Each document's bytes followed by EOS, as one int32 stream."""
    parts = []
    for doc in documents:
        parts.append(np.frombuffer(doc, np.uint8).astype(np.int32))
        parts.append(np.array([EOS], np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, np.int32)


class WindowSource:
    """Non-overlapping windows [seq_len] of a token stream, for grain. Subclasses say how to load
    the stream (`_load`), cached per process, so a pickle carries only names and paths."""

    def __init__(self, split: str, seq_len: int):
        _check_split(split)
        self.split, self.seq_len = split, check_seq_len(seq_len)
        self.fields = {"tokens": text_spec(self.seq_len)}
        stream_len = len(self._stream())
        if stream_len < self.seq_len:
            raise ValueError(f"{self._describe()} split {split!r} has {stream_len} byte ids (EOS included), "
                             f"fewer than one window of seq_len={self.seq_len}; use a smaller seq_len or more text")

    def _stream(self) -> np.ndarray:
        raise NotImplementedError

    def _describe(self) -> str:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._stream()) // self.seq_len

    def __getitem__(self, index) -> dict:
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self._describe()} {self.split!r} ({n} windows)")
        i %= n
        return {"tokens": self._stream()[i * self.seq_len:(i + 1) * self.seq_len].copy()}


# ---------------------------------------------------------------- pydoc_text: CPython's help topics


@functools.lru_cache(maxsize=1)
def pydoc_topics() -> dict[str, bytes]:
    """CPython's documentation topics (`help('topics')`): {name: UTF-8 text}, sorted by name."""
    from pydoc_data.topics import topics

    return {name: topics[name].encode("utf-8") for name in sorted(topics)}


@functools.lru_cache(maxsize=len(SPLITS))
def pydoc_stream(split: str) -> np.ndarray:
    """The split's topics (sorted by name, chosen by validation_documents), EOS after each."""
    _check_split(split)
    topics = pydoc_topics()
    held = validation_documents([len(t) for t in topics.values()])
    stream = concat_documents([t for t, v in zip(topics.values(), held) if v == (split == "validation")])
    stream.setflags(write=False)
    return stream


def pydoc_split_topics(split: str) -> list[str]:
    _check_split(split)
    topics = pydoc_topics()
    held = validation_documents([len(t) for t in topics.values()])
    return [name for name, v in zip(topics, held) if v == (split == "validation")]


class PydocTextSource(WindowSource):
    """Windows of CPython's documentation topics (real English and code, ~465k bytes, shipped with
    Python: nothing is downloaded)."""

    def _stream(self) -> np.ndarray:
        return pydoc_stream(self.split)

    def _describe(self) -> str:
        return "pydoc_text"

    def __repr__(self) -> str:
        return f"PydocTextSource(split={self.split!r}, seq_len={self.seq_len}, num_examples={len(self)})"


# ---------------------------------------------------------------- text_files: a user's .txt files


def read_utf8(path: str) -> bytes:
    """The file's bytes; raises ValueError naming the file and the offset of its first bad byte."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not valid UTF-8: byte offset {err.start} (0x{data[err.start]:02x}) "
                         f"{err.reason}; convert the file to UTF-8 (e.g. iconv -t UTF-8)") from err
    return data


def text_file_list(data_dir: str | None) -> list[str]:
    """The .txt files a text_files data_dir names: itself (a file) or every .txt below it, sorted
    by relative path (hidden files and folders skipped)."""
    if not data_dir:
        raise ValueError("data source 'text_files' needs data_dir: a UTF-8 .txt file or a folder of them")
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if os.path.isfile(data_dir):
        return [data_dir]
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"text_files data_dir {data_dir!r} does not exist")
    found = []
    for root, dirs, files in os.walk(data_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files if f.lower().endswith(".txt") and not f.startswith(".")]
    if not found:
        raise FileNotFoundError(f"no .txt files under {data_dir!r}")
    return sorted(found, key=lambda p: os.path.relpath(p, data_dir))


@functools.lru_cache(maxsize=8)
def text_files_stream(data_dir: str, split: str) -> np.ndarray:
    """A folder: whole files per split (validation_documents over the sorted files). One file:
    its last ~10% of bytes (moved forward to a UTF-8 character start) are validation."""
    _check_split(split)
    paths = text_file_list(data_dir)
    texts = [read_utf8(p) for p in paths]
    if len(texts) == 1:
        data = texts[0]
        cut = len(data) - int(len(data) * VALIDATION_SHARE)
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # a continuation byte: not a character start
            cut += 1
        docs = [data[:cut]] if split == "train" else [data[cut:]]
    else:
        held = validation_documents([len(t) for t in texts])
        docs = [t for t, v in zip(texts, held) if v == (split == "validation")]
    stream = concat_documents(docs)
    stream.setflags(write=False)
    return stream


class TextFilesSource(WindowSource):
    """Windows of a local UTF-8 .txt file or folder of .txt files."""

    def __init__(self, data_dir: str, split: str, seq_len: int):
        self.data_dir = os.path.expanduser(os.fspath(data_dir)) if data_dir else data_dir
        text_file_list(self.data_dir)  # a missing or empty data_dir fails before the window check
        super().__init__(split, seq_len)

    def _stream(self) -> np.ndarray:
        return text_files_stream(self.data_dir, self.split)

    def _describe(self) -> str:
        return f"text_files {self.data_dir!r}"

    def __repr__(self) -> str:
        return (f"TextFilesSource(data_dir={self.data_dir!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"num_examples={len(self)})")
