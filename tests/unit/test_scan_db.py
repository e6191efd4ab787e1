"""scan --db URL: osv.dev's feed fetched into <cache>/osv/, revalidated (304), used stale when unreachable.

A local http.server on 127.0.0.1 serves a real zip of OSV records; no network is needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from assembler import bom
from assembler.errors import ConfigError
from assembler.scan_db import CACHE_SUBDIR, fetch, open_database
from tests.unit.bomdata import FACTS, rootfs
from tests.unit.cli.invoke import error_of, run
from tests.unit.test_scan import LOONEY, _phase_ctx, osv

GLIBC_HIGH = osv("DSA-9999-1", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u11"}],
                 database_specific={"severity": "HIGH"})


def osv_zip(*records: dict[str, Any]) -> bytes:
    """Shaped like osv.dev's Debian/all.zip: one ID.json per record."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for record in records:
            archive.writestr(f"{record['id']}.json", json.dumps(record))
    return buffer.getvalue()


def _damaged() -> bytes:
    """A zip whose directory is intact and whose member's compressed bytes are not."""
    data = bytearray(osv_zip(LOONEY))
    start = 30 + len("DSA-5514-1.json")  # the first member's data, after its local header
    data[start + 10:start + 30] = bytes(20)
    return bytes(data)


DAMAGED = _damaged()


@dataclass
class Feed:
    """What the server serves and what it saw."""

    url: str
    body: bytes = b""
    mode: str = "ok"  # ok | truncated (announces more than it sends) | 404 | 503
    requests: list[dict[str, str]] = field(default_factory=list)
    connections: list[socket.socket] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def serve(self, body: bytes, mode: str = "ok") -> None:
        self.body, self.mode = body, mode

    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    def stop(self) -> None:
        """Down for good: the kept-alive connections a handler thread still serves are cut as well."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Feed]:
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = Feed("")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            state.connections.append(self.connection)
            state.requests.append({k: v for k, v in self.headers.items()
                                   if k in ("If-None-Match", "If-Modified-Since")})
            if state.mode in ("404", "503"):
                self._empty(int(state.mode))
            elif self.headers.get("If-None-Match") == state.etag():
                self._empty(304)
            elif state.mode == "truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(state.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(state.body[: len(state.body) // 2])
                self.close_connection = True
            else:
                self.send_response(200)
                self.send_header("Content-Length", str(len(state.body)))
                self.send_header("ETag", state.etag())
                self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                self.end_headers()
                self.wfile.write(state.body)

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    state.server, state.url = httpd, f"http://127.0.0.1:{httpd.server_address[1]}/Debian/all.zip"
    yield state
    state.stop()


def cached_files(cache: Path) -> list[str]:
    root = cache / CACHE_SUBDIR
    return sorted(p.name.rsplit(".", 1)[1] for p in root.iterdir()) if root.is_dir() else []


def test_first_fetch_then_304_reuse_then_a_changed_feed_is_fetched_again(feed: Feed, tmp_path: Path) -> None:
    feed.serve(osv_zip(LOONEY))
    first = open_database(feed.url, tmp_path)
    assert [a.id for a in first.load()] == ["DSA-5514-1"] and feed.requests == [{}]
    assert first.sha256 == hashlib.sha256(feed.body).hexdigest() and first.source == feed.url
    assert first.path.read_bytes() == feed.body and first.fetched is not None
    assert cached_files(tmp_path) == ["json", "osv"]  # the copy and its record, nothing else

    again = open_database(feed.url, tmp_path)
    assert feed.requests[1] == {"If-None-Match": feed.etag(), "If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}
    assert (again.sha256, again.fetched, again.path) == (first.sha256, first.fetched, first.path)
    assert [a.id for a in again.load()] == ["DSA-5514-1"]  # parsed from the cached copy

    feed.serve(osv_zip(LOONEY, GLIBC_HIGH))
    changed = open_database(feed.url, tmp_path)
    assert len(feed.requests) == 3 and changed.sha256 == hashlib.sha256(feed.body).hexdigest() != first.sha256
    assert sorted(a.id for a in changed.load()) == ["DSA-5514-1", "DSA-9999-1"]


def test_a_cached_copy_that_changed_on_disk_is_fetched_again_unconditionally(feed: Feed, tmp_path: Path) -> None:
    feed.serve(osv_zip(LOONEY))
    db = open_database(feed.url, tmp_path)
    db.path.write_bytes(osv_zip(GLIBC_HIGH))  # the hash in the record no longer names these bytes
    again = open_database(feed.url, tmp_path)
    assert feed.requests[1] == {} and again.sha256 == db.sha256 and again.path.read_bytes() == feed.body


def test_unreachable_with_a_cached_copy_warns_how_old_it_is(feed: Feed, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    feed.serve(osv_zip(LOONEY))
    first = open_database(feed.url, tmp_path)
    record = next((tmp_path / CACHE_SUBDIR).glob("*.json"))
    record.write_text(json.dumps({**json.loads(record.read_text()), "fetched": "2024-01-01T00:00:00Z",
                                  "checked": "2024-01-01T00:00:00Z"}))
    for breakage in ("503", "down"):
        if breakage == "down":
            feed.stop()
        else:
            feed.serve(feed.body, "503")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="assembler"):
            stale = open_database(feed.url, tmp_path)
        assert (stale.sha256, stale.fetched) == (first.sha256, "2024-01-01T00:00:00Z")
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "unreachable" in warning and "days ago" in warning and "2024-01-01T00:00:00Z" in warning, warning
        assert [a.id for a in stale.load()] == ["DSA-5514-1"]


def test_unreachable_with_nothing_cached_is_one_error_naming_the_fix(feed: Feed, tmp_path: Path) -> None:
    feed.stop()
    with pytest.raises(ConfigError, match="cannot fetch the advisory database") as err:
        open_database(feed.url, tmp_path)
    assert "--db PATH" in err.value.resolution and "curl" in err.value.resolution
    assert cached_files(tmp_path) == []


@pytest.mark.parametrize(("body", "mode", "message"), [
    (osv_zip(LOONEY), "truncated", "broke off"),
    (b"<html>captive portal</html>", "ok", "did not serve an OSV database"),
    (b"PK\x03\x04" + b"\0" * 64, "ok", "did not serve an OSV database"),
    (DAMAGED, "ok", "damaged zip"),
    (osv_zip({"id": "X", "affected": 3}), "ok", "not an OSV record"),
])
def test_a_truncated_or_garbage_body_is_an_error_and_nothing_is_cached(feed: Feed, tmp_path: Path, body: bytes,
                                                                       mode: str, message: str) -> None:
    feed.serve(body, mode)
    with pytest.raises(ConfigError, match=message):
        fetch(feed.url, tmp_path / CACHE_SUBDIR)
    assert list((tmp_path / CACHE_SUBDIR).iterdir()) == []  # not even the temporary file


def test_garbage_never_replaces_a_good_cached_copy(feed: Feed, tmp_path: Path) -> None:
    feed.serve(osv_zip(LOONEY))
    good = open_database(feed.url, tmp_path)
    feed.serve(b"garbage")
    with pytest.raises(ConfigError, match="did not serve an OSV database"):
        open_database(feed.url, tmp_path)
    assert good.path.read_bytes() == osv_zip(LOONEY) and cached_files(tmp_path) == ["json", "osv"]


def test_a_url_the_server_refuses_is_an_error_even_with_a_cached_copy(feed: Feed, tmp_path: Path) -> None:
    feed.serve(osv_zip(LOONEY))
    open_database(feed.url, tmp_path)
    feed.serve(feed.body, "404")  # the server answers: a wrong or moved URL, which a stale copy would hide
    with pytest.raises(ConfigError, match="answered 404") as err:
        open_database(feed.url, tmp_path)
    assert "check the URL" in err.value.resolution


def test_the_cli_scans_with_a_url_and_reports_where_the_advisories_came_from(feed: Feed, tmp_path: Path) -> None:
    doc = bom.build_spdx(rootfs(tmp_path), **FACTS)
    target = tmp_path / "demo.spdx.json"
    target.write_text(json.dumps(doc))
    feed.serve(osv_zip(LOONEY, GLIBC_HIGH))
    cache = str(tmp_path / "cache")
    args = ("scan", str(target), "--db", feed.url, "--cache-dir", cache)
    result = run(*args, "--fail-on", "high", "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert [f["advisory"] for f in report["findings"]] == ["DSA-9999-1"]
    assert report["db"]["source"] == feed.url and report["db"]["sha256"] == hashlib.sha256(feed.body).hexdigest()
    assert report["db"]["fetched"].endswith("Z")
    table = run(*args)  # revalidated: 304
    assert table.exit_code == 0 and feed.requests[-1].get("If-None-Match") == feed.etag()
    assert feed.url in table.stdout and report["db"]["sha256"] in table.stdout.replace("\n", "")
    feed.stop()
    missing = error_of(run("scan", str(target), "--db", feed.url, "--cache-dir", str(tmp_path / "other")))
    assert "--db PATH" in missing.resolution


def test_the_phase_keys_on_the_fetched_files_sha256(feed: Feed, tmp_path: Path) -> None:
    feed.serve(osv_zip(GLIBC_HIGH))
    _ctx, phase = _phase_ctx(tmp_path, feed.url, None)  # image.yaml's scan.db, taken as is
    assert phase.material()["db"] == hashlib.sha256(feed.body).hexdigest()
    (tmp_path / "run").mkdir()
    meta = phase.execute(tmp_path / "run")["scan"]
    assert (meta["db"], meta["db_sha256"]) == (feed.url, hashlib.sha256(feed.body).hexdigest())
    assert json.loads((tmp_path / "run" / "scan.json").read_text())["db"]["source"] == feed.url
    assert (phase.ctx.store.root / CACHE_SUBDIR).is_dir()  # the build's cache dir holds the copy
    feed.serve(osv_zip(LOONEY))
    key = phase.key()
    assert _phase_ctx(tmp_path, feed.url, None)[1].key() != key  # a new feed is a new key
    assert len(feed.requests) == 2  # one fetch per build, however often the key is asked for
