"""keras_resnet: every ResNet for Keras 3, trained with model.fit and served by TF Serving."""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter drowns the CLI and notebooks; users can
# still opt back in by setting the variable themselves.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_resnet.layers import (  # noqa: F401
    BasicBlock, BottleneckBlock, DropPath, FusedBatchNormalization, PreActBasicBlock, PreActBottleneckBlock,
    PatchWhitening, ResidualBlock, ResNet9Block, SqueezeExcite, ZeroPadShortcut, walk_layers)
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


# Named constructors, one per registered model: ResNet50(...) is create_model("resnet50", ...).
ResNet18 = _named("resnet18")
ResNet34 = _named("resnet34")
ResNet50 = _named("resnet50")
ResNet101 = _named("resnet101")
ResNet152 = _named("resnet152")
ResNet200 = _named("resnet200")
ResNet20 = _named("resnet20")
ResNet32 = _named("resnet32")
ResNet44 = _named("resnet44")
ResNet56 = _named("resnet56")
ResNet110 = _named("resnet110")
ResNet1202 = _named("resnet1202")
PreActResNet18 = _named("preact_resnet18")
PreActResNet34 = _named("preact_resnet34")
PreActResNet50 = _named("preact_resnet50")
PreActResNet101 = _named("preact_resnet101")
PreActResNet152 = _named("preact_resnet152")
PreActResNet20 = _named("preact_resnet20")
PreActResNet56 = _named("preact_resnet56")
PreActResNet110 = _named("preact_resnet110")
PreActResNet164 = _named("preact_resnet164")
PreActResNet1001 = _named("preact_resnet1001")
ResNet50V1 = _named("resnet50_v1")
ResNet50V2 = _named("resnet50_v2")
ResNet101V1 = _named("resnet101_v1")
ResNet101V2 = _named("resnet101_v2")
ResNet152V1 = _named("resnet152_v1")
ResNet152V2 = _named("resnet152_v2")
ResNet18D = _named("resnet18d")
SEResNet18 = _named("se_resnet18")
ResNet34D = _named("resnet34d")
SEResNet34 = _named("se_resnet34")
ResNet50D = _named("resnet50d")
SEResNet50 = _named("se_resnet50")
ResNet101D = _named("resnet101d")
SEResNet101 = _named("se_resnet101")
ResNet14W2 = _named("resnet14_w2")
ResNet9 = _named("resnet9")
ResNet9Half = _named("resnet9_half")
ResNet9Whiten = _named("resnet9_whiten")
WideResNet16_4 = _named("wrn16_4")
WideResNet16_8 = _named("wrn16_8")
WideResNet28_10 = _named("wrn28_10")
WideResNet40_4 = _named("wrn40_4")
ResNeXt50_32x4d = _named("resnext50_32x4d")
ResNeXt101_32x8d = _named("resnext101_32x8d")

from keras_resnet.recipes import TrainConfig, get_recipe, list_recipes  # noqa: E402,F401
from keras_resnet.training import TrainResult, evaluate_model, train  # noqa: E402,F401
from keras_resnet import data  # noqa: E402,F401
from keras_resnet.export import export  # noqa: E402,F401
from keras_resnet.deploy import fold_batchnorm  # noqa: E402,F401
