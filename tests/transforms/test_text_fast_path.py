"""The byte-level tokenize_and_pad gives exactly what the Arrow-kernel implementation gives, for any text.

The oracle is Tokenizer._tokenize_and_pad_arrow (tokenize_and_pad as it was before the C scan, and the path taken when
the extension is not built). Arrow's utf8_split_whitespace reads the byte just past a whitespace run that ends the last
string of an array, so both paths guard the last row (see test_arrow_split_reads_past_the_data).
"""

import unicodedata
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transforms.text as text_module
from transforms.code_points import DELETE, SPACE, UNKNOWN, WORD, code_point_table
from transforms.text import Tokenizer, TokenizerSpec, standardize_and_split

# The optional C extension: where it was not built (no compiler, which the README supports) the tokenizer takes the
# Arrow path, the oracle below, so there is nothing to compare and the module is skipped instead of failing to import.
_tokens = pytest.importorskip("transforms._tokens", reason="the tokenizer's C extension is not built")

EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER_EXAMPLES = settings(EXAMPLES, max_examples=150)

ASCII_WHITESPACE = "\t\n\v\f\r\x1c\x1d\x1e\x1f "
ASCII_PUNCTUATION = "".join(chr(c) for c in range(128) if unicodedata.category(chr(c))[0] in "PS")
ASCII_CONTROL = "".join(
    chr(c) for c in range(128) if unicodedata.category(chr(c)) == "Cc" and chr(c) not in ASCII_WHITESPACE
)
UNICODE_WHITESPACE = "\u0085\u00a0\u1680\u2000\u2001\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
UNICODE_OTHER = (
    "éÉàçñüÜßẞøÅæ"  # accents, sharp s
    "İıΣσςΑΚ\u212a\u2126ǅǄ"  # İ and the Kelvin sign lowercase to ASCII letters in Arrow; title case; final sigma
    "\u0301\u0308\u200b\u200d\ufeff\u00ad"  # combining marks, zero-width and format characters, soft hyphen
    "«»‘’“”…—–¡¿·•€£©®™±°²½"  # Unicode punctuation and symbols
    "日本語東京太差了한국어Ωж"  # CJK, Hangul, Greek, Cyrillic
    "😀👍😺🇫🇷👨\u200d👩"  # emoji, flags, a ZWJ sequence
)
WORDS = ["good", "bad", "GOOD", "Good!", "don't", "café", "CAFÉ", "日本", "x", "a-b", "#1", "e.g.", "3.5"]

ascii_text = st.text(st.characters(max_codepoint=127), max_size=200)
# Words, and runs of punctuation, whitespace or control characters.
ascii_pieces = st.one_of(
    st.sampled_from(WORDS[:6] + WORDS[8:]),
    st.text(st.sampled_from(ASCII_PUNCTUATION), min_size=1, max_size=5),
    st.text(st.sampled_from(ASCII_WHITESPACE), min_size=1, max_size=5),
    st.text(st.sampled_from(ASCII_CONTROL + "AZaz09~\x7f"), min_size=1, max_size=3),
)
wordy_ascii_text = st.lists(ascii_pieces, max_size=150).map("".join)
mixed_alphabet = st.one_of(
    st.characters(max_codepoint=127),
    st.sampled_from(UNICODE_WHITESPACE + UNICODE_OTHER),
    st.characters(exclude_categories=["Cs"]),
)
mixed_pieces = st.one_of(
    ascii_pieces, st.sampled_from(WORDS), st.text(mixed_alphabet, min_size=1, max_size=8), st.just(" ")
)
# Short texts of special characters only: next to each other, their non-ASCII bytes run on from one text into the next.
special_text = st.text(st.sampled_from(UNICODE_WHITESPACE + UNICODE_OTHER + "aA "), min_size=1, max_size=4)
mixed_text = st.one_of(
    st.text(mixed_alphabet, max_size=200), st.lists(mixed_pieces, max_size=120).map("".join), special_text
)


def many_words(word, separator):
    """Texts of up to hundreds of words (a short run of words repeated), so that truncation to 50 is tested."""
    run = st.lists(st.tuples(word, separator), min_size=1, max_size=8).map(lambda p: "".join(w + s for w, s in p))
    return st.tuples(run, st.integers(5, 40)).map(lambda r: r[0] * r[1])


long_ascii_text = many_words(ascii_pieces, st.text(st.sampled_from(ASCII_WHITESPACE + "!-"), min_size=1, max_size=3))
long_mixed_text = many_words(
    mixed_pieces, st.text(st.sampled_from(ASCII_WHITESPACE + UNICODE_WHITESPACE + "!«"), min_size=1, max_size=3)
)


def vocabulary_for(texts: list[str], keep_every: int = 2) -> list[str]:
    """Every other standardized word of the texts (so some words are found and some are not), and a few fixed ones."""
    words = sorted({w for row in standardize_and_split(pa.array(texts, pa.string())).to_pylist() for w in row})
    fixed = ["good", "dont", "café", "日本"]
    return fixed + [w for w in words[::keep_every] if w not in fixed]


def reference(tokenizer: Tokenizer, texts: list[str]):
    """(ids, words kept, words out of vocabulary) as _tokenize_and_pad_arrow gives them."""
    return tokenizer._tokenize_and_pad_arrow(pa.array(texts, pa.string()), return_stats=True)


def assert_same(tokenizer: Tokenizer, texts: list[str], column=None):
    """New and reference agree on ids and stats, for the texts given as `column` (default: a plain string array)."""
    column = pa.array(texts, pa.string()) if column is None else column
    expected_ids, expected_words, expected_oov = reference(tokenizer, texts)
    ids, words, oov = tokenizer.tokenize_and_pad(column, return_stats=True)
    assert ids.dtype == np.int32 and ids.shape == expected_ids.shape
    np.testing.assert_array_equal(ids, expected_ids)
    assert (words, oov) == (expected_words, expected_oov)
    np.testing.assert_array_equal(tokenizer.tokenize_and_pad(column), expected_ids)


@EXAMPLES
@given(st.lists(st.one_of(ascii_text, wordy_ascii_text, long_ascii_text), max_size=12))
@pytest.mark.slow
def test_ascii_texts_match_the_reference(texts):
    assert_same(Tokenizer(vocabulary_for(texts)), texts)


@EXAMPLES
@given(st.lists(st.one_of(mixed_text, ascii_text, wordy_ascii_text, long_mixed_text), max_size=12))
@pytest.mark.slow
def test_mixed_ascii_and_unicode_texts_match_the_reference(texts):
    assert_same(Tokenizer(vocabulary_for(texts)), texts)


@FEWER_EXAMPLES
@given(
    st.lists(st.one_of(mixed_text, wordy_ascii_text, st.just(""), st.just("  ")), min_size=1, max_size=12),
    st.data(),
)
@pytest.mark.slow
def test_sliced_chunked_and_large_string_columns_match_the_reference(texts, data):
    tokenizer = Tokenizer(vocabulary_for(texts))
    # Unrelated texts around the slice: the byte-level path must read only the slice's bytes.
    before = data.draw(st.lists(mixed_text, max_size=3))
    after = data.draw(st.lists(mixed_text, max_size=3))
    string_type = data.draw(st.sampled_from([pa.string(), pa.large_string()]))
    column = pa.array([*before, *texts, *after], string_type).slice(len(before), len(texts))
    assert_same(tokenizer, texts, column)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(texts)), max_size=3)))
    pieces = [texts[i:j] for i, j in zip([0, *cuts], [*cuts, len(texts)])]
    assert_same(tokenizer, texts, pa.chunked_array([pa.array(p, string_type) for p in pieces], string_type))


@FEWER_EXAMPLES
@given(st.lists(st.one_of(mixed_text, wordy_ascii_text), max_size=10), st.integers(1, 300))
@pytest.mark.slow
def test_texts_cut_into_small_pieces_match_the_reference(texts, chunk_bytes):
    # The byte-level path works on pieces of about _CHUNK_BYTES bytes; small pieces put a boundary between most texts.
    tokenizer = Tokenizer(vocabulary_for(texts))
    with mock.patch.object(text_module, "_CHUNK_BYTES", chunk_bytes):
        assert_same(tokenizer, texts)


@FEWER_EXAMPLES
@given(
    st.lists(st.one_of(mixed_text, wordy_ascii_text), max_size=8),
    st.integers(0, 60),
    st.sampled_from([(0, 1), (0, 7), (5, 1)]),
)
@pytest.mark.slow
def test_other_sequence_lengths_and_ids_match_the_reference(texts, length, pad_and_oov):
    pad_id, oov_id = pad_and_oov
    spec = TokenizerSpec(sequence_length=length, pad_id=pad_id, oov_id=oov_id)
    assert_same(Tokenizer(vocabulary_for(texts, keep_every=3), spec), texts)


def test_every_ascii_character_and_pair_matches_the_reference():
    chars = [chr(c) for c in range(128)]
    texts = [f"a{c}b" for c in chars] + [c for c in chars] + [f"Ab{c}{d}Cd {d}e" for c in chars for d in chars]
    tokenizer = Tokenizer(vocabulary_for(texts, keep_every=1))
    assert_same(tokenizer, texts)
    ids = tokenizer.tokenize_and_pad(pa.array([f"a{c}b" for c in chars]))
    # Arrow's Unicode whitespace in ASCII: \t \n \v \f \r, \x1c-\x1f (not whitespace to ascii_split_whitespace) and " ".
    split = [chars[i] for i in range(128) if ids[i, 1] != 0]
    assert "".join(split) == "\t\n\v\f\r\x1c\x1d\x1e\x1f "
    # The characters that are removed are exactly the ASCII ones in Unicode categories P* and S*.
    ab = tokenizer.tokenize_and_pad(pa.array(["ab"]))[0, 0]
    assert "".join(chars[i] for i in range(128) if ids[i, 0] == ab and ids[i, 1] == 0) == ASCII_PUNCTUATION


@pytest.mark.parametrize(
    "texts",
    [
        [],
        [""],
        ["", "", ""],
        [" ", "\t\n", "!!!", "😀", "\u00a0", "\u3000 \u2028"],
        ["good " * 200_000],  # one megabyte, in one piece bigger than _CHUNK_BYTES
        ["İstanbul KELVIN \u212a ΣΑΣ", "naïve café CAFÉ", "東京\u3000日本", "a\u00a0b", "a\u200bb", "e\u0301"],
        ["good 👍", "bad 😺 "],  # non-ASCII last token, trailing whitespace
        ["é", "\x80", "᠀", "日本 ", "é"],  # non-ASCII bytes running on from one text into the next
        ["x" * 300, "y " * 300, "z\x00z \x7f \x1c\x1f"],
    ],
)
def test_edge_cases_match_the_reference(texts):
    assert_same(Tokenizer(["good", "bad", "café", "日本", "x" * 300, "y", "istanbul", "k", "z\x00z", "\x7f"]), texts)


def test_a_repeated_vocabulary_word_gets_its_first_index_as_in_arrow():
    texts = ["b a c", "a"]
    tokenizer = Tokenizer(["b", "a", "a", "b", "c"])
    assert_same(tokenizer, texts)
    assert tokenizer.tokenize_and_pad(pa.array(texts))[0, :3].tolist() == [2, 3, 6]


def _scan_arguments(text: bytes, words: list[str]):
    slots, vocabulary, word_offsets = text_module._vocabulary_table(words)
    room = len(text)
    return [
        text_module._BYTE_CLASS,
        np.frombuffer(text, np.uint8),
        np.array([0, len(text)], np.int64),
        slots,
        vocabulary,
        word_offsets,
        np.empty(room, np.int32),
        np.empty(room, np.int64),
        np.empty(2, np.int64),
        np.empty(room, np.int64),
    ]


def test_native_scan_finds_tokens_words_and_unicode():
    args = _scan_arguments("Good, bad!! ... café Good".encode(), ["good", "bad"])
    tokens, unicode = _tokens.scan(*args)
    index, starts, before, positions = args[6], args[7], args[8], args[9]
    assert (tokens, unicode) == (4, 1)  # "..." has no word
    assert index[:4].tolist() == [0, 1, -1, 0] and starts[:4].tolist() == [0, 6, 16, 22]
    assert before.tolist() == [0, 4] and positions[:1].tolist() == [2]


@pytest.mark.parametrize(
    "position, replacement, message",
    [
        (0, np.zeros(255, np.uint8), "wrong size"),  # byte classes: 256 of them
        (2, np.array([0, 99], np.int64), "out of range"),  # offsets past the data
        (2, np.array([5, 0], np.int64), "out of range"),  # decreasing offsets
        (3, np.zeros(24, np.int32), "wrong size"),  # hash slots: a power of two
        (6, np.empty(3, np.int32), "room"),  # fewer output cells than bytes
        (8, np.empty(1, np.int64), "wrong size"),  # one count per offset
        (2, np.array([0, 2, 4], np.int32), "whole number"),  # offsets are int64: 12 bytes are not
    ],
)
def test_native_scan_refuses_bad_buffers(position, replacement, message):
    args = _scan_arguments(b"good bad", ["good"])
    assert _tokens.scan(*args) == (2, 0)  # the unchanged arguments are fine
    args[position] = replacement
    with pytest.raises(ValueError, match=message):
        _tokens.scan(*args)


def test_native_scan_refuses_read_only_outputs():
    args = _scan_arguments(b"good", ["good"])
    args[6] = bytes(16)
    with pytest.raises(BufferError):
        _tokens.scan(*args)


def test_vocabulary_table_refuses_too_few_slots():
    with pytest.raises(ValueError, match="power of two"):
        _tokens.build_table(b"ab", np.array([0, 1, 2], np.int64), np.zeros(2, np.int32))


def test_null_texts_are_refused_as_before():
    tokenizer = Tokenizer(["good"])
    for column in [pa.array(["good", None]), pa.chunked_array([["good"], [None, None]])]:
        with pytest.raises(ValueError, match="null text value"):
            tokenizer.tokenize_and_pad(column)
        with pytest.raises(ValueError, match="null text value"):
            tokenizer._tokenize_and_pad_arrow(column)
    # A null outside the slice is no null of the slice.
    column = pa.array(["good", None]).slice(0, 1)
    np.testing.assert_array_equal(tokenizer.tokenize_and_pad(column), tokenizer._tokenize_and_pad_arrow(column))


def test_arrow_split_reads_past_the_data():
    # "good " is the whole array; the byte after it, outside the string, is not valid UTF-8.
    offsets = pa.py_buffer(np.array([0, 5], dtype=np.int32))
    column = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(b"good \x80")])
    assert column.to_pylist() == ["good "]
    assert pc.utf8_split_whitespace(column).to_pylist() == [["good "]]  # the space stays in the word
    # Neither path reads past the data: the byte-level one, what it hands to Arrow, nor the all-Arrow one.
    tokenizer = Tokenizer(["good"])
    for tokenize in (tokenizer.tokenize_and_pad, tokenizer._tokenize_and_pad_arrow):
        ids, words, oov = tokenize(column, return_stats=True)
        assert ids[0, :2].tolist() == [2, 0] and (words, oov) == (1, 0)
    text = "good 👍 ".encode()
    offsets = pa.py_buffer(np.array([0, len(text)], dtype=np.int32))
    column = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(text + b"\x80")])
    assert column.to_pylist() == ["good 👍 "]
    for tokenize in (tokenizer.tokenize_and_pad, tokenizer._tokenize_and_pad_arrow):
        ids, words, oov = tokenize(column, return_stats=True)
        assert ids[0, :2].tolist() == [2, 0] and (words, oov) == (1, 0)


@pytest.mark.parametrize("raw", [b"good \x80bad", b"good \xc3", b"\xff", b"good caf\xc3\xa9 x\x80 y"])
def test_invalid_utf8_is_refused_as_before(raw):
    offsets = pa.py_buffer(np.array([0, len(raw)], dtype=np.int32))
    column = pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(raw)])
    tokenizer = Tokenizer(["good"])
    for tokenize in (tokenizer._tokenize_and_pad_arrow, tokenizer.tokenize_and_pad):
        with pytest.raises(pa.ArrowInvalid, match="Invalid UTF8"):
            tokenize(column)


def _scan_ids_arguments(text: bytes, words: list[str], length: int = 4):
    slots, vocabulary, word_offsets = text_module._vocabulary_table(words)
    lower, classes = code_point_table(text_module._PUNCTUATION)
    return [
        text_module._BYTE_CLASS,
        lower,
        classes,
        np.frombuffer(text, np.uint8),
        np.array([0, len(text)], np.int64),
        slots,
        vocabulary,
        word_offsets,
        np.zeros((1, length), np.int32),
        1,
        2,
        np.empty(1, np.int64),
    ]


def test_one_pass_scan_writes_ids_and_lists_what_it_leaves_to_arrow():
    args = _scan_ids_arguments("Good, CAFÉ!! … zz Bad«».".encode(), ["good", "café", "bad"])
    assert _tokens.scan_ids(*args) == (4, 1, 0)  # "…" has no word; "zz" is out of vocabulary
    assert args[8].tolist() == [[2, 3, 1, 4]]
    # A character beyond the table (U+20000, a CJK extension ideograph) or invalid UTF-8, even past the kept words:
    # the row is listed (its ids are the caller's to write) and its words are not counted.
    for text in ["good \U00020000".encode(), b"good good good good good \xc3"]:
        args = _scan_ids_arguments(text, ["good"])
        assert _tokens.scan_ids(*args) == (0, 0, 1)
        assert args[11].tolist() == [0]


@pytest.mark.parametrize(
    "position, replacement, message",
    [
        (0, np.zeros(255, np.uint8), "wrong size"),  # byte classes: 256 of them
        (1, np.zeros(3, np.int32), "wrong size"),  # one lowercase per code point
        (2, np.full(0x20000, 7, np.uint8), "out of range"),  # classes 0-3 only
        (4, np.array([0, 99], np.int64), "out of range"),  # offsets past the data
        (5, np.zeros(24, np.int32), "wrong size"),  # hash slots: a power of two
        (8, np.zeros(3, np.int16), "whole number"),  # ids are int32
        (11, np.empty(0, np.int64), "room for every text"),
    ],
)
def test_one_pass_scan_refuses_bad_buffers(position, replacement, message):
    args = _scan_ids_arguments(b"good bad", ["good"])
    assert _tokens.scan_ids(*args) == (2, 1, 0)
    args[position] = replacement
    with pytest.raises(ValueError, match=message):
        _tokens.scan_ids(*args)


def test_texts_beyond_the_code_point_table_match_the_reference():
    texts = ["good \U00020000 café", "CAFÉ \U0010fffd good", "good café", "\U0002a6d6good"]
    assert_same(Tokenizer(["good", "café", "\U00020000"]), texts)


def test_the_code_point_table_is_arrows():
    lower, classes = code_point_table(text_module._PUNCTUATION)
    assert chr(lower[ord("É")]) == "é" and chr(lower[0x130]) == "i" and chr(lower[0x212A]) == "k"  # İ, Kelvin
    assert classes[ord("é")] == WORD and classes[0x1F600] == DELETE and classes[ord("«")] == DELETE
    assert classes[0x3000] == SPACE and classes[0xA0] == SPACE and classes[0xD800] == UNKNOWN
