"""``twinstream train``: fit a twin encoder on an image-folder data set."""

from __future__ import annotations

from twinstream.cli import add_command
from twinstream.errors import InputError


def register(subparsers) -> None:
    p = add_command(subparsers, "train", train,
                    "train a twin encoder on an image folder (one sub-folder per class)")
    p.add_argument("--data", required=True, help="image folder: one sub-folder per class")
    p.add_argument("--out", required=True, help="run directory for best.pt and report.json")
    p.add_argument("--arch", default="small", help="encoder architecture (tiny, small)")
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64, help="input side in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), default=3)
    p.add_argument("--invert", action="store_true", help="ink is dark on light (Omniglot)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--margin", type=float, default=0.5, help="contrastive margin")
    p.add_argument("--classes-per-batch", type=int, default=8, help="P of a P x K batch")
    p.add_argument("--images-per-class", type=int, default=8, help="K of a P x K batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=0.0, metavar="MINUTES",
                   help="stop after the epoch that passes this many minutes (0: no budget)")


def train(args, settings, out) -> None:
    from training.train import TrainConfig
    from training.train import train as run_training

    for name in ("epochs", "embedding_dim", "image_size", "classes_per_batch", "images_per_class"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1")
    cfg = TrainConfig(data=args.data, out=args.out, arch=args.arch,
                      embedding_dim=args.embedding_dim, image_size=args.image_size,
                      channels=args.channels, invert=args.invert, epochs=args.epochs,
                      lr=args.lr, margin=args.margin, classes_per_batch=args.classes_per_batch,
                      images_per_class=args.images_per_class, seed=args.seed,
                      time_budget_s=args.time_budget * 60)
    result = run_training(cfg, progress=lambda it: out.progress(it, desc="loading", unit="img"),
                          log=out.info)
    best = result.best
    out.result(result.__dict__,
               f"best epoch {best.get('epoch')}: validation one-shot accuracy "
               f"{best.get('val_one_shot', float('nan')):.3f}; checkpoint {result.checkpoint}; "
               f"{result.images_per_s:.0f} images/s")
