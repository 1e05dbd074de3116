"""Choosing a `tf.distribute` strategy and the matching precision.

`auto`: a TPU when one is attached, MultiWorkerMirroredStrategy when
`TF_CONFIG` lists several workers, MirroredStrategy with more than one GPU,
the default strategy otherwise.

Security: TensorFlow's gRPC cluster traffic between the workers `TF_CONFIG`
lists is neither authenticated nor encrypted (any host that reaches a
worker's port can join or read it): run multi-worker jobs only on a private
network you trust.
"""

import json
import logging
import os
import platform

import tensorflow as tf

from keras_resnet import compat

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
log = logging.getLogger("keras_resnet")


def _tf_config_workers():
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except json.JSONDecodeError:
        raise ValueError(f"TF_CONFIG is not valid JSON. Received: TF_CONFIG={os.environ['TF_CONFIG']!r}") from None
    cluster = config.get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_resolver():
    try:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        except ValueError:  # a TPU VM (current Colab): the TPU is local
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return resolver
    except (ValueError, tf.errors.NotFoundError, RuntimeError):
        return None


def get_strategy(name="auto", sync_batchnorm=False):
    """Returns `(strategy, resolved_name)` and logs the choice and replica count."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown strategy. Received: strategy={name!r}. Valid: {STRATEGIES}")
    # MultiWorkerMirroredStrategy must be created before the TensorFlow runtime
    # starts, so decide on it before listing devices (which starts the runtime).
    if name == "auto":
        # Colab's TPU VMs expose /dev/accel*; older runtimes set COLAB_TPU_ADDR.
        if (os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
                or os.path.exists("/dev/accel0")):
            name = "tpu"
        elif _tf_config_workers() > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "default"
    if name == "tpu":
        resolver = _tpu_resolver()
        if resolver is None:
            raise ValueError("strategy='tpu' but no TPU is attached (TPUClusterResolver found none).")
        strategy = tf.distribute.TPUStrategy(resolver)
    elif name == "multi_worker":
        compat.patch_multi_worker_reduce()
        comm = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=comm)
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        device = gpus[0].name if gpus else "/cpu:0"
        strategy = tf.distribute.OneDeviceStrategy(device)
    else:
        strategy = tf.distribute.get_strategy()
    log.info("Distribution strategy: %s (%s) with %d replica(s) in sync",
             name, type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy, name


def is_chief():
    """True on the chief (worker 0 without a chief entry): the only writer of outputs."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except json.JSONDecodeError:
        return True
    task = config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = "chief" in config.get("cluster", {})
    return task.get("type") == "worker" and task.get("index", 0) == 0 and not has_chief


def task_index():
    """This worker's index in TF_CONFIG (0 without one)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    except json.JSONDecodeError:
        return 0
    return int(config.get("task", {}).get("index", 0))


def cpu_supports_bf16():
    """AVX512-BF16 or AMX on this CPU: bf16 matmuls run at native speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision="auto", strategy_name="default"):
    """Picks bf16 on TPU and bf16-capable CPUs, fp16 on GPU, fp32 otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision. Received: precision={precision!r}. Valid: {PRECISIONS}")
    if precision != "auto":
        return precision
    if strategy_name == "tpu":
        return "mixed_bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_supports_bf16() else "float32"


def onednn_enabled():
    """Whether TensorFlow runs its oneDNN kernels and graph rewrites in this process.

    TensorFlow turns them on by default only on CPUs with AVX512-VNNI, AVX512-BF16,
    AVX-VNNI or AMX (`DefaultOneDnnPolicy` in tensorflow/core/util/port.cc);
    `TF_ENABLE_ONEDNN_OPTS=0` or `1`, read when TensorFlow is imported, overrides it.
    Recorded in every run's environment.json because it changes which kernels (and
    which fusions) a step runs. None when TensorFlow's private probe is unavailable.
    """
    return compat.onednn_enabled()


def onednn_hint(strategy_name="default"):
    """A suggestion to turn on TensorFlow's oneDNN kernels, or None where it does not apply.

    TensorFlow leaves oneDNN off on x86 CPUs without AVX512-VNNI/BF16, AVX-VNNI or AMX
    (AVX2-only Xeons and EPYCs), where it is the biggest single speed-up for these
    models (docs/benchmarks.md, "On a CPU without bf16", has the measurements).
    The variable is read when TensorFlow is imported, so this library cannot set it
    for a process that already imported TensorFlow; it only says so.
    """
    if strategy_name == "tpu" or tf.config.list_logical_devices("GPU"):
        return None
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") is not None or onednn_enabled() is not False:
        return None  # the user chose, or oneDNN is already on (or unknowable)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    return ("TensorFlow's oneDNN CPU kernels are off on this CPU (TensorFlow's default for CPUs "
            "without AVX512-VNNI/BF16 or AMX). Set TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow is "
            "imported to train faster (keras_resnet docs/benchmarks.md, \"On a CPU without bf16\"). "
            "Set TF_ENABLE_ONEDNN_OPTS=0 to keep the current kernels and silence this message.")
