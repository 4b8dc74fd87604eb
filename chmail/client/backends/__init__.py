"""Mail stores behind one interface (base.Backend): IMAP, Maildir; POP3 fetches into a Maildir.

``open_backend(account_config)`` builds (does not connect) the backend of an account; its
password is asked for (password_command / keyring) only when it connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chmail.client.backends.base import Backend
    from chmail.config import AccountConfig


def open_backend(acc: AccountConfig) -> Backend:
    from chmail.client.accounts import make_backend_lazy

    return make_backend_lazy(acc)
