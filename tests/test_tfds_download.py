"""A tensorflow-datasets dataset that is not prepared is downloaded and prepared on
first use (here from a file server on 127.0.0.1: no internet), and `offline`
refuses with the clear error instead."""

import functools
import http.server
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_resnet import data

_URL = {"value": None}


class KerasResnetLoopbackTiny(tfds.core.GeneratorBasedBuilder):
    """12 random 8x8 images in 3 classes, fetched from `_URL["value"]`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(num_classes=3)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        path = dl_manager.download(_URL["value"])
        return {"train": self._generate_examples(path, 0, 9), "test": self._generate_examples(path, 9, 12)}

    def _generate_examples(self, path, low, high):
        with open(path, "rb") as f:
            arrays = np.load(f)
            x, y = arrays["x"], arrays["y"]
        for i in range(low, high):
            yield i, {"image": x[i], "label": int(y[i])}


@pytest.fixture
def file_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    rng = np.random.default_rng(0)
    np.savez(served / "tiny.npz", x=rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), y=np.arange(12) % 3)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _URL["value"] = f"http://127.0.0.1:{server.server_address[1]}/tiny.npz"
    yield requests
    server.shutdown()


def test_missing_dataset_is_fetched_and_prepared_then_read_offline(tmp_path, file_server):
    root = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="not prepared.*Offline.*nothing is downloaded"):
        data.make_pipelines("keras_resnet_loopback_tiny", 4, data_dir=root, offline=True)
    assert file_server == []
    train, evals, info = data.make_pipelines("keras_resnet_loopback_tiny", 4, data_dir=root, augment=None)
    assert any("tiny.npz" in r for r in file_server)  # fetched once, from the server
    assert (info.num_train, info.num_eval, info.num_classes) == (9, 3, 3)
    x, y = next(iter(train))
    assert x.shape == (4, 8, 8, 3) and y.shape == (4, 3)
    fetched = len(file_server)
    # Prepared now: offline reads it, and nothing is fetched again.
    _, _, again = data.make_pipelines("keras_resnet_loopback_tiny", 4, data_dir=root, offline=True)
    assert again.num_train == 9 and len(file_server) == fetched


def test_failed_download_is_a_clear_error(tmp_path, file_server):
    _URL["value"] = _URL["value"].replace("tiny.npz", "missing.npz")
    with pytest.raises(ValueError, match=r"Could not download and prepare.*keras_resnet_loopback_tiny.*--offline"):
        data.make_pipelines("keras_resnet_loopback_tiny", 4, data_dir=str(tmp_path / "tfds"))
