"""Starting the page: its address, a warning when it leaves this machine, and opening it in a
browser without putting the token on a command line.

`webbrowser.open(url)` starts the browser with the URL as an argument, which every local user
sees in `ps`. As Jupyter does, the browser is given a small local file instead, readable only by
this user, that redirects to the URL with the token.
"""

import html
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from .guard import ANY_ADDRESS, url_host


def page_url(host: str, port: int, token: str) -> str:
    """The address to open; a wildcard listen address is opened as 127.0.0.1."""
    name = "127.0.0.1" if host.strip() in ANY_ADDRESS else url_host(host)
    return f"http://{name}:{port}/?token={quote(token, safe='')}"


def network_warning(host: str) -> Optional[str]:
    """The warning for a listen address other than loopback (None for loopback)."""
    import ipaddress

    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass  # a host name, or "" (every address)
    where = "on every network address of this machine" if host.strip() in ANY_ADDRESS else "beyond this machine"
    return (f"warning: --host {host.strip() or repr(host)} serves the page {where}: the page, your photos and "
            "the token travel unencrypted (plain HTTP), and anyone who can see that traffic can use the page")


def port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def write_open_file(url: str) -> Path:
    """A page that redirects to `url`, in a new folder only this user may enter (0700), the file
    itself 0600: what the browser is started with instead of the URL. Remove it with
    `remove_open_file` when the server stops."""
    folder = Path(tempfile.mkdtemp(prefix="e4e-ui-open-"))
    path = folder / "open.html"
    target = html.escape(url, quote=True)
    text = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={target}">'
            f'<title>e4e ui</title></head>\n<body><p><a href="{target}">Open the e4e editing page</a></p></body></html>\n')
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def remove_open_file(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def open_in_browser(path: Path) -> None:
    import webbrowser

    webbrowser.open(path.as_uri())
