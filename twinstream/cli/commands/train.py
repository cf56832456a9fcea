"""``twinstream train`` and ``twinstream evaluate``: fit a twin encoder, measure it on new classes.

For several processes (DDP), start training with torchrun:
``torchrun --nproc_per_node 2 -m twinstream train --data DIR --out RUN``.
"""

from __future__ import annotations

import os

from twinstream.cli.main import add_command

# Choice lists are repeated here (not imported) so `twinstream --help` never loads torch;
# TrainConfig.check() validates them again.
ARCHS = ("tiny", "small", "conv4", "koch", "resnet")
LOSSES = ("contrastive", "triplet", "circle", "pair-bce")
MINING = ("batch-all", "batch-hard", "semi-hard", "random")


def register(subparsers) -> None:
    p = add_command(subparsers, "train", train,
                    "train a twin encoder on an image folder (one sub-folder per class)")
    p.add_argument("--data", required=True, help="image folder: one sub-folder per class")
    p.add_argument("--out", required=True, help="run folder (best.pt, last.pt, report, plots)")
    m = p.add_argument_group("model")
    m.add_argument("--arch", choices=ARCHS, default="small", help="encoder architecture")
    m.add_argument("--embedding-dim", type=int, default=64)
    m.add_argument("--base-channels", type=int, default=0,
                   help="first layer's channels (0: the architecture's default)")
    m.add_argument("--image-size", type=int, default=64, help="input side in pixels")
    m.add_argument("--channels", type=int, choices=(1, 3), default=3)
    m.add_argument("--invert", action="store_true", help="ink is dark on light (Omniglot)")
    d = p.add_argument_group("data")
    d.add_argument("--split", choices=("classes", "images"), default="classes",
                   help="classes: train/val/test share no class (default); images: every "
                        "class in every part (data sets with very few classes)")
    d.add_argument("--val-fraction", type=float, default=0.2)
    d.add_argument("--test-fraction", type=float, default=0.2)
    d.add_argument("--cache-mb", type=float, default=1024,
                   help="decoded images kept in memory per part (beyond: decoded again)")
    lo = p.add_argument_group("loss")
    lo.add_argument("--loss", choices=LOSSES, default="contrastive")
    lo.add_argument("--margin", type=float, default=None,
                    help="contrastive/triplet margin or circle m (default: the loss's own)")
    lo.add_argument("--mining", choices=MINING, default="semi-hard", help="triplet mining")
    lo.add_argument("--circle-gamma", type=float, default=80.0, help="circle loss scale")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--weight-decay", type=float, default=1e-4)
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (Nesterov)")
    o.add_argument("--schedule", choices=("cosine", "step", "constant"), default="cosine")
    o.add_argument("--warmup", type=float, default=0.05,
                   help="fraction of training with a linear learning-rate warm-up")
    o.add_argument("--epochs", type=int, default=10)
    o.add_argument("--steps-per-epoch", type=int, default=0,
                   help="batches per epoch (0: one pass over the training images)")
    o.add_argument("--classes-per-batch", type=int, default=8, help="P of a P x K batch")
    o.add_argument("--images-per-class", type=int, default=8, help="K of a P x K batch")
    o.add_argument("--no-augment", action="store_true", help="no random affine distortions")
    o.add_argument("--rotate", type=float, default=10.0, help="max rotation, degrees")
    o.add_argument("--shear", type=float, default=10.0, help="max shear, degrees")
    o.add_argument("--scale", type=float, default=0.1, help="max relative scale change")
    o.add_argument("--translate", type=float, default=0.05, help="max shift, fraction of side")
    o.add_argument("--quarter-turns", action="store_true",
                   help="count 90/180/270-degree turns as new classes (handwriting)")
    r = p.add_argument_group("run")
    r.add_argument("--ways", type=int, default=20, help="N of validation/test N-way one-shot")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--time-budget", type=float, default=0.0, metavar="MINUTES",
                   help="stop training after this many minutes (0: no budget)")
    r.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out")

    e = add_command(subparsers, "evaluate", evaluate,
                    "N-way K-shot, verification and retrieval metrics of a model on new classes")
    e.add_argument("model", metavar="MODEL", help="checkpoint (best.pt or its run folder) or .onnx")
    e.add_argument("--data", required=True, help="image folder: one sub-folder per class")
    e.add_argument("--out", help="folder for report.json and plots (default: beside the model)")
    e.add_argument("--ways", type=int, default=20)
    e.add_argument("--shots", type=int, default=1)
    e.add_argument("--episodes", type=int, default=400)
    e.add_argument("--target-far", type=float, default=0.01,
                   help="false-accept rate for the second threshold")
    e.add_argument("--split", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="auto: the run's test classes if the checkpoint's run split this "
                        "folder, else every class")
    e.add_argument("--split-file", help="split.json of a run (default: beside the model)")
    e.add_argument("--seed", type=int, default=0)


def train(args, settings, out) -> None:
    from training.augment import AugmentConfig
    from training.distributed import Distributed
    from training.train import TrainConfig
    from training.train import train as run_training

    augment = AugmentConfig(0, 0, 0, 0, 0) if args.no_augment else AugmentConfig(
        args.rotate, args.shear, args.scale, args.translate)
    cfg = TrainConfig(
        data=args.data, out=args.out, arch=args.arch, embedding_dim=args.embedding_dim,
        base_channels=args.base_channels, image_size=args.image_size, channels=args.channels,
        invert=args.invert, split=args.split, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, cache_mb=args.cache_mb, loss=args.loss,
        margin=args.margin, mining=args.mining, circle_gamma=args.circle_gamma,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, schedule=args.schedule, warmup=args.warmup,
        epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        classes_per_batch=args.classes_per_batch, images_per_class=args.images_per_class,
        augment=augment, quarter_turns=args.quarter_turns, ways=args.ways, seed=args.seed,
        time_budget_s=args.time_budget * 60, threads=args.threads, resume=args.resume)
    # torchrun sets WORLD_SIZE; the CLI is the edge where the environment is read.
    dist = Distributed.from_torchrun() if int(os.environ.get("WORLD_SIZE", "1")) > 1 \
        else Distributed()
    try:
        result = run_training(cfg, progress=out.progress, log=out.info, dist=dist)
    finally:
        dist.close()
    if not dist.is_main:
        return
    best = result.best
    test = result.test or {}
    text = (f"best epoch {best.get('epoch')}: validation one-shot {best.get('val_one_shot', 0):.3f}"
            + (f"; test {test['n_way']['ways']}-way one-shot {test['n_way']['accuracy']:.3f}"
               if test else "")
            + f"; {result.images_per_s:.0f} training images/s; checkpoint {result.checkpoint}")
    out.result(result.__dict__, text)


def evaluate(args, settings, out) -> None:
    from training.evaluate import evaluate_model

    report = evaluate_model(
        args.model, args.data, args.out, ways=args.ways, shots=args.shots,
        episodes=args.episodes, target_far=args.target_far, split=args.split,
        split_file=args.split_file, seed=args.seed,
        progress=lambda it: out.progress(it, desc="embedding", unit="batch"), log=out.info)
    n_way, ver, ret = report["n_way"], report["verification"], report["retrieval"]
    low, high = n_way["ci95"]
    far = f"{args.target_far:g}"
    out.result(report, "\n".join([
        f"{n_way['ways']}-way {n_way['shots']}-shot accuracy {n_way['accuracy']:.3f} "
        f"(95% interval {low:.3f}-{high:.3f}, {n_way['episodes']} episodes, "
        f"{report['classes']} classes, {report['images']} images)",
        f"verification: ROC AUC {ver['roc_auc']:.3f}, EER {ver['eer']:.3f} at cosine "
        f"{ver['threshold_eer']:.3f}; FAR {far} at cosine {ver[f'threshold_far@{far}']:.3f}",
        f"retrieval: precision@1 {ret['precision@1']:.3f}, recall@5 {ret['recall@5']:.3f}, "
        f"MAP@R {ret['map@r']:.3f}",
        f"report: {report['report']}"]))
