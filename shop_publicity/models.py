"""The back office's records, as frozen dataclasses. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Recipient states (see sender.py for the rules that move a row between them).
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
SKIPPED = "skipped"
# Not a state of its own: an Outcome that puts a claimed ('sending') row back to
# 'pending' untouched, because the send stopped before the row's turn came.
RELEASE = "release"

# Campaign states.
DRAFT = "draft"
RUNNING = "sending"
PAUSED = "paused"
DONE = "done"

# Event kinds (the board counts these).
EV_SENT = "sent"
EV_FAILED = "failed"
EV_UNSUBSCRIBED = "unsubscribed"
EV_CHAT_ASKED = "chat_asked"
EV_CHAT_ANSWERED = "chat_answered"
EV_CHAT_ENDED = "chat_ended"
EV_PAUSED = "paused"


@dataclass(frozen=True)
class MemberIn:
    """One validated CSV row."""

    email: str
    name: str
    consent: bool = True
    login: str = ""
    age_band: str = ""
    job: str = ""
    hobbies: tuple[str, ...] = ()
    interests: tuple[str, ...] = ()
    lang: str = "en"


@dataclass(frozen=True)
class Member:
    id: int
    email: str
    name: str
    login: str
    consent: bool
    unsubscribed_at: float | None
    age_band: str
    job: str
    hobbies: tuple[str, ...]
    lang: str
    interests: tuple[str, ...] = ()

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else self.name

    @property
    def mailable(self) -> bool:
        return self.consent and self.unsubscribed_at is None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "login": self.login,
            "consent": self.consent,
            "unsubscribed_at": self.unsubscribed_at,
            "age_band": self.age_band,
            "job": self.job,
            "hobbies": list(self.hobbies),
            "interests": list(self.interests),
            "lang": self.lang,
        }

    def chat_profile(self) -> dict[str, Any]:
        """What an operator may see during a chat: no e-mail address, no consent history."""
        return {
            "name": self.first_name,
            "age_band": self.age_band,
            "hobbies": list(self.hobbies),
            "interests": list(self.interests),
            "lang": self.lang,
        }


@dataclass(frozen=True)
class Product:
    sku: str
    title: str
    description: str = ""
    price: str = ""
    image_url: str = ""
    landing_url: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "title": self.title,
            "description": self.description,
            "price": self.price,
            "image_url": self.image_url,
            "landing_url": self.landing_url,
        }


@dataclass(frozen=True)
class Segment:
    """Which members a campaign mails. Empty fields match everyone (with consent)."""

    interests: tuple[str, ...] = ()  # any of
    age_bands: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()
    hobbies: tuple[str, ...] = ()  # any of
    langs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, list[str]]:
        return {
            k: list(v)
            for k, v in (
                ("interests", self.interests),
                ("age_bands", self.age_bands),
                ("jobs", self.jobs),
                ("hobbies", self.hobbies),
                ("langs", self.langs),
            )
            if v
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        return cls(
            interests=tuple(data.get("interests", ())),
            age_bands=tuple(data.get("age_bands", ())),
            jobs=tuple(data.get("jobs", ())),
            hobbies=tuple(data.get("hobbies", ())),
            langs=tuple(data.get("langs", ())),
        )


@dataclass(frozen=True)
class Campaign:
    id: int
    name: str
    subject_tpl: str
    body_tpl: str
    sku: str | None
    lang: str
    segment: Segment
    from_addr: str
    status: str
    pause_reason: str
    secret: str
    pool: tuple[str, ...] = ()
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None


@dataclass(frozen=True)
class Recipient:
    """A pending row joined with its member, ready to be sent."""

    campaign_id: int
    member: Member
    message_id: str
    attempts: int
    uncertain: int
    ch_headers: str


@dataclass(frozen=True)
class Event:
    id: int
    campaign_id: int
    kind: str
    member_id: int | None
    at: float
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    """What happened to one recipient; the sender hands these to the store in batches."""

    campaign_id: int
    member_id: int
    status: str  # SENDING, SENT, PENDING (retry), FAILED, SKIPPED
    at: float
    error: str = ""
    next_at: float = 0.0
    ch_headers: str = ""
    attempts_inc: int = 0
