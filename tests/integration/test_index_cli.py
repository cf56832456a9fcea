"""``twinstream query | enroll | recognize | index ...`` end to end, in-process, on real Redis 8."""

import json

import pytest

from index.store import VectorIndex, connect
from tests.index_data import card
from twinstream.cli import main
from twinstream.runtime import Encoder

pytestmark = pytest.mark.integration


@pytest.fixture
def images(tmp_path):
    from training.shapes import generate_shapes

    generate_shapes(tmp_path / "shapes", per_class=2, seed=21)
    return {p.parent.name: p for p in sorted((tmp_path / "shapes").rglob("*_00000.png"))}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_enroll_query_recognize_and_manage_versions(model_settings, images, capsys):
    s = model_settings
    where = ["--model", s.model.path, "--redis-url", s.redis.url, "--index", s.redis.index]
    code, _, err = run(capsys, "query", images["red_circle"], *where)
    assert code == 5 and "does not exist yet" in err

    for label in ("red_circle", "blue_triangle", "green_rectangle"):
        code, out, _ = run(capsys, "enroll", images[label], "--label", label, *where, "--json")
        assert code == 0 and json.loads(out)["live"] is True
    code, out, _ = run(capsys, "query", images["red_circle"], "-k", "3", *where, "--json")
    hits = json.loads(out)["hits"]
    assert code == 0 and len(hits) == 3 and hits[0]["attributes"]["label"] == "red_circle"
    assert hits[0]["score"] == pytest.approx(1.0, abs=0.01)  # itself (q8: nearly exactly)

    code, out, _ = run(capsys, "query", images["red_circle"], "-k", "3", *where,
                       "--filter", '.label != "red_circle" and .source == "enroll"')
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and "red_circle" not in out
    assert all(line.split()[1].startswith(("+", "-")) for line in lines)  # rank, score, id, attrs

    code, out, _ = run(capsys, "recognize", images["blue_triangle"], *where, "--json")
    assert code == 0 and json.loads(out)["label"] == "blue_triangle"

    version = VectorIndex.live_version(connect(s.redis.url), s.redis.index)
    code, out, _ = run(capsys, "index", "stats", "--redis-url", s.redis.url, "--index",
                       s.redis.index, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["count"] == 3 and stats["thumbnails"] == 3
    assert stats["version"] == version and stats["live"]

    # a second version (another model) waits; queries with this model are then refused
    other = VectorIndex.for_model(connect(s.redis.url), s.redis.index, card("other", 32))
    code, out, _ = run(capsys, "index", "promote", "other", "--redis-url", s.redis.url,
                       "--index", s.redis.index)
    assert code == 0 and f"{version} -> other" in out
    code, _, err = run(capsys, "query", images["red_circle"], *where)
    assert code == 4 and "another model" in err
    code, _, err = run(capsys, "index", "drop", "other", "--redis-url", s.redis.url, "--index",
                       s.redis.index)
    assert code == 2 and "is the live version" in err
    run(capsys, "index", "promote", version, "--redis-url", s.redis.url, "--index", s.redis.index)
    code, out, _ = run(capsys, "index", "drop", "other", "--redis-url", s.redis.url, "--index",
                       s.redis.index, "--json")
    assert code == 0 and json.loads(out)["dropped"] == "other" and other.count() == 0


@pytest.mark.parametrize("extra, code, needle", [
    (["-k", "0"], 2, "k must be"),
    (["-k", "100000"], 2, "k must be"),
    (["--filter", ".label =="], 2, "malformed filter"),
    (["--filter", "label == 'cat'"], 2, "write attributes as .label"),
    (["--vector", "[1, 2]"], 2, "give exactly one of"),
])
def test_bad_queries_are_one_line_errors(model_settings, images, capsys, extra, code, needle):
    s = model_settings
    where = ["--model", s.model.path, "--redis-url", s.redis.url, "--index", s.redis.index]
    run(capsys, "enroll", images["red_circle"], "--label", "x", *where)
    got, out, err = run(capsys, "query", images["red_circle"], *where, *extra, "--json")
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and needle in lines[0], err
    assert json.loads(out)["exit_code"] == code
    assert VectorIndex.live(connect(s.redis.url), s.redis.index).count() == 1


def test_vector_queries_and_their_errors(model_settings, images, capsys):
    s = model_settings
    where = ["--redis-url", s.redis.url, "--index", s.redis.index]
    _, out, _ = run(capsys, "enroll", images["red_circle"], "--label", "x", "--model",
                    s.model.path, *where, "--json")
    (image_id,) = json.loads(out)["ids"]
    index = VectorIndex.live(connect(s.redis.url), s.redis.index)
    stored = index.vector(image_id)
    code, out, _ = run(capsys, "query", "--vector", json.dumps(stored.tolist()), *where, "--json")
    assert code == 0, out
    top = json.loads(out)["hits"][0]
    assert code == 0 and top["id"] == image_id and top["score"] > 0.99
    for bad, needle in ((json.dumps([0.1] * (index.info.dim + 1)), "dimension"),
                        ('["a", "b"]', "not a .npy file"), ("[NaN" + ", 1" * 31 + "]", "NaN")):
        code, _, err = run(capsys, "query", "--vector", bad, *where)
        assert code in (2, 4) and needle in err, err


def test_recognize_with_nothing_enrolled_says_so(model_settings, images, capsys):
    s = model_settings
    VectorIndex.for_model(connect(s.redis.url), s.redis.index, Encoder(s.model.path).card)
    code, out, _ = run(capsys, "recognize", images["red_circle"], "--model", s.model.path,
                       "--redis-url", s.redis.url, "--index", s.redis.index)
    assert code == 0 and out.startswith("unknown") and "enrol some first" in out
