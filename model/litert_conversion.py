"""The Keras model converted to a LiteRT flatbuffer of builtin ops, for the litert runtime (no TensorFlow to run it)."""

from __future__ import annotations

import functools
import tempfile

from model.architecture import NUMERIC_INPUT, TEXT_INPUT

# The LiteRT flatbuffer's fixed batch dimension (LSTMs convert to builtin ops only with static shapes): rows per call.
LITERT_BATCH_SIZE = 4096


def convert_to_litert(
    model, features: int, sequence_length: int, batch_size: int = LITERT_BATCH_SIZE, quantize: bool = False
) -> bytes:
    """The Keras model as a LiteRT flatbuffer of builtin ops only (no TensorFlow needed to run it), through a
    SavedModel with a fixed-shape signature, the path TensorFlow documents for Keras 3. quantize: dynamic-range
    quantization (int8 weights, float activations), measured and not adopted (benchmarks/int8_trial.py)."""
    import tensorflow as tf
    from keras.export import ExportArchive

    signature = [
        [
            tf.TensorSpec([batch_size, features], tf.float32, name=NUMERIC_INPUT),
            tf.TensorSpec([batch_size, sequence_length], tf.int32, name=TEXT_INPUT),
        ]
    ]
    with tempfile.TemporaryDirectory(prefix="litert-export-") as saved_model:
        archive = ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False), input_signature=signature)
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()
