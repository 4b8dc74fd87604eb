"""The first folder to show, read while the screen is being built (so the first frame has
rows): the first account's INBOX (or first folder), its count and first page."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from chmail.client.cache_models import Folder, Message
from chmail.client.tui.api import MailApi
from chmail.client.tui.widgets.message_list import PAGE, RowSource
from chmail.config import Config
from chmail.errors import ChmailError

log = logging.getLogger(__name__)


@dataclass
class FirstView:
    account: str
    folders: list[Folder]
    folder: str
    source: RowSource
    total: int
    rows: Sequence[Message]


async def first_view(mail: MailApi, config: Config) -> FirstView | None:
    try:
        for account in mail.account_names():
            folders = await mail.folders(account)
            if not folders:
                continue
            inbox = next((f for f in folders if f.name.upper() == "INBOX"), folders[0])
            source = mail.folder_rows(account, inbox.name, config.ui.sort, config.ui.threaded)
            total = await source.count()
            rows = await source.page(0, PAGE) if total else []
            return FirstView(account, folders, inbox.name, source, total, rows)
    except ChmailError as exc:
        log.info("first view: %s", exc)
    return None
