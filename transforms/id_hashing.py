"""Customer ids as int64 keys: an integer id itself, a string id as two independent 64-bit hashes of its bytes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_U64 = np.uint64
_KEY_MULTIPLIER = _U64(0x9E3779B97F4A7C15)  # odd: h -> h * M is a bijection mod 2^64
_CHECK_MULTIPLIER = _U64(0xBF58476D1CE4E5B9)
_KEY_SALT, _CHECK_SALT = _U64(0xD6E8FEB86659FD93), _U64(0xA0761D6478BD642F)
_WORD_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)


def _mix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output."""
    h = values.astype(np.uint64, copy=True)
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
    return h


def hash_strings(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Two independent 64-bit hashes (int64) of each string's UTF-8 bytes, computed on Arrow's buffers 8 bytes at a
    time: the key, a polynomial over the little-endian words (Horner's rule mod 2^64), and the check, an
    xor-multiply chain over the same words; each salted with the length and mixed.

    Deterministic across processes and machines, so every worker buckets and looks up alike. Nulls hash like the
    empty string: callers mask them.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    buffers = values.buffers()
    wide = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)[values.offset : values.offset + n + 1]
    offsets = offsets.astype(np.int64)
    low, high = int(offsets[0]), int(offsets[-1])
    data = np.zeros(high - low + 8, dtype=np.uint8)  # 8 zero bytes past the end: every word load stays inside
    if high > low:
        data[: high - low] = np.frombuffer(buffers[2], dtype=np.uint8)[low:high]
    words = np.ndarray((high - low + 1,), dtype="<u8", buffer=data, strides=(1,))  # an 8-byte word at every byte
    start = offsets[:-1] - low
    lengths = offsets[1:] - offsets[:-1]
    key = lengths.astype(np.uint64) * _KEY_SALT
    check = lengths.astype(np.uint64) * _CHECK_SALT
    # One pass per word position; strings drop out as they end (so the passes add up to the number of words).
    active: np.ndarray | None = None
    j = 0
    while True:
        if active is None and bool((lengths > 8 * j).all()):
            word = words[start + 8 * j] & _WORD_MASKS[np.minimum(lengths - 8 * j, 8)]
            key = key * _KEY_MULTIPLIER + word
            check = (check ^ word) * _CHECK_MULTIPLIER
            check ^= check >> _U64(31)
            j += 1
            continue
        active = np.flatnonzero(lengths > 8 * j) if active is None else active[lengths[active] > 8 * j]
        if not len(active):
            break
        word = words[start[active] + 8 * j] & _WORD_MASKS[np.minimum(lengths[active] - 8 * j, 8)]
        key[active] = key[active] * _KEY_MULTIPLIER + word
        mixed = (check[active] ^ word) * _CHECK_MULTIPLIER
        check[active] = mixed ^ (mixed >> _U64(31))
        j += 1
    return _mix64(key).view(np.int64), _mix64(check).view(np.int64)


def id_keys(ids: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """(key, check) of each customer id: the id itself and no check for integers, the two hashes for strings.
    Null ids get junk keys: callers mask them."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if pa.types.is_integer(ids.type):
        return ids.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), None
    return hash_strings(ids)


def buckets_of(keys: np.ndarray, buckets: int) -> np.ndarray:
    """The hash bucket (0..buckets-1) of each key."""
    if buckets == 1:
        return np.zeros(len(keys), dtype=np.int64)
    return (_mix64(keys.view(np.uint64)) % _U64(buckets)).astype(np.int64)
