"""Every Keras/TensorFlow internal keras_resnet uses still exists and does what
keras_resnet.compat says (an upgrade that moves one fails here, by name)."""

import ast
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_resnet import compat

PACKAGE = pathlib.Path(compat.__file__).parent


def test_this_keras_and_tensorflow_have_every_guarded_internal():
    assert compat.check_internals() == []


def test_tested_versions_match_what_runs_here_and_setup_cfg():
    # The suite runs on the versions compat.TESTED (and install_requires) name.
    assert keras.__version__.startswith(compat.TESTED["keras"])
    assert tf.__version__.startswith(compat.TESTED["tensorflow"])
    setup = (PACKAGE.parent / "setup.cfg").read_text()
    for pkg, versions in compat.TESTED.items():
        assert any(f"{pkg}>={v}" in setup for v in versions), (pkg, versions)


def test_no_private_keras_or_tensorflow_api_outside_compat():
    # Attribute names compat wraps, and private module paths, appear nowhere else.
    wrapped = {"_inbound_nodes", "_var_key", "_trainable_variables", "_get_variable_index",
               "_momentums", "_velocities", "_symbolic_build", "_maybe_symbolic_build",
               "_weights_path", "_training_metadata_path", "_prev_weights_path", "_current_epoch",
               "_last_batch_seen", "_flatten_layers", "_backend_generators", "_initial_epoch"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        for needle in ("keras.src", "tensorflow.python", "_getframe", "_pywrap"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in wrapped:
                offenders.append(f"{path.name}:{node.lineno}: .{node.attr}")
    assert offenders == []


def test_missing_internal_raises_a_named_error():
    class Bare:
        pass

    with pytest.raises(compat.KerasInternalsChanged, match="_inbound_nodes"):
        compat.call_count(Bare())
    with pytest.raises(compat.KerasInternalsChanged, match="_var_key"):
        compat.optimizer_variable_key(Bare(), None)


def test_call_count_counts_symbolic_calls():
    layer = keras.layers.Dense(2)
    a, b = keras.Input((3,)), keras.Input((3,))
    assert compat.call_count(layer) == 0
    layer(a)
    assert compat.call_count(layer) == 1
    layer(b)
    assert compat.call_count(layer) == 2


def test_optimizer_slots_are_the_ones_keras_updates():
    a, b = keras.Variable(np.ones(3, "float32")), keras.Variable(np.ones(2, "float32"))
    opt = keras.optimizers.Adam(learning_rate=0.1)
    opt.build([a, b])
    assert compat.optimizer_tracked_count(opt) == 2
    opt.apply_gradients([(np.full(3, 2.0, "float32"), a), (np.zeros(2, "float32"), b)])
    m, v = compat.optimizer_slots(opt, b, "momentums", "velocities")
    assert m.shape == (2,) and np.all(keras.ops.convert_to_numpy(m) == 0)
    m, v = compat.optimizer_slots(opt, a, "momentums", "velocities")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m), 0.2, rtol=1e-6)  # (1-0.9)*2
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), 0.004, rtol=1e-5)  # (1-0.999)*4
    assert compat.optimizer_variable_key(opt, a) != compat.optimizer_variable_key(opt, b)


def test_backup_paths_round_trip(tmp_path):
    cb = keras.callbacks.BackupAndRestore(str(tmp_path))
    weights, meta, prev = compat.backup_paths(cb)
    assert os.path.dirname(weights) == str(tmp_path) and weights.endswith(".weights.h5")
    other = (str(tmp_path / "w.h5"), str(tmp_path / "m.json"), str(tmp_path / "w.h5.bkp"))
    compat.set_backup_paths(cb, other)
    assert compat.backup_paths(cb) == other
    assert compat.backup_position(cb) == (0, 0)


def test_set_seed_generator_reaches_nested_layers():
    gen = keras.random.SeedGenerator(3)
    layer = keras.layers.RandomFlip("horizontal")
    compat.set_seed_generator(layer, gen)
    assert layer.generator is gen


def test_patch_multi_worker_reduce_is_idempotent():
    import importlib

    trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    compat.patch_multi_worker_reduce()
    first = trainer.reduce_per_replica
    compat.patch_multi_worker_reduce()
    assert trainer.reduce_per_replica is first and first._keras_resnet_patched


def test_freeze_concrete_function_inlines_variables():
    v = tf.Variable(3.0)

    @tf.function(input_signature=[tf.TensorSpec([], tf.float32)])
    def f(x):
        return x * v

    frozen = compat.freeze_concrete_function(f.get_concrete_function())
    ops = {op.type for op in frozen.graph.get_operations()}
    assert "ReadVariableOp" not in ops
    assert float(frozen(tf.constant(2.0))[0]) == 6.0
