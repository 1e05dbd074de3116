"""Subprocess entry points for the tf.distribute tests (logical devices must be
configured before TensorFlow starts, so these run in fresh processes)."""

import json
import sys


def loss_trajectory(npz, out_dir, strategy, model_options="{}"):
    """Per-step losses of a short run, one strategy per process: shuffle order
    is reproducible across processes, not across iterators within one."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    import keras

    from keras_resnet import recipes
    from keras_resnet.training import train

    class StepLosses(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    results = {}
    for strategy in (strategy,):
        spy = StepLosses()
        cfg = recipes.get_recipe(
            "cifar10_fast_resnet20", dataset=npz, model="resnet20", batch_size=32, epochs=2,
            steps_per_epoch=4, precision="float32", strategy=strategy, augment=None,
            sync_batchnorm=True, seed=7, model_options=json.loads(model_options), output=f"{out_dir}/{strategy}", verbose=0, tta_flip=False)
        result = train(cfg, extra_callbacks=[spy])
        results[strategy] = {"losses": spy.losses, "replicas": result.metrics["replicas"]}
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
