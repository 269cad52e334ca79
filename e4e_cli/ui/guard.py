"""Who may talk to the page server. Any web page the user visits can reach 127.0.0.1, so
`Guard` sits in front of the app: it refuses a Host that is not this server's address (DNS
rebinding), a state-changing request from another origin, and any request without the
per-launch token (URL, cookie or header); it also cuts a request body off at its limit while it
streams in."""

import hmac
import ipaddress
import json
import re
import secrets
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from ..errors import USAGE, E4EError
from .limits import MAX_JSON_BODY, MAX_UPLOAD, MAX_UPLOAD_BODY

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("", "0.0.0.0", "::")  # --host values that listen on every address
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]{16,}")
PORT = re.compile(r":([0-9]{1,5})")  # ASCII digits only: str.isdigit() also takes '²' and '٣'


def new_token() -> str:
    return secrets.token_urlsafe(32)


def check_token(token: str) -> str:
    """A token given with --token: it goes in a URL and a cookie as is, and a short one could be
    guessed by a web page that tries many (each try is a request to 127.0.0.1)."""
    if token == "":
        raise E4EError("--token '' would turn the token off and let any web page use the server; e4e ui always "
                       "needs a token (leave --token out for a random one)", exit_code=USAGE)
    if not TOKEN_CHARS.fullmatch(token):
        raise E4EError("--token must be at least 16 characters of A-Z a-z 0-9 . _ ~ - "
                       "(leave it out for a random one)", exit_code=USAGE)
    return token


def url_host(host: str) -> str:
    """The host as it appears in a URL and a Host header: IPv6 in brackets, lower case."""
    host = host.strip().lower()
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def split_host(value: str) -> tuple[str, Optional[int]]:
    """'127.0.0.1:7860' -> ('127.0.0.1', 7860); '[::1]:80' -> ('[::1]', 80); no port -> 80;
    a port that is not 1-5 ASCII digits -> None."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value.partition("]")
        name += bracket
    else:
        name, colon, rest = value.partition(":")
        rest = colon + rest
    if not rest:
        return name, 80
    m = PORT.fullmatch(rest)
    return name, (int(m.group(1)) if m else None)


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware that decides who may use the page, before the app sees a request.

    - Host must be this server's address and port: 127.0.0.1, localhost, [::1] or the --host
      given (listening on 0.0.0.0 / ::, any IP address). A DNS-rebinding page reaches the
      server under its own domain name and is refused here.
    - A request other than GET / HEAD must carry the page's own Origin (or, without Origin, a
      Referer on the page's origin): browsers send a cross-origin multipart POST without asking.
    - Every request needs the launch token: `?token=` (the URL the CLI prints; the answer sets
      an HttpOnly SameSite=Strict cookie so the page's own requests carry it),
      `Authorization: token ...` or the cookie; compared whole, in constant time.
    - The request body is counted while it streams in (with or without Content-Length) and cut
      off with 413 at its limit; a Content-Length over the limit is refused before reading.
    """

    SAFE_METHODS = ("GET", "HEAD")

    def __init__(self, app, *, token: str, host: str, port: int):
        self.app, self.port = app, port
        self.token = check_token(token).encode()
        self.cookie = f"e4e_ui_{port}"  # cookies ignore the port: two servers must not share one
        self.names = set(LOOPBACK_NAMES) | {url_host(host)}
        self.any_ip = host.strip() in ANY_ADDRESS

    # -- the checks, each None when fine or the refusal's text --

    def host_problem(self, host: str) -> Optional[str]:
        name, port = split_host(host)
        if port == self.port and (name in self.names or (self.any_ip and is_ip(name))):
            return None
        return f"refused: Host {host[:100]!r} is not this server's address; open the address e4e ui printed"

    @staticmethod
    def origin_problem(method: str, host: str, origin: Optional[str], referer: Optional[str]) -> Optional[str]:
        if method in Guard.SAFE_METHODS:
            return None
        own = f"http://{host.strip().lower()}"
        if origin is not None:
            return None if origin.strip().lower() == own else f"refused: a {method} from another web page ({origin[:100]})"
        if referer is not None:
            parts = urlsplit(referer.strip())
            if f"{parts.scheme}://{parts.netloc}".lower() == own:
                return None
            return f"refused: a {method} from another web page"
        return f"refused: a {method} without Origin or Referer (send Origin: {own})"

    def token_source(self, query: str, headers: dict) -> Optional[str]:
        """Where a valid token came from ('query', 'header', 'cookie'), or None."""
        offered = []
        offered += [("query", t) for t in parse_qs(query, keep_blank_values=True).get("token", [])]
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "token":
            offered.append(("header", value.strip()))
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie:
                offered.append(("cookie", value))
        found = None
        for source, value in offered:  # every candidate is compared: no early exit
            if hmac.compare_digest(value.encode("utf-8", "replace"), self.token) and found is None:
                found = source
        return found

    @staticmethod
    def body_limit(path: str) -> tuple[int, str]:
        if path == "/api/upload":
            return MAX_UPLOAD_BODY, f"the upload is over the {MAX_UPLOAD >> 20} MB limit"
        return MAX_JSON_BODY, f"the request is over the {MAX_JSON_BODY >> 20} MB limit"

    def problem(self, scope, headers: dict) -> tuple[Optional[str], Optional[str]]:
        """(refusal or None, where the token came from)."""
        host = headers.get("host", "")
        method = scope["method"]
        problem = self.host_problem(host) or self.origin_problem(method, host, headers.get("origin"), headers.get("referer"))
        if problem is not None:
            return problem, None
        source = self.token_source(scope.get("query_string", b"").decode("latin-1"), headers)
        if source is None:
            return "refused: no valid token; open the address e4e ui printed (it ends in ?token=...)", None
        return None, source

    # -- ASGI --

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        if scope["type"] != "http":  # no websockets here
            return await send({"type": "websocket.close", "code": 1008})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem, source = self.problem(scope, headers)
        if problem is not None:
            return await answer(send, 403, problem.encode(), "text/plain; charset=utf-8")

        limit, too_large = self.body_limit(scope["path"])
        length = headers.get("content-length", "").strip()
        if length and (not re.fullmatch(r"[0-9]{1,20}", length) or int(length) > limit):
            return await answer(send, 413, json.dumps({"error": too_large}).encode(), "application/json")

        extra = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                 (b"referrer-policy", b"same-origin")]
        if source == "query":  # the CLI's URL: from now on the browser sends the cookie
            extra.append((b"set-cookie", f"{self.cookie}={self.token.decode()}; HttpOnly; SameSite=Strict; Path=/".encode()))
        state = {"read": 0, "over": False, "started": False}

        async def counted_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    state["over"] = True
                    raise BodyOverLimit()
            return message

        async def guarded_send(message):
            if state["over"] and not state["started"]:  # the app's answer to a cut-off body: the 413 replaces it
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                message = dict(message, headers=list(message.get("headers", [])) + extra)
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await answer(send, 413, json.dumps({"error": too_large}).encode(), "application/json")


class BodyOverLimit(Exception):
    """Raised out of `receive` to stop the app reading a body over its limit."""


async def answer(send, status: int, body: bytes, content_type: str) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
