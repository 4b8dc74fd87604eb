"""``campaign send``/``resume`` wiring: lock, SMTP password, CH link, progress bar."""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path

from chmail.config import ShopConfig
from chmail.errors import ShopError
from shop_publicity.commit import campaign_lock
from shop_publicity.progress import ProgressBar
from shop_publicity.sender import Allocate, Sender, SendResult
from shop_publicity.store import Store


async def password_from_command(command: str) -> str:
    """Run ``command`` (no shell) and return its first output line: the password."""
    if not command:
        return ""
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
    except OSError as exc:
        raise ShopError(f"The password command failed to start: {exc.strerror}.") from exc
    if proc.returncode != 0:
        raise ShopError(f"The password command exited with status {proc.returncode}.")
    return out.decode("utf-8", "replace").splitlines()[0] if out else ""


async def send(
    store: Store,
    cfg: ShopConfig,
    cid: int,
    data_dir: Path,
    *,
    quiet: bool = False,
    allocate: Allocate | None = None,
) -> SendResult:
    password = await password_from_command(cfg.smtp_password_command)
    bar = None if quiet else ProgressBar()
    with campaign_lock(data_dir, cid):
        if allocate is None and cfg.ch_server:
            from shop_publicity.chbridge import open_allocator

            async with open_allocator(cfg, store, cid) as alloc:
                result = await Sender(
                    store, cfg, cid, password=password, allocate=alloc, progress=bar
                ).run()
        else:
            result = await Sender(
                store, cfg, cid, password=password, allocate=allocate, progress=bar
            ).run()
    if bar is not None:
        bar(result, final=True)
    return result
