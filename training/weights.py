"""Starting weights for a standard backbone: a file the user has, or the published download.

Files: torchvision-format state dicts (``.pth``/``.pt``, read with
``torch.load(weights_only=True)``, so a file cannot run code) and ``.safetensors``. Training
checkpoints that wrap the state dict (``{"state_dict": ...}``, ``{"model": ...}``) and DDP's
``module.`` prefix are unwrapped. The key mapping is the identity (``training.backbones`` defines
the networks with torchvision's names) and it is checked: the classification layer is dropped, then
every key of the backbone must be there with its shape and no other key may be left over, or
nothing is loaded and one line names a few keys at fault (and which standard backbone the file does
fit, when one does). A greyscale encoder (``--channels 1``) gets the RGB stem summed over its input
channels (as timm does), which is exact for grey images normalised with the channels' average
mean and std.

``--pretrained`` downloads torchvision's published ImageNet file with ``torch.hub`` (hash-checked,
cached under ``~/.cache/torch/hub/checkpoints``); offline it fails with one line saying how to pass
the file instead. Neither the tests nor serving ever download.
"""

from __future__ import annotations

import hashlib
import re
import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from training.backbones import REGISTRY, Backbone
from twinstream.errors import ModelError

WRAPPERS = ("state_dict", "model", "model_state_dict", "net", "weights")
SHOWN = 3  # keys named per kind of problem: enough to recognise the file, short enough to read


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, unwrapped; ModelError if it cannot be read as one."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path), device="cpu")
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a weights file, a pickled model object refused
        raise ModelError(f"cannot read weights {path}: {why_unreadable(path, exc)}") from exc
    return unwrap(payload, path)


def why_unreadable(path: Path, exc: Exception) -> str:
    """One line on why torch or safetensors could not read ``path`` (their own messages run on
    for lines about ``weights_only`` even when the file is merely cut short)."""
    text = str(exc).strip() or type(exc).__name__
    if path.suffix == ".safetensors":
        return f"not a valid safetensors file ({text.splitlines()[0][:160]})"
    global_name = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if global_name:  # torch.save(model) pickles the class: refused, it could run any code
        return (f"it holds a pickled {global_name.group(1)}, not a state dict (save it with "
                "torch.save(model.state_dict(), FILE))")
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # torch.save's zip format, but unreadable: cut short or damaged
        return "the file is truncated or corrupt (a torch.save zip archive that does not open)"
    if head[:1] != b"\x80":  # neither zip nor a pickle's protocol byte
        return "not a PyTorch weights file (neither torch.save's format nor a pickle)"
    return text.splitlines()[0][:200]


def unwrap(payload: object, source: Path | str) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: one level of wrapper, DDP's ``module.`` prefix off."""
    if isinstance(payload, Mapping) and not any(isinstance(v, torch.Tensor)
                                                for v in payload.values()):
        inner = next((payload[k] for k in WRAPPERS if isinstance(payload.get(k), Mapping)), None)
        payload = inner if inner is not None else payload
    if not isinstance(payload, Mapping) or not payload:
        raise ModelError(f"{source} holds no state dict (a mapping of names to tensors)")
    state = {str(k): v for k, v in payload.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"{source} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def mismatches(backbone: Backbone, net: nn.Module, state: Mapping[str, torch.Tensor],
               in_channels: int) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, wrong shape) keys of ``state`` for ``net`` (without its head)."""
    expected = net.state_dict()
    given = {k: v for k, v in state.items() if not k.startswith(backbone.head)}
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = []
    for key in expected.keys() & given.keys():
        shape = tuple(given[key].shape)
        if key == backbone.stem and in_channels == 1 and len(shape) == 4 and shape[1] == 3:
            shape = (shape[0], 1, *shape[2:])  # an RGB stem is summed for a greyscale input
        if shape != tuple(expected[key].shape):
            wrong.append(f"{key} {list(given[key].shape)} (needs {list(expected[key].shape)})")
    return missing, unexpected, sorted(wrong)


def shapes_of(backbone: Backbone, in_channels: int) -> nn.Module:
    """A throw-away network whose state dict gives the keys and shapes. Built on the CPU: 0.1 s
    (MobileNetV3-small) to 0.6 s (ResNet-50), where a process's first build on the meta device
    spends 3 s importing torch's meta kernels."""
    return backbone.features(in_channels)


def fits(state: Mapping[str, torch.Tensor], in_channels: int = 3) -> list[str]:
    """The standard backbones whose every key and shape the state dict matches."""
    found = []
    for name, backbone in REGISTRY.items():
        net = shapes_of(backbone, in_channels)
        if not any(mismatches(backbone, net, state, in_channels)):
            found.append(name)
    return found


def check_fit(arch: str, state: Mapping[str, torch.Tensor], source: str,
              in_channels: int = 3, net: nn.Module | None = None) -> None:
    """ModelError in one line unless ``state`` fits ``arch`` exactly (against a throw-away
    network when ``net`` is not given, so a run can check before it builds anything)."""
    backbone = REGISTRY[arch]
    net = net if net is not None else shapes_of(backbone, in_channels)
    missing, unexpected, wrong = mismatches(backbone, net, state, in_channels)
    if missing or unexpected or wrong:
        other = [name for name in fits(state, in_channels) if name != arch]
        if other:  # the commonest slip: the right file for another --arch
            raise ModelError(f"weights {source} are {other[0]} weights, not {arch}: pass "
                             f"--arch {other[0]}")
        problems = [f"{len(keys)} {what} ({', '.join(keys[:SHOWN])}"
                    f"{', ...' if len(keys) > SHOWN else ''})"
                    for what, keys in (("missing", missing), ("unexpected", unexpected),
                                       ("of the wrong shape", wrong)) if keys]
        raise ModelError(f"weights {source} do not fit {arch}: {'; '.join(problems)}")


def load_backbone(net: nn.Module, arch: str, state: Mapping[str, torch.Tensor],
                  source: str) -> None:
    """Copy ``state`` into ``net`` (``REGISTRY[arch].features(...)``) or refuse it whole."""
    backbone = REGISTRY[arch]
    in_channels = net.state_dict()[backbone.stem].shape[1]
    check_fit(arch, state, source, in_channels, net)
    weights = {k: v for k, v in state.items() if not k.startswith(backbone.head)}
    stem = weights[backbone.stem]
    if stem.shape[1] != in_channels:
        weights[backbone.stem] = stem.sum(dim=1, keepdim=True)
    net.load_state_dict(weights, strict=True)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(arch: str, progress: bool = True, model_dir: str | None = None
             ) -> dict[str, torch.Tensor]:
    """The published ImageNet weights of ``arch``, from torch.hub's cache or downloaded."""
    url = REGISTRY[arch].url
    try:
        payload = torch.hub.load_state_dict_from_url(url, model_dir=model_dir,
                                                     map_location="cpu", progress=progress,
                                                     check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or str(exc).strip().splitlines()[0]
        raise ModelError(f"cannot download the {arch} weights from {url}: {reason}; without "
                         "network, copy that file here and pass --weights FILE") from exc
    return unwrap(payload, url)


def initial_weights(arch: str, weights: str = "", pretrained: bool = False,
                    progress: bool = True) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The starting state dict and a description of it for the model card ("" for none)."""
    if weights:
        path = Path(weights)
        state = read_weights(path)
        return state, f"{path.name} sha256:{sha256(path)[:16]}"
    if pretrained:
        return download(arch, progress), REGISTRY[arch].url
    return None, ""
