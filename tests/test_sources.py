"""Data sources: local copies checked by sha256, mirrors tried in turn, downloads verified
before they land, and one clear error (never an overwrite) for a missing or damaged file."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest

from sgsc.cli import main
from sgsc.experiments import data, sources


def _names_file() -> data.DataFile:
    return data.FILES["names"][0]


def test_corrupt_copy_is_detected_and_left_alone(shared_data_dir, tmp_path, monkeypatch):
    target = tmp_path / "names"
    target.mkdir()
    src = data.locate(_names_file(), shared_data_dir)
    corrupt = bytearray(src.read_bytes())
    corrupt[100] ^= 0x01
    (target / "names.txt").write_bytes(bytes(corrupt))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match=r"names\.txt.*does not match"):
        data.load_names()
    assert (target / "names.txt").read_bytes() == bytes(corrupt)  # never overwritten
    status = data.verify(("names",))[0]
    assert not status.ok and "does not match" in status.detail


def test_broken_gzip_gives_clear_error(tmp_path, monkeypatch):
    (tmp_path / "names").mkdir()
    (tmp_path / "names" / "names.txt.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError, match="not a readable gzip file"):
        data.load_names(download=False)


def _damaged_gzip(payload: bytes) -> bytes:
    """A gzip stream with a few bytes flipped inside its deflate data (header intact)."""
    blob = bytearray(gzip.compress(payload, mtime=0))  # the same bytes every call
    for i in range(len(blob) // 3, len(blob) // 3 + 4):
        blob[i] ^= 0xFF
    return bytes(blob)


def test_flipped_bytes_in_a_gz_data_file_are_a_data_error(tmp_path, monkeypatch, capsys):
    text = "\n".join(f"name{i}" for i in range(5000)).encode()
    (tmp_path / "names").mkdir()
    path = tmp_path / "names" / "names.txt.gz"
    path.write_bytes(_damaged_gzip(text))
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError) as err:
        data.load_names(download=False)
    message = str(err.value)
    assert str(path) in message and "data fetch" in message and "left untouched" in message
    assert main(["data", "verify", "names"]) == 1  # a report line, not a traceback
    out = capsys.readouterr().out
    assert "FAIL" in out and "not a readable gzip file" in out
    assert path.read_bytes() == _damaged_gzip(text)  # nothing lost


class _Response:
    def __init__(self, payload):
        self.payload = payload

    def read(self):
        return self.payload

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("bad", [b"<html><body>503 Service Unavailable</body></html>",
                                 "truncated"])
def test_a_download_falls_back_to_the_next_mirror(tmp_path, monkeypatch, bad):
    payload = b"0123456789" * 1000
    good = gzip.compress(payload)
    if bad == "truncated":
        bad = good[: len(good) // 2]
    file = sources.DataFile("demo", "demo.bin", hashlib.sha256(payload).hexdigest(),
                            ("https://first.example/demo.bin.gz",
                             "https://second.example/demo.bin.gz"), ("demo",))
    served = {file.urls[0]: bad, file.urls[1]: good}
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: _Response(served[url]))
    assert sources.read_file(file, root=tmp_path) == payload
    assert (tmp_path / "demo" / "demo.bin").read_bytes() == payload
    served[file.urls[1]] = bad  # both bad: one error naming each mirror's fault
    (tmp_path / "demo" / "demo.bin").unlink()
    with pytest.raises(data.DataError) as err:
        sources.read_file(file, root=tmp_path)
    assert "first.example" in str(err.value) and "second.example" in str(err.value)
    assert not (tmp_path / "demo" / "demo.bin").exists()


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(data.DataError) as err:
        data.load_names()
    message = str(err.value)
    assert "names.txt" in message and data.DATA_DIR_ENV in message
    assert str(tmp_path / "names" / "names.txt") in message
    assert "Traceback" not in message


def test_download_is_verified_before_it_lands(shared_data_dir, tmp_path, monkeypatch):
    good = data.locate(_names_file(), shared_data_dir).read_bytes()

    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(sources.urllib.request, "urlopen",
                        lambda url, timeout: _Response(b"junk"))
    with pytest.raises(data.DataError, match="checksum mismatch"):
        data.fetch(("names",))
    assert not (tmp_path / "names" / "names.txt").exists()
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: _Response(good))
    assert all(s.ok for s in data.fetch(("names",)))
    assert (tmp_path / "names" / "names.txt").read_bytes() == good


def test_data_dir_defaults_to_local_folder(monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.data_dir() == Path("data")
    assert shutil.which("python3")  # the scripts bootstrap with python3 -m venv
