"""`e4e ui` (issue 16): the real page in headless Chromium, and the server's answers to bad input;
(issue 21) only the page the CLI opens may use the server: Host, Origin and token checks, bodies
cut off at their limit while they stream in, non-Latin-1 download names, bounded prepares.

The browser test needs Debian's `chromium` and `chromium-driver` (.ci/run installs them); it is
skipped only outside CI when they are missing, and fails in CI (CI=true) instead.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import assert_one_line_error, e4e_executable, run_e4e, serve_page

pytest.importorskip("fastapi")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(case_checkpoint, tmp_path_factory):
    """The page for the synthetic ffhq checkpoint (float32), served on a free loopback port."""
    from e4e_cli.model import E4E
    from e4e_cli.ui.server import Editor

    ckpt = case_checkpoint("ffhq_1024_s1")
    model = E4E.from_checkpoint(ckpt, device="cpu", precision="fp32")
    latents = tmp_path_factory.mktemp("latents")
    editor = Editor(model, latents_dir=latents, synthetic=True)
    with serve_page(editor) as (url, token, _):
        port = int(url.rsplit(":", 1)[1])
        yield {"url": url, "editor": editor, "ckpt": ckpt, "port": port, "latents": latents, "token": token}


def _client(server) -> requests.Session:
    """What a script may do: the token in a header, and the page's Origin on a POST."""
    http = requests.Session()
    http.headers.update({"Authorization": f"token {server['token']}", "Origin": server["url"]})
    return http


def _raw(server, method, path, headers, body=None):
    """One request with exactly these headers (Host included): (status, headers, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode()
    finally:
        conn.close()


def _browser():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI needs Debian's chromium and chromium-driver (.ci/run installs them)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


def _wait(fn, timeout=180, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pixels(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"), dtype=np.int16)


def test_the_page_edits_live_and_its_latent_equals_e4e_edit(server, parity_dir, tmp_path):
    from e4e_cli.ui.launch import remove_open_file, write_open_file

    photo = Path(parity_dir) / "images" / "input_img.jpg"
    browser = _browser()
    opener = write_open_file(server["url"] + "/?token=" + server["token"])  # what the CLI gives the browser
    try:
        browser.get(opener.as_uri())  # it redirects to the URL the CLI prints
        _wait(lambda: browser.execute_script("return document.body.dataset.ready"), what="the page")
        assert "token" not in browser.current_url, "the page takes the token out of the address bar"
        browser.refresh()  # the cookie alone brings the page back
        _wait(lambda: browser.execute_script("return document.body.dataset.ready"), what="the reloaded page")
        assert browser.find_element("id", "banner").is_displayed(), "a synthetic checkpoint is labelled"
        browser.find_element("id", "file").send_keys(str(photo))
        _wait(lambda: (browser.find_element("id", "inversion").get_attribute("src") or "").startswith("data:"), what="the inversion")
        assert (browser.find_element("id", "aligned").get_attribute("src") or "").startswith("data:")
        inversion = _pixels(browser.find_element("id", "inversion").get_attribute("src"))
        browser.save_screenshot(str(tmp_path / "page.png"))
        for sid, value in (("slider-sefa-0", "2"), ("slider-sefa-1", "-1.5")):
            browser.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                                   "e.dispatchEvent(new Event('input'));", sid, value)
        _wait(lambda: browser.find_element("id", "preview").get_attribute("data-seq") not in ("0", None), what="a preview")
        _wait(lambda: browser.execute_script("return document.getElementById('status').textContent") == "", what="idle")
        # progressive (issue 25): the 256 px preview first, then the full decode once the sliders rest
        shown = browser.execute_script("return window.e4eShown")
        assert shown[0]["kind"] == "preview" and shown[0]["size"] == 256, shown
        assert shown[-1]["kind"] == "full" and shown[-1]["size"] == 1024, shown
        assert [x["seq"] for x in shown] == sorted({x["seq"] for x in shown}), "an older answer was shown over a newer one"
        assert browser.find_element("id", "shown").text == "full 1024 px"
        edited = _pixels(browser.find_element("id", "preview").get_attribute("src"))
        assert edited.shape == (1024, 1024, 3)
        small = np.asarray(Image.fromarray(edited.astype(np.uint8)).resize((256, 256), Image.LANCZOS), dtype=np.int16)
        assert np.abs(small - inversion).mean() > 1.0, "the preview must change"
        browser.find_element("id", "pasteback").click()
        _wait(lambda: _pixels(browser.find_element("id", "preview").get_attribute("src")).shape[1] > 256
              and browser.execute_script("return document.getElementById('status').textContent") == "", what="paste-back")
        assert browser.find_element("id", "shown").text == "full 1024 px, pasted back"
        href = browser.find_element("id", "dl-latent").get_attribute("href")
        assert browser.find_element("id", "error").text == ""
        (cookie,) = browser.get_cookies()  # the page's own requests above carried it
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] == server["token"]
        shot = Path(__file__).resolve().parents[1] / "docs" / "ui.png"
        if os.environ.get("E4E_UPDATE_SCREENSHOT"):
            browser.save_screenshot(str(shot))
    finally:
        browser.quit()
        remove_open_file(opener)
    assert requests.get(href, timeout=120).status_code == 403  # without the browser's cookie
    latent = np.load(io.BytesIO(requests.get(href, cookies={cookie["name"]: cookie["value"]}, timeout=120).content))

    # the same edit through the CLI: invert, then sefa:0 at 2, then sefa:1 at -1.5
    ckpt = server["ckpt"]
    inv = run_e4e("invert", photo, "--checkpoint", ckpt, "--precision", "fp32", "--out", tmp_path / "inv")
    assert inv.returncode == 0, inv.stderr
    e1 = run_e4e("edit", tmp_path / "inv" / "input_img" / "latent.npy", "--direction", "sefa:0", "--strength", "2",
                 "--checkpoint", ckpt, "--precision", "fp32", "--out", tmp_path / "e1")
    assert e1.returncode == 0, e1.stderr
    (first,) = (tmp_path / "e1").glob("*.npy")
    e2 = run_e4e("edit", first, "--direction", "sefa:1", "--strength", "-1.5", "--checkpoint", ckpt, "--precision", "fp32",
                 "--out", tmp_path / "e2")
    assert e2.returncode == 0, e2.stderr
    (second,) = (tmp_path / "e2").glob("*.npy")
    assert float(np.abs(latent - np.load(second)).max()) <= 1e-5


def test_bad_uploads_get_a_message_and_the_server_lives(server, tmp_path):
    url, api = server["url"], _client(server)
    r = api.post(url + "/api/upload", files={"file": ("notes.png", b"this is a text file")}, timeout=60)
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    # a PNG whose header claims 100000 x 100000 pixels
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    r = api.post(url + "/api/upload", files={"file": ("bomb.png", bomb)}, timeout=60)
    assert r.status_code == 400 and "limit" in r.json()["error"]
    r = api.post(url + "/api/upload", files={"file": ("big.png", b"0" * (26 << 20))}, timeout=120)
    assert r.status_code == 413 and r.json()["error"] == "the upload is over the 25 MB limit"
    r = api.post(url + "/api/latent", json={"path": "../../etc/passwd"}, timeout=30)
    assert r.status_code == 400 and "inside the latent folder" in r.json()["error"]
    r = api.post(url + "/api/preview", json={"session": "nope", "strengths": {}}, timeout=30)
    assert r.status_code == 400 and "upload it again" in r.json()["error"]
    assert api.get(url + "/api/info", timeout=30).json()["domain"] == "ffhq"  # still serving


def test_a_newer_preview_overtakes_an_older_one(server):
    """A request that a newer one of its session has overtaken is answered without decoding:
    at once if the newer one came first, and after the wait if it came while the model was busy."""
    import torch

    from e4e_cli.ui.sessions import Session

    ed = server["editor"]
    sid = ed.sessions.add(Session(codes=torch.zeros(1, 18, 512), w0_codes=torch.zeros(1, 18, 512)))
    ed.session(sid).seq = 5
    assert ed.render(sid, {}, 1.0, False, seq=3) is None  # older than what the page already asked for
    results = {}
    ed.lock.acquire()  # the model is busy with another decode
    try:
        waiting = threading.Thread(target=lambda: results.update(old=ed.render(sid, {}, 1.0, False, seq=6)))
        waiting.start()
        time.sleep(0.5)
        ed.session(sid).seq = 7  # a newer request arrives while request 6 waits
    finally:
        ed.lock.release()
    waiting.join(timeout=60)
    assert results == {"old": None}
    out = ed.render(sid, {}, 1.0, False, seq=8)
    assert out is not None and out[0].size == (1024, 1024)


# ---- issue 25: progressive previews ------------------------------------------------------------


def _session(ed, seed=0):
    """A session holding a random code near the average (no photo): its id and codes."""
    import torch

    from e4e_cli.ui.sessions import Session

    gen = torch.Generator().manual_seed(seed)
    codes = ed.model.latent_avg[None] + 0.5 * torch.randn(1, *ed.model.latent_avg.shape, generator=gen)
    return ed.sessions.add(Session(codes=codes, w0_codes=codes[:, :1].expand_as(codes).clone())), codes


def _ask(api, server, sid, size, seq, strengths=None):
    return api.post(server["url"] + "/api/preview", json={"session": sid, "strengths": strengths or {"sefa-0": 2.0},
                                                          "delta_scale": 1.0, "seq": seq, "size": size}, timeout=300)


def test_the_preview_is_the_full_decodes_256_partial_sum(server, monkeypatch):
    """Through the page's request path: the preview's pixels are exactly the 256 px running image
    that the full decode holds after its 256 block (8-bit, as to_uint8 makes it), and the full
    answer is the full decode."""
    from e4e_cli.nn import fast_generator

    ed, api = server["editor"], _client(server)
    sid, _ = _session(ed)
    r = _ask(api, server, sid, "preview", 1)
    assert r.status_code == 200 and (r.json()["kind"], r.json()["size"]) == ("preview", 256), r.text
    preview = _pixels(r.json()["image"])
    r = _ask(api, server, sid, "full", 2)
    assert r.status_code == 200 and (r.json()["kind"], r.json()["size"]) == ("full", 1024), r.text
    full = _pixels(r.json()["image"])

    partial = {}
    inner = fast_generator._to_rgb_fast

    def record(st, x, s, skip, cdt):
        y = inner(st, x, s, skip, cdt)
        partial.setdefault(y.shape[-1], y.clone())
        return y

    monkeypatch.setattr(fast_generator, "_to_rgb_fast", record)
    codes = ed.edited_codes(ed.session(sid), {"sefa-0": 2.0}, 1.0)
    with ed.lock:
        whole = ed.model.decode(codes)
        early = ed.model.decode(codes, size=256)
    assert preview.shape == (256, 256, 3) and full.shape == (1024, 1024, 3)
    assert np.array_equal(preview, ed.model.to_uint8(partial[256])[0])
    assert np.array_equal(preview, ed.model.to_uint8(early)[0])
    assert np.array_equal(full, ed.model.to_uint8(whole)[0])
    assert api.get(server["url"] + "/api/info", timeout=30).json()["preview_size"] == 256
    r = _ask(api, server, sid, "huge", 3)
    assert r.status_code == 400 and "'preview' or 'full'" in r.json()["error"]


def test_a_newer_request_stops_a_full_decode_at_the_next_block_boundary(server, monkeypatch):
    """A full decode is held at its first block boundary (by a wrapper of its should_stop); the
    page still answers meanwhile; a slider move (a newer preview of the same session) arrives;
    let go, the full decode stops at that boundary (Cancelled, answered 409) instead of running
    its remaining blocks, and the preview is answered."""
    from e4e_cli.errors import Cancelled

    ed, api = server["editor"], _client(server)
    sid, _ = _session(ed, seed=1)
    real = ed.model.decode
    held, go, calls = threading.Event(), threading.Event(), []

    def decode(codes, *, size=None, should_stop=None, **kw):
        call = {"size": size, "asked": 0, "cancelled": False}
        calls.append(call)

        def stop():
            call["asked"] += 1
            if size is None and call["asked"] == 1:
                held.set()
                go.wait(timeout=120)
            return should_stop is not None and should_stop()
        try:
            return real(codes, size=size, should_stop=stop, **kw)
        except Cancelled:
            call["cancelled"] = True
            raise

    monkeypatch.setattr(ed.model, "decode", decode)
    answers = {}
    old = threading.Thread(target=lambda: answers.update(full=_ask(api, server, sid, "full", 10)))
    old.start()
    try:
        assert held.wait(timeout=120), "the full decode did not start"
        t0 = time.perf_counter()
        assert api.get(server["url"] + "/api/info", timeout=30).status_code == 200  # responsive meanwhile
        assert time.perf_counter() - t0 < 5
        new = threading.Thread(target=lambda: answers.update(preview=_ask(api, server, sid, "preview", 11)))
        new.start()
        _wait(lambda: ed.session(sid).seq == 11, timeout=60, what="the newer request")
    finally:
        go.set()
    old.join(timeout=300)
    new.join(timeout=300)
    assert answers["full"].status_code == 409 and answers["full"].json() == {"superseded": True}
    assert answers["preview"].status_code == 200 and answers["preview"].json()["size"] == 256
    full_call = calls[0]
    assert full_call["size"] is None and full_call["cancelled"] and full_call["asked"] == 1, calls
    assert calls[1:] == [{"size": 256, "asked": 6, "cancelled": False}], calls  # blocks 8 .. 256


def test_a_model_of_256_px_or_less_has_no_separate_preview():
    from types import SimpleNamespace

    from e4e_cli.ui.server import Editor

    assert Editor.preview_size(SimpleNamespace(model=SimpleNamespace(size=1024)), "preview") == 256
    assert Editor.preview_size(SimpleNamespace(model=SimpleNamespace(size=256)), "preview") is None
    assert Editor.preview_size(SimpleNamespace(model=SimpleNamespace(size=1024)), "full") is None


def test_cli_errors(server, tmp_path):
    proc = run_e4e("ui", "--no-browser", "--port", str(server["port"]), "--checkpoint", server["ckpt"])
    assert_one_line_error(proc, "in use", "--port")
    proc = run_e4e("ui", "--no-browser", "--port", str(_free_port()), env={"E4E_WEIGHTS_DIR": str(tmp_path)})
    assert_one_line_error(proc, "e4e download-weights ffhq", code=3)


# ---- issue 21: only the page the CLI opens may use the server ---------------------------------------


def test_a_host_that_is_not_the_server_is_refused(server):
    """DNS rebinding: a page whose name now points at 127.0.0.1 reaches the server under its own name."""
    port, auth = server["port"], {"Authorization": f"token {server['token']}"}
    for host in ("attacker.example", f"attacker.example:{port}", f"127.0.0.1.attacker.example:{port}",
                 f"127.0.0.1:{port + 1}", "127.0.0.1", "127.0.0.1:\u00b2", f"127.0.0.1:{port}\u00b2", "[::1]:\u00b9"):
        status, headers, text = _raw(server, "GET", "/api/info", {"Host": host, **auth})
        assert (status, headers["content-type"]) == (403, "text/plain; charset=utf-8"), host
        assert "Host" in text and "\n" not in text.strip(), text
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        status, _, text = _raw(server, "GET", "/api/info", {"Host": host, **auth})
        assert status == 200 and json.loads(text)["domain"] == "ffhq", host


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 90, 60)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_post_from_another_origin_is_refused(server):
    """Browsers send a cross-origin form or multipart POST without asking first: the Origin decides."""
    url, ed = server["url"], server["editor"]
    host = {"Host": f"127.0.0.1:{server['port']}", "Authorization": f"token {server['token']}"}
    photo = _png_bytes()
    sessions = len(ed.sessions)
    for origin in ("https://attacker.example", "null", f"http://localhost:{server['port']}", "https://127.0.0.1:1",
                   f"{url}.attacker.example", f"https://127.0.0.1:{server['port']}", f"{url}/", f"{url}@attacker.example"):
        r = requests.post(url + "/api/upload", files={"file": ("a.png", photo)}, timeout=60,
                          headers={"Origin": origin, "Authorization": host["Authorization"]})
        assert r.status_code == 403 and "another web page" in r.text, origin
        status, _, text = _raw(server, "POST", "/api/preview", {**host, "Origin": origin, "Content-Type": "application/json"},
                               body=b'{"session": "x"}')
        assert status == 403 and "another web page" in text, origin
    assert len(ed.sessions) == sessions, "no refused upload was inverted"
    status, _, text = _raw(server, "POST", "/api/latent", {**host, "Content-Type": "application/json"}, body=b"{}")
    assert status == 403 and "without Origin or Referer" in text
    for referer in ("https://attacker.example/x", f"https://127.0.0.1:{server['port']}/", f"{url}.attacker.example/x",
                    f"{url}@attacker.example/"):  # another host, or the page's host and port on https
        status, _, text = _raw(server, "POST", "/api/latent", {**host, "Referer": referer,
                                                               "Content-Type": "application/json"}, body=b"{}")
        assert status == 403 and "another web page" in text, referer
    # the page's own origin (or, without Origin, a Referer on it) reaches the app
    for own in ({"Origin": url}, {"Referer": url + "/"}):
        status, _, text = _raw(server, "POST", "/api/latent", {**host, **own, "Content-Type": "application/json"},
                               body=b'{"path": "nothing/latent.npy"}')
        assert status == 400 and "inside the latent folder" in text, own


def test_every_request_needs_the_token_and_the_url_sets_a_cookie(server):
    url, token, port = server["url"], server["token"], server["port"]
    for path in ("/", "/api/info", "/api/download/latent?session=x", "/api/info?token=" + token[:-1] + "x",
                 "/api/info?token=", "/api/info?token=" + token[:-1], "/api/info?token=" + token[:1], "/api/info?token"):
        r = requests.get(url + path, timeout=30)
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/plain") and "token" in r.text, path
    for value in ("nope", "", token[:-1], token[:1], token + "x"):  # whole, not a prefix either way
        r = requests.get(url + "/api/info", headers={"Authorization": f"token {value}"}, timeout=30)
        assert r.status_code == 403, value
        r = requests.get(url + "/api/info", cookies={f"e4e_ui_{port}": value}, timeout=30)
        assert r.status_code == 403, value
    r = requests.post(url + "/api/latent", json={"path": "x"}, headers={"Origin": url}, timeout=30)
    assert r.status_code == 403 and "token" in r.text
    assert requests.get(url + "/api/info", headers={"Authorization": f"token {token}"}, timeout=30).status_code == 200

    browser = requests.Session()
    r = browser.get(f"{url}/?token={token}", timeout=30)
    assert r.status_code == 200 and "<title>" in r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"e4e_ui_{port}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert r.headers["x-frame-options"] == "DENY"
    # afterwards the cookie alone is enough, for GET and for the page's own POST
    assert browser.get(url + "/api/info", timeout=30).json()["domain"] == "ffhq"
    r = browser.post(url + "/api/latent", json={"path": "nothing/latent.npy"}, headers={"Origin": url}, timeout=30)
    assert r.status_code == 400 and "inside the latent folder" in r.json()["error"]
    r = requests.get(url + "/api/info", cookies={f"e4e_ui_{port + 1}": token}, timeout=30)
    assert r.status_code == 403, "another port's cookie name"


def _send_until_answered(server, head: bytes, chunks, timeout=60):
    """Send the request head, then the body chunks, stopping as soon as the server answers:
    (status, answer body, body bytes sent before the answer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 << 10)  # little in flight: what is sent has mostly been read
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", server["port"]))
    sent = 0
    try:
        sock.sendall(head)
        for piece in chunks:
            if select.select([sock], [], [], 0)[0]:  # an answer (or a close) is waiting
                break
            try:
                sock.sendall(piece)
            except OSError:  # the server closed: its answer is in the socket already
                break
            sent += len(piece)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        return answer.status, answer.read().decode(), sent
    finally:
        sock.close()


def _upload_head(server, extra: str) -> bytes:
    return (f"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1:{server['port']}\r\n"
            f"Authorization: token {server['token']}\r\nOrigin: {server['url']}\r\n"
            f"Content-Type: multipart/form-data; boundary=b0undary\r\n{extra}\r\n").encode()


def test_a_body_over_the_limit_is_refused_while_it_streams_in(server):
    """A chunked 120 MB upload (no Content-Length) is answered 413 once the limit is read, not
    after it is all sent, with the real limit in the message; a Content-Length over the limit
    before any body."""
    total, piece = 120 << 20, 256 << 10
    part = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n")

    def chunked():
        yield b"%x\r\n%s\r\n" % (len(part), part)
        zeros = b"0" * piece
        for _ in range(total // piece):
            yield b"%x\r\n%s\r\n" % (piece, zeros)
        end = b"\r\n--b0undary--\r\n"
        yield b"%x\r\n%s\r\n0\r\n\r\n" % (len(end), end)

    status, text, sent = _send_until_answered(server, _upload_head(server, "Transfer-Encoding: chunked\r\n"), chunked())
    from e4e_cli.ui.limits import MAX_UPLOAD_BODY

    # what the server read before answering, plus what the sockets hold (about 1 MB here)
    assert sent <= MAX_UPLOAD_BODY + (3 << 20), f"the server answered only after {sent / 2**20:.1f} MB of {total >> 20} MB"
    assert (status, json.loads(text)) == (413, {"error": "the upload is over the 25 MB limit"})

    # no body at all: the answer must come from the head alone (else this times out)
    status, text, _ = _send_until_answered(server, _upload_head(server, f"Content-Length: {total}\r\n"), [], timeout=20)
    assert (status, json.loads(text)) == (413, {"error": "the upload is over the 25 MB limit"})
    # a JSON request has its own, smaller limit
    r = _client(server).post(server["url"] + "/api/preview", data=b"{" + b" " * (2 << 20) + b"}",
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"] == "the request is over the 1 MB limit"
    assert _client(server).get(server["url"] + "/api/info", timeout=30).status_code == 200  # still serving


def _latent_file(path: Path, n: int = 18) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(0).standard_normal((n, 512)).astype(np.float32) * 0.1)
    return path


def test_the_latent_picker_stays_inside_its_folder_and_names_download_in_utf8(server):
    """`..` and symlinks that lead out of --latents are refused after resolving the path (each
    would be a valid latent); a latent in a folder named фото downloads under that name."""
    latents, api, url = server["latents"], _client(server), server["url"]
    outside = _latent_file(latents.parent / "outside" / "latent.npy")
    (latents / "link").symlink_to(outside.parent, target_is_directory=True)
    (latents / "alias").mkdir()
    (latents / "alias" / "latent.npy").symlink_to(outside)
    answers = {}
    for rel in ("../outside/latent.npy", "link/latent.npy", "alias/latent.npy", str(outside)):
        r = api.post(url + "/api/latent", json={"path": rel}, timeout=60)
        answers[rel] = (r.status_code, r.json().get("error"))
    assert answers == {rel: (400, "not a latent.npy inside the latent folder") for rel in answers}
    _latent_file(latents / "фото" / "latent.npy")
    assert api.get(url + "/api/info", timeout=30).json()["latents"] == ["фото/latent.npy"]

    r = api.post(url + "/api/latent", json={"path": "фото/latent.npy"}, timeout=120)
    assert r.status_code == 200, r.text
    sid = r.json()["session"]
    for kind, name in (("latent", "фото_edit.npy"), ("image", "фото_image.png")):
        r = api.get(f"{url}/api/download/{kind}", params={"session": sid}, timeout=120)
        assert r.status_code == 200, r.text
        plain = "edit.npy" if kind == "latent" else "image.png"
        assert r.headers["content-disposition"] == f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name)}"
    assert quote("фото_image.png") == "%D1%84%D0%BE%D1%82%D0%BE_image.png"


def test_attachment_names():
    from e4e_cli.ui.server import attachment

    assert attachment("face_image.png") == "attachment; filename=\"face_image.png\"; filename*=UTF-8''face_image.png"
    assert attachment("café_edit.npy").startswith("attachment; filename=\"cafe_edit.npy\"; filename*=UTF-8''caf%C3%A9_edit.npy")
    header = attachment('a"b\r\n;c_image.png')
    assert header.startswith("attachment; filename=\"a_b_c_image.png\";") and "\r" not in header and "\n" not in header
    header.encode("latin-1")


def test_prepares_are_bounded_and_a_busy_server_says_so(server):
    """Uploads and latent picks run in worker threads: at most two at once, a third is told to retry."""
    ed, api, url = server["editor"], _client(server), server["url"]
    held = [ed.prepares.acquire(blocking=False) for _ in range(2)]
    try:
        assert held == [True, True]
        r = api.post(url + "/api/upload", files={"file": ("a.png", _png_bytes())}, timeout=60)
        assert r.status_code == 503 and "busy" in r.json()["error"] and "try again" in r.json()["error"]
        _latent_file(server["latents"] / "busy" / "latent.npy")
        r = api.post(url + "/api/latent", json={"path": "busy/latent.npy"}, timeout=60)
        assert r.status_code == 503 and "busy" in r.json()["error"]
    finally:
        for _ in held:
            ed.prepares.release()
    r = api.post(url + "/api/upload", files={"file": ("a.png", b"not an image")}, timeout=60)
    assert r.status_code == 400, "free again"


def test_sessions_are_created_safely_from_many_threads(server):
    """Uploads finish in worker threads; the session map (and forgetting the oldest) is locked."""
    from e4e_cli.ui.limits import MAX_SESSIONS
    from e4e_cli.ui.sessions import Session

    ed, errors = server["editor"], []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def churn():
        try:
            for _ in range(3000):
                ed.session(ed.sessions.add(Session(codes=None, w0_codes=None)))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    try:
        threads = [threading.Thread(target=churn) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert [e for e in errors if "no longer loaded" not in str(e)] == [] and len(ed.sessions) == MAX_SESSIONS


def test_the_cli_prints_the_url_with_its_token(server):
    """The first line is the URL to open, with the token; that URL (and only with the token) works."""
    port = _free_port()
    proc = subprocess.Popen([e4e_executable(), "ui", "--no-browser", "--port", str(port), "--checkpoint", str(server["ckpt"]),
                             "--precision", "fp32", "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "E4E_NO_PROGRESS": "1"})
    try:
        first = proc.stdout.readline()
        prefix = f"e4e ui: http://127.0.0.1:{port}/?token="
        assert first.startswith(prefix), (first, proc.stderr.read() if proc.poll() is not None else "")
        page = first.split()[2]
        token = page.split("token=", 1)[1]
        assert len(token) >= 40 and token != server["token"], "a new random token per launch"
        _wait(lambda: _port_open(port), timeout=120, what="the server")
        r = requests.get(page, timeout=30)
        assert r.status_code == 200 and f"e4e_ui_{port}={token}" in r.headers["set-cookie"]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=30).status_code == 403
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_cli_refuses_an_empty_or_weak_token():
    proc = run_e4e("ui", "--no-browser", "--port", str(_free_port()), "--token", "")
    assert_one_line_error(proc, "--token", "always needs a token", code=2)
    proc = run_e4e("ui", "--no-browser", "--port", str(_free_port()), "--token", "short")
    assert_one_line_error(proc, "--token", "at least 16", code=2)


# ---- issue 30: plain answers, bounded memory, the token off the command line, any address -------------


def _plain(text: str) -> bool:
    """One line that names no temporary file and shows no exception."""
    return ("\n" not in text and "/tmp" not in text and "e4e-ui-" not in text and "Errno" not in text
            and not any(w in text for w in ("KeyError", "ValueError", "OSError", "TypeError", "Exception")))


def test_the_page_gets_plain_reasons_never_a_temp_path_or_an_exception(server, monkeypatch):
    """Each bad request gets one plain line naming the user's own file (never the temporary file
    it was read from, an exception's name or repr); an unexpected failure a plain internal error."""
    url, api, ed = server["url"], _client(server), server["editor"]
    sid, _ = _session(ed, seed=2)

    def upload(name, data):
        r = api.post(url + "/api/upload", files={"file": (name, data)}, timeout=120)
        return r.status_code, r.json()["error"]

    answers = {
        "long extension": upload("x." + "a" * 300, b"whatever"),
        "text file": upload("notes.png", b"this is a text file"),
        "not a photo name": upload("notes.txt", _png_bytes()),
        "no face": upload("plain.png", _png_bytes()),
        "empty": upload("empty.jpg", b""),
    }
    assert answers["long extension"] == (400, "x." + "a" * 75 + "...: the page takes photos named .jpg, .jpeg, .png, .webp, "
                                              ".bmp, .tif, .tiff, .gif")
    assert answers["text file"][0] == 400 and answers["text file"][1].startswith("notes.png: not an image file")
    assert answers["not a photo name"][1].startswith("notes.txt: the page takes photos named")
    assert answers["no face"] == (400, "no face found in plain.png")
    assert answers["empty"] == (400, "empty.jpg: the file is empty")

    def post(path, body):
        r = api.post(url + path, data=body, headers={"Content-Type": "application/json"}, timeout=120)
        return r.status_code, r.json()["error"]

    answers.update({
        "NUL in a latent path": post("/api/latent", json.dumps({"path": "a\x00b/latent.npy"})),
        "long latent path": post("/api/latent", json.dumps({"path": "a" * 5000 + "/latent.npy"})),
        "latent path not text": post("/api/latent", json.dumps({"path": ["x"]})),
        "no session (preview)": post("/api/preview", json.dumps({"strengths": {}})),
        "no session (refine)": post("/api/refine", "{}"),
        "not JSON": post("/api/preview", "session=x"),
        "not an object": post("/api/preview", "[1, 2]"),
        "strength not a number": post("/api/preview", json.dumps({"session": sid, "strengths": {"sefa-0": "abc"}})),
        "strengths not an object": post("/api/preview", json.dumps({"session": sid, "strengths": [1]})),
        "seq not a number": post("/api/preview", json.dumps({"session": sid, "seq": "x"})),
        "unknown slider": post("/api/preview", json.dumps({"session": sid, "strengths": {"nope": 1}})),
    })
    assert answers["NUL in a latent path"] == answers["long latent path"] == (400, "not a latent.npy inside the latent folder")
    assert answers["latent path not text"] == (400, "the request's 'path' must be text")
    assert answers["no session (preview)"] == answers["no session (refine)"] == (400, "the request has no 'session'")
    assert answers["not JSON"] == (400, "the request is not JSON")
    assert answers["not an object"] == (400, "the request must be a JSON object")
    assert answers["strength not a number"] == (400, "the request's 'sefa-0' must be a number")
    for key in ("strengths not an object", "seq not a number", "unknown slider"):
        assert answers[key][0] == 400, answers[key]

    r = api.get(url + "/api/download/latent", params={"session": sid, "delta_scale": "abc"}, timeout=60)
    answers["download, bad delta scale"] = (r.status_code, r.json()["error"])
    assert answers["download, bad delta scale"] == (400, "the request's 'delta_scale' must be a number")
    r = api.get(url + "/api/download/latent", params={"session": sid, "strengths": "{sefa-0: 2"}, timeout=60)
    answers["download, strengths not JSON"] = (r.status_code, r.json()["error"])
    assert answers["download, strengths not JSON"] == (400, "the request's 'strengths' must be an object of direction: number")
    r = api.get(url + "/api/download/latent", timeout=60)
    answers["download, no session"] = (r.status_code, r.json()["error"])
    assert answers["download, no session"] == (400, "the request has no 'session'")
    r = api.post(url + "/api/upload", files={"other": ("a.png", _png_bytes())}, timeout=60)
    answers["upload without its file"] = (r.status_code, r.json()["error"])
    assert answers["upload without its file"] == (400, "the request is missing or has a malformed file")

    def broken(*args, **kwargs):
        raise OSError(2, "No such file or directory", "/tmp/e4e-ui-secret/upload.png")
    monkeypatch.setattr(ed, "render", broken)
    r = api.post(url + "/api/preview", json={"session": sid}, timeout=60)
    answers["internal"] = (r.status_code, r.json()["error"])
    assert answers["internal"] == (500, "internal error: the server could not do this (the terminal running e4e ui says why)")
    assert [k for k, (_, text) in answers.items() if not _plain(text)] == [], answers


def test_sessions_hold_a_bounded_amount_and_the_oldest_go_first():
    """Each session is counted (its images, display copies, codes and offsets); a new or grown
    one makes the oldest others go until the rest fit; a photo is kept at a bounded size."""
    import torch

    from e4e_cli.ui.limits import KEPT_PHOTO_PIXELS, MAX_SESSION_BYTES
    from e4e_cli.ui.sessions import Session, Sessions, kept_photo, session_bytes

    def one():
        return Session(codes=torch.zeros(1, 18, 512), w0_codes=torch.zeros(1, 18, 512), aligned=Image.new("RGB", (1024, 1024)))
    each = session_bytes(one())
    assert each == 3 * 1024 * 1024 + 2 * 18 * 512 * 4
    store = Sessions(max_bytes=10 << 20)
    ids = [store.add(one()) for _ in range(5)]
    assert len(store) == 3 and store.total_bytes() <= 10 << 20
    for sid in ids[:2]:
        with pytest.raises(Exception, match="no longer loaded"):
            store.get(sid)
    grown = store.get(ids[2])  # the oldest left is refined: its offsets push the next oldest out
    grown.refined = (grown.codes, {3: torch.zeros(256, 256, 3, 3)})
    store.fit(keep=ids[2])
    assert store.get(ids[2]) is grown and store.get(ids[4]) and len(store) == 2
    with pytest.raises(Exception, match="no longer loaded"):
        store.get(ids[3])
    assert Sessions().max_bytes == MAX_SESSION_BYTES

    big = Image.new("RGB", (5000, 4000))
    quad = [[100.0, 200.0], [100.0, 1200.0], [1100.0, 1200.0], [1100.0, 200.0]]
    photo, q, marks = kept_photo(big, {"quad": quad, "landmarks": None})
    k = (KEPT_PHOTO_PIXELS / (5000 * 4000)) ** 0.5
    assert photo.width * photo.height <= KEPT_PHOTO_PIXELS and abs(photo.width - 5000 * k) <= 1 and marks is None
    np.testing.assert_allclose(q, (np.array(quad) + 0.5) * [photo.width / 5000, photo.height / 4000] - 0.5)
    small = Image.new("RGB", (640, 480))
    assert kept_photo(small, None) == (small, None, None)


def test_an_upload_keeps_its_photo_bounded_and_pastes_back_where_the_face_was(server, parity_dir, monkeypatch):
    """With the kept size lowered, an uploaded photo is kept shrunk; the full photo download
    pastes the face into that copy at the quad scaled with it (outside it nothing changes)."""
    from e4e_cli.ui import sessions

    monkeypatch.setattr(sessions, "KEPT_PHOTO_PIXELS", 250_000)
    url, api, ed = server["url"], _client(server), server["editor"]
    r = api.post(url + "/api/upload", files={"file": ("face.jpg", (Path(parity_dir) / "images" / "input_img.jpg").read_bytes())},
                 timeout=300)
    assert r.status_code == 200, r.text
    s = ed.session(r.json()["session"])
    assert s.photo.size == (500, 500) and s.quad.shape == (4, 2)
    r = api.get(url + "/api/download/photo", params={"session": r.json()["session"]}, timeout=300)
    assert r.status_code == 200 and r.headers["content-disposition"].startswith('attachment; filename="face_photo.png"')
    pasted = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"), dtype=np.int16)
    kept = np.asarray(s.photo, dtype=np.int16)
    assert pasted.shape == kept.shape
    changed = np.abs(pasted - kept).max(axis=2) > 0
    x0, y0 = np.floor(s.quad.min(axis=0)).astype(int) - 2
    x1, y1 = np.ceil(s.quad.max(axis=0)).astype(int) + 2
    inside = np.zeros_like(changed)
    inside[max(0, y0):y1, max(0, x0):x1] = True
    assert changed[inside].mean() > 0.1 and not changed[~inside].any()


def test_help_states_the_memory_bound():
    from e4e_cli.ui.limits import KEPT_PHOTO_PIXELS, MAX_SESSION_BYTES

    proc = run_e4e("ui", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"at most {MAX_SESSION_BYTES >> 30} GB together" in text and f"{KEPT_PHOTO_PIXELS // 1_000_000} megapixels" in text
    assert "oldest is forgotten first" in text


def _start_ui(server, *args, env=None):
    """`e4e ui ARGS` on a free port: (process, port, the printed URL)."""
    port = _free_port()
    proc = subprocess.Popen([e4e_executable(), "ui", "--port", str(port), "--checkpoint", str(server["ckpt"]),
                             "--precision", "fp32", "--device", "cpu", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "E4E_NO_PROGRESS": "1", **(env or {})})
    first = proc.stdout.readline()
    assert first.startswith("e4e ui: http://"), (first, proc.stderr.read() if proc.poll() is not None else "")
    _wait(lambda: _port_open(port), timeout=120, what="the server")
    return proc, port, first.split()[2]


def _stop(proc) -> str:
    """Stop the server as Ctrl-C would (SIGTERM: uvicorn shuts down cleanly); its stderr."""
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    return err


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or half written
        return None


def test_any_address_warns_once_and_takes_any_ip_but_no_name(server):
    """Listening on 0.0.0.0 the Host may be any IP address with the port (the machine's
    addresses), never a name; the terminal is told once that the page and token go unencrypted."""
    proc, port, page = _start_ui(server, "--no-browser", "--host", "0.0.0.0")
    try:
        assert page.startswith(f"http://127.0.0.1:{port}/?token=")
        auth = {"Authorization": "token " + page.split("token=", 1)[1]}
        got = {}
        for host in (f"10.1.2.3:{port}", f"127.0.0.1:{port}", f"[fe80::1]:{port}", f"attacker.example:{port}",
                     f"10.1.2.3.attacker.example:{port}", f"10.1.2.3:{port + 1}", "10.1.2.3"):
            got[host] = _raw({"port": port}, "GET", "/api/info", {"Host": host, **auth})[0]
        assert got == {f"10.1.2.3:{port}": 200, f"127.0.0.1:{port}": 200, f"[fe80::1]:{port}": 200,
                       f"attacker.example:{port}": 403, f"10.1.2.3.attacker.example:{port}": 403,
                       f"10.1.2.3:{port + 1}": 403, "10.1.2.3": 403}
    finally:
        err = _stop(proc)
    assert err.count("unencrypted") == 1, err
    (line,) = [x for x in err.splitlines() if "unencrypted" in x]
    assert line.startswith("e4e ui: warning: --host 0.0.0.0 serves the page on every network address"), line


def test_the_browser_gets_a_private_file_never_the_token(server, tmp_path):
    """As Jupyter does: the browser's command line (what `ps` shows every local user) holds a
    file that only this user can read, which redirects to the URL with the token; the file goes
    when the server stops. No warning on loopback."""
    record = tmp_path / "browser.json"
    fake = tmp_path / "fake-browser"
    fake.write_text(f"#!{sys.executable}\n"
                    "import json, os, stat, sys\nfrom urllib.parse import unquote, urlsplit\n"
                    "p = unquote(urlsplit(sys.argv[1]).path)\n"
                    "mode = lambda q: stat.S_IMODE(os.stat(q).st_mode)\n"
                    f"json.dump({{'argv': sys.argv[1:], 'path': p, 'mode': mode(p), 'dir_mode': mode(os.path.dirname(p)),"
                    f" 'text': open(p).read()}}, open({str(record)!r}, 'w'))\n")
    fake.chmod(0o755)
    proc, port, page = _start_ui(server, env={"BROWSER": str(fake)})
    try:
        seen = _wait(lambda: _json_or_none(record), timeout=60, what="the browser")
    finally:
        err = _stop(proc)
    token = page.split("token=", 1)[1]
    assert len(seen["argv"]) == 1 and seen["argv"][0].startswith("file:///") and token not in seen["argv"][0]
    assert (seen["mode"], seen["dir_mode"]) == (0o600, 0o700)
    assert f'<meta http-equiv="refresh" content="0;url={page}">' in seen["text"]
    assert not Path(seen["path"]).exists() and not Path(seen["path"]).parent.exists()
    assert "warning" not in err, err
