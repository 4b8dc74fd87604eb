"""Plugs calls, chat sessions and alarms (issue 4) into the CH server.

``install(server)`` registers the handlers of ``call``, ``answer``, ``hangup``,
``alarms`` and ``hosting``, pushes waiting alarms after every successful auth (S117),
reopens the chat sessions left open at start and closes their listeners at stop.
The pieces are reachable as ``server.extensions["calls"]``, ``["chat_hub"]`` and
``["alarms"]`` (the operator routing of campaign chats hooks into the first).
"""

from __future__ import annotations

import logging
from typing import Any

from chmail import protocol as p
from chmail.chserver.alarms import AlarmService, alarm_dict
from chmail.chserver.calls import CallService, Lease, ServerSeam
from chmail.chserver.chathub import SessionHub
from chmail.chserver.server import ChServer, Context
from chmail.config import parse_hostport

log = logging.getLogger(__name__)

CHAT_DB = "chat.sqlite"


def _login(ctx: Context) -> str:
    """The authenticated login of ``ctx`` (error ``not_authenticated`` if there is none)."""
    return ctx.require_login()


def install(server: ChServer, *, bind_host: str | None = None) -> CallService:
    """Wire the chat services into ``server``; returns the call service."""
    store = server.store
    config = server.config
    host = bind_host or parse_hostport(config.listen)[0]

    def direct_host(login: str) -> str:
        for ctx in server.connections(login):
            if ctx.direct and ctx.host:
                return str(ctx.host)
        return ""

    async def lease(port: int) -> Lease | None:
        found = server.pool.get(port)
        if found is None:
            return None
        return Lease(found.record(), frozenset(a.lower() for a in found.recipients))

    seam = ServerSeam(
        db=store.db,
        key=server.key,
        config=config,
        public_host=server.public_host,
        is_online=server.is_online,
        push=server.push,
        lease=lease,
        emails=store.emails_of,
        direct_host=direct_host,
    )
    hub = SessionHub(store.db, store.path.with_name(CHAT_DB), server.key, config, host)
    alarms = AlarmService(store.db, config, server.push, store.emails_of)
    calls = CallService(seam, hub, alarms)

    async def on_call(ctx: Context, msg: p.Call) -> p.Message:
        return await calls.call(_login(ctx), msg)

    async def on_answer(ctx: Context, msg: p.Answer) -> p.Message:
        return await calls.answer(_login(ctx), msg)

    async def on_hangup(ctx: Context, msg: p.Hangup) -> p.Message:
        return await calls.hangup(_login(ctx), msg)

    async def on_hosting(ctx: Context, msg: p.Hosting) -> p.Message:
        return calls.hosting(_login(ctx), msg)

    async def on_alarms(ctx: Context, msg: p.Alarms) -> p.Message:
        rows = await alarms.list(_login(ctx), ack=msg.ack, include_seen=msg.all)
        return p.AlarmList(id=msg.id, alarms=[alarm_dict(a) for a in rows])

    async def after_auth(ctx: Context) -> None:
        await alarms.deliver(_login(ctx))

    async def start() -> None:
        await hub.start()
        await calls.start()
        await alarms.retry_unmailed()

    async def stop() -> None:
        await calls.close()
        await hub.close()
        await alarms.close()

    handlers: dict[str, Any] = {
        "call": on_call,
        "answer": on_answer,
        "hangup": on_hangup,
        "hosting": on_hosting,
        "alarms": on_alarms,
    }
    for t, handler in handlers.items():
        server.register(t, handler)
    server.on_auth(after_auth)
    server.on_start(start)
    server.on_stop(stop)
    server.extensions["calls"] = calls
    server.extensions["chat_hub"] = hub
    server.extensions["alarms"] = alarms
    return calls
