"""The tokenizer: standardization, vocabulary lookup, truncation and padding, over Arrow arrays."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import transforms.text as text_module
from transforms.text import OOV_ID, PAD_ID, Tokenizer, TokenizerSpec, build_vocabulary, standardize_and_split

VOCAB = ["good", "bad", "not", "café", "日本", "dont"]
IDS = {word: i + 2 for i, word in enumerate(VOCAB)}


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(VOCAB)


def test_case_and_punctuation_are_standardized(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["GOOD!!! Not, bad.", "Don't"]))
    assert ids[0, :4].tolist() == [IDS["good"], IDS["not"], IDS["bad"], PAD_ID]
    assert ids[1, :2].tolist() == [IDS["dont"], PAD_ID]


def test_unicode_words_are_looked_up(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["Café 日本 😀 good"]))
    assert ids[0, :4].tolist() == [IDS["café"], IDS["日本"], IDS["good"], PAD_ID]


def test_out_of_vocabulary_is_one_and_padding_is_zero(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["zebra good"]))
    assert ids[0, 0] == OOV_ID and ids[0, 1] == IDS["good"]
    assert (ids[0, 2:] == PAD_ID).all()


def test_empty_and_whitespace_text_is_all_padding(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["", "   \t\n ", "!!!"]))
    assert ids.shape == (3, 50) and (ids == PAD_ID).all()


def test_more_than_fifty_tokens_keeps_the_first_fifty(tokenizer):
    text = " ".join(["good"] * 50 + ["bad"] * 10)
    ids = tokenizer.tokenize_and_pad(pa.array([text, "bad " + text]))
    assert (ids[0] == IDS["good"]).all()
    assert ids[1, 0] == IDS["bad"] and (ids[1, 1:] == IDS["good"]).all()


def test_exactly_fifty_ids_int32(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["good"]))
    assert ids.shape == (1, 50) and ids.dtype == np.int32


def test_null_text_is_reported_not_padded(tokenizer):
    with pytest.raises(ValueError, match="1 null text"):
        tokenizer.tokenize_and_pad(pa.array(["good", None]))


def test_stats_count_kept_words_and_oov(tokenizer):
    _, words, oov = tokenizer.tokenize_and_pad(pa.array(["good zebra", "yak"]), return_stats=True)
    assert (words, oov) == (3, 2)


def test_one_megabyte_review_costs_fifty_words(tokenizer):
    ids = tokenizer.tokenize_and_pad(pa.array(["good " * 200_000]))
    assert (ids == IDS["good"]).all()


def test_chunked_and_large_string_inputs():
    tok = Tokenizer(VOCAB)
    chunked = pa.chunked_array([["good"], ["bad"]])
    large = pa.array(["good", "bad"], pa.large_string())
    np.testing.assert_array_equal(tok.tokenize_and_pad(chunked), tok.tokenize_and_pad(large))


def test_build_vocabulary_orders_by_count_then_word_and_caps_size():
    texts = pa.array(["b a a", "c b a", "d"])
    assert build_vocabulary(texts, max_size=10) == ["a", "b", "c", "d"]
    assert build_vocabulary(texts, max_size=4) == ["a", "b"]  # two ids are reserved


def test_split_drops_empty_words():
    words = standardize_and_split(pa.array(["  a  b ", "", "?"]))
    assert words.to_pylist() == [["a", "b"], [], []]


def test_unsupported_spec_is_refused():
    with pytest.raises(ValueError, match="unsupported tokenizer spec"):
        TokenizerSpec.from_dict({"sequence_length": 50, "padding": "pre"})


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=400)), min_size=0, max_size=30))
def test_any_unicode_gives_n_by_fifty_ids_within_vocabulary(texts):
    tok = Tokenizer(VOCAB)
    present = [t for t in texts if t is not None]
    ids = tok.tokenize_and_pad(pa.array(present, pa.string()))
    assert ids.shape == (len(present), 50)
    assert ids.dtype == np.int32
    assert ids.min(initial=0) >= 0 and ids.max(initial=0) < tok.vocab_size
    # Padding only ever follows the words: no id after the first zero of a row.
    for row in ids:
        zeros = np.flatnonzero(row == PAD_ID)
        if len(zeros):
            assert (row[zeros[0] :] == PAD_ID).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.sampled_from(["good", "bad", "x", " ", "!", "É"]), max_size=60).map("".join), max_size=10))
def test_words_in_vocabulary_get_their_ids(texts):
    tok = Tokenizer(["good", "bad"])
    ids = tok.tokenize_and_pad(pa.array(texts, pa.string()))
    for text, row in zip(texts, ids):
        words = "".join(c for c in text.lower() if c != "!").split()
        expected = [tok.vocabulary.index(w) + 2 if w in tok.vocabulary else OOV_ID for w in words][:50]
        assert row[: len(expected)].tolist() == expected


def test_without_the_extension_the_arrow_path_gives_the_same_ids_and_stats(tokenizer, monkeypatch):
    texts = pa.array(["GOOD!!! Not, bad.", "Café 日本 😀 good", "", "   ", "zebra " * 60, "Don't  ", "good 👍 "])
    expected_ids, expected_words, expected_oov = tokenizer.tokenize_and_pad(texts, return_stats=True)
    monkeypatch.setattr(text_module, "_tokens", None)
    fallback = Tokenizer(VOCAB)
    ids, words, oov = fallback.tokenize_and_pad(texts, return_stats=True)
    np.testing.assert_array_equal(ids, expected_ids)
    assert (words, oov) == (expected_words, expected_oov)
    with pytest.raises(ValueError, match="1 null text"):
        fallback.tokenize_and_pad(pa.array(["good", None]))


def test_a_tokenizer_made_with_the_extension_still_works_where_it_is_missing(tokenizer, monkeypatch):
    texts = pa.array(["GOOD!!! Not, bad.", "Café 日本 😀 good"])
    expected = tokenizer.tokenize_and_pad(texts)
    monkeypatch.setattr(text_module, "_tokens", None)  # as when unpickled on a worker without it
    np.testing.assert_array_equal(tokenizer.tokenize_and_pad(texts), expected)
