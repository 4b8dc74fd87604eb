"""S117: a call to an offline user leaves an alarm: kept, pushed at the next login, and
mailed to the user's real Dovecot INBOX through the server's SMTP settings."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from email.header import decode_header, make_header
from pathlib import Path

from chmail import migrate
from chmail import protocol as p
from chmail.chserver import chatstore
from chmail.chserver.alarms import AlarmService, alarm_mail
from chmail.chserver.chatstore import AlarmRow
from chmail.client.chat import AlarmEvent
from chmail.config import ServerConfig
from chmail.devmail.smtp import DeliveryHandler, start_server
from tests.chat_helpers import chat_config, connect, next_event
from tests.fixtures.chserver import ServerFactory
from tests.fixtures.mailstack import MailStack, MailUser


def inbox_subjects(stack: MailStack, user: str) -> list[str]:
    """The decoded subjects of ``user``'s INBOX, as Dovecot itself reports them."""
    out = stack.dovecot.doveadm("fetch", "-u", user, "hdr.subject", "mailbox", "INBOX", "all")
    raw: list[str] = []
    for ln in out.splitlines():
        if ln.startswith("hdr.subject:"):
            raw.append(ln.split(":", 1)[1].strip())
        elif raw and ln[:1] in (" ", "\t"):  # a folded header's continuation
            raw[-1] += ln
    return [str(make_header(decode_header(s))) for s in raw]


async def test_offline_callee_gets_an_alarm_at_login_and_by_mail(
    chserver_factory: ServerFactory, mailstack: MailStack, mail_user: MailUser
) -> None:
    """Calling an offline user: caller told, alarm pushed at next login, alarm mail in INBOX."""
    srv = await chserver_factory(
        **chat_config(smtp_host="127.0.0.1", smtp_port=mailstack.smtp_port)
    )
    callee = mail_user.name
    await srv.add_user(callee, emails=[mail_user.address])
    await srv.add_user("bob")
    owner = await connect(srv, callee)
    mail = await owner.send_mail("bob@example.org", subject="Quarterly figures")
    await owner.close()
    await srv.wait_for(lambda: not srv.server.is_online(callee))

    bob = await connect(srv, "bob")
    st = await bob.engine.escalate(mail)
    assert st.state == "alarmed"
    assert st.message == f"{callee} is offline; they will be alarmed"

    def mailed() -> bool:
        return any("Missed chat" in s for s in inbox_subjects(mailstack, callee))

    async with asyncio.timeout(15):
        while not await asyncio.to_thread(mailed):
            await asyncio.sleep(0.05)
    subjects = await asyncio.to_thread(inbox_subjects, mailstack, callee)
    assert any("bob" in s and "Quarterly figures" in s for s in subjects)

    back = await connect(srv, callee)  # the next login: the alarm is pushed
    alarm = (await next_event(back.engine.events, AlarmEvent)).alarms[-1]
    assert (alarm["caller"], alarm["subject"]) == ("bob", "Quarterly figures")
    assert alarm["message_id"] == mail.message_id
    listed = await back.engine.alarms()
    assert [a["id"] for a in listed] == [alarm["id"]]
    await back.engine.alarms(ack=[int(str(alarm["id"]))])
    assert await back.engine.alarms() == []
    assert len(await back.engine.alarms(include_seen=True)) == 1
    for c in (bob, back):
        await c.close()


def test_alarm_mail_names_caller_and_subject_in_the_thread() -> None:
    """The alarm mail says who called about what, and threads under the original mail."""
    row = AlarmRow(
        7, "alice", "bob", 3, "Lunch?", "<m1@example.org>", 42001, 1.7e9, None, None, None
    )
    msg = alarm_mail(row, to="alice@example.org", sender="ch@example.org")
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "Missed chat: bob called you about “Lunch?”"
    assert parsed["In-Reply-To"] == "<m1@example.org>"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert "chmail chat '<m1@example.org>'" in parsed.get_content()


async def test_alarm_mail_is_retried_until_the_smtp_server_takes_it(tmp_path: Path) -> None:
    """An alarm mail refused because SMTP is down goes out once the SMTP server is back."""
    db = await migrate.connect(tmp_path / "chserver.sqlite", "chserver")
    with socket.socket() as s:  # a port where nothing listens yet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = DeliveryHandler(mail_root=tmp_path / "mail", keep=True)

    async def emails(login: str) -> list[str]:
        return [f"{login}@example.org"]

    config = ServerConfig(smtp_host="127.0.0.1", smtp_port=port)
    alarms = AlarmService(db, config, lambda login, msg: 0, emails)
    alarms.retry_delays = (0.2, 0.2, 0.2, 0.2, 0.2)
    smtp = None
    try:
        alarm_id = await alarms.raise_alarm(
            login="alice",
            caller="bob",
            call_id=None,
            subject="Hello",
            message_id="<m@example.org>",
            port=0,
            mail=True,
        )
        async with asyncio.timeout(10):  # the first attempt failed (nobody listens)
            while not (await chatstore.alarm_mail_status(db, alarm_id) or (0, ""))[1]:
                await asyncio.sleep(0.02)
        smtp = await start_server(handler, port=port)  # the SMTP server comes back
        async with asyncio.timeout(10):
            while not handler.received:
                await asyncio.sleep(0.02)
        mail = email.message_from_bytes(handler.received[0], policy=email.policy.default)
        assert mail["Subject"] == "Missed chat: bob called you about “Hello”"
        assert mail["To"] == "alice@example.org"
    finally:
        await alarms.close()
        if smtp is not None:
            smtp.close()
            await smtp.wait_closed()
        await db.close()


async def test_auth_ok_counts_the_alarms_waiting_and_the_alarm_follows(
    chserver_factory: ServerFactory,
) -> None:
    """A user called while offline logs in: auth_ok.alarms is 1 and the alarm is pushed;
    once acknowledged, the next login counts 0."""
    srv = await chserver_factory(**chat_config())
    await srv.add_user("alice")
    await srv.add_user("bob")
    alice = await connect(srv, "alice")
    mail = await alice.send_mail("bob@example.org", subject="Offsite")
    await alice.close()
    await srv.wait_for(lambda: not srv.server.is_online("alice"))
    bob = await connect(srv, "bob")
    assert (await bob.engine.escalate(mail)).state == "alarmed"

    raw = await srv.raw()
    ok = await raw.auth("alice", srv.passwords["alice"])
    assert isinstance(ok, p.AuthOk), ok
    assert ok.alarms == 1
    pushed = await raw.recv_skip_pings()
    assert isinstance(pushed, p.AlarmList), pushed
    assert [(a["caller"], a["subject"]) for a in pushed.alarms] == [("bob", "Offsite")]
    acked = await raw.request(p.Alarms(ack=[int(pushed.alarms[0]["id"])]))
    assert isinstance(acked, p.AlarmList)
    assert acked.alarms == []

    again = await srv.raw()
    ok = await again.auth("alice", srv.passwords["alice"])
    assert isinstance(ok, p.AuthOk)
    assert ok.alarms == 0
    await bob.close()
