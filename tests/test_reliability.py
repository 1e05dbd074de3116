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


def _class_folder_with_images(root, n=3):
    from PIL import Image

    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(root / name / f"{i}.png")


def test_broken_symlink_and_vanished_file_are_skipped_not_fatal(tmp_path):
    """One broken symlink used to abort the whole scan with [Errno 2]."""
    import os

    _class_folder_with_images(tmp_path)
    os.symlink(tmp_path / "nowhere.png", tmp_path / "a" / "broken.png")
    files, names, skipped, _ = data.scan_image_folder(str(tmp_path))
    assert len(files) == 6 and [os.path.basename(p) for p, _ in skipped] == ["broken.png"]
    assert "cannot be read" in skipped[0][1]
    with pytest.raises(ValueError, match="broken.png.*cannot be read"):
        data.scan_image_folder(str(tmp_path), strict=True)


def test_non_utf8_file_name_is_skipped_and_named(tmp_path):
    import os

    _class_folder_with_images(tmp_path)
    raw = os.path.join(os.fsencode(tmp_path / "a"), b"caf\xe9.png")
    with open(raw, "wb") as f:
        f.write((tmp_path / "a" / "0.png").read_bytes())
    files, _, skipped, _ = data.scan_image_folder(str(tmp_path))
    assert len(files) == 6 and len(skipped) == 1 and "not valid UTF-8" in skipped[0][1]


def test_cache_budget_reads_the_container_limit(tmp_path):
    """The cache budget used to read host free memory only, ignoring cgroup limits."""
    from keras_resnet.data import pipeline

    (tmp_path / "memory.max").write_text("1073741824\n")
    (tmp_path / "memory.current").write_text("268435456\n")
    assert pipeline._cgroup_memory_left(str(tmp_path)) == 768 << 20
    (tmp_path / "memory.max").write_text("max\n")
    assert pipeline._cgroup_memory_left(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(2 << 30))
    (v1 / "memory" / "memory.usage_in_bytes").write_text(str(1 << 30))
    assert pipeline._cgroup_memory_left(str(v1)) == 1 << 30


def test_train_and_eval_share_one_cache_budget(monkeypatch, caplog):
    """Train and eval used to get the full budget each."""
    import logging

    from keras_resnet.data import pipeline

    x = np.zeros((100, 16, 16, 3), np.uint8)  # 76,800 bytes decoded per split
    arrays = {"train": (x, np.arange(100) % 2), "test": (x, np.arange(100) % 2)}
    # Room for one split's images, not both (the fraction of "free memory" the cache may use).
    monkeypatch.setattr(pipeline, "_available_memory", lambda: int(100_000 / pipeline.CACHE_MEMORY_FRACTION))
    monkeypatch.setattr(pipeline, "_arrays_source", _not_in_memory(pipeline._arrays_source))
    with caplog.at_level(logging.INFO, logger="keras_resnet.data"):
        pipeline.make_pipelines(arrays, 10, augment=None)
    messages = [r.getMessage() for r in caplog.records if "Not caching" in r.getMessage()]
    assert len(messages) == 1 and "evaluation" in messages[0], messages


def _not_in_memory(open_arrays):
    """Array sources skip the cache (they are in memory already); pretend they are files."""
    import dataclasses

    def wrapped(*args, **kwargs):
        source = open_arrays(*args, **kwargs)
        return dataclasses.replace(source, train=dataclasses.replace(source.train, in_memory=False),
                                   eval=dataclasses.replace(source.eval, in_memory=False))
    return wrapped


@pytest.mark.parametrize("mix", [{}, {"mixup_alpha": 0.4}])
def test_a_resumed_stream_continues_the_original_one(mix):
    """A resume used to restart the shuffle and augmentation at element 0. (Bit-equal
    batches need `deterministic=True`; without it tf.data may reorder neighbours.)"""
    rng = np.random.default_rng(0)
    arrays = (rng.integers(0, 255, (40, 12, 12, 3), dtype=np.uint8), np.arange(40) % 4)
    full, _, _ = data.make_pipelines(arrays, 8, seed=3, augment="cifar", deterministic=True, **mix)
    uninterrupted = [b for _, b in zip(range(9), full)]
    resumed, _, _ = data.make_pipelines(arrays, 8, seed=3, augment="cifar", resume_epoch=2,
                                        steps_per_epoch=3, deterministic=True, **mix)
    for (x_want, y_want), (x_got, y_got) in zip(uninterrupted[6:], resumed):
        np.testing.assert_array_equal(x_got.numpy(), x_want.numpy())
        np.testing.assert_array_equal(y_got.numpy(), y_want.numpy())
    # The default epoch length is num_train // batch_size (what train() uses).
    default, _, info = data.make_pipelines(arrays, 8, seed=3, augment="cifar", resume_epoch=1,
                                           validation_split=0.0, deterministic=True, **mix)
    first = next(iter(default))[0].numpy()
    again = [b for _, b in zip(range(info.num_train // 8 + 1), data.make_pipelines(
        arrays, 8, seed=3, augment="cifar", validation_split=0.0, deterministic=True, **mix)[0])]
    np.testing.assert_array_equal(first, again[info.num_train // 8][0].numpy())
    with pytest.raises(ValueError, match="resume_epoch=-1"):
        data.make_pipelines(arrays, 8, resume_epoch=-1)


def test_a_mid_epoch_restore_rewinds_the_schedule_to_the_epoch_start(tmp_path):
    """With --backup-every-steps the schedule used to overshoot total_steps after a resume."""
    backup = tmp_path / "backup"
    model = _tiny_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    model.fit(np.zeros((16, 4), "float32"), np.zeros(16, "int64"), batch_size=2, epochs=1, verbose=0)
    model.optimizer.iterations.assign(25)  # epoch 2, batch 5 of 10
    backup.mkdir()
    model.save_weights(str(backup / "latest.weights.h5"))
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 5}))
    fresh = _tiny_model()
    fresh.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    fresh.optimizer.build(fresh.trainable_variables)
    cb = kr_callbacks.AtomicBackupAndRestore(str(backup), save_freq=5, steps_per_epoch=10)
    cb.set_model(fresh)
    cb.on_train_begin()
    assert int(fresh.optimizer.iterations.numpy()) == 20


def _hostile():
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import hostile_images
    return hostile_images


def test_bitfield_bmps_never_decode_with_swapped_channels(tmp_path):
    """TensorFlow ignores a 32-bit BI_BITFIELDS/BI_ALPHABITFIELDS BMP's masks and
    reads B, G, R: RGBA/ABGR masks came out channel-swapped in serving and training."""
    import tensorflow as tf

    from keras_resnet import image_guard
    from keras_resnet.data import folders

    h = _hostile()
    rgb = h.colourful(6, 5)
    decode = tf.function(lambda b: image_guard.decode_image(b, (6, 5), index=tf.constant(0)),
                         input_signature=[tf.TensorSpec([], tf.string)])
    # The layout TensorFlow assumes decodes exactly, whatever the header size.
    for compression, header in ((3, 40), (6, 40), (3, 108), (3, 124)):
        np.testing.assert_array_equal(decode(h.bmp32(rgb, h.BGRA_MASKS, compression, header)).numpy(), rgb)
    refused = {"rgba": h.bmp32(rgb, h.RGBA_MASKS), "abgr": h.bmp32(rgb, h.ABGR_MASKS),
               "rgba_v4": h.bmp32(rgb, h.RGBA_MASKS, header_size=108),
               "abgr_v5": h.bmp32(rgb, h.ABGR_MASKS, header_size=124),
               "rgba_alphabitfields": h.bmp32(rgb, h.RGBA_MASKS, compression=6)}
    for name, encoded in refused.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match="non-BGR bitfield BMP"):
            decode(encoded)
        assert image_guard.refused_bmp(encoded), name
    # The folder loader: what Pillow reads correctly (V4/V5 masks) goes to Pillow,
    # the rest is skipped and named (strict: a clear error). Nothing is swapped.
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "bgra.bmp").write_bytes(h.bmp32(rgb, h.BGRA_MASKS))
    for name, encoded in refused.items():
        (tmp_path / "a" / f"{name}.bmp").write_bytes(encoded)
    files, _, skipped, _ = data.scan_image_folder(str(tmp_path))
    by_name = {f.path.rsplit("/", 1)[1]: f for f in files if f.label == 0}
    assert sorted(by_name) == ["abgr.bmp", "abgr_v5.bmp", "bgra.bmp", "rgba_v4.bmp"] and len(files) == 5
    assert {p.rsplit("/", 1)[1]: r for p, r in skipped} == {
        "rgba.bmp": "unreadable image header (Unsupported BMP bitfields layout)",
        "rgba_alphabitfields.bmp": "unreadable image header (Unsupported BMP compression (6))"}
    for name in ("abgr.bmp", "rgba_v4.bmp", "abgr_v5.bmp", "bgra.bmp"):
        assert by_name[name].use_pil == (name != "bgra.bmp"), name
        f = by_name[name]  # decoded as the training pipeline does
        np.testing.assert_array_equal(folders._decode_file((tf.constant(f.path), tf.constant(f.use_pil))), rgb)
    with pytest.raises(ValueError, match=r"rgba\.bmp.*Unsupported BMP bitfields layout"):
        data.scan_image_folder(str(tmp_path), strict=True)


def _in_thread(fn, timeout=60):
    """Runs `fn` in a daemon thread: a stream that drops every element forever
    must fail the test, not hang it. Returns `fn`'s exception or None."""
    import threading

    out = {"error": None}

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"no error and no element for {timeout} s: the pipeline drops elements forever"
    return out["error"]


def _iterate_in_thread(iterator, count, timeout=60):
    """Takes `count` elements (see `_in_thread`). Returns (elements, error)."""
    items = []
    error = _in_thread(lambda: [items.append(next(iterator)) for _ in range(count)], timeout)
    return items, error


@pytest.mark.parametrize("cache", [False, True])
def test_files_vanishing_mid_run_stop_the_pipeline(tmp_path, cache, caplog):
    """An uncached folder pipeline whose share is unmounted mid-run used to drop
    every element forever (ignore_errors on an endless stream): training hung."""
    import logging
    import shutil

    import tensorflow as tf

    from keras_resnet.data import source

    root = tmp_path / "photos"
    _class_folder_with_images(root, n=6)
    train, evals, _ = data.make_pipelines(str(root), 2, validation_split=0.25, cache=cache, augment=None,
                                          image_size=8)
    it = iter(train)
    items, error = _iterate_in_thread(it, 3)
    assert len(items) == 3 and error is None
    moved = tmp_path / "unmounted"
    shutil.move(str(root), str(moved))  # every file gone at once
    with caplog.at_level(logging.WARNING, logger="keras_resnet.data"):
        items, error = _iterate_in_thread(it, 1000)
    if cache:  # the first epoch is in memory: nothing is read again
        assert error is None and len(items) == 1000
        return
    assert isinstance(error, tf.errors.InvalidArgumentError), error
    assert source.UNREADABLE_MESSAGE in str(error) and "unmounted" in str(error)
    assert "photos/a/0.png: it cannot be read any more" in caplog.text.replace(str(tmp_path) + "/", "")
    # Evaluation (finite) fails the same way rather than evaluating on nothing.
    _, error = _iterate_in_thread(iter(evals), 10)
    assert isinstance(error, tf.errors.InvalidArgumentError) and "evaluation: " in str(error)


def test_training_stops_with_a_clear_message_when_the_files_vanish(tmp_path):
    import shutil
    import types

    from keras_resnet import training

    root = tmp_path / "photos"
    _class_folder_with_images(root, n=6)
    train, _, _ = data.make_pipelines(str(root), 2, validation_split=0.0, cache=False, augment=None,
                                      image_size=8)
    shutil.rmtree(root)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    backup = types.SimpleNamespace(backup_dir=str(tmp_path / "backup"), model=None)
    error = _in_thread(lambda: training._fit(model, train, None, epochs=1, steps_per_epoch=100, callbacks=[],
                                             backup=backup, verbose=0, run_dir=str(tmp_path)))
    assert isinstance(error, training.TrainingInterrupted), error
    text = str(error)
    assert text.startswith("Training stopped: training: 33 of 33 image files could not be read any more "
                           "(33 in a row: deleted, or their share unmounted?)"), text
    assert "\n" not in text and "rerun the same command" in text


def test_eval_resize_reads_uint8_and_gives_the_same_values():
    """The resize used to run on a float32 copy of the whole decoded image; it now
    reads the uint8 image itself: the values must not change (the exported model
    and the eval pipeline share it)."""
    import tensorflow as tf

    from keras_resnet.preprocessing import eval_resize

    rng = np.random.default_rng(0)
    for shape in ((37, 53, 3), (300, 200, 3), (2, 40, 41, 3), (32, 32, 3)):
        x = rng.integers(0, 256, shape).astype(np.uint8)
        for size, crop in (((32, 32), None), ((24, 24), 0.875), ((16, 20), None)):
            got = eval_resize(tf.constant(x), size, crop)
            want = eval_resize(tf.constant(x.astype(np.float32)), size, crop)
            assert got.dtype == tf.float32
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    # The serving graph casts after the resize: no full-size float32 image.
    from keras_resnet import image_guard

    graph = tf.function(lambda d: image_guard.decode_image(d, (32, 32), 0.875, index=tf.constant(0)),
                        input_signature=[tf.TensorSpec([], tf.string)]).get_concrete_function().graph
    casts = [op for op in graph.get_operations() if op.type == "Cast" and op.get_attr("SrcT") == tf.uint8]
    assert not casts, [op.name for op in casts]


_JPEG_RSS_SCRIPT = """
import sys
import tensorflow as tf
from keras_resnet import image_guard
data = open(sys.argv[1], "rb").read()
fn = tf.function(lambda d: image_guard.decode_image(d, (32, 32), 0.875, index=tf.constant(0)),
                 input_signature=[tf.TensorSpec([], tf.string)])
fn(open(sys.argv[2], "rb").read())  # traced and warmed up on a small image
def peak_mb():  # VmHWM: ru_maxrss would carry the pytest parent's peak across exec
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
before = peak_mb()
assert fn(data).shape == (32, 32, 3)
print(peak_mb() - before)
"""


@pytest.mark.slow
def test_a_large_allowed_jpeg_is_not_cast_to_float32_at_full_size(tmp_path):
    """A 36-megapixel JPEG (under the default max_pixels) grew the serving decode's
    peak RSS by ~960 MB (a float32 copy, 4x the decoded bytes, then a float32
    resize); resizing the uint8 image keeps it near the decoded size (~115 MB)."""
    import os
    import subprocess
    import sys

    from PIL import Image

    side = 6000
    grey = Image.linear_gradient("L").resize((side, side))
    Image.merge("RGB", (grey, grey.rotate(90), grey.transpose(Image.FLIP_LEFT_RIGHT))).save(
        tmp_path / "big.jpg", quality=80)
    Image.new("RGB", (40, 40)).save(tmp_path / "small.jpg")
    import keras_resnet

    root = os.path.dirname(os.path.dirname(os.path.abspath(keras_resnet.__file__)))  # the code under test
    proc = subprocess.run([sys.executable, "-c", _JPEG_RSS_SCRIPT, str(tmp_path / "big.jpg"),
                           str(tmp_path / "small.jpg")], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    growth_mb = float(proc.stdout.split()[-1])
    decoded_mb = side * side * 3 / 2 ** 20  # 103 MB of uint8
    assert growth_mb < 2.5 * decoded_mb, f"peak RSS grew {growth_mb:.0f} MB decoding a {decoded_mb:.0f} MB image"


# The serving process of the hostile-request test: TensorFlow's runtime and the
# small model take ~650 MB here, the allowed 36-megapixel JPEG ~115 MB more
# (about 1,000 MB observed); a full-size float32 copy of that JPEG (the
# previous main) or an unbounded batch of tiny images would pass the bound.
HOSTILE_PEAK_RSS_MB = 1500


@pytest.mark.slow
def test_hostile_requests_to_the_saved_model_without_keras(tmp_path):
    """Each kind of request once, in a process where keras cannot be imported:
    good ones (PNG, JPEG batch, GIF, BGRA bitfield BMP, 64 tiny images, an allowed
    36-megapixel JPEG) are answered as the Keras model answers; hostile ones
    (5,000 tiny images, over-limit and header-bomb images, a GIF with a huge later
    frame, RGBA/ABGR bitfield BMPs, garbage, empty, truncated, a good image beside
    garbage) fail alone with InvalidArgument; peak RSS stays under the bound."""
    h = _hostile()  # puts benchmarks/ on sys.path
    import load_serving

    manifest = load_serving.build(str(tmp_path))
    kinds = manifest["kinds"]
    assert {"many_tiny_images", "jpeg_huge_allowed", "gif_huge_later_frame", "bmp_rgba_masks", "garbage",
            "empty", "truncated_png", "truncated_jpeg"} <= set(kinds) and h
    report = load_serving.run_server_process(str(tmp_path), callers=1, requests=len(kinds))
    assert report["keras_importable"] is False
    assert report["unexpected"] == {}, (report["unexpected"], report["messages"])
    assert all(sum(counts.values()) == 1 for counts in report["outcomes"].values()), report["outcomes"]
    messages = {kind: text for kind, (_, text) in report["messages"].items()}
    assert "holds 5000 images, more than max_batch_size=64" in messages["many_tiny_images"]
    assert "non-BGR bitfield BMP" in messages["bmp_rgba_masks"]
    assert "more than max_pixels" in messages["gif_huge_later_frame"]
    assert report["peak_rss_mb"] < HOSTILE_PEAK_RSS_MB, report["peak_rss_mb"]
