"""Writes the Colab notebooks in this folder from plain Python, so they stay clean and reviewable.

    python notebooks/build_notebooks.py          # rewrite every notebook
    python notebooks/build_notebooks.py --check  # exit 1 if a committed notebook is stale

Edit the cells here, not in Jupyter: the notebooks are committed without outputs
or execution counts, with stable cell ids, so a diff shows only real changes
(tests/test_notebooks.py checks that they match this file).
"""

import argparse
import pathlib
import sys
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
REPO = "keras-resnet-zoo/keras_resnet"
COLAB = f"https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{{name}}"
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def md(cell_id, text):
    cell = new_markdown_cell(textwrap.dedent(text).strip("\n"))
    cell.id = cell_id
    return cell


def code(cell_id, text, tags=()):
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    cell.id = cell_id
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(name, cells, accelerator="GPU"):
    nb = new_notebook(cells=cells)
    nb.metadata = {
        "accelerator": accelerator,
        "colab": {"name": name, "provenance": [], "toc_visible": True, "gpuType": "T4"},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(nb)
    return nb


def title(cell_id, name, heading, body):
    """The first cell: heading, the Open in Colab badge, what the notebook shows."""
    badge = BADGE.format(url=COLAB.format(name=name))
    return md(cell_id, f"# {heading}\n\n{badge}\n\n" + textwrap.dedent(body).strip("\n"))


INSTALL = code("install", '''
    # On Colab, install keras_resnet from GitHub; anywhere else, use the installed package
    # (`pip install -e .` in a clone of the repository).
    import sys

    if "google.colab" in sys.modules:
        %pip install -q "keras-resnet-zoo @ git+https://github.com/keras-resnet-zoo/keras_resnet"
''')

SMOKE_DOC = '''
    # One switch for CI: KERAS_RESNET_SMOKE=1 shrinks the run to a few steps on a few hundred
    # images (CPU, well under two minutes). Leave it unset for the real run.
    SMOKE = os.environ.get("KERAS_RESNET_SMOKE", "0") == "1"
'''

COMMON_PARAMS = '''
    # tensorflow-datasets directory; None means its default (~/tensorflow_datasets).
    DATA_DIR = os.environ.get("TFDS_DATA_DIR")
    # Everything this notebook writes goes here (a fresh temporary directory by default).
    WORK_DIR = os.environ.get("KERAS_RESNET_WORK_DIR") or tempfile.mkdtemp(prefix="keras_resnet_")
    SEED = 0
'''


def parameters(knobs):
    """The one cell tagged `parameters` (papermill's convention): every knob of the notebook."""
    body = ("import os\nimport tempfile\n\n" + textwrap.dedent(SMOKE_DOC).strip("\n") + "\n"
            + textwrap.dedent(COMMON_PARAMS).rstrip("\n") + "\n\n" + textwrap.dedent(knobs).strip("\n"))
    return code("parameters", body, tags=["parameters"])


def setup(extra_imports=""):
    """Imports, the device report and the smoke banner (the tests look for `SMOKE = ...`)."""
    head = textwrap.dedent("""
        import json

        import keras
        from IPython.display import Image, display
        import matplotlib.pyplot as plt
        import numpy as np
        import tensorflow as tf
        import tensorflow_datasets as tfds

        import keras_resnet as kr
        from keras_resnet import distribute
    """).strip("\n")
    tail = textwrap.dedent("""
        %matplotlib inline
        os.makedirs(WORK_DIR, exist_ok=True)
        keras.utils.set_random_seed(SEED)
        print(f"SMOKE = {SMOKE}; outputs in {WORK_DIR}")
        print(f"keras_resnet {kr.__version__}, TensorFlow {tf.__version__}, Keras {keras.__version__}")
        print("accelerators:", [d.name for d in tf.config.list_logical_devices() if d.device_type != "CPU"]
              or "none (CPU)")
    """).strip("\n")
    return code("setup", head + "\n" + extra_imports.strip("\n") + "\n\n" + tail)


# =============================================================================== 01 quickstart
def quickstart():
    name = "01_quickstart_cifar10.ipynb"
    return name, notebook(name, [
        title("title", name, "Quickstart: ResNet-20 on CIFAR-10", '''
            Train the ResNet-20 of He et al. (2015) on CIFAR-10 with `model.fit` and the
            `cifar10_fast_resnet20` recipe of `keras_resnet`:

            1. load CIFAR-10 with tensorflow-datasets,
            2. build the model in one line, `keras_resnet.ResNet((32, 32, 3), 10)`,
            3. train it with the recipe's optimizer and learning-rate schedule (progress bars),
            4. plot the learning curves, evaluate, and look at predictions on test images,
            5. do the same again in one call, `keras_resnet.train(...)`, which also writes a run directory.

            **Runtime.** On Colab pick *Runtime > Change runtime type > T4 GPU*; a GPU (or TPU) is used
            automatically when one is attached, with mixed precision. The full recipe is 34 epochs; on a
            CPU-only runtime set `SMOKE = True` below for a two-minute tour.
        '''),
        INSTALL,
        parameters('''
            RECIPE = "cifar10_fast_resnet20"              # keras_resnet.list_recipes()
            EPOCHS = 2 if SMOKE else 34                   # the recipe's 34 epochs
            BATCH_SIZE = 32 if SMOKE else 256             # the recipe's batch of 256
            STEPS_PER_EPOCH = 4 if SMOKE else None        # None: one pass over the training set
            MAX_TRAIN_EXAMPLES = 256 if SMOKE else None   # None: all 50,000 training images
            EVAL_EXAMPLES = 256 if SMOKE else None        # None: all 10,000 test images
        '''),
        setup("from keras_resnet.data import make_pipelines\nfrom keras_resnet.training import make_optimizer\n"),
        md("device-md", '''
            ## Hardware: strategy and precision

            `distribute.get_strategy("auto")` picks a TPU when one is attached, `MirroredStrategy` with
            several GPUs, and the default strategy otherwise; `resolve_precision("auto")` picks
            `mixed_float16` on a GPU, `mixed_bfloat16` on a TPU (and on CPUs with bf16 units), float32
            otherwise. The model's output layer and its input normalisation stay float32.
        '''),
        code("device", '''
            strategy, strategy_name = distribute.get_strategy("auto")
            precision = distribute.resolve_precision("auto", strategy_name)
            keras.mixed_precision.set_global_policy(precision)
            print(f"strategy: {strategy_name} ({strategy.num_replicas_in_sync} replica(s)), precision: {precision}")
        '''),
        md("data-md", '''
            ## CIFAR-10 from tensorflow-datasets

            `tfds.load` downloads and prepares the dataset once (about 160 MB) into `DATA_DIR`; with
            `TFDS_DATA_DIR` pointing at a prepared copy nothing is downloaded.
        '''),
        code("data", '''
            (train_raw, test_raw), ds_info = tfds.load(
                "cifar10", split=["train", "test"], as_supervised=True, with_info=True, data_dir=DATA_DIR)
            class_names = ds_info.features["label"].names
            print(ds_info.splits["train"].num_examples, "training and", ds_info.splits["test"].num_examples,
                  "test images of", ds_info.features["image"].shape, "in", len(class_names), "classes:")
            print(", ".join(class_names))

            fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
            for ax, (image, label) in zip(axes.flat, tfds.as_numpy(train_raw.take(16))):
                ax.imshow(image)
                ax.set_title(class_names[label], fontsize=9)
                ax.axis("off")
            plt.show()
        '''),
        md("recipe-md", '''
            ## The recipe

            A recipe is a `TrainConfig`: every field can be overridden by keyword. `cifar10_fast_resnet20` is
            SGD with Nesterov momentum, a one-cycle learning rate, label smoothing 0.1, L2 weight decay,
            the standard pad-and-crop + flip augmentation, zero-initialised last BatchNorm in each block,
            and flip test-time augmentation.
        '''),
        code("recipe", '''
            config = kr.get_recipe(RECIPE, epochs=EPOCHS, batch_size=BATCH_SIZE, steps_per_epoch=STEPS_PER_EPOCH,
                                   max_train_examples=MAX_TRAIN_EXAMPLES, data_dir=DATA_DIR, seed=SEED)
            for field in ("model", "epochs", "batch_size", "optimizer", "learning_rate", "nesterov", "schedule",
                          "warmup_epochs", "weight_decay", "label_smoothing", "augment", "model_options"):
                print(f"{field:>16}: {getattr(config, field)}")
        '''),
        md("pipeline-md", '''
            ## Input pipelines

            `keras_resnet.data.make_pipelines` turns the tfds dataset into `tf.data` pipelines for
            `model.fit`: cached, shuffled, augmented (4-pixel pad + random crop + flip) and batched for
            training; batched for evaluation. Images stay on a 0-255 scale: the model normalises them
            itself, so whatever serves it later only needs raw pixels.
        '''),
        code("pipeline", '''
            train_ds, eval_ds, info = make_pipelines(
                "cifar10", config.batch_size, augment=config.augment, data_dir=DATA_DIR, seed=SEED,
                max_examples=config.max_train_examples)
            if EVAL_EXAMPLES:
                eval_ds = eval_ds.take(EVAL_EXAMPLES // config.batch_size)
            steps_per_epoch = config.steps_per_epoch or info.num_train // config.batch_size
            print(info)
            print("steps per epoch:", steps_per_epoch)
        '''),
        md("model-md", '''
            ## The model

            `keras_resnet.ResNet((32, 32, 3), 10)` is ResNet-20 with the CIFAR stem (3x3 conv, three
            stages of 16/32/64 filters, option A shortcuts). `preprocessing="cifar10"` puts the CIFAR-10
            mean/std normalisation inside the model. The recipe adds its L2 weight decay and
            `zero_init_last_bn`.
        '''),
        code("model", '''
            with strategy.scope():
                model = kr.ResNet((32, 32, 3), 10, preprocessing=info.normalization,
                                  weight_decay=config.weight_decay, **config.model_options)
                optimizer = make_optimizer(config, steps_per_epoch, total_steps=steps_per_epoch * config.epochs,
                                           global_batch=config.batch_size)
                model.compile(
                    optimizer=optimizer,
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                    metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
            model.summary()
        '''),
        md("fit-md", "## Training with `model.fit`"),
        code("fit", '''
            history = model.fit(train_ds, validation_data=eval_ds, epochs=config.epochs,
                                steps_per_epoch=steps_per_epoch, verbose=1,
                                callbacks=[kr.callbacks.LearningRateLogger()])
        '''),
        code("curves", '''
            h = history.history
            epochs = np.arange(1, len(h["loss"]) + 1)
            fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
            for ax, key in zip(axes, ("loss", "accuracy")):
                ax.plot(epochs, h[key], "o-", label="train")
                ax.plot(epochs, h["val_" + key], "o--", label="test")
                ax.set_title(key)
                ax.legend()
            axes[2].plot(epochs, h["learning_rate"], "o-")
            axes[2].set_title("learning rate (end of epoch)")
            for ax in axes:
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
            plt.show()
        '''),
        md("evaluate-md", '''
            ## Evaluation

            `model.evaluate` reports the loss and accuracy; `keras_resnet.evaluate_model` adds flip
            test-time augmentation (the average of the predictions on the image and its mirror).
        '''),
        code("evaluate", '''
            print(model.evaluate(eval_ds, return_dict=True, verbose=0))
            print(kr.evaluate_model(model, eval_ds, tta_flip=True))
        '''),
        code("predictions", '''
            images, labels = next(iter(eval_ds))
            images, labels = images[:24], labels[:24]
            predicted = model.predict(images, verbose=0).argmax(-1)
            true = labels.numpy().argmax(-1)

            fig, axes = plt.subplots(3, 8, figsize=(14, 6))
            for ax, image, p, t in zip(axes.flat, images.numpy(), predicted, true):
                ax.imshow(image.astype("uint8"))
                ax.set_title(f"{class_names[p]}\\n(true: {class_names[t]})", fontsize=9,
                             color="tab:green" if p == t else "tab:red")
                ax.axis("off")
            fig.suptitle("test images: predicted (true) label")
            plt.show()
        '''),
        md("train-md", '''
            ## The same run in one call

            `keras_resnet.train` does all of the above (strategy, precision, pipelines, model, optimizer,
            `fit`, evaluation) and writes a run directory: `config.json`, `environment.json`,
            `history.csv`, `model.keras`, `best.keras`, `metrics.json`, TensorBoard logs and the plots.
            Calling it again with the same `output` resumes an interrupted run. The CLI is the same call:
            `keras-resnet train --recipe cifar10_fast_resnet20 --output runs/cifar10_fast_resnet20`.
        '''),
        code("train", '''
            run_config = kr.get_recipe(
                RECIPE, epochs=EPOCHS, batch_size=BATCH_SIZE, steps_per_epoch=STEPS_PER_EPOCH,
                max_train_examples=MAX_TRAIN_EXAMPLES, data_dir=DATA_DIR, seed=SEED,
                output=os.path.join(WORK_DIR, "runs", RECIPE))
            result = kr.train(run_config, eval_data=eval_ds if EVAL_EXAMPLES else None)
            print(json.dumps(result.metrics, indent=2))
            print(sorted(os.listdir(result.run_dir)))
        '''),
        code("train-plots", '''
            for plot in ("loss.png", "accuracy.png", "learning_rate.png"):
                display(Image(filename=os.path.join(result.run_dir, plot), width=420))
        '''),
    ])


# =============================================================================== 02 fine-tuning
def finetuning():
    name = "02_finetuning.ipynb"
    return name, notebook(name, [
        title("title", name, "Fine-tuning a pretrained ResNet on a small dataset", """
            Start from ImageNet weights, put a new classifier on top for a small dataset (`tf_flowers`,
            five kinds of flowers, or a folder of your own photos), and fine-tune it the way that works
            on small data:

            * **a new head** (`finetune.replace_head`): the backbone keeps its weights;
            * **gradual unfreezing** (`finetune.GradualUnfreezing`): the head trains alone first, then one
              stage more per epoch from the top (`conv5`, `conv4`, ...), with every BatchNorm kept in
              inference mode so the pretrained statistics are not wrecked by small batches;
            * **discriminative learning rates** (`finetune.DiscriminativeLearningRates`): each stage
              further from the head learns at half the rate of the one above;
            * **before and after**: accuracy with the untrained head, then after fine-tuning.

            **Runtime.** A GPU runtime (*Runtime > Change runtime type > T4 GPU*). The ImageNet weights
            (ResNet-50 v2 from `keras.applications`, ~100 MB) and `tf_flowers` (~220 MB) are downloaded
            once. In smoke mode (CI, offline) nothing is downloaded: a ResNet-20 pretrained here for a
            few seconds on five CIFAR-10 classes stands in for the ImageNet backbone, and a folder of
            images of the other five classes stands in for your photos.
        """),
        INSTALL,
        parameters("""
            # The pretrained backbone: keras.applications ImageNet weights (ResNet50V2, ResNet101V2 or
            # ResNet152V2), or in smoke mode a ResNet-20 pretrained below.
            BACKBONE = "resnet20" if SMOKE else "ResNet50V2"
            IMAGE_SIZE = 32 if SMOKE else 224
            # The new task: a tfds name, or a folder of your own images with one sub-folder per class
            # (e.g. "/content/drive/MyDrive/my_photos"). Smoke mode writes such a folder below.
            DATASET = os.path.join(WORK_DIR, "my_photos") if SMOKE else "tf_flowers"
            VALIDATION_SPLIT = 0.2                        # held out for the before/after accuracy
            BATCH_SIZE = 32
            EPOCHS_PER_STAGE = 1                          # unfreeze one more stage every N epochs
            EXTRA_EPOCHS = 0 if SMOKE else 2              # epochs with everything trainable at the end
            STEPS_PER_EPOCH = 3 if SMOKE else None        # None: one pass over the training images
        """),
        setup("from keras_resnet import finetune\nfrom keras_resnet.data import make_pipelines\n"
              "from keras_resnet.training import make_optimizer\n"),
        code("device", """
            strategy, strategy_name = distribute.get_strategy("auto")
            precision = distribute.resolve_precision("auto", strategy_name)
            keras.mixed_precision.set_global_policy(precision)
            print(f"strategy: {strategy_name} ({strategy.num_replicas_in_sync} replica(s)), precision: {precision}")
        """),
        md("standin-md", """
            ### Smoke mode only: a stand-in backbone and a folder of images

            CI runs offline, so this cell (which does nothing in a real run) pretrains a ResNet-20 for a
            few seconds on five CIFAR-10 classes (airplane, automobile, bird, cat, deer) and writes 300
            test images of the other five (dog, frog, horse, ship, truck) as PNG files into
            `DATASET/<class>/`, the same layout as a folder of your own photos.
        """),
        code("standin", """
            if SMOKE:
                from PIL import Image

                cifar_names = tfds.builder("cifar10", data_dir=DATA_DIR).info.features["label"].names
                pool = tfds.load("cifar10", split="train[:1500]", as_supervised=True, data_dir=DATA_DIR)
                x, y = (np.stack(a) for a in zip(*tfds.as_numpy(pool)))
                old = y < 5
                with strategy.scope():
                    pretrained = kr.ResNet((32, 32, 3), 5, preprocessing="cifar10", name="resnet20")
                    pretrained.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy",
                                       metrics=["accuracy"])
                pretrained.fit(x[old], y[old], batch_size=32, epochs=1, verbose=2)
                pretrained_path = os.path.join(WORK_DIR, "pretrained_resnet20.keras")
                pretrained.save(pretrained_path)

                test = tfds.load("cifar10", split="test[:600]", as_supervised=True, data_dir=DATA_DIR)
                for i, (image, label) in enumerate(tfds.as_numpy(test)):
                    if label >= 5:
                        folder = os.path.join(DATASET, cifar_names[label])
                        os.makedirs(folder, exist_ok=True)
                        Image.fromarray(image).save(os.path.join(folder, f"{i:04d}.png"))
                print({c: len(os.listdir(os.path.join(DATASET, c))) for c in sorted(os.listdir(DATASET))})
        """),
        md("backbone-md", """
            ## The pretrained backbone

            `kr.from_keras_applications` converts a `keras.applications` ResNet, with its ImageNet
            weights, into keras_resnet's layout (the layer names match, so weights are copied one to one)
            and adds the in-model normalisation. ResNet v2 was trained on pixels scaled to [-1, 1]
            (`keras.applications.resnet_v2.preprocess_input`), which is mean 127.5 and std 127.5 on a
            0-255 scale: the pipelines and the exported model then feed raw 0-255 pixels.
        """),
        code("backbone", """
            with strategy.scope():
                if SMOKE:
                    base = keras.saving.load_model(pretrained_path)
                else:
                    imagenet = getattr(keras.applications, BACKBONE)(weights="imagenet")  # downloads once
                    base = kr.from_keras_applications(imagenet, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                                      preprocessing={"mean": (127.5,) * 3, "std": (127.5,) * 3})
            print(f"{base.name}: {base.count_params():,} parameters, {base.output_shape[-1]} classes")
            print("stages:", finetune.stage_names(base))
        """),
        md("data-md", """
            ## The new task

            `make_pipelines` reads a tfds dataset or a folder of images (one sub-folder per class; bad
            files are skipped with a warning), holds out `VALIDATION_SPLIT` for evaluation, and
            resizes/augments to `IMAGE_SIZE` (random-resized crops for photos, pad-and-crop at CIFAR
            sizes).
        """),
        code("data", """
            if not os.path.isdir(DATASET):
                tfds.builder(DATASET, data_dir=DATA_DIR).download_and_prepare()  # once; never in smoke mode
            train_ds, eval_ds, info = make_pipelines(
                DATASET, BATCH_SIZE, image_size=(IMAGE_SIZE, IMAGE_SIZE), data_dir=DATA_DIR,
                validation_split=VALIDATION_SPLIT, seed=SEED)
            steps_per_epoch = STEPS_PER_EPOCH or max(1, info.num_train // BATCH_SIZE)
            print(f"{info.num_train} training / {info.num_eval} held-out images, classes: {info.class_names}")

            images, labels = next(iter(train_ds))
            fig, axes = plt.subplots(2, 8, figsize=(14, 4))
            for ax, image, label in zip(axes.flat, images.numpy(), labels.numpy().argmax(-1)):
                ax.imshow(image.astype("uint8"))
                ax.set_title(info.class_names[label], fontsize=9)
                ax.axis("off")
            fig.suptitle("augmented training images")
            plt.show()
        """),
        md("head-md", """
            ## A new head, and the accuracy before fine-tuning

            `replace_head` keeps every backbone layer (shared weights) and puts a fresh global pooling,
            dropout and `Dense(num_classes)` on top. Before any training the new head is random, so the
            accuracy is about chance (1 / number of classes).
        """),
        code("head", """
            with strategy.scope():
                model = finetune.replace_head(base, info.num_classes, dropout_rate=0.2)
            before = kr.evaluate_model(model, eval_ds)["test_accuracy"]
            print(f"accuracy before fine-tuning: {before:.1%} (chance: {1 / info.num_classes:.1%})")
        """),
        md("schedule-md", """
            ## Gradual unfreezing with discriminative learning rates

            `gradual_schedule` maps each epoch to the stages that train: the head alone first, then one
            more stage from the top every `EPOCHS_PER_STAGE` epochs. `GradualUnfreezing` applies it at
            the start of each epoch (and rebuilds the compiled train step, which a plain
            `layer.trainable = ...` inside `fit` would not), with `freeze_batchnorm=True`.
            `DiscriminativeLearningRates("decay:0.5")` scales the learning rate of each stage by 1, 0.5,
            0.25, ... from the head down. The optimiser settings come from the `finetune` recipe: SGD
            with Nesterov momentum, decoupled weight decay, warmup + cosine, label smoothing.

            Compile while the whole model is trainable: the optimiser is built over every weight, and the
            callback freezes what should not train yet.
        """),
        code("schedule", """
            schedule = finetune.gradual_schedule(model, epochs_per_stage=EPOCHS_PER_STAGE)
            epochs = max(schedule) + EPOCHS_PER_STAGE + EXTRA_EPOCHS
            recipe = kr.get_recipe("finetune", epochs=epochs, batch_size=BATCH_SIZE)
            multipliers = finetune.resolve_multipliers(model, recipe.stage_lr_multipliers)
            for epoch, stages in schedule.items():
                print(f"from epoch {epoch + 1}: train {stages}")
            print("learning-rate multipliers:", {s: round(m, 4) for s, m in multipliers.items()})

            with strategy.scope():
                finetune.set_trainable_stages(model, "all")
                model.compile(
                    optimizer=make_optimizer(recipe, steps_per_epoch, steps_per_epoch * epochs, BATCH_SIZE),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing),
                    metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
            unfreezing = finetune.GradualUnfreezing(schedule, freeze_batchnorm=recipe.freeze_batchnorm)
            learning_rates = finetune.DiscriminativeLearningRates(recipe.stage_lr_multipliers)
        """),
        code("fit", """
            history = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                callbacks=[unfreezing, learning_rates], verbose=1)
        """),
        md("after-md", "## Before and after"),
        code("after", """
            after = kr.evaluate_model(model, eval_ds)["test_accuracy"]
            print(f"accuracy before fine-tuning: {before:.1%}   after: {after:.1%}")
            for epoch, accuracy in enumerate(history.history["val_accuracy"]):
                print(f"epoch {epoch + 1}: val accuracy {accuracy:6.1%}   trainable {unfreezing.stages_for_epoch(epoch)}")

            fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 2]})
            left.bar(["new head\\n(before)", "fine-tuned\\n(after)"], [before, after], color=["tab:gray", "tab:blue"])
            left.axhline(1 / info.num_classes, color="k", ls=":", label="chance")
            left.set_ylabel("held-out accuracy")
            left.legend()
            epochs_axis = np.arange(1, epochs + 1)
            right.plot(epochs_axis, history.history["accuracy"], "o-", label="train")
            right.plot(epochs_axis, history.history["val_accuracy"], "o--", label="held out")
            for epoch, stages in schedule.items():
                right.axvline(epoch + 0.5, color="k", alpha=0.15)
                right.text(epoch + 0.55, 0.02, "+" + stages[-1], fontsize=8, transform=right.get_xaxis_transform())
            right.set_xlabel("epoch")
            right.set_title("accuracy while stages unfreeze")
            right.legend()
            plt.show()

            model.save(os.path.join(WORK_DIR, "finetuned.keras"))
        """),
        md("next-md", """
            ## In one command

            The `finetune` recipe does the same from the command line (new head, gradual unfreezing,
            discriminative learning rates, frozen BatchNorm) and writes a run directory:

            ```bash
            keras-resnet train --recipe finetune --weights runs/pretrained/model.keras --dataset my_photos/ --output runs/photos
            ```

            `03_export_and_serving.ipynb` exports such a model for TF Serving and TFLite.
        """),
    ])


# =============================================================================== 03 export and serving
def export_and_serving():
    name = "03_export_and_serving.ipynb"
    return name, notebook(name, [
        title("title", name, "Export for TF Serving and TFLite", """
            Turn a trained model into artefacts that run without keras_resnet:

            1. train a ResNet-20 on CIFAR-10 with `keras_resnet.train` (or point `RUN` at an existing run),
            2. export a **SavedModel** whose `serving_default` signature takes encoded images (JPEG, PNG,
               ... as bytes) and returns class probabilities and the top-k labels: decoding, resizing and
               normalisation are inside, so clients send files, not tensors,
            3. inspect it with `saved_model_cli`, and call the signature from Python,
            4. the TF Serving command line and a REST request,
            5. export **TFLite** and run it with `tf.lite.Interpreter`.
        """),
        INSTALL,
        parameters("""
            RUN = None                                    # an existing run directory to export instead of training
            EPOCHS = 1 if SMOKE else 10
            BATCH_SIZE = 32 if SMOKE else 256             # the recipe's batch of 256
            STEPS_PER_EPOCH = 4 if SMOKE else None        # None: one pass over the training set
            MAX_TRAIN_EXAMPLES = 256 if SMOKE else None   # None: all 50,000 training images
            EVAL_EXAMPLES = 256 if SMOKE else None        # None: all 10,000 test images
            MODEL_NAME = "cifar10_resnet20"               # the name TF Serving serves it under
            TOP_K = 3
        """),
        setup("from keras_resnet.data import make_pipelines\nfrom keras_resnet.export import export_tflite\n"),
        md("train-md", """
            ## A model to export

            One call to `keras_resnet.train` with the `cifar10_fast_resnet20` recipe; it writes a run directory
            with `model.keras` and `config.json` (which records the class names and image size).
        """),
        code("train", """
            if RUN is None:
                tfds.builder("cifar10", data_dir=DATA_DIR).download_and_prepare()  # once (no-op when prepared)
                # precision="float32": the TFLite converter rejects mixed-precision (float16/bfloat16) layers,
                # so this model is trained in float32 (on the GPU all the same).
                config = kr.get_recipe("cifar10_fast_resnet20", epochs=EPOCHS, batch_size=BATCH_SIZE, precision="float32",
                                       steps_per_epoch=STEPS_PER_EPOCH, max_train_examples=MAX_TRAIN_EXAMPLES,
                                       data_dir=DATA_DIR, seed=SEED, output=os.path.join(WORK_DIR, "runs", "export_demo"))
                eval_data = None
                if EVAL_EXAMPLES:
                    eval_data = make_pipelines("cifar10", config.batch_size, data_dir=DATA_DIR)[1].take(
                        EVAL_EXAMPLES // config.batch_size)
                RUN = kr.train(config, eval_data=eval_data).run_dir

            model = keras.saving.load_model(os.path.join(RUN, "model.keras"))
            with open(os.path.join(RUN, "config.json")) as f:
                data_info = json.load(f)["data"]
            class_names = data_info["class_names"]
            image_size = tuple(data_info["image_size"])
            print(model.name, "input", model.input_shape, "classes", class_names)
        """),
        md("export-md", """
            ## SavedModel for TF Serving

            `keras_resnet.export` writes `SERVING_DIR/<version>/` (1, then 2, ...), the layout TF Serving
            watches: a new version in the same folder is picked up and served without a restart. Besides
            `serving_default` (image bytes in), the SavedModel has `predict_images` and
            `predict_images_uint8` for clients that send pixel arrays of any size. The eval resize/crop
            is the same function the training pipelines use, so served and evaluated predictions agree.
        """),
        code("export", """
            SERVING_DIR = os.path.join(WORK_DIR, "serving", MODEL_NAME)
            paths = kr.export(model, SERVING_DIR, class_names=class_names, image_size=image_size,
                              crop_fraction=data_info.get("crop_fraction"), top_k=TOP_K)
            version_dir = paths["saved_model"]
            print(version_dir)
            for root, dirs, files in os.walk(SERVING_DIR):
                depth = root[len(SERVING_DIR):].count(os.sep)
                print("  " * depth + os.path.basename(root) + "/", *files)
        """),
        md("cli-md", """
            `saved_model_cli` (installed with TensorFlow) shows the signature a client sees: its inputs and
            outputs with dtypes and shapes. In a shell:
            `saved_model_cli show --dir SERVING_DIR/1 --tag_set serve --signature_def serving_default`.
        """),
        code("cli", """
            import subprocess

            shown = subprocess.run(["saved_model_cli", "show", "--dir", str(version_dir), "--tag_set", "serve",
                                    "--signature_def", "serving_default"],
                                   capture_output=True, text=True, check=True)
            print(shown.stdout)
        """),
        md("call-md", """
            ## Calling `serving_default` on image bytes

            Load the SavedModel with plain TensorFlow (no keras_resnet needed) and send encoded images.
            PNG is lossless, so the served probabilities match the Keras model on the same pixels.
        """),
        code("call", """
            loaded = tf.saved_model.load(str(version_dir))
            serve = loaded.signatures["serving_default"]

            test = tfds.load("cifar10", split="test[:8]", as_supervised=True, data_dir=DATA_DIR)
            pixels, true = (np.stack(a) for a in zip(*tfds.as_numpy(test)))
            image_bytes = [tf.io.encode_png(p).numpy() for p in pixels]
            served = serve(image_bytes=tf.constant(image_bytes))
            print({k: (v.dtype.name, tuple(v.shape)) for k, v in served.items()})

            keras_probs = model.predict(pixels.astype("float32"), verbose=0)
            print("max |served - keras| probability:", float(np.abs(served["probabilities"].numpy() - keras_probs).max()))

            fig, axes = plt.subplots(1, 8, figsize=(15, 2.6))
            for i, ax in enumerate(axes):
                label = served["labels"][i, 0].numpy().decode()
                ax.imshow(pixels[i])
                ax.set_title(f"{label} {served['scores'][i, 0].numpy():.0%}\\n(true: {class_names[true[i]]})",
                             fontsize=8, color="tab:green" if label == class_names[true[i]] else "tab:red")
                ax.axis("off")
            display(fig)
            plt.close(fig)
        """),
        md("serving-md", """
            ## TF Serving

            The exported folder is all TF Serving needs (no Python). With Docker:

            ```bash
            docker run --rm -p 8501:8501 \\
              --mount type=bind,source=/path/to/serving/cifar10_resnet20,target=/models/cifar10_resnet20 \\
              -e MODEL_NAME=cifar10_resnet20 tensorflow/serving
            ```

            REST clients send the image bytes base64-encoded under `"b64"` (TF Serving's convention for
            binary strings); the next cell writes such a request for the images above. It is not sent
            anywhere here; with the server running:

            ```bash
            curl -s -X POST http://localhost:8501/v1/models/cifar10_resnet20:predict -d @request.json
            ```

            answers `{"predictions": [{"probabilities": [...], "classes": [...], "scores": [...],
            "labels": [...]}, ...]}`, one entry per image. gRPC clients (port 8500) send the same
            `image_bytes` tensor in a `PredictRequest`.
        """),
        code("request", """
            import base64

            request = {"signature_name": "serving_default",
                       "instances": [{"image_bytes": {"b64": base64.b64encode(b).decode()}} for b in image_bytes]}
            request_path = os.path.join(WORK_DIR, "request.json")
            with open(request_path, "w") as f:
                json.dump(request, f)
            print(f"{request_path}: {os.path.getsize(request_path):,} bytes, {len(request['instances'])} images")
            print(json.dumps(request)[:160] + " ...")
            print(f"curl -s -X POST http://localhost:8501/v1/models/{MODEL_NAME}:predict -d @{request_path}")
        """),
        md("tflite-md", """
            ## TFLite

            For phones and edge devices: a `.tflite` file with the normalisation inside, taking a float32
            batch of 0-255 pixels at the model's image size (decoding and resizing are the app's job on
            device). `quantize="dynamic"` stores the weights as int8, about four times smaller.
            `tf.lite.Interpreter` runs both here, on the same eight test images (TensorFlow warns that the
            interpreter is moving to LiteRT: `ai_edge_litert.interpreter.Interpreter` has the same API).
        """),
        code("tflite", """
            tflite_paths = {
                quantize: export_tflite(model, os.path.join(WORK_DIR, "tflite", f"{MODEL_NAME}_{quantize or 'float32'}.tflite"),
                                        image_size=image_size, quantize=quantize)
                for quantize in (None, "dynamic")}

            for quantize, path in tflite_paths.items():
                interpreter = tf.lite.Interpreter(model_path=str(path))
                runner = interpreter.get_signature_runner()
                tflite_probs = runner(images=pixels.astype("float32"))["probabilities"]
                print(f"{os.path.basename(path)}: {os.path.getsize(path) / 1e6:.2f} MB, "
                      f"max |tflite - keras| probability {np.abs(tflite_probs - keras_probs).max():.2e}, "
                      f"same top-1 as Keras: {(tflite_probs.argmax(-1) == keras_probs.argmax(-1)).mean():.0%}")
            detail = runner.get_input_details()["images"]
            print("input 'images':", detail["dtype"].__name__, detail["shape_signature"].tolist(), "(-1: any batch size)")
        """),
        md("cli-export-md", """
            The CLI exports a run directory the same way:
            `keras-resnet export runs/cifar10_fast --output exported/ --format saved_model` (or `tflite`).
        """),
    ])


# =============================================================================== 04 scaling
def scaling():
    name = "04_scaling.ipynb"
    return name, notebook(name, [
        title("title", name, "Scaling out: GPUs and TPUs with tf.distribute", """
            The same training as the quickstart, on whatever is attached: `strategy="auto"` picks a TPU,
            several GPUs (`MirroredStrategy`) or the single device, and `precision="auto"` the matching
            mixed precision. This notebook shows which numbers change with the number of replicas and
            which do not, then runs the training under the chosen strategy.

            **Runtime.** Any runtime works. A single GPU (Colab's T4) is one replica; several GPUs or a
            TPU give several, and the global batch and learning rate grow with them. In smoke mode (CI)
            it runs a few steps on the CPU with the default strategy.
        """),
        INSTALL,
        parameters("""
            RECIPE = "cifar10_fast"
            PER_REPLICA_BATCH = 32 if SMOKE else 128      # the global batch is this x replicas
            EPOCHS = 2 if SMOKE else 22                   # the recipe's 22 epochs
            STEPS_PER_EPOCH = 4 if SMOKE else None        # None: one pass over the training set
            MAX_TRAIN_EXAMPLES = 256 if SMOKE else None   # None: all 50,000 training images
            EVAL_EXAMPLES = 256 if SMOKE else None        # None: all 10,000 test images
        """),
        setup("from keras_resnet.data import make_pipelines\n"),
        md("strategy-md", """
            ## Which strategy?

            `distribute.get_strategy("auto")` (what `keras_resnet.train` and the CLI's `--strategy auto`
            use) chooses, in order: a TPU when one is attached (`TPUStrategy`), several workers listed
            in `TF_CONFIG` (`MultiWorkerMirroredStrategy`), more than one GPU (`MirroredStrategy`), and
            otherwise the default strategy (one device). Each replica holds a full copy of the model
            and processes its share of every batch; gradients are summed across replicas (all-reduce)
            before every update, so all copies stay identical.
        """),
        code("strategy", """
            strategy, strategy_name = distribute.get_strategy("auto")
            replicas = strategy.num_replicas_in_sync
            precision = distribute.resolve_precision("auto", strategy_name)
            print(f"strategy: {strategy_name} ({type(strategy).__name__}), replicas in sync: {replicas}")
            print(f"precision: {precision}")
            print("devices:", [d.name for d in tf.config.list_logical_devices()])
        """),
        md("changes-md", """
            ## What changes with more replicas, and what does not

            | | changes | stays the same |
            | --- | --- | --- |
            | batch | the **global batch** = per-replica batch x replicas (`batch_size` is the global one) | the per-replica batch, so memory per device |
            | learning rate | **linear scaling**: lr = base lr x global batch / `reference_batch_size` (Goyal et al. 2017), with the recipe's warmup | the schedule's shape (warmup, one-cycle / cosine) |
            | steps | steps per epoch = examples / global batch: fewer, larger steps | epochs, and the examples seen per epoch |
            | BatchNorm | statistics are per replica unless `sync_batchnorm=True` (cross-replica mean and variance: worth it when the per-replica batch is small, e.g. below 32) | the layers and checkpoint format |
            | input | each replica gets its slice of every global batch; with several workers, each reads its own shard of the data | the pipeline code |
            | precision | `auto` is `mixed_bfloat16` on TPU, `mixed_float16` on GPU | float32 output layer and normalisation |

            Unchanged: the model code, the recipe, the callbacks (backups, best checkpoint, history),
            and the saved model. A model trained on eight TPU cores loads and runs on a laptop CPU.
        """),
        code("arithmetic", """
            recipe = kr.get_recipe(RECIPE)
            print(f"{RECIPE}: base lr {recipe.learning_rate} at reference batch {recipe.reference_batch_size}")
            print(f"{'replicas':>8} {'per replica':>11} {'global batch':>12} {'learning rate':>13} {'steps/epoch':>11}")
            for n in sorted({1, 2, 8, replicas}):
                global_batch = PER_REPLICA_BATCH * n
                lr = recipe.learning_rate * global_batch / recipe.reference_batch_size
                marker = "  <- this runtime" if n == replicas else ""
                print(f"{n:>8} {PER_REPLICA_BATCH:>11} {global_batch:>12} {lr:>13.4f} {50000 // global_batch:>11}{marker}")
        """),
        md("train-md", """
            ## The training, under the chosen strategy

            Nothing in the call is specific to the hardware: `strategy="auto"` and `precision="auto"` are
            the recipe's defaults, and only the global batch is derived from the replica count.
            `sync_batchnorm` is switched on when there is more than one replica.
        """),
        code("train", """
            tfds.builder("cifar10", data_dir=DATA_DIR).download_and_prepare()  # once (no-op when prepared)
            config = kr.get_recipe(
                RECIPE, strategy="auto", precision="auto", batch_size=PER_REPLICA_BATCH * replicas,
                sync_batchnorm=replicas > 1, epochs=EPOCHS, steps_per_epoch=STEPS_PER_EPOCH,
                max_train_examples=MAX_TRAIN_EXAMPLES, data_dir=DATA_DIR, seed=SEED,
                output=os.path.join(WORK_DIR, "runs", f"{RECIPE}-{strategy_name}-x{replicas}"))
            eval_data = None
            if EVAL_EXAMPLES:
                eval_data = make_pipelines("cifar10", config.batch_size, data_dir=DATA_DIR)[1].take(
                    EVAL_EXAMPLES // config.batch_size)
            result = kr.train(config, eval_data=eval_data)
        """),
        code("report", """
            with open(os.path.join(result.run_dir, "environment.json")) as f:
                environment = json.load(f)
            print({k: environment[k] for k in ("strategy", "replicas", "precision", "gpus", "tensorflow")})
            print(json.dumps(result.metrics, indent=2))
            for plot in ("loss.png", "accuracy.png"):
                display(Image(filename=os.path.join(result.run_dir, plot), width=420))
        """),
        md("portable-md", """
            ## What does not change: the saved model

            `model.keras` holds ordinary weights, whatever strategy trained it: loaded outside any
            strategy (on a laptop, or for export) it gives the same accuracy.
        """),
        code("portable", """
            reloaded = keras.saving.load_model(os.path.join(result.run_dir, "model.keras"))
            check = eval_data if eval_data is not None else make_pipelines("cifar10", 256, data_dir=DATA_DIR)[1]
            print(f"trained under {strategy_name} x{replicas}:  test accuracy {result.metrics['test_accuracy']:.4f}")
            print(f"reloaded, no strategy: test accuracy {kr.evaluate_model(reloaded, check)['test_accuracy']:.4f}")
        """),
        md("beyond-md", """
            ## Beyond one machine

            **Several machines.** One command per worker, the same everywhere except the task index in
            `TF_CONFIG`; worker 0 is the chief and the only one that writes the final model, plots and
            exports. Restarting all of them with the same commands resumes the run from its last
            backup.

            ```bash
            # on host1
            TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \\
              keras-resnet train --recipe cifar10_fast --strategy multi_worker --output /shared/runs/mw
            # on host2
            TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 1}}' \\
              keras-resnet train --recipe cifar10_fast --strategy multi_worker --output /shared/runs/mw
            ```

            **TPUs.** `--strategy tpu` (or `auto`) with `precision` `auto` means `mixed_bfloat16`. Keep the
            per-replica batch a multiple of 8 and at least 64-128 per core to keep the matrix units busy;
            the input pipeline is usually the bottleneck, so prefer a cached tfds dataset.
        """),
    ])


BUILDERS = [quickstart, finetuning, export_and_serving, scaling]


def build_all():
    """`{file name: notebook}` for every notebook."""
    return dict(builder() for builder in BUILDERS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a committed notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, nb in build_all().items():
        path = HERE / name
        text = nbformat.writes(nb) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print("stale (run python notebooks/build_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
