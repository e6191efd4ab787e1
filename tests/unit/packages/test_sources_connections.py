"""The package sources keep one connection per host and thread: the bytes and errors are urlopen's."""

from __future__ import annotations

import threading
import urllib.error
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from assembler.packages import sources


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    connections: ClassVar[set[tuple[str, int]]] = set()

    def _answer(self, body: bool) -> None:
        _Handler.connections.add(self.client_address)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/file")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = b"payload" if self.path == "/file" else b"no such file"
        self.send_response(200 if self.path == "/file" else 404)
        self.send_header("Content-Length", str(len(data)))
        if self.path == "/last":
            self.send_header("Connection", "close")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.connections = set()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_requests_to_one_host_share_a_connection(server: str) -> None:
    for _ in range(3):
        with sources._open(f"{server}/file") as response:
            assert response.read() == b"payload"
        with sources._open(f"{server}/file", "HEAD"):
            pass
    assert len(_Handler.connections) == 1


def test_an_error_status_is_urllibs_http_error_and_the_connection_stays_usable(server: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught, sources._open(f"{server}/missing"):
        pass
    assert caught.value.code == 404
    with sources._open(f"{server}/file") as response:
        assert response.read() == b"payload"
    assert len(_Handler.connections) == 1


def test_a_redirect_is_followed_and_a_closed_connection_is_replaced(server: str) -> None:
    with sources._open(f"{server}/moved") as response:
        assert response.read() == b"payload"
    with pytest.raises(urllib.error.HTTPError), sources._open(f"{server}/last"):
        pass  # answered with Connection: close
    with sources._open(f"{server}/file") as response:  # on a new connection
        assert response.read() == b"payload"


def test_an_unread_answer_does_not_leave_its_bytes_for_the_next_request(server: str) -> None:
    with sources._open(f"{server}/file") as response:
        assert response.read(3) == b"pay"
    with sources._open(f"{server}/file") as response:
        assert response.read() == b"payload"


def test_sources_available_probes_on_kept_connections(server: str) -> None:
    from assembler.mirrors import MirrorMap

    found = sources.Sources(MirrorMap())
    assert all(found.available(f"{server}/file") for _ in range(5))
    assert not found.available(f"{server}/missing")
    assert len(_Handler.connections) == 1


def test_a_host_that_does_not_answer_is_an_os_error_and_not_available() -> None:
    import socket

    from assembler.mirrors import MirrorMap

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/file"
    with pytest.raises(OSError), sources._open(url):
        pass
    assert not sources.Sources(MirrorMap()).available(url)
