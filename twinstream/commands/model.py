"""``twinstream export`` and ``twinstream model-card``: the ONNX artifact."""

from __future__ import annotations

import random

from twinstream.cli import add_command
from twinstream.files import expand_paths


def register(subparsers) -> None:
    p = add_command(subparsers, "export", export,
                    "export a checkpoint's encoder to ONNX with its model card")
    p.add_argument("checkpoint", help="best.pt, or a run directory holding one")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--sample", nargs="*", default=[], metavar="PATH",
                   help="real images (files, folders, globs) for the parity check")

    p = add_command(subparsers, "model-card", model_card, "print the model card of an .onnx file")
    p.add_argument("model", help="the .onnx file")


def export(args, settings, out) -> None:
    from export.onnx_export import export_onnx

    paths = expand_paths(args.sample) if args.sample else []
    paths = random.Random(0).sample(paths, min(len(paths), 64))
    card, parity = export_onnx(args.checkpoint, args.out, [p.read_bytes() for p in paths])
    out.result({"out": args.out, "card": card.to_dict(), "parity": parity},
               f"wrote {args.out} (version {card.version}, dim {card.embedding_dim}); parity on "
               f"{parity['images']} images: max |diff| {parity['max_abs_diff']:.1e}")


def model_card(args, settings, out) -> None:
    from twinstream.runtime import Encoder

    card = Encoder(args.model).card
    lines = [f"{k}: {v}" for k, v in card.to_dict().items()]
    out.result(card.to_dict(), "\n".join(lines))
