"""Phonemes from eSpeak NG (maskgen.audio.phonemes): symbols, the fixed vocabulary, unreadable text."""

import numpy as np
import pytest

from maskgen.audio import espeak

pytestmark = pytest.mark.skipif(not espeak.available(), reason="libespeak-ng is not installed")


def test_symbols_follow_espeaks_phonemes_with_stress_marks_split_off():
    from maskgen.audio.phonemes import phonemize

    # eSpeak NG: "sˈɛvən ˈeɪt" (en-us); the diphthong is one symbol, the stress mark its own.
    assert phonemize("seven eight") == ["s", "ˈ", "ɛ", "v", "ə", "n", " ", "ˈ", "eɪ", "t"]
    # Affricates and long vowels are one symbol each.
    assert phonemize("church judge") == ["tʃ", "ˈ", "ɜː", "tʃ", " ", "dʒ", "ˈ", "ʌ", "dʒ"]
    # Punctuation only shapes prosody: clause breaks read as word boundaries.
    assert phonemize("hello, world!") == phonemize("hello world")


def test_every_word_of_the_speech_data_encodes_in_every_accent():
    from maskgen.audio.phonemes import VOCABULARY, encode_phonemes, phonemize
    from maskgen.data.speech import ACCENTS, WORD_SETS

    for accent in ACCENTS:
        for word in WORD_SETS["all"]:
            ids = encode_phonemes(word, accent)
            assert ids.dtype == np.int32 and ids.size >= 2
            assert VOCABULARY.pad_id not in ids and VOCABULARY.word_boundary_id not in ids  # one word
            assert VOCABULARY.decode(ids) == phonemize(word, accent)
    # The accents differ where they should: American vs British "zero".
    assert phonemize("zero", "en-us")[-1] == "oʊ" and phonemize("zero", "en")[-1] == "əʊ"


def test_vocabulary_is_fixed_and_pads_with_zero():
    from maskgen.audio.phonemes import PAD, VOCABULARY, WORD_BOUNDARY, pad_phonemes

    assert VOCABULARY.symbols[:4] == (PAD, WORD_BOUNDARY, "ˈ", "ˌ") and VOCABULARY.pad_id == 0
    assert len(set(VOCABULARY.symbols)) == VOCABULARY.size == len(VOCABULARY)
    padded = pad_phonemes([np.array([5, 6]), np.array([7])], 3)
    np.testing.assert_array_equal(padded, [[5, 6, 0], [7, 0, 0]])
    with pytest.raises(ValueError, match="3 symbols, more than the 2"):
        pad_phonemes([np.array([1, 2, 3])], 2)
    # An unlisted phoneme is spelled with its characters; an unknown character is named.
    assert VOCABULARY.split_phoneme("ɪə") == ["ɪ", "ə"]
    with pytest.raises(ValueError, match=r"U\+0278 LATIN SMALL LETTER PHI"):
        VOCABULARY.split_phoneme("ɸ")


@pytest.mark.parametrize("text, named", [
    ("你好 world", ["'你' (U+4F60 CJK UNIFIED IDEOGRAPH-4F60)", "'好' (U+597D"]),  # eSpeak: "Chinese letter"
    ("hi 😀", ["U+1F600 GRINNING FACE"]),  # eSpeak reads the emoji's name
    ("Привет", ["U+041F CYRILLIC CAPITAL LETTER PE"]),  # eSpeak spells English letter names
    ("a\x07b", ["U+0007"]),  # eSpeak silently splits the word there
])
def test_unreadable_characters_are_named(text, named):
    from maskgen.audio.phonemes import UnreadableTextError, encode_phonemes

    with pytest.raises(UnreadableTextError) as err:
        encode_phonemes(text)
    assert isinstance(err.value, ValueError)
    for part in named:
        assert part in str(err.value)


def test_what_is_readable_and_text_with_nothing_to_read():
    from maskgen.audio.phonemes import UnreadableTextError, phonemize, unreadable_characters

    assert unreadable_characters("Café naïve, 3 $ & “quotes” — fine…") == []
    assert phonemize("3") == phonemize("three")  # eSpeak reads digits as words
    with pytest.raises(UnreadableTextError, match="nothing to read"):
        phonemize("...")
