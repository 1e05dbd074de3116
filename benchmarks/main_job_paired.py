"""The main job's epoch time, paired: release 0.1.0, the plain core and the plain core with
`--cpu-kernels`, one after another in one run (these VMs drift; only same-run ratios hold).

    git worktree add /tmp/kr_release d919d32      # release 0.1.0's last commit
    TFDS_DATA_DIR=... python benchmarks/main_job_paired.py --before /tmp/kr_release [--epochs 3] [--rounds 1]

Each variant runs `keras-resnet train --recipe cifar10_fast --epochs N` (the README's main
job, shortened) in a fresh process on the real CIFAR-10 and reports the wall time of
every epoch after the first (the first traces the step and fills the cache): the
epoch's training steps and its evaluation, as `model.fit` prints it.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("before", "after", "after+cpu")


def run(variant, before, epochs):
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = (before if variant == "before" else HERE) + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "keras_resnet", "train", "--recipe", "cifar10_fast",
                   "--epochs", str(epochs), "--output", os.path.join(out, "run")]
        if variant == "after+cpu":
            command.append("--cpu-kernels")
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{result.stderr[-3000:]}")
        seconds = [int(s) for s in re.findall(r"^\d+/\d+ - (\d+)s - ", result.stdout, re.M)]
        with open(os.path.join(out, "run", "metrics.json")) as f:
            metrics = json.load(f)
    return {"variant": variant, "epoch_seconds": seconds, "steady_epoch_seconds": seconds[1:],
            "precision": metrics.get("precision"), "model_hook": metrics.get("model_hook")}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for r in range(args.rounds):
        order = VARIANTS[r % 3:] + VARIANTS[:r % 3]
        for variant in order:
            row = run(variant, args.before, args.epochs)
            row["round"] = r
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for variant in VARIANTS:
        steady = [s for row in rows if row["variant"] == variant for s in row["steady_epoch_seconds"]]
        summary[variant] = {"median_epoch_seconds": statistics.median(steady)}
    base = summary["before"]["median_epoch_seconds"]
    for variant in VARIANTS:
        summary[variant]["vs_before"] = round(summary[variant]["median_epoch_seconds"] / base, 3)
    print(json.dumps(summary, indent=2))
    if args.json:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from common import hardware

        with open(args.json, "w") as f:
            json.dump({"hardware": hardware(), "rows": rows, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
