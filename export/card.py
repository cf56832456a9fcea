"""The model card of an exported encoder: built from the checkpoint, hashed, written with it."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import onnx

from training.trust import card_fields
from twinstream.modelcard import ModelCard, content_version


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def card_from_checkpoint(meta: dict, provenance: dict[str, Any]) -> ModelCard:
    """Everything the checkpoint knows that a worker or a person needs, in card form.

    Thresholds come from the validation metrics stored with the checkpoint: the recommended pair
    threshold is at the equal-error rate, the others at target false-accept rates (e.g.
    ``far@0.01``); the calibration and the recognition cuts by gallery size were measured on the
    same validation classes (``training.trust``).
    """
    metrics = meta.get("metrics") or {}
    checkpoint = {"file": Path(meta.get("path", "")).name, "epoch": meta.get("epoch"),
                  "format_version": meta.get("format_version")}
    return ModelCard(
        embedding_dim=meta["encoder"].embedding_dim,
        preprocessing=meta["preprocessing"],
        **card_fields(metrics),
        loss=str(meta.get("loss", "")),
        architecture=meta["encoder"].to_dict(),
        training_data=dict(meta.get("data") or {}),
        metrics={k: v for k, v in metrics.items() if k in ("one_shot", "verification")},
        created_at=now(),
        provenance={**provenance, "checkpoint": checkpoint},
    )


def graph_bytes(proto: onnx.ModelProto) -> bytes:
    """The graph and weights without the card, serialised the same way every time."""
    bare = _copy(proto)
    del bare.metadata_props[:]
    return bare.SerializeToString(deterministic=True)


def model_version(proto: onnx.ModelProto, card: ModelCard) -> str:
    """Content hash of what decides an embedding: graph, weights, preprocessing, dim, precision."""
    semantics = json.dumps(card.semantics(), sort_keys=True).encode()
    return content_version(graph_bytes(proto), semantics)


def with_card(proto: onnx.ModelProto, card: ModelCard) -> tuple[onnx.ModelProto, ModelCard]:
    """A copy of the graph carrying the card (versioned) in ``metadata_props``; checker-clean."""
    card = card.with_version(model_version(proto, card))
    carded = _copy(proto)
    del carded.metadata_props[:]
    for key, value in card.to_metadata().items():
        entry = carded.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(carded, full_check=True)
    return carded, card


def save_atomic(proto: onnx.ModelProto, out: str | Path) -> Path:
    """Write via a temporary file and a rename, so a reader never sees half a model."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.partial")
    try:
        staged.write_bytes(proto.SerializeToString())
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return out


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    duplicate = onnx.ModelProto()
    duplicate.CopyFrom(proto)
    return duplicate


def read_card(proto: onnx.ModelProto, source: str) -> ModelCard:
    return ModelCard.from_metadata({p.key: p.value for p in proto.metadata_props}, source=source)
