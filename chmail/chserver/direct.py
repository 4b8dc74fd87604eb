"""Direct mode (patent ¶33): the callee's own client hosts the chat session.

Rules:

* Only a mail whose X-CH-Host is the host its sender advertised with ``auth.direct``
  is placed directly; the session row is opened in mode ``direct`` without a listener.
* The server pushes ``host_chat`` (with the session's secret, so the client can check
  join tokens) and waits up to DIRECT_ANSWER_TIMEOUT for ``hosting``. If the client
  hosts, the server connects to ``host:port`` (PROBE_TIMEOUT) to check the caller can
  reach it.
* Any failure (no answer, ``ok`` false, probe refused or timed out) falls back to a
  server-hosted session on the same port: ``host_chat stop`` to the client, a listener
  here, and the call's ``accepted`` state names the server's public host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from chmail import protocol as p

if TYPE_CHECKING:
    from chmail.chserver.calls import ActiveCall, CallService

log = logging.getLogger(__name__)

DIRECT_ANSWER_TIMEOUT = 3.0  # the callee's client must say whether it hosts by then
PROBE_TIMEOUT = 1.0
RELAY_ATTEMPTS = 40  # x RELAY_RETRY: how long the fallback waits for the port to be free
RELAY_RETRY = 0.05


async def place_direct(calls: CallService, call: ActiveCall, host: str) -> None:
    """Ask the callee's client to host; probe it; fall back to relay on any failure."""
    assert call.placement is not None
    seam = calls.seam
    call.hosting = asyncio.get_running_loop().create_future()
    s = call.session
    ok = False
    try:
        pushed = seam.push(
            call.callee,
            p.HostChat(
                call=call.id,
                session=s.id,
                port=s.port,
                secret=s.secret.hex(),
                subject=call.subject,
                message_id=call.message_id,
            ),
        )
        if pushed:
            reply = await asyncio.wait_for(call.hosting, DIRECT_ANSWER_TIMEOUT)
            ok = reply.ok and await probe(host, s.port, PROBE_TIMEOUT)
    except (TimeoutError, asyncio.CancelledError):
        ok = False
    if ok:
        log.info("call %d: direct session on %s:%d", call.id, host, s.port)
        call.placement.set_result(host)
        return
    log.info("call %d: direct host %s:%d not usable; relaying", call.id, host, s.port)
    seam.push(call.callee, p.HostChat(call=call.id, session=s.id, port=s.port, stop=True))
    # The client may still hold the port (on the same machine, or listening on every
    # interface) until it has read ``stop``: try again for a little while.
    for attempt in range(RELAY_ATTEMPTS):
        try:
            await calls.hub.relay(s, seam.public_host)
            break
        except OSError as exc:
            if attempt == RELAY_ATTEMPTS - 1:
                log.error("call %d: relay fallback failed: %s", call.id, exc)
            else:
                await asyncio.sleep(RELAY_RETRY)
    call.placement.set_result(seam.public_host)


async def probe(host: str, port: int, limit: float) -> bool:
    """Can a TCP connection to ``host:port`` be made within ``limit`` seconds?"""
    try:
        async with asyncio.timeout(limit):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
