"""Builds and loads the compiled BatchNorm+ReLU kernel, with a hardened cache.

The library is compiled from `batchnorm_act.cc` against the installed
TensorFlow's headers with this CPU's vector instructions, once per (source,
TensorFlow, CPU, Python), and cached. Loading native code from a cache is
loading code, so the cache is treated as a trust boundary:

- the cache directory is created private to the user (0700) and refused if it
  is not owned by the user or is writable by group or others;
- a library is refused unless owned by the user and not group/world-writable,
  and its SHA-256 must equal the digest recorded when this process's user
  built it (a sidecar `.sha256` file in the same private directory);
- builds hold an exclusive lock on the cache directory (`fcntl.flock`), so
  concurrent processes build once and never read a half-written file;
- the compiler runs with a timeout.

Every refusal or failure returns a one-line reason instead of raising: the
caller trains on TensorFlow's own ops and says why.
"""

import fcntl
import hashlib
import os
import pathlib
import platform
import shutil
import stat
import subprocess
import sys
import tempfile

SOURCE = pathlib.Path(__file__).with_name("batchnorm_act.cc")
COMPILE_TIMEOUT_SECONDS = 300
# Best first: -march=native uses this CPU's vector units (the loops are written to
# auto-vectorise); -mno-avx512fp16 because Eigen's AVX512-FP16 header in TF's wheel
# does not compile with GCC 12; the last set is the portable fallback.
_FLAG_SETS = (("-O3", "-march=native", "-mno-avx512fp16"), ("-O3", "-march=native"), ("-O3",))


def default_cache_dir():
    """`$KERAS_RESNET_CACHE`, else `$XDG_CACHE_HOME/keras_resnet`, else `~/.cache/keras_resnet`."""
    root = os.environ.get("KERAS_RESNET_CACHE")
    if root:
        return pathlib.Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "keras_resnet"


def _cpu_key():
    """This CPU's instruction set: a cache shared between machines never hands a
    -march=native build to a different CPU."""
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


def library_name(tf):
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), tf.sysconfig.get_include().encode(),
                 _cpu_key().encode(), sys.version.encode()):
        digest.update(part)
    return f"batchnorm_act-{digest.hexdigest()[:16]}.so"


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unsafe(path, what):
    """A reason `path` must not be trusted, or None: not owned by this user, or
    writable by group/others (or, for a file, not a regular file)."""
    try:
        info = os.lstat(path)
    except OSError as e:
        return f"cannot stat the {what} {path}: {e.strerror}"
    if what == "library" and not stat.S_ISREG(info.st_mode):
        return f"the {what} {path} is not a regular file"
    if what == "cache directory" and not stat.S_ISDIR(info.st_mode):
        return f"the {what} {path} is not a directory"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"the {what} {path} is owned by uid {info.st_uid}, not this user ({os.getuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"the {what} {path} is writable by group or others (mode {oct(info.st_mode & 0o777)})"
    return None


def private_dir(path):
    """Creates `path` private to the user (0700) if missing; returns a reason it
    cannot be used, or None."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as e:
        return f"cannot create the cache directory {path}: {e.strerror}"
    return _unsafe(path, "cache directory")


def _compile(tf, target, timeout):
    """Builds the library into `target` (written to a temporary name in the same
    directory, then renamed). Returns None, or a one-line reason."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        return "no C++ compiler (g++ / c++) on PATH"
    error = None
    for flags in _FLAG_SETS:
        fd, scratch = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
        os.close(fd)
        command = [compiler, "-shared", "-fPIC", "-w", *flags, str(SOURCE), "-o", scratch,
                   *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.unlink(scratch)
            return f"the C++ build took longer than {timeout} s"
        except OSError as e:
            os.unlink(scratch)
            return f"the C++ compiler {compiler!r} could not run: {e.strerror}"
        if result.returncode == 0:
            os.chmod(scratch, 0o700)
            digest = _sha256(scratch)
            os.replace(scratch, target)
            _write_digest(target, digest)
            return None
        os.unlink(scratch)
        error = " ".join(result.stderr.strip().splitlines()[-2:])[-300:]
    return f"the C++ build failed: {error}"


def _write_digest(target, digest):
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".sha256.tmp")
    with os.fdopen(fd, "w") as f:
        f.write(digest + "\n")
    os.replace(tmp, str(target) + ".sha256")


def _recorded_digest(target):
    try:
        with open(str(target) + ".sha256") as f:
            return f.read().strip()
    except OSError:
        return None


def build_or_find(tf, cache_dir=None, timeout=COMPILE_TIMEOUT_SECONDS, log=None):
    """`(path, None)` for a library safe to load, or `(None, reason)`."""
    if not sys.platform.startswith("linux"):
        return None, f"built only on Linux (this is {sys.platform})"
    cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
    reason = private_dir(cache)
    if reason:
        return None, reason
    target = cache / library_name(tf)
    with open(cache / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; readers wait for a whole file
        try:
            if not target.exists():
                if log:
                    log("keras_resnet.contrib.cpu: compiling the BatchNorm+ReLU kernel into %s "
                        "(once per machine and TensorFlow version)", target)
                reason = _compile(tf, target, timeout)
                if reason:
                    return None, reason
            reason = _unsafe(target, "library")
            if reason:
                return None, reason
            recorded = _recorded_digest(target)
            if recorded is None:
                return None, f"the library {target} has no recorded SHA-256 ({target}.sha256)"
            if _sha256(target) != recorded:
                return None, f"the library {target} does not match its recorded SHA-256"
            return target, None
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
