"""Every Keras/TensorFlow internal keras_resnet uses still exists (keras_resnet.compat)."""

import keras

from keras_resnet import compat


def test_call_count_counts_symbolic_calls():
    layer = keras.layers.Dense(2)
    a, b = keras.Input((3,)), keras.Input((3,))
    assert compat.call_count(layer) == 0
    layer(a)
    assert compat.call_count(layer) == 1
    layer(b)
    assert compat.call_count(layer) == 2
