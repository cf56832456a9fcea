"""Checkpoint -> ONNX encoder with the model card in ``metadata_props`` and a parity check."""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from training.checkpoint import load_checkpoint
from twinstream.errors import ModelError
from twinstream.modelcard import ModelCard, content_version
from twinstream.preprocess import preprocess_many
from twinstream.runtime import INPUT_NAME, OUTPUT_NAME, Encoder

OPSET = 17
PARITY_MAX_ABS = 1e-4
PARITY_MIN_COSINE = 0.9999


def card_from_checkpoint(meta: dict) -> ModelCard:
    metrics = meta.get("metrics") or {}
    verification = metrics.get("verification", {})
    thresholds = {k.removeprefix("threshold_"): float(v) for k, v in verification.items()
                  if k.startswith("threshold_")}
    return ModelCard(
        embedding_dim=meta["encoder"].embedding_dim,
        preprocessing=meta["preprocessing"],
        threshold=thresholds.get("eer"),
        thresholds=thresholds,
        loss=str(meta.get("loss", "")),
        architecture=meta["encoder"].to_dict(),
        training_data=dict(meta.get("data") or {}),
        metrics={k: v for k, v in metrics.items() if k in ("one_shot", "verification")},
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )


def write_with_card(model_proto: onnx.ModelProto, card: ModelCard, out: Path) -> ModelCard:
    """Attach the card, derive the version from the content (graph, weights, card), write."""
    def attach(c: ModelCard) -> None:
        del model_proto.metadata_props[:]
        for key, value in c.to_metadata().items():
            entry = model_proto.metadata_props.add()
            entry.key, entry.value = key, value

    attach(card.with_version(""))
    version = content_version(model_proto.SerializeToString())
    card = card.with_version(version)
    attach(card)
    onnx.checker.check_model(model_proto)
    onnx.save(model_proto, out)
    return card


def parity(model: torch.nn.Module, onnx_path: Path, inputs: np.ndarray) -> dict:
    """Compare onnxruntime against torch on the same preprocessed inputs."""
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    got = Encoder(onnx_path).embed_arrays(inputs)
    max_abs = float(np.max(np.abs(got - expected)))
    cosine = float(np.min(np.sum(got * expected, axis=1)))
    return {"images": len(inputs), "max_abs_diff": max_abs, "min_cosine": cosine,
            "ok": max_abs <= PARITY_MAX_ABS and cosine >= PARITY_MIN_COSINE}


def export_onnx(checkpoint: str | Path, out: str | Path,
                sample_images: Sequence[bytes] = ()) -> tuple[ModelCard, dict]:
    """Export the encoder branch; fails (and writes nothing) if parity with torch is off."""
    model, meta = load_checkpoint(checkpoint)
    spec = meta["preprocessing"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.staged")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.onnx"
            torch.onnx.export(model, (torch.zeros(2, *spec.shape),), str(raw),
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=OPSET, dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}})
            proto = onnx.load(str(raw))
        card = write_with_card(proto, card_from_checkpoint(meta), staged)
        inputs, _, _ = preprocess_many(list(sample_images), spec)
        if len(inputs) == 0:  # no real images given: random inputs still prove the graph
            inputs = np.random.default_rng(0).standard_normal((8, *spec.shape)).astype(np.float32)
        check = parity(model, staged, inputs)
        if not check["ok"]:
            raise ModelError(
                f"parity check failed: max |onnxruntime - torch| = {check['max_abs_diff']:.2e} "
                f"(limit {PARITY_MAX_ABS:g}), min cosine = {check['min_cosine']:.6f} "
                f"(limit {PARITY_MIN_COSINE})")
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    return card, check
