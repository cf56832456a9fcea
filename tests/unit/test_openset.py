"""Open-set episodes (the door): DIR and FPIR against brute-force counts, parents, refusals."""

import numpy as np
import pytest

from tests.index_data import balanced_classes
from training.metrics import few_shot_episodes
from training.openset import (
    OpenSetEpisodes,
    open_set_episodes,
    open_set_report,
    parents_of,
    threshold_at_fpir,
)
from twinstream.errors import InputError


def clustered(classes=24, per_class=6, dim=12, spread=0.6, seed=0):
    return balanced_classes(classes, per_class, dim, spread, seed)


def test_rates_match_a_count_by_hand():
    result = OpenSetEpisodes(2, 1, 1, False, genuine_scores=np.array([0.9, 0.8, 0.4, 0.7]),
                             genuine_correct=np.array([True, False, True, True]),
                             stranger_scores=np.array([0.85, 0.3, 0.5, 0.75]))
    rates = result.rates_at(0.7)
    assert rates["dir"] == pytest.approx(2 / 4)  # 0.9 and 0.7 correct and accepted
    assert rates["fpir"] == pytest.approx(2 / 4)  # 0.85 and 0.75 accepted
    assert rates["strangers_rejected"] == pytest.approx(0.5)
    fpir, fnir = result.det()
    assert fpir[0] == 1.0 and np.all(np.diff(fpir) <= 0) and np.all(np.diff(fnir) >= 0)


def test_threshold_at_fpir_never_exceeds_the_target_and_rises_as_it_falls():
    scores = np.random.default_rng(0).normal(size=1000)
    cuts = [threshold_at_fpir(scores, f) for f in (0.2, 0.1, 0.05, 0.01, 0.001)]
    assert np.all(np.diff(cuts) > 0)
    for f, cut in zip((0.2, 0.1, 0.05, 0.01, 0.001), cuts, strict=True):
        assert np.mean(scores >= cut) <= f
        assert np.mean(scores >= cut) >= f - 0.002  # and not needlessly strict


def test_episodes_count_probes_and_prefer_the_right_identity():
    emb, labels = clustered()
    result = open_set_episodes(emb, labels, gallery=5, shots=2, episodes=50, seed=1)
    assert len(result.genuine_scores) == len(result.stranger_scores) == 250
    report = open_set_report(result, default={"threshold": 0.5, "reason": "test"})
    assert report["closed_set_rank1"] > 0.9  # well separated clusters
    dirs = [point["dir"] for point in report["at_fpir"]]
    assert dirs == sorted(dirs)  # accepting more strangers never recognises fewer people
    assert report["card_default"]["fpir"] == pytest.approx(result.rates_at(0.5)["fpir"])


def test_within_parent_episodes_stay_inside_one_parent():
    names = [f"alpha{a}/char{c:02d}" for a in range(3) for c in range(8)]
    groups = parents_of(names)
    assert list(groups[:8]) == [0] * 8 and groups[-1] == 2
    emb, labels = clustered(classes=24)
    episodes = few_shot_episodes(emb, labels, ways=6, shots=1, episodes=40, seed=0,
                                 groups=groups)
    for k in range(40):
        chosen = episodes.true[k * 6:(k + 1) * 6]
        assert len(set(groups[chosen])) == 1
    with pytest.raises(InputError, match="largest has 8"):
        open_set_episodes(emb, labels, gallery=5, groups=groups)  # 10 classes in one parent


def test_too_few_classes_for_the_gallery_is_refused():
    emb, labels = clustered(classes=7)
    with pytest.raises(InputError, match="needs 8 classes"):
        open_set_episodes(emb, labels, gallery=4, shots=1)
