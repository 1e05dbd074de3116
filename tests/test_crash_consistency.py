"""Crash consistency (integration tier): SIGKILL at seeded random points during
training, during `model.keras` writing and during export, 10 trials in all.

Every trial either resumes to the same final epoch count, with a `best.keras`
that loads and holds the best epoch of the history, or leaves the previous
artefact intact. (tests/test_training.py kills once at a chosen point; these
kill at random points, repeatedly, in one run.)
"""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

import keras_resnet

# The code under test (this checkout, whatever the installed package points at).
CODE = os.path.dirname(os.path.dirname(os.path.abspath(keras_resnet.__file__)))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", PYTHONPATH=CODE)
EPOCHS = 5
TRAIN_KILLS = 5      # trials during training (one run, killed again and again)
SAVE_KILLS = 3       # trials during model.keras writing
EXPORT_KILLS = 2     # trials during export


def _npz(path, n=192, size=16, classes=4):
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 120, (n, size, size, 3)).astype("uint8")
    x[np.arange(n), :, :, y % 3] += 120
    np.savez(path, x_train=x, y_train=y, x_test=x[:64], y_test=y[:64])
    return str(path)


def _start_and_kill(cmd, rng, ready, max_delay, timeout=240):
    """Starts `cmd`, waits until `ready(line)` holds for an output line, then
    kills it with SIGKILL after a seeded random delay in [0, max_delay).
    Returns (killed, output): not killed when it finished first."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, deadline = [], time.time() + timeout
    for line in proc.stdout:
        output.append(line)
        if ready(line):
            break
        if time.time() > deadline:
            proc.kill()
            pytest.fail("not ready in time:\n" + "".join(output[-40:]))
    time.sleep(float(rng.uniform(0, max_delay)))
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    rest, _ = proc.communicate(timeout=120)
    return killed, "".join(output) + (rest or "")


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def _check_run_artefacts(run):
    """What a killed run leaves must be usable: best.keras and model.keras load,
    best.keras.json matches the history's best epoch among the finished ones."""
    best = run / "best.keras"
    if best.exists():
        keras.saving.load_model(str(best), safe_mode=True, compile=False)
        record = json.loads((run / "best.keras.json").read_text())
        rows = _history(run) if (run / "history.csv").exists() else []
        values = [float(r["val_accuracy"]) for r in rows]
        if values:  # the record may be one epoch ahead of history.csv (killed between them)
            assert record["value"] >= max(values) - 1e-9, (record, values)
    if (run / "model.keras").exists():
        keras.saving.load_model(str(run / "model.keras"), safe_mode=True, compile=False)


@pytest.mark.slow
def test_sigkill_at_random_points_during_training_then_resume(tmp_path):
    rng = np.random.default_rng(25)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_resnet", "train", "--recipe", "cifar10_fast", "--model", "resnet20",
           "--dataset", _npz(tmp_path / "data.npz"), "--epochs", str(EPOCHS), "--steps-per-epoch", "4",
           "--batch-size", "32", "--precision", "float32", "--output", str(run),
           "--backup-every-steps", "2", "--verbose", "2", "--seed", "3"]
    kills = 0
    for _ in range(TRAIN_KILLS):
        # Kill anywhere from the first epoch line on: mid-step, mid-backup, mid-save.
        killed, output = _start_and_kill(cmd, rng, lambda line: "Epoch " in line, max_delay=4.0)
        if not killed:
            assert "Traceback" not in output, output[-3000:]
            break
        kills += 1
        _check_run_artefacts(run)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS)), rows
    assert (run / "metrics.json").exists() and kills >= 3, kills
    values = [float(r["val_accuracy"]) for r in rows]
    record = json.loads((run / "best.keras.json").read_text())
    assert record["value"] == pytest.approx(max(values)) and values[record["epoch"]] == pytest.approx(max(values))
    keras.saving.load_model(str(run / "best.keras"), safe_mode=True, compile=False)
    keras.saving.load_model(str(run / "model.keras"), safe_mode=True, compile=False)


_SAVE_LOOP = textwrap.dedent("""
    import sys
    import keras
    from keras_resnet.atomic import atomic_save
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(256)(keras.layers.Dense(256)(inputs)))
    path = sys.argv[1]
    for version in range(1, 10_000):
        for w in model.weights:
            w.assign(keras.ops.full(w.shape, float(version)))
        atomic_save(lambda p: model.save(p), path)
        print("saved", version, flush=True)
""")


@pytest.mark.slow
def test_sigkill_while_writing_model_keras_leaves_a_loadable_file(tmp_path):
    rng = np.random.default_rng(26)
    path = tmp_path / "model.keras"
    for _ in range(SAVE_KILLS):
        _, output = _start_and_kill([sys.executable, "-c", _SAVE_LOOP, str(path)], rng,
                                    lambda line: line.startswith("saved"), max_delay=1.0)
        saved = [int(line.split()[1]) for line in output.splitlines() if line.startswith("saved")]
        model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
        version = float(model.weights[0].numpy().flat[0])
        # The last completed save, or the one under way if its rename was done.
        assert version in (saved[-1], saved[-1] + 1), (version, saved[-3:])
        assert all(float(np.unique(w.numpy())[0]) == version and np.unique(w.numpy()).size == 1
                   for w in model.weights)


_EXPORT_LOOP = textwrap.dedent("""
    import sys
    import keras
    import keras_resnet as kr
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs)))
    while True:
        path = kr.export(model, sys.argv[1], warmup=False)["saved_model"]
        print("exported", path, flush=True)
""")


@pytest.mark.slow
def test_sigkill_during_export_leaves_only_complete_versions(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(27)
    out = tmp_path / "serve"
    for _ in range(EXPORT_KILLS):
        _, output = _start_and_kill([sys.executable, "-c", _EXPORT_LOOP, str(out)], rng,
                                    lambda line: line.startswith("exported"), max_delay=3.0)
        exported = [line.split()[1] for line in output.splitlines() if line.startswith("exported")]
        versions = sorted(int(d) for d in os.listdir(out) if d.isdigit())
        assert versions == list(range(1, len(versions) + 1)) and len(versions) >= len(exported)
        for version in versions:  # every numbered version TF Serving could pick up is complete
            loaded = tf.saved_model.load(str(out / str(version)))
            probs = loaded.signatures["predict_images"](images=tf.zeros((1, 8, 8, 3)))["probabilities"]
            assert probs.shape == (1, 3)
