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
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source} has a damaged model card: {exc}") from exc
        card.check()
        return card

    def check(self) -> None:
        if self.embedding_dim < 1:
            raise ModelError(
                f"model card: embedding_dim must be positive, got {self.embedding_dim}")
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


def content_version(*parts: bytes) -> str:
    """A short, stable content hash used as the model version everywhere downstream."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:16]
