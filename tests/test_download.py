"""Downloads against a server on 127.0.0.1: resume, mirrors, checksums, safe extraction, UCF101."""

from __future__ import annotations

import hashlib
import http.server
import threading
import zipfile
from pathlib import Path

import pytest

from avfl.data import ucf101
from avfl.data.acquire import acquire_ucf101
from avfl.data.download import (
    ChecksumError,
    DownloadError,
    RemoteFile,
    UnsafeArchiveError,
    fetch,
    safe_extract_zip,
)


class Server:
    """Serves `files` with Range support; paths in `cut_once` drop the connection midway once."""

    def __init__(self, files: dict[str, bytes], cut_once: set[str] = frozenset()):
        self.files, self.cut = dict(files), set(cut_once)
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append((self.path, self.headers.get("Range")))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if self.path in outer.cut:
                    outer.cut.discard(self.path)
                    self.wfile.write(body[start : start + len(body) // 3])
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body[start:])

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture()
def payload() -> bytes:
    return bytes(range(256)) * 4000  # ~1 MB


def remote(server: Server, payload: bytes, *paths: str, sha: str | None = None) -> RemoteFile:
    return RemoteFile(
        "data.bin",
        tuple(server.url(p) for p in paths),
        len(payload),
        sha or hashlib.sha256(payload).hexdigest(),
    )


def test_download_is_verified(tmp_path, payload):
    server = Server({"/data.bin": payload})
    try:
        path = fetch(remote(server, payload, "/data.bin"), tmp_path, log=lambda m: None)
        assert path.read_bytes() == payload
        fetch(
            remote(server, payload, "/data.bin"), tmp_path, log=lambda m: None
        )  # present: no new request
        assert len(server.requests) == 1
    finally:
        server.close()


def test_cut_connection_resumes_with_a_range_request(tmp_path, payload):
    server = Server({"/data.bin": payload}, cut_once={"/data.bin"})
    try:
        path = fetch(
            remote(server, payload, "/data.bin"), tmp_path, backoff_s=0, log=lambda m: None
        )
        assert path.read_bytes() == payload
        assert (
            server.requests[0][1] is None and server.requests[1][1] == f"bytes={len(payload) // 3}-"
        )
    finally:
        server.close()


def test_mirror_is_used_when_the_primary_fails(tmp_path, payload):
    server = Server({"/mirror/data.bin": payload})
    try:
        path = fetch(
            remote(server, payload, "/gone/data.bin", "/mirror/data.bin"),
            tmp_path,
            retries=1,
            backoff_s=0,
            log=lambda m: None,
        )
        assert path.read_bytes() == payload
    finally:
        server.close()


def test_checksum_mismatch_moves_the_file_aside(tmp_path, payload):
    server = Server({"/data.bin": payload})
    try:
        with pytest.raises(ChecksumError, match=r"data\.bin.*moved to"):
            fetch(remote(server, payload, "/data.bin", sha="0" * 64), tmp_path, log=lambda m: None)
        assert not (tmp_path / "data.bin").exists()
        assert (tmp_path / "data.bin.bad-checksum").read_bytes() == payload
    finally:
        server.close()


def test_unreachable_source_names_the_file_and_keeps_the_partial(tmp_path, payload):
    server = Server({})
    try:
        with pytest.raises(
            DownloadError, match=r"could not download data\.bin .*run again to resume"
        ):
            fetch(
                remote(server, payload, "/nothing"),
                tmp_path,
                retries=1,
                backoff_s=0,
                log=lambda m: None,
            )
    finally:
        server.close()


def test_path_traversal_archive_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../escaped.txt", "bad")
    with pytest.raises(UnsafeArchiveError, match=r"escaped\.txt"):
        safe_extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out").exists()


def test_missing_member_is_named(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("present.txt", "x")
    with pytest.raises(DownloadError, match=r"absent\.txt"):
        safe_extract_zip(archive, tmp_path / "out", required=["present.txt", "absent.txt"])


def ucf101_archives(raw: Path, dest: Path) -> tuple[bytes, bytes]:
    """The two UCF101 archives as the sources ship them, built from the embedded dataset."""
    splits, videos = dest / "splits.zip", dest / "videos.zip"
    with zipfile.ZipFile(splits, "w") as zf:
        for f in sorted((raw / ucf101.SPLIT_DIR).iterdir()):
            zf.write(f, f"{ucf101.SPLIT_DIR}/{f.name}")
    with zipfile.ZipFile(videos, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in sorted((raw / ucf101.VIDEO_DIR).rglob("*.*")):
            zf.write(f, f"UCF101/{f.name}")  # flat, as the mirror's zip
    return splits.read_bytes(), videos.read_bytes()


def test_ucf101_acquisition_lays_out_the_official_structure(tmp_path, tiny_raw):
    split_bytes, video_bytes = ucf101_archives(tiny_raw, tmp_path)
    server = Server(
        {"/splits.zip": split_bytes, "/videos.zip": video_bytes}, cut_once={"/videos.zip"}
    )
    try:
        splits = RemoteFile(
            "splits.zip",
            (server.url("/splits.zip"),),
            len(split_bytes),
            hashlib.sha256(split_bytes).hexdigest(),
        )
        videos = RemoteFile(
            "videos.zip",
            (server.url("/videos.zip"),),
            len(video_bytes),
            hashlib.sha256(video_bytes).hexdigest(),
        )
        n_classes, n_clips = acquire_ucf101(
            tmp_path / "downloads", tmp_path / "raw", splits, videos, log=lambda m: None
        )
    finally:
        server.close()
    assert (n_classes, n_clips) == (
        len(ucf101.read_layout(tiny_raw)[0]),
        len(ucf101.read_layout(tiny_raw)[1]),
    )
    for clip in ucf101.read_layout(tmp_path / "raw")[1]:
        got = ucf101.resolve_video(tmp_path / "raw", clip.rel_path)
        assert got.read_bytes() == ucf101.resolve_video(tiny_raw, clip.rel_path).read_bytes()
    assert not (tmp_path / "raw.staging").exists()


def test_ucf101_archive_missing_a_listed_video_is_named(tmp_path, tiny_raw):
    split_bytes, _ = ucf101_archives(tiny_raw, tmp_path)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("UCF101/readme.txt", "no videos")
    server = Server({"/splits.zip": split_bytes, "/videos.zip": empty.read_bytes()})
    try:
        splits = RemoteFile("splits.zip", (server.url("/splits.zip"),))
        videos = RemoteFile("videos.zip", (server.url("/videos.zip"),))
        with pytest.raises(DownloadError, match=r"lacks \d+ expected member\(s\): UCF101/v_"):
            acquire_ucf101(
                tmp_path / "downloads", tmp_path / "raw", splits, videos, log=lambda m: None
            )
    finally:
        server.close()


def test_full_disk_is_named(tmp_path, payload, monkeypatch):
    import errno

    from avfl.data import download

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "_copy_response", no_space)
    server = Server({"/data.bin": payload})
    try:
        with pytest.raises(DownloadError, match=r"disk full while writing .*data\.bin\.part"):
            fetch(remote(server, payload, "/data.bin"), tmp_path, log=lambda m: None)
    finally:
        server.close()
