"""`e4e download-weights` and `e4e_cli.weights.fetch`, against a real HTTP server on loopback.

The server (a `ThreadingHTTPServer` on 127.0.0.1, port 0) supports Range requests and can
be told, per path, to drop the connection once, corrupt the body, answer an HTML page,
play Google Drive's confirmation step, or 404. Made-up assets are registered by
monkeypatching the registry; one CLI test downloads the real direction files from the
parity folder through `--base-url`. Nothing here talks to anything but 127.0.0.1.
"""
from __future__ import annotations

import bz2
import hashlib
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import ROOT, assert_one_line_error, run_e4e
from e4e_cli import digests, domains
from e4e_cli.weights import fetch as fetcher
from e4e_cli.weights import locate, stream
from e4e_cli.weights import registry as weights_registry
from e4e_cli.errors import E4EError, MissingWeightsError

# --------------------------------------------------------------------------------------
# Guard: nothing in this file may reach beyond loopback
# --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and self.family != socket.AF_UNIX:
            raise AssertionError(f"test tried to reach {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("E4E_NO_PROGRESS", "1")
    monkeypatch.delenv("E4E_WEIGHTS_DIR", raising=False)
    # small read chunks so a dropped connection keeps most of what arrived
    monkeypatch.setattr(stream, "CHUNK", 16 * 1024)


# --------------------------------------------------------------------------------------
# The test server
# --------------------------------------------------------------------------------------

DRIVE_FORM = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body><p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="{action}" method="get">
<input type="submit" id="uc-download-link" value="Download anyway"/>
<input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">
</form></body></html>"""

DRIVE_LINK = """<!DOCTYPE html><html><body>Virus scan warning.
<a id="uc-download-link" href="/uc?export=download&amp;confirm={token}&amp;id={id}">Download anyway</a>
</body></html>"""

QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head>
<body>Too many users have viewed or downloaded this file recently.</body></html>"""


@dataclass
class Route:
    data: bytes = b""
    mode: str = "ok"  # ok, drop, corrupt, html, html-as-binary, 404, 500-once, drive-form, drive-link, quota
    drop_after: int = 0
    drops_left: int = 0
    ignore_range: bool = False
    stall_s: float = 0.0
    then_status: int = 0  # once the drops are used up, answer this status instead of the file
    served: int = 0


@dataclass
class Hit:
    path: str
    query: Dict[str, List[str]]
    range: Optional[str]


@dataclass
class FakeServer:
    url: str = ""
    routes: Dict[str, Route] = field(default_factory=dict)
    hits: List[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, data: bytes = b"", **kw) -> str:
        path = "/" + name.lstrip("/")
        self.routes[path] = Route(data=data, **kw)
        return self.url + path

    def count(self, path: Optional[str] = None) -> int:
        with self.lock:
            return sum(1 for h in self.hits if path is None or h.path == "/" + path.lstrip("/"))

    def ranges(self, path: str) -> List[Optional[str]]:
        with self.lock:
            return [h.range for h in self.hits if h.path == "/" + path.lstrip("/")]


class Handler(BaseHTTPRequestHandler):
    server_version = "FakeMirror/1.0"
    fake: FakeServer  # set on the subclass made per server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/octet-stream", extra=None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: C901 - one branch per behaviour
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        rng = self.headers.get("Range")
        fake = self.fake
        with fake.lock:
            fake.hits.append(Hit(parts.path, query, rng))
            route = fake.routes.get(parts.path)
            if route is not None:
                route.served += 1
        if route is None or route.mode == "404":
            return self._send(404, b"not found", "text/plain")
        mode = route.mode
        if mode == "500-once" and route.served == 1:
            return self._send(503, b"busy", "text/plain")
        if mode == "html":
            return self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
        if mode == "html-as-binary":  # an HTML page labelled as a binary: caught by sniffing
            return self._send(200, b"\n  <!DOCTYPE html><html><body>Sign in</body></html>")
        if mode == "quota":
            return self._send(200, QUOTA_PAGE.encode(), "text/html; charset=utf-8")
        if mode == "drive-form" and not (query.get("confirm") == ["t"] and query.get("uuid") == ["u-42"]):
            page = DRIVE_FORM.format(action=fake.url + parts.path, id=query.get("id", ["?"])[0], uuid="u-42")
            return self._send(200, page.encode(), "text/html; charset=utf-8")
        if mode == "drive-link" and query.get("confirm") != ["Tok_3n-9"]:
            page = DRIVE_LINK.format(token="Tok_3n-9", id=query.get("id", ["?"])[0])
            return self._send(200, page.encode(), "text/html; charset=utf-8",
                              {"Set-Cookie": "NID=abc; Path=/"})

        if mode == "drop" and route.drops_left == 0 and route.then_status:
            return self._send(route.then_status, b"unavailable", "text/plain")
        data = route.data
        if mode == "corrupt":
            mid = len(data) // 2
            data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
        start = 0
        if rng and not route.ignore_range:
            spec = rng.split("=", 1)[1]
            start = int(spec.split("-", 1)[0])
            if start >= len(data):
                return self._send(416, b"", "text/plain", {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        drop = False
        with fake.lock:
            if mode == "drop" and route.drops_left > 0 and len(body) > route.drop_after:
                route.drops_left -= 1
                drop = True
        if drop:
            self.wfile.write(body[: route.drop_after])
            self.wfile.flush()
            if route.stall_s:
                threading.Event().wait(route.stall_s)  # the client times out first
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    fake = FakeServer()
    handler = type("BoundHandler", (Handler,), {"fake": fake})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------
# Made-up assets
# --------------------------------------------------------------------------------------


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(monkeypatch):
    """Replace the registry with test assets: `add(name, data, urls, ...)` returns the asset."""
    assets: Dict[str, weights_registry.Asset] = {}
    groups: Dict[str, List[str]] = {}
    monkeypatch.setattr(weights_registry, "ASSETS", assets)
    monkeypatch.setattr(weights_registry, "GROUPS", groups)
    monkeypatch.setattr(weights_registry, "DEFAULT_GROUPS", ("test",))

    def add(name: str, data: bytes, urls, *, wire: Optional[bytes] = None, group: str = "test") -> weights_registry.Asset:
        filename = f"{name}.bin"
        compressed = None
        if wire is not None:
            compressed = weights_registry.Compressed(filename=filename + ".bz2", size=len(wire), sha256=sha(wire))
        asset = weights_registry.Asset(
            name=name, filename=filename, size=len(data), sha256=sha(data), urls=tuple(urls), group=group,
            description=f"test asset {name}", licence="test", compressed=compressed,
        )
        assets[name] = asset
        groups.setdefault(group, []).append(name)
        groups.setdefault(name, [name])
        return asset

    return add


def fetch(names, weights, **kw):
    kw.setdefault("backoff", 0)
    kw.setdefault("retries", 2)
    kw.setdefault("timeout", 5)
    kw.setdefault("progress", False)
    return fetcher.download_assets(names, weights_dir=weights, **kw)


def only_file(weights: Path) -> List[str]:
    return sorted(p.name for p in weights.iterdir())


# --------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------


def test_download_verifies_and_second_run_makes_no_request(server, registry, tmp_path):
    data = blob(1, 100_000)
    registry("a", data, [server.add("a.bin", data)])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded" and res.ok
    assert (tmp_path / "a.bin").read_bytes() == data
    assert only_file(tmp_path) == ["a.bin"]
    before = server.count()
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "present"
    assert server.count() == before  # nothing requested the second time


def test_verified_download_remembers_its_digest(server, registry, tmp_path, monkeypatch):
    """A checkpoint identified by content right after its download is not hashed again."""
    from e4e_cli import digests

    monkeypatch.setenv("E4E_CACHE_DIR", str(tmp_path / "cache"))
    data = blob(2, 50_000)
    registry("a", data, [server.add("a.bin", data)])
    (res,) = fetch(["a"], tmp_path / "w")
    assert res.status == "downloaded"
    monkeypatch.setattr(digests, "sha256_file", lambda p: pytest.fail("hashed again"))
    assert digests.content_sha256(tmp_path / "w" / "a.bin") == hashlib.sha256(data).hexdigest()


def test_dropped_connection_is_resumed_with_range_and_verified(server, registry, tmp_path):
    data = blob(2, 300_000)
    registry("a", data, [server.add("a.bin", data, mode="drop", drop_after=120_000, drops_left=1)])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert (tmp_path / "a.bin").read_bytes() == data
    ranges = server.ranges("a.bin")
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= 120_000  # what arrived before the drop was kept
    assert not (tmp_path / "a.bin.part").exists()


def test_read_timeout_is_resumed(server, registry, tmp_path):
    data = blob(3, 200_000)
    registry("a", data, [server.add("a.bin", data, mode="drop", drop_after=64_000, drops_left=1, stall_s=1.5)])
    (res,) = fetch(["a"], tmp_path, timeout=0.4)
    assert res.status == "downloaded", res
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.ranges("a.bin")[-1] is not None


def test_server_ignoring_range_restarts_from_zero(server, registry, tmp_path):
    data = blob(4, 250_000)
    registry("a", data, [server.add("a.bin", data, mode="drop", drop_after=100_000, drops_left=1,
                                    ignore_range=True)])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert (tmp_path / "a.bin").read_bytes() == data
    assert server.ranges("a.bin")[1] is not None  # it asked for a range and got a 200


def test_part_file_from_an_earlier_run_is_resumed(server, registry, tmp_path):
    data = blob(5, 200_000)
    registry("a", data, [server.add("a.bin", data)])
    (tmp_path / "a.bin.part").write_bytes(data[:77_777])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert server.ranges("a.bin") == ["bytes=77777-"]
    assert (tmp_path / "a.bin").read_bytes() == data
    assert only_file(tmp_path) == ["a.bin"]


def test_bad_bytes_in_an_old_part_file_are_thrown_away(server, registry, tmp_path):
    data = blob(6, 120_000)
    registry("a", data, [server.add("a.bin", data)])
    (tmp_path / "a.bin.part").write_bytes(b"\0" * 50_000)  # not the start of this file
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert server.ranges("a.bin") == ["bytes=50000-", None]  # resumed, failed the hash, restarted
    assert (tmp_path / "a.bin").read_bytes() == data


def test_corrupted_body_fails_and_leaves_nothing(server, registry, tmp_path):
    data = blob(7, 150_000)
    registry("a", data, [server.add("a.bin", data, mode="corrupt")])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "failed"
    assert "SHA-256 mismatch" in res.error
    assert only_file(tmp_path) == []  # no final file, no .part
    with pytest.raises(E4EError) as info:
        fetcher.raise_on_failures([res])
    msg = str(info.value)
    assert "\n" not in msg and "a.bin" in msg and "--base-url" in msg and "--from" in msg


@pytest.mark.parametrize("mode", ["html", "html-as-binary"])
def test_html_page_fails_clearly(server, registry, tmp_path, mode):
    data = blob(8, 50_000)
    registry("a", data, [server.add("a.bin", data, mode=mode)])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "failed"
    assert "HTML page instead of the file" in res.error
    assert only_file(tmp_path) == []
    assert server.count("a.bin") == 1  # not worth retrying


def test_404_fails_clearly(server, registry, tmp_path):
    data = blob(9, 10_000)
    registry("a", data, [server.url + "/missing/a.bin"])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "failed" and "HTTP 404" in res.error
    assert "127.0.0.1" in res.error
    assert only_file(tmp_path) == []
    assert server.count() == 1


def test_next_source_is_tried_after_failures(server, registry, tmp_path):
    data = blob(10, 40_000)
    urls = [server.url + "/gone/a.bin", server.add("html/a.bin", data, mode="html"), server.add("a.bin", data)]
    registry("a", data, urls)
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded" and res.source == urls[2]
    assert (tmp_path / "a.bin").read_bytes() == data


def test_server_errors_are_retried(server, registry, tmp_path):
    data = blob(11, 40_000)
    registry("a", data, [server.add("a.bin", data, mode="500-once")])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded"
    assert server.count("a.bin") == 2


def test_retries_run_out_then_the_next_run_resumes(server, registry, tmp_path):
    data = blob(12, 200_000)
    url = server.add("a.bin", data, mode="drop", drop_after=0, drops_left=100)
    registry("a", data, [url])
    (res,) = fetch(["a"], tmp_path, retries=2)
    assert res.status == "failed" and "connection" in res.error and "gave up after 2 retries" in res.error
    assert server.count("a.bin") == 3
    assert only_file(tmp_path) == []  # nothing arrived: no empty .part either

    server.routes["/a.bin"] = Route(data=data, mode="drop", drop_after=90_000, drops_left=1, then_status=503)
    (res,) = fetch(["a"], tmp_path, retries=1)
    assert res.status == "failed" and "HTTP 503" in res.error
    assert not (tmp_path / "a.bin").exists()
    kept = (tmp_path / "a.bin.part").stat().st_size
    assert 0 < kept <= 90_000 and "resumed next time" in res.hint

    server.routes["/a.bin"] = Route(data=data)
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded"
    assert server.ranges("a.bin")[-1] == f"bytes={kept}-"
    assert (tmp_path / "a.bin").read_bytes() == data


def test_google_drive_confirmation_form_is_followed(server, registry, tmp_path):
    data = blob(13, 60_000)
    server.add("uc", data, mode="drive-form")
    registry("a", data, [server.url + "/uc?export=download&id=FILE123"])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert (tmp_path / "a.bin").read_bytes() == data
    hits = [h for h in server.hits if h.path == "/uc"]
    assert len(hits) == 2
    assert hits[1].query["confirm"] == ["t"] and hits[1].query["uuid"] == ["u-42"]
    assert hits[1].query["id"] == ["FILE123"]


def test_google_drive_confirmation_link_is_followed(server, registry, tmp_path):
    data = blob(14, 60_000)
    server.add("uc", data, mode="drive-link")
    registry("a", data, [server.url + "/uc?export=download&id=FILE9"])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded", res
    assert server.hits[-1].query["confirm"] == ["Tok_3n-9"]


def test_google_drive_quota_page_fails_clearly(server, registry, tmp_path):
    data = blob(15, 10_000)
    server.add("uc", data, mode="quota")
    registry("a", data, [server.url + "/uc?export=download&id=X"])
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "failed" and "Google Drive" in res.error and "quota" in res.error
    assert only_file(tmp_path) == []


def test_html_on_a_non_drive_url_is_not_treated_as_drive(server, registry, tmp_path):
    data = blob(16, 10_000)
    registry("a", data, [server.add("files/a.bin", data, mode="html")])
    assert not stream.is_drive_url(server.url + "/files/a.bin")
    assert stream.is_drive_url("https://drive.google.com/uc?export=download&id=abc")
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "failed" and server.count() == 1


def test_bz2_asset_is_unpacked_and_verified(server, registry, tmp_path):
    data = blob(17, 90_000) * 3  # compressible
    wire = bz2.compress(data)
    registry("lm", data, [server.add("lm.bin.bz2", wire, mode="drop", drop_after=len(wire) // 2, drops_left=1)],
             wire=wire)
    (res,) = fetch(["lm"], tmp_path)
    assert res.status == "downloaded", res
    assert (tmp_path / "lm.bin").read_bytes() == data
    assert only_file(tmp_path) == ["lm.bin"]  # the .bz2 is gone once unpacked
    assert server.ranges("lm.bin.bz2")[-1] is not None


def test_bz2_asset_with_bad_contents_never_lands(server, registry, tmp_path, monkeypatch):
    data = blob(18, 30_000)
    wire = bz2.compress(data + b"x")  # the right wire hash, but unpacks to something else
    registry("lm", data, [server.add("lm.bin.bz2", wire)], wire=wire)
    (res,) = fetch(["lm"], tmp_path)
    assert res.status == "failed"
    assert not (tmp_path / "lm.bin").exists() and not (tmp_path / "lm.bin.part").exists()


def test_base_url_replaces_the_sources(server, registry, tmp_path):
    data, lm = blob(19, 20_000), blob(20, 5_000)
    wire = bz2.compress(lm)
    registry("a", data, ["http://192.0.2.1/never"])  # would trip the loopback guard
    registry("lm", lm, ["http://192.0.2.1/never.bz2"], wire=wire)
    server.add("mirror/a.bin", data)
    server.add("mirror/lm.bin.bz2", wire)
    results = fetch(["a", "lm"], tmp_path, base_url=server.url + "/mirror/")
    assert [r.status for r in results] == ["downloaded", "downloaded"]
    assert (tmp_path / "lm.bin").read_bytes() == lm


def test_from_dir_imports_and_rejects_wrong_hashes(registry, tmp_path):
    good, lm = blob(21, 30_000), blob(22, 8_000)
    wire = bz2.compress(lm)
    registry("a", good, ["http://192.0.2.1/a.bin"])
    registry("b", good[:1000], ["http://192.0.2.1/b.bin"])
    registry("lm", lm, ["http://192.0.2.1/lm.bin.bz2"], wire=wire)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(good)
    (src / "b.bin").write_bytes(b"\1" * 1000)  # right size, wrong bytes
    (src / "lm.bin.bz2").write_bytes(wire)  # the .bz2 form is accepted
    weights = tmp_path / "w"
    results = fetch(["a", "b", "lm"], weights, from_dir=src)
    by = {r.name: r for r in results}
    assert by["a"].status == "imported" and (weights / "a.bin").read_bytes() == good
    assert by["lm"].status == "imported" and (weights / "lm.bin").read_bytes() == lm
    assert by["b"].status == "failed" and "wrong SHA-256" in by["b"].error
    assert not (weights / "b.bin").exists()
    assert only_file(weights) == ["a.bin", "lm.bin"]
    assert (src / "lm.bin.bz2").exists()  # the user's copy is left alone
    with pytest.raises(E4EError, match=r"b \(b.bin\): .*wrong SHA-256"):
        fetcher.raise_on_failures(results)


def test_verify_refetches_a_damaged_file(server, registry, tmp_path):
    data = blob(23, 30_000)
    registry("a", data, [server.add("a.bin", data)])
    (tmp_path / "a.bin").write_bytes(b"\0" * len(data))  # right size, wrong bytes
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "present" and server.count() == 0  # size only without --verify
    (res,) = fetch(["a"], tmp_path, verify=True)
    assert res.status == "downloaded" and (tmp_path / "a.bin").read_bytes() == data
    (res,) = fetch(["a"], tmp_path, verify=True)
    assert res.status == "present" and res.source == "verified" and server.count() == 1


def test_wrong_size_file_is_replaced(server, registry, tmp_path):
    data = blob(24, 30_000)
    registry("a", data, [server.add("a.bin", data)])
    (tmp_path / "a.bin").write_text("<!DOCTYPE html><html>quota</html>")
    (res,) = fetch(["a"], tmp_path)
    assert res.status == "downloaded" and (tmp_path / "a.bin").read_bytes() == data


def test_several_failures_give_one_line_each(server, registry, tmp_path):
    for i, name in enumerate("abc"):
        registry(name, blob(30 + i, 1000), [server.url + f"/nope/{name}.bin"])
    results = fetch(["a", "b", "c"], tmp_path)
    with pytest.raises(E4EError) as info:
        fetcher.raise_on_failures(results)
    msg = str(info.value)
    assert "\n" not in msg, "the error contract is one line"
    assert msg.startswith("3 of 3 downloads failed: a (")
    assert msg.count("HTTP 404") == 3 and "; b (" in msg and "; c (" in msg


def test_unreachable_hosts_fail_at_once_and_are_tried_once(registry, tmp_path, monkeypatch):
    """No DNS (offline) or a refused port is not transient: no retries, no back-off sleeps, and
    a host that failed so is not tried again for the next assets; the error says offline? once."""
    import socket

    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        refused = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for i, name in enumerate("abc"):
        registry(name, blob(40 + i, 1000), [f"http://e4e-no-such-host.invalid/{name}.bin", f"{refused}/{name}.bin"])
    sleeps = []
    monkeypatch.setattr(stream.time, "sleep", lambda s: sleeps.append(s))
    results = fetch(["a", "b", "c"], tmp_path, retries=3, backoff=1.0)
    assert [r.status for r in results] == ["failed"] * 3
    assert sleeps == [], "unreachable hosts are not retried with back-off"
    assert [r.requests for r in results] == [2, 0, 0], "each host is tried once per run"
    assert "cannot resolve host (offline?)" in results[0].error and "connection refused" in results[0].error
    assert "e4e-no-such-host.invalid" in results[2].error
    with pytest.raises(E4EError) as info:
        fetcher.raise_on_failures(results)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("3 of 3 downloads failed") and msg.count("offline?") == 1
    assert not list(tmp_path.glob("*.part")), "no empty partial files left behind"


# --------------------------------------------------------------------------------------
# Registry, folders, require_asset
# --------------------------------------------------------------------------------------


def test_registry_holds_the_issue_facts():
    a = weights_registry.ASSETS
    assert set(weights_registry.GROUPS["all"]) == set(a)
    assert weights_registry.GROUPS["directions"] == ["age", "smile", "pose", "ffhq_pca", "cars_pca"]
    assert a["ffhq"].size == 1201649680 and a["ffhq"].filename == "e4e_ffhq_encode.pt"
    assert a["ffhq"].urls[0] == "https://huggingface.co/public-data/e4e/resolve/main/e4e_ffhq_encode.pt"
    assert a["ffhq"].urls[1] == "https://drive.google.com/uc?export=download&id=1cUv_reLE6k3604or78EranS7XzuVMWeO"
    assert a["church"].sha256.startswith("590f00e8") and a["horse"].size == a["church"].size
    assert a["age"].urls == ("https://raw.githubusercontent.com/omertov/encoder4editing/main/editings/"
                             "interfacegan_directions/age.pt",)
    assert a["cars_pca"].urls[0].endswith("/editings/ganspace_pca/cars_pca.pt")
    lm = a["landmarks"]
    assert lm.compressed.size == 64040097 and lm.size == 99693937
    assert lm.urls[0] == "http://dlib.net/files/shape_predictor_68_face_landmarks.dat.bz2"
    unverified = {"ir_se50", "moco"} | {n for n in a if n.startswith(("hyperstyle_", "w_encoder_"))}  # no size or SHA-256 published
    unverified |= {"clip_vit_b32", "styleclip_ffhq"}  # issue 33: not readable from the build machines
    assert a["clip_vocab"].sha256.startswith("924691ac") and a["clip_vocab"].size == 1356917
    assert a["clip_vit_b32"].urls[0].startswith("https://huggingface.co/openai/clip-vit-base-patch32/")
    for asset in a.values():
        if asset.name in unverified:
            assert asset.sha256 == "" and asset.size == 0
        else:
            assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0
        assert asset.urls and asset.licence and asset.description
    assert weights_registry.GROUPS["lpips"] == ["lpips_alexnet", "lpips_alex"]
    assert a["moco"].licence.startswith("CC-BY-NC")
    assert a["lpips_alexnet"].sha256.startswith("7be5be79") and a["lpips_alexnet"].size == 244408911
    assert {d.name: d.checkpoint_asset for d in domains.DOMAINS.values()} == {
        "ffhq": "ffhq", "cars": "cars", "horse": "horse", "church": "church", "wild": None}
    assert a["hyperstyle_ffhq"].urls == ("https://drive.google.com/uc?export=download&id=1C3dEIIH1y8w1-zQMCyx7rDF0ndswSXh4",)
    assert a["w_encoder_wild"].filename == "afhq_wild_w_encoder.pt"
    assert weights_registry.GROUPS["hyperstyle_cars"] == ["hyperstyle_cars", "w_encoder_cars"]
    for d in domains.DOMAINS.values():
        assert (d.refiner_asset is None) == (d.w_encoder_asset is None)
        assert d.refiner_asset is None or a[d.refiner_asset].domain == a[d.w_encoder_asset].domain == d.name
    for name in (d.checkpoint_asset for d in domains.DOMAINS.values() if d.checkpoint_asset):
        assert stream.is_drive_url(a[name].urls[1]) and not stream.is_drive_url(a[name].urls[0])


def test_unverified_asset_downloads_and_refuses_html(server, registry, tmp_path):
    """A file without a published hash is fetched as it comes (never an HTML page) and then
    counts as present without a request."""
    data = blob(7, 5000)
    registry("u", data, [server.add("u.bin", data)])
    object.__setattr__(weights_registry.ASSETS["u"], "size", 0)
    object.__setattr__(weights_registry.ASSETS["u"], "sha256", "")
    (res,) = fetch(["u"], tmp_path)
    assert res.status == "downloaded" and res.source.endswith("(unverified)")
    assert (tmp_path / "u.bin").read_bytes() == data
    (again,) = fetch(["u"], tmp_path)
    assert again.status == "present" and again.requests == 0
    registry("h", data, [server.add("h.bin", b"<!DOCTYPE html><html>quota</html>")])
    object.__setattr__(weights_registry.ASSETS["h"], "size", 0)
    object.__setattr__(weights_registry.ASSETS["h"], "sha256", "")
    (bad,) = fetch(["h"], tmp_path)
    assert bad.status == "failed" and "HTML" in bad.error and not (tmp_path / "h.bin").exists()
    assert not list(tmp_path.glob("*.part"))


def test_expand_names():
    assert weights_registry.expand_names(None) == ["ffhq", "age", "smile", "pose", "ffhq_pca", "cars_pca"]
    assert weights_registry.expand_names(["Directions", "age", "e4e_cars_encode.pt"])[-1] == "cars"
    assert len(weights_registry.expand_names(["all"])) == len(weights_registry.ASSETS)
    with pytest.raises(E4EError, match="unknown weights names 'foo', 'bar': choose from ffhq, cars"):
        weights_registry.expand_names(["foo", "ffhq", "bar"])


def test_weights_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("E4E_WEIGHTS_DIR", str(tmp_path / "env"))
    assert locate.default_weights_dir() == tmp_path / "env"
    assert locate.resolve_weights_dir(tmp_path / "cli") == tmp_path / "cli"
    monkeypatch.delenv("E4E_WEIGHTS_DIR")
    # this is a source checkout: setup.cfg and weights/ beside the package
    assert locate.default_weights_dir() == ROOT / "weights"
    monkeypatch.setattr(locate, "source_checkout_weights", lambda: None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert locate.default_weights_dir() == tmp_path / "xdg" / "e4e"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert locate.default_weights_dir() == tmp_path / "home" / ".cache" / "e4e"
    assert locate.asset_path("age", tmp_path) == tmp_path / "age.pt"


def test_require_asset(tmp_path, monkeypatch):
    with pytest.raises(MissingWeightsError) as info:
        locate.require_asset("ffhq", tmp_path)
    msg = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in msg
    assert msg == (f"checkpoint e4e_ffhq_encode.pt not found in {tmp_path}: "
                   "run `e4e download-weights ffhq` (or pass --checkpoint PATH)")
    with pytest.raises(MissingWeightsError, match="e4e download-weights directions"):
        locate.require_asset("smile", tmp_path)
    (tmp_path / "e4e_cars_encode.pt").write_text("<!DOCTYPE html><html>Quota exceeded</html>")
    with pytest.raises(MissingWeightsError, match="HTML page"):
        locate.checkpoint_path("cars", tmp_path)
    (tmp_path / "e4e_church_encode.pt").write_bytes(b"")
    with pytest.raises(MissingWeightsError, match=r"e4e_church_encode.pt is empty: run `e4e download-weights church`"):
        locate.checkpoint_path("church", tmp_path)
    (tmp_path / "e4e_horse_encode.pt").mkdir()
    with pytest.raises(MissingWeightsError, match="checkpoint e4e_horse_encode.pt not found in"):
        locate.checkpoint_path("horse", tmp_path)
    (tmp_path / "smile.pt").write_bytes(b"PK\3\4 anything")
    assert locate.require_asset("smile", tmp_path) == tmp_path / "smile.pt"
    monkeypatch.setenv("E4E_WEIGHTS_DIR", str(tmp_path))
    assert locate.require_asset("smile") == tmp_path / "smile.pt"
    with pytest.raises(E4EError, match="unknown domain"):
        locate.checkpoint_path("cats")


def test_list_assets(tmp_path):
    (tmp_path / "age.pt").write_bytes(b"\0" * 2808)
    (tmp_path / "smile.pt").write_bytes(b"\0" * 10)
    (tmp_path / "pose.pt.part").write_bytes(b"\0" * 3762)
    rows = {r.name: r for r in locate.list_assets(tmp_path)}
    assert rows["age"].state == "present" and rows["age"].path == tmp_path / "age.pt"
    assert rows["smile"].state.startswith("wrong size")
    assert rows["pose"].state == "missing (partial 10%)"
    assert rows["ffhq"].state == "missing"
    assert locate.list_assets(tmp_path, verify=True)[4].state == "hash mismatch"  # age: zeros


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def cli(*args, env=None):
    """`e4e ARGS...` through the installed console script."""
    env = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **(env or {})}
    return run_e4e(*args, env=env, timeout=120)


@pytest.fixture
def direction_server(server, parity_dir):
    for path in sorted((parity_dir / "directions").glob("*.pt")):
        server.add("mirror/" + path.name, path.read_bytes())
    return server


def test_cli_downloads_the_real_directions_from_a_mirror(direction_server, tmp_path):
    weights = tmp_path / "weights"
    url = direction_server.url + "/mirror"
    proc = cli("download-weights", "directions", "--base-url", url, "--weights-dir", weights)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = weights_registry.GROUPS["directions"]
    assert only_file(weights) == sorted(weights_registry.ASSETS[n].filename for n in names)
    for n in names:
        asset = weights_registry.ASSETS[n]
        assert digests.sha256_file(weights / asset.filename) == asset.sha256
        assert str(weights / asset.filename) in proc.stdout
    assert f"5 of 5 files in {weights}" in proc.stdout
    assert direction_server.count() == 5

    proc = cli("download-weights", "directions", "--base-url", url, "--weights-dir", weights)
    assert proc.returncode == 0 and "present" in proc.stdout
    assert direction_server.count() == 5  # the second run made no request

    proc = cli("download-weights", "--list", "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") > 3}
    assert "present" in rows["age"] and "present" in rows["cars_pca"]
    assert "missing" in rows["ffhq"] and "missing" in rows["landmarks"]
    assert "1.1 GiB" in rows["ffhq"] and "e4e_ffhq_encode.pt" in rows["ffhq"]


def test_cli_failures_are_one_line_per_asset(server, tmp_path):
    proc = cli("download-weights", "age", "--base-url", server.url + "/empty", "--weights-dir", tmp_path)
    assert_one_line_error(proc, "age (age.pt)", "HTTP 404", "check that")
    assert only_file(tmp_path) == []
    proc = cli("download-weights", "agee", "--weights-dir", tmp_path)
    assert_one_line_error(proc, "unknown weights name 'agee'", "directions", "landmarks")
    proc = cli("download-weights", "age", "--base-url", "ftp://x", "--weights-dir", tmp_path)
    assert_one_line_error(proc, "--base-url must start with http")


def test_cli_from_dir(parity_dir, tmp_path):
    weights = tmp_path / "w"
    proc = cli("download-weights", "directions", "--from", parity_dir / "directions", "--weights-dir", weights)
    assert proc.returncode == 0, proc.stderr
    assert "imported" in proc.stdout and len(only_file(weights)) == 5

    bad = tmp_path / "bad"
    bad.mkdir()
    data = bytearray((parity_dir / "directions" / "age.pt").read_bytes())
    data[100] ^= 1
    (bad / "age.pt").write_bytes(bytes(data))
    weights2 = tmp_path / "w2"
    proc = cli("download-weights", "age", "smile", "--from", bad, "--weights-dir", weights2)
    assert_one_line_error(proc, "wrong SHA-256", "smile.pt not found")
    assert only_file(weights2) == []


def test_cli_list_uses_the_env_folder(tmp_path):
    (tmp_path / "smile.pt").write_bytes(b"\0" * 5)
    proc = cli("download-weights", "--list", "directions", env={"E4E_WEIGHTS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "E4E_WEIGHTS_DIR" in proc.stdout and "wrong size" in proc.stdout
    assert "ffhq " not in proc.stdout.replace("ffhq_pca", "")
