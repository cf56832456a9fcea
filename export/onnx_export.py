"""Checkpoint -> verified ONNX encoder with its model card (the one artifact serving needs).

Steps: load the checkpoint (weights only, never pickled code) -> export the encoder branch with a
dynamic batch -> exact simplifications -> parity check against torch on real images -> card with
thresholds, calibration, recognition cuts by gallery size, training summary and provenance ->
content-hash version -> atomic write. A failed parity check writes nothing and says by how much
it failed. Calibration and recognition cuts come from the checkpoint (measured on the validation
classes when it was saved); a checkpoint older than them has them measured here, on its run's
validation classes if the training folder is still there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.card import card_from_checkpoint, save_atomic, with_card
from export.graph import OPSET, simplify, torch_to_onnx
from export.images import training_samples
from export.parity import (
    PARITY_MAX_ABS,
    PARITY_MIN_COSINE,
    check_parity,
    parity_failure,
    parity_inputs,
)
from training.checkpoint import load_checkpoint
from training.data import ImageSource, read_split, scan_image_folder
from training.openset import parents_of
from training.trust import measure_trust
from twinstream.errors import InputError, ModelError
from twinstream.modelcard import ModelCard


def export_onnx(checkpoint: str | Path, out: str | Path, sample_images: Sequence[bytes] = (),
                *, opset: int = OPSET, exporter: str = "dynamo",
                max_abs: float = PARITY_MAX_ABS, min_cosine: float = PARITY_MIN_COSINE,
                log: Callable[[str], None] | None = None) -> tuple[ModelCard, dict]:
    """Export the encoder of ``checkpoint`` to ``out``; returns its card and the parity report.

    ``sample_images`` are encoded image bytes for the parity check (16-64 is plenty). Without
    them, images of the folder the checkpoint was trained on are used if it still exists, and
    only then random inputs (the report says which).
    """
    log = log or (lambda _message: None)
    model, meta = load_checkpoint(checkpoint)
    spec = meta["preprocessing"]
    log(f"exporting {meta['encoder'].arch} encoder ({exporter} exporter, opset {opset})")
    raw = torch_to_onnx(model, spec.shape, opset, exporter)
    proto, applied = simplify(raw)

    inputs, source = parity_inputs(list(sample_images) or training_samples(meta), spec)
    check = check_parity(model, proto, inputs, max_abs, min_cosine)
    check["inputs"] = source
    if not check["ok"]:
        raise ModelError(parity_failure(check, "images" if source == "images" else
                                        "random inputs"))
    log(f"parity on {check['images']} {source}: max |diff| {check['max_abs_diff']:.1e}, "
        f"min cosine {check['min_cosine']:.7f}")

    provenance = {"exporter": f"torch.onnx ({exporter})", "opset": opset_of(proto),
                  "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": ort.__version__, "simplified": applied, "parity": check}
    card = card_from_checkpoint(meta, provenance)
    if not (card.calibration and card.recognition):
        card = replace(card, **measure_validation(model, meta, log))
    carded, card = with_card(proto, card)
    save_atomic(carded, out)
    return card, check


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def measure_validation(model: torch.nn.Module, meta: dict, log: Callable[[str], None]) -> dict:
    """Calibration and recognition cuts measured on the run's validation part, for checkpoints
    saved before training recorded them; {} (with a warning) when the data is gone."""
    split_file = Path(meta.get("path", "")).parent / "split.json"
    root = (meta.get("data") or {}).get("root")
    try:
        if not root or not split_file.is_file():
            raise InputError("no split.json or training folder")
        folder = read_split(split_file, scan_image_folder(root), "val")
    except InputError as exc:
        log(f"warning: no calibration or recognition cuts in the card: the checkpoint predates "
            f"them and its validation images cannot be read ({exc}); serving will fall back to "
            "the pair threshold")
        return {}
    source = ImageSource(folder.paths, meta["preprocessing"], cache_mb=0)
    vectors, labels = [], []
    with torch.no_grad():
        for start in range(0, len(source), 256):
            idx = list(range(start, min(start + 256, len(source))))
            arrays, kept = source.batch(idx)
            if kept:
                vectors.append(model(torch.from_numpy(arrays)).numpy())
                labels.append(folder.labels[[idx[k] for k in kept]])
    if not vectors or len(np.unique(np.concatenate(labels))) < 2:
        log("warning: too few readable validation images for calibration")
        return {}
    log(f"measuring calibration and recognition cuts on {len(folder.classes)} validation "
        "classes (the checkpoint predates them)")
    return measure_trust(np.concatenate(vectors), np.concatenate(labels),
                         parents=parents_of(folder.classes))
