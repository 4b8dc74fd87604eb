"""The live response board: per-campaign figures folded from the event log.

The board never counts the recipients table: it reads the events after the last one it
saw (sent, failed, unsubscribed, chat asked / answered / ended) and folds them in, so
an update costs what happened since, not the campaign's size. Chat events come from
the CH server's routing (bridge.py writes them here as they are pushed).

Figures: sent, failed, unsubscribed, chats asked, answered, waiting now, median time to
answer (seconds), response rate (members who asked for a chat / mails sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shop_publicity import models as m
from shop_publicity.store import Store


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0
    unsubscribed: int = 0
    asked: int = 0
    answered: int = 0
    abandoned: int = 0
    waits: list[float] = field(default_factory=list)
    askers: set[int] = field(default_factory=set)

    @property
    def waiting(self) -> int:
        return max(0, self.asked - self.answered - self.abandoned)

    def figures(self) -> dict[str, Any]:
        median = statistics.median(self.waits) if self.waits else None
        return {
            "sent": self.sent,
            "failed": self.failed,
            "unsubscribed": self.unsubscribed,
            "chats_asked": self.asked,
            "chats_answered": self.answered,
            "waiting_now": self.waiting,
            "median_answer_s": None if median is None else round(median, 3),
            "response_rate": round(len(self.askers) / self.sent, 4) if self.sent else 0.0,
        }


class Board:
    def __init__(self) -> None:
        self.last_id = 0
        self.tallies: dict[int, Tally] = {}

    def apply(self, events: Iterable[m.Event]) -> bool:
        changed = False
        for ev in events:
            self.last_id = max(self.last_id, ev.id)
            t = self.tallies.setdefault(ev.campaign_id, Tally())
            changed = True
            if ev.kind == m.EV_SENT:
                t.sent += 1
            elif ev.kind == m.EV_FAILED:
                t.failed += 1
            elif ev.kind == m.EV_UNSUBSCRIBED:
                t.unsubscribed += 1
            elif ev.kind == m.EV_CHAT_ASKED:
                t.asked += 1
                if ev.member_id is not None:
                    t.askers.add(ev.member_id)
            elif ev.kind == m.EV_CHAT_ANSWERED:
                t.answered += 1
                wait = ev.data.get("wait")
                if isinstance(wait, (int, float)):
                    t.waits.append(float(wait))
            elif ev.kind == m.EV_CHAT_ENDED and not ev.data.get("answered", True):
                t.abandoned += 1
        return changed

    def figures(self, cid: int | None = None) -> dict[str, Any]:
        if cid is not None:
            return {"campaign": cid, **self.tallies.get(cid, Tally()).figures()}
        return {str(k): v.figures() for k, v in sorted(self.tallies.items())}

    async def catch_up(self, store: Store, cid: int | None = None) -> bool:
        changed = False
        while True:
            batch = await store.events_after(self.last_id, cid)
            if not batch:
                return changed
            changed = self.apply(batch) or changed


async def follow(
    store: Store,
    board: Board,
    on_change: Callable[[Board], None],
    stop: asyncio.Event,
    cid: int | None = None,
    interval: float = 0.25,
) -> None:
    """Fold new events into ``board`` until ``stop`` is set; call ``on_change`` after each."""
    await board.catch_up(store, cid)
    on_change(board)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if await board.catch_up(store, cid):
            on_change(board)


def render_text(board: Board, names: dict[int, str] | None = None) -> str:
    cols = (
        "sent",
        "failed",
        "unsubscribed",
        "chats_asked",
        "chats_answered",
        "waiting_now",
        "median_answer_s",
        "response_rate",
    )
    heads = ("sent", "failed", "unsub", "asked", "answered", "waiting", "median s", "resp %")
    lines = ["campaign".ljust(20) + "".join(h.rjust(10) for h in heads)]
    for cid, tally in sorted(board.tallies.items()):
        f = tally.figures()
        cells = []
        for col in cols:
            v = f[col]
            if col == "response_rate":
                cells.append(f"{100 * v:.1f}".rjust(10))
            elif v is None:
                cells.append("-".rjust(10))
            else:
                cells.append(str(v).rjust(10))
        label = f"{cid} {(names or {}).get(cid, '')}"[:19]
        lines.append(label.ljust(20) + "".join(cells))
    return "\n".join(lines)
