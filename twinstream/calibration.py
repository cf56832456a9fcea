"""Reading a similarity: prototypes, calibrated probabilities, and recognition thresholds.

What serving needs to turn a cosine into a decision a person can trust, torch-free (numpy only),
from the model card alone (fields ``calibration`` and ``recognition``, measured on validation
classes when the model was exported, see ``training.trust``):

- ``prototype(references)``: an identity enrolled with several images is the normalised mean of
  their embeddings; evaluation and serving both use this one function, so offline numbers
  describe the live door.
- ``calibrated_probability(card, scores)``: P(same identity) for cosine scores, through the
  card's monotone calibration (logistic, "Platt scaling", see ``Calibration``).
- ``recognition_threshold(card, gallery_size, target_fpir)``: the cut that keeps the share of
  strangers accepted as *someone* (the false-positive identification rate, FPIR) at the target
  for a gallery of that many identities. A stranger compared with N identities has N chances to
  match one, so the cut rises with N; the pair (verification) threshold is only right for N = 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from twinstream.errors import InputError

DEFAULT_TARGET_FPIR = 0.05
GALLERY_SIZES = (1, 10, 100, 1000)
TARGET_FPIRS = (0.001, 0.01, 0.05, 0.1, 0.2)
GUESS_THRESHOLD = 0.5  # only when a card records no threshold at all (as index.recognition)


def prototype(references: np.ndarray) -> np.ndarray:
    """The normalised mean of an identity's reference embeddings (``[K, D]`` or ``[D]``)."""
    refs = np.asarray(references, dtype=np.float32)
    if refs.ndim == 1:
        refs = refs[None, :]
    if refs.ndim != 2 or len(refs) == 0:
        raise InputError("an identity needs at least one reference embedding")
    mean = refs.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not math.isfinite(norm) or norm < 1e-6:
        raise InputError("the references of this identity cancel out (their mean is zero)")
    return mean / norm


# -- calibration ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Calibration:
    """P(same) = sigmoid(slope * cosine + intercept), at ``prior`` share of same pairs.

    Logistic rather than isotonic: it is monotone by construction (slope > 0) and strictly so,
    so two different scores never share one probability (isotonic regression's steps would
    show a wrong match and the right one both as "0.97"); two numbers fitted on a few
    thousand validation pairs do not overfit; and the cosine-to-log-odds relation of a
    metric-learning encoder is close to linear. Its reliability is measured on test classes
    (expected calibration error) by ``twinstream evaluate``.
    """

    slope: float
    intercept: float
    prior: float = 0.5  # the share of same-identity pairs the probabilities assume
    method: str = "platt"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and self.slope > 0 and math.isfinite(self.intercept)):
            raise ValueError(f"a calibration needs a finite positive slope, got {self.slope}")
        if not 0 < self.prior < 1:
            raise ValueError(f"prior must be in (0, 1), got {self.prior}")

    def probability(self, scores: Any, prior: float | None = None) -> np.ndarray:
        """P(same identity) for each score; ``prior`` re-weights to another share of same
        pairs (Bayes: the log-odds shift by the change of prior log-odds)."""
        logit = self.slope * np.asarray(scores, dtype=np.float64) + self.intercept
        if prior is not None:
            if not 0 < prior < 1:
                raise InputError(f"prior must be in (0, 1), got {prior}")
            logit = logit + _log_odds(prior) - _log_odds(self.prior)
        return _sigmoid(logit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        if data.get("method", "platt") != "platt":
            raise ValueError(f"unknown calibration method {data.get('method')!r}")
        return cls(float(data["slope"]), float(data["intercept"]),
                   float(data.get("prior", 0.5)))


def _sigmoid(logit: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) without overflow on either side (so it stays strictly increasing until
    float precision runs out, instead of flattening at a clip)."""
    e = np.exp(-np.abs(logit))
    return np.where(logit >= 0, 1 / (1 + e), e / (1 + e))


def _log_odds(p: float) -> float:
    return math.log(p / (1 - p))


def card_calibration(card: Any) -> Calibration | None:
    """The card's calibration, or None for a card without one (older models) or a damaged one."""
    data = getattr(card, "calibration", None) or {}
    try:
        return Calibration.from_dict(data) if data else None
    except (KeyError, TypeError, ValueError):
        return None


def calibrated_probability(card: Any, scores: Any, prior: float | None = None
                           ) -> np.ndarray | None:
    """P(same identity) for cosine ``scores`` (a number or an array) with the card's
    calibration; None when the card has none (serving then shows the score alone)."""
    calibration = card_calibration(card)
    return None if calibration is None else calibration.probability(scores, prior)


# -- recognition thresholds -----------------------------------------------------------------

@dataclass(frozen=True)
class ThresholdChoice:
    """A recognition cut on cosine, where it came from, and a one-line reason for people."""

    threshold: float
    reason: str
    source: str  # "gallery curve", "pair threshold" or "guess"
    warning: str | None = None  # set when the card could not give what was asked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_target_fpir(target_fpir: float) -> float:
    target = float(target_fpir)
    if not 0 < target < 1:
        raise InputError(f"target FPIR (the share of strangers accepted) must be between 0 "
                         f"and 1, exclusive, got {target_fpir}")
    return target


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not -1 <= value <= 1:
        raise InputError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
    return value


def recognition_threshold(card: Any, gallery_size: int,
                          target_fpir: float = DEFAULT_TARGET_FPIR) -> ThresholdChoice:
    """The cosine cut for recognising against ``gallery_size`` identities at ``target_fpir``.

    Interpolates the card's curve (measured for galleries of 1, 10, 100 and 1,000 identities)
    linearly in log gallery size and log FPIR; beyond the measured range it extends the nearest
    segment and says so. A card without the curve (models exported before it existed) falls
    back to its pair threshold with a warning; never raises for a card, only for bad arguments.
    """
    target = check_target_fpir(target_fpir)
    if int(gallery_size) != gallery_size or gallery_size < 0:
        raise InputError(f"gallery size must be a whole number >= 0, got {gallery_size}")
    size = max(1, int(gallery_size))
    curve = getattr(card, "recognition", None) or {}
    try:
        value, note = threshold_from_curve(curve, size, target)
    except (KeyError, TypeError, ValueError, IndexError):
        return _pair_fallback(card, size, target)
    identities = "identity" if size == 1 else "identities"
    reason = (f"cosine {value:.4f}: accepts about {target:.3g} of strangers against "
              f"{size} enrolled {identities} (model card, {curve.get('measured_on', 'validation')}"
              f"{'; ' + note if note else ''})")
    return ThresholdChoice(value, reason, "gallery curve")


def _pair_fallback(card: Any, size: int, target: float) -> ThresholdChoice:
    pair = getattr(card, "threshold", None)
    warning = ("the model card has no recognition thresholds by gallery size (exported by an "
               "older version); using the pair threshold, which accepts more strangers as the "
               "gallery grows: re-export the model")
    if pair is None:
        return ThresholdChoice(GUESS_THRESHOLD, f"cosine {GUESS_THRESHOLD}: the model card "
                               "records no threshold at all (a guess; pass --threshold)", "guess",
                               warning)
    return ThresholdChoice(float(pair), f"cosine {float(pair):.4f}: the pair (verification) "
                           f"threshold; FPIR {target:.3g} is not guaranteed for {size} "
                           "identities", "pair threshold", warning)


def threshold_from_curve(curve: Mapping[str, Any], gallery_size: int, target_fpir: float
                         ) -> tuple[float, str]:
    """Interpolate ``curve`` (the card's ``recognition`` field) -> (threshold, note)."""
    sizes = np.asarray(curve["gallery_sizes"], dtype=np.float64)
    fpirs = np.asarray(curve["target_fpirs"], dtype=np.float64)
    table = np.asarray(curve["thresholds"], dtype=np.float64)  # [len(fpirs), len(sizes)]
    if table.shape != (len(fpirs), len(sizes)) or len(sizes) < 2 or len(fpirs) < 2 \
            or not np.all(np.isfinite(table)):
        raise ValueError("malformed recognition curve")
    notes = []
    if gallery_size > sizes[-1]:
        notes.append(f"extrapolated beyond the measured {int(sizes[-1])} identities")
    if not fpirs[0] <= target_fpir <= fpirs[-1]:
        notes.append(f"FPIR extrapolated beyond the measured {fpirs[0]:g}-{fpirs[-1]:g}")
    log_size = math.log10(gallery_size)
    by_fpir = np.array([_extend(np.log10(sizes), row, log_size) for row in table])
    value = _extend(np.log10(fpirs), by_fpir, math.log10(target_fpir))
    return float(min(1.0, max(-1.0, value))), "; ".join(notes)


def _extend(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Piecewise-linear interpolation that continues the end segments beyond the range."""
    if x <= xs[0]:
        k = 0
    elif x >= xs[-1]:
        k = len(xs) - 2
    else:
        return float(np.interp(x, xs, ys))
    slope = (ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k])
    return float(ys[k] + slope * (x - xs[k]))
