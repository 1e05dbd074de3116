"""The whole benchmark suite in one run: a Markdown table plus JSON.

    python benchmarks/suite.py --out benchmarks/results [--quick]

Runs, one after another (never two CPU-heavy jobs at once), each benchmark
script as a subprocess writing JSON, then merges them:

    matmul_probe.py      the machine's fp32/bf16 matmul peak (GFLOP/s)
    bench_models.py      keras_resnet vs keras.applications, train/infer, fp32 and the
                         hardware's mixed precision (bf16 where the CPU has AVX512-BF16 or
                         AMX; elsewhere skipped with the reason: `--mixed-precision` forces it)
    bench_torch.py       PyTorch CPU ResNet-50 (skipped when torch is not installed)
    bench_pipeline.py    tf.data input pipeline throughput vs training throughput
    bench_serving.py     exported SavedModel latency/throughput vs keras.applications export
    bench_optimizer.py   one SGD / AdamW step over ResNet-50's variables: Keras's vs keras_resnet's fused

Each figure is also reported as a fraction of the matmul peak, using the known
forward MAC counts in `common.FORWARD_GMACS` (training ~ 3x forward). The report
also collects the time-to-accuracy records of the CIFAR-10 runs kept in
`docs/results/*/` (`metrics.json` + `config.json`: too long to re-run here).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import forward_gflops, hardware, native_bf16, train_gflops  # noqa: E402


def run(script, out_json, args, timeout):
    path = os.path.join(HERE, script)
    if not os.path.exists(path):
        return {"skipped": f"{script} not found"}
    cmd = [sys.executable, path, "--json", out_json, *args]
    print("$", " ".join(cmd), flush=True)
    start = time.time()
    try:
        proc = subprocess.run(cmd, timeout=timeout, text=True, capture_output=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    except subprocess.TimeoutExpired:
        return {"skipped": f"{script} timed out after {timeout}s"}
    print(proc.stdout[-4000:], flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], flush=True)
        return {"skipped": f"{script} exited {proc.returncode}"}
    with open(out_json) as f:
        result = json.load(f)
    result["_seconds"] = round(time.time() - start, 1)
    return result


RESULTS_DIR = os.path.join(os.path.dirname(HERE), "docs", "results")


def time_to_accuracy(results_dir=RESULTS_DIR):
    """One row per recorded training run: model, epochs, precision, wall time, accuracy."""
    rows = []
    for name in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        metrics_path = os.path.join(results_dir, name, "metrics.json")
        config_path = os.path.join(results_dir, name, "config.json")
        if not (os.path.exists(metrics_path) and os.path.exists(config_path)):
            continue
        with open(metrics_path) as f:
            metrics = json.load(f)
        with open(config_path) as f:
            config = json.load(f)
        config = config.get("config", config)  # a run's config.json nests the TrainConfig
        if "test_accuracy" not in metrics:
            continue
        env_path = os.path.join(results_dir, name, "environment.json")
        env = {}
        if os.path.exists(env_path):  # the run's own record of where it ran
            with open(env_path) as f:
                env = json.load(f)
        rows.append({"run": name, "recipe": config.get("recipe"), "model": config.get("model"),
                     "model_options": config.get("model_options") or {},
                     "dataset": config.get("dataset"), "epochs": metrics.get("epochs"),
                     "precision": metrics.get("precision"),
                     "train_seconds": metrics.get("train_seconds_this_session"),
                     "test_accuracy": metrics["test_accuracy"],
                     "test_accuracy_flip_tta": metrics.get("test_accuracy_flip_tta"),
                     "cpu": env.get("cpu")})
    return rows


def _pct(value):
    return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else ""


def _share(paired_pct, fraction_of_run_probe):
    """A "% peak" cell: the paired figure (bench_models.py probes beside every round) when
    there is one, else against the suite's one matmul probe."""
    if paired_pct is not None:
        return f"{paired_pct:.0f}%"
    return f"{100 * fraction_of_run_probe:.0f}%" if fraction_of_run_probe else ""


def markdown(results):
    hw = results["hardware"]
    lines = [f"Hardware: {hw['cpu']}, {hw['cores']} cores; TensorFlow {hw.get('tensorflow')}, "
             f"Keras {hw.get('keras')}, Python {hw['python']}.", ""]
    peak = results.get("matmul", {}).get("matmul_gflops", {})
    if peak:
        lines += [f"Matmul peak: fp32 {peak.get('float32')} GFLOP/s, bf16 {peak.get('bfloat16')} GFLOP/s "
                  "(matmul_probe.py, at the start). The keras_resnet / keras.applications / keras-hub "
                  "\"% peak\" cells are paired: the median over rounds of each round against a probe "
                  "taken beside it (bench_models.py); PyTorch's are against the start probe.", ""]
    lines += ["| model | precision | train img/s | infer img/s | train % peak | infer % peak |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name in ("models_float32", "models_mixed", "torch"):
        block = results.get(name, {})
        for entry in block.get("results", []):
            key = entry.get("flops_key")
            prec = entry.get("precision", "float32")
            pk = peak.get("bfloat16" if "bfloat16" in prec else "float32")
            tr, inf = entry.get("train_img_s"), entry.get("infer_img_s")
            tp = _share(entry.get("train_pct_peak"), key and tr and pk and tr * train_gflops(key) / pk)
            ip = _share(entry.get("infer_pct_peak"), key and inf and pk and inf * forward_gflops(key) / pk)
            lines.append(f"| {entry['name']} | {prec} | {tr or ''} | {inf or ''} | {tp} | {ip} |")
            snap = entry.get("infer_snapshot_img_s")
            if snap:  # keras_resnet's fixed-weight inference (fold_batchnorm)
                sp = _share(entry.get("infer_snapshot_pct_peak"),
                            key and pk and snap * forward_gflops(key) / pk)
                lines.append(f"| {entry['name']}, fold_batchnorm | {prec} | | {snap} | | {sp} |")
        for k, v in block.get("ratios", {}).items():
            lines.append(f"| ratio {k} | | {v} | | | |")
        if "skipped" in block:
            lines.append(f"| {name} | skipped: {block['skipped']} | | | | |")
        steal = block.get("hardware", {}).get("cpu_steal_fraction")
        if steal:  # a VM's hypervisor took part of the CPU: absolute figures are low, ratios hold
            lines.append(f"| {name}: hypervisor steal during the timed rounds {100 * steal:.0f}% | | | | | |")
    pipeline = results.get("pipeline", {})
    if pipeline.get("ratios"):
        lines += ["", "| input pipeline | pipeline img/s / training img/s |", "| --- | ---: |"]
        lines += [f"| {k} | {v} |" for k, v in pipeline["ratios"].items()]
    elif "skipped" in pipeline:
        lines += ["", f"input pipeline skipped: {pipeline['skipped']}"]
    serving = results.get("serving", {})
    if serving.get("results"):
        lines += ["", "| SavedModel (serving) | latency batch 1, ms | throughput, img/s |",
                  "| --- | ---: | ---: |"]
        lines += [f"| {r['name']} | {r.get('latency_b1_ms_median')} | {r.get('throughput_b32_img_s_median')} |"
                  for r in serving["results"]]
        lines += [f"| ratio {k} | | {v} |" for k, v in serving.get("ratios", {}).items()]
    elif "skipped" in serving:
        lines += ["", f"serving skipped: {serving['skipped']}"]
    optimizer = results.get("optimizer", {})
    if optimizer.get("ms_per_step"):
        lines += ["", f"| one optimizer step over {optimizer['model']} ({optimizer['params']:,} params) | ms |",
                  "| --- | ---: |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in optimizer["ms_per_step"].items()]
        lines += [f"| {kind} speedup (median of per-round ratios) | {ratio:.2f}x |"
                  for kind, ratio in optimizer["speedup_median"].items()]
    elif "skipped" in optimizer:
        lines += ["", f"optimizer step skipped: {optimizer['skipped']}"]
    runs = results.get("time_to_accuracy", [])
    if runs:
        lines += ["", "| training run (docs/results) | model | epochs | precision | training s | test acc | flip TTA | ran on |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |"]
        for r in runs:
            model = r["model"] + "".join(f" {k}={v}" for k, v in r["model_options"].items())
            lines.append(f"| {r['run']} | {model} | {r['epochs']} | {r['precision']} | "
                         f"{r['train_seconds']} | {_pct(r['test_accuracy'])} | {_pct(r['test_accuracy_flip_tta'])} | "
                         f"{r.get('cpu') or 'not recorded'} |")
    return "\n".join(lines)


def mixed_precision_for(choice, hw):
    """The mixed precision to benchmark beside float32, or None to skip it.

    `auto` follows keras_resnet's own `precision="auto"` on a CPU: bf16 only where the
    hardware computes it natively; a user of such a CPU trains in float32.
    """
    if choice == "none":
        return None
    if choice != "auto":
        return choice
    return "mixed_bfloat16" if native_bf16(hw) else None


def mixed_skip_reason(choice):
    """Why the suite has no mixed-precision rows (`mixed_precision_for` gave None)."""
    if choice == "none":
        return "not asked for (--mixed-precision none)"
    return ("no native bf16 on this CPU (no AVX512-BF16 or AMX-BF16): keras_resnet's "
            "precision='auto' trains in float32 here, and emulated bf16 is several times "
            "slower (--mixed-precision mixed_bfloat16 measures it anyway)")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the whole benchmark suite.")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--quick", action="store_true", help="Few repeats (a smoke run).")
    parser.add_argument("--timeout", type=int, default=3600,
                        help="Per script, seconds (bench_models.py took 1,526 s on a 2-core AVX2 EPYC).")
    parser.add_argument("--mixed-precision", default="auto",
                        choices=["auto", "mixed_bfloat16", "mixed_float16", "none"],
                        help="Second precision of bench_models.py. auto: mixed_bfloat16 on CPUs "
                             "with native bf16 (AVX512-BF16/AMX), none elsewhere (keras_resnet's "
                             "precision='auto' trains in float32 there).")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    results = {"hardware": hardware(), "command": " ".join([sys.executable] + sys.argv)}
    results["matmul"] = run("matmul_probe.py", f"{args.out}/matmul.json", [], args.timeout)
    results["models_float32"] = run("bench_models.py", f"{args.out}/models_fp32.json",
                                    ["--precision", "float32", *quick], args.timeout)
    mixed = mixed_precision_for(args.mixed_precision, results["hardware"])
    if mixed is None:
        results["models_mixed"] = {"skipped": mixed_skip_reason(args.mixed_precision)}
    else:
        results["models_mixed"] = run("bench_models.py", f"{args.out}/models_mixed.json",
                                      ["--precision", mixed, *quick], args.timeout)
    results["torch"] = run("bench_torch.py", f"{args.out}/torch.json", quick, args.timeout)
    results["pipeline"] = run("bench_pipeline.py", f"{args.out}/pipeline.json", quick, args.timeout)
    results["serving"] = run("bench_serving.py", f"{args.out}/serving.json", quick, args.timeout)
    results["optimizer"] = run("bench_optimizer.py", f"{args.out}/optimizer.json", quick, args.timeout)
    results["time_to_accuracy"] = time_to_accuracy()
    table = markdown(results)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
