"""fp32 ONNX encoder -> statically quantized int8 (QDQ) encoder, calibrated on real images.

Weights are int8 (per output channel by default), activations uint8 with ranges observed on the
calibration images; onnxruntime fuses the QuantizeLinear/DequantizeLinear pairs into
``QLinearConv`` and friends. The result is compared with its fp32 parent before anything is
written: embedding cosine, few-shot accuracy on labelled held-out images, and speed. Its card
says ``precision: int8``, records those numbers, and gets its own version (its embeddings differ).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from export.card import now, read_card, save_atomic, with_card
from export.parity import cosines, run, session_for
from export.timing import interleaved
from training.metrics import n_way_k_shot
from twinstream.errors import InputError, ModelError
from twinstream.modelcard import ModelCard
from twinstream.runtime import INPUT_NAME

CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax,
                       "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
MIN_MEAN_COSINE = 0.99  # below this the int8 model is broken, not merely less exact


class _Batches(CalibrationDataReader):
    def __init__(self, arrays: np.ndarray, batch: int):
        self._feeds = iter([{INPUT_NAME: arrays[i:i + batch]}
                            for i in range(0, len(arrays), batch)])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


@contextlib.contextmanager
def _quiet_quantizer():
    """The quantizer logs advice ("consider pre-processing") on the root logger; our graph is
    already simplified and shape-inferred, so the advice is noise here."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has VNNI (AVX512-VNNI or AVX-VNNI), read from /proc/cpuinfo.

    Without it, onnxruntime's u8 x s8 kernels add pairs of products in int16 (vpmaddubsw), which
    saturates on full-range weights: the int8 model then drifts far from fp32 (mean cosine 0.975
    against 0.999 on this project's test model, measured on an AVX2-only EPYC).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False  # not Linux: assume the older kernels, reduce the range to be safe
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"})


def reduce_range_for(choice: str) -> bool:
    """``--reduce-range auto|on|off`` -> whether to quantize weights to 7 bits."""
    return {"on": True, "off": False}.get(choice, not cpu_has_vnni())


def quantize_graph(proto: onnx.ModelProto, calibration: np.ndarray, *, per_channel: bool = True,
                   reduce_range: bool = False, method: str = "minmax",
                   batch: int = 32) -> onnx.ModelProto:
    """The QDQ int8 graph of ``proto`` (card not included)."""
    if method not in CALIBRATION_METHODS:
        raise InputError(f"unknown calibration method {method!r} "
                         f"(known: {', '.join(CALIBRATION_METHODS)})")
    if len(calibration) == 0:
        raise InputError("int8 calibration needs at least one image that decodes")
    bare = onnx.ModelProto()
    bare.CopyFrom(proto)
    del bare.metadata_props[:]
    with tempfile.TemporaryDirectory() as tmp, _quiet_quantizer():
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(bare, source)
        quantize_static(str(source), str(target), _Batches(calibration, batch),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=CALIBRATION_METHODS[method])
        quantized = onnx.load(target)
    return onnx.shape_inference.infer_shapes(quantized)


def compare(fp32: onnx.ModelProto, int8: onnx.ModelProto, images: np.ndarray,
            labels: np.ndarray | None = None, ways: int = 5, episodes: int = 1000,
            speed_batch: int = 32, speed_reps: int = 10) -> dict:
    """What int8 costs and gains against fp32: cosine per image, few-shot accuracy, speed."""
    fp32_session, int8_session = session_for(fp32), session_for(int8)
    a, b = run(fp32_session, images), run(int8_session, images)
    cos = cosines(a, b)
    report: dict = {"images": len(images),
                    "cosine_vs_fp32": {"min": float(cos.min()), "mean": float(cos.mean())}}
    if labels is not None:
        ways = min(ways, len(np.unique(labels)))
        # Same seed: both models answer the very same episodes, so the difference is paired.
        acc = {name: n_way_k_shot(emb, labels, ways=ways, shots=1, episodes=episodes, seed=0)
               for name, emb in (("fp32", a), ("int8", b))}
        report["one_shot"] = {
            "ways": ways, "episodes": episodes, "classes": len(np.unique(labels)),
            "fp32": acc["fp32"]["accuracy"], "int8": acc["int8"]["accuracy"],
            "change_points": 100 * (acc["int8"]["accuracy"] - acc["fp32"]["accuracy"])}
    batch = np.resize(images, (speed_batch, *images.shape[1:]))
    medians = interleaved({"fp32": lambda: run(fp32_session, batch),
                           "int8": lambda: run(int8_session, batch)}, rounds=speed_reps)
    report["speed"] = {"batch": speed_batch,
                       "fp32_ms": 1000 * medians["fp32"], "int8_ms": 1000 * medians["int8"],
                       "speedup": medians["fp32"] / medians["int8"]}
    return report


def quantize_int8(fp32_path: str | Path, out: str | Path, calibration: np.ndarray,
                  evaluation: np.ndarray | None = None, labels: np.ndarray | None = None, *,
                  per_channel: bool = True, reduce_range: bool | None = None,
                  method: str = "minmax", ways: int = 5, min_mean_cosine: float = MIN_MEAN_COSINE,
                  log: Callable[[str], None] | None = None) -> tuple[ModelCard, dict]:
    """Quantize the exported fp32 model at ``fp32_path``; write the int8 model to ``out``.

    ``evaluation`` (default: the calibration images) measures cosine against fp32; with
    ``labels`` it also measures one-shot accuracy. Nothing is written if the mean cosine is
    below ``min_mean_cosine``. ``reduce_range`` None: on exactly when the CPU lacks VNNI.
    """
    log = log or (lambda _message: None)
    if reduce_range is None:
        reduce_range = reduce_range_for("auto")
    fp32 = onnx.load(str(fp32_path))
    parent = read_card(fp32, str(fp32_path))
    if parent.precision != "fp32":
        raise InputError(f"{fp32_path} is already {parent.precision}; quantize the fp32 model")
    log(f"calibrating int8 on {len(calibration)} images ({method}, "
        f"{'per-channel' if per_channel else 'per-tensor'} weights)")
    int8 = quantize_graph(fp32, calibration, per_channel=per_channel, reduce_range=reduce_range,
                          method=method)
    held_out = evaluation if evaluation is not None and len(evaluation) else calibration
    report = compare(fp32, int8, held_out, labels if held_out is evaluation else None, ways=ways)
    if report["cosine_vs_fp32"]["mean"] < min_mean_cosine:
        raise ModelError(f"int8 model is too far from fp32: mean cosine "
                         f"{report['cosine_vs_fp32']['mean']:.4f} < {min_mean_cosine} on "
                         f"{report['images']} images; nothing was written (try more calibration "
                         "images or --calibration-method percentile)")
    quantization = {
        "format": "QDQ", "weights": f"int8 {'per-channel' if per_channel else 'per-tensor'}",
        "activations": "uint8 per-tensor", "reduce_range": reduce_range,
        "calibration": {"images": len(calibration), "method": method},
        "fp32_version": parent.version,
        **{k: v for k, v in report.items() if k in ("cosine_vs_fp32", "one_shot")},
        "evaluated_on": report["images"]}
    provenance = {k: v for k, v in parent.provenance.items() if k != "parity"}
    provenance["fp32_parity"] = parent.provenance.get("parity")  # int8 vs fp32: quantization
    provenance["quantizer"] = f"onnxruntime {ort.__version__} quantize_static"
    card = replace(parent, precision="int8", created_at=now(), quantization=quantization,
                   provenance=provenance)
    carded, card = with_card(int8, card)
    save_atomic(carded, out)
    return card, report
