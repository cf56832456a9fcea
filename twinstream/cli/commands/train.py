"""``twinstream train`` and ``twinstream evaluate``: fit a twin encoder, measure it on new classes.

For several processes (DDP), start training with torchrun:
``torchrun --nproc_per_node 2 -m twinstream train --data DIR --out RUN``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from typing import Any

from training.config import AugmentConfig, TrainConfig, flag_of
from twinstream.calibration import DEFAULT_TARGET_FPIR
from twinstream.cli.main import add_command

GROUP_TITLES = {"run": "run", "model": "model", "data": "data", "loss": "loss",
                "optimisation": "optimisation", "augmentation": "augmentation"}
DEST = "config:"  # argparse dest prefix of the flags generated from TrainConfig


def _shown(f: dataclasses.Field) -> str:
    meta = f.metadata
    if meta.get("auto"):
        return "auto"
    default = f.default if f.default is not dataclasses.MISSING else None
    if default is None:
        return "the loss's own"
    if default == "":
        return "none"
    if meta.get("scale", 1.0) != 1.0:
        default = default / meta["scale"]
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def add_config_flags(parser: argparse.ArgumentParser, cls: type = TrainConfig,
                     groups: dict | None = None) -> None:
    """One flag per field of ``cls`` (nested dataclasses included), from the field metadata:
    help with its default, choices, unit. Every flag defaults to None, meaning "not given"."""
    groups = {} if groups is None else groups
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        title = GROUP_TITLES[meta["group"]]
        group = groups.setdefault(title, parser.add_argument_group(title))
        if dataclasses.is_dataclass(hints[f.name]):
            add_config_flags(parser, hints[f.name], groups)
            if hints[f.name] is AugmentConfig:
                group.add_argument("--no-augment", action="store_true",
                                   help="no random affine distortions (same as --augment-p 0)")
            continue
        kind = hints[f.name]
        kwargs: dict[str, Any] = {"dest": DEST + f.name, "default": None,
                                  "help": f"{meta['help']} (default: {_shown(f)})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if meta.get("auto") \
                else "store_true"
        else:
            base = next(t for t in typing.get_args(kind) or (kind,) if t is not type(None))
            kwargs["type"] = base
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            else:
                kwargs["metavar"] = meta.get("metavar") or {int: "N", float: "X"}.get(
                    base, f.name.upper())
        if meta.get("required"):
            kwargs["required"] = True
            kwargs["help"] = meta["help"]
        group.add_argument(flag_of(f), **kwargs)


def _given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, DEST + f.name, None)
        if value is not None:
            values[f.name] = value * f.metadata.get("scale", 1.0) \
                if f.metadata.get("scale", 1.0) != 1.0 else value
    return values


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the flags ask for: fields not given keep their declared default, the
    automatic ones are left for training to choose from the data."""
    augment = _given(args, AugmentConfig)
    if args.no_augment:
        augment["p"] = 0.0
    values = _given(args, TrainConfig)
    if augment:
        values["augment"] = AugmentConfig(**augment)
    return TrainConfig.automatic(**values)


def register(subparsers) -> None:
    p = add_command(subparsers, "train", train,
                    "train a twin encoder on an image folder (one sub-folder per class)",
                    description="Train a twin encoder on an image folder (one sub-folder per "
                    "class). Options whose default is auto are chosen from a sample of the "
                    "data (threads: from the machine's load), one printed line each with its "
                    "reason; any flag given wins.")
    add_config_flags(p)

    e = add_command(subparsers, "evaluate", evaluate,
                    "N-way K-shot, open-set (the door), verification and retrieval metrics of a "
                    "model on new classes")
    e.add_argument("model", metavar="MODEL", help="checkpoint (best.pt or its run folder) or .onnx")
    e.add_argument("--data", required=True, help="image folder: one sub-folder per class")
    e.add_argument("--out", help="folder for report.json and plots (default: beside the model)")
    e.add_argument("--ways", type=int, default=20, help="N of N-way K-shot (default: 20)")
    e.add_argument("--shots", type=int, default=1,
                   help="references per class, in N-way episodes and the door (default: 1)")
    e.add_argument("--episodes", type=int, default=400, help="episodes (default: 400)")
    e.add_argument("--within-parent", action="store_true",
                   help="draw each episode's classes inside one parent folder (Omniglot: "
                        "inside one alphabet) (default: across all classes)")
    e.add_argument("--target-far", type=float, default=0.01,
                   help="false-accept rate for the second pair threshold (default: 0.01)")
    e.add_argument("--split", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="auto: the run's test classes if the checkpoint's run split this "
                        "folder, else every class (default: auto)")
    e.add_argument("--split-file", help="split.json of a run (default: beside the model)")
    e.add_argument("--seed", type=int, default=0, help="seed of the episodes (default: 0)")
    door = e.add_argument_group("open set (the door)")
    door.add_argument("--open-set", action="store_true",
                      help="also watch-list episodes: DIR at FPIR 1/5/10%% and at the card's "
                           "default, door.png")
    door.add_argument("--gallery", type=int, default=10,
                      help="enrolled classes per episode; as many stranger classes probe it "
                           "(default: 10)")
    door.add_argument("--target-fpir", type=float, default=DEFAULT_TARGET_FPIR,
                      help="share of strangers the card's default cut may accept "
                           f"(default: {DEFAULT_TARGET_FPIR:g})")
    door.add_argument("--threshold", type=float, default=None,
                      help="also report the door at this cosine cut (default: none)")


def train(args, settings, out) -> None:
    from training.distributed import Distributed
    from training.train import train as run_training

    cfg = config_from_args(args)
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
        progress=lambda it: out.progress(it, desc="embedding", unit="batch"), log=out.info,
        within_parent=args.within_parent, open_set=args.open_set, gallery=args.gallery,
        target_fpir=args.target_fpir, threshold=args.threshold)
    n_way, ver, ret = report["n_way"], report["verification"], report["retrieval"]
    low, high = n_way["ci95"]
    far = f"{args.target_far:g}"
    where = " within one parent folder" if n_way.get("within_parent") else ""
    lines = [
        f"{n_way['ways']}-way {n_way['shots']}-shot accuracy{where} {n_way['accuracy']:.3f} "
        f"(95% interval {low:.3f}-{high:.3f}, {n_way['episodes']} episodes, "
        f"{report['classes']} classes, {report['images']} images)",
        f"verification: ROC AUC {ver['roc_auc']:.3f}, EER {ver['eer']:.3f} at cosine "
        f"{ver['threshold_eer']:.3f}; FAR {far} at cosine {ver[f'threshold_far@{far}']:.3f}",
        f"retrieval: precision@1 {ret['precision@1']:.3f}, recall@5 {ret['recall@5']:.3f}, "
        f"MAP@R {ret['map@r']:.3f}"]
    if "calibration" in report:
        lines.append(f"calibration: expected calibration error {report['calibration']['ece']:.3f}"
                     f" on {report['calibration']['pairs']} balanced pairs")
    if "open_set" in report:
        lines += door_lines(report["open_set"])
    lines.append(f"report: {report['report']}")
    out.result(report, "\n".join(lines))


def door_lines(door: dict) -> list[str]:
    """The open-set results as a person reads them."""
    where = "within one parent" if door["within_parent"] else "across classes"
    lines = [f"door ({door['gallery']} enrolled x {door['shots']} reference(s), as many "
             f"strangers, {where}, {door['episodes']} episodes):"]
    for point in door["at_fpir"]:
        lines.append(f"  FPIR {point['target_fpir']:.0%}: DIR {point['dir']:.3f} at cosine "
                     f"{point['threshold']:.4f}")
    default = door["card_default"]
    lines.append(f"  card default ({default['reason']}): {default['dir']:.1%} of enrolled "
                 f"recognised, {default['strangers_rejected']:.1%} of strangers rejected")
    if "at_threshold" in door:
        fixed = door["at_threshold"]
        lines.append(f"  at cosine {fixed['threshold']:.4f}: DIR {fixed['dir']:.3f}, FPIR "
                     f"{fixed['fpir']:.3f}")
    return lines
