"""Tests for anomaly_utils.data.download against a local HTTP server (no internet).

The server serves tiny MVTec-like ``.tar.xz`` archives built here, honours ``Range``
(or ignores it, to mimic servers without resume support) and can cut a transfer midway.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from anomaly_utils.data import download as dl
from anomaly_utils.data.download import (
    ARCHIVES,
    LOCK_NAME,
    MVTEC_CATEGORIES,
    download_mvtec,
    mvtec_layout_problems,
)
from anomaly_utils.errors import DataError, LabError, ParameterError

TREE = (
    "train/good/000.png",
    "train/good/001.png",
    "test/good/000.png",
    "test/cut/000.png",
    "ground_truth/cut/000_mask.png",
)


class Server:
    """Serves ``files`` (name -> bytes) and logs each request's path and Range header."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.support_range = True
        self.cut: dict[str, int] = {}  # name -> how many more responses to cut in half
        self.log: list[tuple[str, str | None]] = []
        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                range_header = self.headers.get("Range")
                state.log.append((self.path, range_header))
                if name not in state.files:
                    self.send_error(404)
                    return
                data = state.files[name]
                start = 0
                if range_header and state.support_range:
                    start = int(range_header.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if state.cut.get(name, 0) > 0:
                    state.cut[name] -= 1
                    body = body[: len(body) // 2]
                    self.close_connection = True
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mvtec/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(dl, "_RETRY_WAIT_S", 0.01)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archive(categories=("carpet",), seed: int = 0, extra=(), prefix: str = "") -> bytes:
    """A ``.tar.xz`` with the MVTec layout for ``categories``; ``extra`` adds raw members."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        _add(tar, prefix + "license.txt", b"CC BY-NC-SA 4.0\n")
        for category in categories:
            for rel in TREE:
                # Random bytes keep the archive large enough (~40 KB) to be cut midway.
                _add(tar, f"{prefix}{category}/{rel}", rng.randbytes(8000))
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_extracts_checks_layout_and_writes_lock(server, tmp_path, capsys):
    server.files["carpet.tar.xz"] = data = make_archive(seed=1)
    dest = tmp_path / "data"

    folders = download_mvtec("carpet", dest, base_url=server.base_url, progress=True)

    assert folders == [dest / "carpet"]
    assert mvtec_layout_problems(dest / "carpet") == []
    assert {p.relative_to(dest / "carpet").as_posix() for p in (dest / "carpet").rglob("*")
            if p.is_file()} == set(TREE)
    assert (dest / "license.txt").read_bytes() == b"CC BY-NC-SA 4.0\n"
    lock = json.loads((dest / LOCK_NAME).read_text())
    assert lock == {"carpet": {"url": server.base_url + "carpet.tar.xz",
                               "sha256": sha256(data), "size": len(data)}}
    assert not (dest / ".downloads").exists()
    assert [p.name for p in dest.iterdir() if p.name.startswith(".extract")] == []
    assert "carpet.tar.xz" in capsys.readouterr().err  # the progress bar's label

    n_requests = len(server.log)
    assert download_mvtec("carpet", dest, base_url=server.base_url, progress=False) == folders
    assert len(server.log) == n_requests
    assert "already present" in capsys.readouterr().out


def test_second_download_is_checked_against_lock(server, tmp_path):
    dest = tmp_path / "data"
    server.files["carpet.tar.xz"] = original = make_archive(seed=2)
    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    lock_before = (dest / LOCK_NAME).read_text()

    shutil.rmtree(dest / "carpet" / "train" / "good")
    with pytest.raises(DataError, match="not a complete MVTec AD category"):
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    shutil.rmtree(dest / "carpet")
    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    assert mvtec_layout_problems(dest / "carpet") == []

    shutil.rmtree(dest / "carpet")
    server.files["carpet.tar.xz"] = changed = make_archive(seed=3)
    with pytest.raises(LabError) as err:
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    message = str(err.value)
    assert "carpet.tar.xz" in message
    assert sha256(original) in message and sha256(changed) in message
    assert LOCK_NAME in message
    assert not (dest / "carpet").exists()
    assert not (dest / ".downloads" / "carpet.tar.xz").exists()
    assert (dest / LOCK_NAME).read_text() == lock_before


def test_truncated_download_is_resumed_with_range(server, tmp_path, monkeypatch):
    server.files["carpet.tar.xz"] = data = make_archive(seed=4)
    monkeypatch.setitem(ARCHIVES, "carpet", (ARCHIVES["carpet"][0], sha256(data)))
    server.cut["carpet.tar.xz"] = 1
    dest = tmp_path / "data"

    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)

    assert [r for _, r in server.log] == [None, f"bytes={len(data) // 2}-"]
    assert mvtec_layout_problems(dest / "carpet") == []
    assert json.loads((dest / LOCK_NAME).read_text())["carpet"]["sha256"] == sha256(data)


def test_failed_download_keeps_part_and_next_call_resumes(server, tmp_path):
    server.files["carpet.tar.xz"] = data = make_archive(seed=5)
    server.cut["carpet.tar.xz"] = 2
    dest = tmp_path / "data"
    part = dest / ".downloads" / "carpet.tar.xz.part"

    with pytest.raises(LabError) as err:
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False, attempts=2)
    assert server.base_url + "carpet.tar.xz" in str(err.value)
    assert "rerun" in str(err.value)
    assert 0 < part.stat().st_size < len(data)
    kept = part.stat().st_size

    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    assert server.log[-1][1] == f"bytes={kept}-"
    assert not part.exists()
    assert mvtec_layout_problems(dest / "carpet") == []


def test_server_without_range_support_restarts_cleanly(server, tmp_path, monkeypatch):
    server.files["carpet.tar.xz"] = data = make_archive(seed=6)
    server.support_range = False
    monkeypatch.setitem(ARCHIVES, "carpet", (ARCHIVES["carpet"][0], sha256(data)))
    dest = tmp_path / "data"
    part = dest / ".downloads" / "carpet.tar.xz.part"
    part.parent.mkdir(parents=True)
    stale = b"stale bytes from another file" * 100
    part.write_bytes(stale)

    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)

    assert server.log == [("/mvtec/carpet.tar.xz", f"bytes={len(stale)}-")]
    assert mvtec_layout_problems(dest / "carpet") == []


def test_part_longer_than_file_restarts_after_416(server, tmp_path, monkeypatch):
    server.files["carpet.tar.xz"] = data = make_archive(seed=12)
    monkeypatch.setitem(ARCHIVES, "carpet", (ARCHIVES["carpet"][0], sha256(data)))
    dest = tmp_path / "data"
    part = dest / ".downloads" / "carpet.tar.xz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * (len(data) + 10))

    download_mvtec("carpet", dest, base_url=server.base_url, progress=False)

    assert [r for _, r in server.log] == [f"bytes={len(data) + 10}-", None]
    assert mvtec_layout_problems(dest / "carpet") == []


def test_pinned_checksum_mismatch_is_refused(server, tmp_path, monkeypatch):
    server.files["carpet.tar.xz"] = data = make_archive(seed=7)
    wrong = "0" * 64
    monkeypatch.setitem(ARCHIVES, "carpet", (ARCHIVES["carpet"][0], wrong))
    dest = tmp_path / "data"

    with pytest.raises(LabError) as err:
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)

    message = str(err.value)
    assert "carpet.tar.xz" in message and wrong in message and sha256(data) in message
    assert "Fix:" in message
    assert not (dest / "carpet").exists()
    assert list((dest / ".downloads").iterdir()) == []
    assert not (dest / LOCK_NAME).exists()


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def _file(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "device"])
def test_malicious_archive_is_refused(server, tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = {
        "traversal": (_file("carpet/../../../evil", 4), b"evil"),
        "absolute": (_file(str(outside / "evil"), 4), b"evil"),
        "symlink": (_symlink("carpet/evil", "../../../outside"), None),
        "device": (_device("carpet/evil"), None),
    }[kind]
    server.files["carpet.tar.xz"] = make_archive(seed=8, extra=[bad])
    dest = tmp_path / "data"
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(LabError) as err:
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)

    message = str(err.value)
    assert bad[0].name in message and "carpet.tar.xz" in message
    assert "unsafe member" in message
    written = sorted(set(tmp_path.rglob("*")) - set(before))
    assert all(p == dest or dest in p.parents for p in written), written
    assert [p.name for p in dest.iterdir()] == [".downloads"]
    assert list((dest / ".downloads").iterdir()) == []
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info


def test_archive_without_mvtec_layout_is_refused(server, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        _add(tar, "carpet/test/good/000.png", b"x")
    server.files["carpet.tar.xz"] = buffer.getvalue()
    dest = tmp_path / "data"

    with pytest.raises(DataError, match="train/good"):
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    assert not (dest / "carpet").exists()
    assert not (dest / LOCK_NAME).exists()


def test_corrupt_archive_is_refused(server, tmp_path):
    server.files["carpet.tar.xz"] = make_archive(seed=9)[:-200]
    dest = tmp_path / "data"
    with pytest.raises(LabError, match="corrupt or truncated"):
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    assert not (dest / "carpet").exists()


def test_all_downloads_the_whole_archive_and_keeps_present_folders(
        server, tmp_path, monkeypatch):
    server.files["mvtec_anomaly_detection.tar.xz"] = data = make_archive(
        MVTEC_CATEGORIES, seed=10, prefix="mvtec_anomaly_detection/")
    monkeypatch.setitem(ARCHIVES, "all", (ARCHIVES["all"][0], sha256(data)))
    dest = tmp_path / "data"
    for rel in TREE:
        (dest / "carpet" / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / "carpet" / rel).write_bytes(b"mine")

    folders = download_mvtec("all", dest, base_url=server.base_url, progress=False)

    assert folders == [dest / name for name in MVTEC_CATEGORIES]
    assert all(mvtec_layout_problems(folder) == [] for folder in folders)
    assert (dest / "carpet" / TREE[0]).read_bytes() == b"mine"
    assert json.loads((dest / LOCK_NAME).read_text())["all"]["size"] == len(data)


def test_unknown_category_lists_valid_names(tmp_path):
    with pytest.raises(ParameterError) as err:
        download_mvtec("carpets", tmp_path, progress=False)
    assert all(name in str(err.value) for name in MVTEC_CATEGORIES)
    assert not any(tmp_path.iterdir())


def test_bad_base_url_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="base_url"):
        download_mvtec("carpet", tmp_path, base_url="ftp://example.org/", progress=False)


def test_missing_file_names_url_and_manual_fix(server, tmp_path):
    with pytest.raises(LabError) as err:
        download_mvtec("grid", tmp_path, base_url=server.base_url, progress=False)
    message = str(err.value)
    assert "404" in message and server.base_url + "grid.tar.xz" in message
    assert str(tmp_path / ".downloads" / "grid.tar.xz") in message
    assert len(server.log) == 1


def test_unreachable_server_names_url(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    with pytest.raises(LabError) as err:
        download_mvtec("carpet", tmp_path, base_url=base, progress=False, attempts=2,
                       timeout_s=5)
    assert base + "carpet.tar.xz" in str(err.value)
    assert "cannot connect" in str(err.value)


def test_manually_placed_archive_is_used(server, tmp_path):
    dest = tmp_path / "data"
    (dest / ".downloads").mkdir(parents=True)
    (dest / ".downloads" / "tile.tar.xz").write_bytes(make_archive(("tile",), seed=11))
    assert download_mvtec("tile", dest, base_url=server.base_url, progress=False) == [
        dest / "tile"]
    assert server.log == []


def test_official_archive_table():
    assert len(MVTEC_CATEGORIES) == 15
    assert set(ARCHIVES) == {*MVTEC_CATEGORIES, "all"}
    for category, (url, digest) in ARCHIVES.items():
        assert url.startswith("https://www.mydrive.ch/shares/")
        name = "mvtec_anomaly_detection" if category == "all" else category
        assert url.endswith(f"/{name}.tar.xz")
        assert digest is None or len(bytes.fromhex(digest)) == 32


def _hold_folder_lock(folder: Path) -> subprocess.Popen:
    """A child process that holds the download lock on ``folder`` until a line on its stdin."""
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.readline()")
    child = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_download_into_the_same_folder_waits_then_uses_what_the_first_brought(
        server, tmp_path, capsys):
    server.files["carpet.tar.xz"] = data = make_archive(seed=3)
    dest = tmp_path / "data"
    dest.mkdir()
    first = _hold_folder_lock(dest)  # stands in for a download that is running

    def finish_first() -> None:
        time.sleep(1.0)
        staging = tmp_path / "staging"
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:xz") as tar:
            tar.extractall(staging, filter="data")
        os.replace(staging / "carpet", dest / "carpet")
        first.stdin.write("\n")
        first.stdin.flush()

    helper = threading.Thread(target=finish_first)
    helper.start()
    try:
        folders = download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    finally:
        helper.join()
        first.wait(timeout=30)
    out = capsys.readouterr().out
    assert "Another download into" in out and "waiting for it to finish" in out
    assert "already present" in out and server.log == []  # nothing fetched twice
    assert folders == [dest / "carpet"] and mvtec_layout_problems(dest / "carpet") == []


def test_a_download_waits_for_the_lock_then_downloads(server, tmp_path, capsys):
    server.files["carpet.tar.xz"] = make_archive(seed=4)
    dest = tmp_path / "data"
    dest.mkdir()
    holder = _hold_folder_lock(dest)
    releaser = threading.Timer(1.0, lambda: (holder.stdin.write("\n"), holder.stdin.flush()))
    releaser.start()
    try:
        download_mvtec("carpet", dest, base_url=server.base_url, progress=False)
    finally:
        releaser.join()
        holder.wait(timeout=30)
    assert "waiting for it to finish" in capsys.readouterr().out
    assert mvtec_layout_problems(dest / "carpet") == [] and len(server.log) >= 1
