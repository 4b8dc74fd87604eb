"""A self-contained Dovecot (IMAP, POP3, LMTP) in one directory, for tests and ``chmail devmail``.

Rules (see shared/mail-stack.md for why each is there):

* Everything lives under a short root dir (``/tmp/dv-*``): unix socket paths must stay under
  108 bytes. Nothing outside it is read or written; the system Dovecot is left alone.
* Ports are picked free beforehand (``port = 0`` would switch a listener off).
* Under root, Dovecot runs as ``nobody``/``nogroup`` via ``setpriv`` (it refuses this config
  as root) and the root dir is handed to that user.
* Started in the foreground so we own the master PID; ready when the ports accept AND that
  PID is still alive (a port held by someone else also accepts).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from chmail.errors import MailError

log = logging.getLogger(__name__)

DOVECOT = "/usr/sbin/dovecot"
START_TIMEOUT = 10.0

_CONF = """\
instance_name = chmail-dovecot-{tag}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/log/dovecot.log
info_log_path = {root}/log/dovecot.log
protocols = imap pop3 lmtp
listen = 127.0.0.1
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
mail_uid = {user}
mail_gid = {group}
service anvil {{
  chroot =
}}
ssl = {ssl}
{ssl_lines}
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {root}/users
  default_fields = home={mail_root}/%n
}}
mail_location = maildir:~/Maildir
mail_fsync = {fsync}
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = subscribe
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = create
  }}
}}
service imap-login {{
  chroot =
  service_count = 0
  process_min_avail = 1
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  service_count = 0
  process_min_avail = 1
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap {{
  service_count = 0
  process_min_avail = 1
  process_limit = 100
}}
service pop3 {{
  service_count = 0
  process_limit = 100
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@localhost
}}
{imap_lines}"""


def available() -> bool:
    """Is Dovecot installed on this machine?"""
    return Path(DOVECOT).exists() or shutil.which("dovecot") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _is_root() -> bool:
    return os.geteuid() == 0


@dataclass
class Dovecot:
    """One Dovecot instance. ``start()`` / ``stop()`` / ``restart()`` are synchronous and quick."""

    users: dict[str, str] = field(default_factory=lambda: {"alice": "alicepw", "bob": "bobpw"})
    mail_root: Path | None = None  # where user homes (Maildirs) live; default {root}/mail
    ssl: bool = True
    fsync: bool = False  # off for tests; `chmail devmail` turns it on
    # The capabilities IMAP advertises, if not Dovecot's own (tests of clients facing
    # servers without an extension, e.g. without UIDPLUS).
    imap_capability: str = ""
    root: Path = field(init=False)
    imap_port: int = 0
    imaps_port: int = 0
    pop3_port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dv-", dir="/tmp"))
        if self.mail_root is None:
            self.mail_root = self.root / "mail"
        self.run_user, self.run_group = ("nobody", "nogroup") if _is_root() else _me()

    # -------------------------------------------------------------- files

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def lmtp_path(self) -> Path:
        return self.root / "run" / "lmtp"

    @property
    def log_file(self) -> Path:
        return self.root / "log" / "dovecot.log"

    def home(self, user: str) -> Path:
        assert self.mail_root is not None
        return self.mail_root / user

    def maildir(self, user: str) -> Path:
        return self.home(user) / "Maildir"

    def _write_files(self) -> None:
        for sub in ("run", "state", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        assert self.mail_root is not None
        self.mail_root.mkdir(parents=True, exist_ok=True)
        ssl_lines = ""
        if self.ssl:
            self._make_cert()
            ssl_lines = f"ssl_cert = <{self.root}/cert.pem\nssl_key = <{self.root}/key.pem"
        for attr in ("imap_port", "imaps_port", "pop3_port"):
            if not getattr(self, attr):
                setattr(self, attr, free_port())
        self.conf.write_text(
            _CONF.format(
                tag=self.root.name,
                root=self.root,
                mail_root=self.mail_root,
                user=self.run_user,
                group=self.run_group,
                ssl="yes" if self.ssl else "no",
                ssl_lines=ssl_lines,
                fsync="optimized" if self.fsync else "never",
                imap_port=self.imap_port,
                imaps_port=self.imaps_port if self.ssl else 0,
                pop3_port=self.pop3_port,
                imap_lines=(
                    f"protocol imap {{\n  imap_capability = {self.imap_capability}\n}}\n"
                    if self.imap_capability
                    else ""
                ),
            )
        )
        self.write_users()
        if _is_root():
            subprocess.run(
                ["chown", "-R", f"{self.run_user}:{self.run_group}", str(self.root)], check=True
            )
            if not str(self.mail_root).startswith(str(self.root)):
                subprocess.run(
                    ["chown", "-R", f"{self.run_user}:{self.run_group}", str(self.mail_root)],
                    check=True,
                )

    def _make_cert(self) -> None:
        if (self.root / "cert.pem").exists():
            return
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(self.root / "key.pem"), "-out", str(self.root / "cert.pem"),
             "-subj", "/CN=localhost", "-days", "3650",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip

    @property
    def cert_path(self) -> Path:
        return self.root / "cert.pem"

    def write_users(self) -> None:
        """(Re)write the users file; Dovecot re-reads it on the next login."""
        lines = "".join(f"{u}:{{PLAIN}}{pw}::::::\n" for u, pw in self.users.items())
        path = self.root / "users"
        path.write_text(lines)
        if _is_root():
            shutil.chown(path, self.run_user, self.run_group)

    def add_user(self, user: str, password: str) -> None:
        self.users[user] = password
        self.write_users()

    # -------------------------------------------------------------- process

    def _cmd(self, *args: str) -> list[str]:
        if _is_root():
            return ["setpriv", f"--reuid={self.run_user}", f"--regid={self.run_group}",
                    "--clear-groups", "--", *args]  # fmt: skip
        return list(args)

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not available():
            raise MailError(
                "Dovecot is not installed; install dovecot-imapd dovecot-pop3d dovecot-lmtpd "
                "(./run setup does)."
            )
        self._write_files()
        self.proc = subprocess.Popen(
            self._cmd(DOVECOT, "-c", str(self.conf), "-F"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                why = ", a port is taken" if code == 89 else ""
                raise MailError(
                    f"Dovecot exited at start (status {code}{why}): "
                    f"{err.strip() or self._log_tail()}"
                )
            if self._accepting() and self.lmtp_path.exists():
                log.info(
                    "dovecot up: imap %s pop3 %s (%s)", self.imap_port, self.pop3_port, self.root
                )
                return
            time.sleep(0.01)  # polling a condition with a deadline
        self.stop()
        raise MailError(f"Dovecot did not start within {START_TIMEOUT:.0f} s: {self._log_tail()}")

    def _accepting(self) -> bool:
        for port in (self.imap_port, self.pop3_port):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
            except OSError:
                return False
        return True

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_file.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        """Stop and remove the root dir (not an outside mail_root)."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # -------------------------------------------------------------- admin

    def doveadm(self, *args: str, check: bool = True) -> str:
        """Run ``doveadm -c CONF ARGS`` as the Dovecot user; returns stdout."""
        res = subprocess.run(
            self._cmd("doveadm", "-c", str(self.conf), *args),
            capture_output=True,
            text=True,
            check=False,
        )
        if check and res.returncode != 0:
            raise MailError(f"doveadm {' '.join(args)} failed: {res.stderr.strip()}")
        return res.stdout

    def empty(self, user: str, mailbox: str = "INBOX") -> None:
        self.doveadm("expunge", "-u", user, "mailbox", mailbox, "all")


def _me() -> tuple[str, str]:
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
