"""The tokenizer alone, one thread: tokenize_and_pad against its earlier paths, alternated in one process.

    .venv/bin/python -m benchmarks.tokenizer --reviews 200000      # needs the cached data of `make bench`

All run on the same 16,384-row batches (the pipeline's read_batch_size) of the day's non-null review texts; each
repetition times every batch once with each, so machine load hits all alike. Prints rows/s and CPU-µs a row
(thread CPU, which a loaded machine changes less than wall time) per repetition and the best of each: one_pass is
tokenize_and_pad (scan_ids: every character in C), spans the C scan of ASCII tokens with the others through the
Arrow kernels (tokenize_and_pad before scan_ids, still its path for texts the code point table leaves to Arrow),
arrow_reference the all-Arrow oracle.
"""

from __future__ import annotations

import argparse
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import MODEL_DIR, data_dir, review_files
from model.bundle import read_bundle
from transforms.text import Tokenizer, TokenizerSpec


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=200_000, help="which cached data set (benchmarks/data)")
    parser.add_argument("--batch-size", type=int, default=16384)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    pre = read_bundle(MODEL_DIR)
    tokenizer = Tokenizer(pre.vocabulary, TokenizerSpec.from_dict(pre.tokenizer))
    texts = pa.chunked_array(
        [c for f in review_files(data_dir(args.reviews)) for c in pq.read_table(f, columns=["review_text"])[0].chunks]
    )
    texts = texts.filter(pc.is_valid(texts))
    batches = [texts.slice(s, args.batch_size).combine_chunks() for s in range(0, len(texts), args.batch_size)]
    variants = {
        "one_pass": tokenizer.tokenize_and_pad,
        "spans": lambda batch, return_stats: tokenizer._tokenize_and_pad_spans(batch),
        "arrow_reference": tokenizer._tokenize_and_pad_arrow,
    }
    tokenizer.tokenize_and_pad(batches[0])  # the code point table, built once per process, is not timed
    best = dict.fromkeys(variants, 0.0)
    cpu = dict.fromkeys(variants, float("inf"))
    for repetition in range(args.repeat):
        for name, tokenize in variants.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            for batch in batches:
                tokenize(batch, return_stats=True)
            rate = len(texts) / (time.perf_counter() - start)
            us = (time.thread_time() - start_cpu) * 1e6 / len(texts)
            best[name], cpu[name] = max(best[name], rate), min(cpu[name], us)
            print(f"{repetition}: {name} {rate:,.0f} rows/s, {us:.3f} CPU-µs a row", flush=True)
    rates = ", ".join(f"{k} {v:,.0f} rows/s {cpu[k]:.3f} CPU-µs a row" for k, v in best.items())
    print(f"best of {args.repeat} on {len(texts):,} texts: {rates}")
    print(f"CPU a row, spans / one_pass = {cpu['spans'] / cpu['one_pass']:.2f}")


if __name__ == "__main__":
    main()
