"""Assemble a CH server from a config and a data directory.

``build_server`` opens the store (migrating it), loads or creates the signing key,
loads table 2 into the port pool, installs the core requests (auth, alloc, presence)
and then every extension module in ``EXTENSIONS`` that is present: each has
``install(server: ChServer) -> None`` and registers its handlers and hooks there.
The server built here owns its store: ``await server.stop()`` closes it.
"""

from __future__ import annotations

import importlib
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from chmail.chserver.auth import HashCost, Hasher
from chmail.chserver.core import LEASE_COUNTER, Core
from chmail.chserver.keys import ensure_data_dir, load_or_create_key
from chmail.chserver.ports import PortPool
from chmail.chserver.server import ChServer
from chmail.chserver.store import ServerStore
from chmail.config import ServerConfig, data_dir, parse_port_range
from chmail.errors import ConfigError

log = logging.getLogger(__name__)

# Modules that add requests to the server (chat sessions, calls, alarms: issue 4;
# operator routing of campaign chats, which needs the calls: issue 6).
EXTENSIONS: tuple[str, ...] = ("chmail.chserver.chatwire", "chmail.chserver.routing")


def default_data_dir(config: ServerConfig) -> Path:
    return Path(config.data_dir) if config.data_dir else data_dir() / "server"


def hasher_for(config: ServerConfig) -> Hasher:
    return Hasher(HashCost(time_cost=config.argon2_time_cost, memory_kib=config.argon2_memory_kib))


async def build_server(
    config: ServerConfig,
    data: Path,
    *,
    public_host: str | None = None,
    extensions: Sequence[str] = EXTENSIONS,
) -> ChServer:
    ensure_data_dir(data)
    key = load_or_create_key(data)
    low, high = parse_port_range(config.ports)
    store = await ServerStore.open(data)
    try:
        leases = await store.leases()
        reserved = await store.counter(LEASE_COUNTER)
        pool = PortPool(
            low,
            high,
            lease_seconds=int(config.lease_days * 86400),
            leases=[x for x in leases if low <= x.port <= high],
            lease_reserved=reserved,
        )
        server = ChServer(config, store, key, pool, public_host=public_host)
        Core(server, hasher_for(config)).install()
        for name in extensions:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise
                log.debug("extension %s not present", name)
                continue
            module.install(server)
    except BaseException:
        await store.close()
        raise
    server.add_closer(store.close)
    return server


def tls_context(config: ServerConfig) -> ssl.SSLContext | None:
    if not config.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.tls_cert, config.tls_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"Cannot load the TLS certificate {config.tls_cert}: {exc}.") from exc
    return ctx
