"""Fine-tuning experiment (issue 5) on the real CIFAR-10, offline.

    python benchmarks/finetune_cifar.py --out runs/finetune_experiment \\
        [--data-dir ../shared/tensorflow_datasets] [--pretrain-epochs 8] [--epochs 15] [--quick]

1. Pretrain ResNet-20 on CIFAR-10 classes 0-4 (all 25,000 training images), with the
   `cifar10_fast_resnet20` recipe.
2. Fine-tune set: classes 5-9, a seeded, class-balanced 10% of their training images
   (2,500 images, 500 per class). Test set: all 5,000 test images of classes 5-9.
3. Four runs on that fine-tune set, each through `keras_resnet.train` (run directories with
   config, history and metrics), same batch size and epochs:

   scratch   a fresh ResNet-20 with the `cifar10_fast_resnet20` recipe (its own best schedule)
   all       pretrained backbone + new head, every stage trainable from epoch 0
   head      pretrained backbone frozen, only the new head trains
   gradual   the `finetune` recipe: head first, then one more stage per epoch from the
             top, discriminative learning rates (x0.5 per stage towards the stem)

   `all`, `head` and `gradual` share the `finetune` recipe (SGD-Nesterov, warmup + cosine,
   label smoothing, BatchNorm statistics frozen, a fresh head); `all` and `head` drop its
   per-stage learning rates, `gradual` is the recipe as shipped.
   Scratch runs as many epochs as the fine-tunes, so it gets at least their wall time
   (frozen stages make `head` and `gradual` cheaper per step); each run's wall time is
   reported next to its accuracy.

Prints a Markdown table and writes `results.json` (with the hardware, versions and the
command) into `--out`.
"""

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import hardware, print_hardware  # noqa: E402

PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
FINETUNE_CLASSES = (5, 6, 7, 8, 9)


def load_cifar10(data_dir):
    import numpy as np
    import tensorflow_datasets as tfds

    from keras_resnet import data as kr_data

    builder = kr_data.tfds_source._tfds_builder("cifar10", data_dir)
    names = builder.info.features["label"].names
    out = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, batch_size=-1, as_supervised=True)
        x, y = tfds.as_numpy(ds)
        out[split] = (np.asarray(x), np.asarray(y).astype("int64"))
    return out, names


def subset(x, y, classes, fraction=1.0, seed=0):
    """The images of `classes`, relabelled 0..len(classes)-1; a class-balanced `fraction`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    keep = []
    for c in classes:
        members = np.flatnonzero(y == c)
        count = int(round(len(members) * fraction))
        keep.append(np.sort(rng.permutation(members)[:count]))
    keep = np.concatenate(keep)
    relabel = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([relabel[int(v)] for v in y[keep]], "int64")


def pipelines(arrays, class_names, batch_size, seed):
    from keras_resnet import data as kr_data

    train_ds, eval_ds, info = kr_data.make_pipelines(
        {"train": arrays["train"], "test": arrays["test"], "class_names": class_names},
        batch_size, augment="cifar", seed=seed)
    return (train_ds, info), eval_ds


def run(config, arrays, class_names, fresh):
    import keras_resnet as kr

    if fresh and os.path.isdir(config["output"]):
        shutil.rmtree(config["output"])
    resolved = kr.get_recipe(**config)  # the recipe's batch size unless overridden
    train_data, eval_ds = pipelines(arrays, class_names, resolved.batch_size, resolved.seed)
    start = time.time()
    result = kr.train(config, train_data=train_data, eval_data=eval_ds)
    metrics = dict(result.metrics)
    metrics["wall_seconds_including_eval"] = round(time.time() - start, 1)
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/finetune_experiment")
    parser.add_argument("--data-dir", default=None, help="tfds data dir (default $TFDS_DATA_DIR).")
    parser.add_argument("--pretrain-epochs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=15, help="Epochs of every fine-tune-set run.")
    parser.add_argument("--batch-size", type=int, default=64, help="Batch of the fine-tune-set runs.")
    parser.add_argument("--fraction", type=float, default=0.1, help="Share of classes 5-9 train images.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Smoke run: tiny subsets, 1-2 epochs.")
    parser.add_argument("--fresh", action="store_true", help="Delete earlier run dirs under --out first.")
    args = parser.parse_args(argv)

    info = hardware()
    print_hardware(info)
    os.makedirs(args.out, exist_ok=True)
    cifar, names = load_cifar10(args.data_dir)
    (x_train, y_train), (x_test, y_test) = cifar["train"], cifar["test"]
    pre = {"train": subset(x_train, y_train, PRETRAIN_CLASSES),
           "test": subset(x_test, y_test, PRETRAIN_CLASSES)}
    fine = {"train": subset(x_train, y_train, FINETUNE_CLASSES, args.fraction, args.seed),
            "test": subset(x_test, y_test, FINETUNE_CLASSES)}
    if args.quick:
        # Every class stays represented: the subsets are sorted by class.
        pre = {k: (x[::len(y) // 512], y[::len(y) // 512]) for k, (x, y) in pre.items()}
        fine = {k: (x[::len(y) // 256], y[::len(y) // 256]) for k, (x, y) in fine.items()}
        args.pretrain_epochs, args.epochs = 1, 2
    pre_names = [names[c] for c in PRETRAIN_CLASSES]
    fine_names = [names[c] for c in FINETUNE_CLASSES]
    print(f"Pretrain: {len(pre['train'][1])} train / {len(pre['test'][1])} test images of {pre_names}")
    print(f"Fine-tune: {len(fine['train'][1])} train / {len(fine['test'][1])} test images of {fine_names}",
          flush=True)

    common = dict(model="resnet20", seed=args.seed, verbose=2, precision="auto", tta_flip=False)
    pre_dir = os.path.join(args.out, "pretrain_classes0-4")
    pretrain = run(dict(common, recipe="cifar10_fast_resnet20", epochs=args.pretrain_epochs, output=pre_dir),
                   pre, pre_names, args.fresh)
    weights = os.path.join(pre_dir, "model.keras")
    print(f"Pretrained: test accuracy on classes 0-4 {pretrain['test_accuracy']:.4f} "
          f"({pretrain['train_seconds_this_session']} s)", flush=True)

    tune = dict(common, recipe="finetune", epochs=args.epochs, batch_size=args.batch_size,
                weights=weights, freeze_batchnorm=True, stage_lr_multipliers=None)
    variants = {
        "scratch": dict(common, recipe="cifar10_fast_resnet20", epochs=args.epochs, batch_size=args.batch_size,
                        reference_batch_size=256),
        "all": dict(tune, unfreeze_schedule={0: "all"}),
        "head": dict(tune, unfreeze_schedule={0: ["head"]}),
        "gradual": dict(tune, unfreeze_schedule="gradual", stage_lr_multipliers="decay:0.5"),
    }
    results = {}
    for name, config in variants.items():
        config["output"] = os.path.join(args.out, name)
        metrics = run(config, fine, fine_names, args.fresh)
        results[name] = {"test_accuracy": metrics["test_accuracy"],
                         "train_seconds": metrics["train_seconds_this_session"],
                         "epochs": metrics["epochs"], "run_dir": config["output"],
                         "config": {k: v for k, v in config.items() if k != "output"}}
        print(f"  {name:8s} test accuracy {metrics['test_accuracy']:.4f}  "
              f"train {metrics['train_seconds_this_session']} s", flush=True)

    print("\n| run (classes 5-9, 10% of their train images) | test accuracy | train wall time |")
    print("| --- | ---: | ---: |")
    labels = {"scratch": "from scratch (cifar10_fast_resnet20 recipe)", "all": "fine-tune, everything at once",
              "head": "fine-tune, head only", "gradual": "fine-tune, gradual unfreezing + per-stage lr"}
    for name, r in results.items():
        print(f"| {labels[name]} | {100 * r['test_accuracy']:.2f}% | {r['train_seconds']:.0f} s |")
    best = max(results, key=lambda k: results[k]["test_accuracy"])
    print(f"\nBest: {best}. Fine-tuned (gradual) beats scratch: "
          f"{results['gradual']['test_accuracy'] > results['scratch']['test_accuracy']}; "
          f"gradual beats all-at-once and head-only: "
          f"{results['gradual']['test_accuracy'] > max(results['all']['test_accuracy'], results['head']['test_accuracy'])}")
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"pretrain": {"test_accuracy_classes0-4": pretrain["test_accuracy"],
                                "train_seconds": pretrain["train_seconds_this_session"],
                                "epochs": args.pretrain_epochs},
                   "finetune": results, "quick": args.quick, "hardware": info,
                   "train_images": len(fine["train"][1]), "test_images": len(fine["test"][1]),
                   "command": " ".join([sys.executable] + sys.argv)}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
