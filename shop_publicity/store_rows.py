"""Row helpers shared by the shop's store modules. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from shop_publicity import models as m

MEMBER_COLS = (
    "m.id, m.email, m.name, m.login, m.consent, m.unsubscribed_at, m.age_band, m.job, "
    "m.hobbies, m.lang"
)


def split_list(text: str) -> tuple[str, ...]:
    return tuple(p for p in (s.strip() for s in text.split(",")) if p)


def member_row(row: Sequence[Any], interests: tuple[str, ...] = ()) -> m.Member:
    return m.Member(
        id=int(row[0]),
        email=str(row[1]),
        name=str(row[2]),
        login=str(row[3] or ""),
        consent=bool(row[4]),
        unsubscribed_at=row[5],
        age_band=str(row[6]),
        job=str(row[7]),
        hobbies=split_list(str(row[8])),
        lang=str(row[9]),
        interests=interests,
    )
