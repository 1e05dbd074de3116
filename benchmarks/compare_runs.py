"""Side by side: recorded training runs (e.g. the same recipe in float32 and bfloat16).

    python benchmarks/compare_runs.py RUN_DIR [RUN_DIR ...] [--plot out.png] [--json out.json]

Each RUN_DIR is what `keras-resnet train --output DIR` wrote (config.json,
environment.json, metrics.json, history.csv). Prints one Markdown row per run
(precision, seed, epochs, training wall time and its ratio to the first run,
final test accuracy with and without flip TTA, the CPU it ran on), then how far
each run's per-epoch validation accuracy strayed from the first run's: the final
gap and the largest gap over the epochs both have. `--plot` overlays the
validation-accuracy curves. Issue 9 uses it for "no loss of final accuracy with
bf16": `cifar10_fast` in float32 against the shipped bfloat16 record.
"""

import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from suite import _pct  # noqa: E402  (the suite's own accuracy format)


def load_run(path):
    """The run's config, environment, metrics and per-epoch history as plain dicts."""
    if not os.path.isdir(path):
        raise SystemExit(f"Not a run directory. Received: {path!r}")
    missing = [f for f in ("config.json", "metrics.json") if not os.path.exists(os.path.join(path, f))]
    if missing:
        raise SystemExit(f"{path!r} is not a finished run: {', '.join(missing)} missing "
                         "(keras-resnet train writes them when it ends).")

    def read_json(name):
        file = os.path.join(path, name)
        if not os.path.exists(file):
            return {}
        with open(file) as f:
            return json.load(f)

    config = read_json("config.json")
    config = config.get("config", config)  # a run's config.json nests the TrainConfig
    history = []
    history_path = os.path.join(path, "history.csv")
    if os.path.exists(history_path):
        with open(history_path, newline="") as f:
            history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    return {"run": os.path.basename(os.path.normpath(path)), "config": config,
            "environment": read_json("environment.json"), "metrics": read_json("metrics.json"),
            "history": history}


def summarize(runs):
    """One row per run, gaps measured against the first run."""
    base = runs[0]
    base_seconds = base["metrics"].get("train_seconds_this_session")
    base_curve = [h.get("val_accuracy") for h in base["history"]]
    rows = []
    for run in runs:
        metrics, config = run["metrics"], run["config"]
        seconds = metrics.get("train_seconds_this_session")
        epochs = metrics.get("epochs") or len(run["history"]) or None
        curve = [h.get("val_accuracy") for h in run["history"]]
        pairs = [(a, b) for a, b in zip(curve, base_curve) if a is not None and b is not None]
        gaps = [a - b for a, b in pairs]
        rows.append({
            "run": run["run"], "precision": metrics.get("precision") or config.get("precision"),
            "seed": config.get("seed"), "model": config.get("model"), "epochs": epochs,
            "train_seconds": seconds,
            "seconds_per_epoch": round(seconds / epochs, 1) if seconds and epochs else None,
            "time_vs_first": round(seconds / base_seconds, 2) if seconds and base_seconds else None,
            "test_accuracy": metrics.get("test_accuracy"),
            "test_accuracy_flip_tta": metrics.get("test_accuracy_flip_tta"),
            "test_gap_vs_first": _gap(metrics.get("test_accuracy"), base["metrics"].get("test_accuracy")),
            "tta_gap_vs_first": _gap(metrics.get("test_accuracy_flip_tta"),
                                     base["metrics"].get("test_accuracy_flip_tta")),
            "largest_epoch_gap_vs_first": round(max(gaps, key=abs), 4) if gaps else None,
            "epochs_compared": len(gaps),
            "cpu": run["environment"].get("cpu"),
        })
    return rows


def _gap(value, reference):
    if isinstance(value, (int, float)) and isinstance(reference, (int, float)):
        return round(value - reference, 4)
    return None


def _points(value):
    """A signed difference in percentage points ("+0.09"), blank when unknown."""
    return f"{100 * value:+.2f}" if isinstance(value, (int, float)) else ""


def markdown(rows):
    lines = ["| run | precision | seed | epochs | training s | s/epoch | time vs first | test acc | flip TTA "
             "| test gap (points) | largest per-epoch val gap | ran on |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['precision']} | {r['seed']} | {r['epochs']} | {r['train_seconds']} | "
            f"{r['seconds_per_epoch']} | {r['time_vs_first']}x | {_pct(r['test_accuracy'])} | "
            f"{_pct(r['test_accuracy_flip_tta'])} | {_points(r['test_gap_vs_first'])} / "
            f"{_points(r['tta_gap_vs_first'])} TTA | {_points(r['largest_epoch_gap_vs_first'])} | "
            f"{r['cpu'] or 'not recorded'} |")
    return "\n".join(lines)


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        curve = [h.get("val_accuracy") for h in run["history"]]
        label = f"{run['run']} ({run['metrics'].get('precision')}, seed {run['config'].get('seed')})"
        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (no TTA)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="Run directories; gaps are against the first.")
    parser.add_argument("--plot", default=None, help="Write the overlaid accuracy curves here (PNG).")
    parser.add_argument("--json", default=None, help="Write the rows here.")
    args = parser.parse_args(argv)
    runs = [load_run(p) for p in args.runs]
    rows = summarize(runs)
    print(markdown(rows))
    if args.plot:
        plot(runs, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["benchmarks/compare_runs.py"] + (argv or sys.argv[1:])),
                       "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
