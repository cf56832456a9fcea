import pytest

from twinstream.messages import ImageMessage, MessageError, content_id


def test_round_trip_keeps_everything():
    msg = ImageMessage(id="abc", data=b"\x89PNG...", content_type="image/png",
                       attributes={"label": "cat", "source": "cam1"}, uri=None,
                       produced_at_ms=1234)
    key, value, headers = msg.to_record()
    assert key == b"abc" and value == msg.data
    assert ImageMessage.from_record(key, value, headers) == msg


def test_tombstone_has_null_value():
    key, value, headers = ImageMessage(id="gone", data=None).to_record()
    parsed = ImageMessage.from_record(key, value, headers)
    assert value is None and parsed.is_tombstone


def test_by_reference_message_keeps_uri():
    msg = ImageMessage(id="big", data=b"", uri="/shared/big.png", content_type="image/png")
    parsed = ImageMessage.from_record(*msg.to_record())
    assert parsed.uri == "/shared/big.png" and not parsed.is_tombstone


@pytest.mark.parametrize("key,headers", [
    (None, []),
    (b"", []),
    (b"\xff\xfe", []),
    (b"ok", [("attributes", b"{not json")]),
    (b"ok", [("attributes", b"[1, 2]")]),
    (b"ok", [("produced-at", b"yesterday")]),
])
def test_malformed_records_are_refused_with_a_reason(key, headers):
    with pytest.raises(MessageError):
        ImageMessage.from_record(key, b"data", headers)


def test_content_id_is_stable_and_content_sensitive():
    assert content_id(b"a") == content_id(b"a")
    assert content_id(b"a") != content_id(b"b")
