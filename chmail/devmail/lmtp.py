"""A minimal LMTP client (RFC 2033) over a unix socket: hand one mail to Dovecot.

LHLO, MAIL FROM, RCPT TO per recipient, DATA with dot-stuffing, then one reply per
accepted recipient (RFC 2033 4.2). Returns the per-recipient outcome so the SMTP side can
answer truthfully.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from chmail.errors import MailError

TIMEOUT = 30.0


async def _reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines: list[str] = []
    while True:
        raw = await reader.readline()
        if not raw:
            raise MailError("The LMTP server closed the connection.")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(line[4:])
        if len(line) < 4 or line[3] != "-":
            try:
                return int(line[:3]), "\n".join(lines)
            except ValueError:
                raise MailError(f"Bad LMTP reply: {line!r}") from None


def dot_stuff(data: bytes) -> bytes:
    """CRLF line ends, leading dots doubled, terminated by CRLF.CRLF (RFC 5321 4.5.2)."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = text.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = b"\r\n".join(b"." + ln if ln.startswith(b".") else ln for ln in lines)
    return out + b"\r\n.\r\n"


async def deliver(
    socket_path: str | Path, sender: str, recipients: list[str], data: bytes
) -> dict[str, tuple[int, str]]:
    """Deliver ``data``; returns recipient -> (code, text) for every recipient."""
    return await asyncio.wait_for(_deliver(socket_path, sender, recipients, data), TIMEOUT)


async def _deliver(
    socket_path: str | Path, sender: str, recipients: list[str], data: bytes
) -> dict[str, tuple[int, str]]:
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    result: dict[str, tuple[int, str]] = {}
    try:
        await _reply(reader)
        writer.write(b"LHLO localhost\r\n")
        await _reply(reader)
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        code, text = await _reply(reader)
        if code >= 400:
            return dict.fromkeys(recipients, (code, text))
        accepted: list[str] = []
        for rcpt in recipients:
            writer.write(f"RCPT TO:<{rcpt}>\r\n".encode())
            code, text = await _reply(reader)
            result[rcpt] = (code, text)
            if code < 400:
                accepted.append(rcpt)
        if not accepted:
            return result
        writer.write(b"DATA\r\n")
        code, text = await _reply(reader)
        if code != 354:
            return {r: (code, text) for r in recipients}
        writer.write(dot_stuff(data))
        for rcpt in accepted:
            result[rcpt] = await _reply(reader)
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()
    return result
