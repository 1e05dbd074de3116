"""keras_resnet's own CPU kernels: fused training-mode BatchNorm (+ add) (+ ReLU),
and Winograd F(4x4, 3x3) convolutions for float32 inference.

TensorFlow runs a post-activation block's `relu(batchnorm(x) + shortcut)` as
three ops forward and three backward, each a full pass over memory; on a CPU
those passes are about a quarter of a float32 ResNet-50 training step
(`benchmarks/bench_memory_bound.py`). `batchnorm_act.cc` does each direction in
one op with the fewest passes. It is compiled here, on first use, against the
installed TensorFlow's headers (`tf.sysconfig`), with the machine's own vector
instructions, and cached under `~/.cache/keras_resnet` (or
`$KERAS_RESNET_CACHE`), keyed by the source, TensorFlow version and CPU.

Used only where it is safe and measured to help: float32 or bfloat16
(`mixed_bfloat16`: bfloat16 in and out, float32 arithmetic and statistics)
compute, channels-last 4-D inputs, training with batch statistics, and no GPU or TPU visible (the
kernels are CPU-only; on an accelerator TensorFlow's cuDNN/XLA paths stay).
Everywhere else, and wherever the build fails (no C++ compiler, a TensorFlow
without headers, not Linux), keras_resnet silently uses TensorFlow's ops, with
one log line saying why. `KERAS_RESNET_KERNELS=0` turns them off; the context
manager `keras_resnet.kernels.disabled()` does so for code traced inside it.

`winograd_conv` (`winograd.cc`) runs an inference-mode 3x3 stride-1 convolution
(+ bias) (+ ReLU) in float32 as Winograd's F(4x4, 3x3): two transforms written
here around one batched matmul, 4x fewer multiply-adds than the direct
convolution that oneDNN runs (`benchmarks/ablate_winograd.py`). Results differ
from the direct convolution by rounding only (~1e-5 relative, tested).

Exports never contain these ops (TF Serving, TFLite and ONNX runtimes do not
have them): the BatchNorm kernels run in training only, and `winograd_conv` is
skipped under `disabled()` and whenever an exporter traces the model
(`keras_resnet.export`, `tf.saved_model.save`, Keras's `model.export` in every
format, `tf.lite.TFLiteConverter.from_keras_model`, tf2onnx; see
`_tracing_for_export`). The check runs when a graph is traced, so a function
you trace yourself *before* handing it to an exporter (e.g.
`tf.saved_model.save(m, path, signatures=f.get_concrete_function(spec))`, or
`TFLiteConverter.from_concrete_functions`) must be traced inside `disabled()`.
Neither kind of op is traced under XLA (`jit_compile=True`), which cannot
compile them.
"""

import contextlib
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading

_LOG = logging.getLogger("keras_resnet")
# Compiled together into one library: the BatchNorm kernels and the Winograd transforms.
_SOURCES = tuple(pathlib.Path(__file__).with_name(name) for name in ("batchnorm_act.cc", "winograd.cc"))
_LOCK = threading.Lock()
_STATE = {"module": None, "tried": False, "reason": None}
_ENABLED = [True]
ENV_SWITCH = "KERAS_RESNET_KERNELS"
# Tensor types the ops take: float32 training, and mixed_bfloat16's bfloat16
# activations (float32 statistics and parameters either way). Not float16.
DTYPES = ("float32", "bfloat16")
PRECISIONS = ("float32", "mixed_bfloat16")
# Winograd only for float32: bfloat16's 8-bit mantissa cannot carry the
# transforms' cancellations (and oneDNN's bf16 convolutions run on AMX anyway).
# Where the transforms cost more than the multiplies they save (a sweep over
# ResNet layer shapes and batch 1-32, 2026-12-03): at 64 channels or fewer the
# layer is memory-bound and Winograd is no faster (0.8-1.3x, noise either way);
# at 128+ channels it is 1.1-1.9x faster once a batch has 64 or more 4x4 output
# tiles, and slower (0.5-0.9x) below that, e.g. batch 1 at 7x7 or 14x14.
WINOGRAD_MIN_CHANNELS = 128
WINOGRAD_MIN_TILES = 64

# Compiler flag sets, best first. -march=native uses this CPU's vector units
# (the loops are written to auto-vectorise); -mno-avx512fp16 because Eigen's
# AVX512-FP16 header in TF's wheel does not compile with GCC 12; the last set is
# the portable fallback.
_FLAG_SETS = (("-O3", "-march=native", "-mno-avx512fp16"), ("-O3", "-march=native"), ("-O3",))


def _cpu_key():
    """Identifies the CPU's instruction set, so a cache shared between machines
    never hands a -march=native build to a different CPU."""
    text = platform.machine() + platform.processor()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "model name", "Features")):
                text += line
                if line.startswith(("flags", "Features")):
                    break
    except OSError:
        pass
    return text


def _cache_dir():
    root = os.environ.get("KERAS_RESNET_CACHE")
    if root:
        return pathlib.Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "keras_resnet"


def _library_path(tf):
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in _SOURCES), tf.__version__.encode(), tf.sysconfig.get_include().encode(),
                 _cpu_key().encode(), sys.version.encode()):
        digest.update(part)
    return _cache_dir() / f"batchnorm_act-{digest.hexdigest()[:16]}.so"


def _compile(tf, target):
    """Builds the library into `target` (atomically: concurrent processes race
    harmlessly). Returns None, or the compiler's last error lines."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return "no C++ compiler (g++ / c++) on PATH"
    target.parent.mkdir(parents=True, exist_ok=True)
    error = None
    for flags in _FLAG_SETS:
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            scratch = tmp.name
        command = [compiler, "-shared", "-fPIC", "-w", *flags, *map(str, _SOURCES), "-o", scratch,
                   *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as exc:
            os.unlink(scratch)
            return f"the C++ compiler {compiler!r} could not run: {exc}"
        if result.returncode == 0:
            os.replace(scratch, target)
            return None
        os.unlink(scratch)
        error = " ".join(result.stderr.strip().splitlines()[-3:])[-500:]
    return f"the C++ build failed: {error}"


def _register_gradient(tf, module):
    @tf.RegisterGradient("KerasResnetBatchNormAct")
    def _batchnorm_act_grad(op, dy, unused_dmean, unused_dvariance):
        attrs = {name: op.get_attr(name) for name in ("epsilon", "has_residual", "relu")}
        dx, d_residual, d_gamma, d_beta = module.keras_resnet_batch_norm_act_grad(
            dy, op.inputs[0], op.outputs[0], op.inputs[2], op.outputs[1], op.outputs[2], **attrs)
        return dx, (d_residual if attrs["has_residual"] else None), d_gamma, d_beta


def load():
    """The compiled op module, building it on first call; None when unavailable
    (see `unavailable_reason()`)."""
    if _STATE["tried"]:
        return _STATE["module"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["module"]
        module, reason = None, None
        if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "off", "no"):
            reason = f"turned off by {ENV_SWITCH}={os.environ[ENV_SWITCH]}"
        elif not sys.platform.startswith("linux"):
            reason = f"built only on Linux (this is {sys.platform})"
        else:
            try:
                import tensorflow as tf

                target = _library_path(tf)
                if not target.exists():
                    _LOG.info("keras_resnet: compiling its CPU kernels (fused BatchNorm, Winograd) "
                              "(once per machine, about 10 s) into %s", target)
                    reason = _compile(tf, target)
                if reason is None:
                    module = tf.load_op_library(str(target))
                    _register_gradient(tf, module)
            except Exception as exc:  # a broken toolchain must never stop training
                module, reason = None, f"{type(exc).__name__}: {exc}"
        if module is None:
            _LOG.warning("keras_resnet: its CPU kernels (fused BatchNorm, Winograd) unavailable (%s); "
                         "using TensorFlow's ops, which are slower on CPU.", reason)
        _STATE.update(module=module, tried=True, reason=reason)
        return module


def unavailable_reason():
    """Why `load()` returned None (None when the kernels loaded or were not tried)."""
    return _STATE["reason"]


def _on_cpu_only():
    import tensorflow as tf

    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def _in_xla_context():
    """True while tracing for XLA (`jit_compile=True`, TPU): XLA cannot compile
    custom ops, so TensorFlow's own ops must be traced there."""
    try:
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private modules moved
        return False
    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


def usable(x):
    """True when the fused kernels should run on `x` (checked at trace time)."""
    if not _ENABLED[0] or _in_xla_context():
        return False
    import keras

    if keras.backend.backend() != "tensorflow":
        return False
    if len(x.shape) != 4 or keras.backend.standardize_dtype(x.dtype) not in DTYPES:
        return False
    return _on_cpu_only() and load() is not None


def status(precision="float32"):
    """One line for a run's environment.json: whether training at `precision`
    runs through these kernels, and if not, why."""
    if not _ENABLED[0]:
        return "not used: keras_resnet.kernels.disabled()"
    if precision not in PRECISIONS:
        return f"not used: precision {precision} (the kernels run float32 and mixed_bfloat16)"
    if not _on_cpu_only():
        return "not used: a GPU or TPU is visible (the kernels are CPU-only)"
    if load() is None:
        return f"unavailable: {unavailable_reason()}"
    return "used"


@contextlib.contextmanager
def disabled():
    """Traces everything inside with TensorFlow's own ops: BatchNorm, add and ReLU,
    and direct convolutions instead of Winograd (A/B benchmarks, ruling the kernels
    out when debugging, or tracing a function yourself for another runtime)."""
    previous = _ENABLED[0]
    _ENABLED[0] = False
    try:
        yield
    finally:
        _ENABLED[0] = previous


def batchnorm_act(x, gamma, beta, epsilon, residual=None, relu=True):
    """`act(batchnorm(x) [+ residual])` with batch statistics, as one op.

    Returns `(y, batch_mean, batch_variance)`; the variance is the biased one
    (divided by N*H*W), as normalisation uses it. Differentiable in `x`,
    `residual`, `gamma` and `beta`. Call only when `usable(x)`.
    """
    import tensorflow as tf

    module = load()
    has_residual = residual is not None
    if not has_residual:
        residual = tf.zeros([0], x.dtype)
    return module.keras_resnet_batch_norm_act(
        x, residual, gamma, beta, epsilon=float(epsilon), has_residual=has_residual, relu=bool(relu))


# Modules that trace a model to write it for another runtime (TF Serving, TFLite /
# LiteRT, ONNX, OpenVINO): none of them has keras_resnet's ops, so a graph traced
# from inside one of them must not contain any.
_EXPORTERS = ("keras.src.export", "keras_resnet.export", "tensorflow.lite", "tf2onnx",
              "tensorflow.python.saved_model", "openvino", "ai_edge_litert")


def _tracing_for_export():
    """True when the current trace runs inside an exporter (`tf.saved_model.save`,
    Keras's `model.export(format=...)`, `tf.lite.TFLiteConverter`, tf2onnx): read off
    the Python stack, once per trace, because those paths trace the model with the
    same `training=False` call as `predict`."""
    try:
        from tensorflow.python.saved_model import save_context

        if save_context.in_save_context():
            return True
    except ImportError:  # pragma: no cover - private module moved
        pass
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_EXPORTERS):
            return True
        frame = frame.f_back
    return False


def winograd_usable(conv, x):
    """True when `conv` applied to `x` should run as `winograd_conv` (checked at
    trace time): a 3x3, stride-1, undilated, ungrouped "same" float32 channels-last
    convolution with at least `WINOGRAD_MIN_CHANNELS` channels in and out, on a
    CPU, outside exports. (The batch's tile count, `winograd_tiles`, is checked
    by the caller, at run time when the batch size is not static.)"""
    if not _ENABLED[0] or _in_xla_context() or _tracing_for_export():
        return False
    import keras

    if keras.backend.backend() != "tensorflow" or len(x.shape) != 4:
        return False
    if keras.backend.standardize_dtype(x.dtype) != "float32" or conv.compute_dtype != "float32":
        return False
    if (tuple(conv.kernel_size) != (3, 3) or tuple(conv.strides) != (1, 1)
            or tuple(conv.dilation_rate) != (1, 1) or getattr(conv, "groups", 1) != 1
            or conv.padding != "same" or conv.data_format != "channels_last"):
        return False
    if min(x.shape[-1] or 0, conv.filters) < WINOGRAD_MIN_CHANNELS:
        return False
    return _on_cpu_only() and load() is not None


def winograd_tiles(x):
    """The number of 4x4 output tiles of a batch `x`: a scalar tensor, or an int
    when the shape is static."""
    import tensorflow as tf

    shape = [x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(3)]
    return shape[0] * ((shape[1] + 3) // 4) * ((shape[2] + 3) // 4)


def winograd_filter(kernel, scale=None):
    """The transformed filter `U = G (kernel * scale) G^T`, float32 `[36, C, K]`:
    what `winograd_conv_transformed` takes, so a fixed kernel is transformed
    once rather than every call (`keras_resnet.InferenceSnapshot`)."""
    import tensorflow as tf

    return load().keras_resnet_winograd_filter(
        kernel, tf.zeros([0], tf.float32) if scale is None else scale)


def winograd_conv_transformed(x, u, bias, residual=None, relu=False):
    """`winograd_conv` forward only, from a filter `winograd_filter` transformed
    already. Not differentiable in `u` (inference)."""
    import tensorflow as tf

    module = load()
    m = tf.matmul(module.keras_resnet_winograd_input(x), u)
    has_residual = residual is not None
    return module.keras_resnet_winograd_output(
        m, bias, x, residual if has_residual else tf.zeros([0], tf.float32),
        has_residual=has_residual, relu=bool(relu))


def _winograd_forward(x, kernel, bias, residual, relu, scale=None):
    return winograd_conv_transformed(x, winograd_filter(kernel, scale), bias, residual, relu)


def winograd_conv(x, kernel, bias, residual=None, relu=False, scale=None):
    """`relu(conv2d(x, kernel * scale, stride 1, "SAME") + bias [+ residual])` in
    float32, by Winograd.

    Args:
        x: float32 `[N, H, W, C]`.
        kernel: float32 `[3, 3, C, K]`.
        bias: float32 `[K]`.
        residual: None, or float32 `[N, H, W, K]` added before the ReLU.
        relu: apply a ReLU to the output.
        scale: None, or float32 `[K]` multiplying the kernel's output channels (an
            inference BatchNorm folded in), applied inside the filter transform.

    Differentiable (in every input): the input's gradient is a Winograd
    convolution as well, the kernel's TensorFlow's `Conv2DBackpropFilter`; both
    match the direct convolution's up to rounding. Call only when
    `winograd_usable`.
    """
    import tensorflow as tf

    has_residual, has_scale = residual is not None, scale is not None
    empty = tf.zeros([0], tf.float32)

    @tf.custom_gradient
    def conv(x, kernel, bias, residual, scale):
        y = _winograd_forward(x, kernel, bias, residual if has_residual else None, relu,
                              scale if has_scale else None)

        def grad(dy):
            dz = dy * tf.cast(y > 0, dy.dtype) if relu else dy
            folded = kernel * scale if has_scale else kernel
            # The input's gradient of a 3x3 stride-1 "same" convolution is itself
            # one: dz convolved with the kernel turned 180 degrees and its
            # channel axes swapped. So it runs as Winograd too.
            flipped = tf.transpose(tf.reverse(folded, axis=[0, 1]), [0, 1, 3, 2])
            dx = _winograd_forward(dz, flipped, tf.zeros(tf.shape(kernel)[2:3], dz.dtype), None, False)
            d_folded = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel),
                                                       out_backprop=dz, strides=[1, 1, 1, 1],
                                                       padding="SAME")
            d_kernel = d_folded * scale if has_scale else d_folded
            d_scale = tf.reduce_sum(d_folded * kernel, axis=[0, 1, 2]) if has_scale else None
            return (dx, d_kernel, tf.reduce_sum(dz, axis=[0, 1, 2]),
                    dz if has_residual else None, d_scale)

        return y, grad

    return conv(x, kernel, bias, residual if has_residual else empty,
                scale if has_scale else empty)
