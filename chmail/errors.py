"""One error tree for the whole project.

Every error a user can meet is a ``ChmailError`` whose ``str()`` is a sentence that says
what happened and what to do. Third-party exceptions are wrapped where they enter
(``raise MailError(...) from exc``) so no screen or CLI ever sees an aioimaplib,
aiosmtplib or sqlite3 type.
"""

from __future__ import annotations


class ChmailError(Exception):
    """Base of every error chmail raises on purpose. ``code`` is stable for scripts."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigError(ChmailError):
    """The configuration file or environment is wrong."""

    code = "config"


class StoreError(ChmailError):
    """A database could not be opened, migrated or written."""

    code = "store"


class MigrationError(StoreError):
    """A database's schema cannot be brought to the code's version."""

    code = "migration"


class ProtocolError(ChmailError):
    """A frame or message broke the CH wire protocol."""

    code = "protocol"


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (our bug)."""

    code = "local_protocol"


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""

    code = "bad_frame"


class FrameTooLarge(RemoteProtocolError):
    """The peer announced a frame larger than the limit."""

    code = "frame_too_large"


class HeaderError(ChmailError):
    """An X-CH header value is malformed or unsafe (CR/LF, bad characters)."""

    code = "bad_header"


class LinkInvalid(ChmailError):
    """A chat link in a mail is not valid: forged, altered, expired, recycled or unknown.

    ``code`` names which, so the caller can be told why in plain words.
    """

    code = "link_invalid"


class AuthError(ChmailError):
    """Login failed: wrong password, unknown login, or not allowed."""

    code = "auth"


class ValidationError(ChmailError):
    """A value given by a user or peer is not acceptable (login id, address, ...)."""

    code = "invalid"


class ServerError(ChmailError):
    """The CH server answered with an error frame; ``code`` is the server's code."""

    code = "server"


class ConnectionLost(ChmailError):
    """The connection to a server dropped or could not be made."""

    code = "connection"


class MailError(ChmailError):
    """Talking to a mail server (IMAP, POP3, SMTP) or a Maildir failed."""

    code = "mail"


class SendError(MailError):
    """A mail could not be sent; ``permanent`` tells a 5xx from a retryable failure."""

    code = "send"

    def __init__(self, message: str, *, permanent: bool = False, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.permanent = permanent


class ChatError(ChmailError):
    """A chat could not be started, joined or continued."""

    code = "chat"


class ShopError(ChmailError):
    """The mall back office refused an operation (bad CSV row, template error, role)."""

    code = "shop"
