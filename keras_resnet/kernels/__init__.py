"""keras_resnet's own CPU kernels: fused training-mode BatchNorm (+ add) (+ ReLU).

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
Exports never contain these ops: they are used in training only, and a SavedModel
is traced in inference mode.
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
_SOURCE = pathlib.Path(__file__).with_name("batchnorm_act.cc")
_LOCK = threading.Lock()
_STATE = {"module": None, "tried": False, "reason": None}
_ENABLED = [True]
ENV_SWITCH = "KERAS_RESNET_KERNELS"
# Tensor types the ops take: float32 training, and mixed_bfloat16's bfloat16
# activations (float32 statistics and parameters either way). Not float16.
DTYPES = ("float32", "bfloat16")
PRECISIONS = ("float32", "mixed_bfloat16")

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
    for part in (_SOURCE.read_bytes(), tf.__version__.encode(), tf.sysconfig.get_include().encode(),
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
        command = [compiler, "-shared", "-fPIC", "-w", *flags, str(_SOURCE), "-o", scratch,
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
                    _LOG.info("keras_resnet: compiling its fused BatchNorm CPU kernels "
                              "(once per machine, about 10 s) into %s", target)
                    reason = _compile(tf, target)
                if reason is None:
                    module = tf.load_op_library(str(target))
                    _register_gradient(tf, module)
            except Exception as exc:  # a broken toolchain must never stop training
                module, reason = None, f"{type(exc).__name__}: {exc}"
        if module is None:
            _LOG.warning("keras_resnet: fused BatchNorm kernels unavailable (%s); "
                         "using TensorFlow's ops, which are slower on CPU.", reason)
        _STATE.update(module=module, tried=True, reason=reason)
        return module


def unavailable_reason():
    """Why `load()` returned None (None when the kernels loaded or were not tried)."""
    return _STATE["reason"]


def _on_cpu_only():
    import tensorflow as tf

    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def usable(x):
    """True when the fused kernels should run on `x` (checked at trace time)."""
    if not _ENABLED[0]:
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
    """Traces everything inside with TensorFlow's own BatchNorm, add and ReLU ops
    (A/B benchmarks, or to rule the kernels out when debugging)."""
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
