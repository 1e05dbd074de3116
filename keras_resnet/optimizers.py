"""`keras.optimizers.SGD` with its momentum update as one TensorFlow kernel.

Keras 3 writes SGD's momentum step as separate ops over every variable
(`m * momentum`, `g * lr`, a subtraction, an assign, an add to the variable),
each streaming the whole tensor through memory. On the TensorFlow backend,
`SGD` here runs the same arithmetic as one `ResourceApplyKerasMomentum` per
variable, TensorFlow's kernel for exactly Keras's update rule:

    accum = accum * momentum - lr * grad
    var  += accum                              (plain momentum)
    var  += accum * momentum - lr * grad       (nesterov=True)

Everything else is Keras's `SGD`: config, weight decay, clipping, EMA,
gradient accumulation, checkpoints and `model.save` round trips. Other
backends, `momentum=0` and sparse gradients take Keras's own update.
"""

import keras

_PACKAGE = "keras_resnet"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SGD(keras.optimizers.SGD):
    """Drop-in `keras.optimizers.SGD` whose momentum step is one fused kernel.

    Same arguments and results as `keras.optimizers.SGD` (to float rounding);
    see the module docstring for what is fused and when it falls back.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        # `variable` is the tf.Variable (Keras unwraps it; under a
        # tf.distribute strategy, this replica's component) and `accum` a
        # Keras variable whose handle resolves to the same replica.
        accum = self.momentums[self._get_variable_index(variable)]
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=accum.handle, lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
            use_locking=False, use_nesterov=self.nesterov)
