"""Few-shot evaluation of an encoder on classes it never saw: metrics, report.json and plots.

The model is a training checkpoint (``best.pt`` or its run folder) or an exported ``.onnx``. The
ONNX path runs through ``twinstream.runtime.Encoder`` and never imports torch, so a serving
machine can evaluate the exact file it serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import ImageFolder, ImageSource, read_split, scan_image_folder
from training.metrics import (
    Episodes,
    confusion_matrix,
    few_shot_episodes,
    pair_scores,
    roc_curve,
    verification,
)
from training.openset import episode_pools, open_set_episodes, open_set_report, parents_of
from training.plots import (
    plot_confusion,
    plot_curves,
    plot_door,
    plot_projection,
    plot_reliability,
    plot_roc,
)
from training.retrieval import retrieval_metrics
from training.trust import balanced_pairs, card_from_checkpoint_meta, reliability
from twinstream.calibration import (
    DEFAULT_TARGET_FPIR,
    card_calibration,
    check_target_fpir,
    check_threshold,
    recognition_threshold,
)
from twinstream.errors import InputError
from twinstream.jsonio import to_json
from twinstream.modelcard import ModelCard
from twinstream.preprocess import Preprocessing

SPLIT_CHOICES = ("auto", "all", "train", "val", "test")


@dataclass
class ModelHandle:
    """What evaluation needs of a model, whichever its format."""

    path: Path
    kind: str  # "checkpoint" or "onnx"
    preprocessing: Preprocessing
    embed_arrays: Callable[[np.ndarray], np.ndarray]
    history: list
    info: dict
    card: ModelCard  # an .onnx file's own card; for a checkpoint, the card export would write


def open_model(path: str | Path) -> ModelHandle:
    path = Path(path)
    if path.suffix == ".onnx":
        from twinstream.runtime import Encoder

        encoder = Encoder(path)
        info = {"version": encoder.version, "loss": encoder.card.loss,
                "architecture": encoder.card.architecture}
        return ModelHandle(path, "onnx", encoder.card.preprocessing, encoder.embed_arrays, [],
                           info, encoder.card)
    import torch

    from training.checkpoint import load_checkpoint

    model, meta = load_checkpoint(path)

    @torch.no_grad()
    def embed(batch: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(batch)).numpy()

    info = {"loss": meta.get("loss"), "architecture": meta["encoder"].to_dict(),
            "epoch": meta.get("epoch")}
    return ModelHandle(Path(meta["path"]), "checkpoint", meta["preprocessing"], embed,
                       list(meta.get("history") or []), info, card_from_checkpoint_meta(meta))


def embed_folder(handle_embed: Callable[[np.ndarray], np.ndarray], folder: ImageFolder,
                 spec: Preprocessing, batch: int = 64, progress: Callable | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """Embeddings and labels of every readable image; unreadable ones are returned by path."""
    source = ImageSource(folder.paths, spec, cache_mb=0)
    starts = range(0, len(source), batch)
    vectors, labels = [], []
    for start in (progress(starts) if progress else starts):
        idx = list(range(start, min(start + batch, len(source))))
        arrays, kept = source.batch(idx)
        if len(kept):
            vectors.append(handle_embed(arrays))
            labels.append(folder.labels[[idx[k] for k in kept]])
    if not vectors:
        raise InputError(f"none of the {len(source)} images in {folder.root} could be read")
    return np.concatenate(vectors), np.concatenate(labels), source.failed


def check_ways(labels: np.ndarray, ways: int, shots: int, where: str) -> None:
    counts = np.bincount(labels)
    usable = int(np.sum(counts >= shots + 1))
    if ways < 2:
        raise InputError("--ways must be at least 2")
    if usable < ways:
        hint = f" (use --ways {usable} or fewer)" if usable >= 2 else ""
        raise InputError(f"{ways}-way {shots}-shot evaluation needs {ways} classes with at least "
                         f"{shots + 1} images; {where} has {usable}{hint}")


@dataclass
class Evaluation:
    report: dict
    episodes: Episodes
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]
    scores: np.ndarray  # pair cosines and same(1)/different(0) flags, for calibration
    same: np.ndarray


def evaluate_embeddings(embeddings: np.ndarray, labels: np.ndarray, ways: int = 20,
                        shots: int = 1, episodes: int = 400, target_far: float = 0.01,
                        seed: int = 0, groups: np.ndarray | None = None) -> Evaluation:
    """N-way K-shot accuracy, verification (ROC AUC, EER, thresholds) and retrieval metrics."""
    result = few_shot_episodes(embeddings, labels, ways, shots, episodes, seed, groups)
    scores, same = pair_scores(embeddings, labels, seed=seed)
    report = {"images": len(labels), "classes": len(np.unique(labels)),
              "n_way": {**result.summary(), "within_parent": groups is not None},
              "verification": verification(scores, same, target_far),
              "retrieval": retrieval_metrics(embeddings, labels)}
    return Evaluation(report, result, roc_curve(scores, same), scores, same)


def calibration_report(card: ModelCard, scores: np.ndarray, same: np.ndarray, seed: int = 0
                       ) -> dict | None:
    """Reliability of the card's calibration on these pairs (balanced, the calibration's prior);
    None for a card without calibration."""
    calibration = card_calibration(card)
    if calibration is None or len(np.unique(same)) < 2:
        return None
    b_scores, b_same = balanced_pairs(scores, same, seed)
    return {**calibration.to_dict(), **reliability(calibration.probability(b_scores), b_same)}


def door(embeddings: np.ndarray, labels: np.ndarray, card: ModelCard, gallery: int, shots: int,
         episodes: int, seed: int, groups: np.ndarray | None, target_fpir: float,
         threshold: float | None) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """The open-set report (DIR at FPIR 1/5/10%, at the card's default cut for this gallery
    size, and at ``threshold`` if given) and the DET curve's points."""
    result = open_set_episodes(embeddings, labels, gallery, shots, episodes, seed, groups)
    choice = recognition_threshold(card, gallery, target_fpir)
    report = open_set_report(result, default={**choice.to_dict(), "target_fpir": target_fpir})
    if threshold is not None:
        report["at_threshold"] = result.rates_at(threshold)
    return report, result.det()


def write_plots(evaluation: Evaluation, embeddings: np.ndarray, labels: np.ndarray,
                names: list[str], out: Path, history: list | None = None,
                seed: int = 0) -> dict[str, str]:
    far, tar, _ = evaluation.roc
    ep = evaluation.episodes
    plots = {
        "roc": plot_roc(far, tar, evaluation.report["verification"], out / "roc.png"),
        "embeddings": plot_projection(embeddings, labels, names, out / "embeddings.png",
                                      seed=seed),
        "confusion": plot_confusion(confusion_matrix(ep.true, ep.predicted, len(names)), names,
                                    out / "confusion.png", ep.ways),
    }
    if history:
        plots["curves"] = plot_curves(history, out / "curves.png")
    return {k: str(v) for k, v in plots.items()}


def most_confused(evaluation: Evaluation, names: list[str], top: int = 10) -> list[dict]:
    """The class pairs the N-way predictions mixed up most often (worth a look by a person)."""
    ep = evaluation.episodes
    matrix = confusion_matrix(ep.true, ep.predicted, len(names))
    np.fill_diagonal(matrix, 0)
    flat = np.argsort(-matrix, axis=None)[:top]
    pairs = [np.unravel_index(k, matrix.shape) for k in flat]
    return [{"true": names[t], "predicted": names[p], "count": int(matrix[t, p])}
            for t, p in pairs if matrix[t, p] > 0]


def select_part(folder: ImageFolder, handle: ModelHandle, split: str, split_file: str | None,
                log: Callable[[str], None]) -> tuple[ImageFolder, str]:
    """The images to evaluate on. ``auto``: the run's test classes when the model is a
    checkpoint whose run split this very folder, otherwise every class of the folder."""
    if split == "all":
        return folder, "all"
    candidate = Path(split_file) if split_file else handle.path.parent / "split.json"
    if split == "auto":
        if not candidate.is_file():
            return folder, "all"
        try:
            info = json.loads(candidate.read_text())
        except (OSError, ValueError):
            return folder, "all"
        if info.get("root") != str(folder.root.resolve()) or not info.get("test", {}).get(
                "images"):
            return folder, "all"
        split = "test"
        unseen = "classes never seen in training" if info.get("mode") != "images" else \
            "images held out from training"
        log(f"evaluating the test part of {candidate} ({unseen})")
    elif not candidate.is_file():
        raise InputError(f"--split {split} needs the run's split.json; not found at {candidate} "
                         "(give it with --split-file)")
    return read_split(candidate, folder, split), split


def evaluate_model(model: str | Path, data: str | Path, out: str | Path | None = None,
                   ways: int = 20, shots: int = 1, episodes: int = 400,
                   target_far: float = 0.01, split: str = "auto", split_file: str | None = None,
                   seed: int = 0, progress: Callable | None = None,
                   log: Callable[[str], None] = print, *, within_parent: bool = False,
                   open_set: bool = False, gallery: int = 10,
                   target_fpir: float = DEFAULT_TARGET_FPIR,
                   threshold: float | None = None) -> dict:
    """Evaluate ``model`` on the image folder ``data``; writes report.json and plots to ``out``.

    ``within_parent``: episodes draw their classes inside one parent folder (an alphabet).
    ``open_set``: also the door (``gallery`` enrolled classes with ``shots`` references, as
    many stranger classes): DIR at FPIR 1/5/10%, and at the card's cut for this gallery size
    and ``target_fpir`` (or at ``threshold``).
    """
    if split not in SPLIT_CHOICES:
        raise InputError(f"--split must be one of {', '.join(SPLIT_CHOICES)}")
    if shots < 1 or episodes < 1 or gallery < 1:
        raise InputError("--shots, --episodes and --gallery must be at least 1")
    target_fpir = check_target_fpir(target_fpir)
    threshold = None if threshold is None else check_threshold(threshold)
    handle = open_model(model)
    folder = scan_image_folder(data)
    if folder.excluded:
        log(f"warning: {len(folder.excluded)} class(es) with fewer than 2 images excluded")
    folder, part = select_part(folder, handle, split, split_file, log)
    groups = parents_of(folder.classes) if within_parent else None
    check_ways(folder.labels, ways, shots, f"{data} ({part})")
    _check_episodes(folder.labels, ways, shots, gallery, groups, open_set)
    embeddings, labels, failed = embed_folder(handle.embed_arrays, folder, handle.preprocessing,
                                              progress=progress)
    if failed:
        log(f"warning: {len(failed)} unreadable image(s) skipped, e.g. {next(iter(failed))}")
    check_ways(labels, ways, shots, f"{data} ({part}, readable images)")
    _check_episodes(labels, ways, shots, gallery, groups, open_set)
    evaluation = evaluate_embeddings(embeddings, labels, ways, shots, episodes, target_far, seed,
                                     groups)
    out = Path(out) if out else handle.path.parent / "evaluation"
    plots = write_plots(evaluation, embeddings, labels, folder.classes, out, handle.history,
                        seed)
    extra: dict = {}
    calibration = calibration_report(handle.card, evaluation.scores, evaluation.same, seed)
    if calibration is not None:
        extra["calibration"] = calibration
        plots["reliability"] = str(plot_reliability(calibration, out / "reliability.png"))
    else:
        log("warning: the model records no calibration (exported before it existed): no "
            "probabilities to check")
    if open_set:
        extra["open_set"], (fpir, fnir) = door(embeddings, labels, handle.card, gallery, shots,
                                               episodes, seed, groups, target_fpir, threshold)
        warning = extra["open_set"]["card_default"].get("warning")
        if warning:
            log(f"warning: {warning}")
        plots["door"] = str(plot_door(fpir, fnir, extra["open_set"], out / "door.png"))
    report = {"model": str(handle.path), "model_kind": handle.kind, **handle.info,
              "data": str(data), "part": part, "skipped_images": len(failed),
              "excluded_classes": len(folder.excluded), **evaluation.report, **extra,
              "most_confused": most_confused(evaluation, folder.classes), "plots": plots}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(to_json(report, indent=2))
    report["report"] = str(out / "report.json")
    return report


def _check_episodes(labels: np.ndarray, ways: int, shots: int, gallery: int,
                    groups: np.ndarray | None, open_set: bool) -> None:
    """Refuse, before any work, episodes the data cannot fill (one clear line)."""
    if groups is not None:
        episode_pools(labels, ways, shots + 1, groups, f"{ways}-way {shots}-shot evaluation")
    if open_set:
        episode_pools(labels, 2 * gallery, shots + 1, groups,
                      f"--open-set with --gallery {gallery} (and as many stranger classes) and "
                      f"--shots {shots}")
