"""What the tokenizer's standardize does to each Unicode code point, read off the Arrow kernels themselves."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Classes of a character once lowercased, as transforms/_tokens.c reads them: removed (Unicode punctuation and
# symbols), a space (where utf8_split_whitespace splits), part of a word, or unknown (the Arrow kernels decide).
DELETE, SPACE, WORD, UNKNOWN = 0, 1, 2, 3
# The Basic and Supplementary Multilingual Planes: every script and emoji in use; a text with a character beyond
# (CJK extension planes, private use) goes through the Arrow kernels.
CODE_POINTS = 0x20000
_SURROGATES = range(0xD800, 0xE000)


@functools.cache
def code_point_table(punctuation: str) -> tuple[np.ndarray, np.ndarray]:
    """(lowercase code point, class) of every code point below CODE_POINTS, each computed with the kernels
    standardize_and_split uses (utf8_lower, the `punctuation` regex, utf8_split_whitespace), one character at a
    time: they work code point by code point without context, so a text's words are what the table gives for each
    of its characters. A character whose lowercase is not one code point is UNKNOWN (none is, in Arrow 25). Built
    once per process (~0.1 s)."""
    points = np.array([c for c in range(CODE_POINTS) if c not in _SURROGATES])
    characters = pa.array([chr(c) for c in points], pa.string())
    lowered = pc.utf8_lower(characters)
    single = pc.equal(pc.utf8_length(lowered), 1).to_numpy(zero_copy_only=False)
    lower = np.array([ord(w[0]) if w else 0 for w in lowered.to_pylist()], dtype=np.int32)
    stripped = pc.replace_substring_regex(lowered, pattern=punctuation, replacement="")
    deleted = pc.equal(pc.binary_length(stripped), 0).to_numpy(zero_copy_only=False)
    # Between two letters, a space character splits "a?b" into two words, any other keeps one.
    framed = pc.binary_join_element_wise(pa.scalar("a"), stripped, pa.scalar("b"), pa.scalar(""))
    words = pc.list_value_length(pc.utf8_split_whitespace(framed)).to_numpy(zero_copy_only=False)
    classes = np.where(deleted, DELETE, np.where(words == 2, SPACE, np.where(words == 1, WORD, UNKNOWN)))
    classes = np.where(single, classes, UNKNOWN).astype(np.uint8)
    lower_table = np.arange(CODE_POINTS, dtype=np.int32)
    class_table = np.full(CODE_POINTS, UNKNOWN, dtype=np.uint8)
    lower_table[points] = np.where(single, lower, points)
    class_table[points] = classes
    return lower_table, class_table
