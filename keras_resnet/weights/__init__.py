"""Weights a model can start from: keras.applications' ports, torchvision / timm
checkpoints by tag, URL or file, and files from earlier runs.

    keras_applications  the keras.applications port by layer name (`"imagenet"`).
    torch_convert       `.safetensors` / `.pth` state dicts, tensor by tensor.
    hub                 the table of published tags, URLs, hashes and evaluations;
                        the cached, hash-checked download.
    loading             `load_weights(model, weights)`, the dispatch between them.
"""

from keras_resnet.models import KERAS_APPLICATIONS, imagenet_layout  # noqa: F401
from keras_resnet.weights.keras_applications import (  # noqa: F401
    from_keras_applications, keras_applications_name, port_weights)
from keras_resnet.weights.hub import (  # noqa: F401
    PRETRAINED, PretrainedWeights, list_pretrained, pretrained)
from keras_resnet.weights.torch_convert import (  # noqa: F401
    load_state_dict, load_torch_checkpoint, read_checkpoint)
from keras_resnet.weights.loading import load_weights, resolve_tag  # noqa: F401
