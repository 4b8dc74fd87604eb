"""The message list: a virtualised view over a folder of any size.

Rules:
- Only what is on screen is ever materialised. The widget knows the row count and asks a
  ``RowSource`` for pages of ``PAGE`` rows as lines come into view; a 100,000-message folder
  costs one COUNT and one page before the first paint.
- Page loads run in workers; ``render_line`` never awaits. A row whose page is not here yet
  is drawn as a dim placeholder and redrawn when the page arrives.
- At most ``MAX_PAGES`` pages stay in memory (least recently used go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message as TMessage
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from chmail.client.cache_models import FLAGGED, SEEN, Message
from chmail.client.safe_text import one_line

PAGE = 200
MAX_PAGES = 40


class RowSource(Protocol):
    """Where the list reads rows from: a folder in the cache, or search results."""

    async def count(self) -> int: ...

    async def page(self, offset: int, limit: int) -> Sequence[Message]: ...

    def depth_of(self, msg: Message) -> int:
        """Indentation of ``msg`` in a threaded view (0 in a flat one)."""
        ...


@dataclass(frozen=True)
class Presence:
    """Which senders are online now (logins), so a chat mark can say so."""

    online: frozenset[str] = frozenset()


def fmt_date(ts: int, now: float | None = None) -> str:
    """Today: the time; this year: day and month; older: the date."""
    if ts <= 0:
        return ""
    now = time.time() if now is None else now
    lt, ln = time.localtime(ts), time.localtime(now)
    if lt.tm_year == ln.tm_year and lt.tm_yday == ln.tm_yday:
        return time.strftime("%H:%M", lt)
    if lt.tm_year == ln.tm_year:
        return time.strftime("%d %b", lt)
    return time.strftime("%Y-%m-%d", lt)


def ch_login(msg: Message) -> str:
    for name, value in msg.ch_headers:
        if name.lower() == "x-ch-login":
            return value
    return ""


class MessageList(ScrollView, can_focus=True):
    """A scrollable, virtualised list of message rows (Line API)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "cursor_down", "Down", show=False, id="list.down"),
        Binding("up,k", "cursor_up", "Up", show=False, id="list.up"),
        Binding("pagedown,space", "page_down", "Page down", show=False, id="list.page-down"),
        Binding("pageup,b", "page_up", "Page up", show=False, id="list.page-up"),
        Binding("home,g", "first", "First", show=False, id="list.first"),
        Binding("end,G", "last", "Last", show=False, id="list.last"),
        Binding("enter", "open", "Open", id="list.open"),
    ]

    DEFAULT_CSS = """
    MessageList { height: 1fr; }
    """

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "message-list--cursor",
        "message-list--unread",
        "message-list--placeholder",
        "message-list--chat",
        "message-list--online",
        "message-list--flag",
    }

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    class Highlighted(TMessage):
        """The cursor moved onto ``message`` (None while its page loads)."""

        def __init__(self, index: int, message: Message | None) -> None:
            super().__init__()
            self.index = index
            self.message = message

    class Opened(TMessage):
        """The user pressed enter on ``message``."""

        def __init__(self, message: Message) -> None:
            super().__init__()
            self.message = message

    class Loaded(TMessage):
        """A source finished loading its count (the list is ready to show)."""

        def __init__(self, total: int) -> None:
            super().__init__()
            self.total = total

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.source: RowSource | None = None
        self.total = 0
        self.threaded = False
        self.presence = Presence()
        self.empty_text = "No messages here."
        self._pages: OrderedDict[int, Sequence[Message]] = OrderedDict()
        self._pending: set[int] = set()
        self._generation = 0
        self._style_cache: dict[str, Style] | None = None
        self._style_key: tuple[object, ...] = ()

    # ------------------------------------------------------------------ data

    def set_source(self, source: RowSource, *, keep_cursor: bool = False) -> None:
        """Show rows from ``source``; loads its count and first page in a worker."""
        self.source = source
        self._generation += 1
        self._pending.clear()
        keep = self.cursor if keep_cursor else 0
        self.run_worker(self._load_count(self._generation, keep), group="list-count")

    def show_loaded(self, source: RowSource, total: int, first_page: Sequence[Message]) -> None:
        """Show ``source`` whose count and first page were read already (first paint)."""
        self.source = source
        self._generation += 1
        self._pending.clear()
        self._pages.clear()
        self._pages[0] = first_page
        self.total = total
        self.virtual_size = Size(self.size.width, total)
        self.cursor = 0
        self.refresh()
        self.post_message(self.Loaded(total))

    async def _load_count(self, gen: int, cursor: int) -> None:
        assert self.source is not None
        source = self.source
        total = await source.count()
        first = max(0, min(cursor, total - 1)) // PAGE
        rows = await source.page(first * PAGE, PAGE) if total else []
        if gen != self._generation:
            return
        self.total = total
        self._pages.clear()
        self._pages[first] = rows
        self.virtual_size = Size(self.size.width, total)
        self.cursor = max(0, min(cursor, total - 1))
        if not cursor:
            self.scroll_to(y=0, animate=False)
        self.refresh()
        self.post_message(self.Loaded(total))

    def reload(self) -> None:
        """Re-read the source keeping the cursor (after a flag, move or new mail)."""
        if self.source is not None:
            self.set_source(self.source, keep_cursor=True)

    def row(self, index: int) -> Message | None:
        page, off = divmod(index, PAGE)
        rows = self._pages.get(page)
        if rows is None:
            self._request(page)
            return None
        self._pages.move_to_end(page)
        return rows[off] if off < len(rows) else None

    @property
    def current(self) -> Message | None:
        return self.row(self.cursor) if self.total else None

    def _request(self, page: int) -> None:
        if page in self._pending or self.source is None:
            return
        self._pending.add(page)
        self.run_worker(self._load_page(self._generation, page), group="list-pages")

    async def _load_page(self, gen: int, page: int) -> None:
        assert self.source is not None
        rows = await self.source.page(page * PAGE, PAGE)
        if gen != self._generation:
            return
        self._pending.discard(page)
        self._pages[page] = rows
        while len(self._pages) > MAX_PAGES:
            self._pages.popitem(last=False)
        self.refresh()
        if self.cursor // PAGE == page:
            self.post_message(self.Highlighted(self.cursor, self.current))

    def update_row(self, msg: Message) -> None:
        """Replace a row in place (flags changed) without reloading."""
        for page, rows in self._pages.items():
            for i, old in enumerate(rows):
                if old.pk == msg.pk:
                    new = list(rows)
                    new[i] = msg
                    self._pages[page] = new
                    self.refresh()
                    return

    # ------------------------------------------------------------------ drawing

    def _styles(self) -> dict[str, Style]:
        """The row styles, computed once per style change (not once per line)."""
        key = (self.has_focus, self.app.theme)
        if self._style_cache is None or self._style_key != key:
            base = self.rich_style
            self._style_cache = {"base": base}
            for name in ("placeholder", "unread", "chat", "online", "flag"):
                part = self.get_component_rich_style(f"message-list--{name}")
                self._style_cache[name] = base + part
            self._style_cache["cursor"] = self.get_component_rich_style("message-list--cursor")
            self._style_key = key
        return self._style_cache

    def notify_style_update(self) -> None:
        self._style_cache = None
        super().notify_style_update()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, self.total)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        index = self.scroll_offset.y + y
        st = self._styles()
        base = st["base"]
        if index >= self.total:
            if self.total == 0 and y == 0 and self.source is not None:
                return Strip([Segment(self.empty_text.ljust(width)[:width], base)], width)
            return Strip.blank(width, base)
        msg = self.row(index)
        if msg is None:
            style = st["placeholder"]
            return Strip([Segment("…".ljust(width), style)], width)
        segments = self._row_segments(msg, width)
        if index == self.cursor:
            cur = st["cursor"]
            segments = [Segment(t, (s or Style()) + cur) for t, s, _ in segments]
        return Strip(segments, width).crop_extend(0, width, base)

    def _row_segments(self, msg: Message, width: int) -> list[Segment]:
        st = self._styles()
        base = st["base"]
        unread = SEEN not in msg.flags
        text_style = st["unread"] if unread else base
        flag = "★" if FLAGGED in msg.flags else " "
        new = "●" if unread else " "
        login = ch_login(msg) if msg.has_ch else ""
        if login and login in self.presence.online:
            chat, chat_style = "◉", st["online"]
        elif msg.has_ch:
            chat, chat_style = "◌", st["chat"]
        else:
            chat, chat_style = " ", base
        date = fmt_date(msg.date).rjust(10)
        sender_w = max(8, min(24, width // 4))
        sender = one_line((msg.sender or "(unknown)")[: sender_w * 2])
        sender = set_cell_size(sender, sender_w - 1) + " "
        depth = self.source.depth_of(msg) if self.threaded and self.source else 0
        indent = "  " * min(depth, 8) + ("└ " if depth else "")
        used = 4 + 1 + sender_w + 10 + 1
        subject = indent + one_line(msg.subject or "(no subject)")
        subject = set_cell_size(subject, max(0, width - used))
        return [
            Segment(new, text_style),
            Segment(flag, st["flag"]),
            Segment(chat, chat_style),
            Segment(" ", base),
            Segment(sender, text_style),
            Segment(" ", base),
            Segment(subject, text_style),
            Segment(date, base),
            Segment(" ", base),
        ]

    # ------------------------------------------------------------------ cursor

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh_line_for(old)
        self.refresh_line_for(new)
        self._scroll_cursor_into_view()
        self.post_message(self.Highlighted(new, self.current))

    def refresh_line_for(self, index: int) -> None:
        y = index - self.scroll_offset.y
        if 0 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    def _scroll_cursor_into_view(self) -> None:
        top = self.scroll_offset.y
        height = max(1, self.size.height)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False)

    def _move(self, delta: int) -> None:
        if self.total:
            self.cursor = max(0, min(self.total - 1, self.cursor + delta))

    def action_cursor_down(self) -> None:
        self._move(1)

    def action_cursor_up(self) -> None:
        self._move(-1)

    def action_page_down(self) -> None:
        self._move(max(1, self.size.height - 1))

    def action_page_up(self) -> None:
        self._move(-max(1, self.size.height - 1))

    def action_first(self) -> None:
        self._move(-self.total)

    def action_last(self) -> None:
        self._move(self.total)

    def action_open(self) -> None:
        msg = self.current
        if msg is not None:
            self.post_message(self.Opened(msg))
