"""Standard pretrained backbones: ResNet-18/34/50 and MobileNetV3 small/large.

Why plain-torch definitions: the checkpoints users have are torchvision's (``resnet18-f37072fd.pth``
and fine-tunes saved with ``model.state_dict()``), but torchvision itself cannot be used here: the
wheels this machine reaches are CUDA builds whose compiled operators do not load beside the CPU
torch, and timm imports torchvision. These five networks need no compiled operator, so they are
written out here (``resnet.py``, ``mobilenet.py``) with torchvision's module names, and their
``state_dict()`` keys and shapes *are* the published layout (a unit test pins well-known keys and
the published parameter counts). Loading is then a checked identity mapping (``training.weights``):
every key of the backbone must be in the file with its shape, the classification layer is dropped,
and anything else is refused with the keys at fault. An ONNX-to-torch converter was the other
candidate; it would serve ONNX backbones, which few users have, and add a dependency to read
files torch reads natively.

Each backbone feeds the encoder's projection head (``training.models.Embedder``) with its pooled
features: 512 (ResNet-18/34), 2048 (ResNet-50), or MobileNetV3's 1024/1280-d pre-logits layer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from training.backbones import mobilenet, resnet
from training.config import IMAGENET_MEAN, IMAGENET_SIZE, IMAGENET_STD

__all__ = ["IMAGENET_MEAN", "IMAGENET_SIZE", "IMAGENET_STD", "REGISTRY", "Backbone"]


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[int], nn.Module]  # in_channels -> the full classification network
    stem: str  # the first convolution's weight: adapted when the input is greyscale
    head: tuple[str, ...]  # key prefixes of the classification layer the encoder drops
    url: str  # torchvision's published ImageNet weights (for --pretrained)

    def features(self, in_channels: int = 3) -> nn.Module:
        """The network without its classification layer: images -> pooled features.
        ``feature_dim`` says how many."""
        net = self.build(in_channels)
        if isinstance(net, resnet.ResNet):
            net.fc = nn.Identity()
        else:  # keep classifier.0 + hard-swish (keys unchanged), drop dropout and classifier.3
            net.classifier = nn.Sequential(net.classifier[0], net.classifier[1])
        return net


_URL = "https://download.pytorch.org/models/"
REGISTRY: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet18", resnet.resnet18, "conv1.weight", ("fc.",), _URL + "resnet18-f37072fd.pth"),
    Backbone("resnet34", resnet.resnet34, "conv1.weight", ("fc.",), _URL + "resnet34-b627a593.pth"),
    Backbone("resnet50", resnet.resnet50, "conv1.weight", ("fc.",), _URL + "resnet50-0676ba61.pth"),
    Backbone("mobilenet_v3_small", mobilenet.mobilenet_v3_small, "features.0.0.weight",
             ("classifier.3.",), _URL + "mobilenet_v3_small-047dcff4.pth"),
    Backbone("mobilenet_v3_large", mobilenet.mobilenet_v3_large, "features.0.0.weight",
             ("classifier.3.",), _URL + "mobilenet_v3_large-8738ca79.pth"),
)}
