"""Shared helpers for the benchmark scripts: hardware/version report, timing, JSON."""

import json
import os
import platform
import sys
import time

# Known multiply-accumulate counts per image (forward pass), for efficiency
# against the matmul peak. FLOPs = 2 x MACs; training ~ 3 x forward.
FORWARD_GMACS = {
    "resnet50@224": 4.09,   # v1.5 (stride on the 3x3), torchvision's count; keras-hub, keras_resnet resnet50
    # v1 (stride on the first 1x1 of stages 3-5: keras.applications, keras_resnet
    # resnet50_v1): those three 1x1 convs run at a quarter of v1.5's resolution,
    # 3 x 77.1M = 0.231 GMACs fewer; He et al. 2015 table 1 gives "3.8" (x 10^9).
    # Benchmarks before 2026-12-03 (evening) used 4.09 for both layouts, which
    # overstated v1 models' "% of peak" by 6%.
    "resnet50_v1@224": 3.86,
    "resnet18@224": 1.82,   # torchvision's counts (He et al. 2015 table 1: 1.8)
    "resnet34@224": 3.67,   # torchvision's counts (He et al. 2015 table 1: 3.6)
    "resnet20@32": 0.0408,  # He et al. 2015 sec. 4.2
    "resnet9_half@32": 0.0953,  # counted: five 18.9M-MAC 3x3 layers + stem and head
}


def forward_gflops(key):
    return 2.0 * FORWARD_GMACS[key]


def train_gflops(key):
    return 3.0 * forward_gflops(key)


def hardware():
    cpu = platform.processor() or "unknown"
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        for line in text.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        import tensorflow as tf
        import keras

        info.update(tensorflow=tf.__version__, keras=keras.__version__, onednn=onednn_enabled(),
                    TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
    except ImportError:
        pass
    return info


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels here (see keras_resnet.distribute)."""
    from keras_resnet.distribute import onednn_enabled as probe

    return probe()


def native_bf16(info=None):
    """True where bf16 matmuls run natively (AVX512-BF16 or AMX-BF16), as in
    `keras_resnet.distribute.cpu_supports_bf16`."""
    info = info or hardware()
    return bool(info.get("avx512_bf16") or info.get("amx_bf16"))


def print_hardware(info=None):
    info = info or hardware()
    print("Hardware: {cpu}, {cores} cores (avx512f={avx512f}, avx512_bf16={avx512_bf16}, "
          "amx_bf16={amx_bf16})".format(**info))
    print("Versions: python {python}, tensorflow {tensorflow}, keras {keras}; oneDNN {onednn} "
          "(TF_ENABLE_ONEDNN_OPTS={TF_ENABLE_ONEDNN_OPTS})".format(
              **{"tensorflow": "?", "keras": "?", "onednn": "?", "TF_ENABLE_ONEDNN_OPTS": None, **info}))


def timed(fn, repeats, warmup=1):
    """Best-of-`repeats` wall time of `fn()` after `warmup` calls (best, not mean:
    on a shared machine the minimum is the least noisy estimate)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def paired_train_steps(models, x, y, rounds):
    """Seconds of one `train_on_batch(x, y)` per model per round, {name: [s, ...]}; the
    order alternates round by round, so drift hits every model alike (an A/B's steps
    are compared per round, as a median of the per-round ratios)."""
    names = list(models)
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            float(models[name].train_on_batch(x, y))  # float(): the step has finished
            seconds[name].append(time.perf_counter() - start)
    return seconds


def best_call_seconds(fn, args, repeats):
    """Best-of-`repeats` seconds of `fn(*args).numpy()` after one warm-up call (a
    traced `tf.function` returning a small tensor: `.numpy()` waits for it)."""
    return timed(lambda: fn(*args).numpy(), repeats, warmup=1)


def write_json(path, payload):
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
        print(f"wrote {path}")
