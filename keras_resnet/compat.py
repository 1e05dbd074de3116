"""The one place for Keras and TensorFlow internals keras_resnet depends on.

Each function here reads or patches something that is not public API, checks
that it still exists, and says so in a clear error when a new release moved it
(tests/test_compat.py exercises every one, so an upgrade fails loudly here and
not deep inside training or export). Modules elsewhere in the package use
public API only, or these functions.
"""

import keras


class KerasInternalsChanged(RuntimeError):
    """A Keras/TensorFlow internal keras_resnet relies on is missing in this version."""


def call_count(layer):
    """How many times `layer` has been called on symbolic inputs (functional
    graphs): Keras records one inbound node per call (`Operation._inbound_nodes`)."""
    nodes = getattr(layer, "_inbound_nodes", None)
    if nodes is None:
        raise KerasInternalsChanged(
            f"keras {keras.__version__}: layers no longer record their calls in `_inbound_nodes`; "
            "keras_resnet.compat.call_count needs updating.")
    return len(nodes)
