"""The training loop: P x K batches, contrastive loss, validation, best checkpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import save_checkpoint
from training.data import load_arrays, scan_image_folder, split_per_class
from training.losses import contrastive_loss
from training.metrics import n_way_k_shot, pair_scores, verification
from training.models import EncoderConfig, build_encoder
from twinstream.errors import InputError
from twinstream.preprocess import Preprocessing


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    arch: str = "small"
    embedding_dim: int = 64
    image_size: int = 64
    channels: int = 3
    invert: bool = False
    epochs: int = 10
    classes_per_batch: int = 8  # P
    images_per_class: int = 8  # K
    lr: float = 3e-3
    weight_decay: float = 1e-4
    margin: float = 0.5
    val_fraction: float = 0.2
    ways: int = 5
    seed: int = 0
    time_budget_s: float = 0.0  # 0: no budget
    threads: int = 0

    def preprocessing(self) -> Preprocessing:
        c = self.channels
        return Preprocessing(height=self.image_size, width=self.image_size, channels=c,
                             mean=(0.5,) * c, std=(0.5,) * c, invert=self.invert)


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    epochs_run: int
    seconds: float
    images_per_s: float
    best: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def pk_batches(labels: np.ndarray, p: int, k: int, steps: int, rng: np.random.Generator):
    """Yield index batches of ``p`` classes x ``k`` images; every class equally likely, so rare
    classes are seen as often as common ones (small classes are sampled with replacement)."""
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    p = min(p, len(classes))
    for _ in range(steps):
        chosen = rng.choice(classes, size=p, replace=False)
        yield np.concatenate([rng.choice(by_class[c], size=k, replace=len(by_class[c]) < k)
                              for c in chosen])


@torch.no_grad()
def embed(model: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, 1), dtype=np.float32)


def evaluate_split(model, x: np.ndarray, y: np.ndarray, ways: int, seed: int) -> dict:
    emb = embed(model, x)
    ways = min(ways, len(np.unique(y)))
    result = {"one_shot": n_way_k_shot(emb, y, ways=ways, shots=1, episodes=200, seed=seed)}
    result["verification"] = verification(*pair_scores(emb, y, seed=seed))
    return result


def train(cfg: TrainConfig, progress: Callable | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    folder = scan_image_folder(cfg.data)  # bad data fails before anything is written
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, count in folder.excluded.items():
        log(f"warning: class {name!r} excluded: {count} image(s), need at least 2")
    spec = cfg.preprocessing()
    x, kept, failed = load_arrays([s.path for s in folder.samples], spec, progress=progress)
    for path, reason in failed.items():
        log(f"warning: skipped {path}: {reason}")
    y = folder.labels[kept]
    train_idx, val_idx = split_per_class(y, cfg.val_fraction, cfg.seed)
    if len(val_idx) == 0 or len(np.unique(y[val_idx])) < 2:
        raise InputError("validation split is empty: need at least 4 images in 2+ classes")

    enc_cfg = EncoderConfig(cfg.arch, cfg.channels, cfg.image_size, cfg.image_size,
                            cfg.embedding_dim)
    model = build_encoder(enc_cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch_size = cfg.classes_per_batch * cfg.images_per_class
    steps = max(1, len(train_idx) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs)
    x_train, y_train = x[train_idx], y[train_idx]
    data_summary = {**folder.summary(), "skipped_images": len(failed),
                    "train_images": len(train_idx), "val_images": len(val_idx)}

    history, best, seen, started = [], None, 0, time.monotonic()
    checkpoint = run_dir / "best.pt"
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for idx in pk_batches(y_train, cfg.classes_per_batch, cfg.images_per_class, steps, rng):
            emb = model(torch.from_numpy(x_train[idx]))
            loss = contrastive_loss(emb, torch.from_numpy(y_train[idx]), cfg.margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            seen += len(idx)
        val = evaluate_split(model, x[val_idx], y[val_idx], cfg.ways, cfg.seed)
        row = {"epoch": epoch, "loss": float(np.mean(losses)),
               "val_one_shot": val["one_shot"]["accuracy"],
               "val_auc": val["verification"]["roc_auc"]}
        history.append(row)
        log(f"epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f}  "
            f"val {val['one_shot']['ways']}-way one-shot {row['val_one_shot']:.3f}  "
            f"AUC {row['val_auc']:.3f}")
        if best is None or row["val_one_shot"] >= best["val_one_shot"]:
            best = {**row, "validation": val}
            save_checkpoint(checkpoint, model, enc_cfg, spec, loss="contrastive",
                            train_config=asdict(cfg), data=data_summary, metrics=val,
                            epoch=epoch)
        if cfg.time_budget_s and time.monotonic() - started > cfg.time_budget_s:
            log(f"time budget of {cfg.time_budget_s:.0f}s reached after epoch {epoch}")
            break
    seconds = time.monotonic() - started
    result = TrainResult(str(run_dir), str(checkpoint), epoch, seconds, seen / max(seconds, 1e-9),
                         best, history)
    (run_dir / "report.json").write_text(json.dumps(
        {"config": asdict(cfg), "data": data_summary, **asdict(result)}, indent=2))
    return result
