"""The router's two ways to reach someone, on the call service: ring them on a chat
session of its own, or, when they are offline, leave an alarm (S117, S215-S219)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from chmail import protocol as p
from chmail.chserver import chatstore
from chmail.errors import ChatError

if TYPE_CHECKING:
    from chmail.chserver.calls import CallService


async def alarm(
    calls: CallService, caller: str, callee: str, subject: str, message_id: str, req: int | None
) -> p.CallState:
    """The callee is offline: keep an alarm for their next login and mail it (S117)."""
    call_id = await chatstore.create_call(
        calls.seam.db,
        caller=caller,
        callee=callee,
        port=0,
        lease=0,
        message_id=message_id,
        subject=subject,
        state="alarmed",
        now=time.time(),
    )
    await calls.alarms.raise_alarm(
        login=callee,
        caller=caller,
        call_id=call_id,
        subject=subject,
        message_id=message_id,
        port=0,
        mail=True,
    )
    return p.CallState(
        id=req,
        call=call_id,
        state="alarmed",
        peer=callee,
        subject=subject,
        message_id=message_id,
        message=f"{callee} is offline; they will be alarmed",
    )


async def place(
    calls: CallService, caller: str, callee: str, subject: str, message_id: str, req: int | None
) -> p.CallState:
    """Open a session of its own for this chat and ring ``callee``.

    A campaign's mails share one port, so a routed chat cannot listen on the mail's
    port (that is one listener for everybody): it gets its own, chosen by the OS.
    """
    from chmail.chserver.calls import ActiveCall

    hub = calls.hub
    hub.check_limit(caller)
    hub.check_limit(callee)
    session = await hub.open(
        port=0,
        lease=0,
        owner=callee,
        message_id=message_id,
        subject=subject,
        host=calls.seam.public_host,
        listen=False,
    )
    try:
        session.port = await session.listen(hub.bind_host, 0)
    except OSError as exc:
        session.end("port unavailable")
        raise ChatError("the server could not open a chat; try again", code="internal") from exc
    call_id = await chatstore.create_call(
        calls.seam.db,
        caller=caller,
        callee=callee,
        port=session.port,
        lease=0,
        message_id=message_id,
        subject=subject,
        state="ringing",
        now=time.time(),
    )
    await chatstore.set_call_state(
        calls.seam.db, call_id, "ringing", now=time.time(), session_id=session.id
    )
    await hub.admit(session, caller)
    await hub.admit(session, callee)
    call = ActiveCall(
        call_id, caller, callee, session, subject, message_id, host=calls.seam.public_host
    )
    loop = asyncio.get_running_loop()
    call.placement = loop.create_future()
    call.placement.set_result(calls.seam.public_host)
    calls.calls[call_id] = call
    calls.by_session[session.id] = call
    call.ringer = loop.create_task(calls._ring(call))
    return p.CallState(
        id=req,
        call=call_id,
        state="ringing",
        peer=callee,
        subject=subject,
        message_id=message_id,
        message=f"ringing {callee}…",
        port=session.port,
        session=session.id,
    )
