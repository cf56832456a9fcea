"""``twinstream export``, ``model-card`` and ``embed``: the ONNX artifact and its runtime."""

from __future__ import annotations

from pathlib import Path

from twinstream.cli.encoder_options import (
    add_encoder_options,
    load_encoder,
    parse_floats,
    parse_size,
)
from twinstream.cli.main import add_command, add_group
from twinstream.errors import ImageDecodeError, InputError
from twinstream.files import expand_paths
from twinstream.preprocess import FITS, INTERPOLATIONS


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

    group = add_group(subparsers, "card", "model cards of foreign encoders (bring your own ONNX)")
    p = add_command(group, "write", card_write,
                    "write a twinstream model card into a foreign ONNX encoder (and measure its "
                    "thresholds on a labelled folder)",
                    description="Write a twinstream model card into an ONNX encoder made "
                    "elsewhere (input float [N, C, H, W], output [N, D]), so workers, queries "
                    "and the API use it like a model from 'twinstream export'. With --calibrate "
                    "DIR (one sub-folder per class) the pair threshold, the recognition "
                    "thresholds by gallery size and the probability calibration are measured "
                    "as training measures them on its validation classes.",
                    settings=("model.threads",))
    p.add_argument("model", metavar="MODEL.onnx", help="the foreign encoder")
    p.add_argument("--mean", required=True, metavar="M[,M,M]",
                   help="per-channel mean after scaling pixels to [0, 1], e.g. "
                        "0.485,0.456,0.406 (one value: every channel)")
    p.add_argument("--std", required=True, metavar="S[,S,S]",
                   help="per-channel standard deviation, e.g. 0.229,0.224,0.225")
    p.add_argument("--size", metavar="HxW",
                   help="input size, e.g. 224 or 64x48 (default: the graph's, when it fixes it)")
    p.add_argument("--channels", type=int, choices=(1, 3),
                   help="1 = grayscale, 3 = RGB (default: the graph's, else 3)")
    p.add_argument("--interpolation", choices=sorted(INTERPOLATIONS), default="bilinear",
                   help="resize filter (default: %(default)s)")
    p.add_argument("--fit", choices=FITS, default="stretch",
                   help="stretch to the size, or pad keeping the aspect ratio (default: "
                        "%(default)s)")
    p.add_argument("--invert", action="store_true",
                   help="x -> 1 - x after scaling (dark ink on light paper) (default: off)")
    p.add_argument("--calibrate", metavar="DIR",
                   help="labelled images (one sub-folder per class, classes the encoder was not "
                        "trained on) to measure thresholds and calibration on (default: none; "
                        "the card then has no thresholds)")
    p.add_argument("--out", metavar="OUT.onnx",
                   help="write the carded model here (default: replace MODEL.onnx, atomically)")
    p.add_argument("--force", action="store_true",
                   help="replace a twinstream card the file already has")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration's pairs and episodes (default: 0)")

    p = add_command(subparsers, "model-card", model_card,
                    "print the model card of an .onnx file (and the provider it runs on here)",
                    settings=("model.providers",))
    p.add_argument("model", help="the .onnx file")

    p = add_command(subparsers, "embed", embed, "embed images with an ONNX encoder",
                    settings=("model.path", "model.threads", "model.inter_threads",
                              "model.providers", "worker.batch"))
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


def card_write(args, settings, out) -> None:
    from export.foreign import ForeignFlags, write_card

    flags = ForeignFlags(mean=parse_floats(args.mean, "--mean"),
                         std=parse_floats(args.std, "--std"),
                         size=parse_size(args.size) if args.size else None,
                         channels=args.channels, interpolation=args.interpolation,
                         invert=args.invert, fit=args.fit)
    written = write_card(args.model, flags, args.out, calibrate=args.calibrate,
                         force=args.force, seed=args.seed, threads=settings.model.threads,
                         log=out.info,
                         progress=lambda it: out.progress(it, desc="embedding", unit="batch"))
    card = written.card
    if written.calibrated is None:
        out.warn("no --calibrate DIR: the card has no thresholds or calibration; verify and "
                 "recognize will guess (or need --threshold): calibrate on labelled images")
    out.result({"out": str(written.out), "card": card.to_dict(),
                "calibrated_on": written.calibrated},
               f"wrote {written.out} (version {card.version}, {card.embedding_dim}-d"
               + (f", pair threshold {card.threshold:.4f}" if card.threshold is not None
                  else ", uncalibrated") + ")")


def model_card(args, settings, out) -> None:
    from twinstream.runtime import Encoder

    encoder = Encoder(args.model, providers=settings.model.providers)
    card, runtime = encoder.card, encoder.runtime_info()
    out.result({**card.to_dict(), "runtime": runtime},
               describe(args.model, card, runtime))


def describe(path: str, card, runtime: dict | None = None) -> str:
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
    if runtime:
        rows.append(("runs on", f"{runtime['provider']} here (onnxruntime "
                                f"{runtime['onnxruntime']}; providers "
                                f"{', '.join(runtime['providers'])})"))
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
