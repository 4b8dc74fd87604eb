"""One configuration, loaded once from TOML plus ``CHMAIL_*`` environment overrides.

Where the file is: ``--config FILE``, else ``$CHMAIL_CONFIG``, else
``$XDG_CONFIG_HOME/chmail/config.toml``. A missing file means all defaults.

Every section is a frozen dataclass; the loader checks types and rejects unknown keys
(a typo should fail loudly, not be ignored). Scalar fields of the top-level sections can
be overridden from the environment: ``CHMAIL_<SECTION>_<FIELD>``, e.g.
``CHMAIL_SERVER_LISTEN=0.0.0.0:7380``. docs/configuration.md documents every field.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import platformdirs

from chmail.errors import ConfigError

APP = "chmail"
T = TypeVar("T")


def config_dir() -> Path:
    return Path(platformdirs.user_config_dir(APP))


def data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP))


def state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP))


def default_config_path() -> Path:
    return config_dir() / "config.toml"


# ---------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: the CH server (``chmail-server serve``)."""

    listen: str = "127.0.0.1:7380"
    ports: str = "41000-41999"
    public_host: str = "localhost"
    data_dir: str = ""
    lease_days: float = 30.0
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 45.0
    max_frame: int = 65536
    tls_cert: str = ""
    tls_key: str = ""
    ring_timeout: float = 60.0
    ring_interval: float = 5.0
    session_idle_timeout: float = 600.0
    max_sessions_per_user: int = 20
    rings_per_minute_per_caller: int = 10
    rings_per_minute_per_callee: int = 30
    max_chat_message: int = 16384
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "chmail-server@localhost"
    argon2_time_cost: int = 3  # cost of new password hashes (argon2id)
    argon2_memory_kib: int = 65536
    max_write_buffer: int = 1048576  # bytes queued to a client that stopped reading -> drop
    login_lockout_failures: int = 10  # failed logins for one login that lock it ...
    login_lockout_minutes: float = 15.0  # ... when they fall within this many minutes


@dataclass(frozen=True)
class EndpointConfig:
    """A mail server endpoint (``[accounts.imap]``, ``[accounts.smtp]``, ``[accounts.pop3]``)."""

    host: str = ""
    port: int = 0
    security: str = "tls"  # "tls", "starttls", or "plain" (plain only to localhost)
    user: str = ""
    password_command: str = ""
    keyring: bool = False
    ca_file: str = ""  # extra CA certificate(s) to trust (PEM), e.g. a self-signed server


@dataclass(frozen=True)
class ChAccountConfig:
    """``[accounts.ch]``: this account's link to a CH server."""

    server: str = ""  # HOST:PORT; empty = no chat for this account
    login: str = ""
    password_command: str = ""
    keyring: bool = False
    tls: bool = False
    direct: bool = False  # host chats on this machine (puts direct_host in X-CH-Host)
    direct_host: str = ""
    wait_for_link: bool = False  # hold mail in the outbox until the CH server answers


@dataclass(frozen=True)
class AccountConfig:
    """``[[accounts]]``: one mailbox."""

    name: str = "default"
    email: str = ""
    display_name: str = ""
    kind: str = "maildir"  # "imap", "maildir" or "pop3"
    maildir: str = ""
    pop3_keep: bool = True
    imap: EndpointConfig = field(default_factory=EndpointConfig)
    pop3: EndpointConfig = field(default_factory=EndpointConfig)
    smtp: EndpointConfig = field(default_factory=EndpointConfig)
    ch: ChAccountConfig = field(default_factory=ChAccountConfig)
    operator: bool = False


@dataclass(frozen=True)
class UiConfig:
    """``[ui]``: the TUI."""

    theme: str = "textual-dark"
    threaded: bool = True
    sort: str = "date-desc"
    editor: str = ""  # empty: $VISUAL, $EDITOR, else the built-in editor
    bell: bool = True
    log_file: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # binding id -> key(s)


@dataclass(frozen=True)
class ShopConfig:
    """``[shop]``: the mall back office (``chmail-shop``)."""

    data_dir: str = ""
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_security: str = "plain"
    smtp_user: str = ""
    smtp_password_command: str = ""
    from_addr: str = "mall@localhost"
    rate_per_second: float = 50.0
    pool_size: int = 4
    error_threshold: float = 0.2
    unsubscribe_listen: str = "127.0.0.1:7390"
    unsubscribe_base_url: str = "http://127.0.0.1:7390"
    ch_server: str = ""
    ch_login: str = ""
    ch_password_command: str = ""
    # Added by the shop work (additive): pacing, retries and the unsubscribe endpoint.
    rate_window_max: int = 0  # at most this many mails per window (0: no window limit)
    rate_window_seconds: float = 3600.0
    max_attempts: int = 5  # tries per recipient on 4xx / dropped connections
    retry_base: float = 2.0  # seconds; exponential backoff with jitter
    retry_max: float = 600.0
    smtp_timeout: float = 30.0
    error_min_sample: int = 20  # attempts seen before the error threshold can pause
    resend_uncertain: bool = True  # after a crash, resend mails cut off mid-DATA
    operator_capacity: int = 2  # chats one operator takes at once before members queue


@dataclass(frozen=True)
class Config:
    """The whole configuration. Built once, passed down, never read from a global."""

    server: ServerConfig = field(default_factory=ServerConfig)
    accounts: tuple[AccountConfig, ...] = ()
    ui: UiConfig = field(default_factory=UiConfig)
    shop: ShopConfig = field(default_factory=ShopConfig)
    path: str = ""  # where it was loaded from ("" = defaults only)

    def account(self, name: str | None = None) -> AccountConfig:
        """The account called ``name``, or the first one."""
        if not self.accounts:
            raise ConfigError(
                "No mail account is configured. Run `chmail` to set one up, or try `chmail demo`."
            )
        if name is None:
            return self.accounts[0]
        for acc in self.accounts:
            if acc.name == name:
                return acc
        names = ", ".join(a.name for a in self.accounts)
        raise ConfigError(f"No account named {name!r} in the config (accounts: {names}).")


# ---------------------------------------------------------------------------- loading


def resolve_path(cli_path: str | os.PathLike[str] | None = None) -> Path:
    if cli_path:
        return Path(cli_path)
    env = os.environ.get("CHMAIL_CONFIG")
    if env:
        return Path(env)
    return default_config_path()


def load(
    cli_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load the config: file (if it exists) then ``CHMAIL_<SECTION>_<FIELD>`` overrides."""
    path = resolve_path(cli_path)
    data: dict[str, Any] = {}
    explicit = bool(cli_path) or "CHMAIL_CONFIG" in os.environ
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}. Fix the file and retry.") from exc
        except OSError as exc:
            raise ConfigError(f"Cannot read {path}: {exc.strerror}.") from exc
    elif explicit:
        raise ConfigError(f"Config file {path} does not exist.")
    apply_env(data, os.environ if env is None else env)
    cfg = build(Config, data, where=str(path))
    return dataclasses.replace(cfg, path=str(path) if path.exists() else "")


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build a Config from an already-parsed mapping (tests, demo)."""
    return build(Config, dict(data), where="<dict>")


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fold ``CHMAIL_<SECTION>_<FIELD>`` variables into ``data`` (scalar fields only)."""
    sections = typing.get_type_hints(Config)
    for section in ("server", "ui", "shop"):
        for name, hint in typing.get_type_hints(sections[section]).items():
            key = f"CHMAIL_{section}_{name}".upper()
            if key in env:
                data.setdefault(section, {})[name] = _from_env(env[key], hint, key)


def _from_env(raw: str, hint: Any, key: str) -> Any:
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}={raw!r}: expected true or false.")
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a whole number.") from None
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a number.") from None
    return raw


def build(cls: type[T], data: Any, *, where: str, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a TOML mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'} must be a table.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields or key == "path":
            known = ", ".join(n for n in fields if n != "path")
            raise ConfigError(
                f"{where}: unknown setting '{prefix}{key}'. Known settings here: {known}."
            )
        kwargs[key] = _convert(hints[key], value, where=where, name=f"{prefix}{key}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, *, where: str, name: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where=where, prefix=f"{name}.")  # type: ignore[arg-type]
    if origin is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name} must be a list.")
        return tuple(
            _convert(item, v, where=where, name=f"{name}[{i}]") for i, v in enumerate(value)
        )
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{where}: {name} must be a table of strings.")
        return dict(value)
    if origin in (types.UnionType, typing.Union):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner[0], value, where=where, name=name)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, float, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        kind = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}
        raise ConfigError(f"{where}: {name} must be {kind[hint]}, not {value!r}.")
    return value


def parse_hostport(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) to a tuple; a clear error otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(f"{value!r} is not HOST:PORT.")
        host, port = value, str(default_port)
    host = host.strip("[]")
    if not host:
        raise ConfigError(f"{value!r} has no host; write HOST:PORT, e.g. 127.0.0.1:7380.")
    try:
        num = int(port)
    except ValueError:
        raise ConfigError(f"{value!r}: the port must be a number.") from None
    if not 0 <= num <= 65535:
        raise ConfigError(f"{value!r}: the port must be between 0 and 65535.")
    return host, num


def parse_port_range(value: str) -> tuple[int, int]:
    """``LOW-HIGH`` to a tuple; a clear error otherwise."""
    low, sep, high = value.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        raise ConfigError(f"Port range {value!r} is not LOW-HIGH, e.g. 41000-41999.") from None
    if not sep or not 1 <= lo <= hi <= 65535:
        raise ConfigError(f"Port range {value!r} must be LOW-HIGH with 1 <= LOW <= HIGH <= 65535.")
    return lo, hi
