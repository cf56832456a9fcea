"""Data-aware defaults: look at a sample of the images, choose what the user did not.

Every field of ``TrainConfig`` declared ``auto`` and left ``None`` is chosen here, each with a
one-line reason that training prints and records (``auto_choices`` in the checkpoint and the
report). A flag given by the user is never overridden. The rules are what
``bench/omniglot.py`` and the digits/shapes runs measured best on a 2-core CPU (README, "Data-aware
defaults"); they look only at the images and the class counts, never at names. A pretrained
backbone (``--weights``/``--pretrained``) gets what its weights expect instead: RGB, 224 px,
ImageNet's mean and std.
Torch-free (Pillow + numpy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.config import IMAGENET_SIZE, UNTIL_BUDGET, TrainConfig
from training.data import ImageFolder, parent_of

SAMPLE_IMAGES = 200
CPU_MAX_SIDE = {1: 32, 3: 64}  # input side bound per channel count: what a CPU trains in time
MIN_SIDE = 16  # conv4's four poolings need 16 pixels
LINE_DRAWING_INK = 0.35  # at most this share of pixels differs from the background
MANY_CLASSES = 50  # quarter turns only pay off with enough classes to learn from
BATCH_IMAGES = 128
VAL_CLASSES = 20  # a 20-way validation needs 20 classes
TEST_MIN_CLASSES = 200  # below this a test part costs training classes the model needs
MIN_PARENTS = 4  # one parent validates, the rest (at least three) train


@dataclass(frozen=True)
class DataProfile:
    """What a sample of the images looks like."""

    sampled: int
    greyscale: float  # share of sampled images that are greyscale (or colour with R=G=B)
    light_background: float  # share whose border is lighter than mid-grey
    ink: float  # median share of pixels that differ clearly from the border colour
    median_side: int  # median of the shorter side
    classes: int
    images: int
    parents: int  # distinct parent folders of the classes ("Alphabet" of "Alphabet/char01")

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass(frozen=True)
class Choice:
    name: str
    value: Any
    reason: str

    def line(self) -> str:
        return f"auto: {self.name.replace('_', '-')} {self.value}: {self.reason}"


def _look(path) -> tuple[bool, float, float, int] | None:
    """(greyscale, border brightness, ink share, shorter side) of one image, None if unreadable."""
    try:
        with Image.open(path) as img:
            side = min(img.size)
            img.draft("RGB", (128, 128))  # JPEG: decode small, it is only a look
            rgb = np.asarray(img.convert("RGB").resize((64, 64)), dtype=np.float32) / 255
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    grey = bool(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() < 0.02)
    luma = rgb.mean(axis=2)
    border = np.concatenate([luma[0], luma[-1], luma[:, 0], luma[:, -1]])
    background = float(np.median(border))
    ink = float(np.mean(np.abs(luma - background) > 0.25))
    return grey, background, ink, side


def profile(folder: ImageFolder, sample: int = SAMPLE_IMAGES, seed: int = 0) -> DataProfile:
    rng = np.random.default_rng(seed)
    count = min(sample, len(folder.samples))
    picks = rng.choice(len(folder.samples), size=count, replace=False)
    looks = [look for i in picks if (look := _look(folder.samples[int(i)].path))]
    parents = len({parent_of(name) for name in folder.classes})
    if not looks:
        return DataProfile(0, 0.0, 0.0, 1.0, 64, len(folder.classes), len(folder.samples),
                           parents)
    grey, background, ink, side = (np.array(v) for v in zip(*looks, strict=True))
    return DataProfile(len(looks), float(grey.mean()), float(np.mean(background > 0.5)),
                       float(np.median(ink)), int(np.median(side)), len(folder.classes),
                       len(folder.samples), parents)


def resolve(cfg: TrainConfig, folder: ImageFolder, load: float | None = None,
            cores: int | None = None) -> tuple[TrainConfig, list[Choice], DataProfile]:
    """``cfg`` with every automatic field chosen; the choices with their reasons."""
    wanted = set(cfg.unresolved())
    if not wanted:
        return cfg, [], profile(folder, sample=0)
    data = profile(folder, seed=cfg.seed)
    choices: list[Choice] = []

    def choose(name: str, value: Any, reason: str) -> None:
        if name in wanted and name not in {c.name for c in choices}:  # the first rule wins
            choices.append(Choice(name, value, reason))
            nonlocal cfg
            cfg = replace(cfg, **{name: value})

    cfg.check_backbone()  # before any choice is made (and printed) for a run that cannot start
    pretrained = cfg.weights or cfg.pretrained
    greyscale = data.greyscale >= 0.95
    if pretrained:
        choose("channels", 3, "the pretrained weights expect colour (RGB) input; greyscale "
               "images are repeated on the three channels")
    choose("channels", 1 if greyscale else 3,
           f"{data.greyscale:.0%} of {data.sampled} sampled images are greyscale")
    channels = cfg.channels
    light = data.light_background >= 0.8
    line_drawing = light and data.ink <= LINE_DRAWING_INK
    if pretrained:
        choose("invert", False, "the pretrained weights saw photographs as they are")
        choose("image_size", IMAGENET_SIZE, "the size the published weights were trained at "
               "(smaller is faster on a CPU: --image-size)")
        choose("normalize", "imagenet", "ImageNet's mean and std: the normalisation the "
               "pretrained weights expect")
    choose("normalize", "symmetric", "pixels scaled to [-1, 1] (no pretrained weights)")
    if channels == 1 and light:
        choose("invert", True, f"dark strokes on a light background in "
               f"{data.light_background:.0%} of the sample: inverted, ink becomes 1")
    else:
        choose("invert", False, "the background is not light" if not light
               else "colour images are used as they are")
    cap = CPU_MAX_SIDE[channels]
    side = int(min(max(data.median_side, MIN_SIDE), cap))
    side -= side % 4
    choose("image_size", side, f"images are {data.median_side} px (median shorter side); "
           f"bounded to {cap} px for a CPU" if data.median_side > cap else
           f"images are {data.median_side} px (median shorter side)")
    choose("arch", "conv4", "Conv-4, the few-shot backbone: best accuracy per CPU second in the "
           "Omniglot benchmark")
    choose("loss", "circle", "circle loss: the best of the losses in the Omniglot benchmark")
    quarter = line_drawing and channels == 1 and data.classes >= MANY_CLASSES
    choose("quarter_turns", quarter,
           f"line drawings ({data.ink:.0%} ink) in {data.classes} classes: a turned character "
           "is a new class, four times the classes to learn from" if quarter else
           "only for line drawings with many classes (turning a digit 6 makes a 9)")
    choose("mirror", quarter, "as for quarter turns: a mirrored character is another one, "
           "eight classes per character" if quarter else
           "only for line drawings with many classes")
    nested = data.parents >= MIN_PARENTS
    choose("split", "parents" if nested else "classes",
           f"classes sit in {data.parents} parent folders: validation holds out whole parents, "
           "so the checkpoint is chosen, and the card's cuts measured, on a parent never "
           "trained on (as a new alphabet at a door)" if nested else
           "validation and test classes are never trained on")
    val = float(min(0.2, max(0.1, VAL_CLASSES / data.classes)))
    if cfg.split == "images":
        val = 0.2
    choose("val_fraction", round(val, 3), f"{round(val * data.classes)} of {data.classes} "
           "classes validate (20-way episodes, the card's thresholds)"
           if cfg.split != "images" else "a fifth of each class's images")
    enough = data.classes >= TEST_MIN_CLASSES or cfg.split == "images"
    choose("test_fraction", 0.2 if enough else 0.0,
           "a fifth held out for the final test" if enough else
           f"{data.classes} classes are few: all but the validation ones train (measure new "
           "data with 'twinstream evaluate', or give --test-fraction)")
    budget = cfg.time_budget_s > 0
    choose("epochs", UNTIL_BUDGET if budget else 10,
           "until the time budget ends" if budget else "10 passes (no --time-budget)")
    one_pass = -(-len(folder.samples) // BATCH_IMAGES)
    choose("steps_per_epoch", max(100, one_pass) if budget else 0,
           "validate every 100 batches at least, so validation costs little of the budget"
           if budget else "one pass over the training images per epoch")
    train_classes = data.classes if cfg.split == "images" else \
        max(2, round(data.classes * (1 - cfg.val_fraction - cfg.test_fraction)))
    p = int(min(32, train_classes))
    k = int(min(16, max(4, BATCH_IMAGES // p)))
    choose("classes_per_batch", p, f"{BATCH_IMAGES}-image batches of as many classes as "
           "possible (up to 32): more negatives per step")
    choose("images_per_class", k, f"{p} classes x {k} images per batch")
    cores = cores or os.cpu_count() or 1
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    busy = cores <= 2 or load >= cores / 2
    choose("threads", 1 if busy else 0,
           f"{cores} cores, load {load:.1f}: one thread (more would wait for each other)"
           if busy else f"{cores} cores, load {load:.1f}: torch's default")
    leftover = cfg.unresolved()
    if leftover:
        cfg = cfg.with_fallbacks()
    return cfg, choices, data
