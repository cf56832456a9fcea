"""VSIM command building, reply parsing and the merge of shard results: pure code, no Redis."""

import zlib

import pytest

from index import layout
from index.query import MAX_EF, MAX_K, Hit, SearchOptions, merge_hits, parse_hits
from twinstream.errors import ConfigError, InputError
from twinstream.settings import load_settings


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, 2.5, True, "10", None])
def test_bad_k_is_an_input_error(k):
    with pytest.raises(InputError, match="k must be"):
        SearchOptions.build(k=k)


@pytest.mark.parametrize("ef", [0, -5, MAX_EF + 1, 1.5])
def test_bad_ef_is_an_input_error(ef):
    with pytest.raises(InputError, match="ef must be"):
        SearchOptions.build(k=5, ef=ef)


def test_command_carries_every_option_in_order():
    options = SearchOptions.build(k=7, filter='.label == "cat"', ef=300, filter_ef=5000,
                                  exact=True)
    assert options.command("key", ("FP32", b"blob")) == [
        "VSIM", "key", "FP32", b"blob", "WITHSCORES", "WITHATTRIBS", "COUNT", 7, "EF", 300,
        "FILTER", '(.label == "cat")', "FILTER-EF", 5000, "TRUTH"]
    plain = SearchOptions.build(k=3).command("key", ("ELE", "id1"))
    assert plain == ["VSIM", "key", "ELE", "id1", "WITHSCORES", "WITHATTRIBS", "COUNT", 3]


def test_filter_ef_without_filter_is_not_sent():
    args = SearchOptions.build(k=3, filter_ef=100).command("key", ("ELE", "x"))
    assert "FILTER-EF" not in args


def test_malformed_filter_fails_when_options_are_built():
    with pytest.raises(InputError, match="malformed filter"):
        SearchOptions.build(k=3, filter=".label ==")


def test_parse_hits_converts_scores_to_cosine_in_both_reply_shapes():
    as_dict = {b"a": [1.0, b'{"label": "cat"}'], b"b": [0.5, None], b"c": [0.0, b"not json"]}
    flat = [b"a", b"1.0", b'{"label": "cat"}', b"b", b"0.5", None, b"c", b"0", b"not json"]
    for raw in (as_dict, flat):
        hits = parse_hits(raw)
        assert [h.id for h in hits] == ["a", "b", "c"]
        assert [h.score for h in hits] == pytest.approx([1.0, 0.0, -1.0])
        assert hits[0].attributes == {"label": "cat"}
        assert hits[1].attributes == {} and hits[2].attributes == {}
    assert parse_hits([]) == [] and parse_hits(None) == []


def test_scores_are_clamped_to_the_cosine_range():
    hits = parse_hits({b"a": [1.0000002, None], b"b": [float("nan"), None]})
    assert hits[0].score == 1.0 and hits[1].score == -1.0


def test_merge_keeps_the_best_k_across_shards_with_stable_ties():
    shard_a = [Hit("a1", 0.9, {}), Hit("a2", 0.5, {})]
    shard_b = [Hit("b1", 0.95, {}), Hit("b2", 0.5, {}), Hit("b3", 0.1, {})]
    merged = merge_hits([shard_a, shard_b], k=4)
    assert [h.id for h in merged] == ["b1", "a1", "a2", "b2"]
    assert [h.id for h in merge_hits([shard_b, shard_a], k=4)] == [h.id for h in merged]
    assert [h.id for h in merge_hits([shard_a, shard_b], k=2, exclude="b1")] == ["a1", "a2"]


def test_shard_routing_is_a_stable_crc32_and_spreads_ids():
    assert layout.shard_of("anything", 1) == 0
    assert layout.shard_of("image-42", 4) == zlib.crc32(b"image-42") % 4
    counts = [0] * 4
    for i in range(4000):
        counts[layout.shard_of(f"img{i:05d}", 4)] += 1
    assert min(counts) > 800, counts


def test_shard_keys_have_their_own_hash_tags():
    one = layout.shard_keys("images", "v1", 1)
    assert one == ["twinstream:{images}:v1:vset"]  # same slot as the metadata
    four = layout.shard_keys("images", "v1", 4)
    tags = {key.split("{")[1].split("}")[0] for key in four}
    assert len(tags) == 4 and "images" not in tags


@pytest.mark.parametrize("name", ["", "a b", "x{y}", "-lead", "é", "a" * 129, None])
def test_unusable_index_names_are_refused(name):
    with pytest.raises(ConfigError, match="not usable"):
        layout.check_name(name)


def test_shard_and_ef_settings_are_validated():
    assert load_settings({"TWINSTREAM_REDIS_SHARDS": "4"}).redis.shards == 4
    assert load_settings({"TWINSTREAM_REDIS_EF": "200"}).redis.ef == 200
    with pytest.raises(ConfigError, match="SHARDS"):
        load_settings({"TWINSTREAM_REDIS_SHARDS": "0"})
    with pytest.raises(ConfigError, match="EF"):
        load_settings({"TWINSTREAM_REDIS_EF": "-1"})
