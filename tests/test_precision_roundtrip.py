"""Train in every precision, then use the model in fresh processes (issue 23).

A model trained under a mixed-precision policy must evaluate, predict, export,
serve and fine-tune in a process whose global policy is the default (float32),
as a user's next command or notebook is. The training process records its own
outputs on a fixed batch; every later path must agree with them.

Tolerances are on softmax probabilities, against the training process's eager
`model(x, training=False)`:
    float32         1e-4   (graph vs eager and the folded export: float rounding)
    mixed_float16   1e-2   (10-bit mantissa; graph-mode fusions round differently)
    mixed_bfloat16  5e-2   (8-bit mantissa: ~0.4% per op, compounding over ~20 layers)
and the top-1 class must agree on every image of the batch.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from roundtrip_driver import MODELS

DRIVER = os.path.join(os.path.dirname(__file__), "roundtrip_driver.py")
TOLERANCE = {"float32": 1e-4, "mixed_float16": 1e-2, "mixed_bfloat16": 5e-2}
# Fine-tune each precision's first model under another precision.
FINETUNE_UNDER = {"float32": "mixed_bfloat16", "mixed_bfloat16": "float32",
                  "mixed_float16": "float32"}


def _run(*args, timeout=900):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_RESNET_TEST_POLICY", None)
    done = subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=os.path.dirname(os.path.dirname(DRIVER)))
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """64 training and 32 test images in an .npz (the CLI's arrays source)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x_train=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(64) % 10,
             x_test=rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(32) % 10)
    return str(path)


@pytest.mark.slow  # about 75 s per precision: the second tier
@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_trained_model_round_trips_in_fresh_processes(precision, arrays, tmp_path):
    keys = list(MODELS)
    _run("train", precision, arrays, str(tmp_path), *keys)
    report = json.loads(_run("verify", arrays, str(tmp_path), FINETUNE_UNDER[precision],
                             *keys).splitlines()[-1])

    assert report["global_policy"] == "float32"
    expected_dtype = {"float32": "float32", "mixed_bfloat16": "bfloat16",
                      "mixed_float16": "float16"}[precision]
    for key in keys:
        result = report[key]
        for command, outcome in result["cli"].items():
            assert outcome["exit"] == 0, f"{key}: keras-resnet {command} exited {outcome['exit']}"
        # The loaded model computes in the precision it was trained in.
        assert result["compute_dtype"] == expected_dtype, key
        assert set(result["max_abs_diff"]) == {"load_model_predict", "load_model_call",
                                               "serving_predict_images", "serving_default"}
        for path, diff in result["max_abs_diff"].items():
            assert diff <= TOLERANCE[precision], f"{key} {path}: max |diff| {diff} ({precision})"
        for path, agreement in result["top1_agreement"].items():
            assert agreement == 1.0, f"{key} {path}: top-1 agrees on {agreement:.0%} ({precision})"
    assert json.loads(result["cli"]["evaluate"]["stdout"])["test_examples"] == 32
    finetune = report["finetune"]
    assert finetune["exit"] == 0, finetune["stdout"]
    assert finetune["precision"] == FINETUNE_UNDER[precision]
