"""Checkpoints: weights plus the exact config that rebuilds the model (loaded with weights_only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from training.models import EncoderConfig, build_encoder
from twinstream.errors import ModelError
from twinstream.preprocess import Preprocessing

FORMAT = "twinstream-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: torch.nn.Module, encoder: EncoderConfig,
                    preprocessing: Preprocessing, **meta: Any) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    path = Path(path)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION,
               "encoder": encoder.to_dict(), "preprocessing": preprocessing.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               **meta}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The encoder in eval mode and the checkpoint's metadata (without the weights)."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, pickled code refused
        raise ModelError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not a twinstream checkpoint")
    try:
        cfg = EncoderConfig(**payload["encoder"])
        model = build_encoder(cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"checkpoint {path} does not match its architecture: "
                         f"{str(exc).splitlines()[0]}") from None
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["encoder"] = cfg
    meta["preprocessing"] = Preprocessing.from_dict(payload["preprocessing"])
    meta["path"] = str(path)
    return model, meta
