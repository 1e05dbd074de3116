"""tf.distribute on CPU only, loopback only: MirroredStrategy over two logical
devices, MultiWorkerMirroredStrategy with two processes, and a killed worker."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from keras_resnet import distribute

HERE = os.path.dirname(__file__)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
sys.path.insert(0, HERE)
from test_training import make_npz  # noqa: E402


def test_is_chief_and_task_index(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and distribute.task_index() == 0
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    assert not distribute.is_chief() and distribute.task_index() == 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert distribute.is_chief()


def test_bad_strategy_and_precision_names(monkeypatch):
    with pytest.raises(ValueError, match="strategy='gpus'"):
        distribute.get_strategy("gpus")
    with pytest.raises(ValueError, match="precision='half'"):
        distribute.resolve_precision("half")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("auto")


def test_auto_precision_follows_the_hardware():
    expected = "mixed_bfloat16" if distribute.cpu_supports_bf16() else "float32"
    assert distribute.resolve_precision("auto") == expected
    assert distribute.resolve_precision("auto", "tpu") == "mixed_bfloat16"
    assert distribute.resolve_precision("float32") == "float32"


@pytest.mark.slow
def test_mirrored_two_cpus_matches_single_device(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n=256)
    res = {}
    for strategy in ("default", "mirrored"):
        out = subprocess.run([sys.executable, os.path.join(HERE, "dist_worker.py"), "loss_trajectory",
                              npz, str(tmp_path), strategy], env=ENV, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-4000:]
        res.update(json.loads(out.stdout.split("RESULT ", 1)[1]))
    assert res["default"]["replicas"] == 1 and res["mirrored"]["replicas"] == 2
    single, mirrored = np.array(res["default"]["losses"]), np.array(res["mirrored"]["losses"])
    assert len(single) == len(mirrored) == 8
    # Same global batch, same initial weights, synchronized BatchNorm: the first
    # loss agrees to float precision, and the trajectory up to summation order,
    # which compounds over steps. Stated tolerance: 5e-3 relative over 8 steps
    # (a one-batch difference in data moves these losses by several percent).
    assert mirrored[0] == pytest.approx(single[0], rel=1e-5)
    np.testing.assert_allclose(mirrored, single, rtol=5e-3)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _launch_cluster(npz, run, epochs, ports, extra=()):
    workers = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    for index in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                              "task": {"type": "worker", "index": index}}))
        cmd = [sys.executable, "-m", "keras_resnet", "train", "--dataset", npz, "--model", "resnet20",
               "--epochs", str(epochs), "--steps-per-epoch", "4", "--batch-size", "32",
               "--precision", "float32", "--strategy", "multi_worker", "--augment", "none",
               "--output", str(run), "--verbose", "2", "--seed", "5", *extra]
        log = open(f"{run}-worker{index}.log", "a")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _wait(procs, timeout):
    deadline = time.time() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(1, deadline - time.time()))
    finally:
        for p in procs:  # never leave a process behind
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs]


def _logs(run):
    return [open(f"{run}-worker{i}.log").read() for i in range(2)]


@pytest.mark.slow
def test_multi_worker_two_processes_identical_weights_chief_writes(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n=256)
    run = tmp_path / "run"
    # Synchronized BatchNorm: moving statistics agree too, so *every* weight must match.
    codes = _wait(_launch_cluster(npz, run, 2, _free_ports(2), ["--sync-batchnorm", "true"]), timeout=420)
    assert codes == [0, 0], _logs(run)
    chief = json.loads((run / "metrics.json").read_text())
    worker = json.loads((run / "workers" / "worker-1" / "metrics.json").read_text())
    assert chief["replicas"] == 2 and chief["strategy"] == "multi_worker"
    assert chief["weights_sha256"] == worker["weights_sha256"]
    assert (run / "model.keras").exists() and (run / "loss.png").exists()
    worker_files = set(os.listdir(run / "workers" / "worker-1"))
    assert not worker_files & {"model.keras", "loss.png", "config.json"}, worker_files


@pytest.mark.slow
def test_killed_worker_cluster_restart_resumes_from_backup(tmp_path):
    npz = make_npz(tmp_path / "d.npz", n=256)
    run = tmp_path / "run"
    procs = _launch_cluster(npz, run, 4, _free_ports(2))
    meta = run / "backup" / "training_metadata.json"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and not (meta.exists() and json.loads(meta.read_text())["epoch"] >= 2):
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        assert meta.exists(), _logs(run)
        procs[1].send_signal(signal.SIGKILL)  # lose a worker; the chief cannot go on alone
        time.sleep(1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    resumed_from = json.loads(meta.read_text())["epoch"]
    assert resumed_from >= 2 and not (run / "metrics.json").exists()
    open(f"{run}-worker0.log", "w").close()
    open(f"{run}-worker1.log", "w").close()
    codes = _wait(_launch_cluster(npz, run, 4, _free_ports(2)), timeout=420)
    assert codes == [0, 0], _logs(run)
    chief_log = _logs(run)[0]
    assert "Epoch 1/4" not in chief_log and f"Epoch {resumed_from + 1}/4" in chief_log, chief_log
    import csv
    with open(run / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2, 3]


def test_onednn_hint_only_when_oneDNN_is_off_unset_and_x86(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(distribute.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(distribute, "onednn_enabled", lambda: False)
    hint = distribute.onednn_hint()
    assert hint and "TF_ENABLE_ONEDNN_OPTS=1" in hint and "TF_ENABLE_ONEDNN_OPTS=0" in hint
    assert distribute.onednn_hint("tpu") is None
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # the user chose: no message
    assert distribute.onednn_hint() is None
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(distribute, "onednn_enabled", lambda: True)  # e.g. Sapphire Rapids
    assert distribute.onednn_hint() is None
    monkeypatch.setattr(distribute, "onednn_enabled", lambda: False)
    monkeypatch.setattr(distribute.platform, "machine", lambda: "aarch64")
    assert distribute.onednn_hint() is None


def test_onednn_enabled_reports_this_process():
    # The variable's value when set, else TensorFlow's own policy for this CPU
    # (on by default only with AVX512-VNNI/BF16, AVX-VNNI or AMX).
    forced = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    if forced in ("0", "1"):
        expected = forced == "1"
    elif distribute.platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("TensorFlow's oneDNN default is stated here for x86 CPUs only")
    else:
        try:
            flags = set(open("/proc/cpuinfo").read().split())
        except OSError:
            pytest.skip("no /proc/cpuinfo to read TensorFlow's oneDNN policy from")
        expected = bool(flags & {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8"})
    assert distribute.onednn_enabled() is expected
