"""Copies a finished run's record into docs/results/NAME (what the README tables cite).

    python benchmarks/record_run.py runs/c10_seed0 docs/results/cifar10_airbench_seed0

Copies config.json, environment.json, history.csv, metrics.json and the curve
PNGs; never the model or backups (they stay in the run directory).
"""

import argparse
import os
import shutil

RECORD_FILES = ("config.json", "environment.json", "history.csv", "metrics.json",
                "accuracy.png", "loss.png", "learning_rate.png")


def record(run_dir, dest):
    missing = [f for f in ("config.json", "history.csv", "metrics.json")
               if not os.path.exists(os.path.join(run_dir, f))]
    if missing:
        raise SystemExit(f"{run_dir} is not a finished run: missing {missing}")
    os.makedirs(dest, exist_ok=True)
    copied = []
    for name in RECORD_FILES:
        source = os.path.join(run_dir, name)
        if os.path.exists(source):
            shutil.copy2(source, os.path.join(dest, name))
            copied.append(name)
    return copied


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("dest")
    args = parser.parse_args()
    print(f"{args.dest}: {', '.join(record(args.run_dir, args.dest))}")


if __name__ == "__main__":
    main()
