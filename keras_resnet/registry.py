"""A registry of named ResNets: `list_models()` and `create_model(name, **overrides)`.

Every variant is one small dict of `keras_resnet.ResNet` arguments over the one
generic builder (the timm pattern). Glossary:

    resnet{20,32,44,56,110,1202}   CIFAR ResNets, He et al. 2015 sec. 4.2 (option A).
    resnet14_w2                    CIFAR ResNet-14 at twice the width (32/64/128 filters,
                                   16-filter stem, option A): wide and shallow, 2.5x the
                                   parameters of ResNet-20 at ~1.5x its training cost.
    resnet9, resnet9_half          ResNet-9 (Page 2018, DAWNBench): conv + max-pool stages
                                   of 128/256/512 filters (64/128/256 for _half) with two
                                   residual units; `keras_resnet.models.build_resnet9`.
    resnet9_whiten                 resnet9_half with airbench's patch-whitening stem (24
                                   fixed 2x2 filters set from the data, then ReLU) and
                                   BatchNorm scales fixed at 1.
    resnet{18,34,50,101,152,200}   ImageNet ResNets; bottlenecks stride on the 3x3
                                   (v1.5, torchvision/timm).
    resnet{50,101,152}_v1          the keras.applications layout (conv biases,
                                   stride on the first 1x1): loads weights="imagenet".
    resnet{50,101,152}_v2          keras.applications ResNetV2 (pre-activation).
    resnet{18,34,50,101}d          ResNet-D: deep stem + average-pool shortcuts.
    se_resnet{18,34,50,101}        squeeze-and-excitation, ratio 1/16.
    preact_resnet{18,34,50,101,152}  pre-activation, He et al. 2016, ImageNet stem.
    preact_resnet{20,56,110,164,1001}  pre-activation CIFAR nets (164/1001 bottleneck).
    wrn{16_4,16_8,28_10,40_4}      Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016).
    resnext{50_32x4d,101_32x8d}    ResNeXt (Xie et al. 2017).
"""

from keras_resnet.models import ResNet, build_resnet9, imagenet_layout

CIFAR_INPUT = dict(input_shape=(32, 32, 3), num_classes=10)
IMAGENET_INPUT = dict(input_shape=(224, 224, 3), num_classes=1000)


def wide_resnet_stages(depth, width):
    """WRN-d-k: depth counts the shortcut convs, so d = 6n + 4."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"Invalid Wide ResNet depth. Received: depth={depth!r}. "
                         "Valid depths are 6n+4, e.g. 16, 22, 28, 40.")
    n = (depth - 4) // 6
    return [dict(blocks=n, filters=f * width, strides=s) for f, s in ((16, 1), (32, 2), (64, 2))]


def _keras_apps(depth, preact):
    stages, layout = imagenet_layout(depth, preact)
    return dict(IMAGENET_INPUT, depth=depth, stages=stages, block="bottleneck",
                preact=preact, stem="imagenet", **layout)


MODEL_CONFIGS = {}
for d in (20, 32, 44, 56, 110, 1202):
    MODEL_CONFIGS[f"resnet{d}"] = dict(CIFAR_INPUT, depth=d, stem="cifar")
# `builder` picks a builder other than `ResNet` (the one non-ResNet-family layout).
MODEL_CONFIGS["resnet9"] = dict(CIFAR_INPUT, builder="resnet9")
MODEL_CONFIGS["resnet9_half"] = dict(CIFAR_INPUT, builder="resnet9", base_filters=32)
MODEL_CONFIGS["resnet9_whiten"] = dict(CIFAR_INPUT, builder="resnet9", base_filters=32, stem="whitening",
                                       bn_scale=False)
MODEL_CONFIGS["resnet14_w2"] = dict(CIFAR_INPUT, depth=14, width=2, stem="cifar")
for d in (18, 34, 50, 101, 152, 200):
    MODEL_CONFIGS[f"resnet{d}"] = dict(IMAGENET_INPUT, depth=d, stem="imagenet")
for d in (50, 101, 152):
    MODEL_CONFIGS[f"resnet{d}_v1"] = _keras_apps(d, preact=False)
    MODEL_CONFIGS[f"resnet{d}_v2"] = _keras_apps(d, preact=True)
for d in (18, 34, 50, 101):
    MODEL_CONFIGS[f"resnet{d}d"] = dict(IMAGENET_INPUT, depth=d, stem="deep", shortcut="avg_pool")
    MODEL_CONFIGS[f"se_resnet{d}"] = dict(IMAGENET_INPUT, depth=d, stem="imagenet", se_ratio=1 / 16)
for d in (18, 34, 50, 101, 152):
    MODEL_CONFIGS[f"preact_resnet{d}"] = dict(IMAGENET_INPUT, depth=d, stem="imagenet", preact=True)
for d in (20, 56, 110):
    MODEL_CONFIGS[f"preact_resnet{d}"] = dict(CIFAR_INPUT, depth=d, stem="cifar", preact=True)
for d in (164, 1001):
    MODEL_CONFIGS[f"preact_resnet{d}"] = dict(CIFAR_INPUT, depth=d, stem="cifar", preact=True,
                                              block="bottleneck")
for d, k in ((16, 4), (16, 8), (28, 10), (40, 4)):
    MODEL_CONFIGS[f"wrn{d}_{k}"] = dict(CIFAR_INPUT, depth=d, stages=wide_resnet_stages(d, k),
                                        block="basic", stem="cifar", preact=True,
                                        stem_filters=16, shortcut="projection")
MODEL_CONFIGS["resnext50_32x4d"] = dict(IMAGENET_INPUT, depth=50, stem="imagenet", groups=32, base_width=4)
MODEL_CONFIGS["resnext101_32x8d"] = dict(IMAGENET_INPUT, depth=101, stem="imagenet", groups=32, base_width=8)


def list_models(pattern=None):
    """Sorted registered model names, optionally those containing `pattern`."""
    names = sorted(MODEL_CONFIGS)
    return [n for n in names if pattern is None or pattern in n]


def model_config(name):
    """The `ResNet(...)` arguments of a registered model (a copy)."""
    if name not in MODEL_CONFIGS:
        close = [n for n in MODEL_CONFIGS if name and (name in n or n in name)]
        hint = f" Did you mean one of {close[:5]}?" if close else ""
        raise ValueError(f"Unknown model. Received: name={name!r}.{hint} "
                         "See keras_resnet.list_models() for every name.")
    config = dict(MODEL_CONFIGS[name])
    if "stages" in config:
        config["stages"] = [dict(s) for s in config["stages"]]
    return config


def create_model(name, /, **overrides):
    """Builds a registered model; any `ResNet` argument can be overridden
    (`name=` too: `name` is positional-only here).

    Example: `create_model("resnet50", num_classes=10, input_shape=(160, 160, 3))`.
    """
    config = model_config(name)
    config.update(overrides)
    config.setdefault("name", name)
    input_shape = config.pop("input_shape")
    num_classes = config.pop("num_classes")
    if config.pop("builder", None) == "resnet9":
        _check_builder_options(build_resnet9, config, name)
        return build_resnet9(input_shape, num_classes, **config)
    return ResNet(input_shape, num_classes, **config)


def _check_builder_options(builder, options, name):
    import inspect

    valid = set(inspect.signature(builder).parameters)
    unknown = sorted(set(options) - valid)
    if unknown:
        raise TypeError(f"Model {name!r} got unknown option(s) {unknown}. "
                        f"Valid options: {', '.join(sorted(valid - {'input_shape', 'num_classes'}))}.")
