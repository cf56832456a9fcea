"""``TrainConfig``: every choice of a training run, saved in its checkpoints and report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from training.augment import AugmentConfig
from training.data import SPLIT_MODES
from training.losses import LOSSES, MINING
from training.models import ARCHITECTURES, EncoderConfig
from training.optim import OPTIMIZERS, SCHEDULES
from twinstream.errors import InputError
from twinstream.preprocess import Preprocessing

# Fields that must be equal to resume a run: they decide the model, its data or its split.
RESUME_KEYS = ("data", "arch", "embedding_dim", "base_channels", "image_size", "channels",
               "invert", "split", "val_fraction", "test_fraction", "loss", "seed", "optimizer")


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    # model
    arch: str = "small"
    embedding_dim: int = 64
    base_channels: int = 0  # 0: the architecture's default width
    image_size: int = 64
    channels: int = 3
    invert: bool = False  # ink dark on light (Omniglot): invert so ink is 1
    # data: "classes" = class-disjoint train/val/test (evaluation on unseen classes);
    # "images" = every class in every part (for sets with very few classes, like the shapes)
    split: str = "classes"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    min_per_class: int = 2
    cache_mb: float = 1024.0  # decoded images kept in memory, per part
    # loss
    loss: str = "contrastive"
    margin: float | None = None  # None: the loss's own default
    mining: str = "semi-hard"  # triplet loss only
    circle_gamma: float = 80.0
    # optimisation
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"
    warmup: float = 0.05
    epochs: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the training images
    classes_per_batch: int = 8  # P
    images_per_class: int = 8  # K
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    quarter_turns: bool = False  # 90/180/270-degree turns as extra classes
    # validation and the final test
    ways: int = 20  # N of the N-way one-shot episodes (capped by the classes available)
    val_episodes: int = 200
    test_episodes: int = 400
    seed: int = 0
    time_budget_s: float = 0.0  # 0: no budget
    threads: int = 0  # torch intra-op threads; 0: torch's default
    resume: bool = False

    def preprocessing(self) -> Preprocessing:
        c = self.channels
        return Preprocessing(height=self.image_size, width=self.image_size, channels=c,
                             mean=(0.5,) * c, std=(0.5,) * c, invert=self.invert)

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(self.arch, self.channels, self.image_size, self.image_size,
                             self.embedding_dim, self.base_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse values that would fail later, or silently train nothing useful."""
        choices = {"arch": (self.arch, tuple(ARCHITECTURES)), "loss": (self.loss, LOSSES),
                   "mining": (self.mining, MINING), "optimizer": (self.optimizer, OPTIMIZERS),
                   "schedule": (self.schedule, SCHEDULES), "split": (self.split, SPLIT_MODES)}
        for name, (value, known) in choices.items():
            if value not in known:
                raise InputError(f"--{name} must be one of {', '.join(known)}, got {value!r}")
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
        if self.channels not in (1, 3):
            raise InputError(f"--channels must be 1 or 3, got {self.channels}")
        if self.lr <= 0 or self.time_budget_s < 0 or self.weight_decay < 0:
            raise InputError("--lr must be positive; --time-budget and --weight-decay >= 0")
        if self.val_fraction <= 0:
            raise InputError("--val-fraction must be above 0: validation picks the best "
                             "checkpoint and the model card's thresholds")
