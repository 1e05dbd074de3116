"""torchvision / timm checkpoints into keras_resnet models, tensor by tensor.

keras_resnet's v1.5 layout (`resnet18`..`resnet152`, `resnext*`) is
torchvision's, and its ResNet-D (`resnet*d`) and SE (`se_resnet*`) variants are
timm's, so a checkpoint maps by name alone:

    conv1 / bn1                      conv1_conv / conv1_bn (deep stem: conv1.0,
                                     conv1.1, conv1.3, conv1.4, conv1.6 and bn1 are
                                     conv1_1_conv ... conv1_3_conv, conv1_3_bn)
    layer{s}.{b}.conv{i} / bn{i}     conv{s+1}_block{b+1}_{i}_conv / _{i}_bn
    layer{s}.{b}.downsample.0 / .1   ..._0_conv / _0_bn (timm's avg-pool shortcut:
                                     .1 / .2, its .0 is the pool)
    layer{s}.{b}.se.fc1 / se.fc2     ..._se_reduce / _se_expand
    fc                               predictions

Every tensor of the file must find its variable and every variable its
tensor, with the right shape; anything else is an error naming the tensor.
Convolutions go from torch's OIHW to Keras's HWIO (grouped ones too: both
split the channels into contiguous groups), Linear weights are transposed,
BatchNorm's weight/bias/running_mean/running_var are gamma/beta/moving_mean/
moving_variance, and `num_batches_tracked` is ignored.

Files are read without unpickling anything: `.safetensors` with the
`safetensors` package (no torch needed), `.pth` / `.pt` / `.bin` only through
`torch.load(weights_only=True)`.
"""

import os
import pickle
import re

import keras
import numpy as np

from keras_resnet import layers as blocks

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
HEAD = "fc"
_IGNORED = ("num_batches_tracked",)
# The deep stem (timm `stem_type="deep"`): nn.Sequential(conv, bn, relu, conv, bn, relu, conv).
_DEEP_STEM = {"conv1_1_conv": "conv1.0", "conv1_1_bn": "conv1.1", "conv1_2_conv": "conv1.3",
              "conv1_2_bn": "conv1.4", "conv1_3_conv": "conv1.6", "conv1_3_bn": "bn1"}
_BLOCK = re.compile(r"^conv(\d+)_block(\d+)$")


def is_torch_checkpoint(path):
    """Whether `path` names a file this module reads (by its suffix)."""
    return str(path).endswith(SAFETENSORS_SUFFIXES + TORCH_SUFFIXES)


def read_checkpoint(path):
    """`{name: numpy array}` from a `.safetensors` or torch (`.pth`) state dict.

    A torch file is opened with `torch.load(weights_only=True)`, which refuses
    anything but tensors and plain containers; a `{"state_dict": ...}` or
    `{"model": ...}` wrapper and a `module.` prefix (DataParallel) are unwrapped.

    Raises:
        ValueError: for another suffix, a missing file or a file that is not a
            state dict, naming it.
        ImportError: for a torch file when torch is not installed.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"Checkpoint file not found. Received: weights={path!r}")
    if path.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.numpy import load_file

        tensors = load_file(path)
    elif path.endswith(TORCH_SUFFIXES):
        try:
            import torch
        except ImportError:
            raise ImportError(
                f"Reading a torch checkpoint needs torch (pip install 'keras-resnet[torch]'), or "
                f"use the .safetensors file of the same weights. Received: weights={path!r}") from None
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"The torch file holds objects other than tensors, which are never unpickled "
                f"({str(error).splitlines()[0][:200]}). Received: weights={path!r}") from None
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ValueError(f"The torch file does not hold a state dict of tensors. "
                             f"Received: weights={path!r}")
        tensors = {k: (v.float() if v.is_floating_point() else v).detach().cpu().numpy()
                   for k, v in state.items()}
    else:
        raise ValueError(f"A checkpoint must end in {SAFETENSORS_SUFFIXES + TORCH_SUFFIXES}. "
                         f"Received: weights={path!r}")
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _conv_to_keras(x):
    return np.transpose(x, (2, 3, 1, 0))  # OIHW -> HWIO


def _conv_to_torch_shape(shape):
    return (shape[3], shape[2], shape[0], shape[1])


def _leaf_variables(layer, prefix):
    """`[(torch name, variable, to_keras, torch shape, layer name)]` of one weighted layer."""
    return [entry + (layer.name,) for entry in _leaf_tensors(layer, prefix)]


def _leaf_tensors(layer, prefix):
    if isinstance(layer, keras.layers.Conv2D):
        out = [(f"{prefix}.weight", layer.kernel, _conv_to_keras,
                _conv_to_torch_shape(tuple(layer.kernel.shape)))]
        if layer.use_bias:
            out.append((f"{prefix}.bias", layer.bias, None, tuple(layer.bias.shape)))
        return out
    if isinstance(layer, keras.layers.BatchNormalization):
        pairs = (("weight", layer.gamma), ("bias", layer.beta),
                 ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance))
        return [(f"{prefix}.{n}", v, None, tuple(v.shape)) for n, v in pairs if v is not None]
    if isinstance(layer, keras.layers.Dense):
        out = [(f"{prefix}.weight", layer.kernel, np.transpose, tuple(layer.kernel.shape)[::-1])]
        if layer.use_bias:
            out.append((f"{prefix}.bias", layer.bias, None, tuple(layer.bias.shape)))
        return out
    raise ValueError(f"No torch counterpart for layer {layer.name!r} of type "
                     f"{type(layer).__name__}. Received: layer={layer.name!r}")


def _block_name(block, name):
    """The torch name of a block's sub-layer, or None when torch has none."""
    stage, index = (int(g) for g in _BLOCK.match(block.name).groups())
    prefix = f"layer{stage - 1}.{index - 1}"
    suffix = name[len(block.name) + 1:]
    down = 1 if getattr(block, "shortcut_kind", None) == "avg_pool" else 0  # timm: .0 is the pool
    table = {"0_conv": f"downsample.{down}", "0_bn": f"downsample.{down + 1}",
             "se_reduce": "se.fc1", "se_expand": "se.fc2"}
    match = re.match(r"^(\d)_(conv|bn)$", suffix)
    if match and match.group(1) != "0":
        return f"{prefix}.{match.group(2)}{match.group(1)}"
    return f"{prefix}.{table[suffix]}" if suffix in table else None


def torch_variables(model):
    """`[(torch name, variable, to_keras, torch shape, layer name)]` for every weight of `model`.

    Raises:
        ValueError: naming the first weighted layer torchvision/timm have no
            tensor for (pre-activation BatchNorms, CIFAR stems, ...).
    """
    entries = []

    def unmapped(name):
        raise ValueError(
            f"Layer {name!r} of {model.name!r} has no torchvision/timm counterpart: torch "
            "checkpoints fit the v1.5 layouts (resnet18..152, resnext*, resnet*d, se_resnet*). "
            f"Received: model.name={model.name!r}")

    for layer in model.layers:
        if isinstance(layer, blocks.ResidualBlock):
            if not _BLOCK.match(layer.name):
                unmapped(layer.name)
            for sub in layer.sublayers():
                if not sub.weights or isinstance(sub, blocks.SqueezeExcite):
                    continue  # the SE container: its reduce/expand convs follow
                torch_name = _block_name(layer, sub.name)
                if torch_name is None:
                    unmapped(sub.name)
                entries += _leaf_variables(sub, torch_name)
        elif layer.weights and not isinstance(layer, keras.layers.Normalization):
            if isinstance(layer, keras.Model):
                unmapped(layer.name)
            names = {"conv1_conv": "conv1", "conv1_bn": "bn1", "predictions": HEAD, **_DEEP_STEM}
            if layer.name not in names:
                unmapped(layer.name)
            entries += _leaf_variables(layer, names[layer.name])
    return entries


def _head_matches(entries, tensors):
    head = [(n, shape) for n, _, _, shape, _ in entries if n.startswith(HEAD + ".")]
    return bool(head) and all(n in tensors and tuple(tensors[n].shape) == s for n, s in head)


def load_state_dict(model, tensors, skip_head=False, source="the checkpoint"):
    """Copies a torchvision/timm state dict into `model`, every tensor by name.

    Args:
        model: A keras_resnet model in a torch layout (see the module docstring).
        tensors: `{name: array}` (`read_checkpoint`'s result).
        skip_head: `True` leaves the classifier (`predictions`) as it is and
            ignores the file's `fc.*` (fine-tuning to new classes); `"auto"`
            does so only when the model has no classifier or one of another
            size; `False` requires an exact match.
        source: How errors name the file.

    Returns:
        The names of the layers whose weights were copied, in model order.

    Raises:
        ValueError: naming the tensors that are missing from the file, left over
            in it, or of the wrong shape.
    """
    if skip_head not in (True, False, "auto"):
        raise ValueError(f"`skip_head` must be True, False or 'auto'. Received: skip_head={skip_head!r}")
    entries = torch_variables(model)
    if skip_head == "auto":
        skip_head = not _head_matches(entries, tensors)
    if skip_head:
        entries = [e for e in entries if not e[0].startswith(HEAD + ".")]
    wanted = {name for name, *_ in entries}
    missing = [name for name in wanted if name not in tensors]
    left_over = [name for name in tensors if name not in wanted and not name.endswith(_IGNORED)
                 and not (skip_head and name.startswith(HEAD + "."))]
    if missing:
        missing = sorted(missing)
        raise ValueError(
            f"{len(missing)} tensors of {model.name!r} are missing from {source}: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}. Build the model whose layout the file holds.")
    if left_over:
        raise ValueError(
            f"{len(left_over)} tensors of {source} have no place in {model.name!r}: "
            f"{sorted(left_over)[:8]}{' ...' if len(left_over) > 8 else ''}. Build the model "
            "whose layout the file holds.")
    values = []
    for name, variable, to_keras, shape, _ in entries:
        tensor = np.asarray(tensors[name])
        if tuple(tensor.shape) != tuple(shape):
            hint = (" Pass skip_head=True to keep a new classifier." if name.startswith(HEAD + ".")
                    else "")
            raise ValueError(f"Tensor {name!r} of {source} has shape {tuple(tensor.shape)}; "
                             f"{model.name!r} needs {tuple(shape)}.{hint}")
        values.append((variable, to_keras(tensor) if to_keras else tensor))
    for variable, value in values:  # nothing is assigned unless everything fits
        variable.assign(value.astype(variable.dtype))
    return list(dict.fromkeys(entry[-1] for entry in entries))


def load_torch_checkpoint(model, path, skip_head=False):
    """Reads `path` (`.safetensors` or `.pth`) and loads it with `load_state_dict`."""
    return load_state_dict(model, read_checkpoint(path), skip_head=skip_head,
                           source=os.path.basename(os.fspath(path)))
