"""Fine-tuning done right by construction.

Three Keras pitfalls (see keras-io `guides/transfer_learning.py`) are handled here:

1. BatchNorm: a frozen layer must run in inference mode. In Keras 3 a
   `BatchNormalization` with `trainable=False` does, so freezing a stage
   (setting `trainable=False` on its blocks) freezes its moving statistics too;
   `freeze_batchnorm=True` keeps every BatchNorm frozen for the whole run.
2. Recompiling: changing `trainable` inside `fit` only takes effect once the
   compiled step is rebuilt; `GradualUnfreezing` does it. The optimizer is
   built over *all* weights at the start of `fit` (the model is fully trainable
   then), so unfreezing later never meets an unknown variable, and its state
   round-trips through `BackupAndRestore`.
3. One learning rate for everything: `DiscriminativeLearningRates` scales each
   stage's learning rate inside the optimizer's update (exact for any optimizer).

Stages are named `stem`, `conv2` ... `conv5` (CIFAR nets: `conv2`..`conv4`) and
`head` (classifier, and the final BatchNorm of pre-activation nets).
"""

import os

import keras
import numpy as np

from keras_resnet import compat
from keras_resnet import layers as blocks

HEAD_LAYERS = ("avg_pool", "max_pool", "head_dropout", "predictions", "predictions_activation",
               "post_bn", "post_relu")


def stage_of(layer_name):
    """`conv3_block2` -> `conv3`; `conv1_*`/`pool1_*` -> `stem`; classifier -> `head`."""
    if layer_name in HEAD_LAYERS or layer_name.startswith("new_head"):
        return "head"
    prefix = layer_name.split("_")[0]
    if prefix in ("conv1", "pool1", "preprocessing", "image"):
        return "stem"
    if prefix.startswith("conv") and prefix[4:].isdigit():
        return prefix
    return "stem"


def stage_names(model):
    """The model's stages from the input to the head, e.g. `['stem', 'conv2', ..., 'head']`."""
    names = []
    for layer in model.layers:
        stage = stage_of(layer.name)
        if stage not in names:
            names.append(stage)
    if "head" in names:  # the head is always last
        names.remove("head")
        names.append("head")
    return names


def set_trainable_stages(model, stages, freeze_batchnorm=False):
    """Makes exactly `stages` trainable (`"all"` for every stage).

    Frozen stages' BatchNorm layers run in inference mode (Keras 3 semantics of
    `trainable=False`), so their moving statistics stay untouched.

    Returns:
        The sorted list of trainable stages.
    """
    known = stage_names(model)
    wanted = set(known) if stages == "all" else set(stages)
    unknown = wanted - set(known)
    if unknown:
        raise ValueError(f"Unknown stage names {sorted(unknown)}. Received: stages={stages!r}. "
                         f"Valid: {known} or 'all'.")
    for layer in model.layers:
        layer.trainable = stage_of(layer.name) in wanted
    if freeze_batchnorm:
        for layer in blocks.walk_layers(model):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return [s for s in known if s in wanted]


def gradual_schedule(model, epochs_per_stage=1, head_epochs=1):
    """Head only for `head_epochs`, then one more stage (from the top) every `epochs_per_stage`."""
    order = [s for s in reversed(stage_names(model)) if s != "head"]
    schedule = {0: ["head"]}
    trainable = ["head"]
    epoch = head_epochs
    for stage in order:
        trainable = trainable + [stage]
        schedule[epoch] = list(trainable)
        epoch += epochs_per_stage
    return schedule


class GradualUnfreezing(keras.callbacks.Callback):
    """Applies `{epoch: [trainable stages]}` at the start of each epoch inside `fit`.

    The stages listed for the largest key <= epoch are trainable; keys are
    epochs (0-based). The schedule is a pure function of the epoch, so a run
    resumed by `BackupAndRestore` at epoch e gets the stages of epoch e.

    Args:
        schedule: Dict `{epoch: list of stage names or "all"}`, or `"gradual"`
            for `gradual_schedule(model)`.
        freeze_batchnorm: Keep every BatchNorm in inference mode throughout.
    """

    def __init__(self, schedule="gradual", freeze_batchnorm=False, verbose=1):
        super().__init__()
        self.schedule = schedule
        self.freeze_batchnorm = freeze_batchnorm
        self.verbose = verbose
        self.current = None

    def _resolved(self):
        if self.schedule == "gradual":
            return gradual_schedule(self.model)
        schedule = {int(k): v for k, v in dict(self.schedule).items()}
        if 0 not in schedule:
            raise ValueError(f"The unfreezing schedule must say what trains at epoch 0. "
                             f"Received: schedule={self.schedule!r}")
        return schedule

    def stages_for_epoch(self, epoch):
        schedule = self._resolved()
        return schedule[max(k for k in schedule if k <= epoch)]

    def on_train_begin(self, logs=None):
        opt = self.model.optimizer
        if opt is not None and not opt.built:
            # Build over every weight now, while the model is fully trainable;
            # Keras would otherwise build it lazily over the epoch-0 subset.
            opt.build(self.model.trainable_variables)
        if opt is not None and opt.built:
            known = compat.optimizer_tracked_count(opt)
            total = len(self.model.weights) - len(self.model.non_trainable_weights)
            if known < total:
                raise ValueError(
                    "GradualUnfreezing needs an optimizer built over every weight: make the whole "
                    "model trainable before compile() and fit() (the callback freezes at epoch 0).")

    def on_epoch_begin(self, epoch, logs=None):
        stages = self.stages_for_epoch(epoch)
        if stages == self.current:
            return
        applied = set_trainable_stages(self.model, stages, self.freeze_batchnorm)
        self.current = stages
        # The compiled step captured the old trainable set: rebuild it.
        self.model.make_train_function(force=True)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: trainable stages {applied}")


def _variable_stage_multipliers(model, multipliers):
    """Maps each trainable variable's path to its stage multiplier."""
    per_var = {}
    for layer in model.layers:
        m = float(multipliers.get(stage_of(layer.name), 1.0))
        for w in layer.weights:
            per_var[w.path] = m
    return per_var


def resolve_multipliers(model, spec):
    """`{"conv5": 1.0, ...}` as is, or `"decay:0.5"`: head 1, last stage 0.5, next 0.25..."""
    if isinstance(spec, str):
        if not spec.startswith("decay:"):
            raise ValueError(f"Invalid stage multipliers. Received: {spec!r}. Use 'decay:F' or a dict.")
        factor = float(spec.split(":", 1)[1])
        if not 0 < factor <= 1:
            raise ValueError(f"The decay factor must be in (0, 1]. Received: {spec!r}")
        order = list(reversed(stage_names(model)))  # head first
        return {stage: factor ** i for i, stage in enumerate(order)}
    spec = {str(k): float(v) for k, v in dict(spec).items()}
    unknown = set(spec) - set(stage_names(model))
    if unknown:
        raise ValueError(f"Unknown stage names {sorted(unknown)} in the learning-rate multipliers. "
                         f"Valid: {stage_names(model)}")
    if any(v < 0 for v in spec.values()):
        raise ValueError(f"Learning-rate multipliers must be >= 0. Received: {spec}")
    return spec


def apply_stage_learning_rates(optimizer, model, multipliers):
    """Patches `optimizer` so each variable's step uses `lr * multiplier[stage]`
    (`keras_resnet.optimizers.scale_learning_rates`, group `"stages"`)."""
    from keras_resnet.optimizers import scale_learning_rates

    per_path = _variable_stage_multipliers(model, resolve_multipliers(model, multipliers))
    scale_learning_rates(optimizer, model, per_path, group="stages")
    return per_path


class DiscriminativeLearningRates(keras.callbacks.Callback):
    """Per-stage learning-rate multipliers for a plain `model.fit`.

    Args:
        multipliers: `{"head": 1.0, "conv5": 0.5, ...}` (missing stages: 1.0),
            or `"decay:0.5"` (each stage from the head down gets half the rate
            of the one above).
    """

    def __init__(self, multipliers="decay:0.5"):
        super().__init__()
        self.multipliers = multipliers

    def set_model(self, model):
        super().set_model(model)
        if model.optimizer is None:
            raise ValueError("DiscriminativeLearningRates needs a compiled model.")
        apply_stage_learning_rates(model.optimizer, model, self.multipliers)

    def on_train_begin(self, logs=None):
        # The compiled step may have been traced before the patch.
        self.model.make_train_function(force=True)


def replace_head(model, num_classes, classifier_activation="softmax", dropout_rate=0.0, name=None):
    """A new model: `model`'s backbone (shared weights) with a fresh classifier.

    Args:
        model: A keras_resnet model, with or without top.
        num_classes: Classes of the new head.
        classifier_activation: `softmax` or `None` for logits.
        dropout_rate: Dropout before the new classifier.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"`num_classes` must be a positive int. Received: num_classes={num_classes!r}")
    features = None
    for layer in model.layers:
        if layer.name in ("avg_pool", "max_pool", "head_dropout", "predictions", "predictions_activation"):
            break
        features = layer.output
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features)
    if dropout_rate:
        x = keras.layers.Dropout(dropout_rate, name="head_dropout")(x)
    x = keras.layers.Dense(num_classes, name="predictions")(x)
    x = keras.layers.Activation(classifier_activation or "linear", dtype="float32",
                                name="predictions_activation")(x)
    return keras.Model(model.inputs, x, name=name or model.name)


def load_backbone(model, source, include_head=False):
    """Copies every matching backbone weight from `source` into `model`.

    Args:
        model: The keras_resnet model to fill (typically with a new `num_classes`).
        source: A `keras.Model`; `"imagenet"` (keras.applications, `_v1`/`_v2`
            layouts); a tag of `model.name` (`"torchvision_v2"`, `"timm_a1"`:
            `keras_resnet.weights.list_pretrained()`); an http(s) URL; or a
            `.keras`, `.weights.h5`, `.safetensors` or `.pth` file. Tags and
            torch checkpoints warn when `model` does not normalise its input
            with the weights' mean/std (`train` builds it so).
        include_head: Also copy the classifier (`predictions`) when its shape
            matches. Off by default: a fine-tune to new classes wants a freshly
            initialised head, not one trained to recognise the old classes
            (which, with the same class count, would otherwise be copied
            silently).

    Returns:
        The names of the layers whose weights were copied.
    """
    from keras_resnet.weights import port_weights

    exclude = () if include_head else ("predictions",)
    if isinstance(source, keras.Model):
        return port_weights(source, model, exclude=exclude)
    if source == "imagenet":
        from keras_resnet.weights import keras_applications_name

        app = getattr(keras.applications, keras_applications_name(model))(weights="imagenet", include_top=True)
        return port_weights(app, model, exclude=exclude)
    source = os.fspath(source)
    if source.endswith(".keras"):
        return port_weights(keras.saving.load_model(source, compile=False, safe_mode=True), model, exclude=exclude)
    if source.endswith(".weights.h5"):
        # A weights file holds the whole model: load it all, then put the fresh head back.
        head = [l for l in model.layers if l.name == "predictions" and l.weights]
        fresh = [l.get_weights() for l in head]
        model.load_weights(source)
        if not include_head:
            for layer, values in zip(head, fresh):
                layer.set_weights(values)
        return [layer.name for layer in model.layers
                if layer.weights and (include_head or layer.name != "predictions")]
    # Tags, URLs and torch checkpoints: every tensor by name (keras_resnet.weights.torch_convert).
    from keras_resnet.weights import loading

    return [name for name in loading.load(model, source, skip_head="auto" if include_head else True)
            if include_head or name != "predictions"]


def recalibrate_batchnorm(model, dataset, steps=50):
    """Re-estimates every BatchNorm's moving statistics on `steps` batches.

    Use after fine-tuning with frozen statistics, or after changing the input
    resolution. Moving means/variances become the exact average of the batch
    statistics (cumulative, not exponential). Other weights are unchanged.

    Returns:
        The number of batches used.
    """
    bns = [l for l in blocks.walk_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    if not bns:
        return 0
    saved = [(bn.trainable, bn.momentum) for bn in bns]
    trainable_state = [(l, l.trainable) for l in blocks.walk_layers(model)]
    for bn in bns:
        bn.trainable = True  # frozen BN would ignore training=True
        bn.moving_mean.assign(np.zeros(bn.moving_mean.shape, "float32"))
        bn.moving_variance.assign(np.ones(bn.moving_variance.shape, "float32"))
    used = 0
    try:
        for images in dataset.take(steps):
            if isinstance(images, (tuple, list)):
                images = images[0]
            for bn in bns:
                # moving = moving * k/(k+1) + batch/(k+1): the running mean of batch stats.
                bn.momentum = used / (used + 1.0)
            model(images, training=True)
            used += 1
    finally:
        for bn, (trainable, momentum) in zip(bns, saved):
            bn.momentum = momentum
        for layer, trainable in trainable_state:
            layer.trainable = trainable
    return used


def finetune_callbacks(config):
    """The callbacks `train()` adds for a fine-tuning config."""
    cbs = []
    if config.stage_lr_multipliers:
        cbs.append(DiscriminativeLearningRates(config.stage_lr_multipliers))
    if config.unfreeze_schedule:
        cbs.append(GradualUnfreezing(config.unfreeze_schedule, config.freeze_batchnorm))
    return cbs
