"""Parsing records from a hostile producer: every problem is a ``MessageError`` with a reason,
never another exception (pure)."""

import pytest

from twinstream.messages import ImageMessage, MessageError

DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("key,headers,needle", [
    (b"x" * 10_000, [], "bytes"),
    (b"ok", [("attributes", b'{"a": "' + b"x" * 20_000 + b'"}')], "above"),
    (b"ok", [("attributes", b"\xff\xfe")], "not JSON"),
    (b"ok", [("attributes", b'{"a":' * 3000)], "JSON"),
    (b"ok", [("uri", b"/x" * 5000)], "uri header"),
    (b"ok", [("uri", b"/\xff\xfe")], "not UTF-8"),
    (b"ok", [("content-type", b"image/" + b"x" * 1000)], "content-type"),
    (b"ok", [("produced-at", b"-5")], "out of range"),
    (b"ok", [("produced-at", b"9" * 40)], "out of range"),
    (b"ok", [("attributes", b'"just a string"')], "JSON object"),
])
def test_hostile_records_are_refused_with_a_reason(key, headers, needle):
    with pytest.raises(MessageError, match=needle):
        ImageMessage.from_record(key, b"data", headers)


def test_absurdly_deep_attributes_are_a_message_error_not_a_crash():
    with pytest.raises(MessageError):
        ImageMessage.from_record(b"ok", b"data", [("attributes", DEEP[:16_000])])


def test_headers_without_value_are_ignored_and_the_last_repeat_wins():
    msg = ImageMessage.from_record(b"ok", b"data", [("uri", None), ("content-type", b"a/b"),
                                                    ("content-type", b"image/png")])
    assert msg.uri is None and msg.content_type == "image/png"
