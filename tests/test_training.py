"""Training end to end: loss goes down, run directory, NaN stop, kill -9 and resume, CLI."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_resnet import recipes
from keras_resnet.training import TrainingInterrupted, train

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def make_npz(path, n=256, size=16, classes=4, seed=0):
    """Learnable synthetic data: the class sets one colour channel high."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 120, (n, size, size, 3)).astype("uint8")
    x[np.arange(n), :, :, y % 3] += 120
    x[np.arange(n), : size // 2, :, :] += (y >= 3)[:, None, None, None].astype("uint8") * 10
    np.savez(path, x_train=x, y_train=y, x_test=x[:64], y_test=y[:64])
    return str(path)


def tiny_overrides(tmp_path, **kw):
    base = dict(model="resnet20", batch_size=32, epochs=3, steps_per_epoch=6, precision="float32",
                dataset=make_npz(tmp_path / "data.npz"), output=str(tmp_path / "run"), verbose=2,
                seed=1)
    base.update(kw)
    return base


def test_recipe_lookup_and_overrides():
    cfg = recipes.get_recipe("cifar10_resnet20", epochs=2)
    assert (cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert cfg.lr_boundaries == (32000, 48000) and cfg.total_steps == 64000 and cfg.epochs == 2
    with pytest.raises(ValueError, match="recipe='nope'"):
        recipes.get_recipe("nope")
    with pytest.raises(ValueError, match="bogus"):
        recipes.TrainConfig.from_dict({"bogus": 1})


def test_train_reduces_loss_and_writes_run_dir(tmp_path):
    result = train(recipes.get_recipe("cifar10_fast", **tiny_overrides(tmp_path)))
    losses = result.history["loss"]
    assert losses[-1] < losses[0]
    run = tmp_path / "run"
    for name in ("config.json", "environment.json", "model.keras", "best.keras", "history.csv",
                 "metrics.json", "loss.png", "accuracy.png", "learning_rate.png", "logs"):
        assert (run / name).exists(), name
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["seed"] == 1 and config["data"]["num_classes"] == 4
    metrics = json.loads((run / "metrics.json").read_text())
    # The reported accuracy is the saved model's on the test arrays, computed here independently.
    npz = np.load(tmp_path / "data.npz")
    saved = keras.saving.load_model(run / "model.keras")
    expected = np.mean(np.argmax(saved.predict(npz["x_test"].astype("float32"), verbose=0), -1) == npz["y_test"])
    assert metrics["test_examples"] == 64 and abs(metrics["test_accuracy"] - expected) < 1e-9
    assert "test_accuracy_flip_tta" in metrics
    # How much of the CPU a VM's hypervisor took during fit (None where /proc/stat is absent).
    steal = metrics["cpu_steal_fraction"]
    assert steal is None if not os.path.exists("/proc/stat") else 0.0 <= steal <= 1.0
    # What the run ran on, including whether TensorFlow's oneDNN kernels were on (it changes
    # speed and the fusions a step gets; TensorFlow decides it per CPU at import).
    environment = json.loads((run / "environment.json").read_text())
    from keras_resnet import compat
    assert environment["onednn"] == compat.onednn_enabled() and "TF_ENABLE_ONEDNN_OPTS" in environment
    assert environment["precision"] == metrics["precision"] and environment["cpu_count"] == os.cpu_count()
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    # Running the finished run again does not train again.
    again = train(recipes.get_recipe("cifar10_fast", **tiny_overrides(tmp_path)))
    assert again.metrics == metrics


def test_nan_loss_stops_with_clear_message_and_intact_checkpoint(tmp_path):
    # Epoch 1 trains normally (a good backup and best.keras exist); then the
    # learning rate explodes and the loss becomes NaN.
    class Explode(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                self.model.optimizer.learning_rate = 1e30  # schedule replaced by a constant

    cfg = recipes.get_recipe("cifar10_fast", **tiny_overrides(tmp_path, schedule="constant",
                                                           learning_rate=0.01))
    with pytest.raises(TrainingInterrupted, match="loss became nan") as err:
        train(cfg, extra_callbacks=[Explode()])
    assert "resume" in str(err.value)
    run = tmp_path / "run"
    best = keras.saving.load_model(run / "best.keras")
    assert all(np.isfinite(w).all() for w in best.get_weights())
    meta = json.loads((run / "backup" / "training_metadata.json").read_text())
    assert meta["epoch"] == 1  # the backup still holds the end of the good epoch 0
    restored = keras.saving.load_model(run / "best.keras")
    restored.load_weights(run / "backup" / "latest.weights.h5", skip_mismatch=True)
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "keras_resnet", *args], env=ENV,
                          capture_output=True, text=True, **kw)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_every_epoch_once(tmp_path):
    npz = make_npz(tmp_path / "data.npz", n=512)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "keras_resnet", "train", "--recipe", "cifar10_fast",
           "--dataset", npz, "--epochs", "4", "--steps-per-epoch", "12", "--batch-size", "32",
           "--precision", "float32", "--output", str(run), "--backup-every-steps", "4",
           "--verbose", "2", "--seed", "3"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    meta = run / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    # Kill once epoch 2 (index 1) is under way and a mid-epoch backup exists.
    while time.time() < deadline:
        if meta.exists():
            m = json.loads(meta.read_text())
            if m["epoch"] >= 1 and m["batch"] >= 3:
                break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no backup appeared in time")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run / "metrics.json").exists()
    killed_at = json.loads(meta.read_text())["epoch"]
    assert killed_at >= 1

    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"Epoch {killed_at + 1}/4" in out.stdout and "Epoch 1/4" not in out.stdout, out.stdout
    with open(run / "history.csv") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == [0, 1, 2, 3]
    assert (run / "metrics.json").exists()


def test_cli_subcommands(tmp_path):
    npz = make_npz(tmp_path / "data.npz")
    run = tmp_path / "run"
    out = _cli("train", "--dataset", npz, "--epochs", "1", "--steps-per-epoch", "3",
               "--batch-size", "32", "--precision", "float32", "--output", str(run), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout[out.stdout.index("{"):])["run_dir"] == str(run)

    out = _cli("evaluate", str(run), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test_accuracy" in out.stdout

    from PIL import Image
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.fromarray(np.full((20, 24, 3), 200, np.uint8)).save(img_dir / "a.png")
    Image.fromarray(np.full((16, 16, 3), 10, np.uint8)).save(img_dir / "b.jpg")
    out = _cli("predict", str(run), str(img_dir), "--top-k", "2", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "a.png" in out.stdout and "b.jpg" in out.stdout and "%" in out.stdout

    out = _cli("models", "resnet5")
    assert out.returncode == 0 and "resnet50" in out.stdout and "resnet56" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "abc"], "invalid int value"),
    (["train", "--recipe", "nope"], "recipe='nope'"),
    (["train", "--precision", "fp8", "--dataset", "x.npz"], "precision='fp8'"),
    (["predict", "missing.keras", "x.png"], "No model found"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_input_is_a_message_not_a_traceback(args, message):
    out = _cli(*args, timeout=120)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
