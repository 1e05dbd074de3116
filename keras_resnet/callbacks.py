"""Callbacks for runs that survive crashes: atomic backups, best checkpoint, history.

Keras already has `BackupAndRestore`, `ModelCheckpoint`, `CSVLogger` and
`TerminateOnNaN`; these subclasses close the gaps a long run falls into:

- a kill during a write must not leave a half-written checkpoint,
- a NaN loss must not overwrite the last good backup,
- a resumed run must not log an epoch twice in `history.csv`.
"""

import csv
import json
import math
import os

import keras
import numpy as np

from keras_resnet import compat
from keras_resnet.atomic import atomic_save, write_text


def _finite(logs):
    return all(math.isfinite(float(v)) for v in (logs or {}).values()
               if isinstance(v, (int, float, np.floating, np.integer)))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose files are replaced atomically and never hold NaNs.

    Resumption granularity is Keras's: a run killed mid-epoch restarts that
    epoch with the weights and optimizer state of the last backup.
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=False, restore_dir=None,
                 steps_per_epoch=None):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        # With it, a restore from a mid-epoch backup rewinds the optimizer's step
        # count to the start of the epoch Keras replays, so the learning-rate
        # schedule ends exactly at its total step count instead of overshooting.
        self.steps_per_epoch = steps_per_epoch
        self._last_logs_finite = True
        # Multi-worker: every worker restores the chief's backup (so all resume
        # at the same step) but writes its own, never racing the chief's files.
        self.restore_dir = restore_dir or backup_dir

    def on_train_begin(self, logs=None):
        own = compat.backup_paths(self)
        chief_weights = os.path.join(self.restore_dir, "latest.weights.h5")
        compat.set_backup_paths(self, (chief_weights,
                                       os.path.join(self.restore_dir, "training_metadata.json"),
                                       chief_weights + ".bkp"))
        try:
            super().on_train_begin(logs)
        finally:
            compat.set_backup_paths(self, own)
        epoch = compat.initial_epoch(self.model)
        optimizer = getattr(self.model, "optimizer", None)
        if self.steps_per_epoch and epoch and optimizer is not None and optimizer.built:
            optimizer.iterations.assign(epoch * int(self.steps_per_epoch))

    def on_epoch_end(self, epoch, logs=None):
        self._last_logs_finite = _finite(logs)
        super().on_epoch_end(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._last_logs_finite = _finite(logs)
        super().on_train_batch_end(batch, logs)

    def _save_model(self):
        if not self._last_logs_finite:
            return  # keep the last good state rather than back up NaNs
        self.save_now()

    def save_now(self):
        """Writes the current state (also called on Ctrl-C / SIGTERM)."""
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_path, metadata_path, _ = compat.backup_paths(self)
        atomic_save(lambda p: self.model.save_weights(p, overwrite=True), weights_path)
        epoch, batch = compat.backup_position(self)
        meta = {"epoch": epoch, "batch": batch}
        atomic_save(lambda p: open(p, "w").write(json.dumps(meta)), metadata_path)

    @property
    def resumed_epoch(self):
        return compat.initial_epoch(self.model)


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the full model (`.keras`) when `monitor` improves, atomically.

    The best value so far is kept beside the model in `<filepath>.json`, written
    after the model, so a resumed run (a new process) compares against the true
    best instead of starting from -inf and replacing `best.keras` with a worse
    epoch.
    """

    def __init__(self, filepath, monitor="val_accuracy", mode="max"):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"`mode` must be 'max' or 'min'. Received: mode={mode!r}")
        self.filepath = filepath
        self.monitor = monitor
        self.mode = mode
        self.best = -np.inf if mode == "max" else np.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        # A diverged model can still score a finite accuracy (argmax of NaNs):
        # judge the whole epoch's logs, not only the monitored value.
        if value is None or not _finite(logs):
            return
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            self.best = float(value)
            atomic_save(lambda p: self.model.save(p), self.filepath)
            record = {"monitor": self.monitor, "mode": self.mode, "value": self.best, "epoch": int(epoch)}
            atomic_save(lambda p: write_text(p, json.dumps(record)), self.record_path)

    @property
    def record_path(self):
        return self.filepath + ".json"

    def on_train_begin(self, logs=None):
        """Restores the best value of an earlier session of this run, when its
        record is for the same monitor and mode and its model file exists."""
        try:
            with open(self.record_path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return
        if (isinstance(record, dict) and record.get("monitor") == self.monitor
                and record.get("mode") == self.mode and os.path.exists(self.filepath)
                and isinstance(record.get("value"), (int, float)) and math.isfinite(record["value"])):
            self.best = float(record["value"])


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """`CSVLogger` that drops rows of epochs a resumed run will redo.

    Put it before the backup callback: if a kill lands between the CSV row and
    the backup, the epoch is redone and its stale row replaced, so the finished
    history lists every epoch exactly once.
    """

    def __init__(self, filename, backup_dir=None, separator=","):
        super().__init__(filename, separator=separator, append=True)
        self.backup_dir = backup_dir

    def _resume_epoch(self):
        """The epoch the backup will resume from (callbacks' on_train_begin
        order is not guaranteed to restore the backup first, so read it)."""
        path = os.path.join(self.backup_dir or "", "training_metadata.json")
        if self.backup_dir and os.path.exists(path):
            with open(path) as f:
                return int(json.load(f).get("epoch", 0))
        return compat.initial_epoch(self.model)

    def on_train_begin(self, logs=None):
        start = self._resume_epoch()
        if os.path.exists(self.filename):
            with open(self.filename, newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if int(r["epoch"]) < start]
            if keep:
                def write(path):
                    with open(path, "w", newline="") as f:
                        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
                        writer.writeheader()
                        writer.writerows(keep)
                atomic_save(write, self.filename)  # a kill here leaves the old file whole
            else:
                os.remove(self.filename)
        self.append = True
        super().on_train_begin(logs)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs as `learning_rate`."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            lr = self.model.optimizer.learning_rate
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(lr))


class NaNGuard(keras.callbacks.TerminateOnNaN):
    """Stops on a NaN/Inf loss and remembers where, for a clear final message."""

    def __init__(self):
        super().__init__()
        self.triggered_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.triggered_at = (getattr(self, "_epoch", 0), batch, float(loss))
            self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
