"""The model card: what a worker or a query needs to know about an encoder.

It travels inside the ONNX file.

Each field is one ``metadata_props`` entry named ``twinstream.<field>`` holding JSON, so tools such
as Netron show it readably and a reader never needs anything but the ``.onnx`` file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from twinstream.errors import ModelError
from twinstream.preprocess import Preprocessing

PREFIX = "twinstream."
CARD_SCHEMA = 1
METRICS = ("cosine",)
PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class ModelCard:
    embedding_dim: int
    preprocessing: Preprocessing
    metric: str = "cosine"
    # Recommended same/different cut on cosine similarity (at the validation equal-error rate).
    threshold: float | None = None
    # Named alternatives, e.g. {"eer": 0.71, "far@0.01": 0.83}.
    thresholds: dict[str, float] = field(default_factory=dict)
    # Cosine -> P(same identity): {"method": "platt", "slope", "intercept", "prior", ...}
    # (twinstream.calibration.Calibration). Empty in cards exported before it existed.
    calibration: dict[str, Any] = field(default_factory=dict)
    # Recognition cuts by gallery size: {"gallery_sizes": [1, 10, 100, 1000], "target_fpirs":
    # [...], "thresholds": [[per size] per FPIR], "default_target_fpir": 0.05, ...}; read it
    # with twinstream.calibration.recognition_threshold. Empty in older cards.
    recognition: dict[str, Any] = field(default_factory=dict)
    loss: str = ""
    architecture: dict[str, Any] = field(default_factory=dict)
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    # Numeric precision of the graph's arithmetic: "fp32", or "int8" for a quantized (QDQ) model.
    precision: str = "fp32"
    # For int8: how it was calibrated and what it costs against its fp32 parent (cosine, accuracy).
    quantization: dict[str, Any] = field(default_factory=dict)
    # How the file was made: exporter, opset, library versions, source checkpoint, parity check.
    provenance: dict[str, Any] = field(default_factory=dict)
    # Content hash of the model (graph + weights + the rest of the card): the model version.
    version: str = ""
    schema: int = CARD_SCHEMA

    def to_metadata(self) -> dict[str, str]:
        """The card as ONNX ``metadata_props`` (string key -> JSON string)."""
        props = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Preprocessing):
                value = value.to_dict()
            props[PREFIX + f.name] = json.dumps(value, sort_keys=True)
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "model") -> ModelCard:
        if PREFIX + "embedding_dim" not in props:
            raise ModelError(
                f"{source} has no twinstream model card in its metadata; export it with "
                "'twinstream export', or pass --allow-no-card with --size/--mean/--std")
        try:
            values = {f.name: json.loads(props[PREFIX + f.name])
                      for f in fields(cls) if PREFIX + f.name in props}
            values["preprocessing"] = Preprocessing.from_dict(values["preprocessing"])
            card = cls(**values)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"{source} has a damaged model card: {exc}") from exc
        card.check()
        return card

    def check(self) -> None:
        """Refuse a card whose values a worker or a query would trip over later (a model file
        is untrusted input: its card may have been edited by hand)."""
        dim = self.embedding_dim
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ModelError(f"model card: embedding_dim must be a positive integer, got "
                             f"{dim!r:.40}")
        for name in ("metric", "precision", "version", "loss", "created_at"):
            if not isinstance(getattr(self, name), str):
                raise ModelError(f"model card: {name} must be text, got "
                                 f"{getattr(self, name)!r:.40}")
        for name in ("thresholds", "architecture", "training_data", "metrics", "quantization",
                     "provenance"):
            if not isinstance(getattr(self, name), dict):
                raise ModelError(f"model card: {name} must be an object")
        cuts = {"threshold": self.threshold, **{f"thresholds.{k}": v
                                                for k, v in self.thresholds.items()}}
        for name, cut in cuts.items():
            if cut is not None and (not isinstance(cut, (int, float)) or isinstance(cut, bool)
                                    or not -1.0 <= cut <= 1.0):
                raise ModelError(f"model card: {name} must be a cosine in [-1, 1], got "
                                 f"{cut!r:.40}")
        if self.metric not in METRICS:
            raise ModelError(f"model card: unsupported metric {self.metric!r} (known: {METRICS})")
        if self.precision not in PRECISIONS:
            raise ModelError(
                f"model card: unknown precision {self.precision!r} (known: {PRECISIONS})")

    def with_version(self, version: str) -> ModelCard:
        return replace(self, version=version)

    def semantics(self) -> dict[str, Any]:
        """The fields that decide what an embedding means; part of the content hash (version).

        Descriptive fields (thresholds, metrics, creation time) are left out, so exporting the same
        weights twice gives the same version and an index built with one serves the other.
        """
        return {"embedding_dim": self.embedding_dim, "metric": self.metric,
                "precision": self.precision, "preprocessing": self.preprocessing.to_dict()}

    def to_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in
                ((k[len(PREFIX):], v) for k, v in self.to_metadata().items())}


def verify_version(card: ModelCard, model_bytes: bytes, source: str = "model") -> None:
    """Refuse a file whose graph or weights are not the ones its card's version names.

    The version is the content hash of the graph and weights (the file without its
    ``metadata_props``) and of the card's ``semantics``, exactly as export computed it; an
    edited graph under a kept card would otherwise write vectors of another embedding space
    into a live index under the old version's name.
    """
    semantics = json.dumps(card.semantics(), sort_keys=True).encode()
    actual = content_version(without_metadata(model_bytes, source), semantics)
    if actual != card.version:
        raise ModelError(f"{source}: its graph and weights hash to version {actual}, but its "
                         f"card says {card.version!r:.40}: the file was changed after export; "
                         "export it again")


# ModelProto's field number of ``metadata_props`` (onnx.proto): where the card lives.
_METADATA_PROPS_FIELD = 14


def without_metadata(model_bytes: bytes, source: str = "model") -> bytes:
    """A serialised ONNX ModelProto without its ``metadata_props``, read off the protobuf wire
    format (no ``onnx`` package at serving time). Protobuf writes fields in number order, so
    this is byte for byte what ``SerializeToString(deterministic=True)`` of the same model
    without metadata gives (``export.card.graph_bytes``; a unit test holds them equal)."""
    out = bytearray()
    pos, end = 0, len(model_bytes)
    while pos < end:
        start = pos
        key, pos = _varint(model_bytes, pos, source)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, pos = _varint(model_bytes, pos, source)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(model_bytes, pos, source)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ModelError(f"{source} is not an ONNX model (protobuf wire type {wire_type})")
        if pos > end:
            raise ModelError(f"{source} is not an ONNX model (truncated)")
        if number != _METADATA_PROPS_FIELD:
            out += model_bytes[start:pos]
    return bytes(out)


def _varint(data: bytes, pos: int, source: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelError(f"{source} is not an ONNX model (bad protobuf varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def content_version(*parts: bytes) -> str:
    """A short, stable content hash used as the model version everywhere downstream."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:16]
