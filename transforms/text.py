"""Review text to token ids: standardize, split, look up, truncate/pad; one implementation for training and scoring."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.code_points import code_point_table

# The byte scan in C is an accelerator: without it (no compiler where the project was installed, a source checkout
# that was never built) every text goes through the Arrow kernels, which give the same ids about 3x slower. Said once
# per process, when this module is imported, not once per batch.
try:
    from transforms import _tokens
except ImportError:
    _tokens = None
    logging.getLogger(__name__).warning(
        "transforms._tokens (the tokenizer's C byte scan, transforms/_tokens.c) is not built: tokenizing with the "
        "Arrow kernels instead (same ids, about 3x slower); install with a C compiler to build it"
    )

PAD_ID = 0
OOV_ID = 1
RESERVED_IDS = 2

# Unicode punctuation and symbols are removed (not replaced by a space), as Keras' TextVectorization does:
# "don't" becomes "dont" and "good!!" becomes "good".
_PUNCTUATION = r"[\p{P}\p{S}]"


@dataclass(frozen=True)
class TokenizerSpec:
    """How text becomes ids; saved in the bundle as tokenizer.json."""

    sequence_length: int = 50
    standardize: str = "lower_strip_punctuation"
    split: str = "whitespace"
    # Post-truncation keeps a review's first words; post-padding puts the zeros after them.
    truncation: str = "post"
    padding: str = "post"
    pad_id: int = PAD_ID
    oov_id: int = OOV_ID

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> TokenizerSpec:
        spec = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if (spec.standardize, spec.split, spec.truncation, spec.padding) != (
            "lower_strip_punctuation",
            "whitespace",
            "post",
            "post",
        ):
            raise ValueError(f"unsupported tokenizer spec {data}")
        return spec


def _as_string_array(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(texts, type=pa.string())
    if pa.types.is_large_string(texts.type):
        return texts
    if not pa.types.is_string(texts.type):
        texts = texts.cast(pa.string())
    return texts


def standardize_and_split(texts) -> pa.ListArray:
    """Lowercases, strips punctuation and splits on whitespace: one list of words per text."""
    texts = _as_string_array(texts)
    lowered = pc.utf8_lower(texts)
    stripped = pc.replace_substring_regex(lowered, pattern=_PUNCTUATION, replacement="")
    words = pc.utf8_split_whitespace(stripped)
    # Arrow yields an empty word for an empty text and around leading/trailing whitespace: drop those.
    offsets = words.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = words.values[offsets[0] : offsets[-1]]
    keep = pc.greater(pc.utf8_length(values), 0)
    kept_before = np.concatenate([[0], np.cumsum(keep.to_numpy(zero_copy_only=False), dtype=np.int64)])
    new_offsets = pa.array(kept_before[offsets - offsets[0]].astype(np.int32))
    return pa.ListArray.from_arrays(new_offsets, values.filter(keep))


# tokenize_and_pad standardizes, splits, looks up and pads in one C pass over the UTF-8 bytes (transforms/_tokens.c:
# scan_ids), exactly as standardize_and_split does: ASCII by the byte classes below, every other character by the
# code point table (transforms/code_points.py), which is read off the same Arrow kernels. A text with a character
# that table leaves to Arrow (beyond U+1FFFF) or with invalid UTF-8 goes the earlier way (_tokenize_and_pad_spans):
# the same C scan for the tokens (runs of bytes that are not ASCII whitespace) of ASCII bytes only. ASCII: A-Z become
# a-z; the ASCII characters in Unicode categories P* and S* (all 32 printable non-alphanumerics) are removed; the
# other bytes (letters, digits, control characters, DEL) stay. The ASCII whitespace of utf8_split_whitespace is \t \n
# \v \f \r, the space and also \x1c-\x1f (bidi classes B and S), which ascii_split_whitespace does not count as
# whitespace. Character by character is exact because the Arrow kernels work code point by code point (utf8_lower
# has no context rule: "ΑΣ" becomes "ασ", and "İ" becomes "i"); on the earlier way a token with a non-ASCII byte
# goes through standardize_and_split on its own, its words depending on it alone.
_ARROW_ASCII_WHITESPACE = b"\t\n\v\f\r\x1c\x1d\x1e\x1f "
_DELETE, _SPACE, _WORD = 0, 1, 2
_BYTE_CLASS = np.full(256, _WORD, dtype=np.uint8)  # bytes >= 0x80, parts of non-ASCII characters, are _WORD
_BYTE_CLASS[[c for c in range(128) if unicodedata.category(chr(c))[0] in "PS"]] = _DELETE
_BYTE_CLASS[list(_ARROW_ASCII_WHITESPACE)] = _SPACE
# Texts are scanned in pieces of about this many bytes (whole texts), which bounds the per-token scratch arrays.
_CHUNK_BYTES = 1 << 21
# A last text without whitespace for standardize_and_split: see _unicode_words.
_GUARD = pa.array(["x"], pa.large_string())


def _text_buffers(texts: pa.Array) -> tuple[np.ndarray, pa.Buffer | None, np.ndarray]:
    """(offsets of the texts into the data buffer, as int64; the data buffer; the data as uint8)."""
    if len(texts) == 0:  # whose offsets buffer may be empty
        return np.zeros(1, dtype=np.int64), None, np.zeros(0, dtype=np.uint8)
    offset_type = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offsets = np.frombuffer(texts.buffers()[1], dtype=offset_type)[texts.offset : texts.offset + len(texts) + 1]
    buffer = texts.buffers()[2]
    data = np.frombuffer(buffer, dtype=np.uint8) if buffer is not None else np.zeros(0, dtype=np.uint8)
    return offsets.astype(np.int64), buffer, data


@dataclass
class _Chunk:
    """Some consecutive texts' tokens: runs of bytes that are not ASCII whitespace, but for punctuation-only ones."""

    rows: slice
    index: np.ndarray  # each token's ASCII-standardized word's index in the vocabulary, or -1
    tokens_before_text: np.ndarray  # for each text and one past the last
    unicode: np.ndarray  # the tokens with a non-ASCII byte, whose index is that of a placeholder
    spans: pa.Array | None  # those tokens, with the whitespace and punctuation-only tokens after them


def _chunk_tokens(data: np.ndarray, buffer: pa.Buffer | None, offsets: np.ndarray, rows: slice, vocabulary) -> _Chunk:
    """The tokens of the texts data[offsets[i] : offsets[i + 1]] for i in rows, data being the contents of buffer."""
    offsets = offsets[rows.start : rows.stop + 1]
    room = int(offsets[-1] - offsets[0])  # at most one token per byte; np.empty leaves untouched pages unmapped
    index = np.empty(room, dtype=np.int32)
    starts = np.empty(room, dtype=np.int64)
    unicode = np.empty(room, dtype=np.int64)
    tokens_before_text = np.empty(len(offsets), dtype=np.int64)
    tokens, unicode_tokens = _tokens.scan(
        _BYTE_CLASS, data, offsets, *vocabulary, index, starts, tokens_before_text, unicode
    )
    index, starts, unicode = index[:tokens], starts[:tokens], unicode[:unicode_tokens]
    spans = None
    if unicode_tokens:
        # Token k's span runs to the start of token k + 1: the spans of all tokens tile the bytes.
        span_offsets = pa.py_buffer(np.append(starts, offsets[-1]))
        spans = pa.Array.from_buffers(pa.large_string(), tokens, [None, span_offsets, buffer])
        spans = spans.take(pa.array(unicode))
    return _Chunk(rows, index, tokens_before_text, unicode, spans)


def _unicode_words(spans: list[pa.Array], value_set: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(The vocabulary index of each word of standardize_and_split(spans), or -1; how many words each span has)."""
    if not spans:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    # utf8_split_whitespace reads the code point just past a whitespace run that ends a string: for the last string,
    # whatever lies past the data, and when that is not valid UTF-8 the run stays in the word ("pan " for "pan 👍").
    words = standardize_and_split(pa.chunked_array([*spans, _GUARD]))
    index = pc.index_in(words.flatten(), value_set=value_set).fill_null(-1).to_numpy()
    return index, np.diff(words.offsets.to_numpy())[:-1]


def _chunk_words(chunk: _Chunk, unicode_index: np.ndarray, words_per_unicode: np.ndarray):
    """(The vocabulary index of each word of the chunk's texts, or -1; how many words each text has)."""
    if not len(chunk.unicode):
        return chunk.index, np.diff(chunk.tokens_before_text)
    # A token with a non-ASCII byte stands for its 0, 1 or more words instead of a placeholder.
    words_per_token = np.ones(len(chunk.index), dtype=np.int64)
    words_per_token[chunk.unicode] = words_per_unicode
    index = np.repeat(chunk.index, words_per_token)
    # The i-th of those tokens' words start at unicode[i] + (the words of the earlier ones) - i.
    first = np.repeat(chunk.unicode - np.arange(len(chunk.unicode)), words_per_unicode)
    index[first + np.arange(len(unicode_index))] = unicode_index
    extra_words = np.append(0, np.cumsum(words_per_unicode - 1))
    tokens_before_text = chunk.tokens_before_text
    words_before_text = tokens_before_text + extra_words[np.searchsorted(chunk.unicode, tokens_before_text)]
    return index, np.diff(words_before_text)


def build_vocabulary(texts, max_size: int = 10000, min_count: int = 1) -> list[str]:
    """The most frequent words, ties broken alphabetically, leaving room for the pad and OOV ids."""
    words = standardize_and_split(texts).flatten()
    if len(words) == 0:
        return []
    counts = pc.value_counts(words)
    table = pa.table({"word": counts.field("values"), "count": counts.field("counts")})
    table = table.filter(pc.greater_equal(table["count"], min_count))
    table = table.sort_by([("count", "descending"), ("word", "ascending")])
    return table["word"].to_pylist()[: max(0, max_size - RESERVED_IDS)]


def _vocabulary_table(vocabulary: Sequence[str]) -> tuple[np.ndarray, bytes, np.ndarray]:
    """(hash slots, words' UTF-8 bytes, word offsets): the vocabulary as _tokens.scan looks words up in it."""
    encoded = [w.encode("utf-8") for w in vocabulary]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in encoded], out=offsets[1:])
    words = b"".join(encoded)
    slots = np.zeros(1 << max(4, (2 * len(encoded)).bit_length()), dtype=np.int32)  # at most half full
    _tokens.build_table(words, offsets, slots)
    return slots, words, offsets


class Tokenizer:
    """Maps a column of texts to an (n, sequence_length) int32 matrix of vocabulary ids."""

    def __init__(self, vocabulary: Sequence[str], spec: TokenizerSpec | None = None):
        self.spec = spec or TokenizerSpec()
        self.vocabulary = tuple(vocabulary)
        self._value_set = pa.array(self.vocabulary, type=pa.string())
        self._table = _vocabulary_table(self.vocabulary) if _tokens is not None else None

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + RESERVED_IDS

    def tokenize_and_pad(self, texts, return_stats: bool = False):
        """Token ids for each text; raises ValueError on a null text, which has no honest encoding.

        With return_stats, also returns (tokens seen, tokens out of vocabulary) over the kept words.
        """
        if _tokens is None or self._table is None:  # also a tokenizer made where the extension was, unpickled here
            return self._tokenize_and_pad_arrow(texts, return_stats)
        texts = _as_string_array(texts)
        if texts.null_count:
            raise ValueError(f"{texts.null_count} null text value(s): reject them before tokenizing")
        n, length = len(texts), self.spec.sequence_length
        ids = np.full((n, length), self.spec.pad_id, dtype=np.int32)
        offsets, _, data = _text_buffers(texts)
        fallback = np.empty(n, dtype=np.int64)
        # One pass over the bytes writes every row's ids (transforms/_tokens.c: scan_ids); the rare texts with a
        # character the code point table leaves to Arrow (or invalid UTF-8) are listed and tokenized below.
        total, oov, fallbacks = _tokens.scan_ids(
            _BYTE_CLASS,
            *code_point_table(_PUNCTUATION),
            data,
            offsets,
            *self._table,
            ids,
            self.spec.oov_id,
            RESERVED_IDS,
            fallback,
        )
        if fallbacks:
            rows = fallback[:fallbacks]
            ids[rows], words, unknown = self._tokenize_and_pad_spans(texts.take(pa.array(rows)))
            total, oov = total + words, oov + unknown
        if return_stats:
            return ids, total, oov
        return ids

    def _tokenize_and_pad_spans(self, texts: pa.Array):
        """(ids, words kept, words out of vocabulary) of non-null texts, the ASCII tokens through the C scan and the
        tokens with a non-ASCII byte through the Arrow kernels: tokenize_and_pad's way for texts whose characters
        the code point table does not cover (and the way it tokenized every text before scan_ids)."""
        n, length = len(texts), self.spec.sequence_length
        ids = np.full((n, length), self.spec.pad_id, dtype=np.int32)
        offsets, buffer, data = _text_buffers(texts)
        cuts = np.searchsorted(offsets, np.arange(offsets[0] + _CHUNK_BYTES, offsets[-1], _CHUNK_BYTES))
        bounds = np.unique(np.concatenate([[0], cuts, [n]]))
        chunks = [_chunk_tokens(data, buffer, offsets, slice(*b), self._table) for b in zip(bounds, bounds[1:])]
        # The tokens with a non-ASCII byte all at once: an Arrow kernel call costs much on non-ASCII text.
        unicode_index, words_per_unicode = _unicode_words(
            [c.spans for c in chunks if c.spans is not None], self._value_set
        )
        unicode_before = np.cumsum([0] + [len(c.unicode) for c in chunks])
        words_before = np.append(0, np.cumsum(words_per_unicode))[unicode_before]
        total = oov = 0
        for i, chunk in enumerate(chunks):
            index, counts = _chunk_words(
                chunk,
                unicode_index[words_before[i] : words_before[i + 1]],
                words_per_unicode[unicode_before[i] : unicode_before[i + 1]],
            )
            kept = np.minimum(counts, length)
            if (kept < counts).any():
                # Only the first `length` words of each text are kept.
                index = index[
                    np.repeat(np.tile([True, False], len(counts)), np.stack([kept, counts - kept], 1).ravel())
                ]
            token_ids = index.astype(np.int32) + RESERVED_IDS
            token_ids[token_ids == RESERVED_IDS - 1] = self.spec.oov_id
            # The words in order, text after text, fill the mask's True cells in its row-major order.
            ids[chunk.rows][np.arange(length) < kept[:, None]] = token_ids
            total += len(token_ids)
            oov += int(np.count_nonzero(index < 0))
        return ids, total, oov

    def _tokenize_and_pad_arrow(self, texts, return_stats: bool = False):
        """tokenize_and_pad all through the Arrow kernels: the path without the C extension, and the tests' oracle."""
        texts = _as_string_array(texts)
        if texts.null_count:
            raise ValueError(f"{texts.null_count} null text value(s): reject them before tokenizing")
        n, length = len(texts), self.spec.sequence_length
        # One last text without whitespace, whose words are dropped: utf8_split_whitespace reads past the end of the
        # last string (see _unicode_words), so without it the last row's ids could depend on memory past the data.
        words = standardize_and_split(pa.concat_arrays([texts, pa.array(["x"], texts.type)])).slice(0, n)
        offsets = words.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = offsets - offsets[0]
        counts = np.minimum(np.diff(offsets), length)
        total = int(counts.sum())
        ids = np.full((n, length), self.spec.pad_id, dtype=np.int32)
        if total:
            # Only the first `length` words of each text are looked up: a 1 MB review costs what 50 words cost.
            row_starts = np.cumsum(counts) - counts
            position = np.arange(total, dtype=np.int64) - np.repeat(row_starts, counts)
            take = np.repeat(offsets[:-1], counts) + position
            kept = words.values.take(pa.array(take))
            index = pc.index_in(kept, value_set=self._value_set)
            token_ids = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32) + RESERVED_IDS
            token_ids[token_ids == RESERVED_IDS - 1] = self.spec.oov_id
            rows = np.repeat(np.arange(n, dtype=np.int64), counts)
            ids[rows, position] = token_ids
            oov = int(index.null_count)
        else:
            oov = 0
        if return_stats:
            return ids, total, oov
        return ids


def tokenize_and_pad(texts, vocabulary: Sequence[str], sequence_length: int = 50) -> np.ndarray:
    """One-shot helper: token ids for texts with the given vocabulary."""
    return Tokenizer(vocabulary, TokenizerSpec(sequence_length=sequence_length)).tokenize_and_pad(texts)
