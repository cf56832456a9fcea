"""The one place where ids, labels and attributes are checked (issue 11): what passes here can be
stored in Redis, sent to Kafka and printed on a terminal; what cannot is an InputError."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinstream.errors import InputError
from twinstream.fields import (
    MAX_ATTRIBUTE_DEPTH,
    MAX_ATTRIBUTES_BYTES,
    MAX_ID_BYTES,
    check_attributes,
    check_id,
    check_label,
    parse_attributes,
    printable,
    quote,
)
from twinstream.messages import ImageMessage, MessageError


@pytest.mark.parametrize("raw, needle", [
    (b'{"x": NaN}', "NaN"),
    (b'{"x": -Infinity}', "Infinity"),
    (b'{"x": 1e999}', "out of range"),
    (b'{"x": ' + b"9" * 5000 + b"}", "not JSON"),
    (b'{"x": "\\udc80"}', "surrogate"),
    (b'{"\\udc80": 1}', "surrogate"),
    (b'{"a":' * 2000 + b"1" + b"}" * 2000, "nested"),
    (b'{"a":' * (MAX_ATTRIBUTE_DEPTH + 1) + b"1" + b"}" * (MAX_ATTRIBUTE_DEPTH + 1), "nested"),
    (b'{"label": "a\\u001b[2J"}', "control"),
    (b'{"label": ""}', "empty"),
    (b'{"label": 3}', "text"),
    (b"[1, 2]", "object"),
    (b"\xff\xfe", "not JSON"),
    (b'{"a": "' + b"x" * MAX_ATTRIBUTES_BYTES + b'"}', "bytes"),
])
def test_attributes_that_redis_or_a_terminal_cannot_take_are_refused(raw, needle):
    with pytest.raises(InputError) as err:
        parse_attributes(raw)
    assert needle in err.value.message
    assert "\x1b" not in err.value.message and len(err.value.message) < 300


def test_attributes_are_normalised_and_kept_otherwise():
    attrs = parse_attributes(b'{"label": "  cat ", "n": 1.5, "tags": ["a", null, true],'
                             b' "deep": {"x": {"y": 2}}, "name": "caf\\u00e9"}')
    assert attrs == {"label": "cat", "n": 1.5, "tags": ["a", None, True],
                     "deep": {"x": {"y": 2}}, "name": "café"}
    assert parse_attributes(None) == {} and parse_attributes(b"") == {}


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                    max_leaves=30))
@settings(max_examples=300, deadline=None)
def test_whatever_passes_the_check_can_be_stored_as_redis_json(value):
    """Property: anything check_attributes accepts survives the index's own encoding."""
    try:
        checked = check_attributes({"v": value})
    except InputError:
        return
    text = json.dumps(checked, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert json.loads(text) == checked


@pytest.mark.parametrize("bad", ["", "a\tb", "x" * (MAX_ID_BYTES + 1), "é" * 300, "a\udc80",
                                 "line\u2028sep", 7])
def test_ids_that_cannot_be_keys_are_refused_with_a_short_quote(bad):
    with pytest.raises(InputError) as err:
        check_id(bad)
    assert len(err.value.message) < 200


def test_labels_are_stripped_bounded_and_printable():
    assert check_label("  Ada Lovelace ") == "Ada Lovelace"
    for bad in ("", "   ", "x" * 201, "a\x1b[2Jb", "a\nb", "\udcff"):
        with pytest.raises(InputError):
            check_label(bad)


def test_printable_escapes_what_moves_a_terminal():
    assert printable("ok é 猫") == "ok é 猫"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("x\udc80") == "x\\udc80"
    assert printable("two\nlines\tand\x07", keep="\n\t") == "two\nlines\tand\\x07"
    assert quote("z" * 100).endswith("(100 characters)") and len(quote("z" * 100)) < 70


def test_our_producers_refuse_what_a_worker_would_dead_letter():
    with pytest.raises(InputError):
        ImageMessage(id="a", data=b"x", attributes={"x": float("nan")}).to_record()
    with pytest.raises(InputError):
        ImageMessage(id="a", data=b"x", attributes={"source": "/img/\udcff.png"}).to_record()


def test_a_record_with_a_control_character_in_its_uri_is_a_parse_error():
    with pytest.raises(MessageError):
        ImageMessage.from_record(b"k", b"", [("uri", b"/a\x1b[2J.png")])
