"""Fitting the two-input model on featurized arrays, deterministically for a seed."""

from __future__ import annotations

import numpy as np

from model.architecture import ModelSpec, build_model


def set_determinism(seed: int) -> None:
    """Seeds Python, numpy and TensorFlow and asks TensorFlow for deterministic kernels."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit_model(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray, np.ndarray],
    spec: ModelSpec | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    patience: int = 2,
    seed: int = 7,
    verbose: int = 0,
):
    """Fits on (numeric, tokens, labels) with early stopping on validation AUC; returns (model, metrics)."""
    import keras

    set_determinism(seed)
    model = build_model(spec)
    (x_num, x_txt, y), (v_num, v_txt, v_y) = train, validation
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=patience, restore_best_weights=True)
    ]
    history = model.fit(
        [x_num, x_txt],
        y.astype(np.float32),
        validation_data=([v_num, v_txt], v_y.astype(np.float32)),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    train_eval = model.evaluate([x_num, x_txt], y.astype(np.float32), verbose=0, return_dict=True)
    val_eval = model.evaluate([v_num, v_txt], v_y.astype(np.float32), verbose=0, return_dict=True)
    metrics = {
        "epochs_run": len(history.history["loss"]),
        "train_rows": int(len(y)),
        "validation_rows": int(len(v_y)),
        **{f"train_{k}": float(v) for k, v in train_eval.items()},
        **{f"val_{k}": float(v) for k, v in val_eval.items()},
    }
    return model, metrics
