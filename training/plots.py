"""Pictures of a training run and an evaluation (matplotlib, headless Agg backend).

Each function writes one PNG and returns its path. matplotlib is imported lazily so that
importing this module costs nothing until a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_LABELLED_CLASSES = 30  # beyond this, class names on axes are unreadable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    _pyplot().close(fig)
    return path


def plot_curves(history: list[dict], path: Path) -> Path:
    """Training loss, and validation one-shot accuracy and ROC AUC, per epoch."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    left.plot(epochs, [row["loss"] for row in history], marker="o")
    left.set(title="training loss", xlabel="epoch", ylabel="loss")
    right.plot(epochs, [row["val_one_shot"] for row in history], marker="o",
               label="validation N-way one-shot accuracy")
    right.plot(epochs, [row["val_auc"] for row in history], marker="s",
               label="validation ROC AUC")
    right.set(title="validation", xlabel="epoch", ylim=(0, 1.02))
    right.legend(loc="lower right")
    from matplotlib.ticker import MaxNLocator

    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_roc(far: np.ndarray, tar: np.ndarray, verification: dict, path: Path) -> Path:
    """ROC curve of same/different pairs, with the equal-error point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(far, tar, label=f"AUC {verification['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    eer = verification["eer"]
    ax.scatter([eer], [1 - eer], color="red", zorder=3,
               label=f"EER {eer:.3f} at cosine {verification['threshold_eer']:.3f}")
    ax.set(title="verification ROC", xlabel="false accept rate", ylabel="true accept rate",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def project_2d(embeddings: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """2-D coordinates: t-SNE when scikit-learn is there (it separates clusters far better than
    a linear map), otherwise the first two principal components."""
    if method == "tsne" and len(embeddings) > 5:
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            method = "pca"
        else:
            perplexity = min(30.0, (len(embeddings) - 1) / 3)
            # 300 iterations (sklearn's default is 1000) already show the clusters clearly.
            return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=300,
                        metric="cosine").fit_transform(embeddings)
    centred = embeddings - embeddings.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def plot_projection(embeddings: np.ndarray, labels: np.ndarray, names: list[str], path: Path,
                    max_classes: int = 20, max_points: int = 1000, seed: int = 0) -> Path:
    """Test embeddings in 2-D, coloured by class (up to ``max_classes`` classes drawn at random,
    so the colours stay distinguishable, and ``max_points`` points, so t-SNE stays quick)."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if len(classes) > max_classes:
        classes = np.sort(rng.choice(classes, size=max_classes, replace=False))
    keep = np.isin(labels, classes)
    if keep.sum() > max_points:
        keep[rng.choice(np.flatnonzero(keep), size=keep.sum() - max_points, replace=False)] = False
    points = project_2d(embeddings[keep], seed=seed)
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab20", len(classes))
    for k, c in enumerate(classes):
        chosen = labels[keep] == c
        ax.scatter(points[chosen, 0], points[chosen, 1], s=14, color=cmap(k), label=names[c])
    ax.set(title=f"test embeddings, {len(classes)} classes", xticks=[], yticks=[])
    if len(classes) <= MAX_LABELLED_CLASSES:
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5), markerscale=1.5)
    return _save(fig, path)


def plot_confusion(matrix: np.ndarray, names: list[str], path: Path, ways: int) -> Path:
    """Row-normalised confusion of the N-way predictions (true class down, predicted across)."""
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class's queries")
    ax.set(title=f"{ways}-way predictions", xlabel="predicted class", ylabel="true class")
    if len(names) <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
    return _save(fig, path)


def plot_door(fpir: np.ndarray, fnir: np.ndarray, report: dict, path: Path) -> Path:
    """DET-style curve of the open-set door: strangers accepted (FPIR) against enrolled people
    missed or mistaken (FNIR = 1 - DIR), log axes, with the reported operating points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    floor = 0.5 / max(report["stranger_probes"], 1)
    ax.plot(np.maximum(fpir, floor), np.maximum(fnir, floor), label="all thresholds")
    for point in report["at_fpir"]:
        ax.scatter([max(point["fpir"], floor)], [max(1 - point["dir"], floor)], zorder=3,
                   label=f"FPIR {point['target_fpir']:g}: DIR {point['dir']:.3f} at "
                         f"{point['threshold']:.3f}")
    default = report.get("card_default")
    if default:
        ax.scatter([max(default["fpir"], floor)], [max(1 - default["dir"], floor)], marker="*",
                   s=160, color="black", zorder=4,
                   label=f"card default {default['threshold']:.3f}: DIR {default['dir']:.3f}, "
                         f"FPIR {default['fpir']:.3f}")
    where = "within one parent" if report["within_parent"] else "across all classes"
    ax.set(xscale="log", yscale="log", xlabel="FPIR (strangers accepted)",
           ylabel="FNIR (enrolled missed or mistaken)",
           title=f"door: gallery {report['gallery']}, {report['shots']} reference(s), {where}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


def plot_reliability(reliability: dict, path: Path) -> Path:
    """Calibrated probability against the observed share of same-identity pairs, per bin."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    bins = reliability["bins"]
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ax.plot([b["mean_probability"] for b in bins], [b["observed_same"] for b in bins],
            marker="o", label=f"ECE {reliability['ece']:.3f} ({reliability['pairs']} pairs)")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="calibrated P(same identity)",
           ylabel="observed share of same-identity pairs", title="reliability (balanced pairs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)
