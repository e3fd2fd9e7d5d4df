"""Phoneme sequences from eSpeak NG's IPA output, with a fixed vocabulary: MaskGCT's text input.

MaskGCT (Wang et al., arXiv 2409.00750) conditions its text-to-semantic model on a phone sequence
from a G2P front end (Amphion uses phonemizer over eSpeak NG) given as a prefix. maskgen takes the
same front end directly: libespeak-ng through maskgen.audio.espeak (nothing is downloaded).

Symbols. eSpeak NG is asked for its IPA phonemes with a separator between phonemes, so the split
into symbols is eSpeak's own (a diphthong "aɪ", an affricate "tʃ", a long vowel "iː", an r-coloured
"aɪɚ" or a syllabic "əl" is one phoneme, as eSpeak's phoneme tables define it), not a guess from
the characters. Then:
  * stress marks (primary "ˈ", secondary "ˌ") become symbols of their own, placed before the
    phoneme they stress: the stressed and unstressed vowel share an id, and the mark says which;
  * the length mark "ː" stays part of its vowel ("iː" and "i" are different phonemes in eSpeak's
    English tables, and in British English length is contrastive);
  * word and clause boundaries become one symbol, WORD_BOUNDARY (" "); eSpeak drops punctuation
    (it only shapes clause prosody), so "hello, world!" and "hello world" read the same.

The vocabulary (PHONEME_SYMBOLS) is a fixed literal list, so ids never change with the eSpeak
version or the text seen: id 0 is PAD, then the word boundary, the two stress marks, and every
phoneme eSpeak NG 1.52's four English accents of the speech data (en-us, en, en-gb-scotland,
en-029) produce over ~3,000 English words, then each single IPA character of those phonemes as a
fallback: a phoneme eSpeak emits that is not listed is spelled with its characters (never silently
dropped); one with a character outside the list raises an error naming it.

Unreadable text. eSpeak's English voice reads nearly anything, often not as a speaker would: a
Chinese character becomes "Chinese letter", a Cyrillic word is spelled out letter by letter with
English letter names, an emoji becomes its Unicode name ("grinning face"), and control characters
silently split words ("a\\x07b" reads "a b"). maskgen therefore accepts only text in the Latin
script: letters whose Unicode name is LATIN (accents and ligatures included: "café", "naïve"),
combining marks, ASCII digits (eSpeak reads numbers as English words: "3" -> "three"), whitespace,
ASCII punctuation and symbols (read as words: "$" -> "dollar", "&" -> "and") and other punctuation
(quotes, dashes, ellipses: pauses). Anything else raises UnreadableTextError naming each offending
character with its code point and Unicode name; so does text with nothing to read (only
punctuation or spaces).
"""

from __future__ import annotations

import string
import unicodedata

import numpy as np

PAD = "<pad>"
WORD_BOUNDARY = " "
STRESS_MARKS = ("ˈ", "ˌ")  # primary, secondary
_ESPEAK_SEPARATOR = "_"  # between phonemes in eSpeak's output (no IPA symbol uses it)

# eSpeak NG 1.52's English phonemes, in IPA (en-us, en, en-gb-scotland, en-029 over ~3,000 words).
_PHONEMES = (
    # consonants
    "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "x", "tʃ", "dʒ",
    "m", "n", "ŋ", "n̩", "l", "əl", "ɹ", "r", "j", "w", "ʍ", "ɾ", "ʔ", "t̪",
    # monophthongs
    "i", "iː", "ɪ", "ᵻ", "e", "eː", "ɛ", "a", "aː", "a:", "aa", "æ", "ɐ", "ə", "ɚ", "ɜ", "ɜː",
    "ʌ", "ɑː", "ɒ", "ɔ", "ɔː", "o", "oː", "ʊ", "u", "uː", "ʉ", "ʉː",
    # diphthongs, triphthongs and r-coloured vowels
    "aɪ", "eɪ", "ɔɪ", "aʊ", "oʊ", "əʊ", "ʌʉ", "eʲ", "iə", "eə", "ʊə", "oə", "ɔə", "ɑə", "aɪə",
    "aɪɚ", "ɪɹ", "ɛɹ", "ʊɹ", "ʉɹ", "ʌɹ", "əɹ", "ɑːɹ", "ɔːɹ",
)
# Single characters of the phonemes above not already a phoneme: the spelling of unlisted phonemes.
_FALLBACK_CHARACTERS = tuple(sorted({c for p in _PHONEMES for c in p} - set(_PHONEMES)))
PHONEME_SYMBOLS = (PAD, WORD_BOUNDARY, *STRESS_MARKS, *_PHONEMES, *_FALLBACK_CHARACTERS)

_ASCII_READABLE = set(string.ascii_letters + string.digits + string.punctuation + " \t\n\r")


class UnreadableTextError(ValueError):
    """Text with characters the English phonemiser cannot read (named in the message)."""


def unreadable_characters(text: str) -> list[str]:
    """The distinct characters of `text` that maskgen refuses to phonemise, in order of appearance
    (the rule is in the module docstring: Latin script, ASCII digits/punctuation, whitespace)."""
    out: list[str] = []
    for char in text:
        if char in _ASCII_READABLE or char in out:
            continue
        category = unicodedata.category(char)
        name = unicodedata.name(char, "")
        latin_letter = category.startswith("L") and name.startswith("LATIN")
        if latin_letter or category == "Mn" or category.startswith("P") or category == "Zs":
            continue
        out.append(char)
    return out


def _describe(char: str) -> str:
    return f"{char!r} (U+{ord(char):04X} {unicodedata.name(char, 'unnamed')})"


def check_readable(text: str) -> None:
    """Raises UnreadableTextError naming every character of `text` the phonemiser cannot read."""
    if not isinstance(text, str):
        raise TypeError(f"text to phonemise must be a string, got {type(text).__name__}")
    bad = unreadable_characters(text)
    if bad:
        raise UnreadableTextError(
            f"text {text!r} has characters the English phonemiser (eSpeak NG) cannot read: "
            f"{', '.join(_describe(c) for c in bad)}; maskgen reads Latin-script text, ASCII digits, "
            "punctuation and whitespace (write numbers and symbols as words or digits, transliterate "
            "other scripts)")


def _espeak_phonemes(text: str, voice: str) -> list[str]:
    """eSpeak NG's IPA for `text` in `voice`: clauses joined by spaces, words separated by spaces
    and phonemes within a word by _ESPEAK_SEPARATOR (written by eSpeak itself)."""
    from maskgen.audio import espeak

    return [espeak.text_to_phonemes(text, voice=voice, separator=_ESPEAK_SEPARATOR)]


class PhonemeVocabulary:
    """The fixed phoneme inventory: `symbols[i]` has id i; id 0 (`pad_id`) is padding, `size`
    counts every id (pad included), so an embedding table has `size` rows."""

    def __init__(self, symbols: tuple[str, ...] = PHONEME_SYMBOLS):
        if len(set(symbols)) != len(symbols) or symbols[0] != PAD:
            raise ValueError("a phoneme vocabulary needs distinct symbols with the pad symbol first")
        self.symbols = tuple(symbols)
        self.ids = {s: i for i, s in enumerate(self.symbols)}
        self.pad_id = 0
        self.word_boundary_id = self.ids[WORD_BOUNDARY]
        self.size = len(self.symbols)

    def __len__(self) -> int:
        return self.size

    def split_phoneme(self, phoneme: str) -> list[str]:
        """A phoneme eSpeak gave as the symbols of this vocabulary: itself, or (unlisted) its characters."""
        if phoneme in self.ids:
            return [phoneme]
        unknown = [c for c in phoneme if c not in self.ids]
        if unknown:
            raise ValueError(f"eSpeak NG gave the phoneme {phoneme!r}, whose characters "
                             f"{', '.join(_describe(c) for c in unknown)} are not in maskgen's phoneme vocabulary "
                             "(maskgen.audio.phonemes.PHONEME_SYMBOLS); add them there")
        return list(phoneme)

    def encode(self, symbols: list[str]) -> np.ndarray:
        """Symbols (as `phonemize` gives them) -> int32 ids [L]."""
        missing = sorted({s for s in symbols if s not in self.ids})
        if missing:
            raise ValueError(f"symbols {missing} are not in the phoneme vocabulary")
        return np.asarray([self.ids[s] for s in symbols], np.int32)

    def decode(self, ids) -> list[str]:
        """int ids -> symbols, padding dropped."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"phoneme ids must be in [0, {self.size}), got [{ids.min()}, {ids.max()}]")
        return [self.symbols[i] for i in ids.tolist() if i != self.pad_id]


VOCABULARY = PhonemeVocabulary()


def phonemize(text: str, voice: str = "en-us") -> list[str]:
    """eSpeak NG's phonemes for `text` in `voice` ("en-us", "en", ...; the language only: variants
    do not change phonemes) as vocabulary symbols: stress marks before their phoneme, WORD_BOUNDARY
    between words and clauses. E.g. "seven eight" -> ["s", "ˈ", "ɛ", "v", "ə", "n", " ", "ˈ", "eɪ", "t"].
    Raises UnreadableTextError for characters it cannot read, or when there is nothing to read."""
    check_readable(text)
    words = [w for clause in _espeak_phonemes(text, voice) for w in clause.split(" ") if w]
    if not words:
        raise UnreadableTextError(f"text {text!r} has nothing to read: eSpeak NG gives no phonemes for it "
                                  "(only punctuation or spaces?)")
    symbols: list[str] = []
    for word in words:
        if symbols:
            symbols.append(WORD_BOUNDARY)
        for phoneme in word.split(_ESPEAK_SEPARATOR):
            while phoneme[:1] in STRESS_MARKS:
                symbols.append(phoneme[0])
                phoneme = phoneme[1:]
            if phoneme:
                symbols.extend(VOCABULARY.split_phoneme(phoneme))
    return symbols


def encode_phonemes(text: str, voice: str = "en-us") -> np.ndarray:
    """int32 phoneme ids [L] of `text` (VOCABULARY; no padding, never empty)."""
    return VOCABULARY.encode(phonemize(text, voice))


def pad_phonemes(ids_list: list[np.ndarray], length: int) -> np.ndarray:
    """Sequences of ids -> int32 [N, length], right-padded with VOCABULARY.pad_id; a sequence longer
    than `length` is an error naming both (a T2S model's phone prefix has a fixed length)."""
    out = np.full((len(ids_list), length), VOCABULARY.pad_id, np.int32)
    for row, ids in enumerate(ids_list):
        ids = np.asarray(ids, np.int32).reshape(-1)
        if ids.size > length:
            raise ValueError(f"phoneme sequence {row} has {ids.size} symbols, more than the {length} allowed")
        out[row, :ids.size] = ids
    return out
