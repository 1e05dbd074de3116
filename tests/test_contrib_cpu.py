"""keras_resnet.contrib.cpu: the opt-in compiled BatchNorm+ReLU kernel and its cache.

The op is checked against a float64 reference; an accelerated model against the
same model on TensorFlow's ops (one training step: loss, gradients, moving
statistics); its saves and exports against the plain model's; the cache's
refusals one by one; and the core's independence from this package.
"""

import os
import pathlib
import stat
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_resnet as kr
from keras_resnet.contrib import cpu
from keras_resnet.contrib.cpu import build

PACKAGE = pathlib.Path(kr.__file__).parent


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    if cpu.load(tmp_path_factory.mktemp("cache")) is None:
        pytest.skip(f"the kernel cannot be built here: {cpu.unavailable_reason()}")
    return cpu


def _reference(x, gamma, beta, epsilon, dy):
    x, gamma, beta, dy = (tf.constant(v, tf.float64) for v in (x, gamma, beta, dy))
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        y = tf.nn.relu((x - mean) * tf.math.rsqrt(variance + epsilon) * gamma + beta)
    return [t.numpy() for t in [y, mean, variance, *tape.gradient(y, [x, gamma, beta], output_gradients=dy)]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 16, 16, 64)])
def test_op_matches_float64_reference(kernel, shape, dtype):
    rng = np.random.default_rng(sum(shape))
    c = shape[-1]
    x = rng.normal(3.0, 2.0, shape)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.normal(0, 1, c)
    dy = rng.normal(0, 1, shape)
    x, dy = (tf.cast(tf.cast(v, dtype), tf.float64).numpy() for v in (x, dy))
    z = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3) * gamma + beta
    dy = np.where(np.abs(z) < 0.05, 0.0, dy)  # no element on the ReLU's edge
    want = _reference(x, gamma, beta, 1e-3, dy)
    xt, dyt = tf.constant(x, dtype), tf.constant(dy, dtype)
    g32, b32 = tf.constant(gamma, tf.float32), tf.constant(beta, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([xt, g32, b32])
        y, mean, variance = kernel.batchnorm_relu(xt, g32, b32, 1e-3)
    got = [y, mean, variance, *tape.gradient(y, [xt, g32, b32], output_gradients=dyt)]
    assert y.dtype == dtype and mean.dtype == tf.float32
    for name, g, w in zip(["y", "mean", "variance", "dx", "dgamma", "dbeta"], got, want):
        rtol = 2 ** -8 if dtype == "bfloat16" and name in ("y", "dx") else 2e-4
        np.testing.assert_allclose(tf.cast(g, tf.float64).numpy(), w, rtol=rtol,
                                   atol=2e-4 * np.abs(w).max() + (0.02 if dtype == "bfloat16" else 0),
                                   err_msg=name)


def _model(name="resnet9_half", **kw):
    keras.utils.set_random_seed(1)
    return kr.create_model(name, input_shape=(16, 16, 3), num_classes=4, **kw)


def _train_step(model, x, y):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    return float(loss), [g.numpy() for g in grads]


@pytest.mark.parametrize("name,options,pairs", [
    ("resnet9_half", {}, 8),                       # every BN of ResNet-9 is followed by a ReLU
    ("resnet20", {}, 1 + 9),                       # the stem's, and the first of each basic block
    ("resnet20", {"block": "bottleneck"}, 1 + 12),  # two per bottleneck block (6 of them: 9n+2)
])
def test_accelerated_training_step_matches_plain(kernel, name, options, pairs):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    y = rng.integers(0, 4, 8)
    plain, fast = _model(name, **options), _model(name, **options)
    fast.set_weights(plain.get_weights())
    assert cpu.accelerate(fast) == f"accelerated {pairs} BatchNorm+ReLU pairs"
    assert cpu.accelerate(fast) == "accelerated 0 BatchNorm+ReLU pairs"  # idempotent
    loss_p, grads_p = _train_step(plain, x, y)
    loss_f, grads_f = _train_step(fast, x, y)
    assert abs(loss_p - loss_f) < 1e-4 * max(1.0, abs(loss_p))
    for gp, gf in zip(grads_p, grads_f):
        np.testing.assert_allclose(gf, gp, rtol=1e-3, atol=1e-4 * (np.abs(gp).max() + 1e-6))
    # Moving statistics updated alike (the unbiased batch variance in both).
    for wp, wf in zip(plain.non_trainable_weights, fast.non_trainable_weights):
        np.testing.assert_allclose(wf.numpy(), wp.numpy(), rtol=1e-4, atol=1e-5)
    # Inference is unchanged (TensorFlow's ops + tf.nn.relu).
    np.testing.assert_allclose(fast.predict(x, verbose=0), plain.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_fit_reduces_the_loss_in_mixed_bfloat16(kernel):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    y = (x.mean((1, 2, 3)) > 127).astype("int64")
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _model()
        assert cpu.accelerate(model).startswith("accelerated 8")
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                      loss="sparse_categorical_crossentropy", jit_compile=False)
        history = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history["loss"]
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert history[-1] < 0.7 * history[0], history


def test_saves_and_exports_are_the_plain_model(kernel, tmp_path):
    model = _model()
    plain_config = model.get_config()
    cpu.accelerate(model)
    _train_step(model, np.zeros((2, 16, 16, 3), "float32"), np.zeros(2, "int64"))
    assert model.get_config() == plain_config
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    for fold in (True, False):
        path = kr.export(model, str(tmp_path / f"serve_{fold}"), fold_batchnorm=fold, warmup=False)
        graph = tf.saved_model.load(path["saved_model"]).signatures["predict_images"].graph.as_graph_def()
        ops = {node.op for node in graph.node} | {node.op for f in graph.library.function for node in f.node_def}
        assert not any(op.startswith("KerasResnet") for op in ops), sorted(ops)


def test_core_never_imports_contrib():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "contrib" not in p.parts and p.name != "cli.py" and "contrib" in p.read_text()
                 and ("import" in p.read_text().split("contrib")[0][-60:])]
    assert offenders == []
    code = ("import sys, keras_resnet as kr, numpy as np\n"
            "m = kr.create_model('resnet20', input_shape=(8, 8, 3), num_classes=2)\n"
            "m.compile('sgd', 'sparse_categorical_crossentropy'); m.fit(np.zeros((4, 8, 8, 3)), np.zeros(4), verbose=0)\n"
            "kr.fold_batchnorm(m)\n"
            "print(sorted(k for k in sys.modules if 'contrib' in k and 'keras_resnet' in k))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


# === The cache ===

def _fake_tf():
    class Sysconfig:
        get_include = staticmethod(lambda: "/nonexistent/include")
        get_compile_flags = staticmethod(lambda: [])
        get_link_flags = staticmethod(lambda: [])

    class FakeTF:
        __version__ = "0.0-test"
        sysconfig = Sysconfig

    return FakeTF


def _fake_compiler(tmp_path, body):
    script = tmp_path / "fake-cxx"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_cache_directory_is_created_private(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, 'for a; do out=$a; done; echo lib > "$out"'))
    cache = tmp_path / "new" / "cache"
    path, reason = build.build_or_find(_fake_tf(), cache)
    assert reason is None and path.parent == cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0


def test_group_writable_cache_directory_is_refused(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    path, reason = build.build_or_find(_fake_tf(), cache)
    assert path is None and "writable by group or others" in reason and str(cache) in reason


def test_tampered_or_unrecorded_library_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, 'for a; do out=$a; done; echo lib > "$out"'))
    cache = tmp_path / "cache"
    path, reason = build.build_or_find(_fake_tf(), cache)
    assert reason is None
    path.write_text("something else")  # same owner and mode, other content
    again, reason = build.build_or_find(_fake_tf(), cache)
    assert again is None and "does not match its recorded SHA-256" in reason
    os.remove(str(path) + ".sha256")
    again, reason = build.build_or_find(_fake_tf(), cache)
    assert again is None and "no recorded SHA-256" in reason


def test_world_writable_library_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, 'for a; do out=$a; done; echo lib > "$out"'))
    path, reason = build.build_or_find(_fake_tf(), tmp_path / "cache")
    path.chmod(0o666)
    again, reason = build.build_or_find(_fake_tf(), tmp_path / "cache")
    assert again is None and "library" in reason and "writable by group or others" in reason


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_library_owned_by_another_user_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, 'for a; do out=$a; done; echo lib > "$out"'))
    path, reason = build.build_or_find(_fake_tf(), tmp_path / "cache")
    os.chown(path, 12345, -1)
    again, reason = build.build_or_find(_fake_tf(), tmp_path / "cache")
    assert again is None and "owned by uid 12345" in reason


def test_compile_timeout_and_failures_give_one_line_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "sleep 30"))
    path, reason = build.build_or_find(_fake_tf(), tmp_path / "a", timeout=1)
    assert path is None and reason == "the C++ build took longer than 1 s"
    monkeypatch.setenv("CXX", _fake_compiler(tmp_path, "echo 'error: boom' >&2; exit 1"))
    path, reason = build.build_or_find(_fake_tf(), tmp_path / "b")
    assert path is None and reason.startswith("the C++ build failed") and "boom" in reason
    assert "\n" not in reason
    assert not [p for p in (tmp_path / "b").iterdir() if p.suffix != ".lock" and p.name != ".lock"]


def test_concurrent_builds_compile_once(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    monkeypatch.setenv("CXX", _fake_compiler(
        tmp_path, f'echo x >> {log}; sleep 1; for a; do out=$a; done; echo lib > "$out"'))
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from test_contrib_cpu import _fake_tf\n"
            "from keras_resnet.contrib.cpu import build\n"
            "p, r = build.build_or_find(_fake_tf(), %r); assert r is None, r\n")
    here = str(pathlib.Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", code % (here, str(tmp_path / "cache"))])
             for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert log.read_text().count("x") == 1


def test_unavailable_kernel_changes_nothing_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu, "_STATE", {"module": None, "reason": None, "tried": False})
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    model = _model()
    status = cpu.accelerate(model, cache_dir=tmp_path / "cache")
    assert status.startswith("unavailable: the C++ compiler") and "\n" not in status
    assert not any(getattr(layer, "_keras_resnet_accelerated", False) for layer in kr.walk_layers(model))
