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


# ------------------------------------------------------- per-variable learning rates
def scale_learning_rates(optimizer, model, multipliers, group="default"):
    """Makes `optimizer` step each variable of `model` with `lr * multiplier`.

    Keras optimizers have one learning rate. Fine-tuning wants one per stage
    (`keras_resnet.finetune`), fast CIFAR recipes a larger one for BatchNorm
    biases (`batchnorm_bias_multipliers`). The multiplier scales the learning
    rate handed to `update_step`, not the gradient (which Adam would normalise
    away), so it is exact for any optimizer.

    Args:
        optimizer: A Keras optimizer (compiled into `model` or not).
        model: The model whose variables `multipliers` names.
        multipliers: `{variable.path: float}`; unnamed variables keep 1.
        group: Multipliers are kept per group and multiplied across groups;
            calling again with the same group replaces that group's values
            (callbacks may run `set_model` more than once).

    Returns:
        `{variable.path: effective multiplier}` over every group.
    """
    for path, m in multipliers.items():
        if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
            raise ValueError(f"Learning-rate multipliers must be numbers >= 0. Received: {path}={m!r}")
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer,
    # which calls its inner optimizer's update: patch that one.
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    state = getattr(optimizer, "_keras_resnet_lr_state", None)
    if state is None:
        state = _MultiplierState()
        original = type(optimizer).update_step

        def update_step(self, gradient, variable, learning_rate):
            m = state.by_key.get(compat.optimizer_variable_key(self, variable), 1.0)
            if m != 1.0:
                learning_rate = learning_rate * keras.ops.cast(m, learning_rate.dtype)
            return original(self, gradient, variable, learning_rate)

        import types

        optimizer.update_step = types.MethodType(update_step, optimizer)
        optimizer._keras_resnet_lr_state = state
    state.groups[group] = {path: float(m) for path, m in multipliers.items()}
    effective = {}
    for values in state.groups.values():
        for path, m in values.items():
            effective[path] = effective.get(path, 1.0) * m
    # update_step sees backend variables: key them the way the optimizer does.
    state.by_key = {compat.optimizer_variable_key(optimizer, w): effective[w.path]
                    for w in model.weights if w.path in effective}
    state.effective = effective
    return dict(effective)


class _MultiplierState:
    """The multipliers an optimizer was given (a plain object: Keras would copy
    a dict attribute into a tracked structure, and later edits would miss it)."""

    def __init__(self):
        self.groups = {}
        self.by_key = {}
        self.effective = {}


def batchnorm_bias_multipliers(model, multiplier):
    """`{path: multiplier}` for the bias (`beta`) of every BatchNorm in `model`.

    A large BatchNorm-bias learning rate (64x in Page's and Jordan's fast
    CIFAR-10 recipes) lets the biases, which set each channel's ReLU
    threshold, move as fast as the normalised activations around them.
    """
    from keras_resnet.layers import walk_layers

    return {layer.beta.path: float(multiplier) for layer in walk_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.center}
