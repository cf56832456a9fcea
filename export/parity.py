"""The parity check: does onnxruntime compute what torch computes, on real preprocessed images?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

from twinstream.errors import ModelError
from twinstream.preprocess import Preprocessing, preprocess_many
from twinstream.runtime import INPUT_NAME, OUTPUT_NAME, session_options

PARITY_MAX_ABS = 1e-4
PARITY_MIN_COSINE = 0.9999


def session_for(proto: onnx.ModelProto, threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session on an in-memory graph, with the runtime's own options."""
    return ort.InferenceSession(proto.SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])


def run(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]


def parity_inputs(images: Sequence[bytes], spec: Preprocessing, count: int = 16
                  ) -> tuple[np.ndarray, str]:
    """Real images through the shared preprocessing; random inputs only when none decode."""
    inputs, _, _ = preprocess_many(list(images), spec)
    if len(inputs):
        return inputs, "images"
    noise = np.random.default_rng(0).standard_normal((count, *spec.shape)).astype(np.float32)
    return noise, "random"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (in float64, so the check itself adds no rounding)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)


def check_parity(model: torch.nn.Module, proto: onnx.ModelProto, inputs: np.ndarray,
                 max_abs: float = PARITY_MAX_ABS, min_cosine: float = PARITY_MIN_COSINE) -> dict:
    """Compare onnxruntime against torch on the same inputs, as a batch and one image alone
    (which also proves the batch dimension is really dynamic)."""
    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy()
    session = session_for(proto)
    try:
        got = run(session, inputs)
        single = run(session, inputs[:1])
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot run the exported graph: "
                         f"{str(exc).splitlines()[0]}") from exc
    if got.shape != expected.shape:
        raise ModelError(f"the exported graph outputs {list(got.shape)} for a batch where torch "
                         f"outputs {list(expected.shape)}")
    diff = float(max(np.max(np.abs(got - expected)), np.max(np.abs(single - expected[:1]))))
    cosine = float(min(cosines(got, expected).min(), cosines(single, expected[:1]).min()))
    return {"images": len(inputs), "max_abs_diff": diff, "min_cosine": cosine,
            "limits": {"max_abs_diff": max_abs, "min_cosine": min_cosine},
            "ok": bool(diff <= max_abs and cosine >= min_cosine)}


def parity_failure(check: dict, source: str) -> str:
    limits = check["limits"]
    over = check["max_abs_diff"] / limits["max_abs_diff"] if limits["max_abs_diff"] > 0 else 0
    return (f"parity check failed on {check['images']} {source}: max |onnxruntime - torch| = "
            f"{check['max_abs_diff']:.2e} (limit {limits['max_abs_diff']:g}, {over:.1f}x), "
            f"min cosine = {check['min_cosine']:.7f} (limit {limits['min_cosine']}); "
            "nothing was written")
