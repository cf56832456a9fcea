"""The training loop: P x K batches, a metric loss, validation on unseen classes, best checkpoint.

One epoch = ``steps_per_epoch`` class-balanced batches (default: one pass's worth of images).
After each epoch the encoder embeds the validation images and is scored by N-way one-shot
accuracy; the best one is ``best.pt`` (the latest epoch within the noise of the best accuracy
seen), the latest training state ``last.pt`` (for ``resume``).
At the end the best encoder is evaluated on the test part (classes never used in training or
model selection), and ``report.json`` plus plots are written to the run folder.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import autoconfig
from training.augment import random_affine, variant_classes
from training.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
from training.config import RESUME_KEYS, UNTIL_BUDGET, EncoderConfig, TrainConfig
from training.data import ImageFolder, ImageSource, scan_image_folder, split_data
from training.distributed import Distributed
from training.duplicates import find_duplicates
from training.evaluate import calibration_report, evaluate_embeddings, write_plots
from training.losses import build_loss
from training.metrics import n_way_k_shot, pair_scores, verification
from training.models import build_encoder
from training.openset import parents_of
from training.optim import build_optimizer, lr_factor, set_lr
from training.plots import plot_reliability
from training.sampling import PKSampler
from training.trust import card_from_checkpoint_meta, measure_trust
from training.weights import check_fit, initial_weights, load_backbone
from twinstream.errors import InputError, ModelError
from twinstream.jsonio import to_json

__all__ = ["TrainConfig", "TrainResult", "train"]


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    epochs_run: int
    seconds: float
    images_per_s: float  # training steps only, all processes together
    stopped_by: str = "epochs"
    processes: int = 1
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    test: dict | None = None
    # Every rank ended with rank 0's weights and batch-norm statistics (always true for one).
    ranks_in_sync: bool = True


class Objective(nn.Module):
    """Encoder and loss as one module, so DDP averages the loss's own parameters too."""

    def __init__(self, encoder: nn.Module, loss: nn.Module, gather=None):
        super().__init__()
        self.encoder, self.loss = encoder, loss
        self.gather = gather  # across ranks (training.distributed): the loss sees the whole batch

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(x)
        if self.gather is not None:
            embeddings, labels = self.gather(embeddings, labels)
        return self.loss(embeddings, labels)


@dataclass
class Part:
    """The images of one split part, decoded on demand."""

    source: ImageSource
    labels: np.ndarray

    @property
    def classes(self) -> int:
        return len(np.unique(self.labels))


def resolve_device(choice: str, distributed: bool = False) -> tuple[torch.device, str]:
    """``auto`` | ``cpu`` | ``cuda`` -> the torch device and a one-line reason."""
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise InputError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() "
                         "is False: a CPU build of torch, or no GPU/driver); use --device cpu")
    if distributed and (choice == "cuda"):
        raise InputError("--device cuda with several processes (torchrun) is not supported "
                         "yet: train on one GPU, or on CPU processes with --device cpu")
    if choice == "auto":
        if has_cuda and not distributed:
            return torch.device("cuda"), (f"device: cuda (auto: torch sees "
                                          f"{torch.cuda.get_device_name(0)})")
        why = "several processes train on CPU" if has_cuda else "torch sees no CUDA device"
        return torch.device("cpu"), f"device: cpu (auto: {why})"
    return torch.device(choice), f"device: {choice}"


@torch.no_grad()
def embed_part(model: nn.Module, part: Part, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of the readable images of a part, and their labels (on the model's device)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vectors, labels = [], []
    for start in range(0, len(part.source), batch):
        idx = list(range(start, min(start + batch, len(part.source))))
        arrays, kept = part.source.batch(idx)
        if kept:
            vectors.append(model(torch.from_numpy(arrays).to(device)).cpu().numpy())
            labels.append(part.labels[[idx[k] for k in kept]])
    model.train(was_training)
    if not vectors:
        raise InputError("no readable image in the validation/test part")
    return np.concatenate(vectors), np.concatenate(labels)


def usable_ways(labels: np.ndarray, ways: int) -> int:
    return min(ways, int(np.sum(np.bincount(labels) >= 2)))


class Trainer:
    """One run: set up from a ``TrainConfig``, then ``fit`` and ``finish``."""

    def __init__(self, cfg: TrainConfig, progress: Callable | None, log: Callable[[str], None],
                 dist: Distributed):
        self.dist, self.progress = dist, progress
        self.log = log if dist.is_main else (lambda _m: None)
        self.started = time.monotonic()
        # The weights first: a file that cannot be read or does not fit --arch fails before the
        # data is scanned, and long before anything is written.
        self.initial = self._initial_weights(cfg)
        folder = self._scan(cfg)
        self.cfg = cfg = self._resolve(cfg, folder)
        cfg.check()
        self.device, device_line = resolve_device(cfg.device, dist.enabled)
        self.log(device_line)
        self.cfg = cfg = replace(cfg, device=self.device.type)  # what the report records
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        # Before anything is written: a weights file that does not fit leaves no run folder.
        self.encoder, self.encoder_cfg = self._build_encoder()
        self.run_dir = Path(cfg.out)
        self._prepare_data(folder)
        loss = build_loss(cfg.loss, cfg.embedding_dim, cfg.margin, cfg.mining, cfg.circle_gamma,
                          seed=cfg.seed)
        self.objective = Objective(self.encoder, loss,
                                   gather=dist.gather if dist.enabled else None)
        self.objective.to(self.device)  # before the optimizer, which keeps its state beside it
        self.optimizer = build_optimizer(cfg.optimizer, self._parameter_groups(), cfg.lr,
                                         cfg.weight_decay, cfg.momentum)
        batch = cfg.classes_per_batch * cfg.images_per_class
        self.steps_per_epoch = cfg.steps_per_epoch or max(1, -(-len(self.train.labels) // batch))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        # Progress of the run; restored by resume.
        self.epoch, self.step, self.seen = 0, 0, 0
        self.elapsed_before, self.train_seconds = 0.0, 0.0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.validation_s = 0.0
        self.ranks_in_sync = True
        if cfg.resume:
            self._resume()
        # Wrapped (DDP) at the start of each epoch whose backbone freezing differs from the last.
        self.model: nn.Module | None = None
        self.frozen: bool | None = None

    # -- the encoder ----------------------------------------------------------------------
    def _initial_weights(self, cfg: TrainConfig) -> tuple[dict | None, str]:
        """The backbone's starting state dict (checked against --arch) and its description."""
        cfg.check_backbone()
        if not cfg.starts_pretrained:
            return None, ""
        state, init = initial_weights(cfg.arch, cfg.weights, cfg.pretrained,
                                      progress=self.progress is not None and self.dist.is_main)
        # a pretrained run is RGB unless --channels 1 says otherwise (autoconfig)
        check_fit(cfg.arch, state, cfg.weights or "(published)", cfg.channels or 3)
        return state, init

    def _build_encoder(self) -> tuple[nn.Module, EncoderConfig]:
        """A fresh encoder; a standard backbone starts from --weights or --pretrained."""
        cfg = self.cfg
        encoder = build_encoder(cfg.encoder())
        state, init = self.initial
        self.initial = None, init  # the state dict is in the encoder now: let it go
        if state is not None:
            load_backbone(encoder.features, cfg.arch, state, cfg.weights or "(published)")
            self.log(f"backbone: {cfg.arch} from {init}")
        return encoder, cfg.encoder(init)

    def _parameter_groups(self) -> list[dict]:
        """One group, or two when a pretrained backbone learns slower than the head: the
        published features are worth keeping while the new head finds its way."""
        if not (self.cfg.starts_pretrained and self.cfg.backbone_lr != 1.0):
            return [{"params": list(self.objective.parameters())}]
        backbone = list(self.encoder.features.parameters())
        ids = {id(p) for p in backbone}
        rest = [p for p in self.objective.parameters() if id(p) not in ids]
        return [{"params": backbone, "lr_scale": self.cfg.backbone_lr}, {"params": rest}]

    def _freeze(self, frozen: bool) -> None:
        """Backbone frozen (no gradients, batch-norm statistics kept) or trainable; DDP is
        wrapped again on a change, because it only synchronises what needed gradients when it
        was built."""
        if frozen == self.frozen:
            return
        self.encoder.features.requires_grad_(not frozen)
        self.model = None
        gc.collect()  # the old DDP wrapper and its gradient hooks go before the new one comes
        self.model = self.dist.wrap(self.objective)
        if self.frozen is not None or frozen:
            self.log("backbone frozen: only the projection head trains" if frozen else
                     "backbone unfrozen: every layer trains")
        self.frozen = frozen

    # -- data -----------------------------------------------------------------------------
    def _scan(self, cfg: TrainConfig) -> ImageFolder:
        """The image folder, with duplicated images and classes handled as ``cfg`` says."""
        folder = scan_image_folder(cfg.data, cfg.min_per_class)
        for name, count in folder.excluded.items():
            self.log(f"warning: class {name!r} excluded: {count} image(s), need at least "
                     f"{cfg.min_per_class}")
        if folder.excluded:
            self.log(f"warning: {len(folder.excluded)} class(es) excluded as too small")
        folder, self.duplicates = find_duplicates(folder, cfg.duplicates)
        if self.duplicates.found or self.duplicates.repeated_in_class:
            self.log(f"warning: {self.duplicates.describe()}")
        return folder

    def _resolve(self, cfg: TrainConfig, folder: ImageFolder) -> TrainConfig:
        """Choose the automatic options from the data; print one line per choice."""
        resolved, choices, profile = autoconfig.resolve(cfg, folder)
        for choice in choices:
            self.log(choice.line())
        self.auto_choices = {c.name: {"value": c.value, "reason": c.reason} for c in choices}
        self.profile = profile.to_dict() if choices else {}
        return resolved

    def _prepare_data(self, folder: ImageFolder) -> None:
        cfg = self.cfg
        split = split_data(folder, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed)
        spec = cfg.preprocessing()
        labels = folder.labels
        parts = {}
        for name, idx in split.parts.items():
            parts[name] = Part(ImageSource([folder.samples[i].path for i in idx], spec,
                                           cfg.cache_mb), labels[idx])
        self.train, self.val, self.test = parts["train"], parts["val"], parts["test"]
        self.classes = folder.classes
        self.data_summary = {**folder.summary(), "split": cfg.split,
                             **{f"{p}_classes": parts[p].classes for p in parts},
                             **{f"{p}_images": len(parts[p].labels) for p in parts},
                             "duplicates": self.duplicates.summary()}
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "split.json").write_text(
                json.dumps(split.describe(folder, cfg.seed), indent=1))
            self.log(f"data: {self.data_summary['train_classes']} training classes "
                     f"({len(self.train.labels)} images), {self.val.classes} validation, "
                     f"{self.test.classes} test ({cfg.split} split)")
        self.quarter = 4 if cfg.quarter_turns else 1
        turns = self.quarter * (2 if cfg.mirror else 1)  # variants of each class
        n = len(self.train.labels)
        # Class variants: virtual image v is image v % n in variant v // n (turned and/or
        # mirrored, augment.variant_classes), of class turns * y + variant.
        virtual = np.concatenate([self.train.labels * turns + t for t in range(turns)])
        self.parents = parents_of(self.classes)  # parent folder id of each class label
        groups = {int(v): int(self.parents[v // turns]) for v in np.unique(virtual)}
        self.sampler = PKSampler(virtual, cfg.classes_per_batch, cfg.images_per_class,
                                 groups, cfg.parent_batches)
        self.turns, self.n_train = turns, n

    def skipped(self) -> int:
        return sum(len(p.source.failed) for p in (self.train, self.val, self.test))

    def _batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A P x K batch with its labels; unreadable images are dropped and never drawn again."""
        virtual = self.sampler.batch(rng)
        base, turn = virtual % self.n_train, virtual // self.n_train
        failed_before = len(self.train.source.failed)
        arrays, kept = self.train.source.batch(base)
        if len(kept) < len(virtual):
            for pos in set(range(len(virtual))) - set(kept):
                for t in range(self.turns):
                    v = int(base[pos]) + t * self.n_train
                    self.sampler.discard(v, int(self.train.labels[base[pos]]) * self.turns + t)
            for path in list(self.train.source.failed)[failed_before:]:
                self.log(f"warning: skipped unreadable image {path}: "
                         f"{self.train.source.failed[path]}")
        x = torch.from_numpy(arrays)
        labels = torch.from_numpy(self.train.labels[base[kept]])
        if self.turns > 1:
            x, labels = variant_classes(x, labels, torch.from_numpy(turn[kept]), self.quarter,
                                        self.cfg.mirror)
        return x, labels

    # -- resume and checkpoints -----------------------------------------------------------
    def _resume(self) -> None:
        path = self.run_dir / "last.pt"
        if not path.is_file():
            raise InputError(f"nothing to resume: {path} does not exist")
        state = load_state(path)
        saved = state.get("config", {})
        defaults = {f.name: f.default for f in fields(TrainConfig)}  # keys older runs lack
        for key in RESUME_KEYS:
            if saved.get(key, defaults[key]) != getattr(self.cfg, key):
                raise ModelError(f"cannot resume {path}: {key} was {saved.get(key)!r}, now "
                                 f"{getattr(self.cfg, key)!r}")
        try:
            self.objective.load_state_dict(state["objective"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot resume {path}: its weights do not match the model: "
                             f"{str(exc).splitlines()[0]}") from exc
        self.epoch, self.step = state["epoch"], state["step"]
        self.elapsed_before, self.seen = state["elapsed"], state["seen"]
        self.train_seconds = state["train_seconds"]
        self.history, self.best = list(state["history"]), state["best"]
        self.log(f"resuming {path} after epoch {self.epoch}")

    def _save(self, improved: bool, val: dict) -> None:
        cfg = self.cfg
        common = {"loss": cfg.loss, "train_config": cfg.to_dict(), "data": self.data_summary,
                  "auto_choices": self.auto_choices, "history": self.history,
                  "epoch": self.epoch}
        if improved:
            save_checkpoint(self.run_dir / "best.pt", self.encoder, self.encoder_cfg,
                            cfg.preprocessing(), metrics=val, **common)
        save_state(self.run_dir / "last.pt", config=cfg.to_dict(),
                   objective=self.objective.state_dict(), optimizer=self.optimizer.state_dict(),
                   epoch=self.epoch, step=self.step, elapsed=self.elapsed(), seen=self.seen,
                   train_seconds=self.train_seconds, history=self.history, best=self.best)

    # -- the loop -------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def _progress(self, elapsed: float) -> float:
        by_steps = self.step / self.total_steps
        budget = self.cfg.time_budget_s
        return max(by_steps, elapsed / budget) if budget else by_steps

    def _epoch_rngs(self) -> tuple[np.random.Generator, torch.Generator]:
        """Generators derived from (seed, rank, epoch): a resumed run draws what it would have."""
        key = [self.cfg.seed, self.dist.rank, self.epoch]
        torch_seed = int(np.random.default_rng(key).integers(2**62))
        for module in self.objective.loss.modules():
            if isinstance(getattr(module, "generator", None), torch.Generator):
                module.generator.manual_seed(torch_seed + 1)
        return np.random.default_rng(key), torch.Generator().manual_seed(torch_seed)

    def _train_epoch(self) -> tuple[float, bool]:
        """One epoch of steps; returns the mean loss and whether the time budget ran out."""
        cfg = self.cfg
        rng, gen = self._epoch_rngs()
        self._freeze(self.epoch <= cfg.freeze_epochs)
        self.model.train()
        if self.frozen:
            self.encoder.features.eval()
        steps = range(self.steps_per_epoch)
        bar = self.progress(steps, desc=f"epoch {self._epoch_name()}", unit="batch") \
            if self.progress and self.dist.is_main else steps
        losses, images, t0, out_of_time = [], 0, time.monotonic(), False
        for _ in bar:
            elapsed = self.dist.from_main(self.elapsed())
            # at least one step, so even a budget spent on preparation leaves a checkpoint
            if cfg.time_budget_s and self.step and \
                    elapsed + self.validation_s >= cfg.time_budget_s:
                out_of_time = True
                break
            set_lr(self.optimizer, cfg.lr * lr_factor(self._progress(elapsed), cfg.schedule,
                                                      cfg.warmup))
            x, labels = self._batch(rng)
            x = random_affine(x, cfg.augment, gen)  # on CPU: the generator is a CPU one
            loss = self.model(x.to(self.device, non_blocking=True), labels.to(self.device))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            losses.append(loss.item())
            images += len(x) * self.dist.world_size
            if hasattr(bar, "set_postfix"):
                rate = images / max(time.monotonic() - t0, 1e-9)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", img_s=f"{rate:.0f}")
        self.seen += images
        self.train_seconds += time.monotonic() - t0
        return (float(np.mean(losses)) if losses else float("nan")), out_of_time

    def _validate(self) -> dict:
        t0 = time.monotonic()
        emb, labels = embed_part(self.encoder, self.val)
        self.val_embeddings = (emb, labels)
        ways = usable_ways(labels, self.cfg.ways)
        val = {"one_shot": n_way_k_shot(emb, labels, ways=ways, shots=1,
                                        episodes=self.cfg.val_episodes, seed=self.cfg.seed),
               "verification": verification(*pair_scores(emb, labels, seed=self.cfg.seed))}
        self.validation_s = time.monotonic() - t0
        return val

    def fit(self) -> str:
        """Train until the last epoch or the time budget; returns which one stopped it."""
        cfg = self.cfg
        stopped_by = "epochs"
        if cfg.time_budget_s and self.best is not None and \
                self.dist.from_main(self.elapsed()) >= cfg.time_budget_s:
            return "time budget"  # a resumed run whose budget is already spent
        while self.epoch < cfg.epochs:
            self.epoch += 1
            loss, out_of_time = self._train_epoch()
            if self.dist.is_main:
                self._end_epoch(loss)
            self.validation_s = self.dist.from_main(self.validation_s)
            self.dist.barrier()
            if out_of_time:
                stopped_by = "time budget"
                self.log(f"time budget of {cfg.time_budget_s / 60:g} min reached in epoch "
                         f"{self.epoch}")
                break
        return stopped_by

    def _epoch_name(self) -> str:
        """"3/10", or "3" when the time budget, not the epochs, ends the run."""
        until_budget = self.cfg.time_budget_s and self.cfg.epochs >= UNTIL_BUDGET
        return str(self.epoch) if until_budget else f"{self.epoch}/{self.cfg.epochs}"

    def _end_epoch(self, loss: float) -> None:
        val = self._validate()
        row = {"epoch": self.epoch, "loss": loss, "val_one_shot": val["one_shot"]["accuracy"],
               "val_auc": val["verification"]["roc_auc"], "elapsed_s": round(self.elapsed(), 1),
               "images_per_s": round(self.seen / max(self.train_seconds, 1e-9), 1)}
        self.history.append(row)
        # Kept: the latest epoch within the noise (half the 95% interval) of the best validation
        # accuracy seen. A few validation classes cannot rank close epochs, and with a decaying
        # learning rate the later one is the better bet.
        low, high = val["one_shot"]["ci95"]
        peak = max(r["val_one_shot"] for r in self.history)
        improved = self.best is None or row["val_one_shot"] >= peak - (high - low) / 2
        if improved:
            # What the model card promises (calibration, recognition cuts), measured on the
            # validation classes of the model that is kept; export copies it into the card.
            val.update(measure_trust(*self.val_embeddings, seed=self.cfg.seed,
                                     parents=self.parents))
            self.best = {**row, "validation": val}
        self._save(improved, val)
        self.log(f"epoch {self._epoch_name()}  loss {loss:.4f}  "
                 f"val {val['one_shot']['ways']}-way one-shot {row['val_one_shot']:.3f}  "
                 f"AUC {row['val_auc']:.3f}  {row['images_per_s']:.0f} img/s"
                 + ("  *best*" if improved else ""))

    def finish(self, stopped_by: str) -> TrainResult:
        """Evaluate the best encoder on the test part; write report.json and the plots."""
        seconds = self.elapsed()
        result = TrainResult(str(self.run_dir), str(self.run_dir / "best.pt"), self.epoch,
                             round(seconds, 1),
                             round(self.seen / max(self.train_seconds, 1e-9), 1), stopped_by,
                             self.dist.world_size, self.best or {}, self.history,
                             ranks_in_sync=self.ranks_in_sync)
        test_ways = usable_ways(self.test.labels, self.cfg.ways) if len(self.test.labels) else 0
        plots: dict = {}
        if test_ways >= 2:
            encoder, meta = load_checkpoint(self.run_dir / "best.pt")
            emb, labels = embed_part(encoder, self.test)
            present, labels = np.unique(labels, return_inverse=True)  # renumber 0..n-1
            evaluation = evaluate_embeddings(emb, labels, usable_ways(labels, self.cfg.ways), 1,
                                             self.cfg.test_episodes, seed=self.cfg.seed)
            result.test = evaluation.report
            names = [self.classes[c] for c in present]
            plots = write_plots(evaluation, emb, labels, names, self.run_dir, self.history,
                                self.cfg.seed)
            calibration = calibration_report(card_from_checkpoint_meta(meta), evaluation.scores,
                                             evaluation.same, self.cfg.seed)
            if calibration is not None:
                result.test["calibration"] = calibration
                plots["reliability"] = str(plot_reliability(calibration,
                                                            self.run_dir / "reliability.png"))
            one = evaluation.report["n_way"]
            unseen = "classes never seen in training" if self.cfg.split != "images" else \
                "held-out images"
            self.log(f"test ({self.test.classes} classes, {unseen}): {one['ways']}-way one-shot "
                     f"{one['accuracy']:.3f}, ROC AUC "
                     f"{evaluation.report['verification']['roc_auc']:.3f}")
        elif self.history:
            from training.plots import plot_curves

            plots = {"curves": str(plot_curves(self.history, self.run_dir / "curves.png"))}
        data = {**self.data_summary, "skipped_images": self.skipped()}
        (self.run_dir / "report.json").write_text(to_json(
            {"config": self.cfg.to_dict(), "auto_choices": self.auto_choices,
             "data_profile": self.profile, "data": data, **asdict(result), "plots": plots},
            indent=2))
        return result


def train(cfg: TrainConfig, progress: Callable | None = None,
          log: Callable[[str], None] = print, dist: Distributed | None = None) -> TrainResult:
    """Train an encoder as ``cfg`` says; see the module docstring for what is written."""
    dist = dist or Distributed()
    trainer = Trainer(cfg, progress, log, dist)
    stopped_by = trainer.fit()
    trainer.ranks_in_sync = dist.in_sync(trainer.objective)  # a collective: every rank calls it
    result = trainer.finish(stopped_by) if dist.is_main else None
    dist.barrier()
    return result or TrainResult(str(trainer.run_dir), str(trainer.run_dir / "best.pt"),
                                 trainer.epoch, round(trainer.elapsed(), 1), 0.0, stopped_by)
