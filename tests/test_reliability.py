"""Reliability findings (issue 25), one test each; every one failed on main before its fix."""

import json

import keras
import numpy as np
import pytest

from keras_resnet import callbacks as kr_callbacks
from keras_resnet import data


def _tiny_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))


def test_best_checkpoint_remembers_the_best_across_a_resume(tmp_path):
    """After a kill and resume, a worse first epoch must not replace best.keras."""
    path = str(tmp_path / "best.keras")
    first = kr_callbacks.BestCheckpoint(path)
    first.set_model(_tiny_model())
    first.on_train_begin()
    first.on_epoch_end(0, {"val_accuracy": 0.8, "loss": 0.5})
    saved = (tmp_path / "best.keras").stat().st_mtime_ns
    # A new process resumes the run: a new callback, a worse epoch.
    resumed = kr_callbacks.BestCheckpoint(path)
    resumed.set_model(_tiny_model())
    resumed.on_train_begin()
    assert resumed.best == pytest.approx(0.8)
    resumed.on_epoch_end(1, {"val_accuracy": 0.7, "loss": 0.6})
    assert (tmp_path / "best.keras").stat().st_mtime_ns == saved
    resumed.on_epoch_end(2, {"val_accuracy": 0.9, "loss": 0.4})
    assert json.loads((tmp_path / "best.keras.json").read_text())["value"] == pytest.approx(0.9)
    assert (tmp_path / "best.keras").stat().st_mtime_ns != saved


def test_best_checkpoint_ignores_a_record_for_another_monitor(tmp_path):
    path = str(tmp_path / "best.keras")
    (tmp_path / "best.keras.json").write_text(json.dumps({"monitor": "val_loss", "mode": "min", "value": 0.1}))
    cb = kr_callbacks.BestCheckpoint(path)
    cb.set_model(_tiny_model())
    cb.on_train_begin()
    assert cb.best == -np.inf


def test_nan_in_float_images_is_a_clear_error():
    """One NaN in [0, 1] floats used to skip the x255 rescale for the whole dataset."""
    x = np.random.default_rng(0).uniform(0, 1, (8, 4, 4, 3)).astype("float32")
    x[3, 1, 1, 0] = np.nan
    with pytest.raises(ValueError, match=r"must be finite.*x\[3, 1, 1, 0\]=nan"):
        data.from_arrays(x, np.arange(8) % 2)


def test_a_stray_huge_label_is_refused_not_a_huge_head():
    x = np.zeros((8, 4, 4, 3), "uint8")
    y = np.array([0, 1, 0, 1, 0, 1, 0, 2_000_000_000])
    with pytest.raises(ValueError, match="2000000000.*num_classes"):
        data.from_arrays(x, y)
    with pytest.raises(ValueError, match="2000000000.*num_classes"):
        data.make_pipelines({"train": (x, y)}, 4)
    # Stated explicitly, a large class count is the user's choice.
    ds, info = data.from_arrays(x, np.arange(8) % 2, num_classes=5000)
    assert info.num_classes == 5000


def test_a_run_directory_named_like_a_dataset_is_not_read_as_images(tmp_path, monkeypatch):
    """`--output cifar10` used to make the dataset name resolve to the new, empty run folder."""
    from keras_resnet.data import pipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "config.json").write_text("{}")
    seen = []

    def fake_tfds(source, *args):
        seen.append(source)
        raise RuntimeError("tfds reached")

    monkeypatch.setattr(pipeline, "_tfds_source", fake_tfds)
    with pytest.raises(RuntimeError, match="tfds reached"):
        data.make_pipelines("cifar10", 8)
    assert seen == ["cifar10"]
    with pytest.raises(ValueError, match="run directory.*config.json"):
        data.make_pipelines("./cifar10", 8)


def test_resuming_with_a_different_config_is_refused(tmp_path):
    """A resume with other settings used to overwrite config.json and continue the old state."""
    import keras_resnet as kr

    run = tmp_path / "run"
    run.mkdir()
    stored = kr.get_recipe("cifar10_fast", output=str(run)).to_dict()
    (run / "config.json").write_text(json.dumps({"config": stored}))
    with pytest.raises(ValueError, match=r"different config \(learning_rate: 0\.4 -> 0\.1\)"):
        kr.train({"recipe": "cifar10_fast", "output": str(run), "learning_rate": 0.1})
    assert json.loads((run / "config.json").read_text())["config"] == json.loads(json.dumps(stored))


def test_atomic_save_keeps_the_old_file_when_the_write_fails(tmp_path):
    from keras_resnet.atomic import atomic_save, write_bytes_atomic

    path = tmp_path / "model.tflite"
    write_bytes_atomic(path, b"old")

    def dies_half_way(tmp):
        with open(tmp, "wb") as f:
            f.write(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_save(dies_half_way, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_history_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    """The CSV logger's trim of redone epochs used to rewrite history.csv in place."""
    history = tmp_path / "history.csv"
    history.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2}))
    logger = kr_callbacks.ResumableCSVLogger(str(history), backup_dir=str(backup))
    logger.set_model(_tiny_model())
    import os
    real_replace = os.replace
    calls = []
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append((a, b)), real_replace(a, b)))
    logger.on_train_begin()
    logger.on_train_end()
    assert history.read_text().splitlines() == ["epoch,loss", "0,1.0", "1,0.9"]
    assert calls and calls[0][1] == str(history)


def _gif_bytes(frames):
    import io

    from PIL import Image

    out = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out, "GIF", save_all=True, append_images=images[1:])
    return out.getvalue()


def test_folder_loader_counts_every_gif_frame(tmp_path):
    """Pillow reports a GIF's first frame; TensorFlow allocates every frame."""
    frames = [np.full((30, 20, 3), 40 * i, np.uint8) for i in range(3)]
    path = tmp_path / "anim.gif"
    path.write_bytes(_gif_bytes(frames))
    assert data.inspect_image(str(path), max_pixels=2000).height == 30  # 1,800 pixels in all: allowed
    with pytest.raises(data.BadImageError, match=r"1,800 pixels in all, over max_pixels=1,000"):
        data.inspect_image(str(path), max_pixels=1000)  # the first frame alone (600) used to pass
    # A logical screen of 1x1 around a 300x200 frame.
    small_screen = bytearray(_gif_bytes([np.zeros((200, 300, 3), np.uint8)]))
    small_screen[6:10] = bytes([1, 0, 1, 0])
    (tmp_path / "screen.gif").write_bytes(bytes(small_screen))
    with pytest.raises(data.BadImageError, match="max_pixels=10,000"):
        data.inspect_image(str(tmp_path / "screen.gif"), max_pixels=10_000)


def test_cli_predict_applies_the_pixel_limit(tmp_path, capsys):
    """`keras-resnet predict` used to decode any image with no pixel limit."""
    from PIL import Image

    import keras_resnet as kr
    from keras_resnet import cli

    model = kr.create_model("resnet20", num_classes=3)
    model.save(tmp_path / "m.keras")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.png")
    assert cli.main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "big.png"),
                     str(tmp_path / "small.png"), "--max-pixels", "1000"]) in (0, None)
    out = capsys.readouterr().out
    assert "big.png" in out and "2,000 pixels exceeds max_pixels=1,000" in out
    assert [line for line in out.splitlines() if line.startswith("small.png") and "%" in line]


def test_serving_bounds_each_request(tmp_path):
    """Thousands of tiny images in one request used to become one huge float32 batch."""
    import io

    import tensorflow as tf
    from PIL import Image

    import keras_resnet as kr

    model = kr.create_model("resnet20", num_classes=3)
    path = kr.export(model, str(tmp_path / "serve"), warmup=False, max_batch_size=4,
                     max_request_pixels=5000)["saved_model"]
    metadata = json.loads((tmp_path / "serve" / "1" / "assets.extra" / "keras_resnet_export.json").read_text())
    assert (metadata["max_batch_size"], metadata["max_request_pixels"]) == (4, 5000)
    loaded = tf.saved_model.load(path)

    def png(side):
        out = io.BytesIO()
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(out, "PNG")
        return out.getvalue()

    serve = loaded.signatures["serving_default"]
    assert serve(image_bytes=tf.constant([png(8)] * 4))["probabilities"].shape == (4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds 5 images, more than max_batch_size=4"):
        serve(image_bytes=tf.constant([png(8)] * 5))
    with pytest.raises(tf.errors.InvalidArgumentError, match="7200 pixels in all, more than max_request_pixels=5000"):
        serve(image_bytes=tf.constant([png(60), png(60)]))
    pixels = loaded.signatures["predict_images"]
    assert pixels(images=tf.zeros((4, 32, 32, 3)))["probabilities"].shape == (4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_batch_size=4"):
        pixels(images=tf.zeros((5, 8, 8, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_request_pixels=5000"):
        loaded.signatures["predict_images_uint8"](images=tf.zeros((2, 60, 60, 3), tf.uint8))
    with pytest.raises(ValueError, match="max_batch_size=0"):
        kr.export(model, str(tmp_path / "bad"), max_batch_size=0)
