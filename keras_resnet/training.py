"""`train(config)`: one run of `model.fit` that writes everything to one directory.

RUN_DIR/
    config.json        the TrainConfig the run was started with (+ data info)
    environment.json   versions, hardware, strategy, precision actually used
    backup/            BackupAndRestore state (resumption after a kill)
    best.keras         best validation accuracy so far (atomic writes)
    model.keras        the final model
    history.csv        one row per epoch, exactly once even across resumes
    logs/              TensorBoard
    metrics.json       final test metrics (with and without flip TTA), wall time, and
                       the CPU share a VM's hypervisor took meanwhile (steal)
    loss.png, accuracy.png, learning_rate.png

Running `train` again with the same `output` resumes an unfinished run; a
finished run (metrics.json present) is not trained again.
"""

import dataclasses
import json
import logging
import math
import os
import platform
import re
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from keras_resnet import callbacks as kr_callbacks
from keras_resnet.atomic import atomic_save, write_json_atomic
from keras_resnet import compat, distribute, optimizers
from keras_resnet.data.source import UNREADABLE_MESSAGE
from keras_resnet.hostinfo import StealMeter, steal_warning
from keras_resnet.lookahead import Lookahead
from keras_resnet.recipes import TrainConfig, get_recipe
from keras_resnet.registry import create_model
from keras_resnet.schedules import make_schedule

log = logging.getLogger("keras_resnet")


class TrainingInterrupted(RuntimeError):
    """Raised when a run stops early (NaN loss); the message says what to do."""


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: dict
    metrics: dict
    run_dir: str


def _as_config(config):
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        config = dict(config)
        recipe = config.pop("recipe", None)
        return get_recipe(recipe, **config) if recipe else TrainConfig.from_dict(config)
    if isinstance(config, str):
        return get_recipe(config)
    raise ValueError(f"`config` must be a TrainConfig, a dict or a recipe name. Received: config={config!r}")


def _default_run_dir(config):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{config.recipe}-{config.model}-{stamp}")


def _environment(strategy_name, strategy, precision):
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0], "tensorflow": tf.__version__, "keras": keras.__version__,
        "numpy": np.__version__, "cpu": cpu, "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_logical_devices("GPU")],
        "strategy": strategy_name, "replicas": strategy.num_replicas_in_sync,
        "precision": precision, "bf16_cpu": distribute.cpu_supports_bf16(),
        "onednn": compat.onednn_enabled(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def make_optimizer(config, steps_per_epoch, total_steps, global_batch):
    """SGD/AdamW with the recipe's schedule, linear lr scaling, EMA and clipping."""
    lr = config.learning_rate * global_batch / config.reference_batch_size
    schedule = make_schedule(
        config.schedule, lr, total_steps,
        warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
        boundaries=config.lr_boundaries, decay_factor=config.lr_decay_factor,
        final_lr_fraction=config.final_lr_fraction, initial_lr_fraction=config.initial_lr_fraction)
    common = dict(learning_rate=schedule, clipnorm=config.clipnorm,
                  use_ema=config.ema_decay is not None,
                  ema_momentum=config.ema_decay or 0.99)
    decoupled = config.weight_decay if config.weight_decay_mode == "decoupled" else None
    if config.optimizer == "sgd":
        # keras_resnet's SGD and AdamW: Keras's update rules, one fused kernel per variable.
        return optimizers.SGD(momentum=config.momentum, nesterov=config.nesterov,
                              weight_decay=decoupled, **common)
    if config.optimizer == "adamw":
        return optimizers.AdamW(weight_decay=decoupled or 0.0, **common)
    raise ValueError(f"Unknown optimizer. Received: optimizer={config.optimizer!r}. Valid: 'sgd', 'adamw'")


def _validate(config):
    for field in ("epochs", "batch_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{field}` must be a positive int. Received: {field}={value!r}")
    if config.steps_per_epoch is not None and (not isinstance(config.steps_per_epoch, int)
                                               or config.steps_per_epoch < 1):
        raise ValueError(f"`steps_per_epoch` must be a positive int. Received: steps_per_epoch={config.steps_per_epoch!r}")
    if config.weight_decay_mode not in ("l2", "decoupled"):
        raise ValueError(f"Unknown weight_decay_mode. Received: weight_decay_mode={config.weight_decay_mode!r}. "
                         "Valid: 'l2', 'decoupled'")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"`label_smoothing` must be in [0, 1). Received: label_smoothing={config.label_smoothing}")
    if isinstance(config.bn_bias_lr_multiplier, bool) or not isinstance(
            config.bn_bias_lr_multiplier, (int, float)) or config.bn_bias_lr_multiplier < 0:
        raise ValueError("`bn_bias_lr_multiplier` must be a number >= 0. "
                         f"Received: bn_bias_lr_multiplier={config.bn_bias_lr_multiplier!r}")
    for field, ok, expected in (
            ("tta_translate", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an int >= 0"),
            ("whitening_examples", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
             "a positive int"),
            ("initial_lr_fraction", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
             and 0 <= v <= 1, "a number in [0, 1]")):
        if not ok(getattr(config, field)):
            raise ValueError(f"`{field}` must be {expected}. Received: {field}={getattr(config, field)!r}")
    if config.lookahead_every is not None and (isinstance(config.lookahead_every, bool) or not isinstance(
            config.lookahead_every, int) or config.lookahead_every < 1):
        raise ValueError("`lookahead_every` must be a positive int or None. "
                         f"Received: lookahead_every={config.lookahead_every!r}")
    if config.precision not in distribute.PRECISIONS:
        raise ValueError(f"Unknown precision. Received: precision={config.precision!r}. "
                         f"Valid: {distribute.PRECISIONS}")
    if config.strategy not in distribute.STRATEGIES:
        raise ValueError(f"Unknown strategy. Received: strategy={config.strategy!r}. Valid: {distribute.STRATEGIES}")


def evaluate_model(model, eval_ds, tta_flip=False, tta_translate=0):
    """Top-1 accuracy on `eval_ds`, with test-time augmentation when asked.

    Computed by `keras_resnet.deploy.fold_batchnorm(model)` (the same outputs
    to float rounding, and what an export serves).

    Args:
        model: A classifier with softmax (or logit) outputs.
        eval_ds: Batches of `(images, labels)`, one-hot or integer labels.
        tta_flip: Also report `test_accuracy_flip_tta`: the image and its
            mirror image, averaged.
        tta_translate: When > 0, also report `test_accuracy_multicrop_tta`:
            airbench's multi-crop TTA, half the weight on the flip pair of the
            image and half on the flip pairs of two copies shifted by this many
            pixels (reflect padding) up-left and down-right; 6 forward passes.
            Views are averaged as log-probabilities (logits up to a constant).

    Returns:
        A dict of accuracies and `test_examples`.
    """
    from keras_resnet.deploy import fold_batchnorm, is_foldable_model

    if isinstance(tta_translate, bool) or not isinstance(tta_translate, int) or tta_translate < 0:
        raise ValueError(f"`tta_translate` must be an int >= 0. Received: tta_translate={tta_translate!r}")
    inference = fold_batchnorm(model) if is_foldable_model(model) else model

    last = model.layers[-1]
    softmax = (isinstance(last, keras.layers.Softmax)
               or getattr(getattr(last, "activation", None), "__name__", None) == "softmax")

    def log_probs(images):  # eager: tracing a graph costs more than it saves on one pass
        p = np.asarray(inference(images, training=False), dtype=np.float32)
        return np.log(np.maximum(p, 1e-30)) if softmax else p

    def shifted(images, dy, dx):
        t = tta_translate
        padded = tf.pad(images, [[0, 0], [t, t], [t, t], [0, 0]], mode="REFLECT")
        h, w = images.shape[1], images.shape[2]
        return padded[:, t + dy:t + dy + h, t + dx:t + dx + w, :]

    correct = correct_flip = correct_multi = total = 0
    for images, labels in eval_ds:
        y = np.argmax(labels, -1) if labels.shape.rank == 2 else labels.numpy()
        plain = log_probs(images)
        correct += int(np.sum(np.argmax(plain, -1) == y))
        if tta_flip or tta_translate:
            pair = (plain + log_probs(tf.image.flip_left_right(images))) / 2
            correct_flip += int(np.sum(np.argmax(pair, -1) == y))
        if tta_translate:
            views = []
            for d in (-tta_translate, tta_translate):
                moved = shifted(images, d, d)
                views.append((log_probs(moved) + log_probs(tf.image.flip_left_right(moved))) / 2)
            multi = 0.5 * pair + 0.25 * (views[0] + views[1])
            correct_multi += int(np.sum(np.argmax(multi, -1) == y))
        total += len(y)
    metrics = {"test_accuracy": correct / max(total, 1), "test_examples": total}
    if tta_flip or tta_translate:
        metrics["test_accuracy_flip_tta"] = correct_flip / max(total, 1)
    if tta_translate:
        metrics["test_accuracy_multicrop_tta"] = correct_multi / max(total, 1)
    return metrics


def _plot_history(history_csv, run_dir):
    """Loss, accuracy and learning-rate curves as PNGs.

    Uses `matplotlib.figure.Figure` directly (no pyplot), so a notebook's
    plotting backend is left alone.
    """
    import csv

    from matplotlib.figure import Figure

    with open(history_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    epochs = [int(r["epoch"]) + 1 for r in rows]
    written = []
    for key, title in (("loss", "Loss"), ("accuracy", "Accuracy"), ("learning_rate", "Learning rate")):
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for prefix, style in (("", "-"), ("val_", "--")):
            col = prefix + key
            if col in rows[0] and rows[0][col] != "":
                ax.plot(epochs, [float(r[col]) for r in rows], style, label=col)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(run_dir, f"{key}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


@dataclasses.dataclass
class _Run:
    """Where a run writes: the chief owns `run_dir`; other workers write their
    throw-away files to a private folder so they never race the chief."""
    run_dir: str
    out_dir: str
    chief: bool

    @property
    def metrics_path(self):
        return os.path.join(self.out_dir, "metrics.json")

    def finished(self):
        return os.path.exists(self.metrics_path) and (
            not self.chief or os.path.exists(os.path.join(self.run_dir, "model.keras")))


# Fields a resumed run may change: how it prints, where its data or outputs live.
_RESUMABLE_CHANGES = ("verbose", "output", "data_dir", "offline")


def _check_resume(run, config):
    """Refuses to continue an unfinished run under a different config: its backup
    holds the old run's state, and config.json would be overwritten silently."""
    path = os.path.join(run.run_dir, "config.json")
    try:
        with open(path) as f:
            stored = (json.load(f) or {}).get("config") or {}
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read {path} to resume the run: {e}. Move the run directory away "
                         f"or pass another --output. Received: output={run.run_dir!r}") from None
    now = json.loads(json.dumps(config.to_dict(), default=str))
    changed = [k for k in sorted(set(stored) & set(now))
               if k not in _RESUMABLE_CHANGES and stored[k] != now[k]]
    if changed:
        listed = ", ".join(f"{k}: {stored[k]!r} -> {now[k]!r}" for k in changed[:5])
        raise ValueError(f"{run.run_dir} holds an unfinished run with a different config ({listed}). "
                         "Resume it with the same settings, or pass another --output. "
                         f"Received: output={run.run_dir!r}")


def _open_run(config):
    run_dir = config.output or _default_run_dir(config)
    config.output = run_dir
    chief = distribute.is_chief()
    out_dir = run_dir if chief else os.path.join(run_dir, "workers", f"worker-{distribute.task_index()}")
    os.makedirs(out_dir, exist_ok=True)
    return _Run(run_dir, out_dir, chief)


def _finished_result(run):
    log.info("Run %s already finished; loading its results.", run.run_dir)
    model = keras.saving.load_model(os.path.join(run.run_dir, "model.keras"), safe_mode=True) if run.chief else None
    with open(run.metrics_path) as f:
        return TrainResult(model, {}, json.load(f), run.run_dir)


def _start_runtime(config):
    """Strategy, seed and precision: `(strategy, strategy_name, precision)`.

    The strategy comes first: multi-worker collectives must be set up before any op runs.
    """
    strategy, strategy_name = distribute.get_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    precision = distribute.resolve_precision(config.precision, strategy_name)
    keras.mixed_precision.set_global_policy(precision)
    hint = distribute.onednn_hint(strategy_name)
    if hint:
        log.warning(hint)
    return strategy, strategy_name, precision


def _resume_epoch(run):
    """The epoch an unfinished run resumes at (what its backup recorded), else 0."""
    path = os.path.join(run.run_dir, "backup", "training_metadata.json")
    try:
        with open(path) as f:
            return max(0, int(json.load(f).get("epoch", 0)))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _make_data(config, train_data, eval_data, resume_epoch=0):
    """`(train_ds, eval_ds, info)`: the given pipelines, or `config.dataset`'s.

    Under a strategy Keras distributes the global batches; with several workers
    tf.data's DATA auto-shard policy gives each worker its shard.
    """
    if train_data is not None:
        train_ds, info = train_data
        return train_ds, eval_data, info
    from keras_resnet import data as kr_data

    image_size = (config.image_size, config.image_size) if config.image_size else None
    train_ds, default_eval, info = kr_data.make_pipelines(
        config.dataset, config.batch_size, image_size=image_size, augment=config.augment,
        data_dir=config.data_dir, train_split=config.train_split, eval_split=config.eval_split,
        seed=config.seed, one_hot=True, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, random_erasing=config.random_erasing,
        max_examples=config.max_train_examples, offline=config.offline,
        resume_epoch=resume_epoch, steps_per_epoch=config.steps_per_epoch, flip=config.flip,
        crop_padding=config.crop_padding, crop_pad_mode=config.crop_pad_mode)
    return train_ds, (eval_data if eval_data is not None else default_eval), info


def _schedule_length(config, info):
    """`(steps_per_epoch, epochs)`; `total_steps` rounds up to whole epochs."""
    steps_per_epoch = config.steps_per_epoch or max(1, info.num_train // config.batch_size)
    epochs = config.epochs
    if config.total_steps:
        epochs = max(1, math.ceil(config.total_steps / steps_per_epoch))
    return steps_per_epoch, epochs


def _build_compiled_model(config, info, strategy, steps_per_epoch, total_steps):
    """The registry model, its backbone weights, optimizer and loss, under the strategy."""
    # Re-seed here: building the pipelines may draw random numbers, and the
    # initial weights must not depend on how (or how often) data was set up.
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        options = dict(config.model_options)
        if config.weight_decay_mode == "l2" and config.weight_decay:
            options.setdefault("weight_decay", config.weight_decay)
        if config.weights:
            from keras_resnet.weights import resolve_tag

            # Published weights bring the mean/std they were trained with (and
            # an unknown tag fails here, before any data is read).
            tagged = resolve_tag(config.model, config.weights)
            if tagged is not None:
                options.setdefault("preprocessing", tagged.preprocessing)
        options.setdefault("preprocessing", info.normalization)
        if config.sync_batchnorm:
            options["sync_batchnorm"] = True
        model = create_model(config.model, input_shape=tuple(info.image_size) + (3,),
                             num_classes=info.num_classes, **options)
        if config.weights:
            from keras_resnet.finetune import load_backbone

            load_backbone(model, config.weights)
        model.compile(
            optimizer=make_optimizer(config, steps_per_epoch, total_steps, config.batch_size),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=config.jit_compile)
        if config.bn_bias_lr_multiplier != 1.0:
            optimizers.scale_learning_rates(
                model.optimizer, model,
                optimizers.batchnorm_bias_multipliers(model, config.bn_bias_lr_multiplier),
                group="batchnorm_bias")
    return model


def _adapt_whitening(model, train_ds, examples):
    """Sets every `PatchWhitening` stem's filters from `examples` training images
    (as the layer sees them: after the model's preprocessing). A resumed run
    then restores the saved filters over these."""
    from keras_resnet.layers import PatchWhitening, walk_layers

    stems = [layer for layer in walk_layers(model) if isinstance(layer, PatchWhitening)]
    if not stems:
        return
    images, count = [], 0
    for batch in train_ds:
        images.append(np.asarray(batch[0], dtype=np.float32))
        count += len(images[-1])
        if count >= examples:
            break
    images = np.concatenate(images)[:examples]
    for stem in stems:
        features = keras.Model(model.inputs, stem.input)
        stem.adapt(features.predict(images, batch_size=500, verbose=0))


def _make_callbacks(config, run, extra_callbacks, steps_per_epoch, total_steps):
    """`(callbacks, backup, nan_guard)`: crash-safe backups, best model, logs."""
    backup = kr_callbacks.AtomicBackupAndRestore(
        os.path.join(run.out_dir, "backup"), save_freq=config.backup_every_steps or "epoch",
        restore_dir=os.path.join(run.run_dir, "backup"), steps_per_epoch=steps_per_epoch)
    nan_guard = kr_callbacks.NaNGuard()
    cbs = [nan_guard, kr_callbacks.LearningRateLogger(),
           kr_callbacks.ResumableCSVLogger(os.path.join(run.out_dir, "history.csv"),
                                           backup_dir=backup.restore_dir),
           backup,  # after the CSV logger: see ResumableCSVLogger
           kr_callbacks.BestCheckpoint(os.path.join(run.out_dir, "best.keras")),
           keras.callbacks.TensorBoard(os.path.join(run.out_dir, "logs"), write_graph=False)]
    if config.lookahead_every:
        cbs.append(Lookahead(total_steps, every=config.lookahead_every,
                             max_decay=config.lookahead_max_decay))
    if config.early_stopping_patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                 patience=config.early_stopping_patience))
    if config.weights and (config.unfreeze_schedule or config.stage_lr_multipliers):
        from keras_resnet.finetune import finetune_callbacks

        cbs = finetune_callbacks(config) + cbs
    return cbs + list(extra_callbacks), backup, nan_guard


def _fit(model, train_ds, eval_ds, *, epochs, steps_per_epoch, callbacks, backup, verbose, run_dir):
    """`model.fit`, saving a resumable state on Ctrl-C / SIGTERM; returns
    `(history, seconds, cpu_steal_fraction)`."""
    if verbose == "auto":
        verbose = 1 if sys.stdout.isatty() else 2
    previous = None
    if hasattr(signal, "SIGTERM") and _in_main_thread():
        def _terminate(signum, frame):
            raise KeyboardInterrupt("SIGTERM")
        previous = signal.signal(signal.SIGTERM, _terminate)
    start = time.time()
    steal = StealMeter()  # how much of the CPU a VM's hypervisor takes during fit
    try:
        fit = model.fit(train_ds, validation_data=eval_ds, epochs=epochs, shuffle=False,
                        steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=verbose)
    except tf.errors.InvalidArgumentError as e:
        found = re.search(r"assertion failed: \[([^\]]*%s[^\]]*)\]" % re.escape(UNREADABLE_MESSAGE), str(e))
        if not found:
            raise
        # Files gone mid-run (an unmounted share): the input pipeline's own stop.
        raise TrainingInterrupted(
            f"Training stopped: {found.group(1)}. The last saved state is intact in {backup.backup_dir}; "
            f"make the files readable again and rerun the same command (same --output {run_dir}) to "
            "resume.") from None
    except KeyboardInterrupt:
        if backup.model is not None:
            backup.save_now()
        print(f"\nInterrupted: training state saved to {backup.backup_dir}. "
              f"Run the same command again (same --output {run_dir}) to resume.", file=sys.stderr)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    seconds = time.time() - start
    steal_fraction = steal.fraction()
    warning = steal_warning(steal_fraction)
    if warning:
        log.warning(warning)
    return fit.history, seconds, steal_fraction


def _raise_if_diverged(nan_guard, backup, run):
    if nan_guard.triggered_at is not None:
        epoch, batch, loss = nan_guard.triggered_at
        raise TrainingInterrupted(
            f"Training stopped: the loss became {loss} at epoch {epoch + 1}, batch {batch}. "
            f"The last good state is intact in {backup.backup_dir} and "
            f"{os.path.join(run.out_dir, 'best.keras')}. Lower --learning-rate, add --clipnorm, or "
            "use --precision float32, then rerun the same command to resume.")


def train(config, *, train_data=None, eval_data=None, extra_callbacks=(), model_hook=None):
    """Trains a model end to end and returns a `TrainResult`.

    Args:
        config: A `TrainConfig`, a dict of its fields (with an optional
            `recipe` to start from), or a recipe name.
        train_data, eval_data: Optional ready `tf.data` pipelines (with an
            `info` from `keras_resnet.data`) instead of `config.dataset`; pass
            `(dataset, info)` for the training side.
        extra_callbacks: More Keras callbacks.
        model_hook: Optional `hook(model) -> str` run on the compiled model
            before `fit` (e.g. `keras_resnet.contrib.cpu.accelerate`); what it
            returns is logged and recorded in metrics.json as `model_hook`.

    Raises:
        TrainingInterrupted: on a NaN loss (the last good checkpoint is intact).
        KeyboardInterrupt: after saving a resumable backup on Ctrl-C / SIGTERM.
    """
    config = _as_config(config)
    _validate(config)
    run = _open_run(config)
    if run.finished():
        return _finished_result(run)
    _check_resume(run, config)
    strategy, strategy_name, precision = _start_runtime(config)
    train_ds, eval_data, info = _make_data(config, train_data, eval_data, _resume_epoch(run))
    steps_per_epoch, epochs = _schedule_length(config, info)
    if run.chief:
        write_json_atomic(os.path.join(run.run_dir, "config.json"), {
            "config": config.to_dict(), "data": info.to_dict(), "steps_per_epoch": steps_per_epoch,
            "epochs": epochs, "global_batch_size": config.batch_size})
        write_json_atomic(os.path.join(run.run_dir, "environment.json"),
                    _environment(strategy_name, strategy, precision))
    model = _build_compiled_model(config, info, strategy, steps_per_epoch, steps_per_epoch * epochs)
    if strategy_name == "multi_worker":
        _prebuild_for_multi_worker(model, strategy, train_ds)
    hook_status = model_hook(model) if model_hook is not None else None
    if hook_status:
        log.info("model_hook: %s", hook_status)
    if not config.weights:  # loaded weights keep the filters their later layers learned with
        _adapt_whitening(model, train_ds, config.whitening_examples)
    callbacks, backup, nan_guard = _make_callbacks(config, run, extra_callbacks, steps_per_epoch,
                                                   steps_per_epoch * epochs)
    history, seconds, steal_fraction = _fit(
        model, train_ds, eval_data, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
        backup=backup, verbose=config.verbose, run_dir=run.run_dir)
    _raise_if_diverged(nan_guard, backup, run)

    metrics = {"train_seconds_this_session": round(seconds, 1), "epochs": epochs,
               "steps_per_epoch": steps_per_epoch, "precision": precision,
               "strategy": strategy_name, "replicas": strategy.num_replicas_in_sync,
               "weights_sha256": weights_digest(model), "cpu_steal_fraction": steal_fraction}
    if model_hook is not None:
        metrics["model_hook"] = hook_status
    if eval_data is not None:
        metrics.update(evaluate_model(model, eval_data, tta_flip=config.tta_flip,
                                      tta_translate=config.tta_translate))
    if run.chief:  # the model, plots and history are the chief's alone
        atomic_save(model.save, os.path.join(run.run_dir, "model.keras"))
        _plot_history(os.path.join(run.run_dir, "history.csv"), run.run_dir)
    write_json_atomic(run.metrics_path, metrics)
    log.info("Finished %s: %s", run.run_dir, metrics)
    return TrainResult(model, history, metrics, run.run_dir)


def _prebuild_for_multi_worker(model, strategy, train_ds):
    """Works around Keras 3.15 under MultiWorkerMirroredStrategy.

    `fit` builds the model by reducing a distributed sample batch with
    `strategy.reduce(..., axis=None)`, which the collective strategy cannot
    convert ("Attempt to convert a value (PerReplica...)"). Build from a local
    batch instead, then skip that step for this model.
    """
    sample = next(iter(train_ds.take(1)))
    with strategy.scope():
        compat.build_from_local_batch(model, sample)


def weights_digest(model):
    """SHA-256 of every weight, in order: equal digests mean identical models."""
    import hashlib

    digest = hashlib.sha256()
    for w in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return digest.hexdigest()


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()
