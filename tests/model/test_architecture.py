"""The built model matches the specified two-input architecture, layer by layer."""

import pytest

from model.architecture import NUMERIC_INPUT, TEXT_INPUT, ModelSpec, build_model


@pytest.fixture(scope="module")
def model():
    return build_model()


def test_inputs_are_numeric_then_text_with_names_shapes_and_dtypes(model):
    numeric, text = model.inputs
    assert (numeric.name, tuple(numeric.shape), numeric.dtype) == (NUMERIC_INPUT, (None, 2), "float32")
    assert (text.name, tuple(text.shape), text.dtype) == (TEXT_INPUT, (None, 50), "int32")


def test_layers_types_and_units(model):
    layers = {layer.name: layer for layer in model.layers}
    assert [layers[n].units for n in ("numeric_dense_0", "numeric_dense_1")] == [16, 8]
    assert layers["embedding"].input_dim == 10000 and layers["embedding"].output_dim == 16
    assert layers["lstm"].__class__.__name__ == "LSTM" and layers["lstm"].units == 32
    assert layers["concat"].__class__.__name__ == "Concatenate"
    assert layers["head_dense"].units == 16 and layers["head_dense"].activation.__name__ == "relu"
    assert layers["sentiment"].units == 1 and layers["sentiment"].activation.__name__ == "sigmoid"
    assert tuple(model.outputs[0].shape) == (None, 1)


def test_compiled_with_adam_binary_crossentropy_accuracy_and_auc(model):
    config = model.get_compile_config()
    assert config["optimizer"]["class_name"] == "Adam"
    assert config["loss"] == "binary_crossentropy"
    metrics = [m if isinstance(m, str) else m["config"]["name"] for m in config["metrics"]]
    assert metrics == ["accuracy", "auc"]


def test_parameterized_spec_changes_sizes():
    small = build_model(ModelSpec(numeric_features=3, sequence_length=20, vocab_size=500))
    assert tuple(small.inputs[0].shape) == (None, 3)
    assert tuple(small.inputs[1].shape) == (None, 20)
    assert small.get_layer("embedding").input_dim == 500


def test_spec_round_trips_through_dict():
    spec = ModelSpec(numeric_units=(4, 2), lstm_units=8)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(TypeError):
        ModelSpec.from_dict({"no_such_size": 1})
