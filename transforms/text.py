"""Review text to token ids: standardize, split, look up, truncate/pad; one implementation for training and scoring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


class Tokenizer:
    """Maps a column of texts to an (n, sequence_length) int32 matrix of vocabulary ids."""

    def __init__(self, vocabulary: Sequence[str], spec: TokenizerSpec | None = None):
        self.spec = spec or TokenizerSpec()
        self.vocabulary = tuple(vocabulary)
        self._value_set = pa.array(self.vocabulary, type=pa.string())

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary) + RESERVED_IDS

    def tokenize_and_pad(self, texts, return_stats: bool = False):
        """Token ids for each text; raises ValueError on a null text, which has no honest encoding.

        With return_stats, also returns (tokens seen, tokens out of vocabulary) over the kept words.
        """
        texts = _as_string_array(texts)
        if texts.null_count:
            raise ValueError(f"{texts.null_count} null text value(s): reject them before tokenizing")
        n, length = len(texts), self.spec.sequence_length
        words = standardize_and_split(texts)
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
