"""Fast in-process inference from a snapshot of a model's weights.

A keras_resnet model in inference mode folds every BatchNorm into the
convolution before it (`layers.folded_conv_batchnorm`), but does so on every
call, from the variables, because training or fine-tuning may change them
between two calls. When the weights are fixed, as in batch scoring, evaluation
or an in-process service, that per-call work is waste: on ResNet-50 in float32
on a 2-core CPU the fold's multiplies and the Winograd filter transforms were
~7% of each batch (benchmarks/profile_resnet50.py). `InferenceSnapshot` does
them once. (The SavedModel from `keras_resnet.export` gets the same effect by
constant folding, for TF Serving.)
"""

import numpy as np

from keras_resnet import layers as _layers


class InferenceSnapshot:
    """`model(x, training=False)` as a `tf.function` over weights read once.

    The BatchNorms are folded into their convolutions, and the 3x3 filters of
    the Winograd convolutions (float32, CPU) transformed, when the snapshot is
    made; calls then reuse them. The outputs equal `model.predict`'s up to
    float rounding.

    The weights are read when the snapshot is created, into a private copy of
    the model (`keras.models.clone_model`): after training further or loading
    other weights, call `refresh()` (or make a new snapshot), or the old weights
    keep being used, all of them. Holds that copy plus the folded weights (about
    2.5x the model's size for a float32 ResNet-50). A model `clone_model` cannot
    copy (a subclassed model without `get_config`) is used as it is, with a
    warning: then only the folded convolutions are frozen.

    Example:

        predict = keras_resnet.InferenceSnapshot(model)
        probabilities = predict(images)                 # a batch, as a tf.Tensor
        probabilities = predict.predict(x, batch_size=64)  # arrays or a tf.data.Dataset

    Args:
        model: a Keras model, typically a keras_resnet one (any other model
            works too, just without the folding).
    """

    def __init__(self, model):
        import keras

        if not isinstance(model, keras.Model):
            raise TypeError(f"InferenceSnapshot expects a keras.Model. Received: model={model!r}")
        self.model = model
        self.refresh()

    def refresh(self):
        """Reads the model's weights again (after training or `load_weights`)."""
        import tensorflow as tf

        self._frozen = _private_copy(self.model)
        self._folded = {}
        # Traced per input shape (a static batch size lets each block pick
        # Winograd or direct convolutions at trace time); all traces share `_folded`.
        self._function = tf.function(self._call)
        # One throwaway trace now, batch size unknown (so every path of every
        # block), reads the weights here rather than at the first call.
        inputs = getattr(self._frozen, "inputs", None)
        if inputs and len(inputs) == 1:
            tf.function(self._call).get_concrete_function(
                tf.TensorSpec((None,) + tuple(inputs[0].shape[1:]), inputs[0].dtype))
        return self

    def _call(self, x):
        with _layers.snapshot_weights(self._folded):
            return self._frozen(x, training=False)

    def __call__(self, x):
        """The model's output for one batch `x` (a tensor or array), as a tf.Tensor."""
        return self._function(x)

    def predict(self, x, batch_size=32):
        """The outputs for `x`, a NumPy array (or tensor) of inputs or a
        `tf.data.Dataset` of batches (of inputs or `(inputs, labels)` pairs), as
        one NumPy array."""
        import tensorflow as tf

        if isinstance(x, tf.data.Dataset):
            batches = (element[0] if isinstance(element, (tuple, list)) else element
                       for element in x)
        else:
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer. Received: "
                                 f"batch_size={batch_size!r}")
            batches = (x[start:start + batch_size] for start in range(0, len(x), batch_size))
        outputs = [np.asarray(self._function(tf.convert_to_tensor(batch))) for batch in batches]
        if not outputs:
            raise ValueError("InferenceSnapshot.predict received no inputs (an empty array "
                             "or dataset).")
        return np.concatenate(outputs, axis=0)


def _private_copy(model):
    """`model` with its own copy of the weights, which training `model` cannot change."""
    import warnings

    import keras

    try:
        copy = keras.models.clone_model(model)
    except Exception as error:  # noqa: BLE001 - any failure: fall back, and say why
        warnings.warn(f"InferenceSnapshot could not copy the model ({type(error).__name__}: "
                      f"{error}); it runs the model itself, so weights outside the folded "
                      "convolutions are read at every call.", stacklevel=3)
        return model
    copy.set_weights(model.get_weights())
    return copy
