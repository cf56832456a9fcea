"""Checkpoints: weights plus the exact config that rebuilds the model (loaded with weights_only).

``best.pt`` is the model to use (encoder weights, ``EncoderConfig``, preprocessing, loss, data
summary, validation metrics, training history). ``last.pt`` is the state to resume from: it adds
the optimizer, the loss's own parameters (the pair head), the random generators and the clock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.models import EncoderConfig, build_encoder
from twinstream.errors import ModelError
from twinstream.preprocess import Preprocessing

FORMAT = "twinstream-checkpoint"
STATE_FORMAT = "twinstream-train-state"
FORMAT_VERSION = 1


def _atomic_save(payload: dict, path: Path) -> None:
    """Temp file + rename, so a crash never leaves half a checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load(path: Path, fmt: str) -> dict:
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code refused
        raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        what = "checkpoint" if fmt == FORMAT else "training state (last.pt)"
        raise ModelError(f"{path} is not a twinstream {what}")
    return payload


def save_checkpoint(path: str | Path, model: torch.nn.Module, encoder: EncoderConfig,
                    preprocessing: Preprocessing, **meta: Any) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "encoder": encoder.to_dict(), "preprocessing": preprocessing.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               **meta}
    _atomic_save(payload, Path(path))


def load_weights(model: torch.nn.Module, state_dict: dict, source: Path) -> None:
    """Load weights, turning PyTorch's multi-line mismatch report into one clear line."""
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError) as exc:
        text = str(exc).replace("\n", " ").replace("\t", "")
        raise ModelError(f"checkpoint {source} does not match its architecture: "
                         f"{text[:300]}") from exc


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder in eval mode and the checkpoint's metadata (without the weights)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    payload = _load(path, FORMAT)
    try:
        cfg = EncoderConfig(**payload["encoder"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"checkpoint {path} has no usable encoder config: {exc}") from exc
    model = build_encoder(cfg)
    load_weights(model, payload.get("state_dict", {}), path)
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["encoder"] = cfg
    meta["preprocessing"] = Preprocessing.from_dict(payload["preprocessing"])
    meta["path"] = str(path)
    return model, meta


def save_state(path: str | Path, **state: Any) -> None:
    _atomic_save({"format": STATE_FORMAT, "format_version": FORMAT_VERSION, **state}, Path(path))


def load_state(path: str | Path) -> dict[str, Any]:
    return _load(Path(path), STATE_FORMAT)
