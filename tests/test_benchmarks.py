"""The benchmark scripts: the suite's report arithmetic, and a smoke run of the
model benchmark (`--quick`: its numbers are not the benchmark, the script is)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import suite  # noqa: E402


def run_script(script, *args, timeout=600):
    """Runs a benchmark script in a fresh process; fails the test with its stderr."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_flop_counts():
    # Training is ~3x the forward pass; FLOPs are 2x MACs.
    assert common.train_gflops("resnet50@224") == pytest.approx(6 * 4.09)
    # v1 strides stages 3-5 in their first 1x1 conv (at 28, 14, 7 px instead of 56, 28, 14):
    # each of those three convs does a quarter of v1.5's 56*56*256*128 MACs.
    first_1x1_v15 = 56 * 56 * 256 * 128
    assert common.FORWARD_GMACS["resnet50_v1@224"] == pytest.approx(
        4.09 - 3 * 0.75 * first_1x1_v15 / 1e9, abs=0.005)
    # ResNet-9 at half width: five 3x3 layers of 18.9M MACs each, plus stem and head.
    layer = 32 * 32 * 9 * 32 * 64
    assert common.FORWARD_GMACS["resnet9_half@32"] == pytest.approx(
        (5 * layer + 32 * 32 * 27 * 32 + 256 * 10) / 1e9, rel=1e-3)


def _record(root, name, model, seconds, acc, tta):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"recipe": "cifar10_fast", "model": model,
                                                            "model_options": {}, "dataset": "cifar10"}}))
    (run / "environment.json").write_text(json.dumps({"cpu": "test cpu", "precision": "mixed_bfloat16"}))
    (run / "metrics.json").write_text(json.dumps({"epochs": 3, "precision": "mixed_bfloat16",
                                                  "train_seconds_this_session": seconds,
                                                  "test_accuracy": acc, "test_accuracy_flip_tta": tta}))


@pytest.mark.slow
def test_suite_report_has_peak_fractions_pipeline_serving_and_time_to_accuracy(tmp_path):
    _record(tmp_path, "run_a", "resnet9_half", 983.0, 0.9208, 0.928)
    (tmp_path / "not_a_run").mkdir()
    runs = suite.time_to_accuracy(str(tmp_path))
    assert [r["run"] for r in runs] == ["run_a"]
    peak = 100.0
    results = {
        "hardware": {"cpu": "test cpu", "cores": 2, "python": "3.x", "tensorflow": "t", "keras": "k"},
        "matmul": {"matmul_gflops": {"float32": peak, "bfloat16": 4 * peak}},
        # 2 img/s x 24.54 GFLOP = 49.08 GFLOP/s: 49% of the fp32 peak; infer 10 x 8.18 = 82%.
        "models_float32": {"results": [{"name": "keras_resnet resnet50", "precision": "float32",
                                        "flops_key": "resnet50@224", "train_img_s": 2.0,
                                        "infer_img_s": 10.0},
                                       # Paired shares (a probe beside every round) win over the
                                       # start probe's 49% / 82% when the entry has them.
                                       {"name": "keras_resnet resnet50_v1", "precision": "float32",
                                        "flops_key": "resnet50@224", "train_img_s": 2.0,
                                        "infer_img_s": 10.0, "train_pct_peak": 76.4,
                                        "infer_pct_peak": 95.6, "infer_snapshot_img_s": 11.0,
                                        "infer_snapshot_pct_peak": 99.2}],
                           "ratios": {"resnet50 / keras.applications train": 1.4},
                           "hardware": {"cpu_steal_fraction": 0.46}},
        "models_mixed": {"skipped": "bench_models.py exited 1"},
        "pipeline": {"ratios": {"CIFAR-10, cifar aug, cached": 37.6}},
        "serving": {"results": [{"name": "kr_fold", "latency_b1_ms_median": 54.4,
                                 "throughput_b32_img_s_median": 33.5}], "ratios": {"fold": 1.13}},
        "optimizer": {"model": "resnet50", "params": 25557032, "speedup_median": {"SGD": 2.38},
                      "ms_per_step": {"keras.optimizers.SGD": 71.1, "keras_resnet.optimizers.SGD": 28.9}},
        "time_to_accuracy": runs,
    }
    table = suite.markdown(results)
    assert "| keras_resnet resnet50 | float32 | 2.0 | 10.0 | 49% | 82% |" in table
    assert "| keras_resnet resnet50_v1 | float32 | 2.0 | 10.0 | 76% | 96% |" in table
    assert "| keras_resnet resnet50_v1, fold_batchnorm | float32 | | 11.0 | | 99% |" in table
    assert "resnet50, fold_batchnorm" not in table  # no snapshot timing in that entry
    assert "| ratio resnet50 / keras.applications train | | 1.4 |" in table
    assert "skipped: bench_models.py exited 1" in table
    assert "models_float32: hypervisor steal during the timed rounds 46%" in table
    assert "| CIFAR-10, cifar aug, cached | 37.6 |" in table
    assert "| kr_fold | 54.4 | 33.5 |" in table
    assert "one optimizer step over resnet50 (25,557,032 params)" in table
    assert "| keras_resnet.optimizers.SGD | 28.9 |" in table
    assert "| SGD speedup (median of per-round ratios) | 2.38x |" in table
    assert "| run_a | resnet9_half | 3 | mixed_bfloat16 | 983.0 | 92.08% | 92.80% | test cpu |" in table


@pytest.mark.parametrize("choice, flags, expected", [
    ("auto", {"avx512_bf16": True}, "mixed_bfloat16"),
    ("auto", {"amx_bf16": True}, "mixed_bfloat16"),
    ("auto", {"avx512_bf16": False, "amx_bf16": False}, None),  # e.g. AVX2-only EPYC/Xeon
    ("mixed_bfloat16", {"avx512_bf16": False}, "mixed_bfloat16"),  # forced
    ("none", {"amx_bf16": True}, None),
])
def test_suite_benchmarks_mixed_precision_only_where_the_cpu_has_bf16(choice, flags, expected):
    assert suite.mixed_precision_for(choice, flags) == expected


def test_suite_says_why_mixed_precision_rows_are_missing():
    assert suite.mixed_skip_reason("none") == "not asked for (--mixed-precision none)"
    assert "no native bf16" in suite.mixed_skip_reason("auto")


def test_the_recorded_runs_are_in_the_report():
    """Every run record the README cites is readable by the suite."""
    names = {r["run"] for r in suite.time_to_accuracy()}
    assert {"cifar10_fast_resnet9half_22ep", "cifar10_fast_resnet9half_22ep_fp32", "cifar10_fast_resnet9half_22ep_seed1",
            "cifar10_fast_resnet9half_22ep_fp32_seed1",
            "cifar10_fast_resnet20_34ep", "cifar10_fast_resnet9half_22ep_kernels"} <= names


@pytest.mark.slow
def test_bench_models_quick_smoke(tmp_path):
    out = tmp_path / "models.json"
    proc = run_script("bench_models.py", "--quick", "--keras-hub", "0", "--json", out, timeout=900)
    report = json.loads(out.read_text())
    names = [r["name"] for r in report["results"]]
    assert names == ["keras.applications ResNet50", "keras_resnet resnet50_v1", "keras_resnet resnet50",
                     "keras_resnet resnet20", "keras_resnet resnet9_half"]
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in report["results"])
    assert set(report["ratios"]) == {f"{m} / keras.applications {k}" for m in ("resnet50_v1", "resnet50")
                                     for k in ("train", "infer")}
    assert report["quick"] and report["hardware"]["cores"] == os.cpu_count()
    # One matmul probe beside each model's one round (the 64 px models have no FLOP count).
    assert report["paired_probe"]["dtype"] == "float32"
    assert all(len(r["probe_gflops_rounds"]) == 1 and r["probe_gflops_rounds"][0] > 0
               for r in report["results"])
    assert [r["train_pct_peak"] is not None for r in report["results"]] == [False, False, False, True, True]
    # keras_resnet models are also timed through fold_batchnorm; keras.applications is not.
    assert [r["infer_snapshot_img_s"] is not None for r in report["results"]] == [False] + [True] * 4
    assert "fold_batchnorm" in proc.stdout
    assert "ratio resnet50_v1 / keras.applications train" in proc.stdout


def test_bench_models_share_of_peak_is_paired_round_by_round():
    import bench_models

    bench = bench_models.Bench.__new__(bench_models.Bench)  # the arithmetic only, no model
    bench.name, bench.small, bench.size = "keras_resnet resnet50_v1", False, 224
    # Per-round shares 49%, 98% and 25% (2, 4 and 3 img/s x 24.54 GFLOP against probes of
    # 100, 100 and 300 GFLOP/s): the median of the paired shares is 49%. Unpaired it would
    # read 74% (median throughput over median probe) or 44% (against the mean probe).
    bench.train, bench.infer, bench.probe = [2.0, 4.0, 3.0], [10.0, 20.0, 15.0], [100.0, 100.0, 300.0]
    assert bench.pct_peak("train") == pytest.approx(100 * 2.0 * 6 * 3.86 / 100, abs=0.05)
    assert bench.pct_peak("infer") == pytest.approx(100 * 10.0 * 2 * 3.86 / 100, abs=0.05)
    # v1 (resnet50_v1, keras.applications) at 3.86 GMACs, v1.5 (resnet50, keras-hub) at 4.09.
    assert bench.flops_key() == "resnet50_v1@224"
    bench.name = "keras.applications ResNet50"
    assert bench.flops_key() == "resnet50_v1@224"
    bench.name = "keras_resnet resnet50"
    assert bench.flops_key() == "resnet50@224"
    assert bench.pct_peak("train") == pytest.approx(100 * 2.0 * 6 * 4.09 / 100, abs=0.05)
    # Each model's round gets the mean of the probes on either side of it.
    assert bench_models.probes_beside([100.0, 140.0, 180.0, 120.0]) == [120.0, 160.0, 150.0]
    assert bench_models.probes_beside([]) == []
    bench.probe = []  # --probe 0
    assert bench.pct_peak("train") is None
    bench.size, bench.probe = 64, [100.0, 100.0, 300.0]  # --quick's 64 px: no known FLOP count
    assert bench.pct_peak("train") is None


def test_bench_models_subset_keeps_the_reference_and_rejects_unknown_names():
    import bench_models

    available = bench_models.MODELS + (bench_models.KERAS_HUB,)
    assert bench_models.select_models("resnet20,resnet50_v1", available) == (
        bench_models.REFERENCE, "keras_resnet resnet50_v1", "keras_resnet resnet20")
    with pytest.raises(SystemExit, match="resnet51"):
        bench_models.select_models("resnet51", available)


def _run_dir(root, name, precision, seed, seconds, test, tta, curve):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"model": "resnet9_half", "seed": seed,
                                                            "precision": "auto"}}))
    (run / "environment.json").write_text(json.dumps({"cpu": "test cpu"}))
    (run / "metrics.json").write_text(json.dumps({
        "epochs": len(curve), "precision": precision, "train_seconds_this_session": seconds,
        "test_accuracy": test, "test_accuracy_flip_tta": tta}))
    rows = ["epoch,accuracy,val_accuracy"] + [f"{i},0.5,{v}" for i, v in enumerate(curve)]
    (run / "history.csv").write_text("\n".join(rows) + "\n")
    return str(run)


@pytest.mark.slow
def test_compare_runs_reports_accuracy_gaps_and_time_against_the_first_run(tmp_path):
    import compare_runs

    bf16 = _run_dir(tmp_path, "bf16", "mixed_bfloat16", 0, 1000.0, 0.92, 0.93, [0.5, 0.8, 0.92])
    fp32 = _run_dir(tmp_path, "fp32", "float32", 0, 4500.0, 0.925, 0.928, [0.55, 0.79, 0.925])
    rows = compare_runs.main([bf16, fp32, "--plot", str(tmp_path / "curves.png"),
                              "--json", str(tmp_path / "rows.json")])
    assert [r["precision"] for r in rows] == ["mixed_bfloat16", "float32"]
    assert rows[0]["test_gap_vs_first"] == 0.0 and rows[0]["time_vs_first"] == 1.0
    assert rows[1]["test_gap_vs_first"] == pytest.approx(0.005)
    assert rows[1]["tta_gap_vs_first"] == pytest.approx(-0.002)
    assert rows[1]["largest_epoch_gap_vs_first"] == pytest.approx(0.05)  # epoch 1: 0.55 vs 0.50
    assert rows[1]["time_vs_first"] == 4.5 and rows[1]["seconds_per_epoch"] == 1500.0
    table = compare_runs.markdown(rows)
    assert "| fp32 | float32 | 0 | 3 | 4500.0 | 1500.0 | 4.5x | 92.50% | 92.80% | +0.50 / -0.20 TTA | +5.00 |" in table
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "rows.json").read_text())["rows"][1]["run"] == "fp32"


def test_compare_runs_rejects_what_is_not_a_finished_run(tmp_path):
    import compare_runs

    with pytest.raises(SystemExit, match="Not a run directory. Received: .*nope"):
        compare_runs.load_run(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="metrics.json missing"):
        compare_runs.load_run(str(tmp_path / "half"))


@pytest.mark.slow
def test_bench_optimizer_times_both_sgds_and_writes_json(tmp_path):
    out = tmp_path / "optimizer.json"
    proc = run_script("bench_optimizer.py", "--model", "resnet20", "--quick", "--json", out)
    report = json.loads(out.read_text())
    assert report["params"] == 269_722 and report["model"] == "resnet20"
    assert set(report["ms_per_step"]) == {f"{lib}.optimizers.{kind}" for lib in ("keras", "keras_resnet")
                                          for kind in ("SGD", "AdamW")}
    assert all(len(v) == 2 and min(v) > 0 for v in report["ms_per_step_rounds"].values())
    assert set(report["speedup_median"]) == {"SGD", "AdamW"}
    assert min(report["speedup_median"].values()) > 0 and "AdamW speedup" in proc.stdout


@pytest.mark.slow
def test_bench_before_after_smoke(tmp_path):
    """The paired before/after script, with this checkout standing in for the release."""
    out = tmp_path / "before_after.json"
    run_script("bench_before_after.py", "--before", BENCHMARKS.parent, "--only", "resnet9", "--steps", "1",
               "--precisions", "mixed_bfloat16", "--infer-only", "--json", out, timeout=900)
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"before", "after", "after+cpu"}
    assert all(r["infer_img_s"] > 0 for r in rows.values())
    assert rows["after"]["infer_folded_img_s"] > 0 and "infer_folded_img_s" not in rows["before"]
    assert report["summary"]["after:resnet9_half:mixed_bfloat16:infer_img_s"]["vs_before"] > 0


@pytest.mark.slow
def test_load_serving_smoke(tmp_path):
    """2 callers x 5 requests (the benchmark is 8 x 200): the report's fields, and
    every request answered correctly or refused as its kind must be."""
    out = tmp_path / "load.json"
    run_script("load_serving.py", "--callers", 2, "--requests", 5, "--json", out)
    report = json.loads(out.read_text())
    assert report["requests"] == 10 and report["unexpected"] == {} and report["keras_importable"] is False
    assert report["requests_per_second"] > 0 and 0 < report["latency_p50_ms"] <= report["latency_p99_ms"]
    assert sum(sum(c.values()) for c in report["outcomes"].values()) == 10
    assert 0 < report["peak_rss_mb"] < 3000
