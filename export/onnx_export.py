"""Checkpoint -> verified ONNX encoder with its model card (the one artifact serving needs).

Steps: load the checkpoint (weights only, never pickled code) -> export the encoder branch with a
dynamic batch -> exact simplifications -> parity check against torch on real images -> card with
thresholds, training summary and provenance -> content-hash version -> atomic write. A failed
parity check writes nothing and says by how much it failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

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
from twinstream.errors import ModelError
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
    carded, card = with_card(proto, card_from_checkpoint(meta, provenance))
    save_atomic(carded, out)
    return card, check


def opset_of(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
