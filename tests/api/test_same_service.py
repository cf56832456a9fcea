"""Issue 12: the CLI and the HTTP API call the same search service, so the same request gets the
same answer and the same refusal from both (real server, real Redis 8)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest

from index.store import VectorIndex, connect
from tests import imagegen
from tests.api.conftest import running_server, unique_settings
from twinstream.cli import main
from twinstream.settings import settings_env

pytestmark = pytest.mark.integration


def cli(capsys, monkeypatch, settings, *argv) -> tuple[int, str, str]:
    for key in [k for k in os.environ if k.startswith("TWINSTREAM_")]:
        monkeypatch.delenv(key)
    for key, value in settings_env(settings).items():
        monkeypatch.setenv(key, value)
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_and_the_api_give_the_same_hits(api, gallery, capsys, monkeypatch, tmp_path):
    _, path = gallery.first_of("blue_circle")
    code, out, err = cli(capsys, monkeypatch, api.settings, "query", path, "-k", "5",
                         "--filter", '.label != "red_square"', "--json")
    assert code == 0, err
    by_cli = [(h["id"], round(h["score"], 5)) for h in json.loads(out)["hits"]]
    r = api.client.post("/search", files={"image": ("q.png", path.read_bytes())},
                        data={"k": "5", "filter": '.label != "red_square"'})
    assert r.status_code == 200, r.text
    by_api = [(h["id"], round(h["score"], 5)) for h in r.json()["hits"]]
    assert by_cli == by_api and len(by_cli) == 5


@pytest.mark.parametrize("argv, form, exit_code, status", [
    (["--filter", ".label == "], {"filter": ".label == "}, 2, 422),
    (["-k", "0"], {"k": "0"}, 2, 422),
])
def test_the_cli_and_the_api_refuse_the_same_request_alike(api, gallery, capsys, monkeypatch,
                                                           argv, form, exit_code, status):
    _, path = gallery.first_of("blue_circle")
    code, _, err = cli(capsys, monkeypatch, api.settings, "query", path, *argv)
    r = api.client.post("/search", files={"image": ("q.png", path.read_bytes())}, data=form)
    assert code == exit_code and r.status_code == status, (err, r.text)
    cli_message = err.strip().splitlines()[0].removeprefix("twinstream: error: ")
    assert r.json()["message"] == cli_message


def test_enrolling_into_an_index_of_another_model_is_refused_by_both(
        base_settings, stack, onnx_model, encoder, capsys, monkeypatch, tmp_path):
    """Before: only the API refused; the CLI wrote vectors of another model into the index."""
    settings = unique_settings(base_settings, stack, onnx_model)
    other = replace(encoder.card, version="0123456789abcdef")
    VectorIndex.for_model(connect(settings.redis.url), settings.redis.index, other, "noquant")
    image = tmp_path / "ref.png"
    image.write_bytes(imagegen.encode(imagegen.gradient(32, seed=4)))
    code, _, err = cli(capsys, monkeypatch, settings, "enroll", image, "--label", "ada")
    with running_server(settings, encoder) as server:
        r = server.client.post("/enroll", files={"image": ("ref.png", image.read_bytes())},
                               data={"label": "ada"})
    assert code == 4 and r.status_code == 409, (err, r.text)
    assert r.json()["message"] == err.strip().removeprefix("twinstream: error: ")
    client = connect(settings.redis.url)
    assert VectorIndex.live(client, settings.redis.index).count() == 0  # nothing written
