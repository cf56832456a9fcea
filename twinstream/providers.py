"""Which onnxruntime execution providers run the encoder (``TWINSTREAM_MODEL_PROVIDERS``).

The setting is a comma-separated list in order of preference, short names (``cuda,cpu``,
``openvino,cpu``) or onnxruntime's own (``CUDAExecutionProvider``). Parsing is pure and happens
when the settings are loaded, so a typo is a configuration error before anything starts.
Resolving the list against ``onnxruntime.get_available_providers()`` keeps the ones this
onnxruntime build has, in order, and always ends with the CPU provider: a machine without the
accelerator still embeds (on CPU) and says so in one warning line, instead of refusing to start.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from twinstream.errors import ConfigError

CPU = "CPUExecutionProvider"
# Short names for onnxruntime's providers (the names onnxruntime.get_all_providers() knows).
SHORT_NAMES = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "cann": "CANNExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
_BY_FULL_NAME = {full.lower(): full for full in SHORT_NAMES.values()}


def parse_providers(text: str, source: str = "TWINSTREAM_MODEL_PROVIDERS") -> tuple[str, ...]:
    """``"cuda, cpu"`` -> ``("CUDAExecutionProvider", "CPUExecutionProvider")``; an empty
    setting means CPU; an unknown name is a ``ConfigError`` naming the known ones."""
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    providers: list[str] = []
    for name in names or ["cpu"]:
        full = SHORT_NAMES.get(name.lower()) or _BY_FULL_NAME.get(name.lower())
        if full is None:
            close = difflib.get_close_matches(name.lower(), list(SHORT_NAMES), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"{source}: unknown onnxruntime provider {name!r} (known: "
                              f"{', '.join(SHORT_NAMES)}){hint}")
        if full not in providers:
            providers.append(full)
    return tuple(providers)


@dataclass(frozen=True)
class ProviderChoice:
    """The providers to hand onnxruntime, and the warning when some asked for are missing."""

    providers: tuple[str, ...]
    missing: tuple[str, ...]
    warning: str | None


def choose_providers(requested: Sequence[str], available: Sequence[str]) -> ProviderChoice:
    """The requested providers this onnxruntime has, in the order asked, with CPU (always there)
    last unless it was asked for earlier."""
    kept = [p for p in requested if p in available or p == CPU]
    missing = tuple(p for p in requested if p not in available and p != CPU)
    chosen = tuple(kept) if CPU in kept else (*kept, CPU)
    warning = None
    if missing:
        warning = (f"onnxruntime here has no {', '.join(missing)} (it has "
                   f"{', '.join(available) or 'none'}): running on {chosen[0]}; install the "
                   "onnxruntime build for that accelerator (e.g. onnxruntime-gpu, "
                   "onnxruntime-openvino)")
    return ProviderChoice(chosen, missing, warning)


def short_name(provider: str) -> str:
    """``CUDAExecutionProvider`` -> ``cuda`` (for people; the full name for unknown ones)."""
    for short, full in SHORT_NAMES.items():
        if full == provider:
            return short
    return provider
