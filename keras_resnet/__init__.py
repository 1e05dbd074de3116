"""keras_resnet: every ResNet for Keras 3, trained with model.fit and served by TF Serving."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter drowns the CLI and notebooks; users can
# still opt back in by setting the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_resnet.layers import (  # noqa: F401
    BasicBlock, BottleneckBlock, DropPath, FusedBatchNormalization, PreActBasicBlock, PreActBottleneckBlock,
    ResidualBlock, ResNet9Block, SqueezeExcite, ZeroPadShortcut)
from keras_resnet.models import ResNet, build_resnet, build_resnet9, feature_extractor  # noqa: F401
from keras_resnet.registry import create_model, list_models, model_config  # noqa: F401
from keras_resnet import callbacks, finetune, optimizers  # noqa: F401
from keras_resnet.weights import from_keras_applications, load_weights, port_weights  # noqa: F401
from keras_resnet.preprocessing import NORMALIZATION_STATS  # noqa: F401


def _named(name):
    def constructor(input_shape=None, num_classes=None, **overrides):
        if input_shape is not None:
            overrides["input_shape"] = input_shape
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return create_model(name, **overrides)
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = f"Builds `{name}` (see keras_resnet.registry); arguments override its config."
    return constructor


# Named constructors: ResNet50(...), ResNet20(...), PreActResNet18(...), WideResNet28_10(...)...
for _n in (18, 34, 50, 101, 152, 200, 20, 32, 44, 56, 110, 1202):
    globals()[f"ResNet{_n}"] = _named(f"resnet{_n}")
for _n in (18, 34, 50, 101, 152, 20, 56, 110, 164, 1001):
    globals()[f"PreActResNet{_n}"] = _named(f"preact_resnet{_n}")
for _n in (50, 101, 152):
    globals()[f"ResNet{_n}V1"] = _named(f"resnet{_n}_v1")
    globals()[f"ResNet{_n}V2"] = _named(f"resnet{_n}_v2")
for _n in (18, 34, 50, 101):
    globals()[f"ResNet{_n}D"] = _named(f"resnet{_n}d")
    globals()[f"SEResNet{_n}"] = _named(f"se_resnet{_n}")
ResNet14W2 = _named("resnet14_w2")
ResNet9 = _named("resnet9")
ResNet9Half = _named("resnet9_half")
WideResNet16_4 = _named("wrn16_4")
WideResNet16_8 = _named("wrn16_8")
WideResNet28_10 = _named("wrn28_10")
WideResNet40_4 = _named("wrn40_4")
ResNeXt50_32x4d = _named("resnext50_32x4d")
ResNeXt101_32x8d = _named("resnext101_32x8d")
del _n

from keras_resnet.recipes import TrainConfig, get_recipe, list_recipes  # noqa: E402,F401
from keras_resnet.training import TrainResult, evaluate_model, train  # noqa: E402,F401
from keras_resnet import data  # noqa: E402,F401
from keras_resnet.export import export  # noqa: E402,F401
from keras_resnet.inference import InferenceSnapshot  # noqa: E402,F401
