"""The one Config: TOML file, CHMAIL_* overrides, strict checking with clear sentences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chmail import config
from chmail.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_when_no_file() -> None:
    """Without a config file every setting has its documented default."""
    cfg = config.load()
    assert cfg.server.listen == "127.0.0.1:7380"
    assert cfg.server.lease_days == 30.0
    assert cfg.accounts == ()
    assert cfg.path == ""


def test_xdg_location_is_used(tmp_path: Path) -> None:
    """The file at $XDG_CONFIG_HOME/chmail/config.toml is read when no path is given."""
    path = config.default_config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, '[server]\npublic_host = "ch.example.net"\n')
    assert config.load().server.public_host == "ch.example.net"


def test_cli_path_beats_env_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config FILE wins over $CHMAIL_CONFIG."""
    a = write(tmp_path / "a.toml", '[ui]\ntheme = "a"\n')
    b = write(tmp_path / "b.toml", '[ui]\ntheme = "b"\n')
    monkeypatch.setenv("CHMAIL_CONFIG", str(b))
    assert config.load().ui.theme == "b"
    assert config.load(a).ui.theme == "a"


def test_accounts_nested_tables(tmp_path: Path) -> None:
    """[[accounts]] with [accounts.imap] / [accounts.ch] sub-tables build nested settings."""
    path = write(
        tmp_path / "c.toml",
        """
[[accounts]]
name = "work"
email = "alice@example.org"
kind = "imap"
[accounts.imap]
host = "imap.example.org"
port = 993
[accounts.ch]
server = "ch.example.org:7380"
login = "alice"
""",
    )
    cfg = config.load(path)
    acc = cfg.account("work")
    assert acc.imap.host == "imap.example.org"
    assert acc.imap.port == 993
    assert acc.ch.login == "alice"
    assert cfg.account() is acc


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CHMAIL_<SECTION>_<FIELD> overrides the file, converted to the field's type."""
    path = write(tmp_path / "c.toml", "[server]\nlease_days = 30\n")
    monkeypatch.setenv("CHMAIL_SERVER_LEASE_DAYS", "7.5")
    monkeypatch.setenv("CHMAIL_UI_BELL", "off")
    cfg = config.load(path)
    assert cfg.server.lease_days == 7.5
    assert cfg.ui.bell is False


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nlistn = 'x'\n", "unknown setting 'server.listn'"),
        ("[server]\nmax_frame = 'big'\n", "server.max_frame must be a whole number"),
        ("[server\n", "is not valid TOML"),
        ("[[accounts]]\n[accounts.imap]\nport = true\n", "accounts[0].imap.port"),
    ],
)
def test_bad_files_give_sentences(tmp_path: Path, text: str, words: str) -> None:
    """A typo, a wrong type or broken TOML is a ConfigError that names the setting."""
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        config.load(path)


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-numeric environment override names the variable."""
    monkeypatch.setenv("CHMAIL_SERVER_SMTP_PORT", "twenty-five")
    with pytest.raises(ConfigError, match="CHMAIL_SERVER_SMTP_PORT"):
        config.load()


def test_missing_explicit_file(tmp_path: Path) -> None:
    """Naming a config file that does not exist is an error, not silent defaults."""
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_no_account_points_to_demo() -> None:
    """Asking for an account when none is configured tells the user what to do."""
    with pytest.raises(ConfigError, match="chmail demo"):
        config.load().account()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:7380", ("::1", 7380)), ("h:1", ("h", 1))],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    """HOST:PORT strings parse, IPv6 in brackets included."""
    assert config.parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["nohost", ":80", "h:x", "h:70000"])
def test_parse_hostport_errors(value: str) -> None:
    """Malformed HOST:PORT strings are refused with a sentence."""
    with pytest.raises(ConfigError):
        config.parse_hostport(value)


def test_parse_port_range() -> None:
    """LOW-HIGH port ranges parse and bad ones are refused."""
    assert config.parse_port_range("41000-41999") == (41000, 41999)
    for bad in ("41999-41000", "a-b", "0-5", "41000"):
        with pytest.raises(ConfigError):
            config.parse_port_range(bad)
