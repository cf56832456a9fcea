"""The vector store on the session's real Redis 8: writes, reads, search, filters, quantization."""

import numpy as np
import pytest

from index.store import VectorIndex
from tests.index_data import card, clustered, exact_top_k, normalise
from twinstream.errors import IndexMismatchError, InputError, NotFoundError

pytestmark = pytest.mark.integration
DIM = 24


@pytest.fixture
def filled(client, name):
    """A float32 index of 600 clustered vectors with labels and sources."""
    data, labels = clustered(600, DIM, clusters=6, seed=1)
    index = VectorIndex.for_model(client, name, card(dim=DIM), "noquant")
    index.upsert([(f"img{i:04d}", v, {"label": f"c{labels[i]}", "source": f"cam{i % 3}", "n": i})
                  for i, v in enumerate(data)])
    return index, data, labels


def test_upsert_is_idempotent_and_replaces_vector_and_attributes(client, name):
    index = VectorIndex.for_model(client, name, card(dim=DIM), "noquant")
    a, b = normalise(np.random.default_rng(0).normal(size=(2, DIM)))
    assert index.upsert([("x", a, {"label": "first"}), ("y", b, {})]) == 2
    assert index.upsert([("x", a, {"label": "first"})]) == 1  # a replay changes nothing
    assert index.count() == 2
    assert float(index.vector("x") @ a) > 0.99999
    index.upsert([("x", b, {"label": "second"})])
    assert index.count() == 2
    assert float(index.vector("x") @ b) > 0.99999
    assert index.get("x").attributes == {"label": "second"}
    assert index.get("nope") is None and index.attributes("nope") is None


def test_get_exists_count_delete_and_thumbnails(filled):
    index, data, _ = filled
    assert index.count() == 600 and index.exists("img0001") and not index.exists("zzz")
    item = index.get("img0001")
    assert item.attributes["n"] == 1 and float(item.vector @ data[1]) > 0.99999
    index.put_thumbnails({"img0001": b"\xff\xd8jpeg", "img0002": b"\xff\xd8jpg2"})
    assert index.thumbnail("img0001") == b"\xff\xd8jpeg"
    assert index.delete(["img0001", "img0002", "never-there"]) == 2
    assert index.count() == 598 and not index.exists("img0001")
    assert index.thumbnail("img0001") is None
    assert index.delete([]) == 0


def test_search_scores_are_cosines_and_exact_mode_is_the_true_top_k(filled):
    index, data, _ = filled
    rng = np.random.default_rng(7)
    for query in normalise(rng.normal(size=(5, DIM))):
        hits = index.search(query, k=10, exact=True)
        truth = exact_top_k(data, query, 10)
        assert [h.id for h in hits] == [f"img{i:04d}" for i in truth]
        assert [h.score for h in hits] == pytest.approx([float(data[i] @ query) for i in truth],
                                                       abs=1e-5)
        assert all(-1.0 <= h.score <= 1.0 for h in hits)
    everything = index.search(data[0], k=600, exact=True)
    lowest = float(np.min(data @ data[0]))
    assert lowest < 0 and everything[-1].score == pytest.approx(lowest, abs=1e-5)  # cosines


def test_approximate_search_finds_the_true_neighbours(filled):
    index, data, _ = filled
    queries = data[:40] + np.random.default_rng(3).normal(size=(40, DIM)) * 0.05
    recalls = {}
    for ef in (None, 400):
        found = 0
        for q in normalise(queries):
            truth = {f"img{i:04d}" for i in exact_top_k(data, q, 10)}
            found += len(truth & {h.id for h in index.search(q, k=10, ef=ef)})
        recalls[ef] = found / (10 * len(queries))
    assert recalls[None] >= 0.9, recalls
    assert recalls[400] >= recalls[None] - 0.01, recalls


def test_filters_select_by_attributes(filled):
    index, data, labels = filled
    query = data[10]
    hits = index.search(query, k=50, filter='.label == "c2" and .source == "cam1"', exact=True)
    expected = [i for i in range(600) if labels[i] == 2 and i % 3 == 1]
    assert {h.id for h in hits} == {f"img{i:04d}" for i in exact_top_k(
        data[expected], query, 50) for i in [expected[i]]}
    assert all(h.attributes["label"] == "c2" and h.attributes["source"] == "cam1" for h in hits)
    numeric = index.search(query, k=600, filter=".n >= 590 or .n in [3, 4]", exact=True)
    assert sorted(h.attributes["n"] for h in numeric) == [3, 4, *range(590, 600)]
    negated = index.search(query, k=600, filter='not .source == "cam0"', exact=True)
    assert len(negated) == 400


def test_filters_on_unicode_and_quoted_labels(client, name):
    index = VectorIndex.for_model(client, name, card(dim=DIM), "noquant")
    vectors = normalise(np.random.default_rng(2).normal(size=(3, DIM)))
    labels = ["Zoë", 'say "hi"', "it's"]
    index.upsert([(f"u{i}", v, {"label": lab}) for i, (v, lab) in enumerate(zip(
        vectors, labels, strict=True))])
    for i, text in enumerate(['.label == "Zoë"', r'.label == "say \"hi\""', ".label == \"it's\""]):
        hits = index.search(vectors[0], k=3, filter=text)
        assert [h.id for h in hits] == [f"u{i}"], text


def test_more_like_this_leaves_the_item_out(filled):
    index, data, _ = filled
    hits = index.search_by_id("img0005", k=5, exact=True)
    assert "img0005" not in {h.id for h in hits} and len(hits) == 5
    by_vector = [h.id for h in index.search(data[5], k=6, exact=True) if h.id != "img0005"]
    assert [h.id for h in hits] == by_vector[:5]
    filtered = index.search_by_id("img0005", k=3, filter='.source == "cam2"')
    assert all(h.attributes["source"] == "cam2" for h in filtered) and len(filtered) == 3
    with pytest.raises(NotFoundError, match="no id 'missing'"):
        index.search_by_id("missing", k=3)


@pytest.mark.parametrize("quant, redis_name", [("q8", b"int8"), ("noquant", b"f32"),
                                               ("bin", b"bin")])
def test_quantization_is_chosen_at_creation_and_kept(client, name, quant, redis_name):
    data, _ = clustered(300, DIM, seed=4)
    index = VectorIndex.for_model(client, name, card(dim=DIM), quant)
    index.upsert([(f"q{i}", v, {}) for i, v in enumerate(data)])
    assert index.info.quant == quant
    assert client.execute_command("VINFO", index.vset)[b"quant-type"] == redis_name
    other = "noquant" if quant != "noquant" else "q8"
    again = VectorIndex.for_model(client, name, card(dim=DIM), other)  # the first writer decides
    assert again.info.quant == quant
    again.upsert([("q0", data[0], {})])
    top = index.search(data[7], k=1)[0]
    assert top.id == "q7" and top.score > (0.99 if quant != "bin" else 0.9)


def test_quantization_trades_memory(client, name):
    data, _ = clustered(500, 128, seed=5)
    memory = {}
    for quant in ("noquant", "q8", "bin"):
        index = VectorIndex.for_model(client, f"{name}-{quant}", card(dim=128), quant)
        index.upsert([(f"m{i}", v, {}) for i, v in enumerate(data)])
        memory[quant] = client.memory_usage(index.vset, samples=0)
    assert memory["bin"] < memory["q8"] < memory["noquant"], memory


def test_bad_queries_are_clear_errors_and_change_nothing(filled):
    index, data, _ = filled
    before = (index.count(), index.get("img0003"))
    query = data[3]
    bad = [
        (lambda: index.search(query[:10], k=5), IndexMismatchError, "dimension 10"),
        (lambda: index.search(np.full(DIM, np.nan), k=5), InputError, "NaN"),
        (lambda: index.search(np.r_[query[:-1], np.inf], k=5), InputError, "infinity"),
        (lambda: index.search(np.zeros(DIM), k=5), InputError, "all zeros"),
        (lambda: index.search(query, k=0), InputError, "k must be"),
        (lambda: index.search(query, k=-3), InputError, "k must be"),
        (lambda: index.search(query, k=10**9), InputError, "k must be"),
        (lambda: index.search(query, k=5, ef=0), InputError, "ef must be"),
        (lambda: index.search(query, k=5, filter=".label =="), InputError, "malformed filter"),
        (lambda: index.search(query, k=5, filter="label == 'x'"), InputError, "malformed"),
        (lambda: index.search(["a", "b"], k=5), InputError, "not a list of numbers"),
    ]
    for call, error, needle in bad:
        with pytest.raises(error, match=needle):
            call()
    after = (index.count(), index.get("img0003"))
    assert after[0] == before[0] and after[1].attributes == before[1].attributes
    assert np.array_equal(after[1].vector, before[1].vector)


def test_bad_writes_write_nothing(filled):
    index, data, _ = filled
    fresh = normalise(np.random.default_rng(9).normal(size=(3, DIM)))
    batches = [
        ([("new1", fresh[0], {}), ("new2", fresh[1][:5], {})], IndexMismatchError, "dimension"),
        ([("new1", fresh[0], {}), ("new2", np.full(DIM, np.inf), {})], InputError, "infinity"),
        ([("new1", fresh[0], {"model_version": "someone-else"})], IndexMismatchError,
         "another model"),
        ([("new1", fresh[0], {"bad": {1, 2}})], InputError, "not a JSON value"),
        ([("new1", fresh[0], {"x": float("nan")})], InputError, "must be finite"),
        ([("", fresh[0], {})], InputError, "must not be empty"),
        ([("img0004", fresh[2], {}), ("new1", fresh[0], "label")], InputError, "JSON object"),
    ]
    for batch, error, needle in batches:
        with pytest.raises(error, match=needle):
            index.upsert(batch)
    assert index.count() == 600 and not index.exists("new1")
    assert float(index.vector("img0004") @ data[4]) > 0.99999  # not overwritten by fresh[2]
