"""tf.data input pipelines from tensorflow-datasets, image folders and numpy arrays.

Modules: `source` (what a source returns), `tfds_source`, `folders`, `arrays`
(the sources) and `pipeline` (decode, cache, augment, batch).

Pipelines yield float32 images on a 0-255 scale, decoded, resized and
augmented but *not* normalised: models carry their normalisation
(`ResNet(..., preprocessing=info.normalization)`), so the exported model
reuses it. `DatasetInfo.normalization` says which statistics to put there.

    train_ds, eval_ds, info = make_pipelines("cifar10", 128)
    train_ds, eval_ds, info = make_pipelines("path/to/photos", 32)     # one folder per class
    train_ds, eval_ds, info = make_pipelines((x, y), 64)               # numpy arrays
    model.fit(train_ds, steps_per_epoch=info.num_train // 128, validation_data=eval_ds, ...)

The training stream is endless (`repeat()` before `shuffle()`), so `fit` needs
`steps_per_epoch`. Order, per input pipeline:

    train: [take(max_examples)] -> shard -> decode (+ resize/shrink) -> cache -> repeat ->
           shuffle(seed) -> enumerate -> map(augment, AUTOTUNE) -> batch(drop_remainder) ->
           [mixup/cutmix] -> prefetch
    eval:  shard -> decode -> cache -> map(eval_resize, AUTOTUNE) -> batch -> prefetch

Caching holds decoded uint8 images and is skipped (with a log line) when the
estimate exceeds a share of the free memory. Augmentation is stateless and
seeded by (seed, element index): see `keras_resnet.augment`.
"""

from keras_resnet.data.arrays import from_arrays, from_npz, load_npz  # noqa: F401
from keras_resnet.data.folders import (  # noqa: F401
    BadImageError, ImageFile, from_directory, inspect_image, scan_image_folder)
from keras_resnet.data.pipeline import make_pipelines  # noqa: F401
from keras_resnet.data.source import IMAGENET_CROP_FRACTION, DatasetInfo, SourceInfo  # noqa: F401
from keras_resnet.data.tfds_source import load_tfds  # noqa: F401
from keras_resnet.image_guard import DEFAULT_MAX_PIXELS  # noqa: F401
