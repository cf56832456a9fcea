"""The card's promises, read at serving time: prototypes, probabilities, recognition cuts."""

import dataclasses
import json
import warnings

import numpy as np
import pytest

from tests.index_data import balanced_classes
from training.trust import fit_calibration, measure_trust, recognition_curve, reliability
from twinstream.calibration import (
    Calibration,
    calibrated_probability,
    prototype,
    recognition_threshold,
    threshold_from_curve,
)
from twinstream.errors import InputError
from twinstream.modelcard import ModelCard
from twinstream.preprocess import Preprocessing


def clustered(classes=30, per_class=12, dim=16, spread=0.45, seed=0):
    return balanced_classes(classes, per_class, dim, spread, seed)


def card(**fields) -> ModelCard:
    return ModelCard(embedding_dim=16, preprocessing=Preprocessing(), **fields)


def test_prototype_is_the_normalised_mean_of_the_references():
    refs = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]], dtype=np.float32)
    expected = np.array([1, 2, 0]) / np.sqrt(5)
    assert np.allclose(prototype(refs), expected, atol=1e-6)
    assert np.allclose(prototype(refs[0]), refs[0])  # one reference is itself
    with pytest.raises(InputError, match="at least one reference"):
        prototype(np.zeros((0, 3)))
    with pytest.raises(InputError, match="cancel out"):
        prototype(np.array([[1.0, 0], [-1.0, 0]]))


def test_calibration_is_monotone_and_within_0_1():
    emb, labels = clustered()
    i, j = np.triu_indices(len(labels), 1)
    scores, same = np.einsum("nd,nd->n", emb[i], emb[j]), (labels[i] == labels[j]).astype(int)
    calibration = fit_calibration(scores, same)
    grid = np.linspace(-1, 1, 401)
    p = calibration.probability(grid)
    assert np.all((p >= 0) & (p <= 1)) and np.all(np.diff(p) >= 0)
    inside = (p[:-1] > 1e-12) & (p[1:] < 1 - 1e-12)
    assert np.all(np.diff(p)[inside] > 0)  # strictly increasing wherever float64 can tell
    assert p[0] < 0.05 and p[-1] > 0.95
    # a rarer prior lowers every probability, keeping the order
    rare = calibration.probability(grid, prior=0.01)
    assert np.all(rare < p) and np.all(np.diff(rare) >= 0)


def test_calibration_is_reliable_on_new_classes_of_the_same_kind():
    emb, labels = clustered(seed=1)
    trust = measure_trust(emb, labels)
    test_emb, test_labels = clustered(seed=2)
    i, j = np.triu_indices(len(test_labels), 1)
    scores = np.einsum("nd,nd->n", test_emb[i], test_emb[j])
    same = (test_labels[i] == test_labels[j]).astype(int)
    keep = np.concatenate([np.flatnonzero(same), np.flatnonzero(same == 0)[:same.sum()]])
    probability = calibrated_probability(card(calibration=trust["calibration"]), scores[keep])
    assert reliability(probability, same[keep])["ece"] < 0.05


def test_a_card_without_calibration_gives_no_probability():
    assert calibrated_probability(card(), [0.3, 0.9]) is None
    assert calibrated_probability(card(calibration={"slope": "x"}), 0.5) is None  # damaged
    with pytest.raises(ValueError, match="positive slope"):
        Calibration(slope=-1.0, intercept=0.0)


def test_recognition_cuts_rise_with_the_gallery_and_fall_with_the_target_fpir():
    emb, labels = clustered(classes=40)
    curve = recognition_curve(emb, labels)
    table = np.array(curve["thresholds"])  # [fpir, gallery size]
    assert np.all(np.diff(table, axis=1) >= 0)  # bigger gallery: higher cut
    assert np.all(np.diff(table, axis=0) <= 0)  # more strangers allowed: lower cut
    assert table[2, 1] > table[2, 0]  # 10 identities need a stricter cut than one
    methods = np.array(curve["method"])
    assert methods[2, 1] == "simulated" and methods[2, 3] != "simulated"  # 1000 > 40 classes


def test_the_cut_holds_fpir_on_new_strangers():
    """The cut for a gallery of 10 at FPIR 5%, measured on one set of classes, accepts about 5%
    of strangers in galleries drawn from new classes of the same kind."""
    from training.openset import open_set_episodes

    emb, labels = clustered(classes=40, seed=3)
    choice = recognition_threshold(card(recognition=recognition_curve(emb, labels)), 10, 0.05)
    new_emb, new_labels = clustered(classes=40, seed=4)
    episodes = open_set_episodes(new_emb, new_labels, gallery=10, episodes=400, seed=1)
    assert episodes.rates_at(choice.threshold)["fpir"] == pytest.approx(0.05, abs=0.03)


def test_recognition_threshold_interpolates_in_log_gallery_size():
    curve = {"gallery_sizes": [1, 10, 100, 1000], "target_fpirs": [0.01, 0.1],
             "thresholds": [[0.6, 0.7, 0.8, 0.9], [0.5, 0.6, 0.7, 0.8]]}
    c = card(recognition=curve, threshold=0.55)
    assert recognition_threshold(c, 10, 0.01).threshold == pytest.approx(0.7)
    assert recognition_threshold(c, 32, 0.01).threshold == pytest.approx(0.7505, abs=1e-4)
    between = recognition_threshold(c, 10, 0.0316227766).threshold  # halfway in log FPIR
    assert between == pytest.approx(0.65)
    beyond = recognition_threshold(c, 10_000, 0.01)
    assert beyond.threshold == pytest.approx(1.0) and "extrapolated" in beyond.reason
    zero = recognition_threshold(c, 0, 0.01)  # nobody enrolled yet: as for one identity
    assert zero.threshold == pytest.approx(0.6) and zero.source == "gallery curve"
    assert "10 enrolled identities" in recognition_threshold(c, 10, 0.01).reason
    assert threshold_from_curve(curve, 100, 0.1)[0] == pytest.approx(0.7)


def test_older_cards_fall_back_to_the_pair_threshold_with_a_warning():
    old = recognition_threshold(card(threshold=0.62), 50, 0.05)
    assert old.threshold == pytest.approx(0.62) and old.source == "pair threshold"
    assert old.warning and "re-export" in old.warning
    bare = recognition_threshold(card(), 50, 0.05)
    assert bare.source == "guess" and bare.warning
    broken = recognition_threshold(card(threshold=0.62, recognition={"thresholds": "?"}), 5)
    assert broken.source == "pair threshold"  # a damaged curve never crashes serving


@pytest.mark.parametrize("fpir", [0, 1, -0.1, 1.5, float("nan")])
def test_target_fpir_out_of_range_is_refused(fpir):
    with pytest.raises(InputError, match="target FPIR"):
        recognition_threshold(card(threshold=0.5), 10, fpir)


def test_new_card_fields_round_trip_and_leave_the_version_alone():
    emb, labels = clustered()
    trust = measure_trust(emb, labels)
    plain = card(threshold=0.5)
    full = dataclasses.replace(plain, **trust)
    again = ModelCard.from_metadata(full.to_metadata())
    assert again == full and again.calibration["method"] == "platt"
    assert json.loads(full.to_metadata()["twinstream.recognition"])["gallery_sizes"] == \
        [1, 10, 100, 1000]
    assert full.semantics() == plain.semantics()  # descriptive: not part of the version
    old = {k: v for k, v in plain.to_metadata().items()
           if k not in ("twinstream.calibration", "twinstream.recognition")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ModelCard.from_metadata(old).recognition == {}  # an older card still loads
