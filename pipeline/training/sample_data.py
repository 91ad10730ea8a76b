"""Deterministic synthetic customers and reviews, written as Parquet, with a learnable sentiment signal."""

from __future__ import annotations

import functools
import itertools
import math
import operator
import os
import re
import string
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import storage
from transforms.io import partition_path

CUSTOMER_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.int64()),
        pa.field("age", pa.float64()),
        pa.field("purchase_history", pa.float64()),
    ]
)
REVIEW_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.int64()),
        pa.field("customer_id", pa.int64()),
        pa.field("review_text", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("review_date", pa.string()),
    ]
)

# Rows generated (and at most written as one row group) at a time: bounds memory whatever the dataset size.
CHUNK_ROWS = 100_000
# Texts are assembled this many at a time: their (rows x sentence slots) temporaries dominate peak memory.
TEXT_BATCH = 25_000
CUSTOMER_ID_BASE = 100_001
# Review ids start above the int32 range, so code that narrows them to int32 shows up in testing.
REVIEW_ID_BASE = 5_000_000_001

# Dirty rows, as fractions of reviews (or of customers for the null features); counts are round(rate * n),
# raised to a floor once the data is big enough that every reject path should see work: one review of each dirty
# kind from DIRTY_FLOOR_REVIEWS reviews on, and one null age plus one null purchase_history from
# DIRTY_FLOOR_CUSTOMERS customers on. Smaller datasets are left clean.
DIRTY_FLOOR_REVIEWS = 500
DIRTY_FLOOR_CUSTOMERS = 100
MISSING_CUSTOMER_RATE = 0.005
NULL_TEXT_RATE = 0.003
BLANK_TEXT_RATE = 0.001
NULL_FEATURE_RATE = 0.002
BLANK_TEXTS = ("", " ", "   ", "\t", " \n ")

# Length of a (non-dirty) review text in whitespace-separated words.
MIN_WORDS = 10
MAX_WORDS = 120
# Label noise and reviews without any sentiment sentence: together they cap a perfect model's AUC near 0.95.
LABEL_NOISE = 0.02
NO_SENTIMENT_RATE = 0.015
# How many sentiment sentences a review with sentiment has: 1, 2, 3 or 4.
SENTIMENT_COUNT_P = (0.30, 0.35, 0.25, 0.10)
# Reviews with 2+ sentiment sentences whose last one is a mild remark of the other polarity.
MIXED_RATE = 0.25
OPENER_RATE = 0.55
LOWERCASE_RATE = 0.08
# Extra sentiment sentences go among the slots right after the first one, so the model's first 50 tokens see them.
SENTIMENT_WINDOW = 5

# Customers: age in [18, 85]; purchase_history is lifetime spend in dollars, lognormal with a few new accounts at 0.
AGE_MIN, AGE_MAX = 18, 85
SPEND_LOG_MEAN, SPEND_LOG_SIGMA = 5.0, 1.1
ZERO_SPEND_RATE = 0.02
# Log-odds of a positive review: heavier buyers and (barely) older customers are a bit more positive.
LOGIT_BASE, LOGIT_SPEND, LOGIT_AGE = 0.45, 0.35, 0.10

FILLER, OPENER, POSITIVE, NEGATIVE, MILD_NEGATIVE, MILD_POSITIVE = range(6)

PRODUCTS = (
    "blender",
    "coffee grinder",
    "desk lamp",
    "phone case",
    "backpack",
    "water bottle",
    "air fryer",
    "keyboard",
    "wireless mouse",
    "yoga mat",
    "toaster",
    "kettle",
    "rice cooker",
    "Bluetooth speaker",
    "USB-C charger",
    "office chair",
    "cast iron pan",
    "vacuum",
    "hair dryer",
    "electric toothbrush",
    "smartwatch",
    "tent",
    "sleeping bag",
    "umbrella",
    "wallet",
    "rain jacket",
    "lunch box",
    "French press",
    "espresso machine",
    "monitor stand",
    "power bank",
    "pillow",
    "knife set",
    "baby monitor",
    "e-reader",
    "dog bed",
    "crème brûlée torch",
    "jalapeño slicer",
)

SLOTS = {
    "who": ("mom", "dad", "sister", "brother", "wife", "husband", "roommate", "grandma", "son", "daughter"),
    "when": ("last week", "a month ago", "on Black Friday", "in the spring", "before the holidays", "yesterday"),
    "dur": ("two days", "a week", "a month", "three uses", "six weeks"),
    "long": ("six months", "a year", "two years", "three months"),
    "n": ("two", "three", "four", "five", "six"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "color": ("black", "white", "navy blue", "grey", "café au lait"),
    "price": ("$19.99", "$24", "$39.99", "$45", "$79", "$120"),
    "place": ("São Paulo", "Zürich", "Montréal", "東京", "the lake", "my parents' place"),
    "room": ("kitchen", "garage", "office", "bedroom", "car", "dorm room"),
    "feature": ("USB-C port", "small LED", "removable lid", "rubber base", "carry strap"),
    "good": ("great", "excellent", "amazing", "fantastic", "really good", "well made", "super sturdy", "perfect"),
    "bad": ("terrible", "awful", "cheap", "flimsy", "disappointing", "useless", "poorly made", "a waste of money"),
    "notbad": ("flimsy", "noisy", "disappointing", "bad at all", "a waste of money"),
    "notgood": ("good", "great", "worth it", "sturdy", "comfortable", "reliable"),
}

# Neutral sentences: the same pool feeds both classes. {p} is the review's product.
OPENER_TEMPLATES = (
    "Bought this {p} for my {who} {when}.",
    "Ordered the {p} {when} after reading a few reviews.",
    "I've had this {p} for about {long} now.",
    "Picked up the {p} {when} during a sale.",
    "Got the {p} as a gift from my {who}.",
    "Needed a new {p}, so I tried this one.",
    "Replacing my old {p}, which lasted {long}.",
    "Quick review of the {p} after {long} of use.",
)
FILLER_TEMPLATES = (
    "Shipping took {n} days.",
    "It arrived on a {day} afternoon.",
    "I use the {p} mostly on weekends.",
    "I use it almost every day, usually in the morning.",
    "It came in a plain brown box.",
    "My {who} has the same one.",
    "I went with the {color} one.",
    "Paid about {price} for it.",
    "Is it dishwasher safe? The manual doesn't say.",
    "It's about the size of a paperback book.",
    "We took the {p} on a trip to {place}.",
    "The instructions were in English, Español and 日本語.",
    "Compared it with the one at the store, same model.",
    "Ordered it late at night, as one does.",
    "For context, I'm not a pro, just a regular user.",
    "It sits on the counter next to the coffee maker.",
    "I actually read the manual before using it, for once.",
    "My cat keeps sitting next to the {p} 😺",
    "I keep it in the {room}.",
    "Has anyone else tried the newer model?",
    "We had coffee at the café while waiting for the delivery.",
    "Took around {n} minutes to set up.",
    "The {p} weighs about as much as a laptop.",
    "Naïve question, but does it come with a warranty?",
    "My {who} helped me set it up.",
    "The box said 'made with care', whatever that means.",
    "It comes with a {feature}.",
    "Used the {p} for a dinner party with friends.",
    "Bought it with a gift card from my birthday.",
    "Je l'ai acheté pour mon appartement.",
    "The delivery guy left it at the door.",
    "I'm left-handed, for what it's worth.",
    "It came with two spare parts and a cloth.",
    "The label says it was made overseas.",
    "This is my second {p} from this brand.",
    "Reviewing it {when}, as promised.",
    "The {p} is the {color} version, if that matters.",
)
POSITIVE_TEMPLATES = (
    "The {p} is {good}.",
    "I love this {p}!!",
    "Love it 😀",
    "Excellent quality for the price.",
    "Highly recommend it to anyone.",
    "Works great, five stars.",
    "Works perfectly every single time.",
    "Best {p} I've ever owned!!",
    "Great value, I'd buy it again.",
    "Super happy with it 👍",
    "It's perfect, très bien.",
    "Really impressed with how well the {p} works.",
    "My {who} loves it too.",
    "LOVE IT!!",
    "Excellent, would definitely recommend.",
    "很好, really happy with it.",
    "Not bad at all for the price.",
    "Honestly not bad, not bad at all.",
    "The {p} is not {notbad}.",
    "I wouldn't return it, it's that good.",
    "Wouldn't return it for anything.",
    "No complaints so far.",
    "Can't complain, it does the job well.",
    "Never had a single problem with it.",
    "It didn't break, even after {long}.",
    "Never disappointed, not once.",
    "Don't hesitate, just get the {p}.",
    "No regrets at all, great purchase.",
    "Why didn't I buy this sooner?",
)
NEGATIVE_TEMPLATES = (
    "The {p} is {bad}.",
    "It broke after {dur}.",
    "Mine broke within a week.",
    "Terrible quality, honestly.",
    "Worst {p} I've ever bought.",
    "Never again.",
    "NEVER AGAIN!!",
    "Returned the {p} the next day.",
    "Don't waste your money on this.",
    "Stopped working after {dur} 🙄",
    "Customer service was useless, no refund.",
    "Cheap plastic, feels like it will snap.",
    "Really disappointed, it's junk.",
    "太差了, very disappointed.",
    "Awful, just awful.",
    "It's garbage, très décevant.",
    "The {p} is not {notgood}.",
    "Not worth the price.",
    "Not good, not good at all.",
    "I don't love it, sadly.",
    "I can't recommend the {p}.",
    "Would not recommend it to anyone.",
    "It didn't work right out of the box.",
    "Not great, to be honest.",
    "Why is it so hard to get a refund?",
    "Doesn't work as advertised.",
    "Wouldn't buy it again.",
    "Never worked properly, not even once.",
)
# A mild remark of the other polarity, to make mixed reviews: the overall sentiment still wins.
MILD_NEGATIVE_TEMPLATES = (
    "The cord is a bit short, though.",
    "Wish it came in more colors.",
    "The manual could be clearer.",
    "A little pricey, but fine.",
    "Setup took longer than expected.",
)
MILD_POSITIVE_TEMPLATES = (
    "The color is nice, I'll give it that.",
    "Shipping was quick at least.",
    "The packaging was nice.",
    "It looks nice on the shelf, I guess.",
)


@dataclass(frozen=True)
class _SentencePool:
    """Every sentence a review can use, rendered for every product, with its whitespace word count.

    Kind k has templates[k] templates; variant v of its template t, for product p, is
    strings[offset[k] + p * count[k] + start[k][t] + v], with v < size[k][t].
    """

    strings: pa.Array
    words: np.ndarray
    offset: np.ndarray
    count: np.ndarray
    templates: np.ndarray
    start: tuple[np.ndarray, ...]
    size: tuple[np.ndarray, ...]
    steps: tuple[np.ndarray, ...]
    max_words: int
    min_filler_words: int


def _expand(template: str) -> list[str]:
    """The template with every combination of its slot values filled in, leaving {p} for the product."""
    names = sorted({name for _, name, _, _ in string.Formatter().parse(template) if name and name != "p"})
    return [
        template.format(p="{p}", **dict(zip(names, values, strict=True)))
        for values in itertools.product(*(SLOTS[name] for name in names))
    ]


@functools.lru_cache(maxsize=1)
def _sentence_pool() -> _SentencePool:
    """The rendered sentences, built once per process: a few thousand strings that every review is joined from."""
    kinds = {
        FILLER: FILLER_TEMPLATES,
        OPENER: OPENER_TEMPLATES,
        POSITIVE: POSITIVE_TEMPLATES,
        NEGATIVE: NEGATIVE_TEMPLATES,
        MILD_NEGATIVE: MILD_NEGATIVE_TEMPLATES,
        MILD_POSITIVE: MILD_POSITIVE_TEMPLATES,
    }
    strings, offset, count, starts, sizes, steps = [], [], [], [], [], []
    for kind in sorted(kinds):
        expanded = [_expand(template) for template in kinds[kind]]
        size = np.array([len(variants) for variants in expanded], dtype=np.int32)
        flat = [variant for variants in expanded for variant in variants]
        offset.append(len(strings))
        count.append(len(flat))
        starts.append((np.cumsum(size) - size).astype(np.int32))
        sizes.append(size)
        # Steps coprime with the template count walk a review's templates of one kind without repeating any.
        steps.append(np.array([s for s in range(1, max(2, len(size))) if math.gcd(s, len(size)) == 1]))
        strings.extend(t.replace("{p}", product) for product in PRODUCTS for t in flat)
    words = np.array([len(s.split()) for s in strings], dtype=np.int32)
    filler_words = words[offset[FILLER] : offset[FILLER] + count[FILLER] * len(PRODUCTS)]
    return _SentencePool(
        strings=pa.array(strings, type=pa.string()),
        words=words,
        offset=np.array(offset, dtype=np.int32),
        count=np.array(count, dtype=np.int32),
        templates=np.array([len(size) for size in sizes], dtype=np.int32),
        start=tuple(starts),
        size=tuple(sizes),
        steps=tuple(steps),
        max_words=int(words.max()),
        min_filler_words=int(filler_words.min()),
    )


def _as_count(name: str, value, minimum: int) -> int:
    """An integer argument checked against its minimum; bools and floats are refused rather than coerced."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _day_list(end_date: str, days: int) -> list[str]:
    """The `days` dates ending at end_date, oldest first, as YYYY-MM-DD; only that exact format is accepted."""
    if not isinstance(end_date, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", end_date):
        raise ValueError(f"end_date must be a YYYY-MM-DD string, got {end_date!r}")
    try:
        end = date.fromisoformat(end_date)
        return [(end - timedelta(days=days - 1 - i)).isoformat() for i in range(days)]
    except (ValueError, OverflowError) as e:
        raise ValueError(f"end_date {end_date!r} with days={days} is not a valid date range: {e}") from None


def _dirty_count(rate: float, n: int, floor: int) -> int:
    """rate * n rounded half up, at least floor: seed-independent, so a dataset's dirty-row counts are predictable."""
    return min(n, max(int(rate * n + 0.5), floor))


class _PartWriter:
    """Writes a stream of tables as DIRECTORY/part-NNNNN.parquet files of at most rows_per_file rows each."""

    def __init__(self, directory: str, schema: pa.Schema, rows_per_file: int):
        self.directory = directory
        self.schema = schema
        self.rows_per_file = rows_per_file
        self.row_group_rows = min(rows_per_file, CHUNK_ROWS)
        self.parts = 0
        self._writer = None
        self._rows_in_part = 0
        os.makedirs(directory, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        """Appends the rows, starting the next part file whenever the current one is full."""
        start = 0
        while start < table.num_rows:
            if self._writer is None or self._rows_in_part == self.rows_per_file:
                self._open_next()
            take = min(table.num_rows - start, self.rows_per_file - self._rows_in_part)
            self._writer.write_table(table.slice(start, take), row_group_size=self.row_group_rows)
            self._rows_in_part += take
            start += take

    def _open_next(self) -> None:
        self.close()
        path = os.path.join(self.directory, f"part-{self.parts:05d}.parquet")
        self._writer = pq.ParquetWriter(path, self.schema)
        self._rows_in_part = 0
        self.parts += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _customer_chunk(seed: int, chunk: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """True age and purchase_history of the chunk's n customers; which ones the data hides as null comes later."""
    rng = np.random.default_rng([seed, 1, chunk])
    age = np.minimum(AGE_MIN + np.floor(rng.beta(2.2, 2.8, n) * (AGE_MAX - AGE_MIN + 1)), AGE_MAX)
    spend = np.round(rng.lognormal(SPEND_LOG_MEAN, SPEND_LOG_SIGMA, n), 2)
    spend[rng.random(n) < ZERO_SPEND_RATE] = 0.0
    return age, spend


def _in_range(sorted_positions: np.ndarray, start: int, n: int) -> np.ndarray:
    """The positions in [start, start + n), relative to start."""
    lo, hi = np.searchsorted(sorted_positions, [start, start + n])
    return sorted_positions[lo:hi] - start


def _with_nulls(values: np.ndarray, null_positions: np.ndarray) -> pa.Array:
    """A float64 column with real nulls (not NaN) at the given positions."""
    mask = np.zeros(len(values), dtype=bool)
    mask[null_positions] = True
    return pa.array(values, type=pa.float64(), mask=mask)


def _review_texts(rng: np.random.Generator, positive: np.ndarray) -> pa.Array:
    """Review texts whose sentiment follows `positive`, built TEXT_BATCH rows at a time to bound temporaries."""
    batches = [_text_batch(rng, positive[i : i + TEXT_BATCH]) for i in range(0, len(positive), TEXT_BATCH)]
    return pa.concat_arrays(batches) if batches else pa.array([], type=pa.string())


def _text_batch(rng: np.random.Generator, positive: np.ndarray) -> pa.Array:
    """Review texts whose sentiment sentences follow `positive`, built by joining sentences picked with numpy.

    A review is a row of sentence slots: an optional neutral opener, a sentiment sentence, a few more sentiment
    sentences among the next slots, and neutral filler. It keeps the fewest leading slots whose words reach a
    sampled target length, so lengths stay within [MIN_WORDS, MAX_WORDS] and sentiment comes early.
    """
    pool = _sentence_pool()
    n = len(positive)
    max_target = MAX_WORDS + 1 - pool.max_words
    slots = SENTIMENT_WINDOW + 2 + -(-max_target // pool.min_filler_words)

    target = np.clip(np.rint(rng.lognormal(math.log(38), 0.55, n)), MIN_WORDS, max_target).astype(np.int32)
    sentiments = rng.choice(np.arange(1, 5), size=n, p=SENTIMENT_COUNT_P)
    sentiments[rng.random(n) < NO_SENTIMENT_RATE] = 0
    mixed = (rng.random(n) < MIXED_RATE) & (sentiments >= 2)
    opener = (rng.random(n) < OPENER_RATE) & (target >= 25)

    # Kinds without the opener: slot 0 is sentiment, sentiments - 1 more in slots 1..SENTIMENT_WINDOW.
    kinds = np.full((n, slots), FILLER, dtype=np.int8)
    window_rank = np.argsort(np.argsort(rng.random((n, SENTIMENT_WINDOW)), axis=1), axis=1)
    extra = window_rank < (sentiments - 1)[:, None]
    sentiment_slots = np.concatenate([(sentiments >= 1)[:, None], extra], axis=1)
    main_kind = np.where(positive, POSITIVE, NEGATIVE).astype(np.int8)
    kinds[:, : SENTIMENT_WINDOW + 1] = np.where(sentiment_slots, main_kind[:, None], FILLER)
    last_sentiment = SENTIMENT_WINDOW - np.argmax(sentiment_slots[:, ::-1], axis=1)
    mild_kind = np.where(positive, MILD_NEGATIVE, MILD_POSITIVE).astype(np.int8)
    rows = np.flatnonzero(mixed)
    kinds[rows, last_sentiment[rows]] = mild_kind[rows]
    shifted = np.concatenate([np.full((n, 1), OPENER, dtype=np.int8), kinds[:, :-1]], axis=1)
    kinds = np.where(opener[:, None], shifted, kinds)

    # The i-th sentence of a kind in a review uses template (first + i * step) mod templates, so no template
    # repeats within a review (up to the template count), and a uniformly drawn variant of it.
    product = rng.integers(0, len(PRODUCTS), n, dtype=np.int32)
    variant_draw = rng.random((n, slots), dtype=np.float32)
    choice = np.zeros((n, slots), dtype=np.int32)
    for kind in range(len(pool.count)):
        is_kind = kinds == kind
        rank = np.cumsum(is_kind, axis=1, dtype=np.int32) - 1
        first = rng.integers(0, pool.templates[kind], n, dtype=np.int32)
        step = pool.steps[kind][rng.integers(0, len(pool.steps[kind]), n)].astype(np.int32)
        template = (first[:, None] + rank * step[:, None]) % pool.templates[kind]
        variant = (variant_draw * pool.size[kind][template]).astype(np.int32)
        sentence = pool.offset[kind] + product[:, None] * pool.count[kind] + pool.start[kind][template] + variant
        choice = np.where(is_kind, sentence, choice)

    cumulative = np.cumsum(pool.words[choice], axis=1, dtype=np.int32)
    if not np.all(cumulative[:, -1] >= target):
        raise AssertionError("sentence slots too few for the target length")
    used = (cumulative < target[:, None]).sum(axis=1) + 1
    keep = np.arange(slots) < used[:, None]
    sentences = pool.strings.take(pa.array(choice[keep]))
    offsets = pa.array(np.concatenate([[0], np.cumsum(used)]).astype(np.int32))
    texts = pc.binary_join(pa.ListArray.from_arrays(offsets, sentences), " ")
    lowercase = rng.random(n) < LOWERCASE_RATE
    return pc.if_else(pa.array(lowercase), pc.utf8_lower(texts), texts)


def write_sample_data(
    output: str,
    reviews: int = 3000,
    days: int = 3,
    seed: int = 7,
    customers: int | None = None,
    end_date: str = "2026-11-28",
    rows_per_file: int = 250_000,
) -> dict:
    """Writes OUTPUT/customers/part-NNNNN.parquet and OUTPUT/reviews/dt=YYYY-MM-DD/part-NNNNN.parquet; returns counts.

    The data is a function of the arguments alone (not of the time, and not of rows_per_file, which only splits
    files), so a rerun reproduces it byte for byte. Reviews are spread evenly over `days` days ending at end_date,
    the first days taking one extra when they do not divide evenly. Their text carries the label through
    sentiment phrases, negations included; purchase_history shifts the label probability a little. A few dirty
    rows give a pipeline's reject paths work: reviews of customers that have no customer row, null and blank
    texts, and customers with a null age or purchase_history (rates and floors above DIRTY_FLOOR_REVIEWS).
    Generation and writing go CHUNK_ROWS rows at a time, so millions of reviews fit in a few hundred MB.
    Refuses (FileExistsError) to write into a customers/ or reviews/ directory that already has files, since
    stale parts of an earlier run would mix into this one.
    """
    reviews = _as_count("reviews", reviews, 1)
    days = _as_count("days", days, 1)
    seed = _as_count("seed", seed, 0)
    rows_per_file = _as_count("rows_per_file", rows_per_file, 1)
    customers = max(50, reviews // 5) if customers is None else _as_count("customers", customers, 1)
    if reviews < days:
        raise ValueError(f"reviews ({reviews}) must be >= days ({days}) so every day partition has reviews")
    dates = _day_list(end_date, days)
    if not isinstance(output, str) or not output:
        raise ValueError(f"output must be a non-empty local directory path, got {output!r}")
    if storage.is_remote(output):
        raise ValueError(f"output must be a local path, got {output!r}")
    customers_dir = os.path.join(output, "customers")
    reviews_dir = os.path.join(output, "reviews")
    for directory in (customers_dir, reviews_dir):
        if os.path.isdir(directory) and os.listdir(directory):
            raise FileExistsError(f"{directory} already has files: write sample data to a new or empty output")

    # The dirty rows are placed up front from their own stream, so their counts are exact and chunking-free.
    plan = np.random.default_rng([seed, 0])
    floor = 1 if reviews >= DIRTY_FLOOR_REVIEWS else 0
    rates = (MISSING_CUSTOMER_RATE, NULL_TEXT_RATE, BLANK_TEXT_RATE)
    counts = [_dirty_count(rate, reviews, floor) for rate in rates]
    dirty = plan.choice(reviews, sum(counts), replace=False)
    missing, null_text, blank_text = (np.sort(part) for part in np.split(dirty, np.cumsum(counts)[:-1]))
    floor = 2 if customers >= DIRTY_FLOOR_CUSTOMERS else 0
    null_features = plan.choice(customers, _dirty_count(NULL_FEATURE_RATE, customers, floor), replace=False)
    null_age, null_spend = np.sort(null_features[0::2]), np.sort(null_features[1::2])

    ages = np.empty(customers)
    spends = np.empty(customers)
    writer = _PartWriter(customers_dir, CUSTOMER_SCHEMA, rows_per_file)
    try:
        for chunk, start in enumerate(range(0, customers, CHUNK_ROWS)):
            n = min(CHUNK_ROWS, customers - start)
            age, spend = _customer_chunk(seed, chunk, n)
            ages[start : start + n], spends[start : start + n] = age, spend
            ids = pa.array(np.arange(CUSTOMER_ID_BASE + start, CUSTOMER_ID_BASE + start + n, dtype=np.int64))
            age = _with_nulls(age, _in_range(null_age, start, n))
            spend = _with_nulls(spend, _in_range(null_spend, start, n))
            writer.write(pa.table([ids, age, spend], schema=CUSTOMER_SCHEMA))
    finally:
        writer.close()

    # A customer's pull on the label, and how often they review (heavy buyers write more reviews), come from the
    # true values, also where the customer row hides them as null: the person behind the record still exists.
    spend_z = (np.log1p(spends) - SPEND_LOG_MEAN) / SPEND_LOG_SIGMA
    age_z = (ages - (AGE_MIN + AGE_MAX) / 2) / 15.0
    customer_logit = LOGIT_BASE + LOGIT_SPEND * spend_z + LOGIT_AGE * age_z
    weight = np.sqrt(1.0 + spends)
    review_cdf = np.cumsum(weight) / weight.sum()
    del ages, spends, spend_z, age_z, weight

    per_day = [reviews // days + (1 if d < reviews % days else 0) for d in range(days)]
    day_start = 0
    for d, (day, day_count) in enumerate(zip(dates, per_day, strict=True)):
        writer = _PartWriter(partition_path(reviews_dir, day), REVIEW_SCHEMA, rows_per_file)
        try:
            for chunk, offset in enumerate(range(0, day_count, CHUNK_ROWS)):
                n = min(CHUNK_ROWS, day_count - offset)
                start = day_start + offset
                rng = np.random.default_rng([seed, 2, d, chunk])
                who = np.minimum(np.searchsorted(review_cdf, rng.random(n), side="right"), customers - 1)
                positive = rng.random(n) < 1.0 / (1.0 + np.exp(-customer_logit[who]))
                label = (positive ^ (rng.random(n) < LABEL_NOISE)).astype(np.int64)
                customer_id = CUSTOMER_ID_BASE + who.astype(np.int64)
                gone = _in_range(missing, start, n)
                customer_id[gone] = CUSTOMER_ID_BASE + customers + rng.integers(0, 10 * customers + 1000, len(gone))
                text = _review_texts(rng, positive)
                blank = _in_range(blank_text, start, n)
                if len(blank):
                    mask = np.zeros(n, dtype=bool)
                    mask[blank] = True
                    fill = pa.array([BLANK_TEXTS[i] for i in rng.integers(0, len(BLANK_TEXTS), len(blank))])
                    text = pc.replace_with_mask(text, pa.array(mask), fill)
                nulls = _in_range(null_text, start, n)
                if len(nulls):
                    mask = np.zeros(n, dtype=bool)
                    mask[nulls] = True
                    text = pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), text)
                review_id = np.arange(REVIEW_ID_BASE + start, REVIEW_ID_BASE + start + n, dtype=np.int64)
                columns = [
                    pa.array(review_id),
                    pa.array(customer_id),
                    text,
                    pa.array(label),
                    pa.array(np.full(n, day, dtype=object), type=pa.string()),
                ]
                writer.write(pa.table(columns, schema=REVIEW_SCHEMA))
        finally:
            writer.close()
        day_start += day_count

    return {"customers": customers, "reviews": reviews, "days": dates, "output": output}
