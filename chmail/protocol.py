"""The CH wire protocol, sans I/O (in the manner of h11).

Rules (docs/protocol.md is the normative text; this module follows it):

* A frame is a 4-byte big-endian unsigned length, then that many bytes holding one
  msgpack map with a string key ``t`` naming the message type.
* A frame longer than the limit (default 64 KiB) is refused as soon as its length
  prefix is read: the decoder never buffers more than one limit's worth of bytes.
* The first frame in each direction is ``hello`` with the protocol version. A peer
  with another major version is refused with an ``error`` naming both versions.
* Requests carry an integer ``id``; replies (including ``error``) echo it. Pushes carry
  no ``id``.
* Until the server has accepted an ``auth`` (control link) or a ``join`` (chat session),
  a client may send only ``hello``, ``auth``/``join``, ``ping``, ``pong`` and ``bye``.
* An unknown ``t`` is not fatal: it surfaces as :class:`Unknown` so the server can
  answer ``error`` (code ``unknown_type``) and carry on.

Use :class:`Connection`: ``receive_data(bytes)`` then ``next_event()`` until it
returns ``None``; ``send(message) -> bytes`` to write. It raises
:class:`~chmail.errors.RemoteProtocolError` when the peer breaks a rule (answer with
``error`` and close) and :class:`~chmail.errors.LocalProtocolError` when we would.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack
import msgspec

from chmail.errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024
LENGTH = struct.Struct(">I")
MAX_ID = 2**53  # ids stay exact in every client language (JSON/JS numbers)

# Error codes carried by ``error`` frames (docs/protocol.md lists their meaning).
E_BAD_FRAME = "bad_frame"
E_FRAME_TOO_LARGE = "frame_too_large"
E_VERSION = "version"
E_UNKNOWN_TYPE = "unknown_type"
E_NOT_AUTHENTICATED = "not_authenticated"
E_AUTH_FAILED = "auth_failed"
E_INVALID = "invalid"
E_RATE_LIMITED = "rate_limited"
E_INTERNAL = "internal"
E_TIMEOUT = "timeout"
E_NO_PORTS = "no_ports"
E_LINK_FORGED = "link_forged"
E_LINK_ALTERED = "link_altered"
E_LINK_EXPIRED = "link_expired"
E_LINK_RECYCLED = "link_recycled"
E_LINK_UNKNOWN = "link_unknown"
E_NOT_RECIPIENT = "not_recipient"
E_NOT_FOUND = "not_found"
E_LIMIT = "limit"


# ----------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Message:
    """Base of every message. ``t`` is the wire type name."""

    t: ClassVar[str] = ""
    # Which side may send it: "c" client, "s" server, "cs" both.
    sender: ClassVar[str] = "cs"
    # May a client send it before it is authenticated?
    pre_auth: ClassVar[bool] = False

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.t}
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        for name in names:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


_FIELD_NAMES: dict[type[Message], tuple[str, ...]] = {}


REGISTRY: dict[str, type[Message]] = {}


@typing.dataclass_transform(frozen_default=True)  # lets mypy see the fields
def message(t: str, *, sender: str = "cs", pre_auth: bool = False) -> Any:
    """Class decorator: register a frozen dataclass as wire type ``t``."""

    def wrap(cls: type[Message]) -> type[Message]:
        cls = dataclass(frozen=True)(cls)
        cls.t = t
        cls.sender = sender
        cls.pre_auth = pre_auth
        if t in REGISTRY:
            raise RuntimeError(f"duplicate message type {t!r}")
        REGISTRY[t] = cls
        return cls

    return wrap


# -- both directions


@message("hello", pre_auth=True)
class Hello(Message):
    version: int = PROTOCOL_VERSION
    agent: str = ""


@message("ping", pre_auth=True)
class Ping(Message):
    """Heartbeat. The receiver answers ``pong`` with the same ``n``."""

    n: int = 0


@message("pong", pre_auth=True)
class Pong(Message):
    n: int = 0


@message("error", pre_auth=True)
class Error(Message):
    """A refusal. ``id`` echoes the request it answers; absent for connection errors."""

    code: str = E_INTERNAL
    message: str = ""
    id: int | None = None


@message("bye", pre_auth=True)
class Bye(Message):
    """Clean close: the sender will close the connection after this frame."""

    reason: str = ""


@message("ok", sender="s", pre_auth=True)
class Ok(Message):
    """Generic success reply to a request that returns nothing else."""

    id: int = 0


# -- control link: client -> server


@message("auth", sender="c", pre_auth=True)
class Auth(Message):
    """Log in. ``host`` is the name the client advertises for itself (table 1)."""

    id: int = 0
    login: str = ""
    password: str = field(default="", repr=False)
    host: str = ""
    direct: bool = False


@message("alloc", sender="c")
class Alloc(Message):
    """S103: lease a chat port for an outgoing mail to ``recipients``.

    ``thread`` lists the Message-IDs the mail replies to (In-Reply-To, References) so a
    reply in the same thread reuses the thread's live lease.
    """

    id: int = 0
    message_id: str = ""
    recipients: list[str] = field(default_factory=list)
    thread: list[str] = field(default_factory=list)
    context: str = ""  # X-CH-Context value for campaign mail ("" for none)


@message("presence", sender="c")
class Presence(Message):
    id: int = 0
    logins: list[str] = field(default_factory=list)


# -- control link: server -> client


@message("auth_ok", sender="s", pre_auth=True)
class AuthOk(Message):
    id: int = 0
    login: str = ""
    observed_ip: str = ""
    heartbeat: float = 15.0  # seconds between pings the server expects
    timeout: float = 45.0  # silence after which the server drops the link
    alarms: int = 0  # alarms waiting for this user (S117)


@message("allocated", sender="s")
class Allocated(Message):
    """The lease: everything the client needs to stamp the X-CH headers."""

    id: int = 0
    login: str = ""
    port: int = 0
    host: str = ""
    lease: int = 0
    expires: int = 0  # unix seconds
    sig: str = ""  # the X-CH-Sig value, ready to stamp
    context: str = ""


@message("presence_ok", sender="s")
class PresenceOk(Message):
    id: int = 0
    online: dict[str, bool] = field(default_factory=dict)


# ----------------------------------------------------------------------------- decoding


class Unknown(Message):
    """A frame of a type this side does not know. Not registered; never sent."""

    def __init__(self, type_name: str, id: int | None, data: dict[str, Any]) -> None:
        object.__setattr__(self, "type_name", type_name)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "data", data)

    type_name: str
    id: int | None
    data: dict[str, Any]

    def __repr__(self) -> str:
        return f"Unknown(type_name={self.type_name!r}, id={self.id!r})"


class Rejected(Message):
    """A well-formed frame that broke a message rule. Never sent; answer it with ``error``.

    ``type_name`` is the frame's ``t``, ``id`` its request id (if any), ``code`` and
    ``reason`` what to put in the ``error`` frame.
    """

    def __init__(self, type_name: str, id: int | None, code: str, reason: str) -> None:
        object.__setattr__(self, "type_name", type_name)
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "reason", reason)

    type_name: str
    id: int | None
    code: str
    reason: str

    def __repr__(self) -> str:
        return f"Rejected(type_name={self.type_name!r}, id={self.id!r}, code={self.code!r})"


_HINTS: dict[type[Message], dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        all_hints = typing.get_type_hints(cls)
        hints = {f.name: all_hints[f.name] for f in dataclasses.fields(cls)}
        _HINTS[cls] = hints
    return hints


Checker = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ID


def _is_float(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checker(hint: Any) -> Checker:
    """A function that checks a decoded value against a field's type hint (built once)."""
    if hint is str:
        return lambda v: isinstance(v, str)
    if hint is int:
        return _is_int
    if hint is bool:
        return lambda v: isinstance(v, bool)
    if hint is float:
        return _is_float
    if hint is Any:
        return lambda v: True
    if hint is type(None):
        return lambda v: v is None
    origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        item = _checker(item_hint)
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is dict:
        kt, vt = (_checker(a) for a in typing.get_args(hint))
        return lambda v: isinstance(v, dict) and all(kt(k) and vt(x) for k, x in v.items())
    if origin in (typing.Union, types.UnionType):
        options = [_checker(a) for a in typing.get_args(hint)]
        return lambda v: any(c(v) for c in options)
    return lambda v: False


def _check(value: Any, hint: Any) -> bool:
    return _checker(hint)(value)


def from_wire(obj: Any) -> Message:
    """Turn one decoded msgpack object into a typed message (or :class:`Unknown`)."""
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a frame must hold a msgpack map")
    t = obj.get("t")
    if not isinstance(t, str):
        raise RemoteProtocolError("a frame's map must have a string key 't'")
    raw_id = obj.get("id")
    req_id = raw_id if _is_id(raw_id) else None
    cls = REGISTRY.get(t)
    if cls is None:
        return Unknown(t, req_id, obj)
    kwargs: dict[str, Any] = {}
    checkers = _CHECKERS.get(cls)
    if checkers is None:
        checkers = _CHECKERS[cls] = tuple(
            (name, _checker(hint), hint is float) for name, hint in _hints(cls).items()
        )
    for name, check, is_float in checkers:
        if name not in obj:
            continue  # defaults fill the gaps; required-ness is the handler's concern
        value = obj[name]
        if not check(value):
            raise RemoteProtocolError(f"field {name!r} of {t!r} has the wrong type", code=E_INVALID)
        kwargs[name] = float(value) if is_float else value
    return _build(cls, kwargs)


_CHECKERS: dict[type[Message], tuple[tuple[str, Checker, bool], ...]] = {}
# per class: its plain defaults and its default factories, or None: use ``__init__``
_DEFAULTS: dict[type[Message], tuple[dict[str, Any], tuple[tuple[str, Any], ...]] | None] = {}


def _defaults(cls: type[Message]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]] | None:
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        return None
    plain: dict[str, Any] = {}
    made: list[tuple[str, Any]] = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            plain[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            made.append((f.name, f.default_factory))
        else:
            return None  # a required field
    return plain, tuple(made)


def _build(cls: type[Message], kwargs: dict[str, Any]) -> Message:
    """``cls(**kwargs)`` for checked fields, without the frozen dataclass's ``__init__``
    (one ``object.__setattr__`` per field): the instance dict is filled at once. The
    same object as ``cls(**kwargs)``: every field set, factories called per instance."""
    if cls in _DEFAULTS:
        spec = _DEFAULTS[cls]
    else:
        spec = _DEFAULTS[cls] = _defaults(cls)
    if spec is None:
        return cls(**kwargs)
    msg = object.__new__(cls)
    fields = msg.__dict__
    fields.update(spec[0])
    for name, factory in spec[1]:
        if name not in kwargs:
            fields[name] = factory()
    fields.update(kwargs)
    return msg


# One encoder for every frame: msgspec packs a map in one C call without giving up the
# GIL, the same bytes as msgpack's Packer(use_bin_type=True) (tests/test_protocol.py
# checks), a few times faster; sharing it saves building one per frame.
_PACK = msgspec.msgpack.Encoder().encode


def encode(msg: Message, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """One message to one frame (length prefix + msgpack)."""
    body: bytes = _PACK(msg.to_wire())
    if len(body) > max_frame:
        raise LocalProtocolError(f"{msg.t} frame of {len(body)} bytes exceeds {max_frame}")
    return LENGTH.pack(len(body)) + body


def allocated_frame(
    *, id: int, login: str, port: int, host: str, lease: int, expires: int, sig: str, context: str
) -> bytes:
    """The frame of an ``allocated`` reply packed straight from its values: the same
    bytes as ``encode(Allocated(...))`` (same keys in the same order), without building
    the message (the alloc hot path; the values are the server's own, already checked)."""
    body: bytes = _PACK(
        {
            "t": "allocated",
            "id": id,
            "login": login,
            "port": port,
            "host": host,
            "lease": lease,
            "expires": expires,
            "sig": sig,
            "context": context,
        }
    )
    return LENGTH.pack(len(body)) + body


class FrameDecoder:
    """Reassembles frames from a byte stream; never holds more than one frame's bytes."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add ``data``; yield each complete frame body. Raises FrameTooLarge early."""
        if not self._buf and len(data) > LENGTH.size:  # the common case: one whole frame
            (n,) = LENGTH.unpack_from(data)
            if len(data) == LENGTH.size + n and n <= self.max_frame:
                yield bytes(data[LENGTH.size :])
                return
        self._buf += data
        while True:
            if len(self._buf) < LENGTH.size:
                return
            (n,) = LENGTH.unpack_from(self._buf)
            if n > self.max_frame:
                self._buf.clear()
                raise FrameTooLarge(f"frame of {n} bytes exceeds the limit of {self.max_frame}")
            if len(self._buf) < LENGTH.size + n:
                return
            body = bytes(self._buf[LENGTH.size : LENGTH.size + n])
            del self._buf[: LENGTH.size + n]
            yield body


def decode_obj(body: bytes) -> dict[str, Any]:
    """One frame body to its msgpack map, checked to have a string ``t``."""
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError("frame is not valid msgpack") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("a frame must hold a msgpack map")
    if not isinstance(obj.get("t"), str):
        raise RemoteProtocolError("a frame's map must have a string key 't'")
    return obj


# ----------------------------------------------------------------------------- fast decode
# The frames of the control link's hot path are first decoded by msgspec straight into a
# typed struct (types and the integer range checked in C, no dict or key strings built),
# one struct per type, told apart by ``t``. A struct accepts only the message's own keys
# (forbid_unknown_fields): a frame with any other key, a wrong type, or anything else it
# cannot take goes through the general path (decode_obj, from_wire), which gives the
# same message for every frame the fast path takes, and the errors and Rejected events
# for the rest.
FAST_TYPES = ("ping", "pong", "alloc", "allocated", "ok", "error")
_INT = typing.Annotated[int, msgspec.Meta(ge=-MAX_ID, le=MAX_ID)]


def _fast_hint(hint: Any) -> Any:
    if hint is int:
        return _INT
    if hint in (str, bool) or hint == list[str]:
        return hint
    if hint == int | None:
        return _INT | None
    raise TypeError(f"no fast decoding for fields of type {hint!r}")


def _fast_struct(cls: type[Message]) -> type[msgspec.Struct]:
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = msgspec.field(default_factory=f.default_factory)
        fields.append((f.name, _fast_hint(_hints(cls)[f.name]), default))
    struct = msgspec.defstruct(
        f"_Fast{cls.__name__}",
        fields,
        tag_field="t",
        tag=cls.t,
        forbid_unknown_fields=True,
        gc=False,
    )
    return struct


def _fast_decoder() -> tuple[Callable[[bytes], Any], dict[type[Any], type[Message]]]:
    structs: dict[type[Any], type[Message]] = {}
    for t in FAST_TYPES:
        cls = REGISTRY[t]
        if _defaults(cls) is None:
            raise TypeError(f"{t!r} cannot be built from its fields alone")
        structs[_fast_struct(cls)] = cls
    union: Any = typing.Union[tuple(structs)]  # noqa: UP007  (built at run time)
    return msgspec.msgpack.Decoder(union).decode, structs


_FAST_DECODE, _FAST_STRUCTS = _fast_decoder()
_asdict = msgspec.structs.asdict


def decode_fast(body: bytes) -> Message | None:
    """The message in ``body`` if it is a well-formed frame of one of ``FAST_TYPES``
    with none but its own keys (the same message :func:`decode_body` gives), else None."""
    try:
        s = _FAST_DECODE(body)
    except Exception:  # MsgspecError, UnicodeDecodeError...: the general path judges it
        return None
    msg: Message = object.__new__(_FAST_STRUCTS[type(s)])
    msg.__dict__.update(_asdict(s))  # the struct's fields are the message's, by name
    return msg


def decode_body(body: bytes) -> Message:
    """One frame body to a message. The body's size was already capped by the decoder."""
    return from_wire(decode_obj(body))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ID


# ----------------------------------------------------------------------------- connection


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"  # the peer's hello has not arrived yet
    OPEN = "open"  # hellos exchanged, not authenticated
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


# Messages whose sending (server) / receipt (client) marks the link authenticated.
AUTH_REPLIES: set[str] = {"auth_ok"}


class Connection:
    """One side of a CH connection: bytes in, typed events out; events in, bytes out."""

    def __init__(self, role: Role, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.role = role
        self.max_frame = max_frame
        self.state = State.AWAIT_HELLO
        self.peer_version: int | None = None
        self._decoder = FrameDecoder(max_frame)
        self._events: list[Message] = []
        self._hello_sent = False

    @property
    def authenticated(self) -> bool:
        return self.state is State.AUTHENTICATED

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer.

        Raises RemoteProtocolError (and closes) when the stream itself is broken: an
        oversized length, a body that is not a msgpack map with a string ``t``, or a
        first frame that is not an acceptable ``hello``. A well-formed frame that breaks
        a message rule (wrong field type, sent too early, wrong direction) is not fatal:
        it surfaces as a :class:`Rejected` event, to be answered with ``error``.
        """
        if self.state is State.CLOSED:
            return
        buffered = self._decoder._buf
        try:
            if not buffered and len(data) > LENGTH.size:  # the common case: one whole frame
                (n,) = LENGTH.unpack_from(data)
                if len(data) == LENGTH.size + n and n <= self.max_frame:
                    self._events.append(self._receive_body(bytes(data[LENGTH.size :])))
                    return
            for body in self._decoder.feed(data):
                self._events.append(self._receive_body(body))
                if self.closed:
                    return
        except RemoteProtocolError:
            self.state = State.CLOSED
            raise

    def _receive_body(self, body: bytes) -> Message:
        fast = decode_fast(body)
        if fast is not None:
            try:
                return self._accept(fast)
            except RemoteProtocolError as exc:
                if self.state is State.AWAIT_HELLO:
                    raise
                raw = getattr(fast, "id", None)
                return Rejected(fast.t, raw if _is_id(raw) else None, exc.code, exc.message)
        obj = decode_obj(body)
        try:
            msg = from_wire(obj)
            return self._accept(msg)
        except RemoteProtocolError as exc:
            if self.state is State.AWAIT_HELLO:
                raise
            raw_id = obj.get("id")
            req_id = raw_id if _is_id(raw_id) else None
            return Rejected(str(obj.get("t")), req_id, exc.code, exc.message)

    def next_event(self) -> Message | None:
        """The next message received, or None when more data is needed."""
        return self._events.pop(0) if self._events else None

    def events(self) -> Iterator[Message]:
        while self._events:
            yield self._events.pop(0)

    def take_events(self) -> list[Message]:
        """Every message received and not yet taken, in order (at once: no generator)."""
        events, self._events = self._events, []
        return events

    def _accept(self, msg: Message) -> Message:
        if self.state is State.AWAIT_HELLO:
            if not isinstance(msg, Hello):
                raise RemoteProtocolError(f"expected hello first, got {_name(msg)!r}")
            if msg.version != PROTOCOL_VERSION:
                raise RemoteProtocolError(
                    f"protocol version {msg.version} is not supported; this side speaks "
                    f"version {PROTOCOL_VERSION}",
                    code=E_VERSION,
                )
            self.peer_version = msg.version
            self.state = State.OPEN
            return msg
        if isinstance(msg, Unknown):
            return msg
        peer = "s" if self.role is Role.CLIENT else "c"
        if peer not in msg.sender:
            raise RemoteProtocolError(
                f"{msg.t!r} may not be sent by the {_side(peer)}", code=E_INVALID
            )
        if self.role is Role.SERVER and self.state is State.OPEN and not msg.pre_auth:
            raise RemoteProtocolError(f"{msg.t!r} before authentication", code=E_NOT_AUTHENTICATED)
        if self.role is Role.CLIENT and msg.t in AUTH_REPLIES:
            self.state = State.AUTHENTICATED
        if isinstance(msg, Bye):
            self.state = State.CLOSED  # nothing after a bye is read
        return msg

    def send(self, msg: Message) -> bytes:
        """Bytes to write for ``msg``. Raises LocalProtocolError if we break a rule."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if not self._hello_sent:
            if not isinstance(msg, Hello):
                raise LocalProtocolError("the first frame must be hello")
            self._hello_sent = True
        me = "c" if self.role is Role.CLIENT else "s"
        if me not in msg.sender:
            raise LocalProtocolError(f"{msg.t!r} may not be sent by the {_side(me)}")
        if self.role is Role.SERVER and msg.t in AUTH_REPLIES:
            self.state = State.AUTHENTICATED
        if isinstance(msg, Bye):
            data = encode(msg, max_frame=self.max_frame)
            self.state = State.CLOSED
            return data
        return encode(msg, max_frame=self.max_frame)

    def close(self) -> None:
        self.state = State.CLOSED


def _name(msg: Message) -> str:
    return msg.type_name if isinstance(msg, Unknown) else msg.t


def _side(s: str) -> str:
    return "client" if s == "c" else "server"


# ----------------------------------------------------------------------------- chat (issue 4)
# The message types of calls, alarms and chat sessions are in chmail/protocol_chat.py
# (same registry, same rules). Importing this module imports that one, which registers
# them and sets them here as attributes (``protocol.Say``); the type checker sees them
# through the star import (the names of protocol_chat.__all__).
if typing.TYPE_CHECKING:
    from chmail.protocol_chat import *  # noqa: F403

from chmail import protocol_chat as _protocol_chat  # noqa: E402, F401  (needs the core above)
