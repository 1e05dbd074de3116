"""`.keras` files written by an earlier release still load and compute the same.

tests/fixtures/release_0_1_0/ holds small models of every block, shortcut and
stem kind written by keras_resnet 0.1.0 (make_release_fixtures.py says how),
with every weight randomised and the outputs that release computed. They load
here in a process whose global policy is float32.
"""

import json
import pathlib

import keras
import numpy as np
import pytest

import keras_resnet  # noqa: F401  (registers the layers)

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "release_0_1_0"
INDEX = json.loads((FIXTURES / "index.json").read_text())["models"]
# float32: float rounding (the computation may be ordered differently);
# mixed_bfloat16: bf16 rounding (8-bit mantissa) over the net's layers.
TOLERANCE = {"float32": 1e-5, "mixed_bfloat16": 5e-2}


@pytest.mark.parametrize("name", sorted(INDEX))
def test_release_0_1_0_file_loads_and_gives_the_same_outputs(name):
    outputs = np.load(FIXTURES / "outputs.npz")
    model = keras.saving.load_model(FIXTURES / f"{name}.keras")
    assert model.count_params() == INDEX[name]["params"]
    got = np.asarray(model(outputs["x"], training=False), "float32")
    expected = outputs[name]
    scale = max(1.0, float(np.max(np.abs(expected))))
    assert np.max(np.abs(got - expected)) <= TOLERANCE[INDEX[name]["policy"]] * scale
    assert np.array_equal(np.argmax(got, -1), np.argmax(expected, -1))
    # It also predicts through model.predict (a traced graph).
    np.testing.assert_allclose(model.predict(outputs["x"], verbose=0), got,
                               atol=TOLERANCE[INDEX[name]["policy"]] * scale)
