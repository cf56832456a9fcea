"""Reading by-reference images (issue 11): only regular files below allowed roots, never
blocking for good, with reasons that never quote a file's contents."""

import os
import threading
import time
from dataclasses import replace

import pytest

from twinstream.errors import InputError
from twinstream.files import NotARegularFile, display_path, read_regular_file
from twinstream.messages import ImageMessage
from twinstream.settings import WorkerSettings
from worker.fetch import Fetcher, FetchError


def fetcher(**settings) -> Fetcher:
    return Fetcher(replace(WorkerSettings(), **settings))


def test_by_reference_images_are_off_unless_a_root_is_set(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    with pytest.raises(FetchError, match="switched off"):
        fetcher().read_uri(str(image))
    assert fetcher(uri_roots=str(tmp_path)).read_uri(str(image)) == b"png"


def test_fifos_and_devices_are_refused_at_once_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nobody writes: opening it for reading would block for ever
    f = fetcher(uri_roots=f"{tmp_path}:/dev")
    started = time.monotonic()
    for uri in (str(fifo), "/dev/zero", "/dev/null"):
        with pytest.raises(FetchError, match="not a regular file"):
            f.read_uri(uri)
    assert time.monotonic() - started < 2
    with pytest.raises(FetchError, match="is a folder"):
        f.read_uri(str(tmp_path))


def test_a_read_that_hangs_fails_the_record_within_the_timeout(tmp_path, monkeypatch):
    image = tmp_path / "slow.png"
    image.write_bytes(b"png")
    release = threading.Event()

    def hung_read(*_args, **_kwargs):
        release.wait(30)  # a hard NFS mount that stopped answering
        return b""

    monkeypatch.setattr("worker.fetch.read_regular_file", hung_read)
    f = fetcher(uri_roots=str(tmp_path), uri_read_timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(FetchError, match="took longer than"):
        f.read_uri(str(image))
    assert time.monotonic() - started < 2
    release.set()


def test_reasons_never_quote_the_contents_of_a_file_that_is_not_an_image(tmp_path):
    from twinstream.errors import ImageDecodeError
    from twinstream.preprocess import decode_image

    secret = tmp_path / "environ"
    secret.write_bytes(b"AWS_SECRET=hunter2\n")
    data = fetcher(uri_roots=str(tmp_path)).image_bytes(
        ImageMessage(id="x", data=b"", uri=str(secret)))
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data)
    assert "hunter2" not in err.value.message and "AWS" not in err.value.message


def test_read_regular_file_takes_files_and_refuses_the_rest(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 100)
    assert read_regular_file(f, 10) == b"x" * 11  # one byte beyond the bound: "too large"
    assert read_regular_file(f, 1000) == b"x" * 100
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotARegularFile):
        read_regular_file(tmp_path / "fifo", 10)
    link = tmp_path / "link"
    link.symlink_to(f)
    assert read_regular_file(link, 1000) == b"x" * 100
    with pytest.raises(OSError):
        read_regular_file(link, 1000, follow_symlinks=False)
    assert isinstance(NotARegularFile(f, "is odd"), InputError)


def test_file_names_that_are_not_utf8_are_shown_escaped():
    name = os.fsdecode(b"/data/caf\xe9.png")  # Latin-1 bytes: a lone surrogate in Python
    assert display_path(name) == "/data/caf\\xe9.png"
    display_path(name).encode("utf-8")
