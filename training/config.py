"""``TrainConfig``: every choice of a training run, saved in its checkpoints and report.

Torch-free on purpose: the ``train`` command builds its flags from these declarations (each
field's metadata: help, group, choices, flag), and ``twinstream --help`` must never load torch.
The choice lists live here; the torch modules that implement them (``training.models``,
``training.losses``, ``training.optim``) are checked against them by a unit test.

A field declared ``auto`` is chosen from a sample of the data when it is ``None``
(``training.autoconfig``, which says why) before training starts: ``TrainConfig.automatic``
(what ``twinstream train`` builds) leaves every automatic field the user did not give at
``None``; a ``TrainConfig`` built in code keeps the declared defaults, so scripts and tests
behave as they always did. The resolved values are what the checkpoint and the report store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from training.data import SPLIT_MODES
from twinstream.errors import InputError
from twinstream.preprocess import Preprocessing

# Standard backbones that can start from published weights (training.backbones, issue 15).
BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large")
ARCHS = ("tiny", "small", "conv4", "koch", "resnet", "mlp", *BACKBONES)
LOSSES = ("contrastive", "triplet", "circle", "pair-bce")
MINING = ("batch-all", "batch-hard", "semi-hard", "random")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
DUPLICATE_POLICIES = ("merge", "drop", "error")
# Input normalisation: (mean, std) of RGB. ImageNet's is what pretrained backbones expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_SIZE = 224
NORMALIZATIONS = {"symmetric": ((0.5,) * 3, (0.5,) * 3),  # [0, 1] -> [-1, 1]
                  "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
                  "none": ((0.0,) * 3, (1.0,) * 3)}  # [0, 1] as it is
DEVICES = ("auto", "cpu", "cuda")
UNTIL_BUDGET = 1_000_000  # the epochs of a run that the time budget ends

# Fields that must be equal to resume a run: they decide the model, its data or its split.
RESUME_KEYS = ("data", "arch", "embedding_dim", "base_channels", "image_size", "channels",
               "invert", "split", "val_fraction", "test_fraction", "loss", "seed", "optimizer",
               "duplicates", "quarter_turns", "mirror", "normalize")


def option(default: Any, help: str, group: str, *, choices: tuple | None = None,
           flag: str | None = None, auto: bool = False, metavar: str | None = None,
           scale: float = 1.0, required: bool = False) -> Any:
    """Declare one training option. ``auto``: the command line leaves it to the data (``None``
    until ``training.autoconfig`` chooses); ``default`` is what a ``TrainConfig`` built in code
    gets. ``scale``: the flag's unit times ``scale`` is the field's (minutes -> seconds)."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag, "auto": auto,
            "metavar": metavar, "scale": scale, "required": required}
    if isinstance(default, type):  # a nested config: each instance gets its own
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class EncoderConfig:
    """Everything needed to rebuild an encoder; saved beside its weights in the checkpoint."""

    arch: str = "small"
    in_channels: int = 3
    height: int = 64
    width: int = 64
    embedding_dim: int = 64
    base_channels: int = 0  # channels of the first layer; 0: the architecture's default
    # Where a standard backbone's starting weights came from (file name and sha256, or the
    # published URL); "" for random initialisation. Provenance only: rebuilding ignores it.
    init: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine distortions during training (``training.augment``)."""

    rotate_deg: float = option(10.0, "max rotation, degrees", "augmentation", flag="--rotate")
    shear_deg: float = option(10.0, "max shear, degrees", "augmentation", flag="--shear")
    scale: float = option(0.1, "max relative scale change", "augmentation", flag="--scale")
    translate: float = option(0.05, "max shift, fraction of the side", "augmentation",
                              flag="--translate")
    p: float = option(0.8, "probability that an image is distorted at all (0: never)",
                      "augmentation", flag="--augment-p")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def active(self) -> bool:
        return self.p > 0 and any((self.rotate_deg, self.shear_deg, self.scale, self.translate))


@dataclass(frozen=True)
class TrainConfig:
    data: str = option("", "image folder: one sub-folder per class", "run", required=True)
    out: str = option("", "run folder (best.pt, last.pt, report, plots)", "run", required=True)
    # model
    arch: str = option("small", "encoder architecture", "model", choices=ARCHS, auto=True)
    embedding_dim: int = option(64, "embedding size", "model")
    base_channels: int = option(0, "first layer's channels (0: the architecture's default)",
                                "model")
    image_size: int = option(64, "input side in pixels", "model", auto=True)
    channels: int = option(3, "input channels: 1 greyscale, 3 colour", "model", choices=(1, 3),
                           auto=True)
    invert: bool = option(False, "invert the pixels (dark ink on a light background becomes "
                          "bright on dark)", "model", auto=True)
    # data: "classes" = class-disjoint train/val/test (evaluation on unseen classes);
    # "images" = every class in every part (for sets with very few classes, like the shapes)
    split: str = option("classes", "classes: train/val/test share no class; parents: nor any "
                        "parent folder (validation on alphabets never trained on); images: "
                        "every class in every part (data sets with very few classes)", "data",
                        choices=SPLIT_MODES, auto=True)
    val_fraction: float = option(0.2, "share of the classes (images with --split images) "
                                 "for validation", "data", auto=True)
    test_fraction: float = option(0.2, "share held out for the final test", "data", auto=True)
    min_per_class: int = option(2, "classes with fewer images are left out", "data")
    duplicates: str = option("merge", "byte-identical images in several classes and classes "
                             "that copy another: merge them into one, drop the copies, or "
                             "stop with an error", "data", choices=DUPLICATE_POLICIES)
    cache_mb: float = option(1024.0, "decoded images kept in memory per part (beyond: "
                             "decoded again)", "data")
    # loss
    loss: str = option("contrastive", "metric-learning loss", "loss", choices=LOSSES, auto=True)
    margin: float | None = option(None, "contrastive/triplet margin, circle m", "loss")
    mining: str = option("semi-hard", "triplet mining", "loss", choices=MINING)
    circle_gamma: float = option(80.0, "circle loss scale", "loss")
    # optimisation
    optimizer: str = option("adamw", "optimizer", "optimisation", choices=OPTIMIZERS)
    lr: float = option(3e-3, "peak learning rate", "optimisation")
    weight_decay: float = option(1e-4, "weight decay", "optimisation")
    momentum: float = option(0.9, "SGD momentum (Nesterov)", "optimisation")
    schedule: str = option("cosine", "learning-rate schedule after the warm-up",
                           "optimisation", choices=SCHEDULES)
    warmup: float = option(0.05, "fraction of training with a linear warm-up",
                           "optimisation")
    epochs: int = option(10, "epochs (auto: 10, or until --time-budget ends when one is "
                         "given)", "optimisation", auto=True)
    steps_per_epoch: int = option(0, "batches per epoch (0: one pass over the training "
                                  "images)", "optimisation", auto=True)
    parent_batches: float = option(0.0, "share of batches whose classes all come from one "
                                   "parent folder (similar classes: hard negatives)",
                                   "optimisation")
    classes_per_batch: int = option(8, "P of a P x K batch", "optimisation", auto=True)
    images_per_class: int = option(8, "K of a P x K batch", "optimisation", auto=True)
    augment: AugmentConfig = option(  # noqa: RUF009 (option() returns a default_factory field)
        AugmentConfig, "random affine distortions", "augmentation")
    quarter_turns: bool = option(False, "count 90/180/270-degree turns as new classes "
                                 "(handwriting)", "augmentation", auto=True)
    mirror: bool = option(False, "count left-right mirror images as new classes "
                          "(handwriting)", "augmentation", auto=True)
    # validation and the final test
    ways: int = option(20, "N of the validation/test N-way one-shot episodes (capped by the "
                       "classes available)", "run")
    val_episodes: int = option(200, "validation episodes per epoch", "run")
    test_episodes: int = option(400, "test episodes", "run")
    seed: int = option(0, "seed of the split, the weights and every batch", "run")
    time_budget_s: float = option(0.0, "stop training after this many minutes (0: no budget)",
                                  "run", flag="--time-budget", metavar="MINUTES", scale=60.0)
    threads: int = option(0, "torch threads (0: torch's default)", "run", auto=True)
    device: str = option("auto", "where torch trains: cuda (a GPU), cpu, or auto (cuda when "
                         "torch sees one, else cpu); the checkpoint is saved for CPU either way",
                         "run", choices=DEVICES)
    resume: bool = option(False, "continue the run in --out", "run")
    # pretrained backbones (issue 15): --arch resnet18 ... mobilenet_v3_large
    weights: str = option("", "start the backbone from this file: a torchvision-format state "
                          "dict (.pth/.pt) or .safetensors; standard --arch only", "model",
                          metavar="FILE")
    pretrained: bool = option(False, "start the backbone from the published ImageNet weights, "
                              "downloaded by torch.hub (needs network; cached in "
                              "~/.cache/torch/hub)", "model")
    normalize: str = option("symmetric", "input normalisation: imagenet (ImageNet's mean and "
                            "std, what pretrained weights expect), symmetric (to [-1, 1]), "
                            "none ([0, 1])", "model", choices=tuple(NORMALIZATIONS), auto=True)
    freeze_epochs: int = option(0, "first epochs with the pretrained backbone frozen (only the "
                                "projection head trains), then every layer", "optimisation")
    backbone_lr: float = option(0.1, "learning rate of a pretrained backbone, as a share of "
                                "--lr (the head trains at --lr)", "optimisation")

    @property
    def starts_pretrained(self) -> bool:
        return bool(self.weights) or self.pretrained

    def preprocessing(self) -> Preprocessing:
        c = self.channels
        mean, std = NORMALIZATIONS[self.normalize]
        if c == 1:  # greyscale: the channels' average (a pretrained stem is summed to match)
            mean, std = (round(sum(mean) / 3, 4),), (round(sum(std) / 3, 4),)
        return Preprocessing(height=self.image_size, width=self.image_size, channels=c,
                             mean=tuple(mean), std=tuple(std), invert=self.invert)

    def encoder(self, init: str = "") -> EncoderConfig:
        return EncoderConfig(self.arch, self.channels, self.image_size, self.image_size,
                             self.embedding_dim, self.base_channels, init)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def automatic(cls, **given: Any) -> TrainConfig:
        """A config whose automatic fields not in ``given`` are chosen from the data."""
        auto = {f.name: None for f in fields(cls) if f.metadata.get("auto")}
        return cls(**{**auto, **given})

    def unresolved(self) -> list[str]:
        """The automatic fields still waiting for ``training.autoconfig`` to choose them."""
        return [f.name for f in fields(self) if f.metadata.get("auto")
                and getattr(self, f.name) is None]

    def with_fallbacks(self) -> TrainConfig:
        """Automatic fields left unset take their declared (data-blind) default."""
        defaults = {f.name: f.default for f in fields(self)}
        return replace(self, **{name: defaults[name] for name in self.unresolved()})

    def check(self) -> None:
        """Refuse values that would fail later, or silently train nothing useful."""
        if not self.data or not self.out:
            raise InputError("--data and --out are required")
        if self.unresolved():
            raise InputError(f"unresolved automatic options: {', '.join(self.unresolved())}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise InputError(f"{flag_of(f)} must be one of "
                                 f"{', '.join(map(str, choices))}, got {value!r}")
        at_least = {"epochs": (self.epochs, 1), "embedding_dim": (self.embedding_dim, 1),
                    "image_size": (self.image_size, 8), "classes_per_batch":
                    (self.classes_per_batch, 2), "images_per_class": (self.images_per_class, 2),
                    "ways": (self.ways, 2), "val_episodes": (self.val_episodes, 1),
                    "test_episodes": (self.test_episodes, 1), "min_per_class":
                    (self.min_per_class, 2), "steps_per_epoch": (self.steps_per_epoch, 0),
                    "base_channels": (self.base_channels, 0), "threads": (self.threads, 0)}
        for name, (value, minimum) in at_least.items():
            if value < minimum:
                raise InputError(f"--{name.replace('_', '-')} must be at least {minimum}, "
                                 f"got {value}")
        if self.lr <= 0 or self.time_budget_s < 0 or self.weight_decay < 0:
            raise InputError("--lr must be positive; --time-budget and --weight-decay >= 0")
        if not 0 <= self.parent_batches <= 1:
            raise InputError(f"--parent-batches must be in [0, 1], got {self.parent_batches}")
        if not 0 <= self.warmup < 1:
            raise InputError(f"--warmup must be in [0, 1), got {self.warmup}")
        self.check_backbone()
        if self.val_fraction <= 0:
            raise InputError("--val-fraction must be above 0: validation picks the best "
                             "checkpoint and the model card's thresholds")

    def check_backbone(self) -> None:
        """The pretrained-backbone flags together; before the data is scanned (``arch`` may
        still be ``None``: then ``--weights``/``--pretrained`` lack the --arch they need)."""
        if self.starts_pretrained and self.arch not in BACKBONES:
            if self.arch is None:
                raise InputError(f"{'--weights' if self.weights else '--pretrained'} needs "
                                 f"--arch: one of {', '.join(BACKBONES)}")
            given = "--weights" if self.weights else "--pretrained"
            raise InputError(f"{given} needs a standard --arch ({', '.join(BACKBONES)}), "
                             f"got {self.arch!r}")
        if self.weights and self.pretrained:
            raise InputError("give --weights FILE or --pretrained, not both")
        if self.freeze_epochs and not self.starts_pretrained:
            raise InputError("--freeze-epochs needs a pretrained backbone (--weights or "
                             "--pretrained): a random one has nothing worth keeping")
        if self.freeze_epochs < 0 or not 0 < self.backbone_lr <= 1:
            raise InputError("--freeze-epochs must be at least 0 and --backbone-lr in (0, 1]")


def flag_of(f) -> str:
    """The command-line flag of a field."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")
