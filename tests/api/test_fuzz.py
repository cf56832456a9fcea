"""Property-based fuzz of /search and /verify: random bytes, random form fields, random JSON.

Whatever arrives, the answer is never a 5xx (a 503 would mean a service is down, which it is not
here) and every error has the JSON error body.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests import imagegen

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _valid_images() -> list[bytes]:
    return [imagegen.encode(imagegen.gradient(24, seed=s)) for s in range(3)] + \
        list(imagegen.unusual_but_valid().values())[:4]


VALID = _valid_images()
HOSTILE = [v for k, v in imagegen.hostile().items() if k != "decompression_bomb"]

image_bytes = st.one_of(
    st.binary(max_size=600),
    st.sampled_from(VALID + HOSTILE),
    # a valid image cut short, or with a few bytes flipped
    st.builds(lambda data, cut: data[:cut], st.sampled_from(VALID), st.integers(0, 400)),
    st.builds(lambda data, at, b: data[:at] + bytes([b]) + data[at + 1:],
              st.sampled_from(VALID), st.integers(0, 300), st.integers(0, 255)),
)
field_value = st.one_of(
    st.text(max_size=40),
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "5", "1000", "1001", '.label == "red_circle"', ".x >", "(((", "nan",
                     '.label in ["a", "b"]', "0", "-1", "1e309"]),
)
form_fields = st.dictionaries(
    st.one_of(st.sampled_from(["k", "filter", "threshold", "id", "label"]), st.text(max_size=8)),
    field_value, max_size=4)
file_name = st.one_of(st.text(max_size=20), st.sampled_from(["a.png", "x.jpg", ""]))
content_type = st.sampled_from(["image/png", "image/jpeg", "application/octet-stream",
                                "text/plain", ""])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=40) | st.dictionaries(
        st.text(max_size=8), children, max_size=5),
    max_leaves=80)
json_queries = st.one_of(
    json_values,
    st.fixed_dictionaries({"vector": st.lists(st.floats(-1, 1, width=32), min_size=32,
                                              max_size=32)}, optional={"k": st.integers()}),
    # the session model's dimension is 32: some of these are well-formed queries
    st.fixed_dictionaries({"vector": st.lists(st.floats(width=32) | st.floats(-1, 1, width=32),
                                              min_size=30, max_size=34)},
                          optional={"k": json_values | st.integers(), "filter": field_value,
                                    "id": st.text(max_size=20)}),
)


def check(response) -> None:
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert body["status"] == response.status_code and body["message"]


@FUZZ
@given(data=image_bytes, fields=form_fields, name=file_name, ctype=content_type)
def test_search_multipart_never_fails_on_the_server(api, gallery, data, fields, name, ctype):
    files = {"image": (name, data, ctype)} if ctype else {"image": (name, data)}
    check(api.client.post("/search", files=files, data=fields))


@FUZZ
@given(query=json_queries)
def test_search_json_never_fails_on_the_server(api, gallery, query):
    check(api.client.post("/search", content=json.dumps(query).encode(),
                          headers={"content-type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=300),
       ctype=st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=x",
                              "application/json", "application/x-www-form-urlencoded",
                              "image/png", "text/plain; charset=utf-8", ""]))
def test_search_raw_bodies_never_fail_on_the_server(api, gallery, raw, ctype):
    headers = {"content-type": ctype} if ctype else {}
    check(api.client.post("/search", content=raw, headers=headers))


@FUZZ
@given(a=image_bytes, b=image_bytes, fields=form_fields, drop=st.sampled_from(["", "a", "b"]))
def test_verify_never_fails_on_the_server(api, gallery, a, b, fields, drop):
    files = {k: (f"{k}.png", v) for k, v in (("a", a), ("b", b)) if k != drop}
    check(api.client.post("/verify", files=files, data=fields))


# --- issue 11: every route, byte-level bodies, and the connection after each answer ------------

ROUTES = [("POST", "/search"), ("POST", "/recognize"), ("POST", "/verify"), ("POST", "/enroll"),
          ("POST", "/ingest"), ("DELETE", "/items/{id}"), ("GET", "/items/{id}"),
          ("GET", "/items/{id}/thumbnail"), ("GET", "/readyz"), ("GET", "/healthz"),
          ("GET", "/metrics"), ("GET", "/"), ("GET", "/openapi.json")]

hostile_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["\udc80", "a\x1b[2J", "x" * 700, "../../etc/passwd", "%00", "%ff%fe",
                     "a/b/thumbnail", "", " ", "\u2028"]),
)
raw_bodies = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
                     b'{"id": "\\udc80", "k": 3}', b'{"vector": [1e999]}', b"\xff\xfe\xfd",
                     b'{"k": ' + b"9" * 5000 + b"}", b'{"filter": "\\u0000"}', b"{}"]),
    st.builds(lambda t: json.dumps({"id": t, "filter": t, "k": 3}).encode(), hostile_text),
)
content_types = st.sampled_from(["application/json", "multipart/form-data; boundary=xyz",
                                 "multipart/form-data", "application/x-www-form-urlencoded",
                                 "text/plain", "image/png", ""])


def check_with_documented_503(response) -> None:
    """Like ``check``, but a 503 is allowed when it is the decode budget's (with Retry-After)."""
    if response.status_code == 503 and response.headers.get("retry-after"):
        return
    check(response)


@FUZZ
@given(route=st.sampled_from(ROUTES), item=hostile_text, raw=raw_bodies, ctype=content_types)
def test_every_route_answers_byte_level_bodies_without_a_5xx(write_api, route, item, raw, ctype):
    from urllib.parse import quote

    method, path = route
    path = path.replace("{id}", quote(item.encode("utf-8", "surrogatepass"), safe="") or "x")
    headers = {"content-type": ctype} if ctype else {}
    response = write_api.client.request(method, path, content=raw, headers=headers)
    check_with_documented_503(response)
    assert write_api.client.get("/healthz").status_code == 200  # the server still answers


@FUZZ
@given(data=image_bytes, fields=form_fields, label=hostile_text, attrs=raw_bodies)
def test_write_routes_never_fail_on_the_server(write_api, data, fields, label, attrs):
    form = {**fields, "label": label.encode("utf-8", "surrogatepass"),
            "attributes": attrs}
    for path in ("/enroll", "/ingest"):
        check_with_documented_503(write_api.client.post(
            path, files={"image": ("a.png", data)}, data=form))


@FUZZ
@given(data=image_bytes, fields=form_fields)
def test_recognize_never_fails_on_the_server(api, gallery, data, fields):
    check(api.client.post("/recognize", files={"image": ("q.png", data)}, data=fields))
