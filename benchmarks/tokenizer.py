"""The tokenizer alone, one thread: tokenize_and_pad against the all-Arrow reference, alternated in one process.

    .venv/bin/python -m benchmarks.tokenizer --reviews 200000      # needs the cached data of `make bench`

Both run on the same 16,384-row batches (the pipeline's read_batch_size) of the day's non-null review texts; each
repetition times every batch once with each, so machine load hits both alike. Prints rows/s per repetition and the
best of each; the ratio of the bests is the speed-up the byte-level path gives.
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
    variants = {"byte_level": tokenizer.tokenize_and_pad, "arrow_reference": tokenizer._tokenize_and_pad_arrow}
    best = dict.fromkeys(variants, 0.0)
    for repetition in range(args.repeat):
        for name, tokenize in variants.items():
            start = time.perf_counter()
            for batch in batches:
                tokenize(batch, return_stats=True)
            rate = len(texts) / (time.perf_counter() - start)
            best[name] = max(best[name], rate)
            print(f"{repetition}: {name} {rate:,.0f} rows/s", flush=True)
    ratio = best["byte_level"] / best["arrow_reference"]
    rates = ", ".join(f"{k} {v:,.0f} rows/s" for k, v in best.items())
    print(f"best of {args.repeat} on {len(texts):,} texts: {rates}")
    print(f"byte_level / arrow_reference = {ratio:.2f}")


if __name__ == "__main__":
    main()
