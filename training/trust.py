"""Measuring what the model card promises: calibration and recognition thresholds.

Run on the validation classes (never trained on) of the best checkpoint; ``export`` copies the
results into the card, where ``twinstream.calibration`` reads them at serving time.

- ``fit_calibration``: logistic regression of same/different on the cosine of validation pairs,
  positives and negatives weighted equally (so probabilities assume half the pairs are the same
  identity; the card records that prior). Why logistic: see ``twinstream.calibration``.
- ``recognition_curve``: for galleries of 1, 10, 100 and 1,000 identities (one reference each)
  and target FPIRs, the cut on a stranger's best score. Galleries up to the number of validation
  classes minus one are simulated directly (random galleries, strangers = every image of the
  classes left out; inside one parent folder when one has enough classes, so the strangers look
  like the enrolled, as at a door). Larger ones use the single-comparison stranger scores and
  the rule that a stranger passes a gallery of N when any of N comparisons passes:
  ``FPIR_N(t) = 1 - (1 - FAR(t)) ** N``. Treating the N comparisons as independent
  overestimates FPIR when they are positively correlated (a stranger close to one identity
  tends to be close to others), so those cuts err on the side of rejecting. Where the needed
  FAR is rarer than the comparisons can show, the score tail is extended exponentially
  (peaks over threshold). Cuts never fall as the gallery grows.
- ``reliability``: expected calibration error and the bins of a reliability plot, on a
  balanced set of pairs (the calibration's prior).
"""

from __future__ import annotations

import math

import numpy as np

from training.metrics import pair_scores
from training.openset import threshold_at_fpir
from twinstream.calibration import (
    DEFAULT_TARGET_FPIR,
    GALLERY_SIZES,
    TARGET_FPIRS,
    Calibration,
)
from twinstream.modelcard import ModelCard

MAX_IMAGES = 3000  # validation images used (all pairs of 3,000 is 4.5M cosines: still quick)
MIN_TAIL = 10  # exceedances an empirical quantile needs; rarer ones are extrapolated
SIMULATED_EPISODES = 300


def fit_calibration(scores: np.ndarray, same: np.ndarray) -> Calibration | None:
    """Platt scaling with balanced classes; None when the pairs cannot support one."""
    from sklearn.linear_model import LogisticRegression

    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same).astype(int)
    if len(np.unique(same)) < 2:
        return None
    model = LogisticRegression(C=1e4, class_weight="balanced")
    model.fit(scores[:, None], same)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if not (math.isfinite(slope) and slope > 0):
        return None  # a model that ranks "same" lower cannot be calibrated into sense
    return Calibration(slope, intercept, prior=0.5)


def balanced_pairs(scores: np.ndarray, same: np.ndarray, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """All positive pairs and as many negatives drawn at random (or the reverse)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(same == 1), np.flatnonzero(same == 0)
    n = min(len(pos), len(neg))
    keep = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)])
    return scores[keep], same[keep]


def reliability(probabilities: np.ndarray, same: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error and per-bin mean probability vs observed share of "same"."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    same = np.asarray(same, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        chosen = which == b
        if not chosen.any():
            continue
        mean_p, share = float(probabilities[chosen].mean()), float(same[chosen].mean())
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                     "count": int(chosen.sum()), "mean_probability": mean_p,
                     "observed_same": share})
        ece += chosen.mean() * abs(mean_p - share)
    return {"ece": float(ece), "pairs": len(same), "bins": rows}


def _tail_cut(impostor: np.ndarray, exceed: float) -> tuple[float, bool]:
    """The score that a share ``exceed`` of single comparisons reach; (cut, extrapolated)."""
    n = len(impostor)
    if n == 0:
        return 1.0, True
    # Peaks over threshold: above the cut u reached by MIN_TAIL * 10 scores (at least 1%, at
    # most half), excesses are taken as exponential with their observed mean.
    p_u = min(0.5, max(MIN_TAIL * 10 / n, 0.01))
    if exceed * n >= MIN_TAIL or exceed >= p_u:
        return float(np.quantile(impostor, 1 - exceed)), False
    u = float(np.quantile(impostor, 1 - p_u))
    excess = impostor[impostor > u] - u
    mean_excess = float(excess.mean()) if len(excess) else 0.0
    return min(1.0, u + mean_excess * math.log(p_u / exceed)), True


def _simulated_best_scores(sim: np.ndarray, labels: np.ndarray, size: int, rng,
                           parents: np.ndarray | None) -> tuple[np.ndarray, bool] | None:
    """Best score of every stranger image against random galleries of ``size`` classes; None
    when there are too few classes. With ``parents`` (a parent id per class label), galleries
    and their strangers come from one parent whenever one has more than ``size`` classes:
    strangers that look like the enrolled (a door meets those), so the cut errs high."""
    classes = np.unique(labels)
    within = []
    if parents is not None:
        within = [classes[parents[classes] == g] for g in np.unique(parents[classes])]
        within = [pool for pool in within if len(pool) > size]
    pools = within or [classes]
    if len(pools[0]) <= size:
        return None
    by_class = {int(c): np.flatnonzero(labels == c) for c in classes}
    best = []
    for _ in range(SIMULATED_EPISODES):
        pool = pools[rng.integers(len(pools))]
        enrolled = rng.choice(pool, size=size, replace=False)
        refs = [int(rng.choice(by_class[int(c)])) for c in enrolled]
        strangers = np.flatnonzero(np.isin(labels, pool) & ~np.isin(labels, enrolled))
        best.append(sim[np.ix_(strangers, refs)].max(axis=1))
    return np.concatenate(best), bool(within)


def recognition_curve(embeddings: np.ndarray, labels: np.ndarray,
                      gallery_sizes: tuple[int, ...] = GALLERY_SIZES,
                      target_fpirs: tuple[float, ...] = TARGET_FPIRS, seed: int = 0,
                      parents: np.ndarray | None = None) -> dict:
    """The card's ``recognition`` field (see the module docstring for the method)."""
    rng = np.random.default_rng(seed)
    if len(labels) > MAX_IMAGES:
        keep = np.sort(rng.choice(len(labels), MAX_IMAGES, replace=False))
        embeddings, labels = embeddings[keep], labels[keep]
    classes = len(np.unique(labels))
    sim = embeddings @ embeddings.T
    i, j = np.triu_indices(len(labels), k=1)
    impostor = np.sort(sim[i, j][labels[i] != labels[j]])
    table, how = [], []
    simulated = {size: _simulated_best_scores(sim, labels, size, rng, parents)
                 for size in gallery_sizes if 1 < size < classes}
    within = sorted(size for size, got in simulated.items() if got and got[1])
    for fpir in target_fpirs:
        row, row_how = [], []
        for size in gallery_sizes:
            best = simulated[size][0] if simulated.get(size) else None
            if size == 1:
                cut, extrapolated = _tail_cut(impostor, fpir)
                row_how.append("extrapolated" if extrapolated else "measured")
            elif best is not None and fpir * len(best) >= MIN_TAIL:
                cut = threshold_at_fpir(best, fpir)
                row_how.append("simulated")
            else:
                cut, extrapolated = _tail_cut(impostor, 1 - (1 - fpir) ** (1 / size))
                row_how.append("extrapolated" if extrapolated else "independence")
            row.append(cut)
        table.append(np.maximum.accumulate(row).round(5).tolist())  # never falls with size
        how.append(row_how)
    return {"gallery_sizes": list(gallery_sizes), "target_fpirs": list(target_fpirs),
            "thresholds": table, "method": how, "references": 1,
            "default_target_fpir": DEFAULT_TARGET_FPIR, "within_parent_sizes": within,
            "measured_on": f"{classes} validation classes, {len(labels)} images",
            "classes": classes, "images": len(labels), "impostor_pairs": len(impostor)}


def measure_trust(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0,
                  parents: np.ndarray | None = None) -> dict:
    """``calibration`` and ``recognition`` for the model card, from validation embeddings
    (``parents``: a parent folder id per class label, see ``recognition_curve``)."""
    scores, same = pair_scores(embeddings, labels, seed=seed)
    calibration = fit_calibration(scores, same)
    trust: dict = {"recognition": recognition_curve(embeddings, labels, seed=seed,
                                                    parents=parents)}
    if calibration is not None:
        b_scores, b_same = balanced_pairs(scores, same, seed)
        fitted = reliability(calibration.probability(b_scores), b_same)
        trust["calibration"] = {**calibration.to_dict(), "pairs": len(scores),
                                "positive_pairs": int(same.sum()),
                                "ece_validation": fitted["ece"]}
    return trust


def card_fields(metrics: dict) -> dict:
    """The model card's threshold fields from a checkpoint's validation metrics."""
    verification = metrics.get("verification") or {}
    thresholds = {k.removeprefix("threshold_"): float(v) for k, v in verification.items()
                  if k.startswith("threshold_")}
    return {"threshold": thresholds.get("eer"), "thresholds": thresholds,
            "calibration": dict(metrics.get("calibration") or {}),
            "recognition": dict(metrics.get("recognition") or {})}


def card_from_checkpoint_meta(meta: dict) -> ModelCard:
    """The card export would write for this checkpoint (without provenance and version), so
    evaluating a checkpoint uses the same thresholds and calibration as its ONNX file."""
    return ModelCard(embedding_dim=meta["encoder"].embedding_dim,
                     preprocessing=meta["preprocessing"], loss=str(meta.get("loss", "")),
                     architecture=meta["encoder"].to_dict(),
                     **card_fields(meta.get("metrics") or {}))
