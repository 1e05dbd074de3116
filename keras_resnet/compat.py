"""The one place for Keras and TensorFlow internals keras_resnet depends on.

Each function here reads or patches something that is not public API, checks
that it still exists, and raises `KerasInternalsChanged` naming it when a new
release moved it, so an upgrade fails loudly here and not deep inside training
or export. `check_internals()` probes all of them at once; tests/test_compat.py
runs it and exercises every function. Modules elsewhere in the package use
public API only, or these functions.

`TESTED` lists the Keras and TensorFlow releases the test suite ran on (and
`setup.cfg`'s `install_requires` admits); other versions may work, and
`check_internals()` says which internal is missing if they do not.
"""

import importlib

import keras

TESTED = {"keras": ("3.15",), "tensorflow": ("2.21",)}


class KerasInternalsChanged(RuntimeError):
    """A Keras/TensorFlow internal keras_resnet relies on is missing in this version."""


def _changed(what, where):
    import tensorflow as tf

    return KerasInternalsChanged(
        f"keras {keras.__version__} / tensorflow {tf.__version__}: {what} is gone; "
        f"keras_resnet.compat.{where} needs updating (tested with keras {TESTED['keras']}, "
        f"tensorflow {TESTED['tensorflow']}).")


def _require(obj, attr, where):
    if not hasattr(obj, attr):
        raise _changed(f"`{type(obj).__name__}.{attr}`", where)
    return getattr(obj, attr)


# --- functional graphs -------------------------------------------------------

def call_count(layer):
    """How many times `layer` has been called on symbolic inputs (functional
    graphs): Keras records one inbound node per call (`Operation._inbound_nodes`)."""
    return len(_require(layer, "_inbound_nodes", "call_count"))


# --- optimizers --------------------------------------------------------------

def optimizer_variable_key(optimizer, variable):
    """The key `optimizer` files `variable` under inside `update_step`, where it
    sees the backend variable rather than the Keras one (`Optimizer._var_key`)."""
    return _require(optimizer, "_var_key", "optimizer_variable_key")(variable)


def optimizer_tracked_count(optimizer):
    """How many trainable variables a built optimizer holds slots for."""
    return len(_require(optimizer, "_trainable_variables", "optimizer_tracked_count"))


def optimizer_slots(optimizer, variable, *names):
    """The optimizer slot variables (e.g. `"momentums"`, `"velocities"`) for
    `variable`, looked up the way Keras's own `update_step` does."""
    index = _require(optimizer, "_get_variable_index", "optimizer_slots")(variable)
    slots = []
    for name in names:
        store = getattr(optimizer, name, None)
        if store is None:
            store = _require(optimizer, "_" + name, "optimizer_slots")
        slots.append(store[index])
    return slots


# --- model building ----------------------------------------------------------

def build_from_local_batch(model, batch):
    """Builds `model` (and its metrics) from one local batch, then stops `fit`
    building it again from a distributed batch: under MultiWorkerMirroredStrategy
    Keras 3.15 reduces the distributed sample with `strategy.reduce(..., axis=None)`,
    which the collective strategy cannot convert ("Attempt to convert a value
    (PerReplica...)"). Call inside the strategy's scope."""
    _require(model, "_symbolic_build", "build_from_local_batch")(data_batch=batch)
    _require(model, "_maybe_symbolic_build", "build_from_local_batch")
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def initial_epoch(model):
    """The epoch `fit` started from (BackupAndRestore sets it on resume); 0 when unknown."""
    return getattr(model, "_initial_epoch", None) or 0


# --- callbacks ---------------------------------------------------------------

_BACKUP_ATTRS = ("_weights_path", "_training_metadata_path", "_prev_weights_path",
                 "_current_epoch", "_last_batch_seen")


def backup_paths(callback):
    """`(weights, metadata, previous weights)` files of a `BackupAndRestore`."""
    return tuple(_require(callback, a, "backup_paths") for a in _BACKUP_ATTRS[:3])


def set_backup_paths(callback, paths):
    """Points a `BackupAndRestore` at other files (e.g. the chief's, to restore from)."""
    backup_paths(callback)
    callback._weights_path, callback._training_metadata_path, callback._prev_weights_path = paths


def backup_position(callback):
    """`(epoch, batch)` a `BackupAndRestore` records in its metadata file."""
    return (_require(callback, "_current_epoch", "backup_position"),
            _require(callback, "_last_batch_seen", "backup_position"))


# --- preprocessing layers ----------------------------------------------------

def set_seed_generator(layer, generator):
    """Makes `layer` and every layer inside it draw randomness from `generator`.

    Keras random preprocessing layers keep a `SeedGenerator` in `generator`, and
    a separate one per backend (`_backend_generators`) when tf.data runs them
    outside their own backend; both are replaced. Nested layers are found with
    `_flatten_layers`.
    """
    subs = _require(layer, "_flatten_layers", "set_seed_generator")(include_self=True)
    for sub in subs:
        if hasattr(sub, "generator"):
            sub.generator = generator
            sub._backend_generators = {"tensorflow": generator}


# --- distribution ------------------------------------------------------------

def _keras_tf_trainer():
    try:
        return importlib.import_module("keras.src.backend.tensorflow.trainer")
    except ImportError:
        raise _changed("module `keras.src.backend.tensorflow.trainer`",
                       "patch_multi_worker_reduce") from None


def patch_multi_worker_reduce():
    """Works around Keras 3.15 reducing scalar logs across workers with `axis=0`.

    Under MultiWorkerMirroredStrategy Keras's `reduce_per_replica` calls
    `strategy.reduce("MEAN", v, axis=0)` on every log value, which fails for
    scalars ("Invalid reduction dimension 0 for input with 0 dimensions").
    Scalars are reduced with `axis=None` instead; everything else is unchanged.
    Idempotent; the patch is process-wide because Keras's trainer looks the
    function up in its module.
    """
    import tensorflow as tf

    trainer = _keras_tf_trainer()
    original = _require(trainer, "reduce_per_replica", "patch_multi_worker_reduce")
    is_multi_worker = _require(trainer, "_collective_all_reduce_multi_worker",
                               "patch_multi_worker_reduce")
    if getattr(original, "_keras_resnet_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            def reduce(v):
                local = strategy.experimental_local_results(v)[0]
                return strategy.reduce("MEAN", v, axis=None if len(local.shape) == 0 else 0)
            return tf.nest.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica._keras_resnet_patched = True
    trainer.reduce_per_replica = reduce_per_replica


# --- TensorFlow --------------------------------------------------------------

def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels in this process (TensorFlow's
    private `_pywrap_util_port.IsMklEnabled`); None when that probe is gone."""
    try:
        port = importlib.import_module("tensorflow.python.util._pywrap_util_port")
        return bool(port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def freeze_concrete_function(function):
    """A ConcreteFunction with its variables turned into constants (for tf2onnx)."""
    try:
        module = importlib.import_module("tensorflow.python.framework.convert_to_constants")
    except ImportError:
        raise _changed("module `tensorflow.python.framework.convert_to_constants`",
                       "freeze_concrete_function") from None
    return _require(module, "convert_variables_to_constants_v2", "freeze_concrete_function")(function)


# --- all at once -------------------------------------------------------------

def check_internals():
    """Probes every internal above on throwaway objects; returns a list of
    problems (empty when this Keras/TensorFlow has them all)."""
    problems = []

    def probe(name, fn):
        try:
            fn()
        except KerasInternalsChanged as e:
            problems.append(f"{name}: {e}")

    layer = keras.layers.Dense(1)
    opt = keras.optimizers.SGD(momentum=0.9)
    var = keras.Variable([1.0])
    opt.build([var])
    probe("call_count", lambda: call_count(layer))
    probe("optimizer_variable_key", lambda: optimizer_variable_key(opt, var))
    probe("optimizer_tracked_count", lambda: optimizer_tracked_count(opt))
    probe("optimizer_slots", lambda: optimizer_slots(opt, var, "momentums"))
    adam = keras.optimizers.Adam()
    adam.build([var])
    probe("optimizer_slots(adam)", lambda: optimizer_slots(adam, var, "momentums", "velocities"))
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    probe("build_from_local_batch", lambda: (
        _require(model, "_symbolic_build", "build_from_local_batch"),
        _require(model, "_maybe_symbolic_build", "build_from_local_batch")))
    probe("backup_paths", lambda: backup_paths(keras.callbacks.BackupAndRestore("/nonexistent")))
    probe("backup_position", lambda: backup_position(keras.callbacks.BackupAndRestore("/nonexistent")))
    probe("set_seed_generator", lambda: _require(keras.layers.RandomFlip(), "_flatten_layers",
                                                  "set_seed_generator"))
    probe("patch_multi_worker_reduce", lambda: (
        _require(_keras_tf_trainer(), "reduce_per_replica", "patch_multi_worker_reduce"),
        _require(_keras_tf_trainer(), "_collective_all_reduce_multi_worker",
                 "patch_multi_worker_reduce")))
    if onednn_enabled() is None:
        problems.append("onednn_enabled: tensorflow.python.util._pywrap_util_port.IsMklEnabled is gone")
    try:
        importlib.import_module("tensorflow.python.framework.convert_to_constants") \
            .convert_variables_to_constants_v2
    except (ImportError, AttributeError):
        problems.append("freeze_concrete_function: convert_variables_to_constants_v2 is gone")
    return problems
