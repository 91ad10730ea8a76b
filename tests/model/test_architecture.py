"""The built model has the two-input signature bundles are checked against and one score in [0, 1] per row."""

import pytest

from model.architecture import NUMERIC_INPUT, TEXT_INPUT, ModelSpec, build_model


@pytest.fixture(scope="module")
def model():
    return build_model()


def test_inputs_are_numeric_then_text_with_names_shapes_and_dtypes(model):
    numeric, text = model.inputs
    assert (numeric.name, tuple(numeric.shape), numeric.dtype) == (NUMERIC_INPUT, (None, 2), "float32")
    assert (text.name, tuple(text.shape), text.dtype) == (TEXT_INPUT, (None, 50), "int32")


def test_the_output_is_one_sigmoid_score_per_row(model):
    # What scoring relies on: one score per row, squashed into [0, 1]. The layers in between are the architecture
    # module's own business (a test restating each Keras layer and the compile settings would only repeat it).
    assert tuple(model.outputs[0].shape) == (None, 1)
    assert model.layers[-1].activation.__name__ == "sigmoid"


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
