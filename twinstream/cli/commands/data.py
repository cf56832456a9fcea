"""``twinstream datasets ...``: ready-made data sets written as image folders."""

from __future__ import annotations

from twinstream.cli.main import add_command, add_group
from twinstream.errors import InputError


def register(subparsers) -> None:
    datasets = add_group(subparsers, "datasets", "write ready-made data sets as image folders")
    p = add_command(datasets, "shapes", shapes,
                    "coloured triangles, circles and rectangles (nine colour x shape classes)")
    p.add_argument("--out", required=True, help="folder to write (one sub-folder per class)")
    p.add_argument("--per-class", type=int, default=100, help="images per colour x shape pair")
    p.add_argument("--by", choices=("class", "colour", "shape"), default="class",
                   help="class = colour x shape (9); colour or shape pools them into 3 classes")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    d = add_command(datasets, "digits", digits,
                    "scikit-learn's bundled handwritten digits (10 classes, 1,797 images)")
    d.add_argument("--out", required=True, help="folder to write (one sub-folder per class)")
    d.add_argument("--size", type=int, default=32, help="image side in pixels (the source is 8)")


def shapes(args, settings, out) -> None:
    from training.shapes import generate_shapes

    if args.per_class < 1:
        raise InputError("--per-class must be at least 1")
    if args.size < 16:
        raise InputError("--size must be at least 16 pixels")
    summary = generate_shapes(args.out, args.per_class, by=args.by, size=args.size,
                              seed=args.seed, progress=lambda it: out.progress(it, desc="shapes",
                                                                               unit="img"))
    out.result(summary, f"wrote {summary['images']} images in {summary['classes']} classes "
                        f"to {summary['out']}")


def digits(args, settings, out) -> None:
    if args.size < 8:
        raise InputError("--size must be at least 8 pixels")
    try:
        from training.digits import write_digits
    except ImportError as exc:  # pragma: no cover - only without the train extra
        raise InputError(f"the digits data set needs scikit-learn (pip install "
                         f"'twinstream[train]'): {exc}") from exc
    summary = write_digits(args.out, args.size,
                           progress=lambda it: out.progress(it, desc="digits", unit="img"))
    out.result(summary, f"wrote {summary['images']} images in {summary['classes']} classes "
                        f"to {summary['out']}")
