"""CH wire messages of calls, alarms and chat sessions (issue 4). Sans-I/O.

Kept beside ``chmail.protocol`` (same registry, same rules, docs/protocol.md §13); the
core imports this module at its end, so ``protocol.Say`` and the like are the types
defined here whichever module is imported first.

Control link (client <-> CH server): ``call`` rings the sender of a mail (S107-S109);
``call_state`` answers it and is pushed on every change of a call (ringing, accepted,
declined, missed, cancelled, ended, alarmed); ``ring`` is pushed to the callee, again at
an interval while it is silent (S115); ``alarms`` lists and acknowledges missed calls
(S117) and ``alarm_list`` is also pushed right after ``auth_ok``. In direct mode the
server pushes ``host_chat`` and the client answers with ``hosting``.

Chat session (client <-> the listener on the mail's port): ``join`` with the token from
``call_state`` (answered by ``joined``, which authenticates the link), then
``say``/``said``/``said_many`` (the client id ``cid`` dedupes resends), ``chat`` pushes
in ``seq`` order (``chats``: a run of them in one frame, for members that joined with
``batch``), ``typing``, ``read``, ``member``, ``leave``/``end`` and the ``ended`` push.
"""

from __future__ import annotations

import sys
from dataclasses import field
from typing import Any

from chmail.protocol import AUTH_REPLIES, Message, message

__all__ = [
    "CALL_STATES",
    "AlarmList",
    "Alarms",
    "Answer",
    "Call",
    "CallState",
    "Chat",
    "Chats",
    "End",
    "Ended",
    "Hangup",
    "HostChat",
    "Hosting",
    "Join",
    "Joined",
    "Leave",
    "Member",
    "Read",
    "Ring",
    "Said",
    "SaidMany",
    "Say",
    "Typing",
]

CALL_STATES = ("ringing", "accepted", "declined", "missed", "cancelled", "ended", "alarmed")


@message("call", sender="c")
class Call(Message):
    """S107: ring the sender of a mail, quoting the mail's X-CH header values verbatim."""

    id: int = 0
    message_id: str = ""
    login: str = ""  # X-CH-Login
    port: int = 0  # X-CH-Port
    host: str = ""  # X-CH-Host
    sig: str = ""  # X-CH-Sig
    context: str = ""  # X-CH-Context ("" when absent)
    subject: str = ""


@message("call_state", sender="s")
class CallState(Message):
    """A call's state. With ``id`` it answers ``call``/``answer``; without, it is a push.

    ``host``/``port``/``session``/``token`` say where and how to join once accepted.
    ``message`` is a plain-words sentence for the user.
    """

    call: int = 0
    state: str = ""
    peer: str = ""
    subject: str = ""
    message_id: str = ""
    message: str = ""
    host: str = ""
    port: int = 0
    session: int = 0
    token: str = ""
    id: int | None = None


@message("ring", sender="s")
class Ring(Message):
    """Push to the callee: somebody calls about one of your mails. ``n`` counts re-rings."""

    call: int = 0
    caller: str = ""
    subject: str = ""
    message_id: str = ""
    port: int = 0
    n: int = 1
    timeout: float = 0.0  # seconds until the call is missed


@message("answer", sender="c")
class Answer(Message):
    """The callee accepts or declines a ringing call."""

    id: int = 0
    call: int = 0
    accept: bool = True


@message("hangup", sender="c")
class Hangup(Message):
    """The caller gives up a ringing call (cancelled), or either side ends an accepted one."""

    id: int = 0
    call: int = 0


@message("alarms", sender="c")
class Alarms(Message):
    """List alarms (missed calls); ``ack`` marks those ids seen; ``all`` includes seen ones."""

    id: int = 0
    ack: list[int] = field(default_factory=list)
    all: bool = False


@message("alarm_list", sender="s")
class AlarmList(Message):
    """Alarms: each a map with id, caller, subject, message_id, port, at, seen."""

    alarms: list[dict[str, Any]] = field(default_factory=list)
    id: int | None = None


@message("host_chat", sender="s")
class HostChat(Message):
    """Direct mode: please host the chat session of ``port`` yourself (``stop``: stop it)."""

    call: int = 0
    session: int = 0
    port: int = 0
    secret: str = field(default="", repr=False)  # verifies the join tokens
    subject: str = ""
    message_id: str = ""
    stop: bool = False


@message("hosting", sender="c")
class Hosting(Message):
    """Direct mode: the client's answer to ``host_chat`` (``ok`` false: it could not)."""

    id: int = 0
    call: int = 0
    ok: bool = False
    host: str = ""
    port: int = 0
    message: str = ""


@message("join", sender="c", pre_auth=True)
class Join(Message):
    """First request on a session port: who I am, my token, the last ``seq`` I have."""

    id: int = 0
    session: int = 0
    login: str = ""
    token: str = field(default="", repr=False)
    last_seq: int = 0
    batch: bool = False  # new messages may come as ``chats`` (a run in one frame)


@message("joined", sender="s", pre_auth=True)
class Joined(Message):
    """Join accepted; the messages after ``last_seq`` follow as ``chat`` pushes."""

    id: int = 0
    session: int = 0
    login: str = ""
    members: list[str] = field(default_factory=list)
    head: int = 0  # the session's last seq
    subject: str = ""
    message_id: str = ""
    max_text: int = 0


@message("say", sender="c")
class Say(Message):
    """Send a chat message; ``cid`` is the client's id for it (a resend reuses it)."""

    id: int = 0
    cid: str = ""
    text: str = ""


@message("said", sender="s")
class Said(Message):
    """The message is stored (it survives a server restart) under ``seq``."""

    id: int = 0
    seq: int = 0
    cid: str = ""


@message("said_many", sender="s")
class SaidMany(Message):
    """Push after a commit: the sender's requests ``ids`` are stored as ``seqs`` (the
    batched form of ``said``: one frame per commit instead of one per message)."""

    ids: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    cids: list[str] = field(default_factory=list)


@message("chat", sender="s")
class Chat(Message):
    """Push: one stored chat message."""

    seq: int = 0
    login: str = ""  # who said it
    cid: str = ""
    text: str = ""
    ts: float = 0.0


@message("chats", sender="s")
class Chats(Message):
    """Push to a member that joined with ``batch``: messages ``seq``, ``seq + 1``, ...
    from ``login``, stamped ``ts``, with these client ids and texts (one frame per run
    of messages that arrived together, instead of one ``chat`` each)."""

    login: str = ""
    ts: float = 0.0
    seq: int = 0
    cids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


@message("typing", sender="cs")
class Typing(Message):
    """Typing indicator; the server fills in ``login`` when it relays it."""

    login: str = ""
    active: bool = True


@message("read", sender="cs")
class Read(Message):
    """Read state: ``login`` has read up to ``seq``; the server fills in ``login``."""

    login: str = ""
    seq: int = 0


@message("member", sender="s")
class Member(Message):
    """Push: a participant joined, went away (connection lost) or left."""

    login: str = ""
    state: str = ""  # "joined", "away", "left"


@message("leave", sender="c")
class Leave(Message):
    """Leave the session (others carry on); ``end`` ends it for everyone."""

    id: int = 0


@message("end", sender="c")
class End(Message):
    id: int = 0


@message("ended", sender="s")
class Ended(Message):
    """Push: the session is over (``reason``: ended, idle, server); the listener closes."""

    reason: str = ""
    by: str = ""


# ``joined`` authenticates a chat session link as ``auth_ok`` does the control link
AUTH_REPLIES.add("joined")


# Seen as attributes of chmail.protocol too (``protocol.Say``), whichever of the two
# modules is imported first: the core imports this one at its end.
_core = sys.modules["chmail.protocol"]
for _name in __all__:
    setattr(_core, _name, globals()[_name])
