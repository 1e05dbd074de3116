"""Keras's SGD, Adam and AdamW with each variable's update as one TensorFlow kernel.

Keras 3 writes an optimizer step as separate ops over every variable (SGD's
momentum step is five: `m * momentum`, `g * lr`, a subtraction, an assign, an
add; Adam's about ten), each streaming the whole tensor through memory. On the
TensorFlow backend these classes run the same arithmetic as one TensorFlow
training kernel per variable, the kernels written for exactly these rules:

    SGD:   ResourceApplyKerasMomentum
           accum = accum * momentum - lr * grad
           var  += accum                              (plain momentum)
           var  += accum * momentum - lr * grad       (nesterov=True)
    Adam, AdamW:  ResourceApplyAdam
           alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
           m += (grad - m) * (1 - beta_1);  v += (grad^2 - v) * (1 - beta_2)
           var -= alpha * m / (sqrt(v) + epsilon)

Everything else is Keras's optimizer: config, (decoupled) weight decay,
clipping, EMA, gradient accumulation, loss scaling, checkpoints and
`model.save` round trips. Other backends, SGD without momentum, AMSGrad and
sparse gradients take Keras's own update.
"""

import keras

from keras_resnet import compat

_PACKAGE = "keras_resnet"


def _dense_tf_update(gradient):
    """True when the fused TensorFlow kernels apply (TF backend, dense gradient)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not isinstance(gradient, tf.IndexedSlices)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SGD(keras.optimizers.SGD):
    """Drop-in `keras.optimizers.SGD` whose momentum step is one fused kernel.

    Same arguments and results as `keras.optimizers.SGD` (to float rounding);
    see the module docstring for what is fused and when it falls back.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.momentum == 0 or not _dense_tf_update(gradient):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        # `variable` is the tf.Variable (Keras unwraps it; under a
        # tf.distribute strategy, this replica's component) and `accum` a
        # Keras variable whose handle resolves to the same replica.
        (accum,) = compat.optimizer_slots(self, variable, "momentums")
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=accum.handle, lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype),
            use_locking=False, use_nesterov=self.nesterov)


class _FusedAdamStep:
    """`update_step` of Keras's Adam as one `ResourceApplyAdam` (mixed into Adam, AdamW)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not _dense_tf_update(gradient):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        dtype = variable.dtype
        m, v = compat.optimizer_slots(self, variable, "momentums", "velocities")
        local_step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=m.handle, v=v.handle,
            beta1_power=tf.pow(beta_1, local_step), beta2_power=tf.pow(beta_2, local_step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
            use_locking=False, use_nesterov=False)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Adam(_FusedAdamStep, keras.optimizers.Adam):
    """Drop-in `keras.optimizers.Adam` whose step is one fused kernel per variable."""


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """Drop-in `keras.optimizers.AdamW` (decoupled weight decay as in Keras) whose
    Adam step is one fused kernel per variable."""
