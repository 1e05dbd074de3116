"""Export: a SavedModel served without keras/keras_resnet, its signatures and bad
requests; TFLite and ONNX parity; the CLI hook. Follows keras's
`keras/src/export/saved_model_test.py`: export, reload, compare outputs, call
again with another batch size.
"""

import importlib
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_resnet as kr
from keras_resnet.preprocessing import eval_resize

# The module (the package re-exports the function `export` under the same name).
ex = importlib.import_module("keras_resnet.export")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = [f"class_{i}" for i in range(10)]
SIZE = (32, 32)
MAX_PIXELS = 1_000_000
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)


# ============================================================================ helpers
def tiny_model(**overrides):
    """A two-stage CIFAR ResNet with non-trivial BatchNorm statistics, so the
    inference-mode normalisation (and its folding) is actually exercised."""
    options = dict(stages=[(1, 8, 1), (1, 16, 2)], block="basic", stem="cifar", stem_filters=8,
                   preprocessing="cifar10")
    options.update(overrides)
    model = kr.ResNet(SIZE + (3,), 10, **options)
    rng = np.random.default_rng(0)
    for layer in kr.walk_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.uniform(-1, 1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
    return model


def pictures(n, size=SIZE, seed=0):
    """Smooth images plus mild noise: JPEG keeps them recognisable."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        img = np.stack([np.sin(a * xx + b), np.cos(b * yy + c), np.sin(c * (xx + yy))], -1)
        out.append(np.clip(127.5 + 100 * img + rng.normal(0, 8, img.shape), 0, 255))
    return np.asarray(out, dtype="uint8")


def encode(array_or_image, fmt, mode=None, **kwargs):
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    if mode:
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reference(model, pixels, crop_fraction=None):
    """What the Keras model predicts for decoded pixels under the eval geometry."""
    return model.predict(eval_resize(np.asarray(pixels, "float32"), SIZE, crop_fraction).numpy(), verbose=0)


def error_text(excinfo):
    return excinfo.value.message if hasattr(excinfo.value, "message") else str(excinfo.value)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    out = tmp_path_factory.mktemp("export")
    paths = ex.export(model, str(out), class_names=NAMES, max_pixels=MAX_PIXELS,
                      formats=("saved_model", "tflite", "onnx"), tflite_quantize=("dynamic", "float16"))
    serve = tf.saved_model.load(paths["saved_model"])
    return model, paths, out, serve


# ============================================================================ layout and arguments
def test_numbered_layout_next_version_metadata_and_argument_errors(exported, tmp_path):
    model, paths, out, _ = exported
    assert paths["saved_model"] == os.path.join(str(out), "1")
    assert set(paths) == {"saved_model", "tflite", "tflite_dynamic", "tflite_float16", "onnx"}
    for name in ("saved_model.pb", "variables", "assets.extra/" + ex.WARMUP_FILE):
        assert os.path.exists(os.path.join(paths["saved_model"], name)), name
    meta = json.load(open(os.path.join(paths["saved_model"], "assets.extra", ex.METADATA_FILE)))
    assert meta["class_names"] == NAMES and meta["image_size"] == [32, 32] and meta["max_pixels"] == MAX_PIXELS
    # Next version, an explicit one, and no half-written temporary left behind.
    again = ex.export(model, str(out), warmup=False)
    assert again["saved_model"] == os.path.join(str(out), "2")
    assert ex.export(model, str(out), version=7)["saved_model"] == os.path.join(str(out), "7")
    assert ex.export(model, str(out))["saved_model"] == os.path.join(str(out), "8")
    assert not [d for d in os.listdir(out) if d.startswith(".tmp")]
    with pytest.raises(ValueError, match="version 2 already exists"):
        ex.export(model, str(out), version=2)
    bad = [(dict(class_names=["a", "b"]), "class_names"), (dict(formats=("pickle",)), "formats"),
           (dict(top_k=0), "top_k=0"), (dict(max_pixels=-1), "max_pixels=-1"), (dict(version=0), "version=0"),
           (dict(crop_fraction=1.5), "crop_fraction=1.5"), (dict(image_size=(32,)), "image_size"),
           (dict(normalization="imagenet"), "normalise twice"),
           (dict(formats="tflite", tflite_quantize=("int4",)), "tflite_quantize")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            ex.export(model, str(tmp_path / "bad"), **kwargs)
    with pytest.raises(ValueError, match="quantize='int4'"):
        ex.export_tflite(model, str(tmp_path / "never.tflite"), quantize="int4")
    headless = kr.ResNet(SIZE + (3,), 10, stages=[(1, 8, 1)], include_top=False, pooling=None)
    with pytest.raises(ValueError, match="output_shape"):
        ex.export(headless, str(tmp_path / "bad"))


# ============================================================================ the SavedModel
def test_fresh_process_without_keras_matches_predict(exported, tmp_path):
    model, paths, _, _ = exported
    batch = pictures(4)
    other = pictures(3, size=(48, 40), seed=1)
    np.save(tmp_path / "ref.npy", reference(model, batch))
    np.save(tmp_path / "ref_other.npy", reference(model, other))
    np.save(tmp_path / "other.npy", other)
    with open(tmp_path / "requests.json", "w") as f:
        json.dump([encode(x, "PNG").hex() for x in batch], f)  # PNG: lossless, same pixels
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        sys.modules["keras"] = None          # any import of keras or keras_resnet now fails
        sys.modules["keras_resnet"] = None
        for name in ("keras", "keras_resnet"):
            try:
                __import__(name)
                raise SystemExit(name + " importable")
            except ImportError:
                pass
        import tensorflow as tf
        m = tf.saved_model.load({paths['saved_model']!r})
        d = {str(tmp_path)!r}
        reqs = [bytes.fromhex(h) for h in json.load(open(d + "/requests.json"))]
        out = m.signatures["serving_default"](image_bytes=tf.constant(reqs))
        two = m.signatures["serving_default"](image_bytes=tf.constant(reqs[:2]))   # another batch size
        other = np.load(d + "/other.npy")                                         # another image size
        f32 = m.signatures["predict_images"](images=tf.constant(other, tf.float32))
        u8 = m.signatures["predict_images_uint8"](images=tf.constant(other))
        ref, ref_other = np.load(d + "/ref.npy"), np.load(d + "/ref_other.npy")
        print(json.dumps({{
            "diff": float(np.abs(out["probabilities"].numpy() - ref).max()),
            "diff_two": float(np.abs(two["probabilities"].numpy() - ref[:2]).max()),
            "diff_f32": float(np.abs(f32["probabilities"].numpy() - ref_other).max()),
            "diff_u8": float(np.abs(u8["probabilities"].numpy() - ref_other).max()),
            "shapes": {{k: [v.dtype.name] + v.shape.as_list() for k, v in out.items()}},
            "labels": out["labels"].numpy()[:, 0].astype(str).tolist(),
            "classes": out["classes"].numpy()[:, 0].tolist(),
            "scores": out["scores"].numpy()[:, 0].tolist(),
            "keras_loaded": "keras" in sys.modules and sys.modules["keras"] is not None}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["keras_loaded"]
    assert out["diff"] <= 1e-4 and out["diff_two"] <= 1e-4
    assert out["diff_f32"] <= 1e-4 and out["diff_u8"] <= 1e-4
    assert out["shapes"] == {"probabilities": ["float32", 4, 10], "classes": ["int32", 4, 5],
                             "scores": ["float32", 4, 5], "labels": ["string", 4, 5]}
    ref = reference(model, batch)
    assert out["classes"] == np.argmax(ref, -1).tolist()
    assert out["labels"] == [NAMES[i] for i in np.argmax(ref, -1)]
    np.testing.assert_allclose(out["scores"], ref.max(-1), atol=1e-4)


def test_saved_model_cli_lists_signatures(exported):
    _, paths, _, _ = exported
    cli = [shutil.which("saved_model_cli")] if shutil.which("saved_model_cli") else [
        sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    res = subprocess.run(cli + ["show", "--all", "--dir", paths["saved_model"]], capture_output=True,
                         text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-2000:]
    sections = {}
    for block in res.stdout.split("signature_def[")[1:]:
        sections[block.split("]", 1)[0].strip("'")] = block
    assert {"serving_default", "predict_images", "predict_images_uint8"} <= set(sections)
    inputs = {"serving_default": ("image_bytes", "DT_STRING", "(-1)"),
              "predict_images": ("images", "DT_FLOAT", "(-1, -1, -1, 3)"),
              "predict_images_uint8": ("images", "DT_UINT8", "(-1, -1, -1, 3)")}
    for name, (key, dtype, shape) in inputs.items():
        text = " ".join(sections[name].split())
        assert f"inputs['{key}'] tensor_info: dtype: {dtype} shape: {shape}" in text, (name, text)
        for output, odtype, oshape in (("probabilities", "DT_FLOAT", "(-1, 10)"), ("classes", "DT_INT32", "(-1, 5)"),
                                       ("scores", "DT_FLOAT", "(-1, 5)"), ("labels", "DT_STRING", "(-1, 5)")):
            assert f"outputs['{output}'] tensor_info: dtype: {odtype} shape: {oshape}" in text, (name, output)
        assert "Method name is: tensorflow/serving/predict" in text


# Lossless encodings: the served probabilities must match the model on Pillow's
# decode of the same bytes (16-bit PNG: TensorFlow keeps the high byte).
LOSSLESS = {
    "png_rgb": lambda x: encode(x, "PNG"),
    "png_rgba": lambda x: encode(x, "PNG", "RGBA"),            # alpha dropped, not composited
    "png_grey": lambda x: encode(x, "PNG", "L"),
    "png_grey_alpha": lambda x: encode(x, "PNG", "LA"),
    "png_palette": lambda x: encode(x, "PNG", "P"),
    "bmp_rgb": lambda x: encode(x, "BMP"),
    "bmp_rgba": lambda x: encode(x, "BMP", "RGBA"),
    "bmp_grey": lambda x: encode(x, "BMP", "L"),
    "gif": lambda x: encode(x, "GIF"),
    "webp_lossless": lambda x: encode(x, "WEBP", lossless=True),
}


def pillow_rgb(data):
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def test_lossless_formats_and_modes_match_keras(exported):
    model, _, _, serve = exported
    x = pictures(1, size=(40, 50), seed=3)[0]
    requests = [make(x) for make in LOSSLESS.values()]
    expected = [pillow_rgb(r) for r in requests]
    assert np.array_equal(expected[0], x) and np.array_equal(expected[1], x)
    grey16 = x[..., 0].astype("uint16") * 257 + 100   # 16-bit grey; libpng keeps the high byte
    requests.append(encode(Image.fromarray(grey16), "PNG"))
    expected.append(np.repeat((grey16 >> 8).astype("uint8")[..., None], 3, -1))
    got = serve.signatures["serving_default"](image_bytes=tf.constant(list(requests)))["probabilities"].numpy()
    ref = reference(model, np.stack(expected))
    for i, name in enumerate(list(LOSSLESS) + ["png_16bit"]):
        np.testing.assert_allclose(got[i], ref[i], atol=1e-4, err_msg=name)
    # Animated GIF: the first frame is served.
    frames = [Image.fromarray(f) for f in pictures(3, size=(40, 50), seed=4)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
    first = pillow_rgb(anim.getvalue())
    got = serve.signatures["serving_default"](image_bytes=tf.constant([anim.getvalue()]))["probabilities"]
    np.testing.assert_allclose(got.numpy(), reference(model, first[None]), atol=1e-4)


@pytest.mark.parametrize("name, fmt, mode, kwargs", [
    ("jpeg", "JPEG", None, {}), ("jpeg_progressive", "JPEG", None, {"progressive": True}),
    ("jpeg_grey", "JPEG", "L", {}), ("jpeg_cmyk", "JPEG", "CMYK", {"quality": 95}),
    ("webp_lossy", "WEBP", None, {}), ("webp_rgba", "WEBP", "RGBA", {})])
def test_lossy_formats_decode_like_pillow(exported, name, fmt, mode, kwargs):
    """Served = the model on TensorFlow's decode, and that decode agrees with
    Pillow's (for CMYK: libjpeg converts Adobe's inverted CMYK to RGB)."""
    model, _, _, serve = exported
    data = encode(pictures(1, size=(40, 50), seed=5)[0], fmt, mode, **kwargs)
    tf_pixels = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    pil_pixels = pillow_rgb(data)
    assert np.abs(tf_pixels.astype(int) - pil_pixels).mean() < 2.0, name
    got = serve.signatures["serving_default"](image_bytes=tf.constant([data]))["probabilities"].numpy()
    np.testing.assert_allclose(got, reference(model, tf_pixels[None]), atol=1e-4)


def test_crop_fraction_geometry_logits_and_added_normalization(tmp_path):
    # ImageNet-style eval crop: resize the short side to size / 0.875, centre crop.
    model = tiny_model()
    x = pictures(2, size=(48, 40), seed=6)
    path = ex.export(model, str(tmp_path / "crop"), crop_fraction=0.875, warmup=False)["saved_model"]
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serving_default"](image_bytes=tf.constant([encode(i, "PNG") for i in x]))
    np.testing.assert_allclose(got["probabilities"].numpy(), reference(model, x, 0.875), atol=1e-4)
    assert "labels" not in got  # no class names, no labels output
    # A logits model is served with a softmax; a model without normalisation gets one added.
    raw = tiny_model(preprocessing=None, classifier_activation=None)
    path = ex.export(raw, str(tmp_path / "raw"), normalization="cifar10", warmup=False)["saved_model"]
    got = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(x, tf.float32))
    mean, std = kr.NORMALIZATION_STATS["cifar10"]
    logits = raw.predict((eval_resize(x.astype("float32"), SIZE).numpy() - mean) / std, verbose=0)
    np.testing.assert_allclose(got["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), atol=1e-4)


def test_fold_batchnorm_matches_and_removes_batchnorm_ops(exported, tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    model, paths, _, _ = exported
    plain = ex.export(model, str(tmp_path / "plain"), fold_batchnorm=False, warmup=False)["saved_model"]
    path = ex.export(model, str(tmp_path), fold_batchnorm=True, warmup=False)["saved_model"]
    x = pictures(3, size=(36, 30), seed=7)
    for p in (path, plain):
        got = tf.saved_model.load(p).signatures["predict_images_uint8"](images=tf.constant(x))
        np.testing.assert_allclose(got["probabilities"].numpy(), reference(model, x), atol=1e-4)

    def op_counts(p):
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(p, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        ops = [n.op for fn in proto.meta_graphs[0].graph_def.library.function for n in fn.node_def]
        return {op: ops.count(op) for op in ("Conv2D", "Rsqrt", "FusedBatchNormV3")}

    def batchnorm_ops(counts):
        return counts["Rsqrt"] + counts["FusedBatchNormV3"]

    # BatchNorm is in the plain export, and gone when folded (keras_resnet.deploy).
    assert batchnorm_ops(op_counts(plain)) > 0
    folded = op_counts(path)
    assert batchnorm_ops(folded) == 0 and folded["Conv2D"] > 0
    # The default ("auto") folds a float32 model: the fixture's export is folded.
    assert batchnorm_ops(op_counts(paths["saved_model"])) == 0
    meta = json.load(open(os.path.join(paths["saved_model"], "assets.extra", ex.METADATA_FILE)))
    assert meta["fold_batchnorm"] is True
    with pytest.raises(ValueError, match="fold_batchnorm='yes'"):
        ex.export(model, str(tmp_path / "bad"), fold_batchnorm="yes")


def test_mixed_precision_model_exports(tmp_path):
    """Folded by default (its weight casts fold away), and unfolded on request."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = tiny_model()
    keras.mixed_precision.set_global_policy("float32")
    x = pictures(2, seed=8)
    for fold in ("auto", False):
        path = ex.export(model, str(tmp_path), warmup=False, fold_batchnorm=fold)["saved_model"]
        got = tf.saved_model.load(path).signatures["predict_images_uint8"](images=tf.constant(x))["probabilities"]
        assert got.dtype == tf.float32
        # bfloat16 keeps 8 mantissa bits (0.4% relative): the folded export rounds
        # the folded kernels, predict() rounds the kernels and then normalises.
        np.testing.assert_allclose(got.numpy(), reference(model, x), atol=3e-3)


# ============================================================================ bad requests
def _png_header(width, height):
    """Signature + IHDR only: no pixel data at all."""
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\0" * 4


def _gif_small_screen(width, height):
    """A real GIF whose logical screen says 1x1 while its frame is width x height:
    TensorFlow decodes the frame size, so the screen alone must not be trusted."""
    data = bytearray(encode(np.zeros((height, width, 3), np.uint8), "GIF"))
    data[6:10] = bytes([1, 0, 1, 0])
    return bytes(data)


def test_header_pixels_without_decoding():
    x = pictures(1, size=(21, 37))[0]
    pixels = tf.function(ex.header_pixels, input_signature=[tf.TensorSpec([], tf.string)])
    for fmt, mode, kwargs in (("JPEG", None, {}), ("JPEG", "CMYK", {}), ("PNG", None, {}), ("GIF", None, {}),
                              ("BMP", None, {}), ("WEBP", None, {}), ("WEBP", None, {"lossless": True}),
                              ("WEBP", "RGBA", {})):
        assert float(pixels(encode(x, fmt, mode, **kwargs))) == 21 * 37, (fmt, mode, kwargs)
    assert float(pixels(_png_header(100_000, 100_000))) == 1e10
    # 32-bit fields multiplied in int64 would wrap negative and slip under any limit.
    assert float(pixels(_png_header(2 ** 32 - 1, 2 ** 32 - 1))) > 1e19
    assert float(pixels(_gif_small_screen(300, 200))) == 300 * 200
    frames = [Image.fromarray(f) for f in pictures(3, size=(20, 30))]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
    assert float(pixels(anim.getvalue())) == 3 * 20 * 30  # giflib decodes every frame
    top_down = bytearray(encode(x, "BMP"))
    top_down[22:26] = (-21 & 0xFFFFFFFF).to_bytes(4, "little")
    assert float(pixels(bytes(top_down))) == 21 * 37
    for junk in (b"garbage", b"", encode(x, "BMP", "P"), b"\xff\x0a" + b"\0" * 40):  # last: JPEG XL
        assert float(pixels(junk)) == -1.0


def test_bad_requests_fail_alone_and_the_server_survives(exported):
    _, _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    good = encode(pictures(1)[0], "PNG")
    frames = [Image.fromarray(f) for f in pictures(2)]
    anim_webp = io.BytesIO()
    frames[0].save(anim_webp, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    big_jpeg = encode(np.zeros((1000, 2000, 3), np.uint8), "JPEG")
    cases = [
        (b"definitely not an image", "image_bytes\\[1\\] is not a JPEG, PNG, GIF, BMP or WebP image"),
        (b"", "is not a JPEG, PNG, GIF, BMP or WebP image"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\0" * 40, "is not a JPEG, PNG"),  # JPEG XL: refused
        (good[:60], "Invalid PNG"),                                              # truncated: the decoder
        (encode(pictures(1)[0], "JPEG")[:300], "JPEG"),
        (_png_header(100_000, 100_000), "has 10000000000 pixels, more than max_pixels=1000000"),
        (encode(np.zeros((1000, 1001, 3), np.uint8), "PNG"), "has 1001000 pixels, more than max_pixels"),
        (big_jpeg, "has 2000000 pixels, more than max_pixels"),
        (_gif_small_screen(1100, 1000), "has 1100000 pixels, more than max_pixels"),
        (encode(np.zeros((1000, 1001, 3), np.uint8), "BMP"), "more than max_pixels"),
        (encode(np.zeros((1000, 1001, 3), np.uint8), "WEBP", lossless=True), "more than max_pixels"),
        (encode(pictures(1)[0], "BMP", "P"), "unsupported variant"),             # TF ignores BMP palettes
        (anim_webp.getvalue(), "unsupported variant"),                            # TF 2.21 mishandles these
    ]
    for data, message in cases:
        with pytest.raises(tf.errors.InvalidArgumentError) as excinfo:
            serve(image_bytes=tf.constant([good, data]))
        assert __import__("re").search(message, error_text(excinfo)), (data[:12], error_text(excinfo)[-400:])
        ok = serve(image_bytes=tf.constant([good]))  # the next request is served
        assert ok["probabilities"].shape == (1, 10)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert {k: tuple(v.shape) for k, v in empty.items()} == {
        "probabilities": (0, 10), "classes": (0, 5), "scores": (0, 5), "labels": (0, 5)}
    empty = loaded.signatures["predict_images"](images=tf.zeros((0, 7, 9, 3)))
    assert empty["probabilities"].shape == (0, 10)


def test_fuzzed_requests_never_crash_the_process(exported):
    """Mutated JPEG/PNG/GIF/BMP/WebP bytes through serving_default in a child
    process: every request is served or fails with InvalidArgument, and the
    process neither aborts nor hangs (TF 2.21's WebP decoder corrupts its heap
    on animated WebP with channels=0: decoders can crash, so check)."""
    _, paths, _, _ = exported
    script = textwrap.dedent(f"""
        import io, json, sys
        import numpy as np
        from PIL import Image
        import tensorflow as tf
        serve = tf.saved_model.load({paths['saved_model']!r}).signatures["serving_default"]
        rng = np.random.default_rng(0)
        x = rng.integers(0, 255, (24, 32, 3)).astype("uint8")
        def enc(fmt, mode="RGB", **kw):
            b = io.BytesIO(); Image.fromarray(x).convert(mode).save(b, fmt, **kw); return b.getvalue()
        frames = [Image.fromarray(rng.integers(0, 255, (24, 32, 3)).astype("uint8")) for _ in range(3)]
        anim = io.BytesIO(); frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
        bases = [enc("JPEG"), enc("JPEG", progressive=True), enc("PNG"), enc("PNG", "P"), enc("GIF"),
                 anim.getvalue(), enc("BMP"), enc("WEBP"), enc("WEBP", lossless=True), enc("JPEG", "CMYK")]
        counts = {{"ok": 0, "invalid": 0}}
        for base in bases:
            for _ in range(25):
                b = bytearray(base)
                for _ in range(int(rng.integers(1, 4))):
                    if not b:
                        break
                    op, pos = int(rng.integers(0, 3)), int(rng.integers(0, len(b)))
                    if op == 0:
                        b[pos] = int(rng.integers(0, 256))
                    elif op == 1:
                        del b[pos:]
                    else:
                        b[pos:pos] = bytes(rng.integers(0, 256, 4).astype("uint8"))
                try:
                    serve(image_bytes=tf.constant([bytes(b)]))
                    counts["ok"] += 1
                except tf.errors.InvalidArgumentError:
                    counts["invalid"] += 1
        print(json.dumps(counts))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = json.loads(res.stdout.strip().splitlines()[-1])
    assert counts["ok"] + counts["invalid"] == 250 and counts["invalid"] > 0 and counts["ok"] > 0


def _length_delimited_fields(buf):
    """{field number: [payload, ...]} of a protobuf message whose fields are all
    length-delimited (wire type 2), as the PredictionLog path used here is."""
    def varint(i):
        shift = value = 0
        while True:
            byte = buf[i]
            value |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if byte < 0x80:
                return value, i
    fields, i = {}, 0
    while i < len(buf):
        key, i = varint(i)
        assert key & 7 == 2, f"unexpected wire type in {buf[:20]!r}"
        size, i = varint(i)
        fields.setdefault(key >> 3, []).append(buf[i:i + size])
        i += size
    return fields


def test_warmup_record_is_a_valid_prediction_log(exported):
    from tensorflow.core.framework import tensor_pb2

    model, paths, _, loaded = exported
    record = next(iter(tf.data.TFRecordDataset(
        os.path.join(paths["saved_model"], "assets.extra", ex.WARMUP_FILE)))).numpy()
    # PredictionLog.predict_log(6).request(1): model_spec(1).signature_name(3), inputs(2) map entry.
    request = _length_delimited_fields(_length_delimited_fields(_length_delimited_fields(record)[6][0])[1][0])
    assert _length_delimited_fields(request[1][0])[3] == [b"serving_default"]
    entry = _length_delimited_fields(request[2][0])
    assert entry[1] == [b"image_bytes"]
    tensor = tf.make_ndarray(tensor_pb2.TensorProto.FromString(entry[2][0]))
    try:  # and with TF Serving's own protos, when tensorflow-serving-api is installed
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        prediction_log_pb2 = None
    if prediction_log_pb2 is not None:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        assert log.predict_log.request.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(log.predict_log.request.inputs["image_bytes"]).tolist() == tensor.tolist()
    # Replaying it (what TF Serving does at load) runs the model on a grey image.
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(tensor))["probabilities"].numpy()
    np.testing.assert_allclose(got, reference(model, np.full((1,) + SIZE + (3,), 128, np.uint8)), atol=1e-4)


def test_rest_and_grpc_request_bodies_from_the_docs(exported):
    """The request bodies docs/export.md shows reach the signature as TF Serving
    builds them: REST row format {"instances": [{"b64": ...}]} -> string [N];
    gRPC PredictRequest.inputs["image_bytes"] from tf.make_tensor_proto."""
    import base64

    model, _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    images = pictures(2, seed=12)
    files = [encode(x, "PNG") for x in images]
    body = json.loads(json.dumps({"signature_name": "serving_default",
                                  "instances": [{"b64": base64.b64encode(f).decode()} for f in files]}))
    fn = loaded.signatures[body["signature_name"]]
    inputs = list(fn.structured_input_signature[1])
    assert inputs == ["image_bytes"]  # one input: TF Serving maps each instance value onto it
    out = fn(image_bytes=tf.constant([base64.b64decode(i["b64"]) for i in body["instances"]]))
    predictions = [{k: v.numpy()[i].tolist() for k, v in out.items()} for i in range(len(files))]  # row format
    ref = reference(model, images)
    assert [p["labels"][0].decode() for p in predictions] == [NAMES[i] for i in ref.argmax(-1)]
    np.testing.assert_allclose([p["probabilities"] for p in predictions], ref, atol=1e-4)
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "cifar10_resnet20"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(files, dtype=tf.string))
    request = predict_pb2.PredictRequest.FromString(request.SerializeToString())  # over the wire
    got = serve(image_bytes=tf.constant(tf.make_ndarray(request.inputs["image_bytes"])))
    np.testing.assert_allclose(got["probabilities"].numpy(), ref, atol=1e-4)


# ============================================================================ TFLite and ONNX
@pytest.mark.parametrize("key, atol", [("tflite", 1e-4), ("tflite_float16", 1e-2), ("tflite_dynamic", 5e-2)])
def test_tflite_matches_keras(exported, key, atol):
    model, paths, _, _ = exported
    batch = pictures(4, seed=9).astype("float32")
    expected = model.predict(batch, verbose=0)
    runner = tf.lite.Interpreter(model_path=paths[key]).get_signature_runner("serve")
    got = runner(images=batch)["probabilities"]
    np.testing.assert_allclose(got, expected, atol=atol, err_msg=key)
    assert (got.argmax(-1) == expected.argmax(-1)).mean() >= 0.75
    assert runner(images=batch[:1])["probabilities"].shape == (1, 10)  # another batch size
    sizes = {k: os.path.getsize(paths[k]) for k in ("tflite", "tflite_float16", "tflite_dynamic")}
    assert sizes["tflite_dynamic"] < sizes["tflite_float16"] < sizes["tflite"]


def test_onnx_matches_keras(exported):
    ort = pytest.importorskip("onnxruntime")
    model, paths, _, _ = exported
    sess = ort.InferenceSession(paths["onnx"], providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    assert [o.name for o in sess.get_outputs()] == ["probabilities"]
    for n in (3, 1):
        batch = pictures(n, seed=10 + n).astype("float32")
        got = sess.run(["probabilities"], {"images": batch})[0]
        np.testing.assert_allclose(got, model.predict(batch, verbose=0), atol=1e-4)


# ============================================================================ CLI hook
def test_export_run_and_cli(tmp_path):
    model = tiny_model()
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    names = [f"n{i}" for i in range(10)]
    (run / "config.json").write_text(json.dumps(
        {"config": {}, "data": {"class_names": names, "image_size": [32, 32], "crop_fraction": None}}))
    paths = ex.export_run(str(run), str(tmp_path / "serve"), warmup=False)
    out = tf.saved_model.load(paths["saved_model"]).signatures["serving_default"](
        image_bytes=tf.constant([encode(pictures(1)[0], "PNG")]))
    assert out["labels"].numpy()[0][0].decode() in names
    # Missing config.json: no labels, the model's own size.
    os.remove(run / "config.json")
    paths = ex.export_run(str(run), str(tmp_path / "serve"), version=5, warmup=False)
    assert paths["saved_model"].endswith(os.sep + "5")
    assert "labels" not in tf.saved_model.load(paths["saved_model"]).signatures["serving_default"].structured_outputs
    with pytest.raises(ValueError, match="No model.keras"):
        ex.export_run(str(tmp_path / "nope"), str(tmp_path / "x"))
    # The command line (keras_resnet/cli.py calls export_run).
    base = [sys.executable, "-m", "keras_resnet", "export"]
    res = subprocess.run(base + [str(run), "--output", str(tmp_path / "cli"), "--format", "onnx"],
                         capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert os.path.exists(tmp_path / "cli" / "model.onnx")
    res = subprocess.run(base + [str(tmp_path / "nope"), "--output", str(tmp_path / "x")],
                         capture_output=True, text=True, env=ENV, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "No model.keras" in res.stderr
