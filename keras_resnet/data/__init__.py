"""tf.data input pipelines from tensorflow-datasets, image folders and numpy arrays.

    train_ds, eval_ds, info = make_pipelines("cifar10", 128)
    model.fit(train_ds, steps_per_epoch=info.num_train // 128, validation_data=eval_ds, ...)

Modules: `source` (what a source returns), `tfds_source`, `folders`, `arrays` (the
sources) and `pipeline` (decode, cache, augment, batch; its docstring has the order of
operations).
"""

from keras_resnet.data.arrays import from_arrays, from_npz, load_npz  # noqa: F401
from keras_resnet.data.folders import (  # noqa: F401
    BadImageError, ImageFile, from_directory, inspect_image, scan_image_folder)
from keras_resnet.data.pipeline import make_pipelines  # noqa: F401
from keras_resnet.data.source import IMAGENET_CROP_FRACTION, DatasetInfo, SourceInfo  # noqa: F401
from keras_resnet.data.tfds_source import load_tfds  # noqa: F401
from keras_resnet.image_guard import DEFAULT_MAX_PIXELS  # noqa: F401
