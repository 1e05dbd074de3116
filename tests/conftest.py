"""Shared test fixtures. Keep TensorFlow quiet and the tests deterministic."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "tensorflow_datasets"


def real_tfds_dir():
    """The directory holding the real, prepared CIFAR-10, or None."""
    for candidate in (os.environ.get("TFDS_DATA_DIR"), str(SHARED_TFDS)):
        if candidate and (pathlib.Path(candidate) / "cifar10").is_dir():
            return candidate
    return None


@pytest.fixture
def cifar10_dir():
    """Skips the test with a reason when the real CIFAR-10 is not prepared here."""
    path = real_tfds_dir()
    if path is None:
        pytest.skip("real CIFAR-10 not found: set TFDS_DATA_DIR to a tensorflow_datasets "
                    "directory holding cifar10/3.0.2 (CI uses ../shared/tensorflow_datasets)")
    return path


def tiny_image_arrays(seed=0):
    """16 training and 8 test 32x32 uint8 images with two classes, as `make_pipelines` takes them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {"train": (rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8), np.arange(16) % 2),
            "test": (rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), np.arange(8) % 2)}


@pytest.fixture
def no_downloads(monkeypatch):
    """Any attempt to fetch a file fails the test instead of reaching the network."""
    from keras.src.utils import file_utils

    def refuse(fname=None, origin=None, *args, **kwargs):
        raise AssertionError(f"test tried to download {origin or fname!r}")

    monkeypatch.setattr(file_utils, "get_file", refuse)
    monkeypatch.setattr(keras.utils, "get_file", refuse)


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Every test starts from the same seed, float32 policy and a clean session."""
    keras.utils.set_random_seed(1234)
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()
