"""The two-input sentiment model: a numeric branch and a text branch joined before a sigmoid."""

from __future__ import annotations

from dataclasses import asdict, dataclass

NUMERIC_INPUT = "numeric_input"
TEXT_INPUT = "text_input"


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the architecture; the defaults are the production model."""

    numeric_features: int = 2
    sequence_length: int = 50
    vocab_size: int = 10000
    embedding_dim: int = 16
    numeric_units: tuple[int, ...] = (16, 8)
    lstm_units: int = 32
    head_units: int = 16
    learning_rate: float = 1e-3

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        data = dict(data)
        if "numeric_units" in data:
            data["numeric_units"] = tuple(data["numeric_units"])
        return cls(**data)


def build_model(spec: ModelSpec | None = None):
    """Builds and compiles the two-input model: inputs are [numeric, text] in that order."""
    import keras

    spec = spec or ModelSpec()
    numeric = keras.Input(shape=(spec.numeric_features,), dtype="float32", name=NUMERIC_INPUT)
    text = keras.Input(shape=(spec.sequence_length,), dtype="int32", name=TEXT_INPUT)

    x = numeric
    for i, units in enumerate(spec.numeric_units):
        x = keras.layers.Dense(units, activation="relu", name=f"numeric_dense_{i}")(x)
    t = keras.layers.Embedding(spec.vocab_size, spec.embedding_dim, name="embedding")(text)
    t = keras.layers.LSTM(spec.lstm_units, name="lstm")(t)
    h = keras.layers.Concatenate(name="concat")([x, t])
    h = keras.layers.Dense(spec.head_units, activation="relu", name="head_dense")(h)
    out = keras.layers.Dense(1, activation="sigmoid", name="sentiment")(h)

    model = keras.Model(inputs=[numeric, text], outputs=out, name="review_sentiment")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec.learning_rate),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    return model
