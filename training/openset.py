"""Open-set identification ("the door"): a watch list of enrolled identities, and strangers.

Each episode enrols ``gallery`` classes with ``shots`` reference images each (an identity is the
prototype of its references: ``twinstream.calibration.prototype``, exactly as serving does) and
presents one probe of every enrolled class plus one probe of as many classes never enrolled. A
probe is accepted as its best-matching identity when the cosine reaches the threshold.

- DIR (detection and identification rate): enrolled probes accepted *as the right identity*;
- FPIR (false-positive identification rate): strangers accepted as anyone.

Both are pooled over the episodes; the thresholds at a target FPIR come from the strangers' best
scores. With ``groups`` (a parent folder per class, e.g. the alphabet of a character), every
episode draws its classes inside one parent: strangers that look like the enrolled ones.
Numpy only, so an ONNX model is evaluated without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.data import parent_of
from twinstream.calibration import prototype
from twinstream.errors import InputError

REPORTED_FPIRS = (0.01, 0.05, 0.10)


@dataclass
class OpenSetEpisodes:
    gallery: int
    shots: int
    episodes: int
    within_parent: bool
    genuine_scores: np.ndarray  # best score of each enrolled probe
    genuine_correct: np.ndarray  # whether that best match is the probe's own identity
    stranger_scores: np.ndarray  # best score of each stranger probe

    def rates_at(self, threshold: float) -> dict:
        """DIR and FPIR when probes scoring at least ``threshold`` are accepted."""
        dir_ = float(np.mean(self.genuine_correct & (self.genuine_scores >= threshold)))
        fpir = float(np.mean(self.stranger_scores >= threshold))
        return {"threshold": float(threshold), "dir": dir_, "fpir": fpir,
                "employees_recognised": dir_, "strangers_rejected": 1.0 - fpir}

    def det(self) -> tuple[np.ndarray, np.ndarray]:
        """FPIR and FNIR (= 1 - DIR) at every distinct threshold (the DET curve's points)."""
        cuts = np.unique(np.concatenate([self.genuine_scores, self.stranger_scores]))
        strangers = np.sort(self.stranger_scores)
        accepted = np.sort(self.genuine_scores[self.genuine_correct])
        fpir = 1 - np.searchsorted(strangers, cuts, side="left") / len(strangers)
        dir_ = (len(accepted) - np.searchsorted(accepted, cuts, side="left")) \
            / len(self.genuine_scores)
        return fpir, 1 - dir_


def threshold_at_fpir(stranger_scores: np.ndarray, fpir: float) -> float:
    """The lowest cut at which at most ``fpir`` of the strangers score at or above it."""
    ordered = np.sort(np.asarray(stranger_scores, dtype=np.float64))[::-1]
    k = math.floor(fpir * len(ordered) + 1e-9)
    if k >= len(ordered):
        return float(ordered[-1])
    return float(np.nextafter(ordered[k], np.inf))


def parents_of(class_names: list[str]) -> np.ndarray:
    """The parent folder of each class name ("Alphabet/character01" -> "Alphabet"), as ids."""
    _, ids = np.unique([parent_of(name) for name in class_names], return_inverse=True)
    return ids


def episode_pools(labels: np.ndarray, need: int, per_class: int,
                  groups: np.ndarray | None, what: str) -> list[np.ndarray]:
    """The class pools an episode may draw ``need`` classes from (one pool, or one per parent
    with enough classes); ``InputError`` when there are too few."""
    counts = np.bincount(labels)
    usable = np.flatnonzero(counts >= per_class)
    if groups is None:
        if len(usable) < need:
            raise InputError(f"{what} needs {need} classes with at least {per_class} image(s); "
                             f"the data has {len(usable)}")
        return [usable]
    pools = [usable[groups[usable] == g] for g in np.unique(groups[usable])]
    pools = [pool for pool in pools if len(pool) >= need]
    if not pools:
        largest = max((int(np.sum(groups[usable] == g)) for g in np.unique(groups)), default=0)
        raise InputError(f"{what} within one parent folder needs a parent with {need} classes "
                         f"of at least {per_class} image(s); the largest has {largest}")
    return pools


def open_set_episodes(embeddings: np.ndarray, labels: np.ndarray, gallery: int = 10,
                      shots: int = 1, episodes: int = 400, seed: int = 0,
                      groups: np.ndarray | None = None) -> OpenSetEpisodes:
    """Watch-list episodes: ``gallery`` enrolled classes and ``gallery`` stranger classes each.

    ``groups`` maps a class label to its parent id (``parents_of``); with it every episode stays
    inside one parent.
    """
    if gallery < 1 or shots < 1 or episodes < 1:
        raise InputError("--gallery, --shots and --episodes must be at least 1")
    pools = episode_pools(labels, 2 * gallery, shots + 1, groups,
                          f"an open-set episode of {gallery} enrolled and {gallery} stranger "
                          f"classes with {shots} reference(s)")
    rng = np.random.default_rng(seed)
    by_class = {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}
    genuine, correct, strangers = [], [], []
    for _ in range(episodes):
        pool = pools[rng.integers(len(pools))]
        chosen = rng.choice(pool, size=2 * gallery, replace=False)
        protos, probes = [], []
        for c in chosen[:gallery]:
            idx = rng.choice(by_class[int(c)], size=shots + 1, replace=False)
            protos.append(prototype(embeddings[idx[:shots]]))
            probes.append(idx[shots])
        probes += [int(rng.choice(by_class[int(c)])) for c in chosen[gallery:]]
        scores = embeddings[probes] @ np.stack(protos).T  # [2 * gallery, gallery]
        best = np.argmax(scores, axis=1)
        top = scores[np.arange(len(probes)), best]
        genuine.append(top[:gallery])
        correct.append(best[:gallery] == np.arange(gallery))
        strangers.append(top[gallery:])
    # float64: a cut just above a float32 score must not round back onto it
    return OpenSetEpisodes(gallery, shots, episodes, groups is not None,
                           np.concatenate(genuine).astype(np.float64), np.concatenate(correct),
                           np.concatenate(strangers).astype(np.float64))


def open_set_report(result: OpenSetEpisodes, fpirs: tuple[float, ...] = REPORTED_FPIRS,
                    default: dict | None = None) -> dict:
    """DIR at each target FPIR (with its threshold), and at the model card's default cut."""
    at_fpir = []
    for fpir in fpirs:
        rates = result.rates_at(threshold_at_fpir(result.stranger_scores, fpir))
        at_fpir.append({"target_fpir": fpir, **rates})
    report = {"gallery": result.gallery, "shots": result.shots, "episodes": result.episodes,
              "within_parent": result.within_parent,
              "enrolled_probes": len(result.genuine_scores),
              "stranger_probes": len(result.stranger_scores),
              "closed_set_rank1": float(np.mean(result.genuine_correct)),
              "at_fpir": at_fpir}
    if default is not None:
        report["card_default"] = {**default, **result.rates_at(default["threshold"])}
    return report
