"""First run without a config: a form that writes one, or a pointer to ``chmail demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import tomli_w
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, Select, Static

from chmail.config import parse_hostport
from chmail.errors import ConfigError

WELCOME = (
    "Welcome to chmail. There is no config yet, so let's write one.\n"
    "Just looking? Quit (ctrl+q) and run `chmail demo`: it starts a local mail and CH server "
    "with demo users, and opens chmail as alice."
)

FIELDS = (
    ("email", "Your e-mail address", "alice@example.org"),
    ("display_name", "Your name", "Alice Example"),
    ("imap", "IMAP server (host:port)", "imap.example.org:993"),
    ("smtp", "SMTP server (host:port)", "smtp.example.org:465"),
    ("user", "Mail login", "alice"),
    ("password_command", "Command that prints the password", "pass show mail/alice"),
    ("maildir", "Maildir path (for a local Maildir)", "~/Maildir"),
    ("ch_server", "CH server (host:port, empty: no chat)", "ch.example.org:7380"),
    ("ch_login", "CH login", "alice"),
)


def build_config(values: dict[str, str], kind: str) -> dict[str, Any]:
    """The TOML document for the answers; raises ConfigError with what to fix."""
    email = values.get("email", "").strip()
    if "@" not in email:
        raise ConfigError("Enter your e-mail address (it must contain @).")
    account: dict[str, Any] = {
        "name": "main",
        "email": email,
        "display_name": values.get("display_name", "").strip(),
        "kind": kind,
    }
    if kind == "maildir":
        maildir = values.get("maildir", "").strip()
        if not maildir:
            raise ConfigError("Enter the path of your Maildir.")
        account["maildir"] = maildir
    else:
        for proto, default_port in (("imap", 993), ("smtp", 465)):
            raw = values.get(proto, "").strip()
            if not raw:
                raise ConfigError(f"Enter your {proto.upper()} server as host:port.")
            host, port = parse_hostport(raw, default_port=default_port)
            account[proto] = {
                "host": host,
                "port": port,
                "security": "tls" if port in (993, 465) else "starttls",
                "user": values.get("user", "").strip() or email,
                "password_command": values.get("password_command", "").strip(),
            }
    ch_server = values.get("ch_server", "").strip()
    if ch_server:
        parse_hostport(ch_server)
        account["ch"] = {
            "server": ch_server,
            "login": values.get("ch_login", "").strip() or email.split("@")[0],
            "password_command": values.get("password_command", "").strip(),
        }
    return {"accounts": [account]}


class SetupScreen(Screen[Path | None]):
    """Writes the config to ``path`` and dismisses with it; None if the user quits."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+s", "save", "Write config", priority=True, id="setup.save"),
        Binding("escape", "quit_setup", "Quit", id="setup.quit"),
    ]

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="setup"):
            yield Static(WELCOME, id="setup-welcome")
            with Horizontal(classes="field"):
                yield Label("Mailbox kind", classes="field-label")
                yield Select(
                    [("IMAP + SMTP", "imap"), ("Local Maildir", "maildir")],
                    value="imap",
                    allow_blank=False,
                    id="kind",
                )
            for key, label, hint in FIELDS:
                with Horizontal(classes="field"):
                    yield Label(label, classes="field-label")
                    yield Input(placeholder=hint, id=f"setup-{key}")
            yield Button("Write config (ctrl+s)", id="setup-save", variant="primary")
            yield Static("", id="setup-status")
        yield Footer()

    @on(Button.Pressed, "#setup-save")
    def action_save(self) -> None:
        values = {key: self.query_one(f"#setup-{key}", Input).value for key, _, _ in FIELDS}
        kind = str(self.query_one("#kind", Select).value)
        try:
            doc = build_config(values, kind)
        except ConfigError as exc:
            self.query_one("#setup-status", Static).update(str(exc))
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(tomli_w.dumps(doc), encoding="utf-8")
        self.path.chmod(0o600)
        self.dismiss(self.path)

    def action_quit_setup(self) -> None:
        self.dismiss(None)
