"""``twinstream export``, ``model-card`` and ``embed``: the ONNX artifact and its runtime."""

from __future__ import annotations

from pathlib import Path

from twinstream.cli.encoder_options import add_encoder_options, load_encoder
from twinstream.cli.main import add_command
from twinstream.errors import ImageDecodeError, InputError
from twinstream.files import expand_paths


def register(subparsers) -> None:
    p = add_command(subparsers, "export", export,
                    "export a checkpoint's encoder to ONNX with its model card (and int8)")
    p.add_argument("checkpoint", help="best.pt, or a run directory holding one")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--sample", nargs="*", default=[], metavar="PATH",
                   help="real images (files, folders, globs) for the parity check (default: "
                        "the checkpoint's training folder)")
    p.add_argument("--samples", type=int, default=64, metavar="N",
                   help="how many of them to check (default 64)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 21)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch's exporter (default dynamo; torchscript is the legacy one)")
    group = p.add_argument_group("int8")
    group.add_argument("--int8", action="store_true",
                       help="also write a statically quantized int8 (QDQ) model")
    group.add_argument("--calibration", metavar="DIR",
                       help="real images to calibrate int8 on (default: the training folder)")
    group.add_argument("--calibration-images", type=int, default=128, metavar="N")
    group.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"),
                       default="minmax")
    group.add_argument("--per-tensor", action="store_true",
                       help="one weight scale per tensor instead of per output channel")
    group.add_argument("--reduce-range", choices=("auto", "on", "off"), nargs="?", const="on",
                       default="auto",
                       help="7-bit weights: avoids int16 saturation on x86 CPUs without VNNI "
                            "(older than AVX512-VNNI / AVX-VNNI), at some accuracy; auto: on "
                            "exactly when this CPU lacks VNNI (default: %(default)s)")
    group.add_argument("--eval", metavar="DIR",
                       help="held-out images, one sub-folder per class, for the one-shot "
                            "accuracy of int8 vs fp32 (default: calibration images not used)")
    group.add_argument("--int8-out", metavar="PATH",
                       help="where the int8 model goes (default: OUT with .int8.onnx)")

    p = add_command(subparsers, "model-card", model_card, "print the model card of an .onnx file")
    p.add_argument("model", help="the .onnx file")

    p = add_command(subparsers, "embed", embed, "embed images with an ONNX encoder",
                    settings=("model.path", "model.threads", "model.inter_threads",
                              "worker.batch"))
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("--out", metavar="vectors.npy",
                   help="write the vectors ([embedded images, dim] float32) to this .npy file")
    add_encoder_options(p)


def export(args, settings, out) -> None:
    from export.graph import OPSET
    from export.images import read_bytes, sample_paths
    from export.onnx_export import export_onnx

    if args.calibration and not args.int8:
        raise InputError("--calibration only applies with --int8")
    target = Path(args.out)
    int8_target = Path(args.int8_out) if args.int8_out else target.with_suffix(".int8.onnx")
    if args.int8 and int8_target.resolve() == target.resolve():
        raise InputError("--int8-out must differ from --out")
    samples = read_bytes(sample_paths(expand_paths(args.sample), args.samples)) \
        if args.sample else []
    card, parity = export_onnx(args.checkpoint, target, samples, opset=args.opset or OPSET,
                               exporter=args.exporter, log=out.info)
    if parity["inputs"] == "random":
        out.warn("parity was checked on random inputs only: no --sample images decoded and the "
                 "training folder is gone; pass --sample DIR to check on real images")
    result = {"out": str(target), "card": card.to_dict(), "parity": parity}
    text = [f"wrote {target} (version {card.version}, {card.embedding_dim}-d, fp32); parity on "
            f"{parity['images']} {parity['inputs']}: max |onnxruntime - torch| "
            f"{parity['max_abs_diff']:.1e}, min cosine {parity['min_cosine']:.7f}"]
    if args.int8:
        int8_card, report = _export_int8(args, target, int8_target, card, out)
        result["int8"] = {"out": str(int8_target), "card": int8_card.to_dict(), "report": report}
        text.append(_int8_summary(int8_target, int8_card, report))
    out.result(result, "\n".join(text))


def _export_int8(args, fp32_path: Path, target: Path, card, out):
    from export.images import calibration_set, evaluation_set
    from export.quantize import quantize_int8, reduce_range_for

    source = args.calibration or card.training_data.get("root")
    if not source or not Path(source).exists():
        raise InputError("--int8 needs --calibration DIR (the checkpoint's training folder "
                         f"{source!r} is not there)")
    spec = card.preprocessing
    calibration, used = calibration_set(source, spec, args.calibration_images)
    held_out = evaluation_set(args.eval or source, spec, exclude=() if args.eval else used)
    if held_out is None:
        out.warn("no labelled held-out images (--eval DIR with one sub-folder per class): "
                 "int8 accuracy is not measured, only cosine against fp32")
    return quantize_int8(fp32_path, target, calibration,
                         held_out.arrays if held_out else None,
                         held_out.labels if held_out else None,
                         per_channel=not args.per_tensor,
                         reduce_range=reduce_range_for(args.reduce_range),
                         method=args.calibration_method,
                         log=out.info)


def _int8_summary(path: Path, card, report: dict) -> str:
    cos, speed = report["cosine_vs_fp32"], report["speed"]
    text = (f"wrote {path} (version {card.version}, int8): {speed['speedup']:.2f}x the speed of "
            f"fp32 at batch {speed['batch']}; cosine to fp32 mean {cos['mean']:.5f}, "
            f"min {cos['min']:.5f} on {report['images']} images")
    if "one_shot" in report:
        shot = report["one_shot"]
        text += (f"; {shot['ways']}-way one-shot {shot['fp32']:.3f} -> {shot['int8']:.3f} "
                 f"({shot['change_points']:+.1f} points)")
    return text


def model_card(args, settings, out) -> None:
    from twinstream.runtime import Encoder

    card = Encoder(args.model).card
    out.result(card.to_dict(), describe(args.model, card))


def describe(path: str, card) -> str:
    """The card as a person reads it: the essentials first, then everything else."""
    spec = card.preprocessing
    colour = "RGB" if spec.channels == 3 else "grayscale"
    rows = [
        ("model", path),
        ("version", f"{card.version}  ({card.precision})"),
        ("embedding", f"{card.embedding_dim}-d, metric {card.metric}, L2-normalised"),
        ("input", f"{spec.channels}x{spec.height}x{spec.width} {colour}, {spec.interpolation} "
                  f"resize ({spec.fit}), mean {list(spec.mean)} std {list(spec.std)}"
                  f"{', inverted' if spec.invert else ''}, "
                  f"transparency onto {list(spec.background)}"),
        ("threshold", _thresholds(card)),
        ("recognition", _recognition(card)),
        ("probability", _calibration(card)),
        ("architecture", ", ".join(f"{k}={v}" for k, v in card.architecture.items())),
        ("loss", card.loss or "-"),
        ("training data", _training_data(card.training_data)),
        ("created", card.created_at or "-"),
    ]
    one_shot = card.metrics.get("one_shot") or {}
    if one_shot:
        rows.append(("validation", f"{one_shot.get('ways')}-way one-shot accuracy "
                                   f"{one_shot.get('accuracy', 0):.3f}"))
    if card.quantization:
        q = card.quantization
        shot = q.get("one_shot")
        rows.append(("quantization", f"{q.get('weights')} weights, {q.get('activations')} "
                     f"activations, from fp32 {q.get('fp32_version')}; cosine to fp32 mean "
                     f"{q['cosine_vs_fp32']['mean']:.5f}"
                     + (f"; one-shot {shot['change_points']:+.1f} points" if shot else "")))
    parity = card.provenance.get("parity")
    if parity:
        rows.append(("parity", f"max |onnxruntime - torch| {parity['max_abs_diff']:.1e} on "
                               f"{parity['images']} {parity.get('inputs', 'images')}"))
    if card.provenance.get("exporter"):
        p = card.provenance
        rows.append(("exported by", f"{p['exporter']}, opset {p.get('opset')}, torch "
                                    f"{p.get('torch')}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _thresholds(card) -> str:
    if card.threshold is None and not card.thresholds:
        return "none recorded (no validation ROC)"
    named = ", ".join(f"{k} {v:.4f}" for k, v in card.thresholds.items())
    head = f"{card.threshold:.4f} (cosine, at the validation EER)" \
        if card.threshold is not None else "-"
    return f"{head}; {named}" if named else head


def _training_data(data: dict) -> str:
    duplicates = data.get("duplicates") or {}
    rows = [f"{k}={v}" for k, v in data.items() if k != "duplicates"]
    if duplicates:
        rows.append(f"duplicates ({duplicates.get('policy')}): "
                    f"{duplicates.get('copied_classes', 0)} copied class(es), "
                    f"{duplicates.get('shared_images', 0)} shared image(s)")
    return ", ".join(rows) or "-"


def _recognition(card) -> str:
    """The card's recognition cuts at its default target FPIR, by gallery size."""
    from twinstream.calibration import DEFAULT_TARGET_FPIR, recognition_threshold

    curve = card.recognition
    if not curve:
        return "no cuts by gallery size (an older card): recognition uses the pair threshold"
    target = curve.get("default_target_fpir", DEFAULT_TARGET_FPIR)
    cuts = ", ".join(f"{size}: {recognition_threshold(card, size, target).threshold:.4f}"
                     for size in curve.get("gallery_sizes", ()))
    return (f"cosine cut by enrolled identities at FPIR {target:g} (strangers accepted): "
            f"{cuts} (measured on {curve.get('measured_on', 'validation classes')})")


def _calibration(card) -> str:
    from twinstream.calibration import card_calibration

    calibration = card_calibration(card)
    if calibration is None:
        return "none (an older card): scores are cosines only"
    ece = card.calibration.get("ece_validation")
    return (f"P(same) = sigmoid({calibration.slope:.2f} x cosine {calibration.intercept:+.2f}) "
            f"({calibration.method}, prior {calibration.prior:g}"
            + (f", validation ECE {ece:.3f}" if ece is not None else "") + ")")


def embed(args, settings, out) -> None:
    import numpy as np

    encoder = load_encoder(settings, args)
    paths = expand_paths(args.images)
    batch = settings.worker.batch
    vectors, rows, failed = [], [], []
    for start in out.progress(range(0, len(paths), batch), desc="embedding", unit="batch"):
        chunk = paths[start:start + batch]
        blobs, readable = [], []
        for path in chunk:
            try:
                blobs.append(path.read_bytes())
                readable.append(path)
            except OSError as exc:
                failed.append({"path": str(path), "reason": f"cannot read: {exc.strerror}"})
        embedded = encoder.embed_bytes(blobs)
        vectors.append(embedded.vectors)
        rows.extend(str(readable[i]) for i in embedded.kept)
        failed.extend({"path": str(readable[i]), "reason": reason}
                      for i, reason in embedded.failed.items())
    for item in failed:
        out.warn(f"{item['path']}: {item['reason']}")
    if not rows:
        raise ImageDecodeError(f"none of the {len(paths)} image(s) could be embedded "
                               f"(first: {failed[0]['path']}: {failed[0]['reason']})")
    matrix = np.concatenate(vectors).astype(np.float32)
    result = {"model": {"path": str(encoder.path), "version": encoder.version,
                        "dim": encoder.dim, "precision": encoder.card.precision},
              "rows": rows, "failed": failed, "out": args.out}
    if args.out:
        _save_npy(Path(args.out), matrix)
        text = (f"wrote {args.out}: {len(rows)} x {encoder.dim} float32 (rows in the order of "
                f"the images; {len(failed)} failed), model {encoder.version}")
    else:
        result["vectors"] = matrix
        text = "\n".join(f"{path}\t{_preview(v)}" for path, v in zip(rows, matrix, strict=True))
    out.result(result, text)


def _preview(vector, shown: int = 6) -> str:
    head = " ".join(f"{x:+.4f}" for x in vector[:shown])
    return f"[{head}{' ...' if len(vector) > shown else ''}] ({len(vector)}-d)"


def _save_npy(path: Path, matrix) -> None:
    import os

    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    with open(staged, "wb") as fh:
        np.save(fh, matrix)
    os.replace(staged, path)
