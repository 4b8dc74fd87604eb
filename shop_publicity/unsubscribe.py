"""The unsubscribe endpoint: a small asyncio HTTP/1.1 server.

Rules:

* ``GET /u/<campaign>/<member>/<token>`` shows a page with one button (a GET must not
  unsubscribe: mail scanners and link previews follow links).
* ``POST`` to the same URL unsubscribes at once: RFC 8058 One-Click, whose body is
  ``List-Unsubscribe=One-Click``; the page's button posts the same body.
* The token is an HMAC of campaign and member under the shop's key (compose.py): a URL
  cannot be edited to unsubscribe someone else. A wrong token gets 403.
* Unsubscribing is idempotent. Requests are bounded (head 8 KiB, body 4 KiB, 10 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re

from chmail.config import parse_hostport
from shop_publicity import compose
from shop_publicity.store import Store

log = logging.getLogger(__name__)

MAX_HEAD = 8192
MAX_BODY = 4096
TIMEOUT = 10.0
_PATH = re.compile(r"/u/(\d{1,12})/(\d{1,12})/([A-Za-z0-9_-]{1,64})")


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>"
    )


class UnsubscribeServer:
    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key
        self.server: asyncio.Server | None = None

    async def start(self, listen: str) -> tuple[str, int]:
        host, port = parse_hostport(listen)
        self.server = await asyncio.start_server(self._handle, host, port)
        sock = self.server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, page = await asyncio.wait_for(self._request(reader), TIMEOUT)
        except (
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            ConnectionError,
        ):
            status, page = 400, _page("Bad request", "<p>The request could not be read.</p>")
        data = page.encode("utf-8")
        reason = {
            200: "OK",
            400: "Bad Request",
            403: "Forbidden",
            404: "Not Found",
            405: "Method Not Allowed",
        }[status]
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n"
            "Cache-Control: no-store\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(head.encode("ascii") + data)
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, str]:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            raise ValueError("head too long")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if not 0 <= length <= MAX_BODY:
            raise ValueError("body too long")
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return 200, _page("ok", "")
        match = _PATH.fullmatch(path)
        if match is None:
            return 404, _page("Not found", "<p>There is nothing here.</p>")
        cid, mid, token = int(match.group(1)), int(match.group(2)), match.group(3)
        if not compose.token_ok(self.key, cid, mid, token):
            return 403, _page("Link not valid", "<p>This unsubscribe link is not valid.</p>")
        if method == "GET":
            form = (
                f"<form method='post' action='{html.escape(path)}'>"
                "<input type='hidden' name='List-Unsubscribe' value='One-Click'>"
                "<button type='submit'>Unsubscribe</button></form>"
            )
            return 200, _page("Unsubscribe?", "<p>Stop all mail from this shop?</p>" + form)
        if method != "POST":
            return 405, _page("Not allowed", "<p>Use GET or POST.</p>")
        if b"List-Unsubscribe=One-Click" not in body:
            return 400, _page("Bad request", "<p>Expected List-Unsubscribe=One-Click.</p>")
        changed = await self.store.unsubscribe(cid, mid)
        log.info(
            "unsubscribe: member %s via campaign %s (%s)", mid, cid, "new" if changed else "again"
        )
        return 200, _page("Unsubscribed", "<p>You will get no more mail from this shop.</p>")
